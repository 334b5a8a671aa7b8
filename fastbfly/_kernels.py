"""Numba kernels.  They assume valid, contiguous input: validate before calling.

Storage layout (the only one in the package)
--------------------------------------------
A factor with pattern ``(a, b, c, d)`` is a C-ordered 4-D array ``T`` of shape
``(a, b, c, d)``; as a matrix ``K`` of shape ``(a*b*d, a*c*d)``,

    K[i*b*d + j*d + t, i*c*d + k*d + t] = T[i, j, k, t].

The apply kernels take all factors of a chain at once as one flat ``values`` array (the
factors' 4-D arrays raveled and concatenated, left-most factor first), an ``(L, 4)``
int64 array of patterns and ``L + 1`` offsets into ``values``.  The product is
``X_0 X_1 ⋯ X_{L-1}``: the last factor is applied to a vector first.

Every kernel body is plain Python as well, so ``NUMBA_DISABLE_JIT=1`` runs (and covers)
the same code.
"""

import math
import types

import numpy as np
from numba import njit, prange
from numba.extending import overload

# Blocks whose largest entry is outside [2**-SCALE_EXPONENT, 2**SCALE_EXPONENT] are
# rescaled by an exact power of two first, so squares and Gram matrices cannot overflow
# or flush to zero.
SCALE_EXPONENT = 400
# Power iteration for the top singular pair of a block stops once the estimated
# remaining decrease of the block's squared error is below this fraction of it ...
RESIDUAL_TOL = 1e-9
# ... or after this many steps (only nearly degenerate top singular values get there,
# and then any vector of the top singular subspace is nearly optimal).
MAX_POWER_STEPS = 500
# Below this fraction of ‖M‖², ‖M‖² − σ² has lost most digits to cancellation and the
# block's residual is recomputed directly.
CANCELLATION = 1e-4
# Sentinel exponents returned by `_gather_scale`.
EMPTY = -(1 << 30)
NOT_FINITE = 1 << 30


def _jit(function, suffix="", **options):
    """``njit(cache=True, nogil=True, **options)`` of a copy of ``function`` named with
    ``suffix``.

    Numba's cache keys entries by function name, source line and signature, not by
    options: the serial and ``parallel=True`` builds of one function would load each
    other's machine code, so each build gets its own name.  Where no cache location is
    writable at all (read-only install, read-only home and ``NUMBA_CACHE_DIR``) the
    kernels compile without a cache instead of failing at import.
    """
    copy = types.FunctionType(function.__code__, function.__globals__,
                              function.__name__ + suffix, function.__defaults__,
                              function.__closure__)
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__doc__ = function.__doc__
    try:
        return njit(cache=True, nogil=True, **options)(copy)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(nogil=True, **options)(copy)


def _kernel(**options):
    """Decorator form of `_jit` for the helpers called by the kernels."""
    return lambda function: _jit(function, **options)


# --------------------------------------------------------------------------------------
# Two-factor split: block extraction + best rank-one approximation of every block.
# --------------------------------------------------------------------------------------


@_kernel(inline="always")
def _abs2(z):
    """``|z|²`` without the square root of ``abs``."""
    return z.real * z.real + z.imag * z.imag


@_kernel()
def _times(M, rows, cols, v, u):
    """``u = M v``; returns ``‖u‖²``."""
    norm2 = 0.0
    for j in range(rows):
        acc = M[j, 0] * v[0]
        for k in range(1, cols):
            acc += M[j, k] * v[k]
        u[j] = acc
        norm2 += _abs2(acc)
    return norm2


@_kernel()
def _adjoint_times(M, rows, cols, u, w):
    """``w = Mᴴ u``; returns ``‖w‖²``.  Row-wise, so ``M`` is read contiguously."""
    for k in range(cols):
        w[k] = 0.0
    for j in range(rows):
        coefficient = u[j]
        for k in range(cols):
            w[k] += np.conj(M[j, k]) * coefficient
    norm2 = 0.0
    for k in range(cols):
        norm2 += _abs2(w[k])
    return norm2


