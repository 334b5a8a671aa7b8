"""Numba kernels measuring errors without building factors.  Valid, contiguous input only.

Two kinds of passes over a whole matrix ``Z`` (``m × n``, the root of a chain, whose
columns are read through a gather ``columns``: entry ``(row, col)`` is
``Z[row, columns[col]]``):

* the exact two-factor error of one split of the chain (`split_errors_rank_one_*`,
  `split_errors_rank_r_serial`): the blocks of DESIGN.md §3 at the root
  (``a = d = 1``), block ``(k1, j2)`` being ``M[j1, k2] = Z[j1*b2 + j2, columns[k1*C2 + k2]]``,
  each reduced to its best rank-``r`` error.  Unlike the factorization's kernels they
  write no factor values: for a certificate only the errors matter, and the scattered
  writes of the large child (``N²/2`` values at the first and last splits of a square
  butterfly) cost more than the blocks' arithmetic;
* the error of a given butterfly product (`product_error_*`), from the product written
  as two fused factors at one split, ``X_1⋯X_h`` and ``X_{h+1}⋯X_L``: entry
  ``(j1*b2 + j2, k1*C2 + k2)`` of the product is
  ``Σ_ρ left[j1, k1*r + ρ, j2] · right[k1, ρ*b2 + j2, k2]``, one pass over ``Z`` in
  memory order (the permutation is applied to the product's small buffers instead).

Sums of squares are kept in units of ``4**exponent`` (see ``_kernels._accumulate``), so
entries near the largest float neither overflow nor lose their error to rounding.
"""

import math

import numpy as np
from numba import prange

from ._kernels import (
    CANCELLATION,
    EMPTY,
    MAX_POWER_STEPS,
    NOT_FINITE,
    RESIDUAL_TOL,
    _abs2,
    _accumulate,
    _adjoint_times,
    _gather_scale,
    _jit,
    _kernel,
    _residual2,
    _times,
    _top_left_vector,
)

# Blocks whose largest magnitude is within [2**-FAST_RANGE, 2**FAST_RANGE] have their
# squares summed as they are; others are rescaled by a power of two first.
FAST_RANGE = 400
# A run of squares summing to within [SAFE_SUM_LOW, SAFE_SUM_HIGH] had no square overflow
# and lost only terms below 2**-530 of its largest entry: kept as computed.
SAFE_SUM_LOW = 2.0 ** -800
SAFE_SUM_HIGH = 2.0 ** 800
# Blocks with a side of at most this many rows or columns get their top singular value
# from that side's Gram matrix instead of power iteration.
GRAM_SIDE = 8
# Tall narrow blocks (``b1 >= NARROW_RATIO · C2``, ``C2 <= GRAM_SIDE``) are streamed
# row by row instead of gathered (`_split_errors_narrow_py`).
NARROW_RATIO = 16
# Reassociation and contraction only (no ``nnan``/``ninf``: the NaN checks must stay),
# for the loops of the certificate's block solvers that are pure sums and products: it
# lets LLVM vectorise their complex reductions, 2-4 times faster on the power
# iteration, and changes only the order of the additions.  Never on code that reaches
# `_kernels._gather_scale`, whose two-step scaling reassociated would overflow for
# subnormal blocks (see the note at `_kernels.split_rank_one_serial`).
FASTMATH = {"reassoc", "contract"}


@_kernel()
def _scan_block(M, rows, cols, row_norm2):
    """One pass over a gathered block: ``(exponent, norm2)`` with the row norms in
    ``row_norm2``.  ``exponent`` is 0 when the entries are in a safe range (their
    squares cannot overflow nor vanish), else the block is rescaled by a power of two
    (``_kernels._gather_scale``) and ``exponent`` says by how much; ``EMPTY`` /
    ``NOT_FINITE`` as there."""
    biggest = 0.0
    not_finite = 0.0
    norm2 = 0.0
    for j in range(rows):
        acc = 0.0
        for k in range(cols):
            value = M[j, k]
            not_finite += value.real * 0.0 + value.imag * 0.0  # NaN for NaN or Inf
            biggest = max(biggest, abs(value.real), abs(value.imag))
            acc += _abs2(value)
        row_norm2[j] = acc
        norm2 += acc
    if not_finite != 0.0:
        return NOT_FINITE, 0.0
    if biggest == 0.0:
        return EMPTY, 0.0
    if 2.0 ** -FAST_RANGE <= biggest <= 2.0 ** FAST_RANGE:
        return 0, norm2
    exponent = _gather_scale(M, rows, cols)
    norm2 = 0.0
    for j in range(rows):
        acc = 0.0
        for k in range(cols):
            acc += _abs2(M[j, k])
        row_norm2[j] = acc
        norm2 += acc
    return exponent, norm2


