"""Matrices that are not in-memory NumPy arrays, and the out-of-core factorization.

`fastbfly.factorize` hands any input for which `is_source` is true to
`factorize_source`: NumPy memory maps, zarr arrays, h5py datasets, Dask arrays, other
array-likes with 2-D slicing and ``shape``/``dtype``, and `FunctionMatrix` (entries
computed on demand).  The root split of the tree, the only step that reads the matrix,
streams it in *row groups*; everything below the root runs in memory with the ordinary
code of :mod:`fastbfly.factorization`.

Row groups
----------
At the root the node is ``Z`` itself, ``(1, m, n, 1)``, and the split has ``b1`` rows per
block and ``b2 = m / b1`` (see :func:`fastbfly._kernels._split_rank_one_py`): block
``(k1, j2)`` reads the rows ``j1*b2 + j2`` (``j1 < b1``) and the columns
``columns[k1*C2 : (k1+1)*C2]``.  The blocks sharing ``j2`` therefore need exactly the ``b1``
rows ``j2, j2 + b2, j2 + 2*b2, ...`` and nothing else.  A row group is a range
``j2 in [s, s + G)``: ``b1*G`` rows, stored in the order ``j1*G + (j2 - s)``, which is a
node of shape ``(1, b1*G, n, 1)`` with the same ``b1``; the kernel solves its ``c1*G``
blocks, and its outputs are the slices ``left[..., s:s+G]`` and
``right.reshape(c1, r, b2, C2)[:, :, s:s+G]`` of the root split's outputs.  Every block is
computed by the same kernel on the same numbers as in memory, so the factors are
bit-for-bit those of the in-memory path.

In the source the rows of a group are ``b1`` runs of ``G`` consecutive rows, one per
``j1``: with row chunks of ``R`` rows, ``R`` dividing ``b2`` and ``G`` a multiple of ``R``
(chosen automatically), each chunk is read exactly once.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import time
import types
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .butterfly import SUPPORTED_DTYPES

__all__ = ["FunctionMatrix", "factorize_source", "is_source"]

# Default bytes of one row group (the rows the root split holds at once, per group in
# flight).  Larger groups mean fewer reads; the memory formula scales with it.
ROW_GROUP_BYTES = 1 << 28
# Row groups in flight in the in-process streaming path: the one being solved and the
# one being read in the background.
LOCAL_GROUPS_IN_FLIGHT = 2


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


class FunctionMatrix:
    """A matrix whose entries are computed on demand, never stored whole.

    Parameters
    ----------
    function : callable
        ``function(rows, cols)`` with two 1-D int64 arrays of indices returns the dense
        ``(len(rows), len(cols))`` block ``Z[rows[:, None], cols[None, :]]``.  It is
        called with blocks of a few hundred rows and all columns (see
        :func:`fastbfly.factorize`'s out-of-core notes), and must be deterministic.  To
        run on a process-based Dask cluster it must be picklable (Dask uses
        cloudpickle, so lambdas and closures work).
    shape : (int, int)
        ``(m, n)``.
    dtype : dtype
        float32, float64, complex64 or complex128 (bool and integer mean float64,
        float16 float32, as for arrays).  Blocks of another dtype are cast to it when
        the cast is ``same_kind`` (complex128 to complex64, say); a complex block for a
        real dtype is a `TypeError`.

    Examples
    --------
    A non-uniform Fourier matrix ``exp(-2πi x_j k / n)``, never materialised:

    >>> import numpy as np, fastbfly
    >>> n = 256
    >>> x = np.arange(n) + 0.1 * np.random.default_rng(0).uniform(-1, 1, n)
    >>> Z = fastbfly.FunctionMatrix(
    ...     lambda rows, cols: np.exp(-2j * np.pi * np.outer(x[rows], cols) / n),
    ...     (n, n), np.complex128)
    >>> B = fastbfly.factorize(Z, perm="bitrev")
    >>> B.shape, round(B.info["relative_error"], 2) < 0.2
    ((256, 256), True)
    """

    def __init__(self, function, shape, dtype):
        if not callable(function):
            raise TypeError(f"function must be callable, got {type(function).__name__}")
        if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)):
            raise ValueError(f"shape must be a pair of integers (m, n), got {shape!r}")
        if min(shape) < 1:
            raise ValueError(f"shape must be positive, got {tuple(shape)}")
        self.function = function
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = _factor_dtype(np.dtype(dtype), "FunctionMatrix dtype")
        self.ndim = 2

    def block(self, rows, cols) -> np.ndarray:
        """The validated block ``Z[rows[:, None], cols[None, :]]`` of dtype ``self.dtype``.

        Raises
        ------
        ValueError
            If the function returns a block of the wrong shape.
        TypeError
            If the block's dtype does not cast to ``self.dtype`` (same kind).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> Z = fastbfly.FunctionMatrix(lambda rows, cols: np.add.outer(10 * rows, cols),
        ...                             (3, 4), np.float64)
        >>> Z.block([0, 2], [1, 3])
        array([[ 1.,  3.],
               [21., 23.]])
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        values = np.asarray(self.function(rows, cols))
        expected = (len(rows), len(cols))
        if values.shape != expected:
            raise ValueError(
                f"FunctionMatrix function returned shape {values.shape} for {len(rows)} rows "
                f"and {len(cols)} columns, expected {expected}"
            )
        if values.dtype.kind not in "biufc" or not np.can_cast(values.dtype, self.dtype, "same_kind"):
            raise TypeError(
                f"FunctionMatrix function returned dtype {values.dtype}, which does not "
                f"cast to the declared dtype {self.dtype} (same kind)"
            )
        return values.astype(self.dtype, copy=False)

    def __getitem__(self, key):
        """``Z[rows, cols]`` with slices or integer index arrays (orthogonal indexing),
        so that ``dask.array.from_array(Z, chunks=...)`` works too."""
        if not isinstance(key, tuple) or len(key) != 2:
            raise IndexError(f"FunctionMatrix needs a (rows, cols) index, got {key!r}")
        indices = []
        for axis, item in enumerate(key):
            size = self.shape[axis]
            if isinstance(item, slice):
                indices.append(np.arange(size)[item])
            else:
                index = np.asarray(item)
                if index.dtype.kind not in "iu" or index.ndim > 1:
                    raise IndexError(f"FunctionMatrix index must be a slice or integers, got {item!r}")
                index = np.where(index < 0, index + size, index).reshape(-1)
                if index.size and (index.min() < 0 or index.max() >= size):
                    raise IndexError(f"index out of range for axis {axis} of size {size}")
                indices.append(index)
        block = self.block(*indices)
        scalar = [not isinstance(item, slice) and np.ndim(item) == 0 for item in key]
        return block[tuple(0 if s else slice(None) for s in scalar)]

    def __repr__(self) -> str:
        name = getattr(self.function, "__name__", type(self.function).__name__)
        return f"FunctionMatrix({name}, shape={self.shape}, dtype={self.dtype})"


