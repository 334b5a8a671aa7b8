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

    Parameters
    ----------
    perm : (n,) array_like of int
        Index vector: ``x[perm]`` is the permuted vector.
    n : int
        Expected length.
    name : str, default "perm"
        Name used in error messages.

    Returns
    -------
    (n,) int64 ndarray
        A read-only copy (the caller's array is never kept or modified).

    Raises
    ------
    TypeError
        If ``perm`` is not an integer array.
    ValueError
        If it has the wrong shape or length, or has out-of-range or repeated entries.

    Examples
    --------
    >>> p = validate_permutation([2, 0, 1], 3)
    >>> p, p.dtype, p.flags.writeable
    (array([2, 0, 1]), dtype('int64'), False)
    >>> validate_permutation([0, 0, 1], 3, name="row_perm")
    Traceback (most recent call last):
    ...
    ValueError: row_perm is not a permutation: index 0 appears more than once
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


def dao_permutations(n: int) -> list[np.ndarray]:
    """The eight permutations of Dao et al. (ICML 2019) that pyfaust calls ``default_8``.

    Each is a product over levels ``i = 2..J`` of ``I_{n/2^i} ⊗ P_i`` where ``P_i`` is
    the identity composed with any subset of three ``2^i``-point permutations: reverse
    the second half of the columns (``c``), reverse the first half of the rows (``b``),
    and the even/odd split (``a``).  The subsets are enumerated as ``"000"..."111"``.
    With ``"001"`` (the even/odd split at every level) this is the bit reversal.

    Returns
    -------
    list of 8 (n,) int64 arrays
        Index vectors ``p`` with ``matrix[:, p]`` the permuted matrix, equal to the
        ones pyfaust's ``butterfly(..., perm='default_8')`` tries.

    Examples
    --------
    >>> perms = dao_permutations(8)
    >>> bool((perms[1] == bit_reversal_permutation(8)).all())
    True
    """
    n_levels = log2_exact(n, "n")
    result = []
    for choice in range(8):
        use = [(choice >> (2 - bit)) & 1 for bit in range(3)]  # "abc" read left to right
        total = np.arange(n)
        for level in range(2, n_levels + 1):
            size = 2**level
            block = np.arange(size)
            for kind in range(3):
                if use[kind]:
                    block = _compose(block, _dao_level_permutation(size, kind))
            # I_{n/size} ⊗ block, as an index vector
            tiled = (np.arange(n // size)[:, None] * size + block[None, :]).ravel()
            total = _compose(total, tiled)
        # pyfaust factorizes M ≈ B Pᵀ-style: its index vector is the inverse of P's
        inverse = np.empty(n, dtype=np.int64)
        inverse[total] = np.arange(n)
        result.append(inverse)
    return result


def _compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Index vector of the product of permutation matrices ``P_first @ P_second``
    (``P[r, p[r]] = 1``)."""
    return second[first]


def _dao_level_permutation(size: int, kind: int) -> np.ndarray:
    """Index vector ``p`` (``P[r, p[r]] = 1``) of the level permutations of Dao et al."""
    half = size // 2
    rows = np.arange(size)
    if kind == 0:  # reverse the second half of the columns
        cols = np.concatenate([np.arange(half), size - 1 - np.arange(half)])
    elif kind == 1:  # reverse the first half of the rows
        rows = np.concatenate([half - 1 - np.arange(half), half + np.arange(half)])
        cols = np.arange(size)
    else:  # even indices first, then odd
        cols = np.concatenate([2 * np.arange(half), 2 * np.arange(half) + 1])
    perm = np.empty(size, dtype=np.int64)
    perm[rows] = cols
    return perm