@_kernel()
def _top_eigenvalue(G, k):
    """Largest eigenvalue of a ``k × k`` Hermitian positive semidefinite ``G``: closed
    form for ``k <= 2``, else ``numpy.linalg.eigvalsh`` (a tiny LAPACK call, far below
    the sizes at which LAPACK starts threads)."""
    if k == 1:
        return G[0, 0].real
    if k == 2:
        p = G[0, 0].real
        s = G[1, 1].real
        half_gap = 0.5 * (p - s)
        return 0.5 * (p + s) + math.sqrt(half_gap * half_gap + _abs2(G[0, 1]))
    return np.linalg.eigvalsh(G)[k - 1]


@_kernel(fastmath=FASTMATH)
def _gram_top_eigenvalue(M, rows, cols, G):
    """Largest eigenvalue of the small Gram matrix of a block (``M Mᴴ`` when ``rows``
    is the smaller side, else ``Mᴴ M``; ``G`` is its ``k × k`` workspace): ``σ₁²``.

    Forming ``G`` costs ``(k + 1)/2`` multiply-adds per entry, less than the power
    iteration's two per step for ``k <= GRAM_SIDE``."""
    by_rows = rows <= cols
    k = rows if by_rows else cols
    for p in range(k):
        for q in range(k):
            G[p, q] = 0.0
    # ``* 1.0``: products of single-precision entries are formed in double precision
    if by_rows:
        for p in range(k):
            for q in range(p, k):
                acc = M[p, 0] * 1.0 * np.conj(M[q, 0])
                for c in range(1, cols):
                    acc += M[p, c] * 1.0 * np.conj(M[q, c])
                G[p, q] = acc
                G[q, p] = np.conj(acc)
    else:
        for j in range(rows):
            for p in range(k):
                x = np.conj(M[j, p]) * 1.0
                for q in range(k):
                    G[p, q] += x * M[j, q]
    return _top_eigenvalue(G, k)


# `_kernels._times` and `_kernels._adjoint_times` built once more with FASTMATH
# (vectorised), under names of their own so that the cache keeps both builds.
_times_fast = _jit(getattr(_times, "py_func", _times), "_fast", fastmath=FASTMATH)
_adjoint_times_fast = _jit(getattr(_adjoint_times, "py_func", _adjoint_times), "_fast",
                           fastmath=FASTMATH)


