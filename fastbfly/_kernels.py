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

Products of chains whose factors all have 2 × 2 blocks (butterflies proper) run on a
derived copy of the values in *pair order* (each block's four values contiguous; see
the last section), built once per `Butterfly`, direction and dtype; the storage above
stays the one format of record (saved files, ``Factor.values``, interoperability).

Every kernel body is plain Python as well, so ``NUMBA_DISABLE_JIT=1`` runs (and covers)
the same code.
"""

import math
import threading
import types

import numba
import numpy as np
from numba import njit, prange
from numba.core.caching import FunctionCache
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


class _TolerantCache(FunctionCache):
    """Numba's on-disk cache of one kernel, without its failure modes.

    Numba reads the index (``.nbi``) and data (``.nbc``) files unguarded: a truncated,
    empty or garbage file (a full disk, a crashed writer, a copied cache) makes the
    kernel's first call raise (``EOFError``, ``UnpicklingError``, LLVM parse errors).
    Here any failure to load counts as a cache miss, so the kernel is compiled, and a
    failure to save leaves it uncached.
    """

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception:  # unreadable cache files: compile instead
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception:
            # Saving reads the index first, so an unreadable index fails every save:
            # replace it by an empty one (its entries are unreadable anyway) and retry.
            # Any other failure (read-only or full disk) just leaves the kernel uncached.
            try:
                self._cache_file._load_index()
            except Exception:
                try:
                    self.flush()
                    super().save_overload(sig, data)
                except Exception:
                    pass


# Threading layers whose parallel regions may be entered from several Python threads at
# once.  Numba's ``workqueue`` layer (its fallback where neither OpenMP nor TBB is
# available) may not: it aborts the interpreter ("Concurrent access has been detected").
CONCURRENT_LAYERS = ("omp", "tbb")
_PARALLEL_LAUNCH_LOCK = threading.Lock()


def parallel_launch_needs_lock() -> bool:
    """True when parallel kernels must be launched one at a time: the threading layer is
    ``workqueue``, or not chosen yet (Numba picks it at the first parallel region, so
    the first launches are serialized too)."""
    try:
        return numba.threading_layer() not in CONCURRENT_LAYERS
    except ValueError:  # "Threading layer is not initialized."
        return True


class _ParallelKernel:
    """A ``parallel=True`` kernel that is safe to call from several Python threads.

    Under a layer that does not take concurrent parallel regions (see
    `parallel_launch_needs_lock`) calls wait for each other on one lock (released while
    waiting, and the kernels run without the GIL); under OpenMP and TBB they go straight
    to the dispatcher.  Every other attribute is the dispatcher's (``py_func``,
    ``stats``, ``signatures``...).
    """

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.__doc__ = dispatcher.__doc__

    def __call__(self, *args):
        if not parallel_launch_needs_lock():
            return self.dispatcher(*args)
        with _PARALLEL_LAUNCH_LOCK:
            return self.dispatcher(*args)

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"<parallel kernel {self.dispatcher!r}>"


def _jit(function, suffix="", **options):
    """``njit(cache=True, nogil=True, **options)`` of a copy of ``function`` named with
    ``suffix``.

    Numba's cache keys entries by function name, source line and signature, not by
    options: the serial and ``parallel=True`` builds of one function would load each
    other's machine code, so each build gets its own name.  Where no cache location is
    writable at all (read-only install, read-only home and ``NUMBA_CACHE_DIR``) the
    kernels compile without a cache instead of failing at import, and corrupted cache
    files are recompiled (`_TolerantCache`).  ``parallel=True`` builds are wrapped in
    `_ParallelKernel` (safe launches from several Python threads).
    """
    copy = types.FunctionType(function.__code__, function.__globals__,
                              function.__name__ + suffix, function.__defaults__,
                              function.__closure__)
    copy.__qualname__ = function.__qualname__ + suffix
    copy.__doc__ = function.__doc__
    try:
        dispatcher = njit(cache=True, nogil=True, **options)(copy)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        dispatcher = njit(nogil=True, **options)(copy)
    if isinstance(getattr(dispatcher, "_cache", None), FunctionCache):  # not with NUMBA_DISABLE_JIT
        dispatcher._cache = _TolerantCache(copy)
    if options.get("parallel") and not isinstance(dispatcher, types.FunctionType):
        return _ParallelKernel(dispatcher)
    return dispatcher


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
    # Entry by entry: a sum of magnitudes (NaN and Inf propagate) would also overflow
    # for finite entries near the largest float.  False for NaN: comparisons with NaN are.
    finite = True
    for j in range(rows):
        for k in range(cols):
            value = M[j, k]
            magnitude = max(abs(value.real), abs(value.imag))
            finite &= (abs(value.real) < np.inf) & (abs(value.imag) < np.inf)
            if magnitude > biggest:
                biggest = magnitude
    if not finite:
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
    return p + s  # ‖M‖² = trace G


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
                if min(b1, c2) == 2:
                    # closed form; it computes ‖M‖² itself (one pass less over M)
                    norm2 = _top_left_vector_2(M, b1, c2, u, v)
                else:
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


# Rank-r split: Gram matrix of each block's shorter side, subspace iteration on it, one
# refinement step against the block itself, then a one-sided Jacobi rotation of the r
# vectors into singular vectors (see `_split_rank_r_py`).
# A vector whose Gram-Schmidt remainder is below this fraction of its norm is numerically
# dependent on the previous ones, and is replaced by a fresh orthogonal direction.
DEPENDENT = 1e-13
# The one-sided Jacobi rotation of r vectors stops when every pair is orthogonal to this
# relative accuracy (it converges quadratically: a few sweeps).
JACOBI_TOL = 1e-15
MAX_JACOBI_SWEEPS = 30
# Subspace iteration steps per row of the Gram matrix (times p / r) after which a dense
# eigensolver (LAPACK) is cheaper than iterating on.
EIGH_STEPS_PER_ROW = 2


@_kernel()
def _project_out(Z, k, n):
    """``Z[k] -= Σ_{m<k} (Z[m]ᴴ Z[k]) Z[m]`` over the first ``n`` entries (rows ``m < k``
    orthonormal; modified Gram-Schmidt)."""
    for m in range(k):
        coefficient = np.conj(Z[m, 0]) * Z[k, 0]
        for j in range(1, n):
            coefficient += np.conj(Z[m, j]) * Z[k, j]
        for j in range(n):
            Z[k, j] -= coefficient * Z[m, j]


@_kernel()
def _row_norm(Z, k, n):
    total = 0.0
    for j in range(n):
        total += _abs2(Z[k, j])
    return math.sqrt(total)


@_kernel()
def _orthonormalize_rows(Z, r, n):
    """Make rows ``0..r-1`` of ``Z`` (length ``n >= r``) orthonormal, in order.

    Gram-Schmidt repeated while a pass removes more than half of the norm ("twice is
    enough").  A row numerically dependent on the previous ones (a block of rank below
    ``r``) is replaced by the coordinate vector they cover least, orthogonalised: the
    rows must stay an orthonormal basis, whichever direction fills it.
    """
    for k in range(r):
        original = _row_norm(Z, k, n)
        norm = original
        for _ in range(3):
            before = norm
            _project_out(Z, k, n)
            norm = _row_norm(Z, k, n)
            if norm > 0.5 * before:
                break
        if not norm > DEPENDENT * original:
            best = 0
            best_cover = np.inf
            for j in range(n):
                cover = 0.0
                for m in range(k):
                    cover += _abs2(Z[m, j])
                if cover < best_cover:
                    best_cover = cover
                    best = j
            for j in range(n):
                Z[k, j] = 0.0
            Z[k, best] = 1.0
            _project_out(Z, k, n)
            _project_out(Z, k, n)
            norm = _row_norm(Z, k, n)
        inv = 1.0 / norm
        for j in range(n):
            Z[k, j] *= inv


@_kernel()
def _gram(A, p, q, G):
    """``G = A Aᴴ`` (p × p) from the contiguous rows of ``A`` (p × q); returns
    ``‖A‖² = trace G``."""
    trace = 0.0
    for j in range(p):
        for l in range(j + 1):
            acc = A[j, 0] * np.conj(A[l, 0])
            for k in range(1, q):
                acc += A[j, k] * np.conj(A[l, k])
            G[j, l] = acc
            G[l, j] = np.conj(acc)
        trace += G[j, j].real
    return trace


@_kernel()
def _top_subspace(G, p, r, norm2, Q, Z, diag, tol):
    """Rows ``0..r-1`` of ``Q``: an orthonormal basis of the top-``r`` eigenvector space
    of the Hermitian positive semidefinite ``G`` (p × p, ``‖A‖² = trace G = norm2``).

    Start: the columns of ``G`` a pivoted Cholesky factorisation picks (largest
    remaining diagonal first), which span the whole range of ``G`` when ``G`` has rank
    ``r``, so exact low-rank blocks converge in one step.  Then subspace iteration
    ``Q ← orth(G Q)`` with the stopping rule of `_top_left_vector` on the captured
    energy ``σ² = trace(Qᴴ G Q)`` (``‖A‖² − σ²`` is the block's squared error).
    ``Z`` (r × p) and ``diag`` (p) are workspace.
    """
    for j in range(p):
        diag[j] = G[j, j].real
    for k in range(r):
        pivot = 0
        for j in range(1, p):
            if diag[j] > diag[pivot]:
                pivot = j
        # row k of the Cholesky factor: G[:, pivot] minus the previous rows' share
        scale = 1.0 / math.sqrt(diag[pivot]) if diag[pivot] > 0.0 else 0.0
        for j in range(p):
            value = np.conj(G[pivot, j])
            for m in range(k):
                value -= Q[m, j] * np.conj(Q[m, pivot])
            Q[k, j] = value * scale
        for j in range(p):
            diag[j] -= _abs2(Q[k, j])
        diag[pivot] = -1.0  # never picked twice
    _orthonormalize_rows(Q, r, p)
    sigma2_old = 0.0
    increase_old = 0.0
    ratio_old = 0.0
    # Slow convergence (flat spectra, as in blocks of pure noise) costs p² r per step:
    # after as many steps as a dense eigensolver of G costs (~p³), take that instead.
    budget = 8 + (EIGH_STEPS_PER_ROW * p) // r
    for step in range(MAX_POWER_STEPS):
        if step == budget:
            _, vectors = np.linalg.eigh(G)  # eigenvalues ascending
            for rho in range(r):
                for j in range(p):
                    Q[rho, j] = vectors[j, p - 1 - rho]
            return
        sigma2 = 0.0
        for rho in range(r):
            for j in range(p):
                acc = G[j, 0] * Q[rho, 0]
                for l in range(1, p):
                    acc += G[j, l] * Q[rho, l]
                Z[rho, j] = acc
                sigma2 += (np.conj(Q[rho, j]) * acc).real
        error2 = norm2 - sigma2
        increase = sigma2 - sigma2_old
        if error2 <= 8.0 * tol * norm2 or increase <= tol * sigma2:
            return
        ratio = increase / increase_old if increase_old > 0.0 else 0.0
        # The geometric tail only once the increases decay geometrically: two
        # consecutive ratios that agree (far from the top subspace the first
        # increases shrink faster than the asymptotic rate, which would stop early).
        if 0.0 < ratio < 1.0 and 0.8 * ratio_old <= ratio <= 1.25 * ratio_old:
            slowest = max(ratio, ratio_old)
            if slowest < 1.0 and increase * slowest / (1.0 - slowest) <= RESIDUAL_TOL * error2:
                return
        sigma2_old = sigma2
        increase_old = increase
        ratio_old = ratio
        for rho in range(r):
            for j in range(p):
                Q[rho, j] = Z[rho, j]
        _orthonormalize_rows(Q, r, p)


@_kernel()
def _refine(A, p, q, Q, r, V, Y):
    """From the left basis ``Q`` (r × p): ``V`` (r × q) an orthonormal basis of the
    rows of ``Qᴴ A`` and ``Y = (A V̄ᵀ)ᵀ``, i.e. ``Y[ρ] = A v_ρ``; ``Σ_ρ y_ρ v_ρᴴ`` is the
    approximation ``A V Vᴴ``.

    Why the extra step: ``Q`` comes from the Gram matrix, whose rounding error is
    ``ε σ₁²``, so its weak directions are only accurate to ``ε σ₁² / σ_r²``.  ``Aᴴ Q`` lies
    in the row space of ``A`` up to ``ε σ₁`` whatever ``Q``'s error within it, which
    brings exact low-rank blocks back to the accuracy of an SVD (``ε ‖A‖``).
    """
    for rho in range(r):
        for k in range(q):
            V[rho, k] = 0.0
        for j in range(p):
            coefficient = Q[rho, j]
            for k in range(q):
                V[rho, k] += np.conj(A[j, k]) * coefficient
    _orthonormalize_rows(V, r, q)
    for rho in range(r):
        for j in range(p):
            acc = A[j, 0] * V[rho, 0]
            for k in range(1, q):
                acc += A[j, k] * V[rho, k]
            Y[rho, j] = acc


@_kernel()
def _jacobi_rows(Y, p, V, q, r, sigma):
    """Rotate the pairs ``(y_ρ, v_ρ)`` by one unitary ``J`` (``Y ← Jᵀ Y``,
    ``V ← Jᵀ V``; ``Σ y_ρ v_ρᴴ`` is unchanged) until the ``y_ρ`` are orthogonal: then
    ``y_ρ = σ_ρ u_ρ`` and the ``v_ρ`` are right singular vectors.  One-sided Jacobi, on
    ``Y`` itself rather than its Gram matrix, so no accuracy is lost to squaring.
    ``sigma[ρ] = ‖y_ρ‖`` on return."""
    for _ in range(MAX_JACOBI_SWEEPS):
        rotated = False
        for k in range(r - 1):
            for l in range(k + 1, r):
                alpha = 0.0
                beta = 0.0
                gamma = np.conj(Y[k, 0]) * Y[l, 0]
                for j in range(p):
                    alpha += _abs2(Y[k, j])
                    beta += _abs2(Y[l, j])
                for j in range(1, p):
                    gamma += np.conj(Y[k, j]) * Y[l, j]
                g = abs(gamma)
                if g == 0.0 or g <= JACOBI_TOL * math.sqrt(alpha * beta):
                    continue
                rotated = True
                # y_l ← y_l·conj(γ/|γ|) makes γ real; then a real rotation zeroes it:
                # tan θ is the small root of t² + 2ζt − 1 = 0, ζ = (β − α) / 2|γ|.
                phase = np.conj(gamma / g)
                zeta = (beta - alpha) / (2.0 * g)
                t = math.copysign(1.0, zeta) / (abs(zeta) + math.sqrt(1.0 + zeta * zeta))
                c = 1.0 / math.sqrt(1.0 + t * t)
                s = c * t
                for j in range(p):
                    y_k = Y[k, j]
                    y_l = Y[l, j] * phase
                    Y[k, j] = c * y_k - s * y_l
                    Y[l, j] = s * y_k + c * y_l
                for j in range(q):
                    v_k = V[k, j]
                    v_l = V[l, j] * phase
                    V[k, j] = c * v_k - s * v_l
                    V[l, j] = s * v_k + c * v_l
        if not rotated:
            break
    for rho in range(r):
        sigma[rho] = _row_norm(Y, rho, p)


@_kernel()
def _low_rank_residual2(A, p, q, Y, V, r):
    """``‖A − Σ_ρ y_ρ v_ρᴴ‖²`` computed directly (accurate when it is tiny)."""
    total = 0.0
    for j in range(p):
        for k in range(q):
            value = A[j, k]
            for rho in range(r):
                value -= Y[rho, j] * np.conj(V[rho, k])
            total += _abs2(value)
    return total


def _split_rank_r_py(node, columns, b1, c1, rank, batch, left, right, sigma_power, tol,
                     work, n_chunks, chunk_norm2, chunk_residual2, chunk_exponent,
                     chunk_bad):
    """Best rank-``rank`` approximation of every block of a two-factor split.

    Same blocks and arguments as `_split_rank_one_py`, with a rank ``r``:
    ``left`` is ``(a, b1, c1*r, b2*d)`` and ``right`` is ``(a*c1, r*b2, C2, d)``, and the
    ``ρ``-th singular triplet of block ``(i, k1, j2, t)`` goes to
    ``left[i, j1, k1*r + ρ, j2*d + t]`` and ``right[i*c1 + k1, ρ*b2 + j2, k2, t]``.
    ``batch`` is the number of consecutive ``t`` gathered at once (they read contiguous
    runs of the node).

    Notes
    -----
    Each block ``M`` (or ``Mᴴ`` when it is taller than wide) is ``A``, ``p × q`` with
    ``p <= q``, gathered in the precision of ``work``.  Its ``p × p`` Gram matrix costs
    ``p² q`` and holds everything the top-``r`` left subspace needs
    (`_top_subspace`); one product with ``A`` each way (`_refine`) then gives the
    approximation ``A V Vᴴ`` with the accuracy of an SVD on exact low-rank blocks, and a
    Jacobi rotation of the ``r`` pairs (`_jacobi_rows`) turns it into singular
    triplets.  The cost is linear in the block's size for a fixed shorter side (the
    one-SVD-per-block kernel it replaces spent most of its time in LAPACK's per-call
    overhead and full decompositions: 3-6x slower on noisy low-rank blocks).  LAPACK
    is called only for blocks whose subspace iteration is slow (flat spectra, pure
    noise), on the small ``p × p`` Gram matrix (`_top_subspace`), so the
    ``parallel=True`` build makes few, small LAPACK calls from its threads.
    """
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    c2 = big_c // c1
    transposed = b1 > c2
    p = c2 if transposed else b1
    q = b1 if transposed else c2
    n_batches = (d + batch - 1) // batch
    n_tasks = a * b2 * c1 * n_batches
    for chunk in prange(n_chunks):
        panel = np.empty((batch, p, q), dtype=work.dtype)
        G = np.empty((p, p), dtype=work.dtype)
        Q = np.empty((rank, p), dtype=work.dtype)
        Z = np.empty((rank, p), dtype=work.dtype)
        V = np.empty((rank, q), dtype=work.dtype)
        Y = np.empty((rank, p), dtype=work.dtype)
        diag = np.empty(p)
        sigma = np.empty(rank)
        order = np.empty(rank, dtype=np.int64)
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            t_first = (task % n_batches) * batch
            t_count = min(batch, d - t_first)
            group = task // n_batches
            k1 = group % c1
            j2 = (group // c1) % b2
            i = group // (c1 * b2)
            # (b1 rows of the node) × (C2 gathered columns) × (t_count contiguous t)
            for j1 in range(b1):
                row = j1 * b2 + j2
                for k2 in range(c2):
                    column = columns[k1 * c2 + k2]
                    for tt in range(t_count):
                        value = node[i, row, column, t_first + tt]
                        if transposed:
                            panel[tt, k2, j1] = np.conj(value)
                        else:
                            panel[tt, j1, k2] = value
            for tt in range(t_count):
                t = t_first + tt
                A = panel[tt]
                exponent = _gather_scale(A, p, q)
                if exponent == NOT_FINITE or exponent == EMPTY:
                    bad += exponent == NOT_FINITE  # reported by the caller
                    for rho in range(rank):
                        for j1 in range(b1):
                            left[i, j1, k1 * rank + rho, j2 * d + t] = 0.0
                        for k2 in range(c2):
                            right[i * c1 + k1, rho * b2 + j2, k2, t] = 0.0
                    continue
                norm2 = _gram(A, p, q, G)
                _top_subspace(G, p, rank, norm2, Q, Z, diag, tol)
                _refine(A, p, q, Q, rank, V, Y)
                _jacobi_rows(Y, p, V, q, rank, sigma)
                captured = 0.0
                for rho in range(rank):
                    captured += sigma[rho] * sigma[rho]
                    order[rho] = rho
                residual2 = max(norm2 - captured, 0.0)
                if residual2 < CANCELLATION * norm2:
                    residual2 = _low_rank_residual2(A, p, q, Y, V, rank)
                norm2_sum, residual2_sum, exponent_sum = _accumulate(
                    norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
                # singular values in decreasing order (insertion sort of r indices)
                for rho in range(1, rank):
                    current = order[rho]
                    position = rho
                    while position > 0 and sigma[order[position - 1]] < sigma[current]:
                        order[position] = order[position - 1]
                        position -= 1
                    order[position] = current
                for rr in range(rank):
                    rho = order[rr]
                    s = sigma[rho]
                    column = k1 * rank + rr
                    right_row = rr * b2 + j2
                    if s == 0.0:
                        for j1 in range(b1):
                            left[i, j1, column, j2 * d + t] = 0.0
                        for k2 in range(c2):
                            right[i * c1 + k1, right_row, k2, t] = 0.0
                        continue
                    # σ = 2**exponent · s in true units; y_ρ = s u_ρ (scaled units)
                    true_sigma = math.ldexp(s, exponent)
                    left_scale = true_sigma ** sigma_power
                    right_scale = true_sigma ** (1.0 - sigma_power)
                    if transposed:  # M = Aᴴ ≈ Σ v_ρ y_ρᴴ: u = v_ρ, vᴴ = y_ρᴴ / s
                        for j1 in range(b1):
                            left[i, j1, column, j2 * d + t] = V[rho, j1] * left_scale
                        right_scale /= s
                        for k2 in range(c2):
                            right[i * c1 + k1, right_row, k2, t] = np.conj(Y[rho, k2]) * right_scale
                    else:  # M = A ≈ Σ y_ρ v_ρᴴ: u = y_ρ / s, vᴴ = v_ρᴴ
                        left_scale /= s
                        for j1 in range(b1):
                            left[i, j1, column, j2 * d + t] = Y[rho, j1] * left_scale
                        for k2 in range(c2):
                            right[i * c1 + k1, right_row, k2, t] = np.conj(V[rho, k2]) * right_scale
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


split_rank_r_serial = _jit(_split_rank_r_py, "_serial")
split_rank_r_parallel = _jit(_split_rank_r_py, "_parallel", parallel=True)


# No fastmath anywhere in the split kernels, although reassociation would vectorise their
# sums (~15% faster): inlined into a kernel it reaches `_gather_scale`, whose two-step
# scaling then overflows for subnormal blocks, and on the helpers alone freshly compiled
# and cached code round differently (tests/test_threads.py: bitwise-identical results).
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
# ``d`` apart.  Products, bound by complex arithmetic and loop overhead, run faster on
# a derived copy of the values in *pair order* (DFT N = 4096 complex128, one vector:
# 124 µs per product with the general driver, 78 µs with these loops, 52 µs once they
# are compiled with the SLP vectoriser, see `_SuperwordKernel`): for a factor
# ``(a, 2, 2, d)`` used at one step,
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

    def __call__(self, packed, *arguments):
        if packed.dtype not in self._compiled and hasattr(self._dispatcher, "compile"):
            self._compile(packed, *arguments)
        self._dispatcher(packed, *arguments)

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
