"""The hierarchical butterfly factorization."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np

from . import _kernels
from .butterfly import SUPPORTED_DTYPES, Butterfly, Factor
from .patterns import Chain, Pattern
from .permutations import bit_reversal_permutation, dao_permutations, validate_permutation
from .trees import Node, build_tree

__all__ = ["factorize"]

# Node sizes (stored values) from which the rank-one block kernel runs in parallel; below
# it the serial build wins on 2 cores.
PARALLEL_MIN_NODE_SIZE = 1 << 16
# Blocks are handed out in this many chunks per thread (load balance vs. overhead).
CHUNKS_PER_THREAD = 4
# Bytes of the panel into which each task gathers the rows its blocks share.
PANEL_BYTES = 1 << 25


def factorize(matrix, *, chain=None, n_factors=None, rank=1, tree="balanced", perm=None,
              row_perm=None, orthonormalize=True, pad=False, memory_limit="auto",
              progress=None):
    """Approximate a matrix by a product of butterfly (Kronecker-sparse) factors.

    Runs the hierarchical algorithm: split the chain of factors in two, solve that
    two-factor problem exactly (independent blocks, one best rank-``r`` approximation
    each), and recurse into both halves along ``tree``.

    Parameters
    ----------
    matrix : (m, n) array_like
        float32, float64, complex64 and complex128 are kept; bool and integer input is
        converted to float64, float16 to float32.  The array is never modified.
    chain : Chain or sequence of (a, b, c, d), optional
        The factor patterns, left-most first; their product must be ``m × n``.
        Default: the square dyadic butterfly chain when ``m == n`` is a power of two and
        ``rank == 1`` (and ``n_factors`` is ``None`` or ``log2(n)``), otherwise
        ``Chain.auto(m, n, n_factors, rank)``, the chain storing the fewest values.
    n_factors : int, optional
        Number of factors of the automatic chain (ignored with ``chain``).
    rank : int, default 1
        Rank carried between consecutive factors of the automatic chain (``r > 1`` gives
        Monarch-like / deformable butterfly chains).
    tree : str or nested tuple, default "balanced"
        ``"balanced"``, ``"left-to-right"``, ``"right-to-left"``, or a binary tree over
        the factor indices ``0..L-1`` as nested 2-tuples, e.g. ``((0, 1), (2, 3))``
        (see :mod:`fastbfly.trees`).
    perm : None, str, (n,) int array, or list of those, optional
        Column permutation applied before factorizing: the factors approximate
        ``matrix[:, perm]`` and the returned `Butterfly` carries ``perm``, so that ``B``
        approximates ``matrix`` itself.  Names: ``"identity"``, ``"bitrev"`` (bit
        reversal; the DFT is a butterfly after it), ``"dao8"`` (the eight permutations
        of Dao et al. 2019, pyfaust's ``default_8``, see
        :func:`fastbfly.permutations.dao_permutations`) and ``"auto"`` (the same eight,
        which include the identity and the bit reversal; sizes that are not powers of
        two only have the identity).  With several candidates each is factorized in
        turn and the one with the smallest error is kept; every candidate's error is in
        ``B.info["candidates"]``.
    row_perm : same as ``perm``, optional
        Row permutation: the factors approximate ``matrix[row_perm][:, perm]``.  With
        candidates for both, every pair is tried (the cost multiplies).
    orthonormalize : bool, default True
        Keep the already-computed factors orthonormal block by block (QR of each group
        of ``r`` columns) and push the rest into the part still to be factorized.  Each
        step's error is then exactly the increase of the global error, which is what
        keeps noisy inputs accurate.  With False the singular values are split evenly
        between the two sides of every split.
    pad : bool, default False
        If no chain fits ``m × n`` (a large prime factor), zero-pad the matrix to the
        nearest sizes whose prime factors are at most 7 and factorize that; ``B`` keeps
        the shape ``(m, n)``.  Never done silently.
    memory_limit : "auto", int or None, default "auto"
        Before any work, the memory the factorization will allocate (copies of the
        input, tree nodes, work panels) is estimated; above this many bytes a
        `MemoryError` says how much is needed.  ``"auto"``: the memory available now
        (``MemAvailable`` of ``/proc/meminfo``; no check where that is unknown).
        ``None`` disables the check.
    progress : callable, optional
        Called as ``progress(done, total)`` after every two-factor split.  A
        ``KeyboardInterrupt`` stops the factorization after the current split; the
        input is never modified, so nothing is lost.

    Returns
    -------
    Butterfly
        ``B.info`` holds ``"relative_error"``: the root-sum-square of the relative
        errors of all two-factor splits.  With ``orthonormalize`` on and the
        ``"left-to-right"`` or ``"right-to-left"`` tree every split's error adds
        orthogonally, so it equals ``‖matrix - B‖_F / ‖matrix‖_F`` (to rounding); for
        other trees it is an estimate (within a few percent in our tests), and
        :func:`fastbfly.certify` computes the actual error.  Also ``"tree"``,
        ``"perm"``/``"row_perm"`` (labels of the chosen permutations),
        ``"candidates"`` (every permutation tried, with its error),
        ``"padded_shape"`` and ``"seconds"``.

    Raises
    ------
    TypeError
        For non-numeric dtypes.
    ValueError
        For arrays that are not 2-D, empty, contain NaN or Inf; a chain that does not
        match the shape or is not chainable; a rank larger than a block allows; an
        impossible number of factors; a malformed ``tree`` or ``perm``.

    Notes
    -----
    A tree node covering factors ``s..e`` has the pattern ``fuse(π_s, ..., π_e)`` and is
    stored as a 4-D array ``(a, B, C, d)``; splitting it gives ``a*c1*b2*d``
    independent ``b1 × C2`` blocks (see :func:`fastbfly._kernels._split_rank_one_py`).
    Exact products on the chain are recovered to machine precision by every tree.

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
    original = matrix
    matrix = _as_matrix(matrix)
    m, n = matrix.shape
    chain, padded = _resolve_chain(chain, matrix.shape, n_factors, rank, pad)
    root = build_tree(tree, len(chain))
    plan = _plan(chain, root, orthonormalize)
    copies = (matrix is not original and not np.shares_memory(matrix, np.asarray(original)))
    copies += padded != (m, n)
    copies += row_perm is not None
    _check_memory(plan, matrix.dtype, padded, copies, memory_limit)
    if padded != (m, n):
        grown = np.zeros(padded, dtype=matrix.dtype)
        grown[:m, :n] = matrix
        matrix = grown
    column_candidates = _perm_candidates(perm, n, padded[1], "perm")
    row_candidates = _perm_candidates(row_perm, m, padded[0], "row_perm")

    best = None
    tried = []
    for row_label, rows in row_candidates:
        permuted = matrix if rows is None else matrix[rows]
        for column_label, columns in column_candidates:
            factors, error = _hierarchical(permuted, chain, root, plan, columns, orthonormalize, progress)
            tried.append({"row_perm": row_label, "perm": column_label, "relative_error": error})
            if best is None or error < best[0]:
                best = (error, factors, rows, columns, row_label, column_label)
    error, factors, rows, columns, row_label, column_label = best
    info = {
        "relative_error": error,
        "tree": root.to_nested(),
        "perm": column_label,
        "row_perm": row_label,
        "candidates": tried,
        "orthonormalize": bool(orthonormalize),
        "padded_shape": padded,
        "seconds": time.perf_counter() - started,
    }
    return Butterfly(factors, perm=columns, row_perm=rows, info=info, shape=(m, n))


