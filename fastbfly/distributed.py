"""Factorization and products on Dask: one task per row group of the root split, and
``B @ X`` for Dask arrays chunk by chunk.

Needs the ``dask`` extra (``pip install fastbfly[dask]``); importing :mod:`fastbfly` does
not import Dask.  The root split of the tree is cut into row groups (see
:mod:`fastbfly.sources`): each group is one task that reads its rows (from a Dask
array's chunks, a zarr array, an h5py file, a memory map or a `fastbfly.FunctionMatrix`)
and solves its blocks on one thread; the driver assembles the groups' outputs
(``O(N^1.5)`` values) and runs the rest of the tree in memory.  Tasks run on the active
``dask.distributed`` client if there is one (a `~distributed.LocalCluster` or a real
cluster), otherwise on Dask's threaded scheduler.  The factors are bit-for-bit those of
the in-memory `fastbfly.factorize`.
"""

from __future__ import annotations

import os
import uuid

import numpy as np

from .butterfly import SUPPORTED_DTYPES
from .sources import _group_task, factorize_source

__all__ = ["factorize", "matmat", "active_client"]

# Row groups per worker thread at least (smaller groups when the matrix is small).
TASKS_PER_THREAD = 4


def active_client():
    """The active ``dask.distributed`` client, or None (none running, or distributed
    not installed).

    Examples
    --------
    >>> from fastbfly.distributed import active_client
    >>> print(active_client())  # no client was started here
    None
    """
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # "No clients found"
        return None


def factorize(matrix, *, scheduler=None, row_group_bytes=None, **options):
    """`fastbfly.factorize` with the root split's row groups run as Dask tasks.

    Parameters
    ----------
    matrix : (m, n) Dask array, array-like, numpy.memmap or FunctionMatrix
        Any source `fastbfly.factorize` streams, or a NumPy array (wrapped with
        ``dask.array.from_array``).  A Dask array should be chunked in slabs of ``R``
        rows with ``R`` dividing ``b2``, the root split's row stride (a power of two for
        the square dyadic chain: e.g. ``chunks=(8, -1)`` or ``(8, 4096)``), so that each
        chunk feeds exactly one task.
    scheduler : None, str or distributed.Client, default None
        None: the active distributed client if any, else ``"threads"``.  A client, or a
        scheduler name of `dask.compute` (``"threads"``, ``"sync"``, ``"processes"``).
    row_group_bytes : int, optional
        Bytes of the rows one task reads (default 256 MiB).  Each worker thread holds
        one group at a time.
    **options
        The keyword arguments of `fastbfly.factorize` (``chain``, ``tree``, ``perm``,
        ``progress``, ...).  ``progress`` may also be ``True`` (a line on stderr);
        callables get ``progress(done, total)`` after every finished task and every
        later split.

    Returns
    -------
    Butterfly
        As `fastbfly.factorize`; ``info`` also has ``"row_groups"``, ``"source"``.

    Notes
    -----
    Memory: the driver holds the tree (``S_tree``, ``O(N^1.5)`` for the balanced tree,
    see `fastbfly.sources.factorize_source`); each worker thread one row group
    (``row_group_bytes``) plus its outputs.  With the active client, the source object
    is sent to the workers once: zarr arrays, h5py datasets (reopened by file name),
    memory maps (read from their file) and picklable functions work on process-based
    clusters; the files must be visible from the workers.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastbfly
    >>> from fastbfly.distributed import factorize
    >>> Z = da.from_array(np.fft.fft(np.eye(64)), chunks=(8, -1))
    >>> B = factorize(Z, perm="bitrev", scheduler="threads")
    >>> bool(np.allclose(B.toarray(), Z.compute()))
    True
    """
    import dask.array as da

    if isinstance(matrix, np.ndarray) and not isinstance(matrix, np.memmap):
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got {matrix.ndim}-D with shape {matrix.shape}")
        matrix = da.from_array(matrix, chunks=(max(1, min(matrix.shape[0], 8)), -1))
    return factorize_source(matrix, row_group_bytes=row_group_bytes,
                            runner=dask_runner(scheduler), **options)