@_kernel(fastmath=FASTMATH)
def _power_sigma2(M, rows, cols, row_norm2, norm2, u, v, w, tol, warm):
    """``σ₁²`` of a block by power iteration, tested after every half-step.

    Starts from the unit right vector ``v`` when ``warm == 1``, from the unit left
    vector ``u`` when ``warm == 2`` (e.g. the singular vectors of the certified
    butterfly's block), else (``warm == 0``) from the largest row.  The
    iterate alternates sides: a unit ``z`` (right or left) and ``y = A z``
    (``A = M`` or ``Mᴴ``) with ``ρ = ‖y‖²``, the Rayleigh quotient of ``z``; then
    ``t = Aᴴ y/‖y‖`` gives the Rayleigh quotient ``ρ' = ‖t‖²`` of ``y/‖y‖`` (the
    estimate, ``ρ <= ρ' <= σ₁²``) and the residual ``‖AᴴA z − ρ z‖² = ρ(ρ' − ρ)``
    of ``z``.  When ``2ρ > ‖M‖²`` (``σ₁²`` holds more than half of the block's
    energy, as in any block a butterfly fits well) the Kato–Temple inequality, with
    ``λ₂ <= ‖M‖² − λ₁ <= ‖M‖² − ρ``, bounds ``σ₁² − ρ <= ρ(ρ' − ρ)/(2ρ − ‖M‖²)``:
    the iteration stops once this proven bound, less ``ρ' − ρ``, is below
    ``RESIDUAL_TOL`` times the block's error ``‖M‖² − ρ'``.  Otherwise it stops by the
    geometric-tail rule of ``_kernels._top_left_vector`` (not a proof), or when the
    error is at rounding level or the estimate stalls.  Testing every half-step (each
    one block read) instead of every second one saves a read per block, as does a
    warm start close to the top singular vector.  Returns ``ρ'`` (never above
    ``σ₁²`` but for rounding); ``u`` is left as a unit left vector of the last
    iterate.
    """
    if warm == 2:  # z = u, y = w = Mᴴ u
        rho = _adjoint_times_fast(M, rows, cols, u, w)
        left = False  # y lives on the right (columns) side
    else:
        if warm == 0:
            best_row = 0
            for j in range(1, rows):
                if row_norm2[j] > row_norm2[best_row]:
                    best_row = j
            inv = 1.0 / math.sqrt(row_norm2[best_row])
            for k in range(cols):
                v[k] = np.conj(M[best_row, k]) * inv
        rho = _times_fast(M, rows, cols, v, u)  # z = v, y = u
        left = True
    estimate = rho
    estimate_old = rho
    increase_old = 0.0
    for _ in range(2 * MAX_POWER_STEPS):
        if rho == 0.0:  # cannot happen for a nonzero block
            return estimate
        inv = 1.0 / math.sqrt(rho)
        if left:
            for j in range(rows):
                u[j] *= inv
            quotient = _adjoint_times_fast(M, rows, cols, u, w)  # t = w
        else:
            for k in range(cols):
                w[k] *= inv
            quotient = _times_fast(M, rows, cols, w, u)  # t = u
        estimate = max(quotient, rho)
        error2 = norm2 - estimate
        increase = estimate - estimate_old
        done = error2 <= 8.0 * tol * norm2 or increase <= tol * estimate
        if not done and 2.0 * rho > norm2:
            temple = rho * max(quotient - rho, 0.0) / (2.0 * rho - norm2)
            done = temple - (estimate - rho) <= RESIDUAL_TOL * error2
        elif not done and increase_old > 0.0 and increase < increase_old:
            ratio = increase / increase_old
            done = increase * ratio / (1.0 - ratio) <= RESIDUAL_TOL * error2
        if done:
            if not left:  # u = M w / ‖M w‖
                inv = 1.0 / math.sqrt(quotient)
                for j in range(rows):
                    u[j] *= inv
            return estimate
        estimate_old = estimate
        increase_old = increase
        rho = quotient
        left = not left
    return estimate


