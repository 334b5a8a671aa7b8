"""Streamed sources (memmap, zarr, h5py, Dask, functions) and the Dask paths.

Every streamed factorization is compared with the in-memory `fastbfly.factorize` of the
same matrix: the blocks are solved by the same kernel on the same numbers, so the
factors must be bit-for-bit identical and the error estimate equal to rounding (it is
summed in another order).
"""

import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")

import fastbfly  # noqa: E402
from fastbfly import FunctionMatrix  # noqa: E402
from fastbfly.distributed import factorize as dask_factorize  # noqa: E402
from fastbfly.distributed import matmat  # noqa: E402
from fastbfly.sources import factorize_source, is_source  # noqa: E402

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
# The relative error is a float64 sum over blocks or entries, in another order, of
# products fused from the factors in their own precision.
ERROR_RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.complex64): 1e-6,
              np.dtype(np.float64): 1e-11, np.dtype(np.complex128): 1e-11}
# B @ X through Dask vs in memory: the same kernel on the same column chunks, up to
# the kernel's choice of loop for a different number of columns.
MATMAT_RTOL = {np.float32: 1e-5, np.float64: 1e-13, np.complex64: 1e-5, np.complex128: 1e-13}


def random_matrix(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def noisy_butterfly(n, dtype, seed):
    """A butterfly product plus 1% noise: a factorization with a meaningful error."""
    rng = np.random.default_rng(seed)
    B = fastbfly.hadamard_butterfly(n).toarray() if n > 1 else np.ones((1, 1))
    dense = B * (1 + 0.5 * rng.standard_normal(n))[None, :]
    return (dense + 0.01 * np.abs(dense).max() * random_matrix((n, n), np.float64, seed + 1)).astype(dtype)


def assert_same(B, reference):
    assert B.shape == reference.shape
    assert len(B.factors) == len(reference.factors)
    for mine, theirs in zip(B.factors, reference.factors):
        assert mine.pattern == theirs.pattern
        assert mine.values.dtype == theirs.values.dtype
        assert np.array_equal(mine.values, theirs.values)
    np.testing.assert_allclose(B.info["relative_error"], reference.info["relative_error"],
                               rtol=ERROR_RTOL[B.dtype], atol=1e-300)
    assert np.array_equal(np.asarray(B.perm if B.perm is not None else []),
                          np.asarray(reference.perm if reference.perm is not None else []))


def zarr_array(path, shape, chunks, dtype):
    """An empty zarr array on disk (zarr 2 and 3 alike)."""
    return zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype)


def make_source(kind, dense, directory):
    """The same matrix as a source of the given kind."""
    if kind == "memmap":
        path = directory / "matrix.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dense.dtype, shape=dense.shape)
        mm[:] = dense
        mm.flush()
        return np.load(path, mmap_mode="r")
    if kind == "zarr":
        z = zarr_array(directory / "matrix.zarr", dense.shape, (4, dense.shape[1]), dense.dtype)
        z[:] = dense
        return z
    if kind == "h5py":
        # Written and closed first: HDF5 locks files open for writing, and Dask
        # workers reopen the dataset by name.
        with h5py.File(directory / "matrix.h5", "w") as file:
            file.create_dataset("matrix", data=dense, chunks=(4, dense.shape[1]))
        return h5py.File(directory / "matrix.h5", "r")["matrix"]
    if kind == "dask":
        return da.from_array(dense, chunks=(4, -1))
    if kind == "function":
        frozen = dense.copy()
        return FunctionMatrix(lambda rows, cols: frozen[np.ix_(rows, cols)], dense.shape, dense.dtype)
    raise AssertionError(kind)


SOURCES = ["memmap", "zarr", "h5py", "dask", "function"]


