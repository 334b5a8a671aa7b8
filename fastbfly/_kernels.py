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
    if exponent == total_exponent:  # (the usual case, unscaled blocks: no ldexp calls)
        return total_norm2 + norm2, total_residual2 + residual2, total_exponent
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
def _gram_vector_2(p, s, q):
    """Unit top eigenvector ``(x0, x1)`` of the 2 × 2 Gram matrix ``[[p, q], [q̄, s]]``."""
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
    return x0 / norm, x1 / norm


@_kernel()
def _top_left_vector_2(M, rows, cols, u, v):
    """Top left singular vector ``u`` of a block with ``min(rows, cols) == 2``, in closed
    form from the 2 × 2 Gram matrix of its smaller side (``v`` is workspace)."""
    by_rows = rows == 2
    # G = M Mᴴ (rows == 2) or Mᴴ M (cols == 2) = [[p, q], [q̄, s]], in the precision of
    # ``u`` (adding ``zero`` widens float32 data exactly: its squares cannot underflow).
    u[0] = 0.0  # (u may hold garbage, NaN included: not u[0] * 0.0)
    zero = u[0]
    p = 0.0
    s = 0.0
    q = zero
    if by_rows:
        for k in range(cols):
            x0 = zero + M[0, k]
            x1 = zero + M[1, k]
            p += _abs2(x0)
            s += _abs2(x1)
            q += x0 * np.conj(x1)
    else:
        for j in range(rows):
            x0 = zero + M[j, 0]
            x1 = zero + M[j, 1]
            p += _abs2(x0)
            s += _abs2(x1)
            q += np.conj(x0) * x1
    x0, x1 = _gram_vector_2(p, s, q)
    target = u if by_rows else v
    target[0] = x0
    target[1] = x1
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


# Blocks whose ‖M‖² (summed in float64 as gathered) is within [SAFE_NORM2_LOW,
# SAFE_NORM2_HIGH] are solved as they are, without `_gather_scale`'s pass that rewrites
# the block: no square overflowed, squares that underflowed are below 2**-770 of ‖M‖²,
# and the closed 2 × 2 forms, which square ‖M‖², stay 2**-200 away from subnormals.
# Others (huge, tiny, empty, NaN/Inf) are rescaled first.
SAFE_NORM2_LOW = 2.0 ** -300
SAFE_NORM2_HIGH = 2.0 ** 300
# The same for single-precision data, whose blocks of three rows and columns or more take
# their first power step in single precision (`_top_pair`): below 2**-100 products of a block's entries with unit
# vectors could near float32's subnormals (2**-126), above 2**100 its largest (2**128).
SAFE_NORM2_LOW_SINGLE = 2.0 ** -100
SAFE_NORM2_HIGH_SINGLE = 2.0 ** 100


@_kernel(inline="always")
def _square(z):
    """``|z|²`` in float64 (squares of float32 data neither round nor underflow)."""
    re = np.float64(z.real)
    im = np.float64(z.imag)
    return re * re + im * im


@_kernel()
def _gather_rows(node, columns, positions, groups, in_order, i, j2, t, b1, b2, c2, k1_first,
                 k1_count, panel, column_norm2, staged, stage):
    """``panel[kk, j1, positions[k1*c2 + s]] = node[i, j1*b2 + j2, columns[k1*c2 + s], t]``
    for the column groups ``k1 = groups[k1_first + kk]``, and ``column_norm2[kk, k2]`` =
    squared norm of column ``k2`` of block ``kk`` (float64): the block's norms come with
    the copy instead of in passes of their own.  Column norms, not row norms: summed
    down the rows, each is an element-wise update along the row, which vectorises
    (exactly: no sum is reordered) where a row's sum would be a reduction, scalar
    without reassociation.

    Without ``stage``, four rows at a time: a block's rows are ``b2`` node rows apart,
    so each read of a row starts cold, and four interleaved streams keep four times as
    many cache misses in flight (Hadamard N = 8192 root, float64: 112 -> 63 ms for the
    gathers alone).  The column norms are still summed row after row, so the bits do not
    depend on the grouping.  With ``in_order`` (``columns`` is the identity) the reads
    are plain runs.  A permutation comes sorted within each group, with ``positions``
    the columns' places in their block and ``groups`` visiting the groups in the order
    of their first column (`_sorted_gather`): the reads are monotone, consecutive
    blocks read neighbouring entries of the lines the previous one loaded, and the
    panel is the same as in the given order.

    With ``stage`` (a permutation of a node with ``d == 1``, ``columns`` in the given
    order) each row is first copied whole into ``staged[0]``, a sequential read the
    hardware prefetches, and then permuted from there (L2): permuting straight from
    memory misses on the first touch of every cache line."""
    for kk in range(k1_count):
        for k2 in range(c2):
            column_norm2[kk, k2] = 0.0
    j1 = 0
    if not stage:
        while j1 + 4 <= b1:
            row0 = j1 * b2 + j2
            row1 = row0 + b2
            row2 = row1 + b2
            row3 = row2 + b2
            for kk in range(k1_count):
                first_column = groups[k1_first + kk] * c2
                target0 = panel[kk, j1]
                target1 = panel[kk, j1 + 1]
                target2 = panel[kk, j1 + 2]
                target3 = panel[kk, j1 + 3]
                norms = column_norm2[kk]
                if in_order:
                    for k2 in range(c2):
                        x0 = node[i, row0, first_column + k2, t]
                        x1 = node[i, row1, first_column + k2, t]
                        x2 = node[i, row2, first_column + k2, t]
                        x3 = node[i, row3, first_column + k2, t]
                        target0[k2] = x0
                        target1[k2] = x1
                        target2[k2] = x2
                        target3[k2] = x3
                        norms[k2] = (((norms[k2] + _square(x0)) + _square(x1)) + _square(x2)) + _square(x3)
                else:
                    for s in range(c2):
                        column = columns[first_column + s]
                        k2 = positions[first_column + s]
                        x0 = node[i, row0, column, t]
                        x1 = node[i, row1, column, t]
                        x2 = node[i, row2, column, t]
                        x3 = node[i, row3, column, t]
                        target0[k2] = x0
                        target1[k2] = x1
                        target2[k2] = x2
                        target3[k2] = x3
                        norms[k2] = (((norms[k2] + _square(x0)) + _square(x1)) + _square(x2)) + _square(x3)
            j1 += 4
    while j1 < b1:
        row = j1 * b2 + j2
        if stage:
            source = staged[0]
            for k in range(source.shape[0]):
                source[k] = node[i, row, k, 0]
        for kk in range(k1_count):
            first_column = groups[k1_first + kk] * c2
            target = panel[kk, j1]
            norms = column_norm2[kk]
            if stage:
                for k2 in range(c2):
                    x = staged[0, columns[first_column + k2]]
                    target[k2] = x
                    norms[k2] += _square(x)
            elif in_order:
                for k2 in range(c2):
                    x = node[i, row, first_column + k2, t]
                    target[k2] = x
                    norms[k2] += _square(x)
            else:
                for s in range(c2):
                    k2 = positions[first_column + s]
                    x = node[i, row, columns[first_column + s], t]
                    target[k2] = x
                    norms[k2] += _square(x)
        j1 += 1


@_kernel()
def _power_step(M, rows, cols, v, u, w):
    """``u = M v`` and ``w = Mᴴ u`` in one pass over ``M`` (each row is used twice while
    it is in L1); returns ``‖u‖²`` (float64).  The dot products use four partial sums in
    a fixed order (not latency bound, and the same bits in every build)."""
    w[0] = 0.0  # a zero of its type
    zero = w[0]
    for k in range(cols):
        w[k] = zero
    norm2 = 0.0
    for j in range(rows):
        a0 = zero
        a1 = zero
        a2 = zero
        a3 = zero
        k = 0
        while k + 4 <= cols:
            a0 += M[j, k] * v[k]
            a1 += M[j, k + 1] * v[k + 1]
            a2 += M[j, k + 2] * v[k + 2]
            a3 += M[j, k + 3] * v[k + 3]
            k += 4
        while k < cols:
            a0 += M[j, k] * v[k]
            k += 1
        acc = (a0 + a1) + (a2 + a3)
        u[j] = acc
        norm2 += _square(acc)
        for k in range(cols):
            w[k] += np.conj(M[j, k]) * acc
    return norm2


@_kernel()
def _adjoint_rows(M, rows, cols, u, w):
    """``w = Mᴴ u``, row by row as element-wise updates of ``w`` (vectorises); returns
    ``‖w‖²`` in float64."""
    w[0] = 0.0  # a zero of its type
    zero = w[0]
    for k in range(cols):
        w[k] = zero
    for j in range(rows):
        coefficient = u[j]
        for k in range(cols):
            w[k] += np.conj(M[j, k]) * coefficient
    norm2 = 0.0
    for k in range(cols):
        norm2 += _square(w[k])
    return norm2


# Power steps after which `_top_pair` restarts from the Gram matrix of the block's shorter
# side (``p × p``, ``p = min(rows, cols)``) and its top eigenvector (LAPACK ``eigh``):
# forming it costs about ``p / 3`` passes over the block (measured: 5.4 passes for
# 192 x 16), the eigensolver little next to that for ``p <= 64``.  Only noise-like
# blocks, whose top singular values nearly tie, get there: random 192 x 16 blocks took
# 127 ms for 768 of them with power steps alone (some hundreds each).
GRAM_STEPS_BASE = 2
# Only blocks with a shorter side of at most GRAM_MAX_SIDE and at most GRAM_MAX_VALUES
# values get the continuation: its workspace per task (three ``p × p`` matrices, a
# widened copy of the block and, for complex data, its conjugate) stays below 3 MB,
# where a one-block chain (a rank-one
# approximation of the whole matrix, ``[(1, m, 1, 1), (1, 1, n, 1)]``) would otherwise
# allocate ``3 min(m, n)²`` values.
GRAM_MAX_SIDE = 128
GRAM_MAX_VALUES = 1 << 16


@_kernel()
def _gram_shorter(M, rows, cols, G, widened, conjugated):
    """``G`` = the Gram matrix of the shorter side of ``M``: ``M Mᴴ`` (``rows × rows``)
    for wide blocks, ``Mᴴ M`` (``cols × cols``) for tall ones and square, in the
    precision of ``G`` (float32 products are exact in float64); exactly Hermitian.

    ``M`` is first copied into ``widened`` (``rows × cols``, ``G``'s type) and, for
    complex data, its conjugate into ``conjugated``, so that the product runs through
    BLAS from `BLAS_MIN_WORK` (the same dtype on both sides): measured for a float32
    48 x 64 block, 69 µs as loops of widened dot products.
    """
    for j in range(rows):
        for k in range(cols):
            widened[j, k] = M[j, k]
    if conjugated.shape[0] == 0:  # real data: its own conjugate
        conjugated = widened
    else:
        for j in range(rows):
            for k in range(cols):
                conjugated[j, k] = np.conj(widened[j, k])
    if rows < cols:
        _times_transpose(widened, conjugated, G)  # G[j, l] = Σ_k M[j, k] conj(M[l, k])
        p = rows
    else:
        # G[k, l] = Σ_j conj(M[j, k]) M[j, l]: row updates below BLAS_MIN_WORK
        p = cols
        if rows * cols * cols >= BLAS_MIN_WORK:
            np.dot(conjugated.T, widened, G)
        else:
            for k in range(cols):
                for l in range(cols):
                    G[k, l] = 0.0
            for j in range(rows):
                for k in range(cols):
                    x = conjugated[j, k]
                    for l in range(cols):
                        G[k, l] += x * widened[j, l]
    for k in range(p):  # the two triangles' rounding may differ: keep one
        for l in range(k):
            G[l, k] = np.conj(G[k, l])
        G[k, k] = G[k, k].real


# `_gram_power` iterates with ``H = (G / trace G)^(2**GRAM_SQUARINGS)``: every product
# with ``H`` is that many steps (the squarings cost ``GRAM_SQUARINGS p³``, through BLAS
# from `BLAS_MIN_WORK`), while ``σ²`` is still measured with ``G``.  Noise-like blocks
# need about 100 steps (48 x 64 Gaussian blocks: mean 109, median 86, some 500).
GRAM_SQUARINGS = 3


@_kernel()
def _hermitian_times(A, p, x, y):
    """``y = A x`` for a Hermitian ``A`` (``p × p``): ``(A x)_k = Σ_l x_l conj(A[l, k])``,
    row updates that vectorise.  Returns ``‖y‖²``."""
    for k in range(p):
        y[k] = 0.0
    for l in range(p):
        coefficient = x[l]
        row = A[l]
        for k in range(p):
            y[k] += coefficient * np.conj(row[k])
    length2 = 0.0
    for k in range(p):
        length2 += _abs2(y[k])
    return length2


@_kernel()
def _gram_sigma2(G, p, x, y, tall):
    """The block's ``σ²`` for the unit vector ``x`` of the shorter side (see
    `_gram_power`), ``y = G x`` (workspace); -1 if ``x`` is in ``G``'s null space."""
    length2 = _hermitian_times(G, p, x, y)
    rayleigh = 0.0
    for k in range(p):
        rayleigh += (np.conj(x[k]) * y[k]).real
    if not rayleigh > 0.0:
        return -1.0
    return length2 / rayleigh if tall else rayleigh