def dask_runner(scheduler=None):
    """A runner for `fastbfly.sources.factorize_source` mapping row groups to Dask
    tasks (see `factorize`)."""
    import dask

    if scheduler is not None and not isinstance(scheduler, str) and not hasattr(scheduler, "compute"):
        raise TypeError(f"scheduler must be None, a scheduler name or a distributed Client, got {scheduler!r}")

    def run(source, groups, columns, split, sigma_power, on_done):
        client = active_client() if scheduler is None else (None if isinstance(scheduler, str) else scheduler)
        token = uuid.uuid4().hex
        # Shared arguments are graph keys of their own: sent once, not once per task.
        shared_columns = dask.delayed(columns, name=f"fastbfly-columns-{token}")
        shared_split = dask.delayed(split, name=f"fastbfly-split-{token}")
        reader = None
        if not source.is_dask:
            reader = dask.delayed(source.reader, name=f"fastbfly-source-{token}")
        tasks = []
        for k in range(len(groups.tasks)):
            rows, valid, m_rows = groups.task_arguments(k)
            data = reader if reader is not None else source.matrix[rows]
            task = dask.delayed(_group_task, pure=False, name=f"fastbfly-group-{k}-{token}")
            tasks.append(task(data, rows, valid, m_rows, groups.padded[1], source.dtype,
                              shared_columns, shared_split, sigma_power, True))
        if client is not None:
            yield from _run_on_client(client, tasks, on_done)
        else:
            yield from _run_local(tasks, scheduler or "threads", on_done)

    run.groups_in_flight = 1  # in the driver; workers hold theirs
    # Enough tasks to keep every worker thread busy (a few each, for balance).
    client = active_client() if scheduler is None else (None if isinstance(scheduler, str) else scheduler)
    threads = sum(client.nthreads().values()) if client is not None else (os.cpu_count() or 1)
    run.min_groups = TASKS_PER_THREAD * threads
    return run


def _run_on_client(client, tasks, on_done):
    from distributed import as_completed

    futures = client.compute(tasks)
    index = {future.key: k for k, future in enumerate(futures)}
    try:
        for future, result in as_completed(futures, with_results=True):
            k = index[future.key]
            on_done(k)
            yield k, result
            future.release()
    finally:
        client.cancel([f for f in futures if not f.done()])


def _run_local(tasks, scheduler, on_done):
    import dask
    from dask.callbacks import Callback

    keys = {task.key: k for k, task in enumerate(tasks)}

    class GroupDone(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys:
                on_done(keys[key])

    with GroupDone():
        results = dask.compute(*tasks, scheduler=scheduler)
    yield from enumerate(results)


def matmat(B, X):
    """``B @ X`` for a Dask array ``X``, lazily, one column chunk at a time.

    Parameters
    ----------
    B : Butterfly
    X : (n,) or (n, k) dask.array.Array
        Its rows are merged into one chunk (``X.rechunk({0: -1})``); column chunks are
        kept, so a batch larger than memory streams through the factors a chunk at a
        time (choose column chunks that fit: ``n × chunk × itemsize`` bytes per task).

    Returns
    -------
    (m,) or (m, k) dask.array.Array
        Of dtype ``result_type(B.dtype, X.dtype)``; nothing is computed until
        ``.compute()`` (or ``.to_zarr``, ``.store``...).

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastbfly
    >>> from fastbfly.distributed import matmat
    >>> B = fastbfly.hadamard_butterfly(64)
    >>> X = da.random.default_rng(0).standard_normal((64, 1000), chunks=(64, 250))
    >>> Y = matmat(B, X)
    >>> Y.chunks[1], bool(np.allclose(Y.compute(), B @ X.compute()))
    ((250, 250, 250, 250), True)
    """
    import dask.array as da

    from .butterfly import Butterfly

    if not isinstance(B, Butterfly):
        raise TypeError(f"B must be a fastbfly.Butterfly, got {type(B).__name__}")
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array, got {type(X).__name__}; use B @ X for NumPy arrays")
    if X.ndim not in (1, 2):
        raise ValueError(f"X must be 1-D or 2-D, got shape {X.shape}")
    if X.shape[0] != B.shape[1]:
        raise ValueError(f"B @ X needs X with {B.shape[1]} rows, got shape {X.shape}")
    if X.dtype.kind not in "biufc":
        raise TypeError(f"X must be numeric, got dtype {X.dtype}")
    out_dtype = np.result_type(B.dtype, X.dtype)
    if out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"cannot compute with dtype {out_dtype} (from X.dtype {X.dtype})")
    if X.ndim == 1:
        return matmat(B, X[:, None])[:, 0]
    X = X.rechunk({0: -1})
    return X.map_blocks(_apply_block, B, dtype=out_dtype, chunks=((B.shape[0],), X.chunks[1]),
                        meta=np.empty((0, 0), dtype=out_dtype))


def _apply_block(x, B):
    return B @ x