@_kernel()
def _gather_scale(M, rows, cols):
    """Scale the block by a power of two so its largest entry is in [0.5, 1) (exact;
    squares and Gram entries can then neither overflow nor underflow, whatever the
    dtype).  Returns the exponent ``e`` (``M_original = 2**e · M``), or a sentinel:
    ``EMPTY`` for an all-zero block, ``NOT_FINITE`` if it holds NaN or Inf."""
    biggest = 0.0
    finite = 0.0
    for j in range(rows):
        for k in range(cols):
            value = M[j, k]
            magnitude = max(abs(value.real), abs(value.imag))
            finite += abs(value.real) + abs(value.imag)  # NaN and Inf propagate here
            if magnitude > biggest:
                biggest = magnitude
    if not finite < np.inf:
        return NOT_FINITE
    if biggest == 0.0:
        return EMPTY
    exponent = math.frexp(biggest)[1]
    # Two steps, so that 2**-exponent itself never overflows (subnormal blocks).
    half = -exponent // 2
    first = math.ldexp(1.0, half)
    second = math.ldexp(1.0, -exponent - half)
    for j in range(rows):
        for k in range(cols):
            M[j, k] = (M[j, k] * first) * second
    return exponent


@_kernel()
def _accumulate(total_norm2, total_residual2, total_exponent, norm2, residual2, exponent):
    """Add a block's ``(norm2, residual2)``, in units of ``4**exponent``, to running sums
    kept in units of ``4**total_exponent``: no overflow for entries near 1e308."""
    if total_norm2 == 0.0 or exponent > total_exponent:
        shift = 2 * (total_exponent - exponent)
        return (norm2 + math.ldexp(total_norm2, shift),
                residual2 + math.ldexp(total_residual2, shift), exponent)
    shift = 2 * (exponent - total_exponent)
    return (total_norm2 + math.ldexp(norm2, shift),
            total_residual2 + math.ldexp(residual2, shift), total_exponent)


@_kernel()
def _residual2(M, rows, cols, u, w):
    """``‖M − u wᴴ‖²`` computed directly (accurate when it is tiny, unlike
    ``‖M‖² − ‖w‖²``)."""
    total = 0.0
    for j in range(rows):
        for k in range(cols):
            total += _abs2(M[j, k] - u[j] * np.conj(w[k]))
    return total


@_kernel()
def _top_left_vector_2(M, rows, cols, u, v):
    """Top left singular vector ``u`` of a block with ``min(rows, cols) == 2``, in closed
    form from the 2 × 2 Gram matrix of its smaller side (``v`` is workspace)."""
    by_rows = rows == 2
    # G = M Mᴴ (rows == 2) or Mᴴ M (cols == 2) = [[p, q], [q̄, s]]
    p = 0.0
    s = 0.0
    q = M[0, 0] * 0.0
    if by_rows:
        for k in range(cols):
            p += _abs2(M[0, k])
            s += _abs2(M[1, k])
            q += M[0, k] * np.conj(M[1, k])
    else:
        for j in range(rows):
            p += _abs2(M[j, 0])
            s += _abs2(M[j, 1])
            q += np.conj(M[j, 0]) * M[j, 1]
    half_gap = 0.5 * (p - s)
    lam = 0.5 * (p + s) + math.sqrt(half_gap * half_gap + _abs2(q))
    # Two algebraically equivalent eigenvectors; take the one without cancellation.
    if p >= s:
        x0 = lam - s + 0.0 * q
        x1 = np.conj(q)
    else:
        x0 = q
        x1 = lam - p + 0.0 * q
    norm = math.sqrt(_abs2(x0) + _abs2(x1))
    if norm == 0.0:  # G == 0 cannot happen for a nonzero block; keep a unit vector
        x0 = 1.0 + 0.0 * q
        x1 = 0.0 * q
        norm = 1.0
    target = u if by_rows else v
    target[0] = x0 / norm
    target[1] = x1 / norm
    if not by_rows:  # u = M v / ‖M v‖
        inv = 1.0 / math.sqrt(_times(M, rows, cols, v, u))
        for j in range(rows):
            u[j] *= inv