def _as_matrix(matrix) -> np.ndarray:
    """Validate the input and return a C-contiguous array of a supported dtype
    (a view of the caller's array when nothing needs converting)."""
    if hasattr(matrix, "toarray") and not isinstance(matrix, np.ndarray):
        raise TypeError(
            f"matrix must be a dense array, got {type(matrix).__name__}; call .toarray() "
            f"first if it is small enough"
        )
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
    return np.ascontiguousarray(array)


def _resolve_chain(chain, shape, n_factors, rank, pad):
    """The chain to factorize on, and the (possibly zero-padded) shape it covers."""
    m, n = shape
    if chain is not None:
        if n_factors is not None or rank != 1:
            raise ValueError("give either chain or n_factors/rank, not both")
        chain = chain if isinstance(chain, Chain) else Chain(chain)
        if chain.reversed:
            raise ValueError(
                f"{chain!r} is the transpose of a chainable chain; factorize matrix.T on "
                f"Chain([p.adjoint for p in reversed(chain)]) instead"
            )
        if chain.shape != shape:
            raise ValueError(f"chain of shape {chain.shape} does not match the matrix shape {shape}")
        support = chain.fused(0, len(chain))
        if support.a > 1 or support.d > 1:
            raise ValueError(
                f"{chain!r} only covers the support {tuple(support)} (a block-diagonal or "
                f"Kronecker-structured part of the matrix), not the whole matrix: use a "
                f"chain whose first pattern has a = 1 and last pattern has d = 1"
            )
        return chain, shape
    if (m == n and m & (m - 1) == 0 and rank == 1
            and n_factors in (None, max(1, m.bit_length() - 1))):
        return Chain.square_dyadic(m), shape
    try:
        return Chain.auto(m, n, n_factors, rank), shape
    except ValueError:
        if not pad:
            raise
    for grown_m, grown_n in _smooth_sizes(m, n):
        try:
            return Chain.auto(grown_m, grown_n, n_factors, rank), (grown_m, grown_n)
        except ValueError:
            continue
    raise ValueError(f"no chain fits even after padding {shape} (n_factors={n_factors}, rank={rank})")


