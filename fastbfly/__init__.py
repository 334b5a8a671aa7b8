"""fastbfly: fast transforms learned from a matrix.

Approximate a dense matrix by a product of sparse butterfly factors with the
hierarchical algorithm (exact recovery of butterfly products, error guarantees), and
apply the result in ``O(n log n)`` with Numba kernels, as a scipy ``LinearOperator``.
"""

from .butterfly import Butterfly, Factor
from .factorization import factorize
from .io import load, save
from .operator import ButterflyOperator
from .patterns import Chain, Pattern, fuse
from .permutations import bit_reversal_permutation
from .transforms import dft_butterfly, hadamard_butterfly
from .trees import build_tree

__version__ = "0.1.0"

__all__ = [
    "Butterfly",
    "ButterflyOperator",
    "Chain",
    "Factor",
    "Pattern",
    "bit_reversal_permutation",
    "build_tree",
    "dft_butterfly",
    "factorize",
    "fuse",
    "hadamard_butterfly",
    "load",
    "save",
]
