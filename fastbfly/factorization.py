"""The hierarchical butterfly factorization."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from . import _errors, _kernels
from .butterfly import SUPPORTED_DTYPES, Butterfly, Factor
from .patterns import Chain, Pattern
from .permutations import bit_reversal_permutation, dao_permutations, validate_permutation
from .trees import Node, build_tree

__all__ = ["factorize"]

# Node sizes (stored values) from which the split kernels, rank one or r, run in
# parallel.  A parallel region stalls for milliseconds whenever another process holds
# the second core (its thread waits for a time slice, and the region for it), which on
# a shared 2-core machine is most of the time: at load 4 the threaded root of
# 256 x 256 took 12 ms against 0.9 ms serial, 768 x 3072 rank one 36 against 25 ms
# (benchmarks/general_shapes.py part b).  Even the "idle" runs (load 0.3-1.7) of
# docs/performance.md and docs/general_shapes.md were slower threaded than the serial
# kernels' CPU time: DFT N = 1024 left-to-right 17.5 ms against 12.8 ms, 768 x 3072
# left-to-right 13.9 against 8.4 ms, 1024 x 1024 (10 factors) 9.5 against 5.5 ms.
# Noise-like blocks (random weights), which made two threads pay off from about 2M
# values, are now solved serially in a fraction of the time (the rank-one kernel's Gram
# continuation, `fastbfly._kernels._top_pair`): 768 x 3072 float32 random weights with
# 2-4 factors took 27-55 ms serially at load 2-3, against 71-112 ms threaded from
# 1 << 16 values before it (docs/general_shapes.md).
SPLIT_PARALLEL_MIN_NODE_SIZE = 1 << 22
# Blocks are handed out in this many chunks per thread (load balance vs. overhead).
CHUNKS_PER_THREAD = 4
# Bytes of the panel into which each task gathers the rows its blocks share, where the
# columns are permuted.  A row group that fits is staged row by row (each row copied
# whole, then permuted from L2); larger ones are gathered in panels of this size with
# every block's columns read in increasing order (`fastbfly._kernels._sorted_gather`),
# four rows at a time.  Measured (root split of a DFT with ``perm="bitrev"``, N = 8192,
# 128 x 64 blocks, 1 thread CPU time, median of 5): at load 2.2-3, complex128 368 ms
# staged (32 MB) against 282 ms with 4 MB panels, complex64 247 against 197 ms; but at
# load 4.5 (memory shared with other processes) 380-470 against 360-475 ms and 242-252
# against 331 ms.  (Before sorted reads, 256 kB panels took N = 4096 from 113 to 180
# ms; sorted, 76 ms complex128 and 54 ms complex64 against 61 and 44 staged.)  The
# whole factorization of that DFT, the two sizes alternating in one process (medians
# of 5, session 8), 32 MB staged against 4 MB sorted: idle machine, complex128 384 /
# 318 ms on 1 thread and 220 / 181 ms on 2, complex64 273 / 229 and 159 / 129 ms;
# beside a process streaming through 128 MB, 716 / 732 ms on 1 thread and 494 / 417 ms
# on 2.  Two threads' 16 MB panels fill the 32 MB L3 between them; 4 MB panels leave
# it room, at every thread count.
PANEL_BYTES = 1 << 22
# The same where the columns are read in order (no permutation to stage whole rows for):
# a panel that stays in the L2 cache (1 MB per core here) is solved from there instead of
# from L3.  Measured (median of 5, load 0.7): 768 x 3072 balanced, 192 x 16 blocks,
# 12.1 ms with 32 MB panels, 8.7 ms with 256 kB; Hadamard N = 4096 60 / 55 ms balanced,
# 104 / 92 ms left-to-right.  With the gather reading four rows at a time (Hadamard
# N = 8192 root, load 3): float64 104 / 93 / 90 / 87 ms with 128 kB / 256 kB / 512 kB /
# 1 MB panels, float32 65 / 67 / 62 / 72 ms: no better size than 256 kB within noise.
IN_ORDER_PANEL_BYTES = 1 << 18
# Matrices of this many entries have their permutation candidates factorized in
# parallel threads (see `_candidate_workers`): from N = 256 (measured on 2 cores,
# "auto" on a noisy DFT: 1.6x faster at N = 256, 1.1x at 512, a loss below 256) up to
# the size where the root splits' own threaded kernels take over both cores.
PARALLEL_CANDIDATES_MIN_SIZE = 1 << 16
PARALLEL_CANDIDATES_MAX_SIZE = SPLIT_PARALLEL_MIN_NODE_SIZE
# Relative errors closer than this are a tie between permutation candidates.
CANDIDATE_TIE = 1e-12
# Bytes of the rank-r kernel's panel of consecutive blocks (kept within the L2 cache).
RANK_PANEL_BYTES = 1 << 18


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
        A `numpy.memmap`, zarr array, h5py dataset, Dask array (any object with
        ``shape``, a NumPy ``dtype`` and 2-D slicing) or `fastbfly.FunctionMatrix` is
        streamed instead: the root split reads it in row groups, ``O(N^1.5)`` values in
        memory for the balanced tree (:func:`fastbfly.sources.factorize_source`; Dask
        arrays run on Dask, see :mod:`fastbfly.distributed`).
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
        :func:`fastbfly.dao_permutations`) and ``"auto"`` (the same eight,
        which include the identity and the bit reversal, labelled ``"identity"`` and
        ``"bitrev"``; sizes that are not powers of two only have the identity).  With
        several candidates each is factorized and the one with the smallest error is
        kept (ties within ``1e-12`` go to the earlier candidate); every candidate's
        error is in ``B.info["candidates"]``.  For ``2**16`` to ``2**18`` entries, with
        two or more Numba threads and no ``progress`` callback, the column candidates
        run in parallel threads (one candidate per thread, each with serial kernels;
        measured on 2 cores: 1.6 times faster for ``"auto"`` at ``N = 256``, 1.1 at
        512; at 1024-2048 the threaded kernels of each candidate already use both
        cores and parallel candidates gain nothing, so they run in turn).
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
        ``B.info`` holds ``"relative_error"``: ``‖Z − X_1⋯X_L‖_F / ‖Z‖_F`` for
        ``Z = matrix[row_perm][:, perm]`` (zero-padded with ``pad``), exact to rounding
        for every tree.  With ``orthonormalize`` on and the ``"left-to-right"`` tree
        (and for one or two factors) every split's error adds orthogonally, so it is
        the root-sum-square of the splits' residuals, free; for other trees that sum is
        off by up to a few percent, so the product's error is measured instead, in one
        extra pass over the matrix (19-33 % of a balanced factorization).  That pass runs
        on the first read of ``B.info["relative_error"]`` (or of anything that reads
        every value: ``items()``, ``repr``, ``dict(B.info)``, ``json.dumps``, pickling),
        not in `factorize`, when nothing else needs it: a single permutation candidate
        and the caller's own array factorized as it is (no dtype conversion, padding,
        ``row_perm`` or scaling copy; otherwise it runs at once).  Until then ``B``
        keeps a reference to the matrix (no copy), and a checksum taken in the pass
        that checks the matrix's scale makes the first read raise `RuntimeError` if the
        matrix was modified in place in between: read the error first, or factorize a
        copy.  ``B.info`` is still a ``dict``.  Also ``"tree"``,
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
    from . import sources

    if sources.is_source(matrix):  # memmap, zarr, h5py, Dask, FunctionMatrix: streamed
        return sources.factorize_source(
            matrix, chain=chain, n_factors=n_factors, rank=rank, tree=tree, perm=perm,
            row_perm=row_perm, orthonormalize=orthonormalize, pad=pad,
            memory_limit=memory_limit, progress=progress)
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
    column_candidates = _perm_candidates(perm, n, padded[1], "perm")
    row_candidates = _perm_candidates(row_perm, m, padded[0], "row_perm")
    background = _scan_in_background(matrix, padded, column_candidates, row_candidates)
    if background is None:
        biggest, fingerprint = _scan(matrix)
        scale = _scale_exponent(biggest, matrix.dtype)
    else:
        scale = 0  # (checked once the scan is done; a rare scaled matrix starts again)
    copies += scale != 0
    _check_memory(plan, matrix.dtype, padded, copies, memory_limit)
    if scale:
        matrix = _ldexp(matrix, -scale)
    if padded != (m, n):
        grown = np.zeros(padded, dtype=matrix.dtype)
        grown[:m, :n] = matrix
        matrix = grown
    # Where the splits' residual sum is not the product's error, measuring it costs one
    # more pass over the matrix (19-33 % of a balanced factorization).  With a single
    # candidate (no choice depends on it) and the caller's own array (nothing private
    # to keep alive), that pass waits for the first read of B.info["relative_error"].
    deferred = (len(column_candidates) * len(row_candidates) == 1 and copies == 0
                and not _residual_sum_is_exact(root, orthonormalize, chain))

    best = None
    tried = []
    for row_label, rows in row_candidates:
        permuted = matrix if rows is None else matrix[rows]  # one row copy at a time
        results = _run_candidates(permuted, chain, root, plan, column_candidates, orthonormalize,
                                  progress, measure=not deferred,
                                  after_root=None if background is None else background.start)
        for (column_label, columns), (factors, error) in zip(column_candidates, results):
            tried.append({"row_perm": row_label, "perm": column_label, "relative_error": error})
            # Ties within rounding go to the earlier candidate, so the choice does not
            # depend on the last bits (the DFT is exact with two of the eight "auto" ones).
            if best is None or error < best[0] - CANDIDATE_TIE:
                best = (error, factors, rows, columns, row_label, column_label)
    error, factors, rows, columns, row_label, column_label = best
    if background is not None:
        biggest, fingerprint = background.result()
        if _scale_exponent(biggest, matrix.dtype):
            # Entries near the ends of the floating-point range: factorize the matrix
            # again the safe way, scaled first (`_scan_in_background` is not used then).
            _SCAN_FIRST.forced = True
            try:
                return factorize(original, chain=chain, n_factors=n_factors, rank=rank,
                                 tree=tree, perm=perm, row_perm=row_perm,
                                 orthonormalize=orthonormalize, pad=pad,
                                 memory_limit=memory_limit, progress=progress)
            finally:
                _SCAN_FIRST.forced = False
    if scale:  # undo the scaling, spread evenly over the factors
        shares = [scale * (l + 1) // len(factors) - scale * l // len(factors) for l in range(len(factors))]
        factors = [Factor(f.pattern, _ldexp(f.values, share)) for f, share in zip(factors, shares)]
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
    B = Butterfly(factors, perm=columns, row_perm=rows, info=info, shape=(m, n))
    if deferred:
        measure = _DeferredError(matrix, fingerprint, chain, B.factors, B.perm)
        B.info = _LazyInfo(info, {"relative_error": measure})
        B.info["candidates"] = [_LazyInfo(tried[0], {"relative_error": measure})]
    return B


def _run_candidates(permuted, chain, root, plan, candidates, orthonormalize, progress,
                    measure=True, after_root=None) -> list:
    """Factorize ``permuted[:, columns]`` for every ``(label, columns)`` candidate:
    ``[(factors, relative error), ...]`` in the candidates' order.

    The error is exact (to rounding): the residual sum of `_hierarchical` where it is
    exact (`_residual_sum_is_exact`), else, with ``measure``, one pass over the matrix
    (`_exact_relative_error`; without it, the residual sum is returned and the caller
    measures later).  Several candidates run in parallel threads, each with Numba's
    serial kernels (`_candidate_workers` says when); the results, including the bits of
    the errors, depend only on the sizes and the thread count.  ``after_root``: see
    `_hierarchical` (a single candidate only).
    """
    exact_sum = _residual_sum_is_exact(root, orthonormalize, chain)

    def solve(columns):
        factors, error = _hierarchical(permuted, chain, root, plan, columns, orthonormalize,
                                       progress, after_root=after_root)
        if measure and not exact_sum:
            error = _exact_relative_error(permuted, chain, factors, columns)
        return factors, error

    workers = _candidate_workers(len(candidates), permuted.size, progress)
    if after_root is not None and len(candidates) != 1:
        raise ValueError("after_root needs a single candidate")
    if workers <= 1:
        return [solve(columns) for _, columns in candidates]

    def solve_in_worker(columns):
        numba.set_num_threads(1)  # thread-local: this worker runs the serial kernels
        return solve(columns)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(solve_in_worker, [columns for _, columns in candidates]))


def _candidate_workers(n_candidates: int, size: int, progress) -> int:
    """Threads over which to spread the permutation candidates (1: one after another).

    Worth it between ``PARALLEL_CANDIDATES_MIN_SIZE`` and ``PARALLEL_CANDIDATES_MAX_SIZE``
    entries: the kernels release the GIL (``nogil``), and whole candidates in parallel
    keep both cores busy in nodes below ``SPLIT_PARALLEL_MIN_NODE_SIZE``, where the
    block kernels run serial; above, the root splits' threaded kernels already do.  Not
    with a ``progress`` callback (its calls would interleave, and ``KeyboardInterrupt``
    must stop the work), nor with Numba's ``workqueue`` threading layer (it aborts on
    concurrent use; a tiny parallel kernel is run first if no parallel kernel has picked
    the layer yet).
    """
    threads = numba.get_num_threads()
    if (n_candidates < 2 or threads < 2 or progress is not None
            or not PARALLEL_CANDIDATES_MIN_SIZE <= size < PARALLEL_CANDIDATES_MAX_SIZE):
        return 1
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process: one picks it
        _kernels.pick_threading_layer(np.empty(1, np.int64))
        layer = numba.threading_layer()
    if layer == "workqueue":
        return 1
    return min(threads, n_candidates)


def _residual_sum_is_exact(root: Node, orthonormalize: bool, chain: Chain) -> bool:
    """Whether the root-sum-square of the splits' residuals is the global error.

    True for one or two factors, and for the orthonormalised left-to-right tree, any
    rank: there every split peels a leaf off the left whose column groups are
    orthonormal (the ``r`` left singular vectors of each block), and every block's
    residual is orthogonal to them (the block kernels approximate a block ``M`` by the
    projection ``U Uᴴ M``), so the rest of the error is mapped isometrically and is
    orthogonal to the split's residual (DESIGN.md §4).  Measured against
    `_exact_relative_error` on noise: 1e-16 relative for rank 1-3 in double precision,
    1e-10 in single (the factors' rounding).  For other trees the errors of later
    splits pass through factors whose rows are not orthonormal and have cross terms with
    earlier residuals (measured: up to 3 % off for the balanced tree, 6e-5 for
    right-to-left).
    """
    if len(chain) <= 2:
        return True
    if not orthonormalize:
        return False
    node = root
    while not node.is_leaf:
        if not node.left.is_leaf:
            return False
        node = node.right
    return True


def _exact_relative_error(permuted, chain: Chain, factors, columns) -> float:
    """``‖permuted[:, columns] − X_1⋯X_L‖_F / ‖permuted‖_F`` in one pass over the matrix
    (see :func:`fastbfly._errors.product_errors`)."""
    norm, _, total = _errors.product_errors(permuted, chain, [f.values for f in factors], columns)
    return total / norm if norm > 0 else 0.0


class _DeferredError:
    """The exact relative error of a factorization, measured on first request.

    Keeps a reference to the caller's matrix (no copy) and the result's read-only
    factors and permutation until then, and the checksum of the matrix that `factorize`
    took with its scale check (`_scan`): the matrix modified in place before the error
    is read gives a `RuntimeError` instead of the error of another matrix.  Measured
    once (thread-safe); the references are dropped afterwards.
    """

    def __init__(self, matrix, checksum, chain, factors, columns):
        self._lock = threading.Lock()
        self._args = (matrix, chain, tuple(factors), columns)
        self._checksum = checksum
        self._value = None

    def __call__(self) -> float:
        with self._lock:
            if self._value is None:
                matrix, chain, factors, columns = self._args
                if _scan(matrix)[1] != self._checksum:
                    raise RuntimeError(
                        "the matrix given to fastbfly.factorize was modified in place before "
                        "B.info['relative_error'] was read, and that error is measured on "
                        "first read: read it before modifying the matrix (or factorize a "
                        "copy); fastbfly.compression_report(matrix, B) measures B against "
                        "the matrix as it is now"
                    )
                self._value = _exact_relative_error(matrix, chain, factors, columns)
                self._args = None  # the matrix may be freed now
            return self._value


class _LazyInfo(dict):
    """``B.info`` whose deferred entries are computed on their first read.

    A real ``dict`` (``isinstance``, ``json.dumps``, ``dict(info)``, ``{**info}``,
    pickling and ``copy`` all see the computed values): a deferred key holds a
    placeholder until ``info[key]``, ``get``, ``items``, ``values``, ``repr``, ``==``,
    ``pop``, a copy or pickling asks for it.  Setting or deleting the key cancels the
    deferred computation.
    """

    def __init__(self, values: dict, deferred: dict):
        super().__init__(values)
        self._deferred = dict(deferred)
        for key in deferred:
            dict.__setitem__(self, key, _PENDING)

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        if value is _PENDING:
            value = self._deferred[key]()  # computed once, also if two threads ask
            dict.__setitem__(self, key, value)
            self._deferred.pop(key, None)
        return value

    def _compute_all(self):
        for key in list(self._deferred):
            if key in self:
                self[key]

    def __iter__(self):  # a Python-level __iter__ makes dict(), {**x} use __getitem__
        return dict.__iter__(self)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        self._compute_all()
        return dict.items(self)

    def values(self):
        self._compute_all()
        return dict.values(self)

    def copy(self) -> dict:
        return dict(self)

    def pop(self, key, *default):
        if key in self:
            value = self[key]
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def popitem(self):
        self._compute_all()
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        if key in self:
            return self[key]
        dict.__setitem__(self, key, default)
        return default

    def __setitem__(self, key, value):
        self._deferred.pop(key, None)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self._deferred.pop(key, None)
        dict.__delitem__(self, key)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self):
        self._deferred.clear()
        dict.clear(self)

    def __or__(self, other):
        return dict(self) | other

    def __ror__(self, other):
        return other | dict(self)

    def __ior__(self, other):
        self.update(other)
        return self

    def __eq__(self, other):
        self._compute_all()
        if isinstance(other, _LazyInfo):
            other._compute_all()
        return dict.__eq__(self, other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self):
        self._compute_all()
        return dict.__repr__(self)

    def __reduce_ex__(self, protocol):  # pickle and copy: a plain dict of the values
        return dict, (dict(self),)


class _Pending:
    def __repr__(self):
        return "<computed on first read>"


_PENDING = _Pending()


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


def _scale_exponent(biggest: float, dtype) -> int:
    """``e`` such that `factorize` should work on ``matrix / 2**e`` (0: as it is), from
    the largest ``|real|`` or ``|imaginary|`` part ``biggest`` of the matrix (`_scan`).

    The block kernels scale every block exactly, but the values passed between tree
    levels (singular values of whole blocks, the column norms pushed right) are in the
    matrix's units: they overflow for entries near the largest float, and lose bits as
    subnormals for tiny ones.  Matrices whose largest entry is within a quarter of the
    exponent range of either end are therefore factorized scaled to ``[0.5, 1)``, and
    the power of two is given back to the factors.  NaN and Inf: 0 (refused later).
    """
    if not np.isfinite(biggest) or biggest == 0.0:
        return 0
    exponent = math.frexp(biggest)[1]
    limits = np.finfo(dtype)
    margin = limits.maxexp // 4
    if limits.minexp + margin <= exponent <= limits.maxexp - margin:
        return 0
    return exponent


# ``forced``: this thread's `factorize` is starting again on a matrix whose scale the
# background scan found out of range, and scans first (`_scan_in_background`).
_SCAN_FIRST = threading.local()


class _BackgroundScan:
    """`_scan` of a matrix in a thread of its own (the kernel releases the GIL)."""

    def __init__(self, matrix):
        self._matrix = matrix
        self._thread = None
        self._outcome = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fastbfly-scan", daemon=True)
            self._thread.start()

    def _run(self):
        try:
            self._outcome = (True, _scan(self._matrix))
        except BaseException as error:  # (handed to the caller of `result`)
            self._outcome = (False, error)

    def result(self) -> tuple[float, int]:
        """``_scan(matrix)``, waiting for the thread (started here if it was not)."""
        self.start()
        self._thread.join()
        done, value = self._outcome
        if not done:
            raise value
        self._matrix = None
        return value


def _scan_in_background(matrix, padded, column_candidates, row_candidates):
    """A `_BackgroundScan` of ``matrix`` for `factorize` to start after the root split,
    or None where the scan must come first.

    The scan is one pass over the matrix, memory-bound, that only the scale check and
    the deferred error's checksum need.  With two threads the root split is threaded
    but the smaller splits below it run serially, leaving a core idle: the scan runs
    there, in parallel with them, instead of before the root (DFT N = 8192
    complex128: 34 ms of the 0.30 s factorization).  Assumed in range meanwhile, the
    scale is checked when both are done, and a matrix near the ends of the
    floating-point range is factorized again, scaled first.  Only with Numba threads
    to spare (one thread means one core), a root large enough to be threaded (below it
    the scan is cheap), one candidate, and no ``row_perm`` or padding.  (``matrix`` is
    C-contiguous, from `_as_matrix`: `_scan` reads it in place.)"""
    if (getattr(_SCAN_FIRST, "forced", False) or numba.get_num_threads() < 2
            or matrix.size < SPLIT_PARALLEL_MIN_NODE_SIZE or padded != matrix.shape
            or len(column_candidates) != 1 or len(row_candidates) != 1
            or row_candidates[0][1] is not None):
        return None
    return _BackgroundScan(matrix)


def _scan(matrix: np.ndarray) -> tuple[float, int]:
    """One pass over the values of ``matrix`` (`fastbfly._kernels.scan`): ``(largest
    |real| or |imaginary| part, or NaN if any is NaN; checksum of the bit patterns)``,
    for the scale check and a deferred error measurement.  No temporary array, no
    overflow of ``|z|`` for complex entries near the largest float, and a third of the
    time of numpy's ``max`` and ``min`` (serial: it is memory-bound)."""
    if matrix.flags.f_contiguous and not matrix.flags.c_contiguous:
        matrix = matrix.T  # a view: same values, read in memory order
    flat = np.ascontiguousarray(matrix).reshape(-1)
    if flat.dtype.kind == "c":
        flat = flat.view(flat.real.dtype)
    unsigned = np.uint64 if flat.itemsize == 8 else np.uint32
    sign = unsigned(1) << unsigned(8 * flat.itemsize - 1)
    largest, checksum = _kernels.scan(flat.view(unsigned), ~sign)
    if largest > np.array(np.inf, dtype=flat.dtype).view(unsigned):
        return math.nan, int(checksum)
    return float(unsigned(largest).view(flat.dtype)), int(checksum)


def _ldexp(values: np.ndarray, exponent: int) -> np.ndarray:
    """A new array ``values * 2**exponent``, exact unless results are subnormal."""
    if values.dtype.kind != "c":
        return np.ldexp(values, exponent)
    out = np.empty_like(values)
    np.ldexp(values.real, exponent, out=out.real)
    np.ldexp(values.imag, exponent, out=out.imag)
    return out


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
        # "auto" names the two that have names of their own ("000" is the identity,
        # "001" the bit reversal: see dao_permutations)
        names = DAO_NAMES if label == "dao8" else ("identity", "bitrev") + DAO_NAMES[2:]
        return list(zip(names, dao_permutations(n)))
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


# Plans of recent (chain, tree, orthonormalize) triples: building one took 30 µs, 4 % of
# a 256 x 256 factorization.  Plans are read-only (frozen `_Split`s in a dict nobody
# modifies).
_PLANS: dict = {}
PLAN_CACHE_SIZE = 64


def _plan(chain: Chain, root: Node, orthonormalize: bool) -> dict:
    """Patterns and block sizes of every split of the tree, checked before any work
    (the same dict for the same chain, tree and ``orthonormalize``: do not modify)."""
    key = (chain, root.to_nested(), bool(orthonormalize))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _build_plan(chain, root, orthonormalize)
        if len(_PLANS) >= PLAN_CACHE_SIZE:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _build_plan(chain: Chain, root: Node, orthonormalize: bool) -> dict:
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
                  progress, root_split=None, after_root=None):
    """Factorize ``matrix[:, perm]`` on ``chain`` along the tree ``root``.

    ``root_split``, if given, replaces `_split` at the root (same arguments, node values
    ``None``; ``matrix`` then only needs ``shape`` and ``dtype``): the out-of-core path
    of :mod:`fastbfly.sources` streams the matrix there.  ``after_root``, if given, is
    called once the root is split (`_scan_in_background` starts there).

    Returns the factors (left-most first) and the relative error from the block
    residuals.
    """
    m, n = matrix.shape
    values = [None] * len(chain)  # final 4-D values of each factor, once known
    # squared norms in units of 4**exponent, as (value, exponent) pairs
    state = {"normalized": 0, "residuals": [], "splits": 0, "norm2": None}
    sigma_power = 1.0 if orthonormalize else 0.5
    pool = _NodePool(matrix.dtype)

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
        left = pool.take(tuple(split.left), node.left.is_leaf)
        right = pool.take(tuple(split.right), node.right.is_leaf)
        kernel = root_split if root_split is not None and node is root else _split
        # A left leaf with every factor left of it already normalized can take the
        # singular vectors themselves (σ**0 u) and the right side σ vᴴ: that is exactly
        # what pushing its column frames would produce, without the pass over the
        # right child it costs (the N²/2, N²/4, ... remainders of a left-to-right tree).
        orthonormal_leaf = orthonormalize and node.left.is_leaf and state["normalized"] == node.start
        power = 0.0 if orthonormal_leaf else sigma_power
        norm2, residual2, exponent, bad = kernel(node_values, columns, split, left, right, power)
        pool.release(node_values)  # split: its values are dead
        if orthonormal_leaf:
            state["normalized"] = node.start + 1
        if state["norm2"] is None:
            state["norm2"] = (norm2, exponent)
            if bad:
                _raise_not_finite(matrix)
            if after_root is not None:
                after_root()
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
    try:
        solve(None if root_split is not None else matrix.reshape(1, m, n, 1), root, columns)
    finally:
        # `solve` refers to itself, so its closure (and the pool) is only freed by the
        # cycle collector: drop the buffers now.
        pool.clear()
    norm2, norm_exponent = state["norm2"]
    relative2 = sum(math.ldexp(r, 2 * (e - norm_exponent)) for r, e in state["residuals"])
    error = math.sqrt(relative2 / norm2) if norm2 > 0 else 0.0
    return [Factor(p, v) for p, v in zip(chain, values)], error