@_kernel()
def _gram_power(gram, p, x, y, tall, norm2, sigma2, tol):
    """`_top_pair`'s power iteration continued on the Gram matrix ``G = gram[0]``
    (``p × p``) of the block's shorter side (`_gram_shorter`), from ``x`` (a nonzero
    vector of the shorter side); returns the last ``σ²`` estimate, that of the unit
    vector left in ``x``.  ``gram[1]``, ``gram[2]`` and ``y`` (``p``) are workspace.

    Each step multiplies ``x`` by ``H = (G / trace G)^(2**GRAM_SQUARINGS)`` (same
    eigenvectors, gaps widened; the traces keep its entries at most 1) and measures
    ``σ²`` as the block's step would give it (`_gram_sigma2`): for a wide block
    (``G = M Mᴴ``, ``x = u``) ``‖Mᴴ u‖² = xᴴ G x``, for a tall one (``G = Mᴴ M``,
    ``x = v``) ``‖Mᴴ u‖²`` with ``u = M v / ‖M v‖``, i.e. ``‖G x‖² / xᴴ G x``.  The
    stopping rules are `_top_pair`'s (``sigma2``: the block's last ``σ²``); the
    geometric tail holds for any number of steps per product.

    The iteration starts from the better (larger ``σ²``) of ``H x`` and ``H``'s column
    of largest diagonal: where the block's own start (its largest column) is nearly
    orthogonal to the top singular vector, ``H x`` grows that component from rounding
    level and the stopping rules can take the slow start for convergence (measured: a
    40 x 6 Gaussian block stopped at 0.83 σ₁²), whereas
    ``H[j, j] = Σ_i λ_i^(2**s) |q_i[j]|²`` is largest where the top eigenvector
    ``q_1`` is not small.
    """
    G = gram[0]
    H = gram[1]
    T = gram[2]
    trace = 0.0
    for k in range(p):
        trace += G[k, k].real
    inv = 1.0 / trace
    for k in range(p):
        for l in range(p):
            H[k, l] = G[k, l] * inv
    for _ in range(GRAM_SQUARINGS):
        _times_plain(H, H, T)
        trace = 0.0
        for k in range(p):
            trace += T[k, k].real
        if not trace > 0.0:  # underflow (cannot happen for a nonzero block's G)
            break
        inv = 1.0 / trace
        for k in range(p):
            for l in range(p):
                H[k, l] = T[k, l] * inv
    # the two starts, in rows 0 and 1 of T (free now)
    first = T[0]
    second = T[1]
    length2 = _hermitian_times(H, p, x, first)
    pivot = 0
    for k in range(1, p):
        if H[k, k].real > H[pivot, pivot].real:
            pivot = k
    for k in range(p):
        second[k] = np.conj(H[pivot, k])  # column ``pivot``
    second_length2 = 0.0
    for k in range(p):
        second_length2 += _abs2(second[k])
    best = -1.0
    for candidate in range(2):
        vector = first if candidate == 0 else second
        size2 = length2 if candidate == 0 else second_length2
        if not size2 > 0.0:
            continue
        inv = 1.0 / math.sqrt(size2)
        for k in range(p):
            vector[k] *= inv
        candidate_sigma2 = _gram_sigma2(G, p, vector, y, tall)
        if candidate_sigma2 > best:
            best = candidate_sigma2
            for k in range(p):
                x[k] = vector[k]
    if best < 0.0:  # both in G's null space (cannot happen for a nonzero block)
        return sigma2
    sigma2_old = sigma2
    increase_old = 0.0
    sigma2 = best
    for _ in range(MAX_POWER_STEPS):
        error2 = norm2 - sigma2
        increase = sigma2 - sigma2_old
        if error2 <= 8.0 * tol * norm2 or increase <= tol * sigma2:
            return sigma2
        if increase_old > 0.0 and increase < increase_old:
            ratio = increase / increase_old
            if increase * ratio / (1.0 - ratio) <= RESIDUAL_TOL * error2:
                return sigma2
        sigma2_old = sigma2
        increase_old = increase
        # x = H x / ‖H x‖, through y
        length2 = _hermitian_times(H, p, x, y)
        if not length2 > 0.0:
            return sigma2_old
        inv = 1.0 / math.sqrt(length2)
        for k in range(p):
            x[k] = y[k] * inv
        sigma2 = _gram_sigma2(G, p, x, y, tall)
        if sigma2 < 0.0:
            return sigma2_old
    return sigma2


@_kernel()
def _top_pair(M, rows, cols, column_norm2, norm2, block_u, block_w, u, v, w, sums, G,
              widened, conjugated, tol, block_tol):
    """Top singular pair of a block with ``rows, cols >= 3``: unit ``u`` and
    ``w = Mᴴ u`` (in the precision of ``u``, ``v``, ``w``); returns ``(σ² = ‖w‖²,
    direct)``, ``direct`` the residual ``‖M − u wᴴ‖²`` where it was computed
    (`_residual2_columns`), else -1.

    Power iteration on ``M Mᴴ`` started from the largest column (``u = M e_k``, exact
    for a rank-one block), so the first step is the one product ``Mᴴ u``, which
    vectorises (`_adjoint_rows`), done in the data's precision (``block_u``,
    ``block_w``: twice as wide in single precision).  The error of the rank-one
    approximation ``u (Mᴴu)ᴴ`` is ``‖M‖² − σ²``, so only ``σ²`` has to converge, and only
    as far as that error can tell: the iteration stops when the error is at rounding
    level (``block_tol``: in single precision ``σ²`` resolves it only down to a relative
    residual of ``√block_tol ≈ 1e-3``, so there a small error is confirmed by the direct
    residual, at rounding level ``block_tol²``), when ``σ²`` stalls at rounding level,
    or when the geometric tail of the remaining increase of ``σ²`` is below
    ``RESIDUAL_TOL`` times the error (noisy, slowly converging blocks).  Later steps
    are one pass each (`_power_step`) in the precision of ``u`` (double): in single
    precision ``σ²`` would stall at its rounding level (1e-7) near a lower singular
    value before a start nearly orthogonal to the top one is left behind.

    Blocks still iterating after ``GRAM_STEPS_BASE + min(rows, cols) // 4`` steps (and
    given a workspace ``G``: not blocks above `GRAM_MAX_SIDE`, `GRAM_MAX_VALUES`) go on
    on the Gram matrix of the block's shorter side (``G``: workspace of
    ``(3, min(rows, cols), min(rows, cols))``, ``widened`` and ``conjugated`` of
    `_gram_shorter`; `_gram_power`), until the stopping rules hold there, then the
    vector is confirmed by steps on the block itself under the same rules.
    """
    best = 0
    for k in range(1, cols):
        if column_norm2[k] > column_norm2[best]:
            best = k
    inv = 1.0 / math.sqrt(column_norm2[best])
    for j in range(rows):
        block_u[j] = M[j, best] * inv
    sigma2 = _adjoint_rows(M, rows, cols, block_u, block_w)
    for j in range(rows):
        u[j] = block_u[j]
    for k in range(cols):
        w[k] = block_w[k]
    if norm2 - sigma2 <= 8.0 * block_tol * norm2:
        if block_tol == tol:  # vectors in double precision: σ² tells
            return sigma2, -1.0
        direct = _residual2_columns(M, rows, cols, block_u, block_w, sums)
        if direct <= 8.0 * block_tol * block_tol * norm2:
            return sigma2, direct
    if block_tol != tol:
        # u renormalised and σ² again in double precision: their single-precision
        # rounding (1e-7) would read as a stall against the next step's σ²
        length2 = 0.0
        for j in range(rows):
            length2 += _square(u[j])
        inv = 1.0 / math.sqrt(length2)
        for j in range(rows):
            u[j] *= inv
        sigma2 = _adjoint_rows(M, rows, cols, u, w)
    sigma2_old = 0.0
    increase_old = 0.0
    shorter = min(rows, cols)
    # (no Gram workspace: blocks too large for it, see `GRAM_MAX_SIDE`)
    budget = GRAM_STEPS_BASE + shorter // 4 if G.shape[1] >= shorter else MAX_POWER_STEPS
    for step in range(MAX_POWER_STEPS):
        error2 = norm2 - sigma2
        increase = sigma2 - sigma2_old
        if error2 <= 8.0 * tol * norm2 or increase <= tol * sigma2:
            return sigma2, -1.0
        if increase_old > 0.0 and increase < increase_old:
            ratio = increase / increase_old
            if increase * ratio / (1.0 - ratio) <= RESIDUAL_TOL * error2:
                return sigma2, -1.0
        sigma2_old = sigma2
        increase_old = increase
        if step == budget:
            # Slow convergence (a flat top of the spectrum: noise-like blocks): the same
            # iteration goes on, on the shorter side's Gram matrix (`GRAM_STEPS_BASE`),
            # and the steps below confirm its vector on the block.  The ratio test
            # restarts (the jump of σ² is no geometric tail).
            increase_old = 0.0
            # (σ²'s last estimate there is what the block's next σ² is tested against)
            if rows < cols:  # G = M Mᴴ, iterated on u; w = Mᴴ u from the block
                _gram_shorter(M, rows, cols, G[0], widened, conjugated)
                sigma2_old = _gram_power(G, rows, u, v, False, norm2, sigma2, tol)
                sigma2 = _adjoint_rows(M, rows, cols, u, w)
                continue
            _gram_shorter(M, rows, cols, G[0], widened, conjugated)  # G = Mᴴ M, on v
            inv = 1.0 / math.sqrt(sigma2)
            for k in range(cols):
                v[k] = w[k] * inv
            sigma2_old = _gram_power(G, cols, v, w, True, norm2, sigma2, tol)
        else:
            inv = 1.0 / math.sqrt(sigma2)
            for k in range(cols):
                v[k] = w[k] * inv
        inv = 1.0 / math.sqrt(_power_step(M, rows, cols, v, u, w))
        for j in range(rows):
            u[j] *= inv
        sigma2 = 0.0
        for k in range(cols):
            w[k] *= inv
            sigma2 += _square(w[k])
    return sigma2, -1.0


@_kernel()
def _residual2_columns(M, rows, cols, u, w, sums):
    """``‖M − u wᴴ‖²`` computed directly (accurate when it is tiny, unlike
    ``‖M‖² − ‖w‖²``), squares in float64.  Summed down the columns into ``sums`` (float64
    workspace of ``cols``), element-wise updates that vectorise, then across."""
    for k in range(cols):
        sums[k] = 0.0
    for j in range(rows):
        uj = u[j]
        for k in range(cols):
            sums[k] += _square(M[j, k] - uj * np.conj(w[k]))
    total = 0.0
    for k in range(cols):
        total += sums[k]
    return total


@_kernel()
def _gather_two_rows(node, columns, positions, groups, in_order, i, j2, t, b2, c2, k1_first,
                     k1_count, panel, row_norm2, cross, staged, stage):
    """`_gather_rows` for two rows per block (``b1 == 2``), which also sums the off
    diagonal ``cross[kk] = Σ_k M[0, k] conj(M[1, k])`` of each block's Gram matrix, in
    the precision of ``cross``: the closed 2 × 2 form then needs no pass of its own.
    (A sorted permutation without ``stage``: the sums are taken from the panel, in the
    block's own column order, so their bits do not depend on the read order.)"""
    cross[0] = 0.0  # a zero of its type (cross may hold garbage, NaN included)
    zero = cross[0]
    row0 = j2
    row1 = b2 + j2
    if stage:  # see `_gather_rows`
        for k in range(staged.shape[1]):
            staged[0, k] = node[i, row0, k, 0]
            staged[1, k] = node[i, row1, k, 0]
    sorted_reads = not stage and not in_order
    for kk in range(k1_count):
        first_column = groups[k1_first + kk] * c2
        if sorted_reads:
            for slot in range(c2):
                column = columns[first_column + slot]
                k2 = positions[first_column + slot]
                panel[kk, 0, k2] = node[i, row0, column, t]
                panel[kk, 1, k2] = node[i, row1, column, t]
        p = 0.0
        s = 0.0
        q = zero
        for k2 in range(c2):
            if sorted_reads:
                x0 = panel[kk, 0, k2]
                x1 = panel[kk, 1, k2]
            else:
                column = columns[first_column + k2]
                if stage:
                    x0 = staged[0, column]
                    x1 = staged[1, column]
                else:
                    x0 = node[i, row0, column, t]
                    x1 = node[i, row1, column, t]
                panel[kk, 0, k2] = x0
                panel[kk, 1, k2] = x1
            y0 = zero + x0
            y1 = zero + x1
            p += _abs2(y0)
            s += _abs2(y1)
            q += y0 * np.conj(y1)
        row_norm2[kk, 0] = p
        row_norm2[kk, 1] = s
        cross[kk] = q


@_kernel()
def _two_rows_pair(M, cols, u, w):
    """For a 2-row block and its unit top left vector ``u``: ``w = Mᴴ u`` and the
    residual ``‖M − u wᴴ‖² = ‖u⊥ᴴ M‖²`` (``u⊥ = (−ū₁, ū₀)``, the unit vector orthogonal
    to ``u``), computed directly, so accurate when tiny, and column by column in the same
    pass.  Returns ``(σ² = ‖w‖², residual²)``."""
    u0 = u[0]
    u1 = u[1]
    c0 = np.conj(u0)
    c1 = np.conj(u1)
    sigma2 = 0.0
    residual2 = 0.0
    for k in range(cols):
        m0 = M[0, k]
        m1 = M[1, k]
        wk = np.conj(m0 * c0 + m1 * c1)
        w[k] = wk
        sigma2 += _abs2(wk)
        residual2 += _abs2(u0 * m1 - u1 * m0)
    return sigma2, residual2


@_kernel()
def scan(bits, mask):
    """One pass over the flat bit patterns ``bits`` (uint64 or uint32) of a matrix's
    real parts: ``(largest, checksum)`` with

    * ``largest`` = the largest ``bits[k] & mask`` (``mask`` clears the sign bit): IEEE
      magnitudes order like their bit patterns, NaN above Inf, so this is the bit
      pattern of the largest ``|x|`` (or of a NaN), for `factorize`'s scale check;
    * ``checksum`` = ``Σ_k bits[k] · (2k + 1) mod 2**64``, the fingerprint of a deferred
      error measurement: any change of one entry changes it (``2k + 1`` is odd, so
      invertible modulo ``2**64``), and so does moving entries unless their bit
      patterns and positions differ by multiples of large powers of two.

    Integer maxima and sums are associative, so the loop vectorises without fast-math
    (the running odd multiplier and an index from 0 keep Numba's wraparound test out of
    it): 9 ms for 2**25 words, as fast as two threads (memory-bound).
    """
    largest = mask ^ mask  # a zero of the bits' type
    total = np.uint64(0)
    odd = np.uint64(1)
    two = np.uint64(2)
    for k in range(bits.shape[0]):
        word = bits[k]
        largest = max(largest, word & mask)
        total += np.uint64(word) * odd
        odd += two
    return largest, total


def _pick_threading_layer_py(out):
    """A parallel loop that does nothing useful: the first one a process runs makes
    Numba choose its threading layer (see `fastbfly.factorization._candidate_workers`)."""
    for k in prange(out.shape[0]):
        out[k] = k


pick_threading_layer = _jit(_pick_threading_layer_py, "_parallel", parallel=True)