def _split_errors_rank_one_py(matrix, columns, contiguous, b1, c1, batch, tol, work,
                              starts, start_side, n_chunks, chunk_norm2, chunk_residual2,
                              chunk_exponent, chunk_bad):
    """Best rank-one error of every block of one root split; no factor is written.

    Parameters
    ----------
    matrix : (m, n) array
        The root (any of the four supported dtypes).
    columns : (n,) int64 array
        Column gather (a permutation).
    contiguous : bool
        ``columns`` is the identity: rows of the blocks are copied as contiguous runs.
    b1, c1 : int
        Rows per block and number of column groups (``b2 = m / b1``, ``C2 = n / c1``).
    batch : int
        Column groups gathered at once into a work panel.
    tol, work
        As in ``_kernels._split_rank_one_py``: the singular vectors are computed in
        ``work``'s dtype (double precision).
    starts : (c1, b2, k) array of ``work``'s dtype
        Start vectors of the power iteration for block ``(k1, j2)`` (``starts[k1,
        j2]``; any scale): right vectors (``k = C2``) when ``start_side == 1``, left
        vectors (``k = b1``) when ``start_side == 2``, unused when ``start_side == 0``
        (blocks then start from their largest row).  Zero vectors fall back to that.
    n_chunks : int
        Contiguous chunks of tasks (one parallel task each).
    chunk_norm2, chunk_residual2, chunk_exponent, chunk_bad : (n_chunks,) arrays
        Outputs: per chunk, the sums of ``‖M‖²`` and of the blocks' best rank-one errors
        ``‖M‖² − σ₁²``, in units of ``4**chunk_exponent``, and the number of blocks
        holding NaN or Inf.

    Notes
    -----
    A task is one ``j2`` and ``batch`` consecutive column groups ``k1``: its blocks read
    the same ``b1`` rows, each over one contiguous run of ``batch·C2`` columns (with the
    identity gather), gathered once into a panel that stays in cache while the blocks
    are solved.  The gather also sums the row norms (no second pass); only blocks
    whose ``‖M‖²`` is outside ``[SAFE_SUM_LOW, SAFE_SUM_HIGH]`` (zero, NaN/Inf,
    squares that may have overflowed or vanished) go through `_scan_block`.  ``σ₁²`` comes from the small Gram matrix when a side is at
    most ``GRAM_SIDE``, else from power iteration (`_power_sigma2`); where
    ``‖M‖² − σ₁²`` would have lost its digits to cancellation (near-exact blocks) the
    error is recomputed directly from the top singular pair.
    """
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    n_batches = (c1 + batch - 1) // batch
    n_tasks = b2 * n_batches
    side = min(b1, c2)
    for chunk in prange(n_chunks):
        panel = np.empty((batch, b1, c2), dtype=matrix.dtype)
        panel_row_norm2 = np.empty((batch, b1))
        row_norm2 = np.empty(b1)
        u = np.empty(b1, dtype=work.dtype)
        v = np.empty(c2, dtype=work.dtype)
        w = np.empty(c2, dtype=work.dtype)
        G = np.empty((side, side), dtype=work.dtype)
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            k1_first = (task % n_batches) * batch
            k1_count = min(batch, c1 - k1_first)
            j2 = task // n_batches
            for j1 in range(b1):
                row = j1 * b2 + j2
                for kk in range(k1_count):
                    first_column = (k1_first + kk) * c2
                    acc = 0.0
                    if contiguous:
                        for k2 in range(c2):
                            value = matrix[row, first_column + k2]
                            panel[kk, j1, k2] = value
                            acc += _abs2(value * 1.0)  # squares in double precision
                    else:
                        for k2 in range(c2):
                            value = matrix[row, columns[first_column + k2]]
                            panel[kk, j1, k2] = value
                            acc += _abs2(value * 1.0)
                    panel_row_norm2[kk, j1] = acc
            for kk in range(k1_count):
                M = panel[kk]
                exponent = 0
                norm2 = 0.0
                for j1 in range(b1):
                    row_norm2[j1] = panel_row_norm2[kk, j1]
                    norm2 += row_norm2[j1]
                # within range (so also finite and nonzero), no square overflowed and
                # none that vanished mattered; else rescale, or report NaN/Inf
                if not SAFE_SUM_LOW <= norm2 <= SAFE_SUM_HIGH:
                    exponent, norm2 = _scan_block(M, b1, c2, row_norm2)
                    if exponent == NOT_FINITE or exponent == EMPTY:
                        bad += exponent == NOT_FINITE  # reported by the caller
                        continue
                if side <= GRAM_SIDE:
                    sigma2 = _gram_top_eigenvalue(M, b1, c2, G)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:
                        _top_left_vector(M, b1, c2, row_norm2, norm2, u, v, w, tol)
                        _adjoint_times(M, b1, c2, u, w)
                        residual2 = _residual2(M, b1, c2, u, w)
                else:
                    warm = _load_start(starts, start_side, k1_first + kk, j2, u, v)
                    sigma2 = _power_sigma2(M, b1, c2, row_norm2, norm2, u, v, w, tol, warm)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:  # ‖M‖² − σ² lost its digits
                        _adjoint_times(M, b1, c2, u, w)
                        residual2 = _residual2(M, b1, c2, u, w)
                norm2_sum, residual2_sum, exponent_sum = _accumulate(
                    norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


@_kernel()
def _load_start(starts, start_side, k1, j2, u, v):
    """Copy block ``(k1, j2)``'s start vector, normalised, into ``v`` (right, side 1) or
    ``u`` (left, side 2); returns the side, or 0 (start from the largest row) when
    there is none or it is zero."""
    if start_side == 0:
        return 0
    start = starts[k1, j2]
    norm2 = 0.0
    for k in range(start.shape[0]):
        norm2 += _abs2(start[k])
    if not 0.0 < norm2 < np.inf:
        return 0
    inv = 1.0 / math.sqrt(norm2)
    target = v if start_side == 1 else u
    for k in range(start.shape[0]):
        target[k] = start[k] * inv
    return start_side


def _split_errors_narrow_py(matrix, columns, b1, c1, tol, work, n_chunks, chunk_norm2,
                            chunk_residual2, chunk_exponent, chunk_bad):
    """`_split_errors_rank_one_py` for tall narrow blocks (``C2 <= GRAM_SIDE < b1``),
    streaming the matrix row by row.

    Gathering a tall block means reading ``C2`` entries from each of ``b1`` rows far
    apart, and writing them into a panel across cache lines.  Instead, every row is
    read once, in order, and each run of ``C2`` entries is added to the ``C2 × C2``
    Gram matrix ``Mᴴ M`` of its block (upper triangle); the top eigenvalue of each
    Gram matrix is ``σ₁²``.  Chunk ``k`` owns a contiguous range of column groups
    ``k1`` (all rows), so its Gram matrices are its own.  They are stored entry-major
    (``G[j2, pq, k1]``) so that the update of one Gram entry for all the column
    groups of a row is one loop over the row, which vectorises, instead of ``C2²/2``
    tiny loops per group.  Blocks whose ``‖M‖²`` (the trace) is zero, not finite or
    outside ``[SAFE_SUM_LOW, SAFE_SUM_HIGH]`` (squares could have overflowed or
    vanished) and near-exact blocks (``‖M‖² − σ₁²`` lost to cancellation) are gathered
    and solved as in the panel kernel instead.  Needs ``b2·C2·n/2`` Gram entries in
    all, which the caller keeps small by using this kernel only for
    ``b1 >= NARROW_RATIO·C2``.
    """
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    pairs = c2 * (c2 + 1) // 2
    for chunk in prange(n_chunks):
        k1_first = chunk * c1 // n_chunks
        count = (chunk + 1) * c1 // n_chunks - k1_first
        G = np.zeros((b2, pairs, count), dtype=work.dtype)
        line = np.empty(count * c2, dtype=work.dtype)
        offset = k1_first * c2
        for row in range(m):
            for t in range(count * c2):
                line[t] = matrix[row, columns[offset + t]]
            Gj = G[row % b2]
            pq = 0
            for p in range(c2):
                for q in range(p, c2):
                    Gpq = Gj[pq]
                    for kk in range(count):
                        Gpq[kk] += np.conj(line[kk * c2 + p]) * line[kk * c2 + q]
                    pq += 1
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        M = np.empty((b1, c2), dtype=matrix.dtype)
        H = np.empty((c2, c2), dtype=work.dtype)
        row_norm2 = np.empty(b1)
        u = np.empty(b1, dtype=work.dtype)
        v = np.empty(c2, dtype=work.dtype)
        w = np.empty(c2, dtype=work.dtype)
        for kk in range(count):
            for j2 in range(b2):
                norm2 = 0.0
                pq = 0
                for p in range(c2):
                    for q in range(p, c2):
                        H[p, q] = G[j2, pq, kk]
                        H[q, p] = np.conj(G[j2, pq, kk])
                        pq += 1
                    norm2 += H[p, p].real
                exponent = 0
                residual2 = 0.0
                direct = not SAFE_SUM_LOW <= norm2 <= SAFE_SUM_HIGH  # also NaN, Inf and 0
                if not direct:
                    residual2 = max(norm2 - _top_eigenvalue(H, c2), 0.0)
                    direct = residual2 < CANCELLATION * norm2
                if direct:
                    first = (k1_first + kk) * c2
                    for j1 in range(b1):
                        for k2 in range(c2):
                            M[j1, k2] = matrix[j1 * b2 + j2, columns[first + k2]]
                    exponent, norm2 = _scan_block(M, b1, c2, row_norm2)
                    if exponent == NOT_FINITE or exponent == EMPTY:
                        bad += exponent == NOT_FINITE  # reported by the caller
                        continue
                    _top_left_vector(M, b1, c2, row_norm2, norm2, u, v, w, tol)
                    sigma2 = _adjoint_times(M, b1, c2, u, w)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:
                        residual2 = _residual2(M, b1, c2, u, w)
                norm2_sum, residual2_sum, exponent_sum = _accumulate(
                    norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


split_errors_narrow_serial = _jit(_split_errors_narrow_py, "_serial", fastmath=FASTMATH)
split_errors_narrow_parallel = _jit(_split_errors_narrow_py, "_parallel", parallel=True,
                                    fastmath=FASTMATH)


split_errors_rank_one_serial = _jit(_split_errors_rank_one_py, "_serial", fastmath=FASTMATH)
split_errors_rank_one_parallel = _jit(_split_errors_rank_one_py, "_parallel", parallel=True,
                                      fastmath=FASTMATH)


def _split_errors_rank_r_py(matrix, columns, b1, c1, rank, chunk_norm2, chunk_residual2,
                            chunk_exponent, chunk_bad):
    """Best rank-``rank`` error of every block of one root split (one chunk, serial:
    each block gets a LAPACK SVD, whose own threads would oversubscribe a parallel
    region).  Blocks and outputs as in `_split_errors_rank_one_py`; ``rank <=
    min(b1, C2)`` (checked by the caller)."""
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    M = np.empty((b1, c2), dtype=matrix.dtype)
    norm2_sum = 0.0
    residual2_sum = 0.0
    exponent_sum = 0
    bad = 0
    for j2 in range(b2):
        for k1 in range(c1):
            for j1 in range(b1):
                for k2 in range(c2):
                    M[j1, k2] = matrix[j1 * b2 + j2, columns[k1 * c2 + k2]]
            exponent = _gather_scale(M, b1, c2)
            if exponent == NOT_FINITE or exponent == EMPTY:
                bad += exponent == NOT_FINITE
                continue
            singular = np.linalg.svd(M, full_matrices=False)[1]
            norm2 = 0.0
            residual2 = 0.0
            for rho in range(singular.shape[0]):
                sigma2 = float(singular[rho]) ** 2
                norm2 += sigma2
                if rho >= rank:  # the trailing singular values are the error
                    residual2 += sigma2
            norm2_sum, residual2_sum, exponent_sum = _accumulate(
                norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
    chunk_norm2[0] = norm2_sum
    chunk_residual2[0] = residual2_sum
    chunk_exponent[0] = exponent_sum
    chunk_bad[0] = bad


split_errors_rank_r_serial = _jit(_split_errors_rank_r_py, "_serial")


def _gather_py(matrix, rows, columns, out):
    """``out[i, j] = matrix[rows[i], columns[j]]`` (indices valid: checked by the
    caller).  A row of ``matrix`` stays in cache while it is gathered, and ``out`` is
    written in order: several times faster than ``numpy.take`` along the columns."""
    for i in prange(rows.shape[0]):
        source = matrix[rows[i]]
        target = out[i]
        for j in range(columns.shape[0]):
            target[j] = source[columns[j]]


gather_serial = _jit(_gather_py, "_serial")
gather_parallel = _jit(_gather_py, "_parallel", parallel=True)


@_kernel()
def _add_scaled(sums, exponent, norm2, inside2, outside2, segment_exponent):
    """Add one segment's three sums (units ``4**segment_exponent``) to the running
    ``sums`` (units ``4**exponent``, updated in place); returns the new exponent."""
    if sums[0] == 0.0 and sums[1] == 0.0 and sums[2] == 0.0:
        sums[0] = norm2
        sums[1] = inside2
        sums[2] = outside2
        return segment_exponent
    if segment_exponent > exponent:
        shift = 2 * (exponent - segment_exponent)
        sums[0] = norm2 + math.ldexp(sums[0], shift)
        sums[1] = inside2 + math.ldexp(sums[1], shift)
        sums[2] = outside2 + math.ldexp(sums[2], shift)
        return segment_exponent
    shift = 2 * (segment_exponent - exponent)
    sums[0] += math.ldexp(norm2, shift)
    sums[1] += math.ldexp(inside2, shift)
    sums[2] += math.ldexp(outside2, shift)
    return exponent


@_kernel()
def _row_error2_in_order(matrix, row, coefficients, shared, groups, rank, n, zero):
    """``(‖Z[row]‖², ‖Z[row] − P[row]‖²)`` when the product's columns are in ``Z``'s
    order: ``P[row, c] = Σ_ρ coefficients[groups[c]*r + ρ] · shared[ρ, c]``, formed in
    double precision (``zero`` promotes single-precision values).

    Each sum is kept in four interleaved partial sums: one running sum is bound by the
    latency of its additions (~4 cycles an entry), four independent ones are not
    (measured, 1024 x 1024 rank 2: 1.6 ms against 3.5 ms through the general loop),
    and the order is fixed, so the result is deterministic.
    """
    norm0 = 0.0
    norm1 = 0.0
    norm2 = 0.0
    norm3 = 0.0
    error0 = 0.0
    error1 = 0.0
    error2 = 0.0
    error3 = 0.0
    quads = n // 4 * 4
    for c in range(0, quads, 4):
        g0 = groups[c] * rank
        g1 = groups[c + 1] * rank
        g2 = groups[c + 2] * rank
        g3 = groups[c + 3] * rank
        v0 = (coefficients[g0] + zero) * shared[0, c]
        v1 = (coefficients[g1] + zero) * shared[0, c + 1]
        v2 = (coefficients[g2] + zero) * shared[0, c + 2]
        v3 = (coefficients[g3] + zero) * shared[0, c + 3]
        for rho in range(1, rank):
            v0 += (coefficients[g0 + rho] + zero) * shared[rho, c]
            v1 += (coefficients[g1 + rho] + zero) * shared[rho, c + 1]
            v2 += (coefficients[g2 + rho] + zero) * shared[rho, c + 2]
            v3 += (coefficients[g3 + rho] + zero) * shared[rho, c + 3]
        x0 = matrix[row, c] + zero
        x1 = matrix[row, c + 1] + zero
        x2 = matrix[row, c + 2] + zero
        x3 = matrix[row, c + 3] + zero
        norm0 += _abs2(x0)
        norm1 += _abs2(x1)
        norm2 += _abs2(x2)
        norm3 += _abs2(x3)
        error0 += _abs2(x0 - v0)
        error1 += _abs2(x1 - v1)
        error2 += _abs2(x2 - v2)
        error3 += _abs2(x3 - v3)
    for c in range(quads, n):
        g0 = groups[c] * rank
        v0 = (coefficients[g0] + zero) * shared[0, c]
        for rho in range(1, rank):
            v0 += (coefficients[g0 + rho] + zero) * shared[rho, c]
        x0 = matrix[row, c] + zero
        norm0 += _abs2(x0)
        error0 += _abs2(x0 - v0)
    return (norm0 + norm1) + (norm2 + norm3), (error0 + error1) + (error2 + error3)


def _product_error_py(matrix, inverse, groups, row_inside, column_inside, left, right, b1, c1, rank,
                      work, n_chunks, chunk_sums, chunk_exponent):
    """``‖Z‖²`` and ``‖Z − P‖²`` in one pass, for a product ``P = X_1⋯X_L`` given at
    one split and compared with ``Z[:, columns]``.

    Parameters
    ----------
    matrix : (m, n) array
        ``Z`` (entries outside the problem, e.g. zero padding, are zero).
    inverse : (n,) int64 array
        ``inverse[c]``: the column of ``P`` compared with column ``c`` of ``Z`` (the
        inverse of the column gather ``columns``).
    groups : (n,) int64 array
        ``inverse // C2``: the column group of that product column (precomputed: an
        integer division per entry would cost more than the rest of the loop).
    row_inside, column_inside : (m,) / (n,) bool arrays
        Entries of ``Z`` whose row and column are both inside count as "inside", the
        others as "outside" (the zero padding a product may write into).
    left : (b1, c1*rank, b2) array
        Values of ``X_1⋯X_h`` (pattern ``(1, b1, c1·rank, b2)``, ``a`` dropped).
    right : (c1, rank*b2, C2) array
        Values of ``X_{h+1}⋯X_L`` (pattern ``(c1, rank·b2, C2, 1)``, ``d`` dropped).
        Entry ``(j1*b2 + j2, k1*C2 + k2)`` of ``P`` is
        ``Σ_ρ left[j1, k1*r + ρ, j2] · right[k1, ρ*b2 + j2, k2]``.
    b1, c1, rank : int
        The split's rows per block, column groups and rank.
    work : (1,) array
        Its dtype (float64 or complex128) is the precision of the differences.
    n_chunks : int
        Contiguous chunks of ``j2`` (one parallel task each).
    chunk_sums : (n_chunks, 3) float64 array
        Output: ``‖Z‖²``, the squared error inside and outside, per chunk, in units of
        ``4**chunk_exponent``.
    chunk_exponent : (n_chunks,) int64 array
        Output.

    Notes
    -----
    A task is one ``j2``: the rows ``j1*b2 + j2`` all use the same ``rank·n`` values
    ``right[:, ρ*b2 + j2, :]``, copied once into a buffer in the product's column order.
    Each row of ``Z`` is then read once, contiguously, whatever the permutation: the
    scattered reads go to that buffer and to the row's ``c1·rank`` coefficients, both
    small enough to stay in cache.  Products and differences are formed in double
    precision (``left`` and ``right`` hold the fused values in the factors' own
    precision); rows whose sums of squares are extreme are redone rescaled by a power
    of two before squaring.
    """
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    zero = work[0] * 0.0  # adding it promotes single-precision values to double
    everything_inside = True
    for row in range(m):
        everything_inside = everything_inside and row_inside[row]
    for c in range(n):
        everything_inside = everything_inside and column_inside[c] == 1.0
    # no column permutation: rows of the product and of Z line up (`_product_row`)
    in_order = True
    for c in range(n):
        in_order = in_order and inverse[c] == c
    for chunk in prange(n_chunks):
        shared = np.empty((rank, n), dtype=right.dtype)
        coefficients = np.empty(c1 * rank, dtype=left.dtype)
        product = np.empty(n, dtype=work.dtype)
        sums = np.zeros(3)
        exponent = 0
        for j2 in range(chunk * b2 // n_chunks, (chunk + 1) * b2 // n_chunks):
            for rho in range(rank):
                for k1 in range(c1):
                    for k2 in range(c2):
                        shared[rho, k1 * c2 + k2] = right[k1, rho * b2 + j2, k2]
            for j1 in range(b1):
                row = j1 * b2 + j2
                for q in range(c1 * rank):
                    coefficients[q] = left[j1, q, j2]
                all_inside = 1.0 if row_inside[row] else 0.0
                # Fast path: the sums as they come, accepted when their size shows that
                # no square overflowed and none that matters vanished.
                norm2 = 0.0
                inside2 = 0.0
                outside2 = 0.0
                if in_order and everything_inside:  # factorize's case: plain runs
                    norm2, inside2 = _row_error2_in_order(matrix, row, coefficients, shared,
                                                          groups, rank, n, zero)
                elif rank == 1 and everything_inside:  # lean, through the permutation
                    for c in range(n):
                        entry = matrix[row, c] + zero
                        norm2 += _abs2(entry)
                        inside2 += _abs2(entry - (coefficients[groups[c]] + zero) * shared[0, inverse[c]])
                else:
                    for c in range(n):
                        position = inverse[c]
                        group = groups[c]
                        value = (coefficients[group * rank] + zero) * shared[0, position]
                        for rho in range(1, rank):
                            value += (coefficients[group * rank + rho] + zero) * shared[rho, position]
                        entry = matrix[row, c] + zero
                        norm2 += _abs2(entry)
                        error2 = _abs2(entry - value)
                        # branch-free split between inside and outside
                        inside = all_inside * column_inside[c]
                        inside2 += inside * error2
                        outside2 += (1.0 - inside) * error2
                largest = max(norm2, inside2 + outside2)
                if SAFE_SUM_LOW <= largest <= SAFE_SUM_HIGH:
                    exponent = _add_scaled(sums, exponent, norm2, inside2, outside2, 0)
                    continue
                # Slow path (extreme magnitudes, or an all-zero row): the row again,
                # rescaled by a power of two before squaring.
                biggest = 0.0
                for c in range(n):
                    position = inverse[c]
                    group = groups[c]
                    value = (coefficients[group * rank] + zero) * shared[0, position]
                    for rho in range(1, rank):
                        value += (coefficients[group * rank + rho] + zero) * shared[rho, position]
                    product[c] = value
                    entry = matrix[row, c] + zero
                    biggest = max(biggest, abs(entry.real), abs(entry.imag),
                                  abs(product[c].real), abs(product[c].imag))
                if biggest == 0.0:
                    continue
                row_exponent = 0
                first = 1.0
                second = 1.0
                if biggest < np.inf:  # else Inf or NaN in the product: keep it
                    row_exponent = math.frexp(biggest)[1]
                    half = -row_exponent // 2
                    first = math.ldexp(1.0, half)
                    second = math.ldexp(1.0, -row_exponent - half)
                norm2 = 0.0
                inside2 = 0.0
                outside2 = 0.0
                for c in range(n):
                    entry = ((matrix[row, c] + zero) * first) * second
                    norm2 += _abs2(entry)
                    error2 = _abs2(entry - (product[c] * first) * second)
                    inside = all_inside * column_inside[c]
                    inside2 += inside * error2
                    outside2 += (1.0 - inside) * error2
                exponent = _add_scaled(sums, exponent, norm2, inside2, outside2, row_exponent)
        for q in range(3):
            chunk_sums[chunk, q] = sums[q]
        chunk_exponent[chunk] = exponent


product_error_serial = _jit(_product_error_py, "_serial")
product_error_parallel = _jit(_product_error_py, "_parallel", parallel=True)