class _NodePool:
    """Memory for the values of inner tree nodes, reused once a node has been split.

    A left-to-right tree splits off one factor at a time, leaving remainders of
    ``N²/2, N²/4, …`` values: with the pool they live in two buffers allocated once
    (ping-pong: a node's children cannot use its own buffer, its grandchildren can),
    instead of a fresh allocation per split, each of whose pages faults on first
    write, and all of them alive at once down the recursion.  Leaves become the
    factors and get memory of their own.
    """

    def __init__(self, dtype):
        self.dtype = dtype
        self.free = []  # 1-D buffers of dead nodes
        self.owners = {}  # id(node view) -> (node view, its buffer)

    def take(self, shape: tuple, leaf: bool) -> np.ndarray:
        size = math.prod(shape)
        if leaf:
            return np.empty(shape, dtype=self.dtype)
        fitting = [k for k, buffer in enumerate(self.free) if buffer.size >= size]
        if fitting:
            buffer = self.free.pop(min(fitting, key=lambda k: self.free[k].size))
        else:
            buffer = np.empty(size, dtype=self.dtype)
        view = buffer[:size].reshape(shape)
        self.owners[id(view)] = (view, buffer)
        return view

    def release(self, view) -> None:
        """Hand back the buffer of a node taken from the pool (anything else: no-op)."""
        entry = self.owners.pop(id(view), None)
        if entry is not None:
            self.free.append(entry[1])

    def clear(self) -> None:
        self.free.clear()
        self.owners.clear()


