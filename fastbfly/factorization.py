"""The hierarchical butterfly factorization."""

from __future__ import annotations

import math
import time

import numba
import numpy as np

from . import _kernels
from .butterfly import SUPPORTED_DTYPES, Butterfly, Factor
from .patterns import Chain, log2_exact
from .permutations import bit_reversal_permutation, validate_permutation
from .trees import Node, build_tree

__all__ = ["factorize"]

# Node sizes (stored values) from which the block kernel runs in parallel; below it the
# serial build wins on 2 cores (see benchmarks).
PARALLEL_MIN_NODE_SIZE = 1 << 16
# Blocks are handed out in this many chunks per thread (load balance vs. overhead).
CHUNKS_PER_THREAD = 4
# Bytes of the panel into which each task gathers the rows its blocks share.
PANEL_BYTES = 1 << 25


def factorize(matrix, *, tree="balanced", perm=None, orthonormalize=True, progress=None):
    """Approximate a matrix by a product of butterfly factors.

    Runs the hierarchical algorithm: split the chain of factors in two, solve that
    two-factor problem exactly (independent blocks, one best rank-one approximation
    each), recurse into both halves along ``tree``.

    Parameters
    ----------
    matrix : (n, n) array_like
        ``n`` must be a power of two.  float32, float64, complex64 and complex128 are
        kept; bool and integer input is converted to float64, float16 to float32.
        The array is never modified.
    tree : str or nested tuple, default "balanced"
        ``"balanced"``, ``"left-to-right"``, ``"right-to-left"``, or a binary tree over
        the factor indices ``0..L-1`` as nested 2-tuples, e.g. ``((0, 1), (2, 3))``
        (see :mod:`fastbfly.trees`).
    perm : None, "bitrev", (n,) int array, or list of those, optional
        Column permutation applied before factorizing: the factors approximate
        ``matrix[:, perm]`` and the returned `Butterfly` carries ``perm``, so that
        ``B`` approximates ``matrix`` itself.  With a list, every candidate is tried and
        the one with the smallest error is kept (all errors are in ``B.info``).
    orthonormalize : bool, default True
        Keep the already-computed factors orthonormal (block by block) and push the
        scale into the part still to be factorized.  Each step's error is then exactly
        the increase of the global error, which is what keeps noisy inputs accurate.
        With False the scale is split evenly between the two sides of every split.
    progress : callable, optional
        Called as ``progress(done, total)`` after every two-factor split.

    Returns
    -------
    Butterfly
        ``B.info`` holds ``"relative_error"`` (``‖matrix - B‖_F / ‖matrix‖_F`` from the
        sum of the block residuals; exact in exact arithmetic when ``orthonormalize`` is
        on, an estimate otherwise), ``"tree"``, ``"perm_errors"`` and ``"seconds"``.

    Raises
    ------
    TypeError
        For non-numeric dtypes.
    ValueError
        For arrays that are not 2-D, empty, not square of a power-of-two size, contain
        NaN or Inf, or for a malformed ``tree`` or ``perm``.

    Notes
    -----
    A node of the tree covering factors ``s..e`` has the pattern
    ``fuse(π_s, ..., π_e)`` and is stored as a 4-D array ``(a, B, C, d)``; splitting it
    at ``m`` gives ``a*c1*b2*d`` independent blocks of size ``b1 × C2``, each replaced
    by its best rank-one approximation (see :func:`fastbfly._kernels` for the indices).
    Exact butterfly products are recovered to machine precision by every tree.

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> F = np.fft.fft(np.eye(64))
    >>> B = fastbfly.factorize(F, perm="bitrev")
    >>> bool(np.allclose(B.toarray(), F))
    True
    >>> len(B.factors), B.nnz
    (6, 768)
    """
    started = time.perf_counter()
    matrix = _as_matrix(matrix)
    n = matrix.shape[0]
    chain = Chain.square_dyadic(n)
    root = build_tree(tree, len(chain))
    candidates = _perm_candidates(perm, n)

    best = None
    perm_errors = []
    for candidate in candidates:
        factors, error = _hierarchical(matrix, chain, root, candidate, orthonormalize, progress)
        perm_errors.append(error)
        if best is None or error < best[1]:
            best = (factors, error, candidate)
    factors, error, chosen = best
    info = {
        "relative_error": error,
        "tree": root.to_nested(),
        "perm_errors": perm_errors,
        "orthonormalize": bool(orthonormalize),
        "seconds": time.perf_counter() - started,
    }
    return Butterfly(factors, perm=chosen, info=info)


def _as_matrix(matrix) -> np.ndarray:
    """Validate the input and return a C-contiguous array of a supported dtype
    (a view of the caller's array when nothing needs converting)."""
    array = np.asarray(matrix)
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"matrix must be numeric (float32, float64, complex64, complex128, or bool/"
            f"integer converted to float64), got dtype {array.dtype}"
        )
    if array.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got {array.ndim}-D with shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"matrix must not be empty, got shape {array.shape}")
    m, n = array.shape
    if m != n:
        raise ValueError(f"matrix must be square (general shapes are not supported yet), got {array.shape}")
    log2_exact(n, "matrix size")
    return np.ascontiguousarray(array)


def _perm_candidates(perm, n: int) -> list:
    """The list of column permutations to try (``None`` is the identity)."""
    if perm is None:
        return [None]
    if isinstance(perm, str):
        return [_named_perm(perm, n)]
    if isinstance(perm, (list, tuple)) and perm and not np.isscalar(perm[0]):
        if not all(p is None or isinstance(p, str) or np.ndim(p) == 1 for p in perm):
            raise ValueError("perm must be None, 'bitrev', an index vector, or a list of those")
        return [
            None if p is None else _named_perm(p, n) if isinstance(p, str) else validate_permutation(p, n)
            for p in perm
        ]
    array = np.asarray(perm)
    if array.ndim == 2:
        return [validate_permutation(row, n) for row in array]
    return [validate_permutation(array, n)]