def _smooth_sizes(m: int, n: int):
    """Pairs of sizes >= (m, n) with prime factors <= 7, smallest total first, up to 2x."""
    def smooth(k):
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        return k == 1

    rows = [k for k in range(m, 2 * m + 1) if smooth(k)]
    cols = [k for k in range(n, 2 * n + 1) if smooth(k)]
    return sorted(((r, c) for r in rows for c in cols), key=lambda rc: rc[0] * rc[1])


def _perm_candidates(perm, n: int, padded_n: int, name: str) -> list:
    """``(label, index vector or None)`` pairs to try, each vector extended by the
    identity over padded positions."""
    if perm is None:
        candidates = [("identity", None)]
    elif isinstance(perm, str):
        candidates = _named_perms(perm, n, name)
    elif isinstance(perm, (list, tuple)) and any(
        item is None or isinstance(item, str) or np.ndim(item) > 0 for item in perm
    ):
        candidates = []
        for index, item in enumerate(perm):
            if item is None:
                candidates.append(("identity", None))
            elif isinstance(item, str):
                candidates.extend(_named_perms(item, n, name))
            elif np.ndim(item) == 1:
                candidates.append((f"candidate {index}", validate_permutation(item, n, name)))
            else:
                raise ValueError(
                    f"{name} candidates must be None, names or index vectors, got item "
                    f"{index} with shape {np.shape(item)}"
                )
    else:
        array = np.asarray(perm)
        if array.ndim == 2:
            candidates = [(f"candidate {k}", validate_permutation(row, n, name)) for k, row in enumerate(array)]
        else:
            candidates = [("given", validate_permutation(array, n, name))]
    if padded_n == n:
        return candidates
    tail = np.arange(n, padded_n, dtype=np.int64)
    return [(label, None if p is None else np.concatenate([p, tail])) for label, p in candidates]


DAO_NAMES = ("dao-000", "dao-001", "dao-010", "dao-011", "dao-100", "dao-101", "dao-110", "dao-111")