def estimate_memory(plan: dict, dtype, shape, input_copies: int) -> int:
    """Bytes a factorization allocates at most besides the caller's matrix: the input
    copies (dtype conversion, padding, row permutation), every tree node's values (all
    may be alive at once at the deepest point of the recursion, an upper bound), and
    the per-thread work panels of the root split."""
    itemsize = np.dtype(dtype).itemsize
    nodes = sum(split.left.nnz + split.right.nnz for split in plan.values())
    panels = numba.get_num_threads() * PANEL_BYTES
    return int(input_copies * shape[0] * shape[1] * itemsize + nodes * itemsize + panels)


# ``MemAvailable`` is read at most this often (seconds): reading /proc/meminfo took 29 µs,
# 4 % of a 256 x 256 factorization (0.7 ms).
MEMINFO_MAX_AGE = 0.05
_MEMINFO = [-math.inf, None]  # (time.monotonic() of the last read, its value)


def _available_memory():
    """``MemAvailable`` of /proc/meminfo in bytes (None where unknown), at most
    `MEMINFO_MAX_AGE` seconds old."""
    now = time.monotonic()
    read_at, value = _MEMINFO
    if now - read_at < MEMINFO_MAX_AGE:
        return value
    value = None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    value = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    _MEMINFO[:] = [now, value]
    return value


