"""``out=`` of `Butterfly.matvec`, `rmatvec`, `matmat`, `rmatmat` and `dot`: the same
values as without it, written into the caller's array (by the kernels themselves where
it is C-contiguous and apart from ``x``, else copied in), and clear errors for an
``out`` that does not fit."""

import tracemalloc

import numpy as np
import pytest

import fastbfly
from conftest import DTYPES, dtype_id
from test_butterfly import NAMES, build

OPERATIONS = ["matvec", "matvec-column", "rmatvec", "matmat", "rmatmat", "dot"]


def operand(B, operation, x_dtype, rng, columns=3):
    """An ``x`` for ``operation`` on ``B`` and the method that takes it."""
    m, n = B.shape
    rows = m if operation.startswith("r") else n
    shape = {"matvec": (rows,), "matvec-column": (rows, 1), "rmatvec": (rows,),
             "dot": (rows, columns)}.get(operation, (rows, columns))
    x = rng.standard_normal(shape)
    if np.dtype(x_dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    method = getattr(B, operation.split("-")[0])
    return x.astype(x_dtype), method


def laid_out(shape, dtype, layout):
    """An uninitialised array of ``shape``: C-ordered, Fortran-ordered or a strided view."""
    if layout == "C":
        return np.full(shape, np.nan, dtype=dtype)
    if layout == "F":
        return np.asfortranarray(np.full(shape, np.nan, dtype=dtype))
    wide = np.full(shape[:-1] + (2 * shape[-1],), np.nan, dtype=dtype)
    return wide[..., ::2]


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_out_holds_the_same_values(name, dtype, operation, layout, rng):
    B, _ = build(name, dtype)
    x, method = operand(B, operation, dtype, rng)
    before = x.copy()
    expected = method(x)
    out = laid_out(expected.shape, expected.dtype, layout)
    result = method(x, out=out)
    assert result is out
    # the same kernels (or a copy of their result): the same bits
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("operation", ["matvec", "matmat", "rmatmat"])
@pytest.mark.parametrize("name", ["dyadic-16-perms", "12x30-perms", "padded-13x11", "rank-2"])
def test_out_with_mixed_dtypes(name, operation, rng):
    """Real factors on complex data (and float32 factors on float64 data); "rank-2" has
    no permutation or padding, so its general kernels write ``out`` directly."""
    for dtype, x_dtype in ((np.float64, np.complex128), (np.float32, np.float64),
                           (np.complex64, np.float64)):
        B, _ = build(name, dtype)
        x, method = operand(B, operation, x_dtype, rng)
        expected = method(x)
        assert expected.dtype == np.result_type(dtype, x_dtype)
        out = np.empty_like(expected)
        assert method(x, out=out) is out
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("operation", ["matvec", "matmat", "rmatmat"])
@pytest.mark.parametrize("name", ["dyadic-16", "dyadic-256-perms", "rank-2"])
def test_out_may_be_x_itself(name, operation, rng):
    """``x`` as its own ``out`` (square ``B``): read before it is overwritten."""
    B, dense = build(name, np.complex128)
    x, method = operand(B, operation, np.complex128, rng)
    expected = method(x.copy())
    assert method(x, out=x) is x
    np.testing.assert_array_equal(x, expected)
    # and a view overlapping only part of x
    if x.ndim == 2:
        x, _ = operand(B, operation, np.complex128, rng, columns=4)
        expected = method(x[:, 1:4].copy())
        method(x[:, 1:4], out=x[:, 0:3])
        np.testing.assert_array_equal(x[:, 0:3], expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("columns", [1, 64])
def test_threaded_products_into_out(columns, dtype, rng):
    """Large enough for the threaded tile kernels (two threads where there are)."""
    transform = fastbfly.dft_butterfly if np.dtype(dtype).kind == "c" else fastbfly.hadamard_butterfly
    B = transform(4096, dtype=dtype)
    X = rng.standard_normal((4096, columns)).astype(dtype)
    for method in (B.matmat, B.rmatmat):
        expected = method(X)
        out = np.full_like(expected, np.nan)
        assert method(X, out=out) is out
        np.testing.assert_array_equal(out, expected)


def test_out_saves_the_allocation(rng):
    """The point of ``out``: no fresh result array in a loop of products."""
    B = fastbfly.dft_butterfly(1024)
    X = rng.standard_normal((1024, 64)) + 0j
    out = np.empty_like(X)
    B.matmat(X, out=out)  # plans and per-thread scratch are made once, here
    B.matmat(X)
    for kwargs, allocates in (({"out": out}, False), ({}, True)):
        tracemalloc.start()
        try:
            B.matmat(X, **kwargs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (peak >= X.nbytes) == allocates, (kwargs.keys(), peak)


@pytest.mark.parametrize("name", ["dyadic-16-perms", "12x30-perms", "padded-13x11"])
def test_bad_out_is_refused(name, rng):
    B, _ = build(name, np.float64)
    m, n = B.shape
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal(n)
    with pytest.raises(ValueError, match=rf"out must have shape \({m}, 2\).*got \({m}, 3\)"):
        B.matmat(x, out=np.empty((m, 3)))
    with pytest.raises(ValueError, match=rf"out must have shape \({m},\).*got \({m}, 1\)"):
        B.matvec(y, out=np.empty((m, 1)))
    with pytest.raises(ValueError, match=rf"out must have shape \({n}, 2\)"):
        B.rmatmat(rng.standard_normal((m, 2)), out=np.empty((m + 1, 2)))
    with pytest.raises(TypeError, match="out must have dtype float64.*got float32"):
        B.matmat(x, out=np.empty((m, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="out must have dtype complex128.*got float64"):
        B.matvec(y + 1j, out=np.empty(m))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        B.matvec(y, out=[0.0] * m)
    frozen = np.zeros(m)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        B.dot(y, out=frozen)
    assert not frozen.any()