# Every dtype on both trees at n = 64; larger sizes (parallel kernels in memory, serial
# per group here) on fewer dtypes to keep the module fast.
CASES = ([(dtype, 64, tree) for dtype in DTYPES for tree in ("balanced", "left-to-right")]
         + [(np.float64, 256, "left-to-right"), (np.complex64, 256, "balanced"),
            (np.float32, 1024, "balanced")])


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("dtype, n, tree", CASES)
def test_sources_match_in_memory(kind, dtype, n, tree, tmp_path):
    dense = noisy_butterfly(n, dtype, seed=n)
    before = dense.copy()
    reference = fastbfly.factorize(dense, tree=tree)
    source = make_source(kind, dense, tmp_path)
    assert is_source(source)
    B = fastbfly.factorize(source, tree=tree)
    assert_same(B, reference)
    assert B.info["row_groups"] >= 1
    # Many small row groups: the assembly of group outputs is exercised too.
    B = factorize_source(source, tree=tree, row_group_bytes=n * np.dtype(dtype).itemsize)
    assert B.info["row_groups"] > 1
    assert_same(B, reference)
    np.testing.assert_array_equal(dense, before)


@pytest.mark.filterwarnings("ignore:the matrix is stored in chunks")
@pytest.mark.parametrize("kind", ["zarr", "function"])
@pytest.mark.parametrize("options", [
    {"perm": "bitrev"},
    {"perm": "bitrev", "row_perm": "bitrev"},
    {"perm": "dao8"},
    {"tree": "right-to-left"},
    {"tree": ((0, 1), (2, (3, 4))), "orthonormalize": False},
])
def test_permutations_and_trees(kind, options, tmp_path):
    dense = np.fft.fft(np.eye(32)).astype(np.complex128) + 1e-3 * random_matrix((32, 32), np.complex128, 3)
    reference = fastbfly.factorize(dense, **options)
    B = factorize_source(make_source(kind, dense, tmp_path), row_group_bytes=256, **options)
    assert_same(B, reference)
    assert B.info["perm"] == reference.info["perm"]
    assert [c["relative_error"] for c in B.info["candidates"]] == pytest.approx(
        [c["relative_error"] for c in reference.info["candidates"]], rel=ERROR_RTOL[B.dtype])


@pytest.mark.filterwarnings("ignore:the matrix is stored in chunks")
@pytest.mark.parametrize("kind", ["zarr", "dask", "function"])
@pytest.mark.parametrize("shape, options", [
    ((48, 80), {}),                                           # automatic general chain
    ((45, 60), {"pad": True}),                                # zero padding
    ((64, 64), {"n_factors": 3, "rank": 2}),                  # rank 2 between factors
    ((36, 12), {"chain": [(1, 3, 2, 12), (2, 3, 3, 4), (6, 4, 2, 1)]}),
])
def test_general_chains(kind, shape, options, tmp_path):
    dense = random_matrix(shape, np.float64, seed=7)
    reference = fastbfly.factorize(dense, **options)
    B = factorize_source(make_source(kind, dense, tmp_path), row_group_bytes=64, **options)
    assert_same(B, reference)
    assert B.shape == shape


def test_single_factor_reads_everything(tmp_path):
    dense = random_matrix((8, 12), np.float64, 1)
    reference = fastbfly.factorize(dense, chain=[(1, 8, 12, 1)])
    B = fastbfly.factorize(make_source("zarr", dense, tmp_path), chain=[(1, 8, 12, 1)])
    assert_same(B, reference)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                       processes=request.param, dashboard_address=None)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.mark.parametrize("kind", SOURCES)
def test_local_cluster_matches_in_memory(client, kind, tmp_path):
    assert fastbfly.distributed.active_client() is client
    dense = noisy_butterfly(256, np.complex64, seed=2)
    reference = fastbfly.factorize(dense, perm="bitrev")
    source = make_source(kind, dense, tmp_path)
    calls = []
    B = dask_factorize(source, perm="bitrev", row_group_bytes=16 * 256 * 8 * 4,
                       progress=lambda done, total: calls.append((done, total)))
    # b2 = 16 row strides; at least 4 tasks per worker thread (G <= 2), except that
    # storage chunked by 4 rows keeps G a multiple of 4.
    assert B.info["row_groups"] == (4 if kind in ("zarr", "h5py", "dask") else 8)
    assert_same(B, reference)
    total = B.info["row_groups"] + len(B.factors) - 2
    assert [done for done, _ in calls] == list(range(1, total + 1))
    assert {t for _, t in calls} == {total}


def test_local_cluster_dask_array_by_default(client):
    dense = random_matrix((128, 128), np.float64, 4)
    reference = fastbfly.factorize(dense)
    B = fastbfly.factorize(da.from_array(dense, chunks=(2, 64)))
    assert_same(B, reference)