@_kernel()
def _sorted_gather(columns, c1, c2):
    """A column gather with every group's columns in increasing order: ``(ordered,
    positions, groups)`` with ``ordered[k1*c2 + s]`` the ``s``-th smallest of group
    ``k1``'s columns ``columns[k1*c2:(k1 + 1)*c2]``, ``positions[k1*c2 + s]`` its place
    ``k2`` in the group, and ``groups`` the groups in the order of their smallest
    column (both sorts stable).

    `_gather_rows` reads in this order and stores each entry at its place in the block
    (``positions``): the panel is the one of the given order (so are the results, to
    the bit), but the reads of a permutation become monotone, and consecutive blocks
    read neighbouring entries (for the bit reversal each group's sorted columns are an
    arithmetic progression of step ``c1``, and the groups' offsets ``0, 1, 2, ...``
    come in turn).
    """
    big_c = c1 * c2
    ordered = np.empty(big_c, dtype=np.int64)
    positions = np.empty(big_c, dtype=np.int64)
    firsts = np.empty(c1, dtype=np.int64)
    for k1 in range(c1):
        group = columns[k1 * c2:(k1 + 1) * c2]
        order = np.argsort(group, kind="mergesort")
        for s in range(c2):
            positions[k1 * c2 + s] = order[s]
            ordered[k1 * c2 + s] = group[order[s]]
        firsts[k1] = ordered[k1 * c2]
    groups = np.empty(c1, dtype=np.int64)
    groups[:] = np.argsort(firsts, kind="mergesort")
    return ordered, positions, groups