def _named_perms(label: str, n: int, name: str) -> list:
    if label == "identity":
        return [("identity", None)]
    power_of_two = n & (n - 1) == 0
    if label == "bitrev":
        if not power_of_two:
            raise ValueError(f"{name}='bitrev' needs a power-of-two size, got {n}")
        return [("bitrev", bit_reversal_permutation(n))]
    if label == "dao8" or (label == "auto" and power_of_two and n >= 4):
        if not power_of_two:
            raise ValueError(f"{name}='dao8' needs a power-of-two size, got {n}")
        return list(zip(DAO_NAMES, dao_permutations(n)))
    if label == "auto":
        return [("identity", None)]
    raise ValueError(
        f"unknown {name} {label!r}: expected 'identity', 'bitrev', 'dao8', 'auto', an "
        f"index vector or a list of those"
    )


@dataclass(frozen=True)
class _Split:
    """How to split one tree node: patterns of the node and its children, block sizes."""

    pattern: Pattern
    left: Pattern
    right: Pattern
    b1: int  # rows per block
    c1: int  # column groups
    rank: int
    c2: int  # columns per block


def _plan(chain: Chain, root: Node, orthonormalize: bool) -> dict:
    """Patterns and block sizes of every split of the tree, checked before any work."""
    plan = {}

    def visit(node: Node):
        if node.is_leaf:
            return
        pattern = chain.fused(node.start, node.stop)
        left = chain.fused(node.start, node.split)
        right = chain.fused(node.split, node.stop)
        c1 = right.a // pattern.a
        rank = left.c // c1
        split = _Split(pattern, left, right, left.b, c1, rank, right.c)
        if rank > min(split.b1, split.c2):
            raise ValueError(
                f"rank {rank} between factors {node.split - 1} and {node.split} is larger "
                f"than the {split.b1} x {split.c2} blocks of that split allow"
            )
        plan[(node.start, node.stop)] = split
        visit(node.left)
        visit(node.right)

    visit(root)
    if orthonormalize:
        for index, (pattern, rank) in enumerate(zip(chain.patterns, chain.ranks)):
            if rank > pattern.b:
                raise ValueError(
                    f"rank {rank} after factor {index} exceeds its {pattern.b} rows per "
                    f"block, so it cannot be orthonormalized; use orthonormalize=False "
                    f"or a smaller rank"
                )
    return plan


def _hierarchical(matrix, chain: Chain, root: Node, plan: dict, perm, orthonormalize: bool,
                  progress):
    """Factorize ``matrix[:, perm]`` on ``chain`` along the tree ``root``.

    Returns the factors (left-most first) and the relative error from the block
    residuals.
    """
    m, n = matrix.shape
    values = [None] * len(chain)  # final 4-D values of each factor, once known
    # squared norms in units of 4**exponent, as (value, exponent) pairs
    state = {"normalized": 0, "residuals": [], "splits": 0, "norm2": None}
    sigma_power = 1.0 if orthonormalize else 0.5

    def normalize_left_of(node_values, start):
        # Make X_1 ⋯ X_{start-1} column-orthonormal block by block by orthonormalizing
        # each not-yet-normalized factor's column groups and pushing the triangular
        # factors into the next factor, the last one into the node about to be
        # factorized.  Each factor is normalized once: later pushes only go right.
        for index in range(state["normalized"], start):
            target = values[index + 1] if index + 1 < start else node_values
            _push_column_frames(values[index], target, chain.ranks[index])
        state["normalized"] = max(state["normalized"], start)

    def solve(node_values, node: Node, columns):
        if orthonormalize:
            normalize_left_of(node_values, node.start)
        if node.is_leaf:
            values[node.start] = node_values
            return
        split = plan[(node.start, node.stop)]
        left = np.empty(tuple(split.left), dtype=matrix.dtype)
        right = np.empty(tuple(split.right), dtype=matrix.dtype)
        norm2, residual2, exponent, bad = _split(node_values, columns, split, left, right, sigma_power)
        if state["norm2"] is None:
            state["norm2"] = (norm2, exponent)
            if bad:
                _raise_not_finite(matrix)
        state["residuals"].append((residual2, exponent))
        state["splits"] += 1
        if progress is not None:
            progress(state["splits"], len(plan))
        solve(left, node.left, _identity(split.left.c))
        solve(right, node.right, _identity(split.right.c))

    columns = _identity(n) if perm is None else perm
    if root.is_leaf:  # a single factor: the matrix itself
        if not np.all(np.isfinite(matrix)):
            _raise_not_finite(matrix)
        leaf = np.ascontiguousarray(matrix[:, columns]).reshape(tuple(chain[0]))
        return [Factor(chain[0], leaf)], 0.0
    solve(matrix.reshape(1, m, n, 1), root, columns)
    norm2, norm_exponent = state["norm2"]
    relative2 = sum(math.ldexp(r, 2 * (e - norm_exponent)) for r, e in state["residuals"])
    error = math.sqrt(relative2 / norm2) if norm2 > 0 else 0.0
    return [Factor(p, v) for p, v in zip(chain, values)], error