def test_local_cluster_nan_raises(client, tmp_path):
    dense = random_matrix((64, 64), np.float32, 5)
    dense[37, 11] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf.*\(37, 11\)"):
        dask_factorize(make_source("zarr", dense, tmp_path), row_group_bytes=64 * 4 * 8)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_local_schedulers(scheduler):
    dense = noisy_butterfly(128, np.float64, seed=9)
    reference = fastbfly.factorize(dense, tree="left-to-right")
    B = dask_factorize(dense, scheduler=scheduler, tree="left-to-right", row_group_bytes=4096)
    assert_same(B, reference)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_matmat_streams_column_chunks(dtype):
    n = 64
    B = fastbfly.factorize(noisy_butterfly(n, dtype, seed=1), perm="bitrev")
    X = random_matrix((n, 1000), dtype, 2)
    Xd = da.from_array(X, chunks=(16, 300))
    Y = matmat(B, Xd)
    assert isinstance(Y, da.Array)
    assert Y.chunks == ((n,), (300, 300, 300, 100))
    assert Y.dtype == np.result_type(B.dtype, X.dtype)
    tolerance = MATMAT_RTOL[dtype] * np.abs(B @ X).max()
    np.testing.assert_allclose(Y.compute(scheduler="threads"), B @ X, rtol=0, atol=tolerance)
    y = matmat(B, Xd[:, 0])
    assert y.shape == (n,)
    np.testing.assert_allclose(y.compute(), B @ X[:, 0], rtol=0, atol=tolerance)
    # ``B @ dask_array`` is the same lazy product (not np.asarray of the whole batch).
    Z = B @ Xd
    assert isinstance(Z, da.Array) and Z.chunks == Y.chunks
    np.testing.assert_allclose(Z.compute(scheduler="threads"), B @ X, rtol=0, atol=tolerance)


