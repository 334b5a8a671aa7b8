"""Exact errors of a chain's splits (one pass over the matrix per group of splits) and of
a butterfly product (one pass): wrappers of :mod:`fastbfly._error_kernels`, shared by
`certify` and `factorize`.

The inputs are validated by the callers: a finite C-contiguous ``(m, n)`` matrix of a
supported dtype and a chainable chain of that shape whose product is a full matrix
(first pattern ``a = 1``, last ``d = 1``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import _error_kernels
from .patterns import Chain

# Matrices from this many entries are processed by the threaded kernels (below it the
# thread start-up costs more than it saves on 2 cores; same threshold as factorize).
PARALLEL_MIN_SIZE = 1 << 16
# The product's error pass is nearly memory-bound: measured on 2 cores, each call after
# 20 ms idle (threads asleep, caches cold), two threads against one take 9.8 against
# 16.8 ms at N = 4096 but 5.0 against 4.4 ms at N = 2048 and 1.3 against 1.1 ms at
# N = 1024 (thread wake-ups), so it stays serial below this size.
PRODUCT_PARALLEL_MIN_SIZE = 1 << 24
# Tasks are handed out in this many chunks per thread (load balance vs. overhead).
CHUNKS_PER_THREAD = 4
# Bytes of the tile from which `_error_kernels.split_errors_tiled_serial` solves the
# blocks of several splits: the matrix is read once per group of splits whose blocks
# fit in one tile this size.  The groups are bound by their arithmetic, not by where
# the tile sits: on 1 MiB of L2 per core, tiles of 512 KiB to 4 MiB form the same
# three groups at N = 4096 complex, in the same times; 256 KiB needs four groups
# (159 against 125 ms near-exact) ...
TILE_BYTES = 1 << 20
# ... and each of the tile's rows is read over at least this many consecutive columns
# (whole cache lines) even when the blocks are narrow.
MIN_RUN = 64


def split_geometry(chain: Chain, split_at: int) -> tuple:
    """``(b1, c1, rank, c2)`` of the root split between factors ``split_at - 1`` and
    ``split_at`` (0-based): rows per block, column groups, rank, columns per block."""
    left = chain.fused(0, split_at)
    right = chain.fused(split_at, len(chain))
    c1 = right.a  # the root has a = 1
    return left.b, c1, left.c // c1, right.c


def _chunks(size: int, n_tasks: int, min_size: int = PARALLEL_MIN_SIZE) -> tuple:
    """``(parallel, n_chunks)`` for a pass over ``size`` entries in ``n_tasks`` tasks."""
    threads = numba.get_num_threads()
    if size >= min_size and threads > 1 and n_tasks > 1:
        return True, min(n_tasks, CHUNKS_PER_THREAD * threads)
    return False, 1


def split_errors(matrix: np.ndarray, chain: Chain, columns=None, values=None) -> np.ndarray:
    """``E_l = min ‖matrix[:, columns] − A B‖_F`` over ``A`` on ``fuse(π_1..π_l)`` and
    ``B`` on ``fuse(π_{l+1}..π_L)``, for ``l = 1..L-1`` (absolute).

    Runs of consecutive rank-one splits share one pass over the matrix (a tile in
    cache holds whole blocks of all of them: `_tile_groups`,
    `_error_kernels.split_errors_tiled_serial`); a split of rank ``r > 1`` is a
    pass of its own (a LAPACK SVD per block).  Each block's best rank-``r`` error is
    computed; no factor values are built.  ``values``, the factors' values of a
    butterfly on ``chain`` approximating ``matrix[:, columns]`` (e.g. the one being
    certified), only speed it up: the power iterations of rank-one splits start from
    the butterfly's own blocks, exactly rank one (`_warm_starts`); the errors are the
    same to the solver's tolerance.  Near-exact blocks (best error below ``~3e-3`` of
    the block's norm, where ``‖M‖² − σ₁²`` cancels) get the error of their top
    singular pair computed directly: accurate to rounding (the pair's), and never
    below the best error but for rounding.

    Raises
    ------
    ValueError
        If the matrix holds NaN or Inf.
    """
    m, n = matrix.shape
    columns = np.arange(n, dtype=np.int64) if columns is None else np.ascontiguousarray(columns, dtype=np.int64)
    contiguous = bool(np.array_equal(columns, np.arange(n)))
    matrix = np.ascontiguousarray(matrix)
    wide = np.complex128 if matrix.dtype.kind == "c" else np.float64
    work = np.zeros(1, dtype=wide)
    tol = 8.0 * np.finfo(np.float64).eps
    errors = np.empty(len(chain) - 1)
    double = None
    for group in _tile_groups(chain, matrix.itemsize):
        if split_geometry(chain, group[0])[2] == 1:  # rank one: the group in one pass
            errors[np.array(group) - 1] = _tiled_errors(matrix, chain, group, columns,
                                                       contiguous, values, work, tol)
            continue
        (split_at,) = group
        b1, c1, rank, c2 = split_geometry(chain, split_at)
        if double is None:  # LAPACK in double precision whatever the data's
            double = np.ascontiguousarray(matrix, dtype=wide)
        out = _outputs(1)
        _error_kernels.split_errors_rank_r_serial(double, columns, b1, c1, rank, *out)
        _, residual2, exponent, bad = out
        if bad.sum():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
            raise ValueError(f"matrix contains NaN or Inf (first at index {where})")
        errors[split_at - 1] = _sum_scaled(residual2, exponent)
    return errors


def _tile_groups(chain: Chain, itemsize: int) -> list:
    """The splits ``1..L-1`` in runs of consecutive rank-one splits whose blocks fit
    in one tile of at most ``TILE_BYTES`` (`_error_kernels._split_errors_tiled_py`:
    ``b1`` of the last split times ``C2`` of the first); a split of rank > 1 is a run
    of its own.  Each segment of consecutive rank-one splits is cut into as few runs
    as a greedy cut gives; among the cuts into that many runs that fit, the one that
    leaves the fewest splits forming small Gram matrices from their own blocks
    (`_gram_plan`: a run of such splits reads only the blocks of its largest side)
    and then has the shortest longest run (smaller tiles) is taken."""
    geometry = {l: split_geometry(chain, l) for l in range(1, len(chain))}

    def fits(first, last):
        return geometry[last][0] * geometry[first][3] * itemsize <= TILE_BYTES

    def sources(run):  # splits of the run that form small Gram matrices from their blocks
        rows = np.array([geometry[l][0] for l in run], dtype=np.int64)
        columns = np.array([geometry[l][3] for l in run], dtype=np.int64)
        plan = _gram_plan(rows, columns, 1, 1, sizes=False)
        return sum(1 for s in range(len(run))
                   if plan[s, 0] < 0 and min(rows[s], columns[s]) <= _error_kernels.GRAM_SIDE)

    def best_cut(segment, count, longest):
        """Fewest sources over the cuts into ``count`` fitting runs of at most
        ``longest`` splits: ``(sources, cut)``, or ``None`` (dynamic programming)."""
        size = len(segment)
        best = {(0, 0): (0, [])}  # (splits used, runs) -> (sources, cut)
        for used in range(size):
            for runs_so_far in range(count):
                if (used, runs_so_far) not in best:
                    continue
                total, cut = best[used, runs_so_far]
                for end in range(used + 1, min(size, used + longest) + 1):
                    run = segment[used:end]
                    if len(run) > 1 and not fits(run[0], run[-1]):  # a split alone may not
                        break
                    key = (end, runs_so_far + 1)
                    candidate = (total + sources(run), cut + [run])
                    if key not in best or candidate[0] < best[key][0]:
                        best[key] = candidate
        return best.get((size, count))

    runs = []
    segment = []  # consecutive rank-one splits
    for l in list(geometry) + [None]:
        if l is not None and geometry[l][2] == 1:
            segment.append(l)
            continue
        count = 0
        last = None
        for split in segment:  # greedy: how many runs are needed
            if last is None or not fits(last, split):
                count, last = count + 1, split
        if count:
            fewest = best_cut(segment, count, len(segment))[0]
            for longest in range(-(-len(segment) // count), len(segment) + 1):
                found = best_cut(segment, count, longest)
                if found is not None and found[0] == fewest:
                    runs += found[1]
                    break
        segment = []
        if l is not None:
            runs.append([l])
    return runs


def _tiled_errors(matrix: np.ndarray, chain: Chain, group: list, columns: np.ndarray,
                  contiguous: bool, values, work: np.ndarray, tol: float) -> np.ndarray:
    """``E_l`` of the rank-one splits ``group`` (consecutive), in one pass
    (`_error_kernels.split_errors_tiled_serial`)."""
    m, n = matrix.shape
    geometry = [split_geometry(chain, l) for l in group]
    block_rows = np.array([g[0] for g in geometry], dtype=np.int64)
    block_columns = np.array([g[3] for g in geometry], dtype=np.int64)
    tile_rows, widest = int(block_rows[-1]), int(block_columns[0])
    # widen the tile to whole cache lines per row when the blocks are narrow, within
    # the tile's budget; the width must divide n
    groups = n // widest
    batch = max(1, min(groups, TILE_BYTES // (tile_rows * widest * matrix.itemsize),
                       -(-MIN_RUN // widest)))
    while groups % batch:
        batch -= 1
    width = widest * batch
    sides = np.zeros(len(group), dtype=np.int64)
    offsets = np.zeros(len(group), dtype=np.int64)
    pieces = []
    used = 0
    for index, l in enumerate(group):
        b1, _, _, c2 = geometry[index]
        if values is not None and min(b1, c2) > _error_kernels.GRAM_SIDE:
            starts, side = _warm_starts(chain, values, l, work.dtype)
            if side:
                sides[index], offsets[index] = side, used
                pieces.append(starts.ravel())
                used += starts.size
    starts = np.concatenate(pieces) if pieces else np.zeros(1, dtype=work.dtype)
    gram_plan, gram_size = _gram_plan(block_rows, block_columns, tile_rows, width)
    n_tiles = (m // tile_rows) * (n // width)
    parallel, n_chunks = _chunks(matrix.size, n_tiles)
    kernel = (_error_kernels.split_errors_tiled_parallel if parallel
              else _error_kernels.split_errors_tiled_serial)
    shape = (n_chunks, len(group))
    norm2, residual2 = np.zeros(shape), np.zeros(shape)
    exponent, bad = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    kernel(matrix, columns, contiguous, block_rows, block_columns, sides, offsets, starts,
           width, tol, work, np.full(1, 1j if work.dtype.kind == "c" else 0, dtype=work.dtype),
           gram_plan, gram_size, n_chunks, norm2, residual2, exponent, bad)
    if bad.sum():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
        raise ValueError(f"matrix contains NaN or Inf (first at index {where})")
    return np.array([_sum_scaled(residual2[:, s], exponent[:, s]) for s in range(len(group))])


def _gram_plan(block_rows: np.ndarray, block_columns: np.ndarray, tile_rows: int,
               width: int, sizes: bool = True):
    """``(gram_plan, gram_size)`` for `_error_kernels.split_errors_tiled_serial`:
    which splits of a group sum their blocks' Gram matrices from a neighbour's.

    A split whose blocks have ``b1 <= GRAM_SIDE`` rows (and no more rows than
    columns) takes the Gram matrices of its rows from the next split, if that one
    is of the same kind; one with ``C2 <= GRAM_SIDE`` columns (fewer than its rows)
    takes those of its columns from the previous split.  So only the split with
    the largest such side reads its blocks for them (at 4096 × 4096: the 16-row and
    16-column splits, instead of eight).  ``sizes=False``: the plan alone, without
    the order and the buffer's layout."""
    count = len(block_rows)
    by_rows = [b1 <= min(c2, _error_kernels.GRAM_SIDE) for b1, c2 in zip(block_rows, block_columns)]
    by_columns = [c2 < b1 and c2 <= _error_kernels.GRAM_SIDE
                  for b1, c2 in zip(block_rows, block_columns)]
    plan = np.full((count, 3), -1, dtype=np.int64)
    for s in range(count):
        if by_rows[s] and s + 1 < count and by_rows[s + 1]:
            plan[s, 0] = s + 1
        elif by_columns[s] and s > 0 and by_columns[s - 1]:
            plan[s, 0] = s - 1
    if not sizes:
        return plan
    size = 0
    for s in sorted(set(plan[:, 0]) - {-1}):
        plan[s, 1] = size
        side = min(block_rows[s], block_columns[s])
        size += (tile_rows // block_rows[s]) * (width // block_columns[s]) * side * side
    # the splits read from their blocks first, then those summed, each after its source
    own = [s for s in range(count) if plan[s, 0] < 0]
    rows = [s for s in reversed(range(count)) if plan[s, 0] == s + 1]
    columns = [s for s in range(1, count) if plan[s, 0] == s - 1]
    plan[:, 2] = own + rows + columns
    return plan, max(size, 1)


def gather(matrix: np.ndarray, rows=None, columns=None) -> np.ndarray:
    """``matrix[rows][:, columns]`` (``None``: all, in order) as a new C-contiguous
    array, by a Numba kernel (``numpy.take`` along the columns is several times
    slower).  Indices must be valid (checked by the callers)."""
    m, n = matrix.shape
    rows = np.arange(m, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    columns = np.arange(n, dtype=np.int64) if columns is None else np.ascontiguousarray(columns, dtype=np.int64)
    out = np.empty((len(rows), len(columns)), dtype=matrix.dtype)
    parallel, n_chunks = _chunks(out.size, len(rows))
    (_error_kernels.gather_parallel if parallel else _error_kernels.gather_serial)(
        np.ascontiguousarray(matrix), rows, columns, out, n_chunks)
    return out


# Placeholder start vectors (none: the blocks start from their largest row).
_NO_STARTS = {"f": np.zeros((1, 1, 1)), "c": np.zeros((1, 1, 1), dtype=np.complex128)}


def _warm_starts(chain: Chain, values, split_at: int, dtype) -> tuple:
    """``(starts, side)`` for `_tiled_errors` (shape ``(c1, b2, k)``): the top
    singular vectors of the blocks of the butterfly with factor ``values`` at a
    rank-one split, from the fused factors on the cheaper side.

    Fused at the split, the product is ``left[0, j1, k1, j2] · right[k1, j2, k2, 0]``:
    block ``(k1, j2)`` is the rank-one ``a bᵀ`` with ``a = left[0, :, k1, j2]`` (its
    left singular vector, side 2) and ``b = right[k1, j2, :, 0]`` (``conj(b)`` is its
    right one, side 1).  ``left`` has ``m·c1`` values, ``right`` ``n·b2``: the smaller
    is built (at most ``~N^1.5`` for a square butterfly).  Placeholder and side 0 when
    the values are complex but the matrix real (no real start vector)."""
    if dtype.kind == "f" and any(np.asarray(v).dtype.kind == "c" for v in values):
        return _NO_STARTS["f"], 0
    m, n = chain.shape
    b1, c1, _, c2 = split_geometry(chain, split_at)
    b2 = m // b1
    if m * c1 <= n * b2:
        left = fuse_values(chain, values, 0, split_at).reshape(b1, c1, b2)
        return np.ascontiguousarray(left.transpose(1, 2, 0), dtype=dtype), 2
    right = fuse_values(chain, values, split_at, len(chain)).reshape(c1, b2, c2)
    return np.ascontiguousarray(np.conj(right), dtype=dtype), 1


def _outputs(n_chunks: int) -> tuple:
    return (np.zeros(n_chunks), np.zeros(n_chunks), np.zeros(n_chunks, dtype=np.int64),
            np.zeros(n_chunks, dtype=np.int64))


def _sum_scaled(values: np.ndarray, exponents: np.ndarray) -> float:
    """``sqrt(Σ values[k] · 4**exponents[k])`` without overflow or underflow."""
    if not np.any(values > 0):
        return 0.0 if np.all(np.isfinite(values)) else math.inf
    top = int(exponents[values > 0].max())
    return math.ldexp(math.sqrt(float(np.ldexp(values, 2 * (exponents - top)).sum())), top)


def fuse_values(chain: Chain, values, start: int, stop: int) -> np.ndarray:
    """Values of ``X_start ⋯ X_{stop-1}`` on the pattern ``chain.fused(start, stop)``.

    ``values`` are the factors' 4-D arrays.  Each step multiplies the running product by
    the next factor: node ``(a, B1*b2, c1*C2, d)`` from its left part
    ``(a, B1, c1*r, b2*d)`` and right part ``(a*c1, r*b2, C2, d)`` (the split of
    DESIGN.md §3 read backwards):
    ``T[i, j1*b2 + j2, k1*C2 + k2, t] = Σ_ρ L[i, j1, k1*r + ρ, j2*d + t] · R[i*c1 + k1, ρ*b2 + j2, k2, t]``.
    Cost: the fused pattern's number of values times the rank, per step.
    """
    product = np.asarray(values[start])
    for index in range(start + 1, stop):
        node = chain.fused(start, index + 1)
        left = chain.fused(start, index)
        right = chain[index]
        a, d = node.a, node.d
        c1 = right.a // a
        rank = left.c // c1
        b1, c2 = left.b, right.c
        b2 = node.b // b1
        # (a, B1, c1*r, b2*d) -> (a, B1, c1, r, b2, d);  (a*c1, r*b2, C2, d) -> (a, c1, r, b2, C2, d)
        lhs = product.reshape(a, b1, c1, rank, b2, d)
        rhs = np.asarray(values[index]).reshape(a, c1, rank, b2, c2, d)
        # -> (a, B1, b2, c1, C2, d) = (a, B, C, d), written in that order (einsum's own
        # result has its operands' order, and the reshape then copied it: N = 4096,
        # both halves of the DFT's chain, 6.0 -> 3.5 ms)
        out = np.empty((a, b1, b2, c1, c2, d), dtype=np.result_type(lhs, rhs))
        product = np.einsum("ijkrst,ikrsqt->ijskqt", lhs, rhs, out=out).reshape(tuple(node))
    return product


def product_errors(matrix: np.ndarray, chain: Chain, values, columns=None, row_inside=None,
                   column_inside=None) -> tuple:
    """``(‖matrix‖, inside, total)``: the norm of ``matrix`` and the error
    ``‖matrix[:, columns] − X_1⋯X_L‖_F`` over the entries inside (rows and columns of the
    product marked by ``row_inside``/``column_inside``, default all) and over all
    entries.

    One pass over ``matrix``: the product is fused into two factors at the split where
    they are smallest (``O(N^1.5)`` values for a square butterfly), and every entry of
    the product is a rank-``r`` inner product of the two (`fuse_values`).  The product is
    evaluated in double precision from factor values in their own precision.
    """
    m, n = matrix.shape
    columns = np.arange(n, dtype=np.int64) if columns is None else np.ascontiguousarray(columns, dtype=np.int64)
    row_inside = np.ones(m, dtype=np.bool_) if row_inside is None else np.ascontiguousarray(row_inside, dtype=np.bool_)
    column_inside = (np.ones(n, dtype=np.bool_) if column_inside is None
                     else np.ascontiguousarray(column_inside, dtype=np.bool_))
    matrix = np.ascontiguousarray(matrix)
    kind = "c" if matrix.dtype.kind == "c" or any(np.asarray(v).dtype.kind == "c" for v in values) else "f"
    work = np.zeros(1, dtype=np.complex128 if kind == "c" else np.float64)
    if len(chain) == 1:
        # (1, m, n, 1): the factor is the product
        left = np.ones((1, 1, m), dtype=work.dtype)
        right = np.ascontiguousarray(np.asarray(values[0]).reshape(1, m, n))
        b1, c1, rank = 1, 1, 1
    else:
        split_at = min(range(1, len(chain)),
                       key=lambda h: chain.fused(0, h).nnz + chain.fused(h, len(chain)).nnz)
        b1, c1, rank, c2 = split_geometry(chain, split_at)
        left = fuse_values(chain, values, 0, split_at)
        right = fuse_values(chain, values, split_at, len(chain))
        left = np.ascontiguousarray(left.reshape(b1, c1 * rank, m // b1))
        right = np.ascontiguousarray(right.reshape(c1, rank * (m // b1), c2))
    parallel, n_chunks = _chunks(matrix.size, m // b1, PRODUCT_PARALLEL_MIN_SIZE)
    kernel = _error_kernels.product_error_parallel if parallel else _error_kernels.product_error_serial
    sums = np.zeros((n_chunks, 3))
    exponents = np.zeros(n_chunks, dtype=np.int64)
    column_inside = column_inside.astype(np.float64)  # 1.0 / 0.0: a branch-free split
    kernel(matrix, columns, row_inside, column_inside, left, right, b1, c1, rank, work, n_chunks,
           sums, exponents)
    norm = _sum_scaled(sums[:, 0], exponents)
    inside = _sum_scaled(sums[:, 1], exponents)
    total = _sum_scaled(sums[:, 1] + sums[:, 2], exponents)
    return norm, inside, total