@_kernel()
def _top_left_vector(M, rows, cols, row_norm2, norm2, u, v, w, tol):
    """Unit top left singular vector ``u`` of a nonzero block ``M`` (rows × cols).

    Closed form when a side is 1 or 2 (``_top_left_vector_2``).  Otherwise power iteration on ``M Mᴴ``, started
    from the largest row, which is exact in one step for a rank-one block.  The error of
    the rank-one approximation ``u (Mᴴu)ᴴ`` is ``‖M‖² − σ²`` with ``σ² = ‖Mᴴu‖²``, so
    only ``σ²`` has to converge, and only as far as that error can tell: the iteration
    stops when the error is at rounding level, when ``σ²`` stalls at rounding level, or
    when the geometric tail of the remaining increase of ``σ²`` is below
    ``RESIDUAL_TOL`` times the error (noisy, slowly converging blocks).
    No LAPACK call: it would oversubscribe threads inside parallel regions.
    """
    if rows == 1:
        u[0] = 1.0
        return
    if cols == 1:  # u = M[:, 0] / ‖M[:, 0]‖
        inv = 1.0 / math.sqrt(norm2)
        for j in range(rows):
            u[j] = M[j, 0] * inv
        return
    if min(rows, cols) == 2:
        _top_left_vector_2(M, rows, cols, u, v)
        return
    best_row = 0
    for j in range(1, rows):
        if row_norm2[j] > row_norm2[best_row]:
            best_row = j
    inv = 1.0 / math.sqrt(row_norm2[best_row])
    for k in range(cols):
        v[k] = np.conj(M[best_row, k]) * inv
    sigma2_old = 0.0
    increase_old = 0.0
    for _ in range(MAX_POWER_STEPS):
        inv = 1.0 / math.sqrt(_times(M, rows, cols, v, u))
        for j in range(rows):
            u[j] *= inv
        sigma2 = _adjoint_times(M, rows, cols, u, w)
        error2 = norm2 - sigma2
        increase = sigma2 - sigma2_old
        if error2 <= 8.0 * tol * norm2 or increase <= tol * sigma2:
            return
        if increase_old > 0.0 and increase < increase_old:
            ratio = increase / increase_old
            if increase * ratio / (1.0 - ratio) <= RESIDUAL_TOL * error2:
                return
        sigma2_old = sigma2
        increase_old = increase
        inv = 1.0 / math.sqrt(sigma2)
        for k in range(cols):
            v[k] = w[k] * inv