def test_matmat_rejects_bad_input():
    B = fastbfly.hadamard_butterfly(16)
    with pytest.raises(TypeError, match="dask.array"):
        matmat(B, np.ones((16, 2)))
    with pytest.raises(TypeError, match="Butterfly"):
        matmat(np.eye(16), da.ones((16, 2)))
    with pytest.raises(ValueError, match="16 rows"):
        matmat(B, da.ones((8, 2)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        matmat(B, da.ones((16, 2, 2)))
    with pytest.raises(TypeError, match="numeric"):
        matmat(B, da.from_array(np.array([["a"] * 2] * 16)))


def test_function_wrong_shape_raises():
    f = FunctionMatrix(lambda rows, cols: np.ones((len(rows), len(cols) + 1)), (16, 16), np.float64)
    with pytest.raises(ValueError, match=r"returned shape .* expected \(\d+, 16\)"):
        fastbfly.factorize(f)


def test_function_wrong_dtype_raises():
    f = FunctionMatrix(lambda rows, cols: np.ones((len(rows), len(cols)), np.complex128), (16, 16), np.float64)
    with pytest.raises(TypeError, match="complex128.*float64"):
        fastbfly.factorize(f)
    g = FunctionMatrix(lambda rows, cols: np.full((len(rows), len(cols)), "x"), (16, 16), np.float64)
    with pytest.raises(TypeError, match="dtype <U1"):
        fastbfly.factorize(g)


def test_function_nan_raises():
    def f(rows, cols):
        block = np.ones((len(rows), len(cols)))
        block[rows == 5, 3] = np.inf
        return block

    with pytest.raises(ValueError, match=r"NaN or Inf.*\(5, 3\)"):
        fastbfly.factorize(FunctionMatrix(f, (16, 16), np.float64))


def test_function_matrix_validation():
    with pytest.raises(TypeError, match="callable"):
        FunctionMatrix(np.ones((4, 4)), (4, 4), np.float64)
    with pytest.raises(ValueError, match="pair of integers"):
        FunctionMatrix(np.add, (4, 4, 4), np.float64)
    with pytest.raises(ValueError, match="positive"):
        FunctionMatrix(np.add, (0, 4), np.float64)
    with pytest.raises(TypeError, match="dtype"):
        FunctionMatrix(np.add, (4, 4), np.dtype("U3"))
    assert FunctionMatrix(np.add, (4, 4), np.int32).dtype == np.float64
    # Orthogonal indexing, so that dask.array.from_array works on it.
    Z = FunctionMatrix(lambda r, c: np.add.outer(10 * r, c).astype(float), (6, 5), np.float64)
    np.testing.assert_array_equal(Z[1:3, [0, 4]], [[10, 14], [20, 24]])
    np.testing.assert_array_equal(Z[-1, :2], [50, 51])
    with pytest.raises(IndexError):
        Z[7, 0]


@pytest.mark.filterwarnings("ignore:the matrix is stored in chunks")
def test_bad_sources_raise(tmp_path):
    z3 = zarr_array(tmp_path / "a.zarr", (4, 4, 4), (4, 4, 4), np.float64)
    with pytest.raises(ValueError, match="2-D"):
        fastbfly.factorize(z3)
    empty = zarr_array(tmp_path / "b.zarr", (0, 4), (1, 4), np.float64)
    with pytest.raises(ValueError, match="empty"):
        fastbfly.factorize(empty)
    with h5py.File(tmp_path / "s.h5", "w") as file:
        file.create_dataset("s", data=np.array([[b"ab", b"cd"]] * 2))
    with h5py.File(tmp_path / "s.h5", "r") as file, pytest.raises(TypeError, match="numeric"):
        fastbfly.factorize(file["s"])
    dense = random_matrix((32, 32), np.float64, 0)
    dense[3, 30] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf.*\(3, 30\)"):
        fastbfly.factorize(make_source("memmap", dense, tmp_path))
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        fastbfly.factorize(da.from_array(dense, chunks=(4, -1)))
    with pytest.raises(ValueError, match="row_group_bytes"):
        factorize_source(make_source("zarr", np.ones((8, 8)), tmp_path), row_group_bytes=0)
    with pytest.raises(MemoryError, match="row groups"):
        fastbfly.factorize(make_source("zarr", np.ones((8, 8)), tmp_path), memory_limit=1000)
    with pytest.raises(TypeError, match="progress"):
        fastbfly.factorize(make_source("zarr", np.ones((8, 8)), tmp_path), progress="yes")
    with pytest.raises(TypeError, match="scheduler"):
        dask_factorize(np.ones((8, 8)), scheduler=3)


def test_not_sources():
    import scipy.sparse

    assert not is_source(np.ones((4, 4)))
    assert not is_source([[1.0, 2.0], [3.0, 4.0]])
    assert not is_source(scipy.sparse.eye(4))
    with pytest.raises(TypeError, match="toarray"):
        fastbfly.factorize(scipy.sparse.eye(4))


def test_misaligned_chunks_warn(tmp_path):
    dense = random_matrix((64, 64), np.float64, 8)
    z = zarr_array(tmp_path / "m.zarr", dense.shape, (3, 64), dense.dtype)
    z[:] = dense
    with pytest.warns(UserWarning, match="does not divide"):
        B = factorize_source(z, row_group_bytes=8 * 64 * 8)
    assert_same(B, fastbfly.factorize(dense))


def test_progress_true_prints(tmp_path, capsys):
    fastbfly.factorize(make_source("function", random_matrix((64, 64), np.float64, 1), tmp_path),
                       progress=True)
    assert "fastbfly: " in capsys.readouterr().err


def test_memmap_is_read_from_its_file(tmp_path):
    """The memmap path reads rows with file reads: the factorization maps no page of
    the matrix (checked with the mapping's resident pages via mincore-free means: the
    memmap's own array is never touched, so a view that is not a whole file falls back
    to slicing and still gives the same result)."""
    from fastbfly.sources import _FileReader, _Source

    dense = random_matrix((64, 64), np.complex64, 3)
    mm = make_source("memmap", dense, tmp_path)
    assert isinstance(_Source(mm).reader, _FileReader)
    view = mm[:, ::-1]  # not C-contiguous: generic slicing
    assert not isinstance(_Source(view).reader, _FileReader)
    assert_same(fastbfly.factorize(view), fastbfly.factorize(np.ascontiguousarray(dense[:, ::-1])))


def test_core_import_does_not_import_dask():
    code = "import fastbfly, sys; print(any(m.split('.')[0] in ('dask', 'distributed', 'zarr', 'h5py') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