def _factor_dtype(dtype: np.dtype, what: str) -> np.dtype:
    """The dtype the factors get, by the rules of the in-memory path."""
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{what} must be numeric (float32, float64, complex64, complex128, or bool/"
            f"integer converted to float64), got dtype {dtype}"
        )
    return dtype


def _is_dask_array(obj) -> bool:
    # Without importing dask: if it was never imported, obj cannot be one of its arrays.
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(obj, module.Array)


def is_source(obj) -> bool:
    """Whether `fastbfly.factorize` streams ``obj`` instead of converting it with
    `numpy.asarray`: a `FunctionMatrix`, a `numpy.memmap`, a Dask array, or any other
    non-NumPy object with ``shape``, a NumPy ``dtype`` and ``__getitem__`` (zarr arrays,
    h5py datasets, ...).  Sparse matrices (anything with ``toarray``) are not sources.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, fastbfly
    >>> from fastbfly.sources import is_source
    >>> path = os.path.join(tempfile.mkdtemp(), "eye.npy")
    >>> np.save(path, np.eye(4))
    >>> is_source(np.eye(4)), is_source(np.load(path, mmap_mode="r"))
    (False, True)
    >>> is_source(fastbfly.FunctionMatrix(lambda rows, cols: np.ones((len(rows), len(cols))),
    ...                                   (4, 4), np.float64))
    True
    """
    if isinstance(obj, (FunctionMatrix, np.memmap)) or _is_dask_array(obj):
        return True
    if isinstance(obj, (np.ndarray, list, tuple)) or hasattr(obj, "toarray"):
        return False
    if not (hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__")):
        return False
    try:
        np.dtype(obj.dtype)
    except TypeError:  # e.g. torch dtypes: leave those to numpy.asarray
        return False
    return True


class _ArrayReader:
    """Reads rows of an array-like by contiguous runs (``array[start:stop, :]``).

    Picklable for process-based Dask workers: h5py datasets are reopened by file name
    and dataset name (they cannot be pickled themselves)."""

    def __init__(self, array):
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = Z[rows[i]]``; ``rows`` sorted or not."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # Runs of consecutive rows, each one slice read.
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        in_order = bool(np.all(order == np.arange(len(rows))))
        for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            values = np.asarray(self.array[int(ordered[first]):int(ordered[last - 1]) + 1, :])
            if in_order:
                out[first:last] = values
            else:
                out[order[first:last]] = values

    def __getstate__(self):
        module = type(self.array).__module__
        if module.startswith("h5py"):
            return {"h5py": (self.array.file.filename, self.array.name), "shape": self.shape}
        return self.__dict__

    def __setstate__(self, state):
        if "h5py" in state:
            import h5py

            filename, name = state["h5py"]
            self.array = h5py.File(filename, "r")[name]
            self.shape = state["shape"]
        else:
            self.__dict__.update(state)


class _FileReader:
    """Reads rows of a C-ordered `numpy.memmap` straight from its file.

    Reading through the mapping would map every page of the matrix into the process
    (resident set size grows to the file size, even though the kernel wants one row
    group at a time); ``readinto`` keeps only the rows asked for.  Picklable: holds the
    file name, not the mapping."""

    def __init__(self, filename, offset, shape, dtype):
        self.filename = filename
        self.offset = int(offset)
        self.shape = shape
        self.dtype = dtype
        self._local = threading.local()

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        file = getattr(self._local, "file", None)
        if file is None:
            file = self._local.file = open(self.filename, "rb", buffering=0)
        row_bytes = self.shape[1] * self.dtype.itemsize
        buffer = np.empty((1, self.shape[1]), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            target = out[first:last]
            if target.dtype != self.dtype:  # converting dtype: read into a temporary
                if buffer.shape[0] != last - first:
                    buffer = np.empty((last - first, self.shape[1]), dtype=self.dtype)
                target = buffer
            file.seek(self.offset + int(rows[first]) * row_bytes)
            view = memoryview(target.reshape(-1).view(np.uint8))
            while view.nbytes:
                count = file.readinto(view)
                if not count:
                    raise OSError(f"{self.filename} ended before row {int(rows[last - 1])}")
                view = view[count:]
            if target is not out[first:last]:
                out[first:last] = target

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


class _FunctionReader:
    """Rows of a `FunctionMatrix`: one call of its function per group."""

    def __init__(self, matrix: FunctionMatrix):
        self.matrix = matrix
        self.shape = matrix.shape

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        out[...] = self.matrix.block(rows, np.arange(self.shape[1]))


def _memmap_file_reader(array: np.memmap):
    """A `_FileReader` for a memmap opened on a whole file region, else None."""
    if (isinstance(array.base, mmap.mmap) and array.flags.c_contiguous
            and getattr(array, "filename", None) and getattr(array, "mode", "c") in ("r", "r+", "w+")):
        return _FileReader(array.filename, array.offset, tuple(array.shape), array.dtype)
    return None


class _Source:
    """A validated source: ``shape``, the factors' ``dtype``, a row ``reader`` (or the
    Dask array itself) and the row chunk size if the storage has one."""

    def __init__(self, matrix):
        self.matrix = matrix
        self.is_dask = _is_dask_array(matrix)
        if isinstance(matrix, FunctionMatrix):
            raw_dtype = matrix.dtype
        else:
            raw_dtype = np.dtype(matrix.dtype)
            if raw_dtype.kind not in "biufc":
                raise TypeError(
                    f"matrix must be numeric (float32, float64, complex64, complex128, or "
                    f"bool/integer converted to float64), got dtype {raw_dtype}"
                )
        shape = tuple(int(s) for s in matrix.shape)
        if len(shape) != 2:
            raise ValueError(f"matrix must be 2-D, got {len(shape)}-D with shape {shape}")
        if 0 in shape:
            raise ValueError(f"matrix must not be empty, got shape {shape}")
        self.shape = shape
        self.dtype = _factor_dtype(raw_dtype, "matrix")
        self.row_chunk = None
        if isinstance(matrix, FunctionMatrix):
            self.reader = _FunctionReader(matrix)
        elif self.is_dask:
            self.reader = None
            row_chunks = set(matrix.chunks[0][:-1])
            if len(row_chunks) <= 1 and matrix.chunks[0][-1] <= max(row_chunks or {matrix.chunks[0][-1]}):
                self.row_chunk = int(matrix.chunks[0][0])
        else:
            reader = _memmap_file_reader(matrix) if isinstance(matrix, np.memmap) else None
            self.reader = reader or _ArrayReader(matrix)
            chunks = getattr(matrix, "chunks", None)
            if isinstance(chunks, tuple) and len(chunks) == 2 and isinstance(chunks[0], (int, np.integer)):
                self.row_chunk = int(chunks[0])


# --------------------------------------------------------------------------------------
# Row groups and the per-group task
# --------------------------------------------------------------------------------------


def _row_groups(b1: int, b2: int, row_bytes: int, row_group_bytes: int, row_chunk, aligned: bool,
                min_groups: int = 1):
    """``(start, stop)`` ranges of ``j2`` covering ``0..b2``.

    ``G = row_group_bytes // (b1 * row_bytes)`` (at least 1, at most ``b2 // min_groups``
    so that Dask has enough tasks for its workers).  With a row chunk size
    ``R`` dividing ``b2`` and rows in storage order (``aligned``), ``G`` is rounded to a
    multiple of ``R`` (at least ``R``) so that every stored chunk belongs to exactly one
    group.
    """
    size = max(1, min(row_group_bytes // (b1 * row_bytes), b2 // min_groups))
    if aligned and row_chunk and b2 % row_chunk == 0 and row_chunk > 1:
        size = max(row_chunk, size // row_chunk * row_chunk)
    elif aligned and row_chunk and row_chunk > size:
        warnings.warn(
            f"the matrix is stored in chunks of {row_chunk} rows, which does not divide "
            f"the root split's row stride {b2}: each chunk is read by up to "
            f"{-(-row_chunk // size) + 1} row groups; store it with a row chunk size "
            f"dividing {b2} (e.g. chunks=({math.gcd(row_chunk, b2)}, ...)) to read it once",
            stacklevel=4,
        )
    size = min(size, b2)
    return [(start, min(start + size, b2)) for start in range(0, b2, size)]


def _group_rows(b1: int, b2: int, start: int, stop: int) -> np.ndarray:
    """Algorithm rows of the group ``j2 in [start, stop)``, in the order
    ``j1*G + (j2 - start)`` (``j1`` slowest, as the kernel's ``b1 × b2`` row split
    wants)."""
    return (np.arange(b1, dtype=np.int64)[:, None] * b2
            + np.arange(start, stop, dtype=np.int64)[None, :]).reshape(-1)


def _source_rows(rows: np.ndarray, row_perm):
    """Padded-matrix rows read by the algorithm rows ``rows`` (after the row
    permutation); rows ``>= m`` are zero padding."""
    return rows if row_perm is None else row_perm[rows]


def _read_group(data, source_rows, valid, m_rows, padded_n, dtype) -> np.ndarray:
    """The ``(b1*G, padded_n)`` rows of one group, zero where the matrix is padded.

    ``data`` is a row reader, or the group's valid rows already read (a Dask array's
    rows arrive so; used in place when nothing needs converting).  ``source_rows`` are
    the valid rows' indices in the source, in block order; ``valid`` marks which of the
    group's ``m_rows`` rows exist in the source (None: all of them).
    """
    n = data.shape[1]
    full = valid is None and n == padded_n
    if full and not hasattr(data, "read"):
        return np.ascontiguousarray(data, dtype=dtype)
    if full and isinstance(data, _FunctionReader):  # the function's block, not a copy of it
        return np.ascontiguousarray(data.matrix.block(source_rows, np.arange(n)))
    block = (np.empty if full else np.zeros)((m_rows, padded_n), dtype=dtype)
    if full:
        data.read(source_rows, block)
        return block
    if hasattr(data, "read"):
        rows = np.empty((len(source_rows), n), dtype=dtype)
        data.read(source_rows, rows)
        data = rows
    block[valid if valid is not None else slice(None), :n] = data
    return block


def _solve_group(block, source_rows, valid, columns, split, sigma_power, serial):
    """Solve the ``c1*G`` blocks of one row group (``block`` from `_read_group`).

    Returns ``left`` ``(1, b1, c1*r, G)``, ``right`` ``(c1, r*G, C2, 1)`` and the stats
    ``(norm2, residual2, exponent)`` of `fastbfly.factorization._split`.  ``serial``
    runs the kernel on one thread (inside Dask tasks, which parallelise over groups).
    """
    from .factorization import _split

    m_rows, padded_n = block.shape
    group = m_rows // split.b1
    left = np.empty((1, split.b1, split.c1 * split.rank, group), dtype=block.dtype)
    right = np.empty((split.c1, split.rank * group, split.c2, 1), dtype=block.dtype)
    threads = numba.get_num_threads()
    if serial:
        numba.set_num_threads(1)  # thread-local: only this task's kernel call
    try:
        norm2, residual2, exponent, bad = _split(block.reshape(1, m_rows, padded_n, 1), columns,
                                                 split, left, right, sigma_power)
    finally:
        numba.set_num_threads(threads)
    if bad:
        where = np.argwhere(~np.isfinite(block))
        first = int(where[0][0])
        row = int(source_rows[first if valid is None else int(np.cumsum(valid)[first]) - 1])
        raise ValueError(
            f"matrix contains NaN or Inf (first found at index ({row}, {int(where[0][1])}), "
            f"{len(where)} entries in that row group); factorize needs finite values"
        )
    return left, right, (norm2, residual2, exponent)


def _group_task(data, source_rows, valid, m_rows, padded_n, dtype, columns, split,
                sigma_power, serial):
    """Read and solve one row group: one Dask task."""
    block = _read_group(data, source_rows, valid, m_rows, padded_n, dtype)
    del data
    return _solve_group(block, source_rows, valid, columns, split, sigma_power, serial)


class _GroupPlan:
    """The row groups of one root split, with what each task needs to read."""

    def __init__(self, source: _Source, split, padded, row_perm, row_group_bytes, min_groups=1):
        m, n = source.shape
        self.b1 = split.b1
        self.b2 = padded[0] // split.b1
        self.padded = padded
        row_bytes = padded[1] * source.dtype.itemsize
        self.ranges = _row_groups(self.b1, self.b2, row_bytes, row_group_bytes,
                                  source.row_chunk, aligned=row_perm is None,
                                  min_groups=min_groups)
        self.group_bytes = max(stop - start for start, stop in self.ranges) * self.b1 * row_bytes
        self.tasks = []
        for start, stop in self.ranges:
            rows = _source_rows(_group_rows(self.b1, self.b2, start, stop), row_perm)
            valid = rows < m
            if valid.all():
                self.tasks.append((rows, None))
            else:
                self.tasks.append((rows[valid], valid))

    def task_arguments(self, k: int):
        """``(source_rows, valid, m_rows)`` of group ``k``."""
        rows, valid = self.tasks[k]
        start, stop = self.ranges[k]
        return rows, valid, self.b1 * (stop - start)


def _local_runner(source: _Source, groups: _GroupPlan, columns, split, sigma_power, on_done):
    """Yield ``(k, result)`` for every group, in order, in this process: a background
    thread reads group ``k + 1`` (file I/O and function evaluation release the GIL, or
    at least overlap) while the kernel, on all Numba threads, solves group ``k``.  Two
    groups are in memory at once."""
    def read(k):
        return _read_group(source.reader, *groups.task_arguments(k), groups.padded[1], source.dtype)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0)
        for k in range(len(groups.tasks)):
            block = pending.result()
            if k + 1 < len(groups.tasks):
                pending = pool.submit(read, k + 1)
            rows, valid, _ = groups.task_arguments(k)
            result = _solve_group(block, rows, valid, columns, split, sigma_power, serial=False)
            del block
            on_done(k)
            yield k, result


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def _estimate_source_memory(plan: dict, dtype, shape, group_bytes: int, groups_in_flight: int) -> int:
    """Peak bytes of an out-of-core factorization besides the interpreter:
    ``S_tree + groups_in_flight * group_bytes + panels`` (see `factorize_source`)."""
    from .factorization import estimate_memory

    return estimate_memory(plan, dtype, shape, 0) + groups_in_flight * group_bytes


class _TextProgress:
    """``progress=True``: one updating line on stderr."""

    def __init__(self):
        self.started = time.perf_counter()

    def __call__(self, done, total):
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (total - done) if done else float("nan")
        sys.stderr.write(f"\rfastbfly: {done}/{total} ({100 * done / total:.0f}%), "
                         f"{elapsed:.0f} s elapsed, ~{left:.0f} s left   ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def factorize_source(matrix, *, chain=None, n_factors=None, rank=1, tree="balanced", perm=None,
                     row_perm=None, orthonormalize=True, pad=False, memory_limit="auto",
                     progress=None, row_group_bytes=None, runner=None, exact_error=True):
    """Factorize a matrix that is streamed from a source (see `fastbfly.factorize`).

    Same arguments and result as `fastbfly.factorize`, plus:

    Parameters
    ----------
    row_group_bytes : int, optional
        Bytes of one row group (default `ROW_GROUP_BYTES`, 256 MiB); rounded to whole
        stored row chunks.
    runner : callable, optional
        How groups are executed: ``runner(source, groups, columns, split, sigma_power,
        on_done)`` yields ``(k, (left, right, stats))`` for every group ``k``.  Default:
        in this process, reading the next group in the background
        (`fastbfly.distributed` passes a Dask runner; Dask arrays get it by default).
    exact_error : bool, default True
        Where the residual sum of the splits is not the product's error (trees other
        than left-to-right, see `fastbfly.factorize`), measure the error in one more
        streamed pass over the matrix (another read of it, or evaluation of the
        function).  With False, ``info["relative_error"]`` is that residual-sum
        estimate and ``info["relative_error_is_estimate"]`` is True.
    progress : callable or True, optional
        ``progress(done, total)`` after every row group of the root split and every
        later two-factor split (``total`` = groups + splits - 1); ``True`` prints a line
        on stderr.

    Notes
    -----
    Peak memory, in bytes, with ``s`` the itemsize, ``G`` the row-group height:

        S_tree + W * b1 * G * n * s + T * 32 MiB,
        S_tree = s * sum over splits of (nnz(left child) + nnz(right child))

    ``W`` = groups in flight (2 in process; Dask: its worker threads), ``T`` the Numba
    threads (work panels).  ``S_tree`` is `fastbfly.factorization.estimate_memory`'s
    bound on all tree nodes alive at once.  For the square dyadic chain with the
    balanced tree, ``N = 2^J``: the root's children hold ``N * 2^ceil(J/2)`` and
    ``N * 2^floor(J/2)`` values, i.e. ``O(N^1.5)``, and ``S_tree < 4 s N^1.5``-ish; a
    group holds ``b1 = 2^ceil(J/2)`` rows per ``G``.  The matrix itself (``m n s``) is
    never in memory.

    Examples
    --------
    A memory-mapped DFT, read 4 KiB of rows at a time, gives the same factors as the
    in-memory path:

    >>> import os, tempfile
    >>> import numpy as np, fastbfly
    >>> from fastbfly.sources import factorize_source
    >>> path = os.path.join(tempfile.mkdtemp(), "dft.npy")
    >>> np.save(path, np.fft.fft(np.eye(64)))
    >>> Z = np.load(path, mmap_mode="r")
    >>> B = factorize_source(Z, perm="bitrev", row_group_bytes=4096)
    >>> B
    <Butterfly 64x64 dtype=complex128 factors=6 nnz=768 perm=yes>
    >>> C = fastbfly.factorize(np.array(Z), perm="bitrev")
    >>> bool(np.array_equal(B.toarray(), C.toarray()))
    True
    """
    from .factorization import (CANDIDATE_TIE, _hierarchical,
                                _perm_candidates, _plan, _residual_sum_is_exact,
                                _resolve_chain)
    from .butterfly import Butterfly
    from .trees import build_tree

    started = time.perf_counter()
    source = _Source(matrix)
    m, n = source.shape
    chain_arg = chain
    chain, padded = _resolve_chain(chain, (m, n), n_factors, rank, pad)
    root = build_tree(tree, len(chain))
    plan = _plan(chain, root, orthonormalize)
    if progress is True:
        progress = _TextProgress()
    elif progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable, True or None, got {progress!r}")
    if row_group_bytes is None:
        row_group_bytes = ROW_GROUP_BYTES
    elif isinstance(row_group_bytes, bool) or not isinstance(row_group_bytes, (int, np.integer)) \
            or row_group_bytes < 1:
        raise ValueError(f"row_group_bytes must be a positive integer, got {row_group_bytes!r}")
    if root.is_leaf:
        # A single factor is the matrix itself: it has to be in memory anyway.
        from .factorization import factorize

        dense = np.empty((m, n), dtype=source.dtype)
        _read_all(source, dense)
        return factorize(dense, chain=chain_arg, n_factors=n_factors, rank=rank, tree=tree,
                         perm=perm, row_perm=row_perm, orthonormalize=orthonormalize, pad=pad,
                         memory_limit=memory_limit, progress=progress)
    if runner is None:
        if source.is_dask:
            from .distributed import dask_runner

            runner = dask_runner()
        else:
            runner = _local_runner
    column_candidates = _perm_candidates(perm, n, padded[1], "perm")
    row_candidates = _perm_candidates(row_perm, m, padded[0], "row_perm")
    split = plan[(root.start, root.stop)]
    in_flight = getattr(runner, "groups_in_flight", LOCAL_GROUPS_IN_FLIGHT)
    group_plans = {}

    best = None
    tried = []
    for row_label, rows in row_candidates:
        if row_label not in group_plans:
            group_plans[row_label] = _GroupPlan(source, split, padded, rows, row_group_bytes,
                                                getattr(runner, "min_groups", 1))
        groups = group_plans[row_label]
        _check_source_memory(plan, source.dtype, padded, groups.group_bytes, in_flight,
                             memory_limit)
        n_groups = len(groups.tasks)
        total = n_groups + len(plan) - 1
        for column_label, columns in column_candidates:
            counter = {"groups": 0}

            def on_done(k, counter=counter, total=total):
                counter["groups"] += 1
                if progress is not None:
                    progress(counter["groups"], total)

            def root_split(node_values, columns, split, left, right, sigma_power, groups=groups,
                           on_done=on_done):
                return _streamed_split(source, groups, columns, split, left, right, sigma_power,
                                       runner, on_done)

            def later(done, _, n_groups=n_groups, total=total):
                if done > 1:  # the first split is the root's, already counted by groups
                    progress(n_groups + done - 1, total)

            shape_only = types.SimpleNamespace(shape=padded, dtype=source.dtype)
            column_index = np.arange(padded[1], dtype=np.int64) if columns is None else columns
            factors, error = _hierarchical(shape_only, chain, root, plan, column_index,
                                           orthonormalize, None if progress is None else later,
                                           root_split=root_split)
            if exact_error and not _residual_sum_is_exact(root, orthonormalize, chain):
                # As in memory: the residual sum is only an estimate for this tree.
                error = _streamed_relative_error(source, chain, factors, rows, column_index,
                                                 padded, row_group_bytes)
            tried.append({"row_perm": row_label, "perm": column_label, "relative_error": error})
            if best is None or error < best[0] - CANDIDATE_TIE:
                best = (error, factors, rows, columns, row_label, column_label)
    error, factors, rows, columns, row_label, column_label = best
    groups = group_plans[row_label]
    info = {
        "relative_error": error,
        "tree": root.to_nested(),
        "perm": column_label,
        "row_perm": row_label,
        "candidates": tried,
        "orthonormalize": bool(orthonormalize),
        "padded_shape": padded,
        "seconds": time.perf_counter() - started,
        "source": type(matrix).__module__.split(".")[0] + "." + type(matrix).__name__,
        "row_groups": len(groups.tasks),
        "row_group_bytes": groups.group_bytes,
        "relative_error_is_estimate": not exact_error and not _residual_sum_is_exact(
            root, orthonormalize, chain),
    }
    return Butterfly(factors, perm=columns, row_perm=rows, info=info, shape=(m, n))


def _streamed_split(source, groups: _GroupPlan, columns, split, left, right, sigma_power,
                    runner, on_done):
    """The root split, group by group: fill ``left``/``right`` and return the combined
    ``(norm2, residual2, exponent, bad)`` like `fastbfly.factorization._split`."""
    c1, rank, c2 = split.c1, split.rank, split.c2
    # right (c1, r*b2, C2, 1) -> (c1, r, b2, C2): group slices are along b2
    right_view = right.reshape(c1, rank, groups.b2, c2)
    stats = [None] * len(groups.tasks)
    for k, (group_left, group_right, group_stats) in runner(source, groups, columns, split,
                                                            sigma_power, on_done):
        start, stop = groups.ranges[k]
        left[..., start:stop] = group_left
        right_view[:, :, start:stop, :] = group_right.reshape(c1, rank, stop - start, c2)
        stats[k] = group_stats
    norm2 = np.array([s[0] for s in stats])
    residual2 = np.array([s[1] for s in stats])
    exponent = np.array([s[2] for s in stats], dtype=np.int64)
    top = int(exponent[norm2 > 0].max()) if np.any(norm2 > 0) else 0
    shifts = 2 * (exponent - top)
    return (float(np.ldexp(norm2, shifts).sum()), float(np.ldexp(residual2, shifts).sum()),
            top, 0)


def _read_in_driver(source: _Source, groups: _GroupPlan, k: int) -> np.ndarray:
    """Group ``k``'s rows read in this process (Dask arrays: computed here)."""
    rows, valid, m_rows = groups.task_arguments(k)
    data = source.matrix[rows].compute() if source.is_dask else source.reader
    return _read_group(data, rows, valid, m_rows, groups.padded[1], source.dtype)


def _streamed_relative_error(source: _Source, chain, factors, row_perm, columns, padded,
                             row_group_bytes) -> float:
    """``‖Z − X_1⋯X_L‖_F / ‖Z‖_F`` for ``Z = matrix[row_perm][:, columns]`` (padded), in
    one more streamed pass over the matrix, in double precision.

    As in :func:`fastbfly._errors.product_errors`, the product is fused into two factors
    at the split where they are smallest (``O(N^1.5)`` values for a square butterfly):
    with ``left`` ``(b1, c1, r, b2)`` and ``right`` ``(c1, r, b2, C2)``, the product's
    row ``j1*b2 + j2`` is ``P[j1, k1, k2] = Σ_ρ left[j1, k1, ρ, j2] right[k1, ρ, j2, k2]``
    (columns ``k1*C2 + k2``), so each row group of that split is compared with its rows
    of ``Z`` with one batched matrix product per ``j2``.
    """
    from ._errors import fuse_values, split_geometry

    size = len(chain)
    split_at = min(range(1, size), key=lambda h: chain.fused(0, h).nnz + chain.fused(h, size).nnz)
    b1, c1, rank, c2 = split_geometry(chain, split_at)
    values = [f.values for f in factors]
    work = np.complex128 if source.dtype.kind == "c" else np.float64
    b2 = padded[0] // b1
    # (1, b1, c1*r, b2) -> (c1, b1, r, b2): k1 first, to batch the products over it
    left = fuse_values(chain, values, 0, split_at).astype(work).reshape(b1, c1, rank, b2)
    left = np.ascontiguousarray(left.transpose(1, 0, 2, 3))
    # (c1, r*b2, C2, 1) -> (c1, r, b2, C2)
    right = fuse_values(chain, values, split_at, size).astype(work).reshape(c1, rank, b2, c2)
    groups = _GroupPlan(source, types.SimpleNamespace(b1=b1), padded, row_perm, row_group_bytes)
    norm2 = 0.0
    error2 = 0.0
    for k, (start, stop) in enumerate(groups.ranges):
        # (b1*G, n) -> (b1, G, c1, C2), columns gathered: row j1*G + jj is j2 = start + jj
        block = _read_in_driver(source, groups, k)[:, columns].reshape(b1, stop - start, c1, c2)
        for jj, j2 in enumerate(range(start, stop)):
            # (c1, b1, r) @ (c1, r, C2) -> (c1, b1, C2)
            product = np.matmul(left[:, :, :, j2], right[:, :, j2, :])
            rows = block[:, jj].transpose(1, 0, 2)  # (b1, c1, C2) -> (c1, b1, C2)
            norm2 += float(np.vdot(rows, rows).real)
            product -= rows
            error2 += float(np.vdot(product, product).real)
    return math.sqrt(error2 / norm2) if norm2 > 0 else 0.0


def _read_all(source: _Source, out: np.ndarray) -> None:
    if source.is_dask:
        out[...] = source.matrix.compute()
    else:
        source.reader.read(np.arange(source.shape[0], dtype=np.int64), out)
    if not np.all(np.isfinite(out)):
        from .factorization import _raise_not_finite

        _raise_not_finite(out)


def _check_source_memory(plan, dtype, shape, group_bytes, in_flight, memory_limit):
    from .factorization import _memory_limit_bytes

    label = repr(memory_limit)
    memory_limit = _memory_limit_bytes(memory_limit)
    if memory_limit is None:
        return
    needed = _estimate_source_memory(plan, dtype, shape, group_bytes, in_flight)
    if needed > memory_limit:
        raise MemoryError(
            f"streaming the factorization of a {shape[0]} x {shape[1]} {np.dtype(dtype)} "
            f"matrix needs about {needed / 2**30:.2f} GiB ({in_flight} row groups of "
            f"{group_bytes / 2**20:.0f} MiB in flight), but the limit is "
            f"{memory_limit / 2**30:.2f} GiB (memory_limit={label}); pass a smaller "
            f"row_group_bytes, or memory_limit=None to try anyway"
        )