def estimate_memory(plan: dict, dtype, shape, input_copies: int) -> int:
    """Bytes a factorization allocates at most besides the caller's matrix: the input
    copies (dtype conversion, padding, row permutation), every tree node's values (all
    may be alive at once at the deepest point of the recursion, an upper bound), and
    the per-thread work panels of the root split."""
    itemsize = np.dtype(dtype).itemsize
    nodes = sum(split.left.nnz + split.right.nnz for split in plan.values())
    panels = numba.get_num_threads() * PANEL_BYTES
    return int(input_copies * shape[0] * shape[1] * itemsize + nodes * itemsize + panels)


def _available_memory():
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(plan, dtype, shape, input_copies, memory_limit):
    if memory_limit is None:
        return
    label = repr(memory_limit)
    if isinstance(memory_limit, str):
        if memory_limit != "auto":
            raise ValueError(f"memory_limit must be 'auto', a number of bytes or None, got {memory_limit!r}")
        memory_limit = _available_memory()
        if memory_limit is None:
            return
    elif isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer)):
        raise TypeError(f"memory_limit must be 'auto', a number of bytes or None, got {memory_limit!r}")
    needed = estimate_memory(plan, dtype, shape, input_copies)
    if needed > memory_limit:
        raise MemoryError(
            f"factorizing a {shape[0]} x {shape[1]} {np.dtype(dtype)} matrix needs about "
            f"{needed / 2**30:.2f} GiB besides the input, but the limit is "
            f"{memory_limit / 2**30:.2f} GiB (memory_limit={label}); "
            f"free memory, or pass memory_limit=None to try anyway"
        )