def _memory_limit_bytes(memory_limit):
    """The ``memory_limit`` option as bytes, or None for no check (None given, or
    ``"auto"`` where the available memory is unknown)."""
    if memory_limit is None:
        return None
    if isinstance(memory_limit, str):
        if memory_limit != "auto":
            raise ValueError(f"memory_limit must be 'auto', a number of bytes or None, got {memory_limit!r}")
        return _available_memory()
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer)):
        raise TypeError(f"memory_limit must be 'auto', a number of bytes or None, got {memory_limit!r}")
    return memory_limit


def _check_memory(plan, dtype, shape, input_copies, memory_limit):
    label = repr(memory_limit)
    memory_limit = _memory_limit_bytes(memory_limit)
    if memory_limit is None:
        return
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


def _in_order(columns: np.ndarray) -> bool:
    """Whether the column gather ``columns`` (a permutation) is the identity."""
    return bool(columns.size < 2 or np.all(columns[1:] > columns[:-1]))


def _split(node_values, columns, split: _Split, left, right, sigma_power):
    """Run a block kernel on one node.

    Returns ``(norm2, residual2, exponent, bad)``: ``‖node‖²`` and the squared residual
    in units of ``4**exponent``, and the number of blocks holding NaN or Inf.
    """
    a, big_b, _, d = node_values.shape
    b1, c1, c2 = split.b1, split.c1, split.c2
    threads = numba.get_num_threads()
    # Singular vectors in double precision whatever the data's precision.
    work = np.zeros(1, dtype=np.complex128 if node_values.dtype.kind == "c" else np.float64)
    tol = 8.0 * np.finfo(np.float64).eps
    parallel = node_values.size >= SPLIT_PARALLEL_MIN_NODE_SIZE and threads > 1
    if split.rank > 1:
        # consecutive t of one block group, gathered together, read contiguous runs
        batch = max(1, min(d, RANK_PANEL_BYTES // (b1 * c2 * work.itemsize)))
        n_tasks = a * (big_b // b1) * c1 * -(-d // batch)
        n_chunks = min(n_tasks, CHUNKS_PER_THREAD * threads) if parallel else 1
        kernel = _kernels.split_rank_r_parallel if parallel else _kernels.split_rank_r_serial
        args = (node_values, columns, b1, c1, split.rank, batch, left, right, sigma_power, tol,
                work, n_chunks)
    else:
        panel_bytes = IN_ORDER_PANEL_BYTES if _in_order(columns) else PANEL_BYTES
        batch = max(1, min(c1, panel_bytes // (b1 * c2 * node_values.itemsize)))
        n_tasks = a * (big_b // b1) * d * -(-c1 // batch)
        n_chunks = min(n_tasks, CHUNKS_PER_THREAD * threads) if parallel else 1
        kernel = _kernels.split_rank_one_parallel if parallel else _kernels.split_rank_one_serial
        args = (node_values, columns, b1, c1, batch, left, right, sigma_power, tol, work, n_chunks)
    norm2 = np.zeros(n_chunks)
    residual2 = np.zeros(n_chunks)
    exponent = np.zeros(n_chunks, dtype=np.int64)
    bad = np.zeros(n_chunks, dtype=np.int64)
    kernel(*args, norm2, residual2, exponent, bad)
    if n_chunks == 1:  # (the serial kernels: no NumPy calls to combine one chunk)
        return float(norm2[0]), float(residual2[0]), int(exponent[0]) if norm2[0] > 0 else 0, int(bad[0])
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
        divisors = np.where(norms > 0, norms, 1.0)[:, None, :, :]
        if factor_values.dtype.kind == "c":
            # Part by part: numpy's complex division overflows (Inf/NaN) for subnormal
            # divisors, real division is exact to rounding.
            factor_values.real /= divisors
            factor_values.imag /= divisors
        else:
            factor_values /= divisors
        target *= norms.reshape(ta, tb, 1, td)
        return
    # one b × r matrix per column group, Gram-Schmidt in place (a batched
    # np.linalg.qr and matmul took 1.1 ms of an 11 ms factorization of 1024 x 1024,
    # 3 factors rank 2, balanced)
    work = np.zeros(1, dtype=np.complex128 if factor_values.dtype.kind == "c" else np.float64)
    _kernels.push_column_frames_rank_r(factor_values, target, rank, work)


def _raise_not_finite(matrix):
    where = np.argwhere(~np.isfinite(matrix))
    raise ValueError(
        f"matrix contains NaN or Inf ({len(where)} entries, first at index "
        f"{tuple(int(i) for i in where[0])}); factorize needs finite values"
    )
