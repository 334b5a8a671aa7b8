"""fastbfly: fast transforms learned from a matrix.

Approximate a dense matrix by a product of sparse butterfly factors with the
hierarchical algorithm (exact recovery of butterfly products, error guarantees), and
apply the result in ``O(n log n)`` with Numba kernels, as a scipy ``LinearOperator``.
"""

import os as _os

# Numba's default threading layer is OpenMP (libgomp), whose idle threads spin for a
# while (GOMP_SPINCOUNT: 300000 spins, about 3 ms) after each parallel region before
# they sleep.  When other processes (or another library's thread pool) share the cores
# that spinning takes their time: 64 complex128 vectors at N = 4096 on 2 cores with
# one other busy process took 8-12 ms per product with spinning, 1.0-2.9 ms with
# passive waiting, and 2.0-2.7 ms on one thread (docs/installation.rst, "Threads").
# Sleeping at once has its own cost: waking a sleeping thread takes about 37 us here,
# and a threaded product of a block of vectors runs two regions back to back
# (`fastbfly._kernels._apply_pairs_tiles_py`).  So idle threads spin for 1000 spins
# (about 10 us: long enough to catch the next region of the same call) and then sleep.
# Measured (64 complex128 vectors, N = 4096, 2 threads against 1, medians of 200
# products): idle machine 1.94-2.06x with the short spin against 1.16-1.65x sleeping
# at once; beside a process spinning or copying memory on the other core 0.83-0.86x
# against 0.93-0.96x (one thread is the better choice there either way).  A policy
# or spin count set by the user wins; they take effect only when no OpenMP runtime
# has started in this process yet (libgomp reads them when it loads).
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # (libgomp: an explicit GOMP_SPINCOUNT overrides the policy's spin count of 0)
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .butterfly import Butterfly, Factor
from .certificate import Certificate, certify
from .clustering import recover_permutations
from .factorization import factorize
from .interop import from_lazylinop, to_lazylinop, to_scipy_sparse
from .io import load, save
from .patterns import Chain, Pattern, fuse
from .permutations import bit_reversal_permutation, dao_permutations
from .report import CompressionReport, compression_report
from .sources import FunctionMatrix
from .transforms import dft_butterfly, hadamard_butterfly
from .trees import build_tree

__version__ = "0.1.0"


def __getattr__(name):
    # ``ButterflyOperator`` subclasses scipy's LinearOperator: importing
    # scipy.sparse.linalg costs about 0.4 s, a third of a cold start, so it happens on
    # first use of the operator rather than on ``import fastbfly``.
    if name == "ButterflyOperator":
        from .operator import ButterflyOperator

        return ButterflyOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"ButterflyOperator"})

__all__ = [
    "Butterfly",
    "ButterflyOperator",
    "Certificate",
    "Chain",
    "CompressionReport",
    "Factor",
    "FunctionMatrix",
    "Pattern",
    "bit_reversal_permutation",
    "build_tree",
    "certify",
    "compression_report",
    "dao_permutations",
    "dft_butterfly",
    "factorize",
    "from_lazylinop",
    "fuse",
    "hadamard_butterfly",
    "load",
    "recover_permutations",
    "save",
    "to_lazylinop",
    "to_scipy_sparse",
]