@_kernel(inline="always")
def _split_scales(sigma, exponent, sigma_power):
    """``(σ'**p, σ'**(1-p) / σ)`` with ``σ' = 2**exponent σ`` and ``p = sigma_power``:
    the scales of a block's left and right vectors.  The powers 1 and 0 that
    orthonormalised factorizations use are taken without ``pow``, which cost tens of
    nanoseconds a block, a third of the time of a 2 × 2 block (same bits)."""
    true_sigma = sigma if exponent == 0 else math.ldexp(sigma, exponent)
    if sigma_power == 1.0:
        return true_sigma, 1.0 / sigma
    if sigma_power == 0.0:
        return 1.0, true_sigma / sigma
    return true_sigma ** sigma_power, true_sigma ** (1.0 - sigma_power) / sigma


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
        ``work``'s dtype; a single-precision first step uses ``8 eps`` of the data's).
    work : (1,) array
        Its dtype (float64 or complex128) is the precision of the singular vectors, so
        float32 data gets float64 iterations, except the first power step of blocks of
        three rows and columns or more, in the data's precision (`_top_pair`).
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
    ``right[i*c1 + k1, j2, k2, t]`` (``vᴴ``).  Unless rows are staged, a permutation's
    columns are read in increasing order within each block and the groups visited in
    the order of their first column (`_sorted_gather`); the panel holds each block in
    its own column order all the same.

    The blocks sharing ``(i, j2, t)`` read the same ``b1`` rows of the node, so they are
    processed together: those rows are gathered once, ``batch`` column groups at a time,
    into a contiguous panel (with ``t`` fastest between tasks, neighbouring tasks share
    cache lines).  Reading whole rows keeps a scattered column permutation cache
    friendly instead of touching one cache line per entry; with a permutation, ``d == 1``
    and one batch, each row is first copied whole (`_gather_rows`).

    Passes over each block (they are what costs, not the arithmetic): the gather also
    sums the column norms (and, for 2-row blocks, the row norms and the Gram matrix);
    blocks whose norm is in a safe range (`SAFE_NORM2_LOW`, `SAFE_NORM2_LOW_SINGLE`)
    are solved unscaled; the first power step, from the largest column, is the one
    product ``w = Mᴴu``, each later step one pass (`_power_step`) leaving ``w``; the
    direct residual, needed only where ``‖M‖² − σ²`` cancels, is one more pass (for
    2-row blocks it comes with ``w``, `_two_rows_pair`).  At the balanced root of a
    rank-one DFT that is the gather and two passes, all element-wise updates along the
    block's rows, which vectorise (`_gather_rows`, `_adjoint_rows`,
    `_residual2_columns`), in single precision twice as wide.

    Noise-like blocks, whose top singular values nearly tie, would need a hundred power
    steps or more (passes over the block): after ``GRAM_STEPS_BASE + min(b1, C2) // 4``
    steps the iteration goes on on the Gram matrix of the block's shorter side (one
    BLAS product), with powers of it (`_gram_power`), and is confirmed on the block.
    768 x 3072 float32 random weights, 3 factors (768 blocks 192 x 16 at the root):
    160 -> 27-32 ms; 2 and 4 factors (48 x 64 blocks): 116 -> 43 ms, 134 -> 55 ms; the
    blocks' residuals closer to the SVD's (1e-10 relative, from up to 3e-7).
    """
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    c2 = big_c // c1
    n_batches = (c1 + batch - 1) // batch
    n_tasks = a * b2 * d * n_batches
    # Rows are staged (see `_gather_rows`) when the columns are permuted and whole rows
    # are read (every batch: so each row is copied once).
    stage = d == 1 and n_batches == 1
    if stage:
        stage = False
        for k in range(big_c):
            if columns[k] != k:
                stage = True
                break
    in_order = True
    for k in range(big_c):
        in_order = in_order and columns[k] == k
    if in_order or stage:
        ordered = np.empty(big_c, dtype=np.int64)
        ordered[:] = columns
        positions = np.arange(big_c) % c2
        groups = np.arange(c1)
    else:
        ordered, positions, groups = _sorted_gather(columns, c1, c2)
    # Each batch's blocks are solved (and their norms summed) in increasing k1 whatever
    # order they were gathered in: with one batch the sums have the bits of the given
    # order.  solve_order[k1_first + solved] is the panel index of the solved-th block.
    solve_order = np.empty(c1, dtype=np.int64)
    for k1_first in range(0, c1, batch):
        k1_count = min(batch, c1 - k1_first)
        solve_order[k1_first:k1_first + k1_count] = np.argsort(
            groups[k1_first:k1_first + k1_count], kind="mergesort")
    # Blocks of three rows and columns or more take their first power step with vectors
    # in the data's precision (`_top_pair`): in single precision its element-wise passes
    # vectorise twice as wide.  Its float32 products of unit vectors with the block stay
    # clear of underflow and overflow for ‖M‖² in [SAFE_NORM2_LOW_SINGLE,
    # SAFE_NORM2_HIGH_SINGLE]; other blocks are rescaled first.
    single = np.finfo(node.dtype).eps > 1e-10
    safe_low = SAFE_NORM2_LOW_SINGLE if single else SAFE_NORM2_LOW
    safe_high = SAFE_NORM2_HIGH_SINGLE if single else SAFE_NORM2_HIGH
    block_tol = max(tol, 8.0 * np.finfo(node.dtype).eps)
    complex_work = np.iscomplexobj(work)
    for chunk in prange(n_chunks):
        panel = np.empty((batch, b1, c2), dtype=node.dtype)
        # row norms of two-row blocks (`_gather_two_rows`), else column norms
        panel_norm2 = np.empty((batch, max(c2, 2)))
        panel_cross = np.empty(batch, dtype=work.dtype)
        staged = np.empty((2 if stage else 0, big_c), dtype=node.dtype)
        u = np.empty(b1, dtype=work.dtype)
        v = np.empty(c2, dtype=work.dtype)
        w = np.empty(c2, dtype=work.dtype)
        block_u = np.empty(b1, dtype=node.dtype)
        block_w = np.empty(c2, dtype=node.dtype)
        sums = np.empty(c2)
        # Gram matrix of slowly converging blocks (`_top_pair`), not for large blocks
        shorter = min(b1, c2)
        if b1 < 3 or c2 < 3 or shorter > GRAM_MAX_SIDE or b1 * c2 > GRAM_MAX_VALUES:
            shorter = 0
        gram = np.empty((3, shorter, shorter), dtype=work.dtype)
        gram_widened = np.empty((b1 if shorter else 0, c2), dtype=work.dtype)
        gram_conjugated = np.empty((b1 if shorter and complex_work else 0, c2), dtype=work.dtype)
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
            two_rows = b1 == 2 and c2 >= 2
            if two_rows:
                _gather_two_rows(node, ordered, positions, groups, in_order, i, j2, t, b2, c2,
                                 k1_first, k1_count, panel, panel_norm2, panel_cross, staged,
                                 stage)
            else:
                _gather_rows(node, ordered, positions, groups, in_order, i, j2, t, b1, b2, c2,
                             k1_first, k1_count, panel, panel_norm2, staged, stage)
            for solved in range(k1_count):
                kk = solve_order[k1_first + solved]
                k1 = groups[k1_first + kk]
                M = panel[kk]
                block_norm2 = panel_norm2[kk]
                norm2 = 0.0
                for q in range(2 if two_rows else c2):
                    norm2 += block_norm2[q]
                exponent = 0
                if not safe_low <= norm2 <= safe_high:
                    # huge, tiny, empty or not finite (NaN fails both comparisons)
                    exponent = _gather_scale(M, b1, c2)
                    if exponent == NOT_FINITE or exponent == EMPTY:
                        bad += exponent == NOT_FINITE  # reported by the caller
                        for j1 in range(b1):
                            left[i, j1, k1, j2 * d + t] = 0.0
                        for k2 in range(c2):
                            right[i * c1 + k1, j2, k2, t] = 0.0
                        continue
                    # column norms (two-row blocks, rescaled, do not use theirs)
                    for k2 in range(c2):
                        block_norm2[k2] = 0.0
                    for j1 in range(b1):
                        for k2 in range(c2):
                            block_norm2[k2] += _square(M[j1, k2])
                    norm2 = 0.0
                    for k2 in range(c2):
                        norm2 += block_norm2[k2]
                if b1 >= 3 and c2 >= 3:
                    sigma2, direct = _top_pair(M, b1, c2, block_norm2, norm2, block_u, block_w,
                                               u, v, w, sums, gram, gram_widened,
                                               gram_conjugated, tol, block_tol)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:
                        if direct < 0.0:
                            direct = _residual2_columns(M, b1, c2, u, w, sums)
                        residual2 = direct
                elif two_rows:
                    if exponent == 0:  # Gram matrix from the gather
                        u[0], u[1] = _gram_vector_2(block_norm2[0], block_norm2[1], panel_cross[kk])
                    else:
                        _top_left_vector_2(M, b1, c2, u, v)
                    sigma2, direct = _two_rows_pair(M, c2, u, w)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:
                        residual2 = direct
                else:  # a side of 1, or two columns: closed forms
                    # (row norms unused for these shapes: column norms passed)
                    _top_left_vector(M, b1, c2, block_norm2, norm2, u, v, w, tol)
                    sigma2 = _adjoint_times(M, b1, c2, u, w)
                    residual2 = max(norm2 - sigma2, 0.0)
                    if residual2 < CANCELLATION * norm2:
                        residual2 = _residual2(M, b1, c2, u, w)
                norm2_sum, residual2_sum, exponent_sum = _accumulate(
                    norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
                # left = σ**p u and right = σ**(1-p) vᴴ with σ = 2**exponent ‖w‖ and
                # vᴴ = wᴴ/‖w‖ (w is in the block's scaled units).
                sigma = math.sqrt(sigma2)
                left_scale, right_scale = _split_scales(sigma, exponent, sigma_power)
                for j1 in range(b1):
                    left[i, j1, k1, j2 * d + t] = u[j1] * left_scale
                for k2 in range(c2):
                    right[i * c1 + k1, j2, k2, t] = np.conj(w[k2]) * right_scale
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


# Rank-r split: Gram matrix of each block's shorter side, subspace iteration on it, one
# refinement step against the block itself, a one-sided Jacobi rotation of the r vectors
# into singular vectors, and the block projected on the left singular vectors (see
# `_split_rank_r_py`).
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
# Products of the block solver with at least this many multiply-adds go to BLAS (through
# ``np.dot``, ~80 ns a call); smaller ones run as loops.  Measured per block, one thread:
# the Gram matrix of a 32 x 48 block 12.4 µs as a loop, 2.8 µs with BLAS; 8 x 8 blocks
# 105 ns and 148 ns; 4 x 4 blocks 19 ns and 99 ns.  (The loops' sums cannot be
# vectorised without reordering them, and the split kernels take no fastmath.)
BLAS_MIN_WORK = 1024
# Wide blocks projected on their left vectors (``sigma_power = 0``) whose squared error
# (from the Gram matrix) is at least this fraction of ‖M‖² skip `_refine`: their Gram
# basis, rotated into Ritz vectors, is as good as the refined one (`_split_rank_r_py`).
UNREFINED = 1e-6
# Values of the rank-r kernel's panel (the node rows its blocks share; 128 kB of float64).
RANK_PANEL_VALUES = 1 << 14
# The same for panels of several t (nodes with d > 1), whose gather writes batch-strided:
# 32 kB, the L1 data cache.  Measured (1024 x 1024 rank 2 balanced, its (1, 64, 128, 16)
# node, 8 x 16 blocks in batches of 16 t): 1.46 ms against 1.75 ms with 1 << 14, 1.49
# with 1 << 11, 1.66 with 1 << 13.
RANK_BATCH_PANEL_VALUES = 1 << 12


@_kernel()
def _times_transpose(X, Y, out):
    """``out = X Yᵀ`` for C-contiguous ``X`` (m × k), ``Y`` (n × k), ``out`` (m × n)."""
    m, k = X.shape
    n = Y.shape[0]
    if m * n * k >= BLAS_MIN_WORK:
        np.dot(X, Y.T, out)
        return
    # Four partial sums (l mod 4), added at the end: one running sum waits for every
    # previous addition (latency-bound); four interleave.  A fixed order, so the same
    # bits on every run and thread.
    k4 = k - k % 4
    for i in range(m):
        for j in range(n):
            acc0 = X[i, 0] * Y[j, 0]
            if k4 == 0:
                for l in range(1, k):
                    acc0 += X[i, l] * Y[j, l]
                out[i, j] = acc0
                continue
            acc1 = X[i, 1] * Y[j, 1]
            acc2 = X[i, 2] * Y[j, 2]
            acc3 = X[i, 3] * Y[j, 3]
            for l in range(4, k4, 4):
                acc0 += X[i, l] * Y[j, l]
                acc1 += X[i, l + 1] * Y[j, l + 1]
                acc2 += X[i, l + 2] * Y[j, l + 2]
                acc3 += X[i, l + 3] * Y[j, l + 3]
            for l in range(k4, k):
                acc0 += X[i, l] * Y[j, l]
            out[i, j] = (acc0 + acc1) + (acc2 + acc3)


@_kernel()
def _times_hermitian(X, H, out):
    """``out = X Hᵀ`` for C-contiguous ``X`` (m × k) and an exactly Hermitian ``H``
    (k × k): below ``BLAS_MIN_WORK`` as row updates ``out[i] += X[i, l] conj(H[l])``,
    whose inner loop runs along contiguous rows and vectorises (``conj(H[l, j])`` is
    ``H[j, l]``: the same products, summed in the same order, as ``X Hᵀ``)."""
    m, k = X.shape
    n = H.shape[1]
    if m * n * k >= BLAS_MIN_WORK:
        np.dot(X, H.T, out)
        return
    for i in range(m):
        coefficient = X[i, 0]
        for j in range(n):
            out[i, j] = coefficient * np.conj(H[0, j])
        for l in range(1, k):
            coefficient = X[i, l]
            for j in range(n):
                out[i, j] += coefficient * np.conj(H[l, j])


@_kernel()
def _times_plain(X, Y, out):
    """``out = X Y`` for C-contiguous ``X`` (m × k), ``Y`` (k × n), ``out`` (m × n)."""
    m, k = X.shape
    n = Y.shape[1]
    if m * n * k >= BLAS_MIN_WORK:
        np.dot(X, Y, out)
        return
    for i in range(m):
        for j in range(n):
            out[i, j] = X[i, 0] * Y[0, j]
        for l in range(1, k):
            coefficient = X[i, l]
            for j in range(n):
                out[i, j] += coefficient * Y[l, j]


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
def _long_row_norm(Z, k, n):
    """``‖Z[k, :n]‖`` in four interleaved partial sums (``j mod 4``) added at the end:
    one running sum waits for every previous addition, which shows on long rows (a
    block's right vectors; 2 x 128: 0.24 against 0.47 µs for an orthonormalisation).  A
    fixed order, so the same bits on every run and thread."""
    n4 = n - n % 4
    acc0 = 0.0
    acc1 = 0.0
    acc2 = 0.0
    acc3 = 0.0
    for j in range(0, n4, 4):
        acc0 += _abs2(Z[k, j])
        acc1 += _abs2(Z[k, j + 1])
        acc2 += _abs2(Z[k, j + 2])
        acc3 += _abs2(Z[k, j + 3])
    for j in range(n4, n):
        acc0 += _abs2(Z[k, j])
    return math.sqrt((acc0 + acc1) + (acc2 + acc3))


@_kernel()
def _least_covered_direction(Z, k, n):
    """Replace row ``k`` of ``Z`` by the coordinate vector that rows ``0..k-1``
    (orthonormal, ``k < n``) cover least, with those rows projected out (twice: "twice
    is enough"); returns its norm (at least ``sqrt(1 - k/n)``).  Fills the basis where
    row ``k`` was numerically dependent on the previous ones."""
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
    return _row_norm(Z, k, n)


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
            norm = _least_covered_direction(Z, k, n)
        inv = 1.0 / norm
        for j in range(n):
            Z[k, j] *= inv


@_kernel()
def _gram(A, conj_A, p, G, top):
    """``G = A Aᴴ`` (p × p, exactly Hermitian) from the block ``A`` (p × q) and
    ``conj_A``, its conjugate (``A`` itself for real blocks); returns
    ``‖A‖² = trace G``.  ``top`` (``p // 2`` × ``p // 2``) is workspace.

    Only the lower triangle is computed, the upper one mirrored from it: through BLAS,
    rows ``h..p-1`` against all rows and the top-left ``h × h`` block (``h = p // 2``),
    3/4 of the products of ``A Aᴴ``.  Measured per block, one thread: 32 x 48 1.95
    against 2.36 µs, 24 x 40 1.04 against 1.20 µs, 16 x 64 0.73 against 0.81 µs.
    """
    h = p // 2
    if h * h * A.shape[1] >= BLAS_MIN_WORK:
        np.dot(A[h:], conj_A.T, G[h:])
        np.dot(A[:h], conj_A[:h].T, top)
        for j in range(h):
            for l in range(j + 1):
                G[j, l] = top[j, l]
    else:
        _times_transpose(A, conj_A, G)
    trace = 0.0
    for j in range(p):
        for l in range(j):
            G[l, j] = np.conj(G[j, l])
        G[j, j] = G[j, j].real
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
    Returns that ``σ²``, and leaves ``G q_ρ`` in row ``ρ`` of ``Z`` (r × p) for the
    returned rows ``q_ρ``; ``diag`` (p) is workspace.
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
            values, vectors = np.linalg.eigh(G)  # eigenvalues ascending
            sigma2 = 0.0
            for rho in range(r):
                sigma2 += values[p - 1 - rho]
                for j in range(p):
                    Q[rho, j] = vectors[j, p - 1 - rho]
                    Z[rho, j] = values[p - 1 - rho] * Q[rho, j]
            return sigma2
        # Z[ρ] = G q_ρ, as rows: Z = Q Gᵀ
        _times_hermitian(Q, G, Z)
        sigma2 = 0.0
        for rho in range(r):
            for j in range(p):
                sigma2 += (np.conj(Q[rho, j]) * Z[rho, j]).real
        error2 = norm2 - sigma2
        increase = sigma2 - sigma2_old
        if error2 <= 8.0 * tol * norm2 or increase <= tol * sigma2:
            return sigma2
        ratio = increase / increase_old if increase_old > 0.0 else 0.0
        # The geometric tail only once the increases decay geometrically: two
        # consecutive ratios that agree (far from the top subspace the first
        # increases shrink faster than the asymptotic rate, which would stop early).
        if 0.0 < ratio < 1.0 and 0.8 * ratio_old <= ratio <= 1.25 * ratio_old:
            slowest = max(ratio, ratio_old)
            if slowest < 1.0 and increase * slowest / (1.0 - slowest) <= RESIDUAL_TOL * error2:
                return sigma2
        sigma2_old = sigma2
        increase_old = increase
        ratio_old = ratio
        for rho in range(r):
            for j in range(p):
                Q[rho, j] = Z[rho, j]
        _orthonormalize_rows(Q, r, p)
    # (only for p > 250 r: the eigensolver's budget is beyond MAX_POWER_STEPS)
    _times_hermitian(Q, G, Z)
    sigma2 = 0.0
    for rho in range(r):
        for j in range(p):
            sigma2 += (np.conj(Q[rho, j]) * Z[rho, j]).real
    return sigma2


@_kernel(inline="always")
def _jacobi_rotation(alpha, beta, gamma, g):
    """The rotation that zeroes ``γ`` (``g = |γ| > 0``) in the Hermitian 2 × 2 form
    ``[[α, γ], [conj(γ), β]]``: row ``l`` is multiplied by ``phase = conj(γ/|γ|)``,
    which makes ``γ`` real, then the pair is turned by the real rotation ``(c, s)``,
    ``tan θ`` the small root of ``t² + 2ζt − 1 = 0``, ``ζ = (β − α) / 2|γ|``."""
    phase = np.conj(gamma / g)
    zeta = (beta - alpha) / (2.0 * g)
    t = math.copysign(1.0, zeta) / (abs(zeta) + math.sqrt(1.0 + zeta * zeta))
    c = 1.0 / math.sqrt(1.0 + t * t)
    return phase, c, c * t


@_kernel(inline="always")
def _rotate_rows(A, k, l, n, phase, c, s):
    """Rows ``k`` and ``l`` of ``A`` (first ``n`` entries) by `_jacobi_rotation`'s
    ``(phase, c, s)``, in place."""
    for j in range(n):
        a_k = A[k, j]
        a_l = A[l, j] * phase
        A[k, j] = c * a_k - s * a_l
        A[l, j] = s * a_k + c * a_l


@_kernel()
def _rotate_pairs(X, Y, n, r, floor):
    """Rotate the rows of ``X`` and ``Y`` (length ``n``) by one unitary ``J`` (as
    `_jacobi_rows` rotates its pairs) until the Hermitian form ``h(k, l) = x_kᴴ y_l``
    (``y_ρ = H x_ρ`` for a Hermitian ``H``) vanishes for ``k != l``, or is below
    ``JACOBI_TOL`` times the geometric mean of ``h(k, k)`` and ``h(l, l)``, or below
    ``floor``: cyclic Jacobi on ``H`` restricted to the rows of ``X``."""
    for _ in range(MAX_JACOBI_SWEEPS):
        rotated = False
        for k in range(r - 1):
            for l in range(k + 1, r):
                # inline loops (n is tiny here: a call per product cost more)
                alpha = 0.0
                beta = 0.0
                gamma = np.conj(X[k, 0]) * Y[l, 0]
                for j in range(n):
                    alpha += (np.conj(X[k, j]) * Y[k, j]).real
                    beta += (np.conj(X[l, j]) * Y[l, j]).real
                for j in range(1, n):
                    gamma += np.conj(X[k, j]) * Y[l, j]
                g = abs(gamma)
                if g <= floor or g <= JACOBI_TOL * math.sqrt(abs(alpha * beta)):
                    continue
                rotated = True
                phase, c, s = _jacobi_rotation(alpha, beta, gamma, g)
                _rotate_rows(X, k, l, n, phase, c, s)
                _rotate_rows(Y, k, l, n, phase, c, s)
        if not rotated:
            break


@_kernel()
def _ritz_rotate(Q, Z, p, r, floor, J, K):
    """Rotate the orthonormal rows ``q_ρ`` of ``Q`` into Ritz vectors of ``G``, given
    ``Z`` (rows ``z_ρ = G q_ρ``, from `_top_subspace`): then the rows of ``Qᴴ A`` are
    orthogonal up to the Gram's rounding, i.e. the ``q_ρ`` are (approximate) left
    singular vectors.  Jacobi on the r × r matrix ``H[k, l] = q_kᴴ z_l``, as rotations
    of the rows of ``J`` (from the identity) and ``K = J Hᵀ`` (`_rotate_pairs`, pairs
    below ``floor``, the Gram's rounding, left alone), then ``Q ← J Q``: rotating the
    r × r matrices rather than the p-long rows of ``Q`` and ``Z`` took 1.1 against 1.9
    µs per 32 x 48 block of rank 4.  ``Z`` is overwritten; ``J``, ``K`` (r × r) are
    workspace."""
    for k in range(r):
        for l in range(r):
            J[k, l] = 1.0 if k == l else 0.0
            K[k, l] = 0.0
    # K[k, l] = q_lᴴ z_k, j outermost: r² independent running sums
    for j in range(p):
        for k in range(r):
            for l in range(r):
                K[k, l] += np.conj(Q[l, j]) * Z[k, j]
    _rotate_pairs(J, K, r, r, floor)
    _times_plain(J, Q, Z)
    for k in range(r):
        for j in range(p):
            Q[k, j] = Z[k, j]


@_kernel()
def _refine(A, conj_A, q, Q, r, V, Y):
    """From the left basis ``Q`` (r × p): ``V`` (r × q) an orthonormal basis of the
    rows of ``Qᴴ A`` and ``Y = (A V̄ᵀ)ᵀ``, i.e. ``Y[ρ] = A v_ρ``; ``Σ_ρ y_ρ v_ρᴴ`` is the
    approximation ``A V Vᴴ``.

    Why the extra step: ``Q`` comes from the Gram matrix, whose rounding error is
    ``ε σ₁²``, so its weak directions are only accurate to ``ε σ₁² / σ_r²``.  ``Aᴴ Q`` lies
    in the row space of ``A`` up to ``ε σ₁`` whatever ``Q``'s error within it, which
    brings exact low-rank blocks back to the accuracy of an SVD (``ε ‖A‖``).
    """
    _times_plain(Q, conj_A, V)  # V[ρ, k] = Σ_j Q[ρ, j] conj(A[j, k]): the rows of Qᵀ Ā
    _orthonormalize_rows(V, r, q)
    _times_transpose(V, A, Y)  # Y[ρ, j] = Σ_k A[j, k] V[ρ, k]


@_kernel()
def _jacobi_rows(Y, p, V, q, r, sigma):
    """Rotate the pairs ``(y_ρ, v_ρ)`` by one unitary ``J`` (``Y ← Jᵀ Y``,
    ``V ← Jᵀ V``; ``Σ y_ρ v_ρᴴ`` is unchanged) until the ``y_ρ`` are orthogonal: then
    ``y_ρ = σ_ρ u_ρ`` and the ``v_ρ`` are right singular vectors.  One-sided Jacobi, on
    ``Y`` itself rather than its Gram matrix, so no accuracy is lost to squaring.
    ``q = 0`` leaves ``V`` alone.  ``sigma[ρ] = ‖y_ρ‖`` on return."""
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
                phase, c, s = _jacobi_rotation(alpha, beta, gamma, g)
                _rotate_rows(Y, k, l, p, phase, c, s)
                _rotate_rows(V, k, l, q, phase, c, s)
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


@_kernel()
def _rank_r_residual2(A, p, q, Y, V, r, norm2, sigma):
    """``‖A − Σ_ρ y_ρ v_ρᴴ‖²`` for orthonormal ``v_ρ`` and ``sigma[ρ] = ‖y_ρ‖`` (or
    orthonormal ``y_ρ`` and ``sigma[ρ] = ‖v_ρ‖``): ``‖A‖² − Σ σ_ρ²``, recomputed
    directly when that has lost most digits to cancellation."""
    captured = 0.0
    for rho in range(r):
        captured += sigma[rho] * sigma[rho]
    residual2 = max(norm2 - captured, 0.0)
    if residual2 < CANCELLATION * norm2:
        residual2 = _low_rank_residual2(A, p, q, Y, V, r)
    return residual2


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
    triplets.  The cost is linear in the block's size for a fixed shorter side.

    With ``sigma_power = 0`` (the left child is an orthonormal leaf) the approximation
    written is a projection on the left, ``M ≈ U Uᴴ M`` with ``U`` (``b1 × r``)
    orthonormal, so every block's residual is orthogonal to its left vectors, as in the
    rank-one kernel (``u (Mᴴu)ᴴ``): that is what makes the errors of an orthonormalised
    left-to-right factorization add up exactly (DESIGN.md §4;
    `fastbfly.factorization._residual_sum_is_exact`).  For tall blocks (``A = Mᴴ``)
    ``M ≈ V (A V)ᴴ`` always is one (and its right rows are orthogonal too); for wide
    blocks the left vectors ``u_ρ = y_ρ / σ_ρ`` are taken and the right side is
    recomputed as ``Uᴴ M`` (``p q r`` more; its error is never above that of
    ``A V Vᴴ``).  Otherwise wide blocks keep ``A V Vᴴ``, whose right rows ``V`` are
    orthonormal: the side that later splits see through (right-to-left and balanced
    trees) stays an isometry.

    Wide blocks projected on the left whose squared error ``‖A‖² − σ²`` (from the Gram
    matrix) is at least ``UNREFINED`` of ``‖A‖²`` (noisy blocks, as in any approximate
    factorization) skip `_refine` and its Jacobi rotation: the Gram's basis ``Q`` is
    rotated into Ritz vectors (`_ritz_rotate`, r × r) and the block written as
    ``Q (Qᴴ M)``, the same orthonormal projection.  What the refinement adds is accuracy
    of order ``ε σ₁² / σ_r²`` in ``Q``'s weak directions; with that much error in the
    block, it changes ``‖A‖² − σ²`` by less than the subspace iteration's own stopping
    tolerance (``RESIDUAL_TOL``; measured on the noisy products of
    benchmarks/general_shapes.py: relative changes of the blocks' summed squared error
    below 3e-11).  Exact and nearly exact blocks keep the refinement.

    Products of the Gram matrix, the refinement and the projection run through BLAS
    once they are large enough (``BLAS_MIN_WORK``: small single-threaded calls, also
    from the threads of the ``parallel=True`` build); LAPACK only for blocks whose
    subspace iteration is slow (flat spectra, pure noise), on the small ``p × p`` Gram
    matrix (`_top_subspace`).
    """
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    c2 = big_c // c1
    transposed = b1 > c2
    p = c2 if transposed else b1
    q = b1 if transposed else c2
    complex_work = np.iscomplexobj(work)
    # wide blocks whose left vectors are kept as they are (σ**0 u): see the Notes
    left_projection = sigma_power == 0.0
    # A task: `batch` consecutive t of `groups` consecutive column groups k1, whose
    # blocks share the node's b1 rows: those are read once, in runs of groups·C2
    # columns (with one column group per task, a 64 x 16 block reads 64 rows 8 kB
    # apart for 128 bytes each: 5 ms per million entries, against 0.9 ms for whole runs).
    panel_values = RANK_PANEL_VALUES if batch == 1 else RANK_BATCH_PANEL_VALUES
    groups = max(1, min(c1, panel_values // (batch * b1 * c2)))
    n_groups = (c1 + groups - 1) // groups
    n_batches = (d + batch - 1) // batch
    n_tasks = a * b2 * n_groups * n_batches
    # Nodes with one t (d = 1) whose columns are read in order (all but permuted
    # roots): wide blocks are copied straight from the node's rows (b1 runs of C2
    # values), tall ones through the panel filled by whole-run slice copies.  The
    # element-wise gather below is slow on these runs: measured per block, gather
    # alone, 8 x 128 blocks (1024 x 1024 rank 2) 0.15 against 0.97 µs; 32 x 48
    # (384 x 1536 rank 4) 0.25 against 1.4 µs; tall 64 x 16 blocks 0.65 against 1.2 µs
    # (read straight from their 64 rows, 8 kB apart, they took 3 µs longer each).
    in_order = d == 1
    for column in range(columns.size):
        if columns[column] != column:
            in_order = False
            break
    direct = in_order and not transposed
    # (a, B, C, d) -> (a*B, C*d): the node's rows, which the slice copies read
    rows = node.reshape((a * big_b, big_c * d))
    for chunk in prange(n_chunks):
        panel = np.empty((1, 1, 1) if direct else (batch, b1, groups * c2), dtype=work.dtype)
        # the block being solved, and its conjugate (complex data only)
        A = np.empty((p, q), dtype=work.dtype)
        conj_A = np.empty((p, q) if complex_work else (1, 1), dtype=work.dtype)
        G = np.empty((p, p), dtype=work.dtype)
        top = np.empty((p // 2, p // 2), dtype=work.dtype)  # `_gram`'s workspace
        Q = np.empty((rank, p), dtype=work.dtype)
        Z = np.empty((rank, p), dtype=work.dtype)
        V = np.empty((rank, q), dtype=work.dtype)
        Y = np.empty((rank, p), dtype=work.dtype)
        # wide blocks: conj(Uᴴ A) as rows, the conjugated right vectors times σ
        W = np.empty((rank, q), dtype=work.dtype)
        diag = np.empty(p)
        sigma = np.empty(rank)
        order = np.empty(rank, dtype=np.int64)
        # the Ritz rotation of noisy wide blocks (`_ritz_rotate`)
        J = np.empty((rank, rank), dtype=work.dtype)
        K = np.empty((rank, rank), dtype=work.dtype)
        norm2_sum = 0.0
        residual2_sum = 0.0
        exponent_sum = 0
        bad = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            t_first = (task % n_batches) * batch
            t_count = min(batch, d - t_first)
            group = task // n_batches
            k1_first = (group % n_groups) * groups
            width = min(groups, c1 - k1_first) * c2
            j2 = (group // n_groups) % b2
            i = group // (n_groups * b2)
            # (b1 rows of the node) × (width gathered columns) × (t_count contiguous t)
            for j1 in range(0 if direct else b1):
                row = j1 * b2 + j2
                if in_order:
                    start = k1_first * c2
                    panel[0, j1, :width] = rows[i * big_b + row, start:start + width]
                elif t_count == 1:  # the root (d = 1): the inner loop reads a run of the row
                    for column in range(width):
                        panel[0, j1, column] = node[i, row, columns[k1_first * c2 + column], t_first]
                else:
                    for column in range(width):
                        source = columns[k1_first * c2 + column]
                        for tt in range(t_count):
                            panel[tt, j1, column] = node[i, row, source, t_first + tt]
            for block in range(width // c2 * t_count):
                tt = block % t_count
                k1 = k1_first + block // t_count
                t = t_first + tt
                first = (k1 - k1_first) * c2
                if direct:
                    for j1 in range(b1):
                        A[j1, :] = rows[i * big_b + j1 * b2 + j2, k1 * c2:(k1 + 1) * c2]
                elif transposed:
                    for j1 in range(b1):
                        for k2 in range(c2):
                            A[k2, j1] = np.conj(panel[tt, j1, first + k2])
                else:
                    for j1 in range(b1):
                        for k2 in range(c2):
                            A[j1, k2] = panel[tt, j1, first + k2]
                # Blocks whose ‖A‖² (the Gram trace) is in the safe range are solved as
                # they are (see `SAFE_NORM2_LOW`; a power-of-two scaling would change no
                # bit there); others (huge, tiny, empty, NaN/Inf) are rescaled and their
                # Gram matrix formed again.  `_gather_scale` on every block was a read
                # and a write pass over it (1.5 of 12 µs for a 32 x 48 block, rank 4).
                exponent = 0
                for attempt in range(2):
                    if complex_work:
                        for j in range(p):
                            for k in range(q):
                                conj_A[j, k] = np.conj(A[j, k])
                    else:
                        conj_A = A
                    norm2 = _gram(A, conj_A, p, G, top)
                    if attempt == 1 or SAFE_NORM2_LOW <= norm2 <= SAFE_NORM2_HIGH:
                        break
                    exponent = _gather_scale(A, p, q)
                    if exponent == NOT_FINITE or exponent == EMPTY:
                        break
                if exponent == NOT_FINITE or exponent == EMPTY:
                    bad += exponent == NOT_FINITE  # reported by the caller
                    for rho in range(rank):
                        for j1 in range(b1):
                            left[i, j1, k1 * rank + rho, j2 * d + t] = 0.0
                        for k2 in range(c2):
                            right[i * c1 + k1, rho * b2 + j2, k2, t] = 0.0
                    continue
                sigma2 = _top_subspace(G, p, rank, norm2, Q, Z, diag, tol)
                # M ≈ Σ_ρ L_ρ R_ρᴴ with unit left vectors L_ρ, and ‖R_ρ‖ = σ_ρ unless
                # right_unit (then R_ρ is unit and σ_ρ is ‖y_ρ‖)
                right_unit = False
                if left_projection and not transposed and norm2 - sigma2 >= UNREFINED * norm2:
                    # noisy: M = A ≈ Q (Qᴴ A) with Q's rows turned into Ritz vectors;
                    # W[ρ, k] = Σ_j q_ρ[j] conj(A[j, k]): the rows of conj(Qᴴ A)
                    _ritz_rotate(Q, Z, p, rank, p * tol * norm2, J, K)
                    _times_plain(Q, conj_A, W)
                    for rho in range(rank):
                        sigma[rho] = _long_row_norm(W, rho, q)
                    residual2 = _rank_r_residual2(A, p, q, Q, W, rank, norm2, sigma)
                    L = Q
                    R = W
                elif transposed:  # M = Aᴴ ≈ Σ v_ρ y_ρᴴ = V (Vᴴ M): L = V, R = Y
                    _refine(A, conj_A, q, Q, rank, V, Y)
                    _jacobi_rows(Y, p, V, q, rank, sigma)
                    residual2 = _rank_r_residual2(A, p, q, Y, V, rank, norm2, sigma)
                    L = V
                    R = Y
                elif left_projection:  # M = A ≈ U (Uᴴ A), u_ρ = y_ρ / σ_ρ: L = U (in Y), R = W
                    _refine(A, conj_A, q, Q, rank, V, Y)
                    _jacobi_rows(Y, p, V, 0, rank, sigma)
                    for rho in range(rank):
                        inv = 1.0 / sigma[rho] if sigma[rho] > 0.0 else 0.0
                        for j in range(p):
                            Y[rho, j] *= inv
                    # W[ρ, k] = Σ_j u_ρ[j] conj(A[j, k]): the rows of conj(Uᴴ A)
                    _times_plain(Y, conj_A, W)
                    for rho in range(rank):
                        sigma[rho] = _row_norm(W, rho, q) if sigma[rho] > 0.0 else 0.0
                    residual2 = _rank_r_residual2(A, p, q, Y, W, rank, norm2, sigma)
                    L = Y
                    R = W
                else:  # M = A ≈ Σ y_ρ v_ρᴴ = (A V) Vᴴ: L = Y / σ, R = V (unit)
                    _refine(A, conj_A, q, Q, rank, V, Y)
                    _jacobi_rows(Y, p, V, q, rank, sigma)
                    residual2 = _rank_r_residual2(A, p, q, Y, V, rank, norm2, sigma)
                    for rho in range(rank):
                        inv = 1.0 / sigma[rho] if sigma[rho] > 0.0 else 0.0
                        for j in range(p):
                            Y[rho, j] *= inv
                    right_unit = True
                    L = Y
                    R = V
                for rho in range(rank):
                    order[rho] = rho
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
                    # σ = 2**exponent · s in true units (s in the block's scaled units)
                    true_sigma = math.ldexp(s, exponent)
                    left_scale = true_sigma ** sigma_power
                    right_scale = true_sigma ** (1.0 - sigma_power)
                    if not right_unit:
                        right_scale /= s
                    for j1 in range(b1):
                        left[i, j1, column, j2 * d + t] = L[rho, j1] * left_scale
                    for k2 in range(c2):
                        right[i * c1 + k1, right_row, k2, t] = np.conj(R[rho, k2]) * right_scale
        chunk_norm2[chunk] = norm2_sum
        chunk_residual2[chunk] = residual2_sum
        chunk_exponent[chunk] = exponent_sum
        chunk_bad[chunk] = bad


split_rank_r_serial = _jit(_split_rank_r_py, "_serial")
split_rank_r_parallel = _jit(_split_rank_r_py, "_parallel", parallel=True)


@_kernel()
def _scaled_norm(x, n):
    """``‖x[:n]‖`` without overflow or underflow of the squares (scaled by a power of
    two near the largest entry, as `_gather_scale` scales blocks)."""
    biggest = 0.0
    for j in range(n):
        biggest = max(biggest, abs(x[j].real), abs(x[j].imag))
    if biggest == 0.0:
        return 0.0
    scale = math.ldexp(1.0, -math.frexp(biggest)[1])
    total = 0.0
    for j in range(n):
        total += _abs2(x[j] * scale)
    return math.sqrt(total) / scale


@_kernel()
def push_column_frames_rank_r(values, target, rank, work):
    """Orthonormalize every group of ``rank`` columns of a factor's values in place and
    multiply the matching rows of ``target`` by the triangular factor: the product of
    the two is unchanged (`fastbfly.factorization._push_column_frames`).

    Group ``(i, g, t)`` is the ``b × r`` matrix ``M[:, ρ] = values[i, :, g*r + ρ, t]``
    (``b >= r``), factorised ``M = Q R`` in the precision of ``work`` by modified
    Gram-Schmidt, repeated while a pass removes more than half of a column ("twice is
    enough"; norms scaled, so no overflow).  A column dependent on the previous ones
    (``R[ρ, ρ]`` numerically 0) becomes the coordinate vector they cover least,
    orthogonalised, so ``Q`` stays orthonormal.  With ``f = (i*(c/r) + g)*d + t`` its
    rows in ``target`` (``(a', r*s, c', d')``, ``s = d / d'``) are
    ``target[f // (s*d'), ρ*s + (f // d') % s, :, f % d']``.
    """
    a, b, c, d = values.shape
    ta, tb, tc, td = target.shape
    spread = tb // rank
    Q = np.empty((rank, b), dtype=work.dtype)
    R = np.zeros((rank, rank), dtype=work.dtype)
    mixed = np.empty((rank, tc), dtype=work.dtype)
    for i in range(a):
        for g in range(c // rank):
            for t in range(d):
                for rho in range(rank):
                    for j in range(b):
                        Q[rho, j] = values[i, j, g * rank + rho, t]
                    for m in range(rank):
                        R[rho, m] = 0.0
                    original = _scaled_norm(Q[rho], b)
                    norm = original
                    for _ in range(3):
                        before = norm
                        for m in range(rho):  # q_ρ -= q_m (q_mᴴ q_ρ)
                            coefficient = np.conj(Q[m, 0]) * Q[rho, 0]
                            for j in range(1, b):
                                coefficient += np.conj(Q[m, j]) * Q[rho, j]
                            R[m, rho] += coefficient
                            for j in range(b):
                                Q[rho, j] -= coefficient * Q[m, j]
                        norm = _scaled_norm(Q[rho], b)
                        if norm > 0.5 * before:
                            break
                    if not norm > DEPENDENT * original:
                        # dependent: R[ρ, ρ] = 0, and a unit direction orthogonal to the
                        # previous ones (any completes the basis)
                        norm = 0.0
                        inv = 1.0 / _least_covered_direction(Q, rho, b)
                    else:
                        inv = 1.0 / norm
                    R[rho, rho] = norm
                    for j in range(b):
                        Q[rho, j] *= inv
                        values[i, j, g * rank + rho, t] = Q[rho, j]
                # the rows of the target this group's R mixes
                f = (i * (c // rank) + g) * d + t
                ti = f // (spread * td)
                s = (f // td) % spread
                tt = f % td
                for rho in range(rank):
                    for k in range(tc):
                        mixed[rho, k] = R[rho, rho] * target[ti, rho * spread + s, k, tt]
                    for m in range(rho + 1, rank):
                        coefficient = R[rho, m]
                        for k in range(tc):
                            mixed[rho, k] += coefficient * target[ti, m * spread + s, k, tt]
                for rho in range(rank):
                    for k in range(tc):
                        target[ti, rho * spread + s, k, tt] = mixed[rho, k]


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

# One vector, several steps per pass.  Two or three consecutive steps whose ``d`` are
# ``{q, 2q}`` or ``{q, 2q, 4q}`` act on groups of 4 or 8 rows ``r + {0, q, 2q, ...}``
# that no other block of those steps touches: load a group once, apply every step in
# registers, store it once.  The values of a pass are stored in the order its loop
# consumes them (*fused order*, built once per `Butterfly`, direction and dtype), so
# they stream front to back instead of coming from 4-12 places up to ``4 q`` blocks
# apart.  A pass reads and writes the same rows in each iteration, so all but the
# first run in place.  Measured against `_apply_pairs_py` (DFT complex128, one vector,
# kernel alone, loaded machine, same run): N = 1024 22 -> 18 µs, N = 4096 114 -> 84 µs,
# N = 16384 640 -> 400 µs.  Three steps per pass everywhere measured no faster than
# two (the complex arithmetic, not memory, bounds these sizes), so the plan uses three
# only for odd runs; ``fastmath={"contract"}`` (FMA) made LLVM drop the SLP packing.
#
# ``program`` (int64) describes a product:
#
#     program[0] = P (passes), program[1] = len(gather), program[2] = len(scatter),
#     program[3 + 6 p : 9 + 6 p] = (k, q, s0, s1, s2, offset) for pass p: k steps,
#         step j pairing rows s_j apart (s_j = 0 for j >= k), values from ``offset``;
#     then gather, then scatter (each empty for the identity).
#
# Indices are unsigned (``_U1``... are uint64 constants): Numba adds a wraparound test
# to every signed index, which here cost almost half the time (two steps per pass,
# DFT N = 1024 complex128, the five passes timed alone: 17.6 µs signed, 9.8 µs
# unsigned).
_U1, _U2, _U3, _U4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
PROGRAM_HEADER = 3
PROGRAM_ROW = 6


@_kernel()
def _one_step_pass(values, v, d, src, gather, dst):
    """One step in fused order: rows ``(r, r + d)``, values from ``v``; ``src`` is
    read through ``gather`` unless it is empty (a loop-invariant test: LLVM moves it
    out of the loops)."""
    n = dst.shape[0]
    gathered = gather.shape[0] > 0
    ud = np.uint64(d)
    v = np.uint64(v)
    for g in range(n // (2 * d)):
        first = np.uint64(2 * g * d)
        for t in range(d):
            r = first + np.uint64(t)
            if gathered:
                x0, x1 = src[gather[r]], src[gather[r + ud]]
            else:
                x0, x1 = src[r], src[r + ud]
            dst[r] = values[v] * x0 + values[v + _U1] * x1
            dst[r + ud] = values[v + _U2] * x0 + values[v + _U3] * x1
            v += _U4


@_kernel()
def _two_step_pass(values, v, q, s0, s1, src, gather, dst):
    """Two steps on the rows ``r + {0, s0, s1, s0 + s1}`` (``{s0, s1} = {q, 2q}``):
    first the pairs ``s0`` apart, then those ``s1`` apart; 16 values per row group.
    (Written out: inlined helpers taking arrays left reference counting calls in the
    loop, twice as slow.)"""
    n = dst.shape[0]
    gathered = gather.shape[0] > 0
    u0, u1 = np.uint64(s0), np.uint64(s1)
    u01 = u0 + u1
    v = np.uint64(v)
    for g in range(n // (4 * q)):
        first = np.uint64(4 * g * q)
        for t in range(q):
            r = first + np.uint64(t)
            if gathered:
                x0, x1 = src[gather[r]], src[gather[r + u0]]
                x2, x3 = src[gather[r + u1]], src[gather[r + u01]]
            else:
                x0, x1, x2, x3 = src[r], src[r + u0], src[r + u1], src[r + u01]
            y0 = values[v] * x0 + values[v + _U1] * x1
            y1 = values[v + _U2] * x0 + values[v + _U3] * x1
            v += _U4
            y2 = values[v] * x2 + values[v + _U1] * x3
            y3 = values[v + _U2] * x2 + values[v + _U3] * x3
            v += _U4
            dst[r] = values[v] * y0 + values[v + _U1] * y2
            dst[r + u1] = values[v + _U2] * y0 + values[v + _U3] * y2
            v += _U4
            dst[r + u0] = values[v] * y1 + values[v + _U1] * y3
            dst[r + u01] = values[v + _U2] * y1 + values[v + _U3] * y3
            v += _U4


@_kernel()
def _three_step_pass(values, v, q, s0, s1, s2, src, gather, dst):
    """Three steps on the rows ``r + {0, s0, s1, s0 + s1, s2, s0 + s2, s1 + s2,
    s0 + s1 + s2}`` (``{s0, s1, s2} = {q, 2q, 4q}``), pairs ``s0`` apart first, then
    ``s1``, then ``s2``; 48 values per row group."""
    n = dst.shape[0]
    gathered = gather.shape[0] > 0
    u0, u1, u2 = np.uint64(s0), np.uint64(s1), np.uint64(s2)
    u01, u02, u12 = u0 + u1, u0 + u2, u1 + u2
    u012 = u01 + u2
    v = np.uint64(v)
    for g in range(n // (8 * q)):
        first = np.uint64(8 * g * q)
        for t in range(q):
            r = first + np.uint64(t)
            if gathered:
                x0, x1 = src[gather[r]], src[gather[r + u0]]
                x2, x3 = src[gather[r + u1]], src[gather[r + u01]]
                x4, x5 = src[gather[r + u2]], src[gather[r + u02]]
                x6, x7 = src[gather[r + u12]], src[gather[r + u012]]
            else:
                x0, x1, x2, x3 = src[r], src[r + u0], src[r + u1], src[r + u01]
                x4, x5, x6, x7 = src[r + u2], src[r + u02], src[r + u12], src[r + u012]
            # pairs s0 apart
            y0 = values[v] * x0 + values[v + _U1] * x1
            y1 = values[v + _U2] * x0 + values[v + _U3] * x1
            v += _U4
            y2 = values[v] * x2 + values[v + _U1] * x3
            y3 = values[v + _U2] * x2 + values[v + _U3] * x3
            v += _U4
            y4 = values[v] * x4 + values[v + _U1] * x5
            y5 = values[v + _U2] * x4 + values[v + _U3] * x5
            v += _U4
            y6 = values[v] * x6 + values[v + _U1] * x7
            y7 = values[v + _U2] * x6 + values[v + _U3] * x7
            v += _U4
            # pairs s1 apart
            x0 = values[v] * y0 + values[v + _U1] * y2
            x2 = values[v + _U2] * y0 + values[v + _U3] * y2
            v += _U4
            x1 = values[v] * y1 + values[v + _U1] * y3
            x3 = values[v + _U2] * y1 + values[v + _U3] * y3
            v += _U4
            x4 = values[v] * y4 + values[v + _U1] * y6
            x6 = values[v + _U2] * y4 + values[v + _U3] * y6
            v += _U4
            x5 = values[v] * y5 + values[v + _U1] * y7
            x7 = values[v + _U2] * y5 + values[v + _U3] * y7
            v += _U4
            # pairs s2 apart
            dst[r] = values[v] * x0 + values[v + _U1] * x4
            dst[r + u2] = values[v + _U2] * x0 + values[v + _U3] * x4
            v += _U4
            dst[r + u0] = values[v] * x1 + values[v + _U1] * x5
            dst[r + u02] = values[v + _U2] * x1 + values[v + _U3] * x5
            v += _U4
            dst[r + u1] = values[v] * x2 + values[v + _U1] * x6
            dst[r + u12] = values[v + _U2] * x2 + values[v + _U3] * x6
            v += _U4
            dst[r + u01] = values[v] * x3 + values[v + _U1] * x7
            dst[r + u012] = values[v + _U2] * x3 + values[v + _U3] * x7
            v += _U4


def _apply_pairs_vec_py(values, program, x, out):
    """``out = P_out K_L ⋯ K_1 P_in x`` for one vector, from a plan in fused order (see
    above).  The first pass reads ``x`` through ``gather``; the others run in place in
    ``out``, or, with a ``scatter``, in a scratch vector scattered into ``out`` at the
    end."""
    n_passes = program[0]
    start = PROGRAM_HEADER + PROGRAM_ROW * n_passes
    gather = program[start:start + program[1]]
    scatter = program[start + program[1]:start + program[1] + program[2]]
    no_gather = program[:0]
    work = np.empty_like(out) if scatter.shape[0] > 0 else out
    src = x
    for p in range(n_passes):
        row = PROGRAM_HEADER + PROGRAM_ROW * p
        k, q, offset = program[row], program[row + 1], program[row + 5]
        s0, s1, s2 = program[row + 2], program[row + 3], program[row + 4]
        g = gather if p == 0 else no_gather
        if k == 2:
            _two_step_pass(values, offset, q, s0, s1, src, g, work)
        elif k == 3:
            _three_step_pass(values, offset, q, s0, s1, s2, src, g, work)
        else:
            _one_step_pass(values, offset, q, src, g, work)
        src = work
    if scatter.shape[0] > 0:
        for r in range(scatter.shape[0]):
            out[scatter[r]] = work[r]


# Blocks of vectors: column tiles in split layout.
#
# A block of ``m`` vectors is cut into column tiles, each carried through the whole
# chain on its own (one thread per tile; no barrier between factors).  A tile is an
# ``(n, planes, width)`` real array: for complex data the real and imaginary parts of
# a row are two separate runs of ``width`` numbers (``planes = 2``), so the innermost
# loop over columns is plain real arithmetic that vectorises without shuffles (on the
# interleaved layout every product first un-zips real and imaginary parts: measured
# 0.19 against 0.095 ms per factor, DFT N = 4096, 64 complex128 vectors, one thread);
# real data has ``planes = 1``.  The first factor reads the (gathered) rows of the
# interleaved input, the last writes the (scattered) rows of the output; every other
# factor works in place on the tile, so a tile needs no second buffer.  Two factors in
# a row whose ``d`` differ by a factor of two may be fused (`_tile_pairs4`): the four
# rows ``{r, r + d1, r + d2, r + d1 + d2}`` are closed under both, so they are loaded
# once for two factors, which halves the memory traffic when the tile is out of cache.
# The kernels are compiled with ``fastmath={"contract"}`` (fused multiply-adds only,
# no reassociation): a complex product-sum ``p a + q b`` then costs four FMA-class
# instructions per real output instead of seven.

# A tile spans at most this many columns (the length of the innermost loops): wider
# tiles gain nothing, narrower ones pay the per-row-group set-up more often (64 / 32 /
# 16 columns: 0.095 / 0.106 / 0.121 ms per factor, N = 4096 complex128, one thread).
PAIRS_TILE_COLUMNS = 64
# Blocks of vectors with at least this many (rows × real columns × factors) go to the
# threaded build (N = 4096 with 64 complex columns: 6.3e6): below that a parallel region
# is not worth it on a loaded machine.
PAIRS_PARALLEL_MIN_WORK = 1 << 22
# Products on tiles of at least this many bytes take two factors per pass
# (`_tile_pairs4`): it halves the traffic through L3 / memory, which pays at N = 16384
# (64 complex128 columns, 16 MB: 1.15 ms per two factors against 2 × 0.81 ms), not at
# N = 4096 (4 MB: 0.21 against 2 × 0.095 ms, arithmetic-bound).  Unit-pivot plans
# (`unit_pivot_plan`), with half the arithmetic, take two factors per pass at every
# size (`Butterfly._apply_pairs`): one thread, 64 complex128 vectors, against plain
# blocks one factor per pass, 1.32x at N = 1024, 1.28x at 4096, 1.33x at 16384 (unit
# blocks one per pass: 1.12x, 1.06x, 0.98x; benchmarks/unit_pivots.py, load 1).
PAIRS_FUSE_MIN_TILE_BYTES = 8 << 20
# Whether the first two and last two factors go with the load and store passes (as
# fast as a separate pass for the second factor, one pass fewer).
PAIRS_FUSE_ENDS = True


@_kernel(inline="always")
def _tile_load_row(x, row, c0, w, tile, r):
    """Tile row ``r`` = columns ``c0 .. c0 + w`` of row ``row`` of ``x`` (real view of
    the input: re/im interleaved when ``planes = 2``)."""
    if tile.shape[1] == 2:
        # (a row view: its indices are provably non-negative, so no wraparound test
        # turns the strided loads into gathers)
        source = x[row, 2 * c0:]
        for c in range(w):
            tile[r, 0, c] = source[2 * c]
            tile[r, 1, c] = source[2 * c + 1]
    else:
        source = x[row, c0:]
        for c in range(w):
            tile[r, 0, c] = source[c]


@_kernel(inline="always")
def _tile_store_row(tile, r, w, out, row, c0):
    """The inverse of `_tile_load_row`: tile row ``r`` into row ``row`` of ``out``."""
    if tile.shape[1] == 2:
        target = out[row, 2 * c0:]
        for c in range(w):
            target[2 * c] = tile[r, 0, c]
            target[2 * c + 1] = tile[r, 1, c]
    else:
        target = out[row, c0:]
        for c in range(w):
            target[c] = tile[r, 0, c]


@_kernel(inline="always")
def _cpair(pr, pi, qr, qi, ar, ai, br, bi):
    """``p a + q b`` on split complex numbers, as one chain of multiply-adds."""
    return pr * ar - pi * ai + qr * br - qi * bi, pr * ai + pi * ar + qr * bi + qi * br


@_kernel(inline="always")
def _cunit(qr, qi, ar, ai, br, bi):
    """``a + q b`` on split complex numbers (a row of a unit-pivot block)."""
    return ar + qr * br - qi * bi, ai + qr * bi + qi * br


@_kernel(inline="always")
def _tile_pair(packed, v, unit, tile, r0, r1, w):
    """Rows ``r0``, ``r1`` of the tile times the 2 × 2 block at ``packed[v:v + 4]``, in
    place; with ``unit`` its left column holds ones (`unit_pivot_plan`), which are not
    multiplied.  (For real data ``.real`` is a no-op; the complex branch is never
    taken.)"""
    p, q, r, s = packed[v], packed[v + 1], packed[v + 2], packed[v + 3]
    if unit and tile.shape[1] == 2:
        qr, qi, sr, si = q.real, q.imag, s.real, s.imag
        for c in range(w):
            ar, ai = tile[r0, 0, c], tile[r0, 1, c]
            br, bi = tile[r1, 0, c], tile[r1, 1, c]
            tile[r0, 0, c], tile[r0, 1, c] = _cunit(qr, qi, ar, ai, br, bi)
            tile[r1, 0, c], tile[r1, 1, c] = _cunit(sr, si, ar, ai, br, bi)
    elif unit:
        qr, sr = q.real, s.real
        for c in range(w):
            a = tile[r0, 0, c]
            b = tile[r1, 0, c]
            tile[r0, 0, c] = a + qr * b
            tile[r1, 0, c] = a + sr * b
    elif tile.shape[1] == 2:
        pr, pi, qr, qi = p.real, p.imag, q.real, q.imag
        rr, ri, sr, si = r.real, r.imag, s.real, s.imag
        for c in range(w):
            ar, ai = tile[r0, 0, c], tile[r0, 1, c]
            br, bi = tile[r1, 0, c], tile[r1, 1, c]
            tile[r0, 0, c], tile[r0, 1, c] = _cpair(pr, pi, qr, qi, ar, ai, br, bi)
            tile[r1, 0, c], tile[r1, 1, c] = _cpair(rr, ri, sr, si, ar, ai, br, bi)
    else:
        pr, qr, rr, sr = p.real, q.real, r.real, s.real
        for c in range(w):
            a = tile[r0, 0, c]
            b = tile[r1, 0, c]
            tile[r0, 0, c] = pr * a + qr * b
            tile[r1, 0, c] = rr * a + sr * b


@_kernel(inline="always")
def _first_item(start, period):
    """``divmod(start, period)``: where a slice ``start ..`` of a pass begins."""
    i = start // period
    return i, start - i * period


@_kernel(fastmath={"contract"})
def _tile_first(packed, d, offset, unit, x, gather, c0, w, tile, start, stop):
    """Load the tile rows of pairs ``start .. stop`` (pair ``i d + t`` is rows
    ``2 i d + t`` and ``+ d``) from ``x[gather]``, columns ``c0 .. c0 + w``, and apply
    the first factor to them.  Pair by pair, so the rows are still in L1 for the
    arithmetic (one loop doing both has six memory streams, more than the vectoriser's
    overlap checks allow)."""
    i, t = _first_item(start, d)
    for _ in range(start, stop):
        r0 = 2 * i * d + t
        r1 = r0 + d
        _tile_load_row(x, gather[r0] if gather.shape[0] > 0 else r0, c0, w, tile, r0)
        _tile_load_row(x, gather[r1] if gather.shape[0] > 0 else r1, c0, w, tile, r1)
        _tile_pair(packed, offset + 4 * (i * d + t), unit, tile, r0, r1, w)
        t += 1
        if t == d:
            t = 0
            i += 1


@_kernel(fastmath={"contract"})
def _tile_last(packed, d, offset, unit, tile, w, out, scatter, c0, start, stop):
    """Apply the last factor to pairs ``start .. stop`` and store their rows into
    ``out`` (scattered)."""
    i, t = _first_item(start, d)
    for _ in range(start, stop):
        r0 = 2 * i * d + t
        r1 = r0 + d
        _tile_pair(packed, offset + 4 * (i * d + t), unit, tile, r0, r1, w)
        _tile_store_row(tile, r0, w, out, scatter[r0] if scatter.shape[0] > 0 else r0, c0)
        _tile_store_row(tile, r1, w, out, scatter[r1] if scatter.shape[0] > 0 else r1, c0)
        t += 1
        if t == d:
            t = 0
            i += 1


@_kernel(fastmath={"contract"})
def _tile_store(tile, w, out, scatter, c0, start, stop):
    """Store tile rows ``start .. stop`` into ``out`` (a chain of one factor)."""
    for r in range(start, stop):
        _tile_store_row(tile, r, w, out, scatter[r] if scatter.shape[0] > 0 else r, c0)


@_kernel(fastmath={"contract"})
def _tile_pairs2(packed, d, offset, unit, tile, w, start, stop):
    """One factor on pairs ``start .. stop`` of the tile, in place."""
    i, t = _first_item(start, d)
    for _ in range(start, stop):
        r0 = 2 * i * d + t
        _tile_pair(packed, offset + 4 * (i * d + t), unit, tile, r0, r0 + d, w)
        t += 1
        if t == d:
            t = 0
            i += 1


@_kernel(inline="always")
def _tile_quad(packed, v1, v2, lo, unit1, unit2, tile, r0, r1, r2, r3, w):
    """Rows ``r0 .. r3`` of the tile through two factors in place: first the blocks at
    ``v1`` (rows ``r0, r1``) and ``v1 + 4 lo`` (rows ``r2, r3``), then those at ``v2``
    (rows ``r0, r2``) and ``v2 + 4 lo`` (rows ``r1, r3``).  Each row is loaded and
    stored once.  ``unit1`` / ``unit2``: the factor's left columns hold ones
    (`_tile_pair`); a unit second factor after a full first one is applied in full
    (the ones multiplied: a rare mix not worth a fourth loop)."""
    a00, a01, a10, a11 = packed[v1], packed[v1 + 1], packed[v1 + 2], packed[v1 + 3]
    v = v1 + 4 * lo
    b00, b01, b10, b11 = packed[v], packed[v + 1], packed[v + 2], packed[v + 3]
    c00, c01, c10, c11 = packed[v2], packed[v2 + 1], packed[v2 + 2], packed[v2 + 3]
    v = v2 + 4 * lo
    e00, e01, e10, e11 = packed[v], packed[v + 1], packed[v + 2], packed[v + 3]
    if tile.shape[1] == 2 and unit1 and unit2:
        for c in range(w):
            x0r, x0i = tile[r0, 0, c], tile[r0, 1, c]
            x1r, x1i = tile[r1, 0, c], tile[r1, 1, c]
            x2r, x2i = tile[r2, 0, c], tile[r2, 1, c]
            x3r, x3i = tile[r3, 0, c], tile[r3, 1, c]
            y0r, y0i = _cunit(a01.real, a01.imag, x0r, x0i, x1r, x1i)
            y1r, y1i = _cunit(a11.real, a11.imag, x0r, x0i, x1r, x1i)
            y2r, y2i = _cunit(b01.real, b01.imag, x2r, x2i, x3r, x3i)
            y3r, y3i = _cunit(b11.real, b11.imag, x2r, x2i, x3r, x3i)
            tile[r0, 0, c], tile[r0, 1, c] = _cunit(c01.real, c01.imag, y0r, y0i, y2r, y2i)
            tile[r2, 0, c], tile[r2, 1, c] = _cunit(c11.real, c11.imag, y0r, y0i, y2r, y2i)
            tile[r1, 0, c], tile[r1, 1, c] = _cunit(e01.real, e01.imag, y1r, y1i, y3r, y3i)
            tile[r3, 0, c], tile[r3, 1, c] = _cunit(e11.real, e11.imag, y1r, y1i, y3r, y3i)
    elif tile.shape[1] == 2 and unit1:
        for c in range(w):
            x0r, x0i = tile[r0, 0, c], tile[r0, 1, c]
            x1r, x1i = tile[r1, 0, c], tile[r1, 1, c]
            x2r, x2i = tile[r2, 0, c], tile[r2, 1, c]
            x3r, x3i = tile[r3, 0, c], tile[r3, 1, c]
            y0r, y0i = _cunit(a01.real, a01.imag, x0r, x0i, x1r, x1i)
            y1r, y1i = _cunit(a11.real, a11.imag, x0r, x0i, x1r, x1i)
            y2r, y2i = _cunit(b01.real, b01.imag, x2r, x2i, x3r, x3i)
            y3r, y3i = _cunit(b11.real, b11.imag, x2r, x2i, x3r, x3i)
            tile[r0, 0, c], tile[r0, 1, c] = _cpair(c00.real, c00.imag, c01.real, c01.imag,
                                                    y0r, y0i, y2r, y2i)
            tile[r2, 0, c], tile[r2, 1, c] = _cpair(c10.real, c10.imag, c11.real, c11.imag,
                                                    y0r, y0i, y2r, y2i)
            tile[r1, 0, c], tile[r1, 1, c] = _cpair(e00.real, e00.imag, e01.real, e01.imag,
                                                    y1r, y1i, y3r, y3i)
            tile[r3, 0, c], tile[r3, 1, c] = _cpair(e10.real, e10.imag, e11.real, e11.imag,
                                                    y1r, y1i, y3r, y3i)
    elif tile.shape[1] == 2:
        for c in range(w):
            x0r, x0i = tile[r0, 0, c], tile[r0, 1, c]
            x1r, x1i = tile[r1, 0, c], tile[r1, 1, c]
            x2r, x2i = tile[r2, 0, c], tile[r2, 1, c]
            x3r, x3i = tile[r3, 0, c], tile[r3, 1, c]
            y0r, y0i = _cpair(a00.real, a00.imag, a01.real, a01.imag, x0r, x0i, x1r, x1i)
            y1r, y1i = _cpair(a10.real, a10.imag, a11.real, a11.imag, x0r, x0i, x1r, x1i)
            y2r, y2i = _cpair(b00.real, b00.imag, b01.real, b01.imag, x2r, x2i, x3r, x3i)
            y3r, y3i = _cpair(b10.real, b10.imag, b11.real, b11.imag, x2r, x2i, x3r, x3i)
            tile[r0, 0, c], tile[r0, 1, c] = _cpair(c00.real, c00.imag, c01.real, c01.imag,
                                                    y0r, y0i, y2r, y2i)
            tile[r2, 0, c], tile[r2, 1, c] = _cpair(c10.real, c10.imag, c11.real, c11.imag,
                                                    y0r, y0i, y2r, y2i)
            tile[r1, 0, c], tile[r1, 1, c] = _cpair(e00.real, e00.imag, e01.real, e01.imag,
                                                    y1r, y1i, y3r, y3i)
            tile[r3, 0, c], tile[r3, 1, c] = _cpair(e10.real, e10.imag, e11.real, e11.imag,
                                                    y1r, y1i, y3r, y3i)
    elif unit1 and unit2:
        for c in range(w):
            x0, x1 = tile[r0, 0, c], tile[r1, 0, c]
            x2, x3 = tile[r2, 0, c], tile[r3, 0, c]
            y0 = x0 + a01.real * x1
            y1 = x0 + a11.real * x1
            y2 = x2 + b01.real * x3
            y3 = x2 + b11.real * x3
            tile[r0, 0, c] = y0 + c01.real * y2
            tile[r2, 0, c] = y0 + c11.real * y2
            tile[r1, 0, c] = y1 + e01.real * y3
            tile[r3, 0, c] = y1 + e11.real * y3
    elif unit1:
        for c in range(w):
            x0, x1 = tile[r0, 0, c], tile[r1, 0, c]
            x2, x3 = tile[r2, 0, c], tile[r3, 0, c]
            y0 = x0 + a01.real * x1
            y1 = x0 + a11.real * x1
            y2 = x2 + b01.real * x3
            y3 = x2 + b11.real * x3
            tile[r0, 0, c] = c00.real * y0 + c01.real * y2
            tile[r2, 0, c] = c10.real * y0 + c11.real * y2
            tile[r1, 0, c] = e00.real * y1 + e01.real * y3
            tile[r3, 0, c] = e10.real * y1 + e11.real * y3
    else:
        for c in range(w):
            x0, x1 = tile[r0, 0, c], tile[r1, 0, c]
            x2, x3 = tile[r2, 0, c], tile[r3, 0, c]
            y0 = a00.real * x0 + a01.real * x1
            y1 = a10.real * x0 + a11.real * x1
            y2 = b00.real * x2 + b01.real * x3
            y3 = b10.real * x2 + b11.real * x3
            tile[r0, 0, c] = c00.real * y0 + c01.real * y2
            tile[r2, 0, c] = c10.real * y0 + c11.real * y2
            tile[r1, 0, c] = e00.real * y1 + e01.real * y3
            tile[r3, 0, c] = e10.real * y1 + e11.real * y3


# The two-factor passes: ``d1`` first, then ``d2``, one of them twice the other.  Group
# ``g lo + t`` (``lo = min(d1, d2)``, ``t < lo``) is the rows ``r, r + d1, r + d2,
# r + d1 + d2`` with ``r = 4 g lo + t``, closed under both factors; the first block of
# either factor in it is ``(i, t) = (2 g, t)`` with ``d = lo`` or ``(g, t)`` with
# ``d = 2 lo``: index ``2 g lo + t`` both ways, and the second one is ``lo`` later.


@_kernel(fastmath={"contract"})
def _tile_pairs4(packed, d1, o1, d2, o2, unit1, unit2, tile, w, start, stop):
    """Two factors on groups ``start .. stop`` of the tile in one pass, in place."""
    lo = min(d1, d2)
    g, t = _first_item(start, lo)
    for _ in range(start, stop):
        r0 = 4 * g * lo + t
        k = 4 * (2 * g * lo + t)
        _tile_quad(packed, o1 + k, o2 + k, lo, unit1, unit2, tile, r0, r0 + d1, r0 + d2,
                   r0 + d1 + d2, w)
        t += 1
        if t == lo:
            t = 0
            g += 1


@_kernel(fastmath={"contract"})
def _tile_first4(packed, d1, o1, d2, o2, unit1, unit2, x, gather, c0, w, tile, start,
                 stop):
    """`_tile_first` for the first two factors at once (groups ``start .. stop``)."""
    lo = min(d1, d2)
    g, t = _first_item(start, lo)
    for _ in range(start, stop):
        r0 = 4 * g * lo + t
        r1 = r0 + d1
        r2 = r0 + d2
        r3 = r1 + d2
        _tile_load_row(x, gather[r0] if gather.shape[0] > 0 else r0, c0, w, tile, r0)
        _tile_load_row(x, gather[r1] if gather.shape[0] > 0 else r1, c0, w, tile, r1)
        _tile_load_row(x, gather[r2] if gather.shape[0] > 0 else r2, c0, w, tile, r2)
        _tile_load_row(x, gather[r3] if gather.shape[0] > 0 else r3, c0, w, tile, r3)
        k = 4 * (2 * g * lo + t)
        _tile_quad(packed, o1 + k, o2 + k, lo, unit1, unit2, tile, r0, r1, r2, r3, w)
        t += 1
        if t == lo:
            t = 0
            g += 1


@_kernel(fastmath={"contract"})
def _tile_last4(packed, d1, o1, d2, o2, unit1, unit2, tile, w, out, scatter, c0, start,
                stop):
    """`_tile_last` for the last two factors at once (groups ``start .. stop``)."""
    lo = min(d1, d2)
    g, t = _first_item(start, lo)
    for _ in range(start, stop):
        r0 = 4 * g * lo + t
        r1 = r0 + d1
        r2 = r0 + d2
        r3 = r1 + d2
        k = 4 * (2 * g * lo + t)
        _tile_quad(packed, o1 + k, o2 + k, lo, unit1, unit2, tile, r0, r1, r2, r3, w)
        _tile_store_row(tile, r0, w, out, scatter[r0] if scatter.shape[0] > 0 else r0, c0)
        _tile_store_row(tile, r1, w, out, scatter[r1] if scatter.shape[0] > 0 else r1, c0)
        _tile_store_row(tile, r2, w, out, scatter[r2] if scatter.shape[0] > 0 else r2, c0)
        _tile_store_row(tile, r3, w, out, scatter[r3] if scatter.shape[0] > 0 else r3, c0)
        t += 1
        if t == lo:
            t = 0
            g += 1


# Kinds of pass in a tile plan (`_tile_passes`).
_FIRST, _FIRST4, _PAIRS2, _PAIRS4, _LAST, _LAST4, _STORE = 0, 1, 2, 3, 4, 5, 6


@_kernel(inline="always")
def _fusable(steps, s):
    """Whether steps ``s`` and ``s + 1`` can share a pass (`_tile_quad`)."""
    d1 = steps[s, 1]
    d2 = steps[s + 1, 1]
    return d2 == 2 * d1 or d1 == 2 * d2


@_kernel()
def _tile_passes(steps, fuse, fuse_ends):
    """The passes over a tile, as ``(kind, first step)`` rows: the first factor(s) with
    the load, the middle ones in place, the last one(s) with the store.  ``fuse`` lets
    the middle factors go two per pass, ``fuse_ends`` the first two and the last two."""
    n_steps = steps.shape[0]
    passes = np.empty((n_steps + 1, 2), dtype=np.int64)
    if n_steps == 1:
        passes[0, 0], passes[0, 1] = _FIRST, 0
        passes[1, 0], passes[1, 1] = _STORE, 0
        return passes
    head = 2 if fuse_ends and n_steps >= 3 and _fusable(steps, 0) else 1
    tail = 2 if fuse_ends and n_steps - 2 >= head and _fusable(steps, n_steps - 2) else 1
    passes[0, 0], passes[0, 1] = (_FIRST4 if head == 2 else _FIRST), 0
    count = 1
    s = head
    while s < n_steps - tail:
        if fuse and s + 1 < n_steps - tail and _fusable(steps, s):
            passes[count, 0], passes[count, 1] = _PAIRS4, s
            s += 2
        else:
            passes[count, 0], passes[count, 1] = _PAIRS2, s
            s += 1
        count += 1
    passes[count, 0], passes[count, 1] = (_LAST4 if tail == 2 else _LAST), n_steps - tail
    return passes[:count + 1]


@_kernel(fastmath={"contract"})
def _tile_pass(kind, s, packed, steps, gather, scatter, x, out, tile, c0, w, part, n_parts):
    """Share ``part`` of ``n_parts`` of one pass (`_tile_passes`) over the tile."""
    n = tile.shape[0]
    d1 = steps[s, 1]
    o1 = steps[s, 2]
    # (steps without the unit column: plain blocks)
    unit1 = steps.shape[1] > 3 and steps[s, 3] != 0
    # pairs (n / 2 per factor), groups of four rows (n / 4) or rows (n) in this share
    if kind == _STORE:
        items = n
    elif kind == _FIRST4 or kind == _PAIRS4 or kind == _LAST4:
        items = n // 4
    else:
        items = n // 2
    start = items * part // n_parts
    stop = items * (part + 1) // n_parts
    if kind == _FIRST:
        _tile_first(packed, d1, o1, unit1, x, gather, c0, w, tile, start, stop)
    elif kind == _PAIRS2:
        _tile_pairs2(packed, d1, o1, unit1, tile, w, start, stop)
    elif kind == _LAST:
        _tile_last(packed, d1, o1, unit1, tile, w, out, scatter, c0, start, stop)
    elif kind == _STORE:
        _tile_store(tile, w, out, scatter, c0, start, stop)
    else:
        d2 = steps[s + 1, 1]
        o2 = steps[s + 1, 2]
        unit2 = steps.shape[1] > 3 and steps[s + 1, 3] != 0
        if kind == _FIRST4:
            _tile_first4(packed, d1, o1, d2, o2, unit1, unit2, x, gather, c0, w, tile,
                         start, stop)
        elif kind == _PAIRS4:
            _tile_pairs4(packed, d1, o1, d2, o2, unit1, unit2, tile, w, start, stop)
        else:
            _tile_last4(packed, d1, o1, d2, o2, unit1, unit2, tile, w, out, scatter, c0,
                        start, stop)


@_kernel()
def _pass_keeps_row_slices(kind, s, steps, n, n_parts):
    """Whether share ``part`` of pass ``(kind, s)`` (`_tile_pass`) is exactly rows
    ``part * n / n_parts ..`` of the tile for every ``part``: then a thread can run
    consecutive such passes on its rows without waiting for the others.  It is when
    the pass's blocks of rows (``2 d`` rows for one factor, ``4 lo`` for two) come in a
    number that ``n_parts`` divides."""
    if kind == _STORE:
        return n % n_parts == 0
    if kind == _FIRST4 or kind == _PAIRS4 or kind == _LAST4:
        span = 4 * min(steps[s, 1], steps[s + 1, 1])
    else:
        span = 2 * steps[s, 1]
    return n % (span * n_parts) == 0


def _apply_pairs_tiles_py(packed, steps, gather, scatter, x, out, tiles, fuse, fuse_ends,
                          n_parts):
    """``out = P_out K_{steps[-1]} ⋯ K_{steps[0]} P_in x`` for a block of vectors, tile
    by tile.

    ``x`` and ``out`` are C-ordered real ``(n, planes * m)`` arrays (a complex block
    viewed as real: ``planes = 2``); ``tiles`` is ``(n_tiles, n, planes, width)`` with
    ``n_tiles * width >= m``; ``gather`` and ``scatter`` as in `_apply_pairs_py`;
    ``fuse`` and ``fuse_ends`` as in `_tile_passes`.  In the ``parallel=True`` build
    the threads share the tiles (``n_parts = 1``: no barrier at all), or else every
    pass in ``n_parts`` slices of rows: full-width tiles, which keep the innermost
    loops long when there are fewer tiles than threads, at the cost of a barrier
    between passes that do not keep the same row slices (`_pass_keeps_row_slices`):
    passes of factors with ``2 d <= n / n_parts`` run back to back, so a chain of
    factors with ``d = 1, 2, 4, ..`` has a single barrier, before its last pass.
    """
    n_tiles, _, planes, width = tiles.shape
    m = x.shape[1] // planes
    passes = _tile_passes(steps, fuse, fuse_ends)
    if n_parts == 1:
        for q in prange(n_tiles):
            c0 = q * width
            w = min(width, m - c0)
            if w > 0:
                for p in range(passes.shape[0]):
                    _tile_pass(passes[p, 0], passes[p, 1], packed, steps, gather, scatter,
                               x, out, tiles[q], c0, w, 0, 1)
    else:
        n = tiles.shape[1]
        n_passes = passes.shape[0]
        first = 0
        while first < n_passes:  # one parallel region per run of passes
            stop = first + 1
            if _pass_keeps_row_slices(passes[first, 0], passes[first, 1], steps, n, n_parts):
                while stop < n_passes and _pass_keeps_row_slices(
                        passes[stop, 0], passes[stop, 1], steps, n, n_parts):
                    stop += 1
            for part in prange(n_parts):
                for q in range(n_tiles):
                    c0 = q * width
                    w = min(width, m - c0)
                    if w > 0:
                        for p in range(first, stop):
                            _tile_pass(passes[p, 0], passes[p, 1], packed, steps, gather,
                                       scatter, x, out, tiles[q], c0, w, part, n_parts)
            first = stop


def pairs_tiles_shape(n: int, m: int, planes: int, threads: int = 1) -> tuple:
    """Shape of the ``tiles`` scratch array of `apply_pairs_tiles` for ``m`` columns of
    ``n`` rows: as few tiles as hold at most `PAIRS_TILE_COLUMNS` columns each, in a
    number that ``threads`` share evenly (when there are that many columns)."""
    n_tiles = max(1, -(-m // PAIRS_TILE_COLUMNS))
    n_tiles = max(1, min(m, threads * -(-n_tiles // threads)))
    return (n_tiles, n, planes, -(-m // n_tiles))


# Per Python thread, the last tiles scratch array of each dtype, reused while big
# enough: a fresh multi-megabyte array costs its page faults on every product (4 MB:
# about as long as the product itself here).  Arrays above the cap are not kept.
_TILES_SCRATCH = threading.local()
PAIRS_SCRATCH_MAX_BYTES = 64 << 20


def pairs_tiles_scratch(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype`` for the ``tiles`` argument of
    `apply_pairs_tiles`, reusing this Python thread's previous one when it is large
    enough (the kernels run synchronously, so a thread never uses it twice at once)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    cache = getattr(_TILES_SCRATCH, "arrays", None)
    if cache is None:
        cache = _TILES_SCRATCH.arrays = {}
    buffer = cache.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        if buffer.nbytes <= PAIRS_SCRATCH_MAX_BYTES:
            cache[dtype] = buffer
    return buffer[:size].reshape(shape)


def unit_pivot_plan(packed, steps, n):
    """The pair-order plan ``(packed, steps)`` of a chain of ``n × n`` factors rewritten
    with ones in the left column of every block but the last factor's, where it can be
    done safely; ``steps`` gains a fourth column, 1 for such unit-pivot factors.

    A block whose left column ``(p, r)`` has no zero is ``diag(p, r) [[1, q/p],
    [1, s/r]]``, and the diagonal, a scaling of the two outputs, moves into the next
    factor as a scaling of the two columns that read them: the product is unchanged.
    Its outputs ``x0 + (q/p) x1`` and ``x0 + (s/r) x1`` then take half the
    multiply-adds of ``p x0 + q x1`` and ``r x0 + s x1`` (`_tile_pair`, `_tile_quad`):
    four FMAs per complex pair instead of eight, the FFT's count of arithmetic.  The
    rounding bound is the same: the error of ``x0 + (q/p) x1`` is ``eps (|x0| +
    |(q/p) x1|)``, and times ``p`` that is the bound of ``p x0 + q x1``.

    A factor with a zero (or non-finite) pivot, or whose ratios overflow, is left as it
    is and passes no diagonal on.  The carried scales are products of pivots along the
    chain; if one would leave the normal range (overflow, or an underflow that loses
    digits) the whole plan is returned unchanged.  ``packed`` is not modified.
    """
    steps4 = np.zeros((steps.shape[0], 4), dtype=np.int64)
    steps4[:, :3] = steps[:, :3]
    unchanged = (packed, steps4.copy())
    out = packed.copy()
    tiny = np.finfo(packed.dtype).tiny
    carried = None  # the diagonal owed to the next factor's inputs (None: identity)
    for s in range(steps.shape[0]):
        a, d, offset = int(steps[s, 0]), int(steps[s, 1]), int(steps[s, 2])
        if 2 * a * d != n:
            return unchanged
        # (i, t, row, column): column k of block (i, t) reads input 2 i d + k d + t,
        # row j writes output 2 i d + j d + t.
        blocks = out[offset:offset + 4 * a * d].reshape(a, d, 2, 2)
        if carried is not None:
            with np.errstate(all="ignore"):  # (overflow is checked for just below)
                scaled = blocks * carried.reshape(a, 2, d).transpose(0, 2, 1)[:, :, None, :]
            nonzero = blocks != 0
            if not (np.all(np.isfinite(scaled))
                    and np.all(np.abs(scaled[nonzero]) >= tiny)):
                return unchanged
            blocks[...] = scaled
            carried = None
        if s == steps.shape[0] - 1:
            break
        pivots = blocks[:, :, :, 0].copy()
        with np.errstate(all="ignore"):
            ratios = blocks[:, :, :, 1] / pivots
        magnitudes = np.abs(pivots)
        if not (np.all(magnitudes >= tiny) and np.all(np.isfinite(magnitudes))
                and np.all(np.isfinite(ratios))):
            continue
        blocks[:, :, :, 0] = 1
        blocks[:, :, :, 1] = ratios
        carried = pivots.transpose(0, 2, 1).reshape(n)
        steps4[s, 3] = 1
    return out, steps4


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

    def specialize(self, *arguments):
        """The kernel, compiled (with SLP) for arguments of these types, as a callable
        without the check of ``__call__``: for a caller that passes arrays of exactly
        these types on every call (a hot path where that check costs a measurable part
        of a microsecond product)."""
        if arguments[0].dtype not in self._compiled and hasattr(self._dispatcher, "compile"):
            self._compile(*arguments)
        return self._dispatcher

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
apply_pairs_vec = _SuperwordKernel(_jit(_apply_pairs_vec_py))
# (fastmath: see the section comment above `PAIRS_TILE_COLUMNS`)
apply_pairs_tiles = _SuperwordKernel(
    _jit(_apply_pairs_tiles_py, "_serial", fastmath={"contract"}))
apply_pairs_tiles_parallel = _SuperwordKernel(
    _jit(_apply_pairs_tiles_py, "_parallel", parallel=True, fastmath={"contract"}))


def apply_pairs_mat(packed, steps, gather, scatter, x, out, work):
    """`apply_pairs` for C-ordered ``x`` and ``out`` of shape ``(n, m)`` and the dtype
    of ``packed``: `apply_pairs_tiles` on one tile, serial.  ``work`` is a C-ordered
    scratch array of ``x.dtype`` with at least ``n * m`` elements (e.g. ``(2, n, m)``)."""
    n, m = x.shape
    real = np.dtype(x.dtype.char.lower())
    planes = 2 if x.dtype.kind == "c" else 1
    tiles = work.reshape(-1).view(real)[: n * planes * m].reshape(1, n, planes, m)
    apply_pairs_tiles(packed, steps, gather, scatter, x.view(real), out.view(real), tiles,
                      False, False, 1)