def _split_rank_one_py(node, columns, b1, c1, batch, left, right, sigma_power, tol, work,
                       n_chunks, chunk_norm2, chunk_residual2, chunk_exponent, chunk_bad):
    """Best rank-one approximation of every independent block of a two-factor split.

    Parameters
    ----------
    node : (a, B, C, d) array
        Values of the node (any of the four supported dtypes).
    columns : (C,) int64 array
        Column gather: entries are read at ``node[i, row, columns[col], t]`` (the
        identity except at the root when a column permutation is applied).
    b1, c1 : int
        Rows per block, and number of column groups (``b2 = B / b1``, ``C2 = C / c1``).
    batch : int
        Column groups gathered at once into a work panel (bounds its memory).
    left : (a, b1, c1, b2*d) array
        Output values of the left factor.
    right : (a*c1, b2, C2, d) array
        Output values of the right factor.
    sigma_power : float
        The left factor gets ``σ**sigma_power · u`` and the right
        ``σ**(1-sigma_power) · vᴴ``: 1 pushes the scale into the left child (with
        orthonormalisation, which solves the left child next), 0.5 splits it evenly.
    tol : float
        Relative tolerance of the iterative top singular pair (a few ``eps`` of
        ``work``'s dtype).
    work : (1,) array
        Its dtype (float64 or complex128) is the precision of the singular vectors, so
        float32 data gets float64 iterations.
    n_chunks : int
        Work is cut into this many contiguous chunks (one parallel task each).
    chunk_norm2, chunk_residual2, chunk_exponent : (n_chunks,) arrays
        Outputs: per chunk, the sums of ``‖M‖²`` and of ``‖M − σ u vᴴ‖²`` over blocks,
        in units of ``4**chunk_exponent`` (so that huge entries cannot overflow them).
    chunk_bad : (n_chunks,) int64 array
        Output: per chunk, the number of blocks holding NaN or Inf.

    Notes
    -----
    Block ``(i, k1, j2, t)`` is the ``b1 × C2`` matrix
    ``M[j1, k2] = node[i, j1*b2 + j2, columns[k1*C2 + k2], t]``; its approximation
    ``σ u vᴴ`` goes to ``left[i, j1, k1, j2*d + t]`` (``u``) and
    ``right[i*c1 + k1, j2, k2, t]`` (``vᴴ``).

    The blocks sharing ``(i, j2, t)`` read the same ``b1`` rows of the node, so they are
    processed together: those rows are gathered once, ``batch`` column groups at a time,
    into a contiguous panel (with ``t`` fastest between tasks, neighbouring tasks share
    cache lines).  Reading whole rows keeps a scattered column permutation cache
    friendly instead of touching one cache line per entry.
    """
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    c2 = big_c // c1
    n_batches = (c1 + batch - 1) // batch
    n_tasks = a * b2 * d * n_batches
    for chunk in prange(n_chunks):
        panel = np.empty((batch, b1, c2), dtype=node.dtype)
        row_norm2 = np.empty(b1)
        u = np.empty(b1, dtype=work.dtype)
        v = np.empty(c2, dtype=work.dtype)
        w = np.empty(c2, dtype=work.dtype)
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            k1_first = (task % n_batches) * batch
            k1_count = min(batch, c1 - k1_first)
            group = task // n_batches
            t = group % d
            j2 = (group // d) % b2
            i = group // (d * b2)
            for j1 in range(b1):
                row = j1 * b2 + j2
                for kk in range(k1_count):
                    first_column = (k1_first + kk) * c2
                    for k2 in range(c2):
                        panel[kk, j1, k2] = node[i, row, columns[first_column + k2], t]
            for kk in range(k1_count):
                k1 = k1_first + kk
                M = panel[kk]
                exponent = _gather_scale(M, b1, c2)
                if exponent == NOT_FINITE or exponent == EMPTY:
                    bad += exponent == NOT_FINITE  # reported by the caller
                    for j1 in range(b1):
                        left[i, j1, k1, j2 * d + t] = 0.0
                    for k2 in range(c2):
                        right[i * c1 + k1, j2, k2, t] = 0.0
                    continue
                norm2 = 0.0
                for j1 in range(b1):
                    acc = 0.0
                    for k2 in range(c2):
                        acc += _abs2(M[j1, k2])
                    row_norm2[j1] = acc
                    norm2 += acc
                _top_left_vector(M, b1, c2, row_norm2, norm2, u, v, w, tol)
                sigma2 = _adjoint_times(M, b1, c2, u, w)
                residual2 = max(norm2 - sigma2, 0.0)
                if residual2 < CANCELLATION * norm2:
                    residual2 = _residual2(M, b1, c2, u, w)
                norm2_sum, residual2_sum, exponent_sum = _accumulate(
                    norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
                # left = σ**p u and right = σ**(1-p) vᴴ with σ = 2**exponent ‖w‖ and
                # vᴴ = wᴴ/‖w‖ (w is in the block's scaled units).
                sigma = math.sqrt(sigma2)
                left_scale = math.ldexp(sigma, exponent) ** sigma_power
                right_scale = math.ldexp(sigma, exponent) ** (1.0 - sigma_power) / sigma
                for j1 in range(b1):
                    left[i, j1, k1, j2 * d + t] = u[j1] * left_scale
                for k2 in range(c2):
                    right[i * c1 + k1, j2, k2, t] = np.conj(w[k2]) * right_scale
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


def _split_rank_r_py(node, columns, b1, c1, rank, left, right, sigma_power,
                     n_chunks, chunk_norm2, chunk_residual2, chunk_exponent, chunk_bad):
    """Best rank-``rank`` approximation of every block of a two-factor split.

    Same blocks and arguments as `_split_rank_one_py`, with a rank ``r``:
    ``left`` is ``(a, b1, c1*r, b2*d)`` and ``right`` is ``(a*c1, r*b2, C2, d)``, and the
    ``ρ``-th singular triplet of block ``(i, k1, j2, t)`` goes to
    ``left[i, j1, k1*r + ρ, j2*d + t]`` and ``right[i*c1 + k1, ρ*b2 + j2, k2, t]``.
    Each block gets a full thin SVD (LAPACK), so this kernel runs serially: LAPACK's own
    threads inside a parallel region oversubscribe the cores.
    """
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    c2 = big_c // c1
    n_blocks = a * c1 * b2 * d
    for chunk in prange(n_chunks):
        M = np.empty((b1, c2), dtype=node.dtype)
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        for block in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            k1 = block % c1
            t = (block // c1) % d
            j2 = (block // (c1 * d)) % b2
            i = block // (c1 * d * b2)
            for j1 in range(b1):
                row = j1 * b2 + j2
                for k2 in range(c2):
                    M[j1, k2] = node[i, row, columns[k1 * c2 + k2], t]
            exponent = _gather_scale(M, b1, c2)
            if exponent == NOT_FINITE or exponent == EMPTY:
                bad += exponent == NOT_FINITE
                for rho in range(rank):
                    for j1 in range(b1):
                        left[i, j1, k1 * rank + rho, j2 * d + t] = 0.0
                    for k2 in range(c2):
                        right[i * c1 + k1, rho * b2 + j2, k2, t] = 0.0
                continue
            U, s, Vh = np.linalg.svd(M, full_matrices=False)
            norm2 = 0.0
            residual2 = 0.0
            for rho in range(s.shape[0]):
                sigma2 = float(s[rho]) ** 2
                norm2 += sigma2
                if rho >= rank:  # the trailing singular values are the residual
                    residual2 += sigma2
            norm2_sum, residual2_sum, exponent_sum = _accumulate(
                norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
            for rho in range(rank):  # rank <= min(b1, C2), checked by the caller
                true_sigma = math.ldexp(float(s[rho]), exponent)
                left_scale = true_sigma ** sigma_power
                right_scale = true_sigma ** (1.0 - sigma_power)
                for j1 in range(b1):
                    left[i, j1, k1 * rank + rho, j2 * d + t] = U[j1, rho] * left_scale
                for k2 in range(c2):
                    right[i * c1 + k1, rho * b2 + j2, k2, t] = Vh[rho, k2] * right_scale
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


split_rank_r_serial = _jit(_split_rank_r_py, "_serial")


split_rank_one_serial = _jit(_split_rank_one_py, "_serial")
split_rank_one_parallel = _jit(_split_rank_one_py, "_parallel", parallel=True)


# --------------------------------------------------------------------------------------
# Applying a chain of factors.
# --------------------------------------------------------------------------------------


@_kernel()
def _factor_vec(values, offset, a, b, c, d, i_first, i_last, period, lo, hi, src, dst):
    """``dst = K src`` for one factor and one vector, restricted to the blocks
    ``i_first <= i < i_last`` and the positions ``t`` with ``lo <= t % period < hi``
    (``period`` divides ``d``; the whole factor is ``(0, a, d, 0, d)``).

    These restrictions are independent sub-problems, which is what lets several
    threads share one product (see `_apply_chain_py`).  The innermost loop runs over
    contiguous ``t`` and is specialised for the 2 × 2 blocks of butterflies (each input
    read once, each output written once).
    """
    if b == 2 and c == 2:
        for i in range(i_first, i_last):
            base = offset + 4 * i * d
            first = 2 * i * d
            second = first + d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    x0 = src[first + t]
                    x1 = src[second + t]
                    dst[first + t] = values[base + t] * x0 + values[base + d + t] * x1
                    dst[second + t] = values[base + 2 * d + t] * x0 + values[base + 3 * d + t] * x1
        return
    for i in range(i_first, i_last):
        for j in range(b):
            out = (i * b + j) * d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    dst[out + t] = 0.0
            for k in range(c):
                base = offset + ((i * b + j) * c + k) * d
                inp = (i * c + k) * d
                for t_high in range(0, d, period):
                    for t in range(t_high + lo, t_high + hi):
                        dst[out + t] += values[base + t] * src[inp + t]


@_kernel()
def _factor_vec_adjoint(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                        src, dst, conjugate):
    """``dst = Kᴴ src`` (or ``Kᵀ src`` when not ``conjugate``), restricted as in
    `_factor_vec`."""
    if b == 2 and c == 2:
        for i in range(i_first, i_last):
            base = offset + 4 * i * d
            first = 2 * i * d
            second = first + d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    y0 = src[first + t]
                    y1 = src[second + t]
                    v00 = values[base + t]
                    v01 = values[base + d + t]
                    v10 = values[base + 2 * d + t]
                    v11 = values[base + 3 * d + t]
                    if conjugate:
                        v00 = np.conj(v00)
                        v01 = np.conj(v01)
                        v10 = np.conj(v10)
                        v11 = np.conj(v11)
                    dst[first + t] = v00 * y0 + v10 * y1
                    dst[second + t] = v01 * y0 + v11 * y1
        return
    for i in range(i_first, i_last):
        for k in range(c):
            out = (i * c + k) * d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    dst[out + t] = 0.0
        for j in range(b):
            inp = (i * b + j) * d
            for k in range(c):
                base = offset + ((i * b + j) * c + k) * d
                out = (i * c + k) * d
                for t_high in range(0, d, period):
                    for t in range(t_high + lo, t_high + hi):
                        value = values[base + t]
                        if conjugate:
                            value = np.conj(value)
                        dst[out + t] += value * src[inp + t]


@_kernel()
def _factor_mat(values, offset, a, b, c, d, i_first, i_last, period, lo, hi, src, dst):
    """`_factor_vec` for ``src`` of shape (n, m), C-ordered: the innermost loop runs over
    the m right-hand sides, so each factor value is loaded once per row pair."""
    m = src.shape[1]
    if b == 2 and c == 2:
        for i in range(i_first, i_last):
            base = offset + 4 * i * d
            first = 2 * i * d
            second = first + d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    v00 = values[base + t]
                    v01 = values[base + d + t]
                    v10 = values[base + 2 * d + t]
                    v11 = values[base + 3 * d + t]
                    for r in range(m):
                        x0 = src[first + t, r]
                        x1 = src[second + t, r]
                        dst[first + t, r] = v00 * x0 + v01 * x1
                        dst[second + t, r] = v10 * x0 + v11 * x1
        return
    for i in range(i_first, i_last):
        for j in range(b):
            out = (i * b + j) * d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    for r in range(m):
                        dst[out + t, r] = 0.0
            for k in range(c):
                base = offset + ((i * b + j) * c + k) * d
                inp = (i * c + k) * d
                for t_high in range(0, d, period):
                    for t in range(t_high + lo, t_high + hi):
                        value = values[base + t]
                        for r in range(m):
                            dst[out + t, r] += value * src[inp + t, r]


@_kernel()
def _factor_mat_adjoint(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                        src, dst, conjugate):
    """`_factor_vec_adjoint` for many right-hand sides."""
    m = src.shape[1]
    if b == 2 and c == 2:
        for i in range(i_first, i_last):
            base = offset + 4 * i * d
            first = 2 * i * d
            second = first + d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    v00 = values[base + t]
                    v01 = values[base + d + t]
                    v10 = values[base + 2 * d + t]
                    v11 = values[base + 3 * d + t]
                    if conjugate:
                        v00 = np.conj(v00)
                        v01 = np.conj(v01)
                        v10 = np.conj(v10)
                        v11 = np.conj(v11)
                    for r in range(m):
                        y0 = src[first + t, r]
                        y1 = src[second + t, r]
                        dst[first + t, r] = v00 * y0 + v10 * y1
                        dst[second + t, r] = v01 * y0 + v11 * y1
        return
    for i in range(i_first, i_last):
        for k in range(c):
            out = (i * c + k) * d
            for t_high in range(0, d, period):
                for t in range(t_high + lo, t_high + hi):
                    for r in range(m):
                        dst[out + t, r] = 0.0
        for j in range(b):
            inp = (i * b + j) * d
            for k in range(c):
                base = offset + ((i * b + j) * c + k) * d
                out = (i * c + k) * d
                for t_high in range(0, d, period):
                    for t in range(t_high + lo, t_high + hi):
                        value = values[base + t]
                        if conjugate:
                            value = np.conj(value)
                        for r in range(m):
                            dst[out + t, r] += value * src[inp + t, r]


def _apply_factor(values, offset, a, b, c, d, i_first, i_last, period, lo, hi, src, dst,
                  adjoint, conjugate):
    """One factor (or its adjoint/transpose) on one vector or a block of vectors.

    Under Numba the choice between the vector and block loops is made at compile time
    from ``src.ndim`` (the overload below), so one chain driver serves both operands
    and stays cacheable; this body is what ``NUMBA_DISABLE_JIT=1`` runs.
    """
    arguments = (values, offset, a, b, c, d, i_first, i_last, period, lo, hi, src, dst)
    if src.ndim == 1:
        if adjoint:
            _factor_vec_adjoint(*arguments, conjugate)
        else:
            _factor_vec(*arguments)
    elif adjoint:
        _factor_mat_adjoint(*arguments, conjugate)
    else:
        _factor_mat(*arguments)


@overload(_apply_factor, jit_options={"nogil": True})
def _apply_factor_overload(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                           src, dst, adjoint, conjugate):
    if src.ndim == 1:
        def apply_one_vector(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                             src, dst, adjoint, conjugate):
            if adjoint:
                _factor_vec_adjoint(values, offset, a, b, c, d, i_first, i_last, period,
                                    lo, hi, src, dst, conjugate)
            else:
                _factor_vec(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                            src, dst)
        return apply_one_vector

    def apply_many_vectors(values, offset, a, b, c, d, i_first, i_last, period, lo, hi,
                           src, dst, adjoint, conjugate):
        if adjoint:
            _factor_mat_adjoint(values, offset, a, b, c, d, i_first, i_last, period, lo,
                                hi, src, dst, conjugate)
        else:
            _factor_mat(values, offset, a, b, c, d, i_first, i_last, period, lo, hi, src,
                        dst)
    return apply_many_vectors


def _apply_chain_py(values, patterns, offsets, x, out, adjoint, conjugate, middle,
                    right_blocks, segments, period, block_tasks, period_tasks):
    """Apply the whole chain (or its adjoint/transpose) to ``x`` into ``out``: one vector
    (1-D) or a block of vectors (2-D, C-ordered).

    Forward: factors are applied last to first; adjoint: first to last, each transposed
    (and conjugated when ``conjugate``).

    Two phases split at factor ``middle`` (``middle == 0``: one phase, one task).  In a
    chainable chain ``a`` can only grow and ``d`` only shrink from left to right, so the
    factors ``middle..L-1`` are all block diagonal with ``segments = a[middle]``
    independent blocks (contiguous row segments), and the factors ``0..middle-1`` never
    mix rows of different residue modulo ``period = d[middle-1]`` (``right_blocks`` is
    True).  The adjoint of a chainable chain is the mirror image (``right_blocks``
    False: the factors ``0..middle-1`` are the block-diagonal ones).  A phase therefore
    runs all its factors on one slice per task without synchronisation, which gives
    threads one barrier per product instead of one per factor, and keeps each task's
    rows in cache across the factors of its phase (``block_tasks``/``period_tasks``
    slices of the segments and residues).  The caller checks that the block phase's
    intermediate vectors all have one length (``butterfly.phase_split_is_safe``).
    """
    n_factors = patterns.shape[0]
    size = max(x.shape[0], out.shape[0])
    for f in range(n_factors):
        size = max(size, patterns[f, 0] * patterns[f, 1] * patterns[f, 3])
    buffers = np.empty((2, size) + x.shape[1:], dtype=out.dtype)
    # Steps are numbered in application order; step s applies factor L-1-s (forward)
    # or s (adjoint).  Phase 0 covers the factors right of middle when going forward.
    n_phases = 2 if middle > 0 else 1
    first_phase_steps = n_factors - middle if not adjoint else middle
    for phase in range(n_phases):
        if n_phases == 1:
            first_step, last_step = 0, n_factors
        elif phase == 0:
            first_step, last_step = 0, first_phase_steps
        else:
            first_step, last_step = first_phase_steps, n_factors
        block_phase = ((phase == 0) != adjoint) == right_blocks
        n_tasks = 1 if n_phases == 1 else block_tasks if block_phase else period_tasks
        for task in prange(n_tasks):
            for step in range(first_step, last_step):
                f = n_factors - 1 - step if not adjoint else step
                a, b, c, d = patterns[f, 0], patterns[f, 1], patterns[f, 2], patterns[f, 3]
                i_first, i_last = 0, a
                t_period, lo, hi = d, 0, d
                if n_phases == 2:
                    if block_phase:
                        per_segment = a // segments
                        i_first = per_segment * (segments * task // n_tasks)
                        i_last = per_segment * (segments * (task + 1) // n_tasks)
                    else:
                        t_period = period
                        lo = period * task // n_tasks
                        hi = period * (task + 1) // n_tasks
                src = x if step == 0 else buffers[(step - 1) % 2]
                dst = out if step == n_factors - 1 else buffers[step % 2]
                _apply_factor(values, offsets[f], a, b, c, d, i_first, i_last, t_period,
                              lo, hi, src, dst, adjoint, conjugate)


apply_chain_serial = _jit(_apply_chain_py, "_serial")
apply_chain_parallel = _jit(_apply_chain_py, "_parallel", parallel=True)


# --------------------------------------------------------------------------------------
# Chains of 2 × 2-block factors (butterflies proper): one vector or a block of vectors.
# --------------------------------------------------------------------------------------
#
# The general loops above read the four values of one 2 × 2 block from four places
# ``d`` apart.  For one vector, which is bound by scalar complex arithmetic and by
# loop overhead, a derived copy of the values in *pair order* is faster (measured 67 µs
# against 77 µs for the same loop on the storage layout, and 124 µs for the general
# driver, DFT N = 4096 complex128): for a factor ``(a, 2, 2, d)`` used at one step,
#
#     packed[offset + 4 * (i * d + t) + 2 * j + k]  =  block (i, t) entry (j, k),
#
# one cache line per complex128 block, where block ``(i, t)`` maps the inputs
# ``2 i d + t`` and ``2 i d + d + t`` to the outputs at the same two positions.  For an
# adjoint the blocks are stored transposed (and conjugated), so the same loop serves
# ``B``, ``Bᴴ`` and ``Bᵀ``; ``steps`` lists ``(a, d, offset)`` in application order.


@_kernel()
def _pairs_pass(packed, a, d, offset, src, dst):
    """``dst = K src`` for one factor in pair order (see above)."""
    for i in range(a):
        first = 2 * i * d
        second = first + d
        base = offset + 4 * i * d
        for t in range(d):
            x0 = src[first + t]
            x1 = src[second + t]
            v = base + 4 * t
            dst[first + t] = packed[v] * x0 + packed[v + 1] * x1
            dst[second + t] = packed[v + 2] * x0 + packed[v + 3] * x1


@_kernel()
def _pairs_pass_gathered(packed, a, d, offset, src, gather, dst):
    """`_pairs_pass` reading ``src[gather]`` (the column permutation) on the fly."""
    for i in range(a):
        first = 2 * i * d
        second = first + d
        base = offset + 4 * i * d
        for t in range(d):
            x0 = src[gather[first + t]]
            x1 = src[gather[second + t]]
            v = base + 4 * t
            dst[first + t] = packed[v] * x0 + packed[v + 1] * x1
            dst[second + t] = packed[v + 2] * x0 + packed[v + 3] * x1


def _apply_pairs_py(packed, steps, gather, scatter, x, out, work):
    """``out = P_out K_{steps[-1]} ⋯ K_{steps[0]} P_in x`` for one vector.

    ``gather`` (``x[gather]`` is fed to the first factor) and ``scatter`` (the last
    factor's result ``y`` lands as ``out[scatter] = y``) may be empty for the identity.
    ``work`` is a ``(2, n)`` scratch array.  Every step reads one buffer and writes the
    other, so nothing is copied between steps.
    """
    n_steps = steps.shape[0]
    src = x
    for s in range(n_steps):
        last = s == n_steps - 1
        dst = out if last and scatter.shape[0] == 0 else work[s % 2]
        if s == 0 and gather.shape[0] > 0:
            _pairs_pass_gathered(packed, steps[s, 0], steps[s, 1], steps[s, 2], src, gather, dst)
        else:
            _pairs_pass(packed, steps[s, 0], steps[s, 1], steps[s, 2], src, dst)
        src = dst
    if scatter.shape[0] > 0:
        for p in range(scatter.shape[0]):
            out[scatter[p]] = src[p]


@_kernel()
def _pairs_pass_mat(packed, a, d, offset, src, dst):
    """`_pairs_pass` for a C-ordered block of vectors: the innermost loop runs over the
    right-hand sides, so each block's four values are loaded once per row pair."""
    m = src.shape[1]
    for i in range(a):
        first = 2 * i * d
        second = first + d
        base = offset + 4 * i * d
        for t in range(d):
            v = base + 4 * t
            v00, v01, v10, v11 = packed[v], packed[v + 1], packed[v + 2], packed[v + 3]
            for r in range(m):
                x0 = src[first + t, r]
                x1 = src[second + t, r]
                dst[first + t, r] = v00 * x0 + v01 * x1
                dst[second + t, r] = v10 * x0 + v11 * x1


def _apply_pairs_mat_py(packed, steps, gather, scatter, x, out, work):
    """`_apply_pairs_py` for ``x`` and ``out`` of shape ``(n, m)``, C-ordered; ``work``
    is ``(2, n, m)``.  The row permutations are applied in a pass of their own (one
    copy, small next to the ``L`` factor passes)."""
    n_steps = steps.shape[0]
    m = x.shape[1]
    src = x
    if gather.shape[0] > 0:
        for p in range(gather.shape[0]):
            row = gather[p]
            for r in range(m):
                work[1, p, r] = x[row, r]
        src = work[1]
    for s in range(n_steps):
        last = s == n_steps - 1
        dst = out if last and scatter.shape[0] == 0 else work[s % 2]
        _pairs_pass_mat(packed, steps[s, 0], steps[s, 1], steps[s, 2], src, dst)
        src = dst
    if scatter.shape[0] > 0:
        for p in range(scatter.shape[0]):
            row = scatter[p]
            for r in range(m):
                out[row, r] = src[p, r]


class _SuperwordKernel:
    """A kernel compiled with LLVM's SLP (superword) vectoriser switched on.

    Numba turns SLP vectorisation off globally since 0.57 (numba#8852: miscompilations
    found in other code).  For `_pairs_pass` it is what packs the real and imaginary
    halves of the complex arithmetic into vector instructions: measured 52 µs against
    78 µs per product (DFT N = 4096 complex128).  The flag is set only while this
    kernel compiles, under Numba's global compiler lock, so no other compilation sees
    it; the tests compare every dtype and direction with a dense reference.
    """

    def __init__(self, dispatcher):
        self._dispatcher = dispatcher
        self._compiled = set()  # dtypes of ``packed`` compiled (or loaded from the cache)

    def __call__(self, packed, steps, gather, scatter, x, out, work):
        if packed.dtype not in self._compiled and hasattr(self._dispatcher, "compile"):
            self._compile(packed, steps, gather, scatter, x, out, work)
        self._dispatcher(packed, steps, gather, scatter, x, out, work)

    def _compile(self, *arguments):
        from numba import typeof
        from numba.core import config
        from numba.core.compiler_lock import global_compiler_lock

        with global_compiler_lock:
            previous = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = 1
            try:
                self._dispatcher.compile(tuple(typeof(a) for a in arguments))
            finally:
                config.SLP_VECTORIZE = previous
        self._compiled.add(arguments[0].dtype)


apply_pairs = _SuperwordKernel(_jit(_apply_pairs_py))
apply_pairs_mat = _SuperwordKernel(_jit(_apply_pairs_mat_py))
