"""Permutations: bit reversal and validation of user-given index vectors."""

from __future__ import annotations

import numpy as np

from .patterns import log2_exact

__all__ = ["bit_reversal_permutation", "validate_permutation"]


def bit_reversal_permutation(n: int) -> np.ndarray:
    """Bit-reversal permutation of ``0..n-1`` for ``n`` a power of two.

    The DFT matrix ``F`` is a butterfly product after permuting its columns:
    ``F[:, bit_reversal_permutation(n)]`` factors exactly on the square dyadic chain.

    Parameters
    ----------
    n : int
        A power of two.

    Returns
    -------
    perm : (n,) int64 ndarray

    Examples
    --------
    >>> bit_reversal_permutation(8)
    array([0, 4, 2, 6, 1, 5, 3, 7])
    """
    n_bits = log2_exact(n, "n")
    perm = np.zeros(n, dtype=np.int64)
    indices = np.arange(n, dtype=np.int64)
    for bit in range(n_bits):
        perm |= ((indices >> bit) & 1) << (n_bits - 1 - bit)
    return perm


def validate_permutation(perm, n: int, name: str = "perm") -> np.ndarray:
    """Return ``perm`` as a fresh int64 array after checking it permutes ``0..n-1``.

    Raises
    ------
    TypeError
        If ``perm`` is not an integer array.
    ValueError
        If it has the wrong shape or length, or has out-of-range or repeated entries.
    """
    array = np.asarray(perm)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be an integer index vector, got dtype {array.dtype}")
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    if n and (array.min() < 0 or array.max() >= n):
        raise ValueError(
            f"{name} entries must be in [0, {n}), got min {array.min()} and max {array.max()}"
        )
    array = array.astype(np.int64, copy=True)
    counts = np.bincount(array, minlength=n)
    if np.any(counts != 1):
        repeated = int(np.flatnonzero(counts > 1)[0])
        raise ValueError(f"{name} is not a permutation: index {repeated} appears more than once")
    array.setflags(write=False)
    return array