def _identity(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _split(node_values, columns, split: _Split, left, right, sigma_power):
    """Run a block kernel on one node.

    Returns ``(norm2, residual2, exponent, bad)``: ``‖node‖²`` and the squared residual
    in units of ``4**exponent``, and the number of blocks holding NaN or Inf.
    """
    a, big_b, _, d = node_values.shape
    b1, c1, c2 = split.b1, split.c1, split.c2
    threads = numba.get_num_threads()
    if split.rank > 1:
        n_chunks = 1
        args = (node_values, columns, b1, c1, split.rank, left, right, sigma_power, n_chunks)
        kernel = _kernels.split_rank_r_serial
    else:
        # Singular vectors in double precision whatever the data's precision.
        work = np.zeros(1, dtype=np.complex128 if node_values.dtype.kind == "c" else np.float64)
        tol = 8.0 * np.finfo(np.float64).eps
        batch = max(1, min(c1, PANEL_BYTES // (b1 * c2 * node_values.itemsize)))
        n_tasks = a * (big_b // b1) * d * -(-c1 // batch)
        parallel = node_values.size >= PARALLEL_MIN_NODE_SIZE and threads > 1
        n_chunks = min(n_tasks, CHUNKS_PER_THREAD * threads) if parallel else 1
        kernel = _kernels.split_rank_one_parallel if parallel else _kernels.split_rank_one_serial
        args = (node_values, columns, b1, c1, batch, left, right, sigma_power, tol, work, n_chunks)
    norm2 = np.zeros(n_chunks)
    residual2 = np.zeros(n_chunks)
    exponent = np.zeros(n_chunks, dtype=np.int64)
    bad = np.zeros(n_chunks, dtype=np.int64)
    kernel(*args, norm2, residual2, exponent, bad)
    top = int(exponent[norm2 > 0].max()) if np.any(norm2 > 0) else 0
    shifts = 2 * (exponent - top)
    return (float(np.ldexp(norm2, shifts).sum()), float(np.ldexp(residual2, shifts).sum()),
            top, int(bad.sum()))


def _push_column_frames(factor_values: np.ndarray, target: np.ndarray, rank: int) -> None:
    """Orthonormalize one factor's column groups and push the triangular factors into
    the matching rows of ``target`` (the next factor or node); the product is unchanged.

    The ``rank`` columns ``k1*rank + ρ`` of block ``(i, t)`` share their support, so
    they form one ``b × rank`` matrix ``Q R``.  In the target they are the rows
    ``(i', ρ*(d/d') + j0, t')`` with ``i' = i*(c/rank) + k1`` and ``t = j0*d' + t'``,
    which share their support too: ``R`` mixes them without leaving the pattern.
    """
    a, b, c, d = factor_values.shape
    ta, tb, tc, td = target.shape
    if rank == 1:
        # (a, b, c, d) -> (a, c, d): norm of every column; hypot avoids overflow.
        norms = np.hypot.reduce(np.abs(factor_values), axis=1)
        factor_values /= np.where(norms > 0, norms, 1.0)[:, None, :, :]
        target *= norms.reshape(ta, tb, 1, td)
        return
    # (a, b, c, d) -> (a, c/r, d, b, r): one b × r matrix per column group
    groups = factor_values.reshape(a, b, c // rank, rank, d).transpose(0, 2, 4, 1, 3)
    q, r = np.linalg.qr(groups)
    factor_values[...] = q.transpose(0, 3, 1, 4, 2).reshape(a, b, c, d)
    # target (a', b', c', d') -> (a', d/d', d', r, c'): the r rows each R mixes
    spread = d // td
    rows = target.reshape(ta, rank, spread, tc, td).transpose(0, 2, 4, 1, 3)
    mixed = np.matmul(r.reshape(ta, spread, td, rank, rank), rows)
    target[...] = mixed.transpose(0, 3, 1, 4, 2).reshape(ta, tb, tc, td)


def _raise_not_finite(matrix):
    where = np.argwhere(~np.isfinite(matrix))
    raise ValueError(
        f"matrix contains NaN or Inf ({len(where)} entries, first at index "
        f"{tuple(int(i) for i in where[0])}); factorize needs finite values"
    )


def split_errors(matrix, chain: Chain, perm=None) -> np.ndarray:
    """``E_l = min ‖matrix[:, perm] - A B‖_F`` over ``A`` on ``fuse(π_1..π_l)`` and ``B``
    on ``fuse(π_{l+1}..π_L)``, for ``l = 1..L-1`` (absolute, not relative).

    Each is one exact two-factor problem (independent blocks, truncated SVD), so the
    cost is ``L - 1`` root splits.  Every product on the chain is also such a
    two-factor product, so ``max_l E_l`` bounds the best achievable error from below.
    ``matrix`` must already be validated and of the chain's shape.
    """
    m, n = matrix.shape
    columns = _identity(n) if perm is None else perm
    errors = np.empty(len(chain) - 1)
    for split_at in range(1, len(chain)):
        node = Node(0, len(chain), Node(0, split_at), Node(split_at, len(chain)))
        split = _plan(chain, node, orthonormalize=False)[(0, len(chain))]
        left = np.empty(tuple(split.left), dtype=matrix.dtype)
        right = np.empty(tuple(split.right), dtype=matrix.dtype)
        _, residual2, exponent, bad = _split(matrix.reshape(1, m, n, 1), columns, split, left, right, 0.5)
        if bad:
            _raise_not_finite(matrix)
        errors[split_at - 1] = math.ldexp(math.sqrt(residual2), exponent)
    return errors