def _named_perm(name: str, n: int):
    if name == "bitrev":
        return bit_reversal_permutation(n)
    if name == "identity":
        return None
    raise ValueError(f"unknown permutation {name!r}: expected 'bitrev', 'identity' or an index vector")


def _hierarchical(matrix, chain: Chain, root: Node, perm, orthonormalize: bool, progress):
    """Factorize ``matrix[:, perm]`` on ``chain`` along the tree ``root``.

    Returns the factors (left-most first) and the relative error from the block
    residuals.
    """
    n = matrix.shape[1]
    n_splits = len(chain) - 1
    values = [None] * len(chain)  # final 4-D values of each factor, once known
    state = {"normalized": 0, "residual2": 0.0, "splits": 0, "norm2": None}
    sigma_power = 1.0 if orthonormalize else 0.5
    tol = 8.0 * np.finfo(matrix.dtype).eps

    def normalize_left_of(node_values, start):
        # Make X_1 ⋯ X_{start-1} column-orthonormal (rank one: unit columns) by scaling
        # each not-yet-normalized factor's columns and pushing the norms into the rows of
        # the next factor, the last one into the node about to be factorized.  Each
        # factor is normalized once: later pushes only go to the right.
        for index in range(state["normalized"], start):
            target = values[index + 1] if index + 1 < start else node_values
            _push_column_norms(values[index], target)
        state["normalized"] = max(state["normalized"], start)

    def solve(node_values, node: Node, columns):
        if orthonormalize:
            normalize_left_of(node_values, node.start)
        if node.is_leaf:
            values[node.start] = node_values
            return
        pattern = chain.fused(node.start, node.stop)
        left_pattern = chain.fused(node.start, node.split)
        right_pattern = chain.fused(node.split, node.stop)
        b1 = left_pattern.b
        c1 = right_pattern.a // pattern.a
        left = np.empty(tuple(left_pattern), dtype=matrix.dtype)
        right = np.empty(tuple(right_pattern), dtype=matrix.dtype)
        norm2, residual2, bad = _split(node_values, columns, b1, c1, left, right, sigma_power, tol)
        if state["norm2"] is None:
            state["norm2"] = norm2
            if bad:
                _raise_not_finite(matrix)
        state["residual2"] += residual2
        state["splits"] += 1
        if progress is not None:
            progress(state["splits"], n_splits)
        solve(left, node.left, _identity(left_pattern.c))
        solve(right, node.right, _identity(right_pattern.c))

    columns = _identity(n) if perm is None else perm
    if root.is_leaf:  # a single factor: the matrix itself (n = 1 or a 1-factor chain)
        if not np.all(np.isfinite(matrix)):
            _raise_not_finite(matrix)
        leaf = np.ascontiguousarray(matrix[:, columns]).reshape(tuple(chain[0]))
        return [Factor(chain[0], leaf)], 0.0
    solve(matrix.reshape(1, n, n, 1), root, columns)
    norm2 = state["norm2"]
    error = math.sqrt(state["residual2"] / norm2) if norm2 > 0 else 0.0
    return [Factor(p, v) for p, v in zip(chain, values)], error


def _identity(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _split(node_values, columns, b1, c1, left, right, sigma_power, tol):
    """Run the block kernel, serial or parallel by size; return (‖node‖², residual², bad)."""
    a, big_b, big_c, d = node_values.shape
    block_bytes = b1 * (big_c // c1) * node_values.itemsize
    batch = max(1, min(c1, PANEL_BYTES // block_bytes))
    n_tasks = a * (big_b // b1) * d * -(-c1 // batch)
    parallel = node_values.size >= PARALLEL_MIN_NODE_SIZE and numba.get_num_threads() > 1
    n_chunks = min(n_tasks, CHUNKS_PER_THREAD * numba.get_num_threads()) if parallel else 1
    norm2 = np.zeros(n_chunks)
    residual2 = np.zeros(n_chunks)
    bad = np.zeros(n_chunks, dtype=np.int64)
    kernel = _kernels.split_rank_one_parallel if parallel else _kernels.split_rank_one_serial
    kernel(node_values, columns, b1, c1, batch, left, right, sigma_power, tol, n_chunks, norm2, residual2, bad)
    return float(norm2.sum()), float(residual2.sum()), int(bad.sum())


def _push_column_norms(factor_values: np.ndarray, target: np.ndarray) -> None:
    """Scale the columns of one factor to unit norm and multiply the matching rows of
    ``target`` (the next factor or node) by the norms; the product is unchanged."""
    a, b, c, d = factor_values.shape
    # (a, b, c, d) -> (a, c, d): norm over j of every column (i, k, t); hypot avoids
    # overflow for huge entries.
    norms = np.hypot.reduce(np.abs(factor_values), axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    factor_values /= safe[:, None, :, :]
    # Column (i, k, t) of this factor is row (i*c + k)*d + t of the target, which as a
    # 4-D target (a', b', c', d') is index (i', j', t') in C order: reshape, no copy.
    ta, tb, _, td = target.shape
    target *= norms.reshape(ta, tb, 1, td)


def _raise_not_finite(matrix):
    where = np.argwhere(~np.isfinite(matrix))
    raise ValueError(
        f"matrix contains NaN or Inf ({len(where)} entries, first at index "
        f"{tuple(int(i) for i in where[0])}); factorize needs finite values"
    )
