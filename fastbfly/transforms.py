"""Known butterfly products in closed form: exact test oracles and large fast transforms
without factorizing a dense matrix."""

from __future__ import annotations

import numpy as np

from .butterfly import Butterfly, Factor
from .patterns import Chain
from .permutations import bit_reversal_permutation

__all__ = ["dft_butterfly", "hadamard_butterfly"]


def _radix2(n: int, dtype, twiddles: bool) -> list:
    chain = Chain.square_dyadic(n)
    factors = []
    for pattern in chain:
        a, b, c, d = pattern
        if (a, b, c, d) == (1, 1, 1, 1):
            factors.append(Factor(pattern, np.ones((1, 1, 1, 1), dtype=dtype)))
            continue
        # [[I_d, Ω], [I_d, -Ω]] on every block i, Ω = diag(exp(-2iπ t / (2d))).
        omega = np.exp(-2j * np.pi * np.arange(d) / (2 * d)) if twiddles else np.ones(d)
        block = np.empty((2, 2, d), dtype=dtype)
        block[0, 0] = 1
        block[1, 0] = 1
        block[0, 1] = omega
        block[1, 1] = -omega
        factors.append(Factor(pattern, np.ascontiguousarray(np.broadcast_to(block, (a, 2, 2, d)))))
    return factors


def dft_butterfly(n: int, dtype=np.complex128) -> Butterfly:
    """The ``n × n`` DFT matrix ``F[k, l] = exp(-2iπ k l / n)`` as an exact butterfly
    (radix-2 Cooley–Tukey with bit-reversal column permutation).

    Parameters
    ----------
    n : int
        A power of two.
    dtype : complex64 or complex128

    Examples
    --------
    >>> import numpy as np
    >>> B = dft_butterfly(16)
    >>> x = np.arange(16.0)
    >>> bool(np.allclose(B @ x, np.fft.fft(x)))
    True
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "c":
        raise TypeError(f"the DFT needs a complex dtype, got {dtype}")
    return Butterfly(_radix2(n, dtype, twiddles=True), perm=bit_reversal_permutation(n))


def hadamard_butterfly(n: int, dtype=np.float64) -> Butterfly:
    """The ``n × n`` Sylvester–Hadamard matrix as an exact butterfly (no permutation).

    Examples
    --------
    >>> hadamard_butterfly(2).toarray()
    array([[ 1.,  1.],
           [ 1., -1.]])
    """
    return Butterfly(_radix2(n, np.dtype(dtype), twiddles=False))
