"""The `Butterfly` object: dense reference, product identities, adjoints, dtype rules,
shapes and errors."""

import functools
import zlib

import numpy as np
import pytest

import fastbfly
from fastbfly import Butterfly, Chain, Factor

import naive
from conftest import DTYPES, assert_close, dtype_id, random_array, random_factors, rtol

# name -> (patterns, with column/row permutations, shape or None)
BUTTERFLIES = {
    "dyadic-2": (list(Chain.square_dyadic(2)), False, None),
    "dyadic-16": (list(Chain.square_dyadic(16)), False, None),
    "dyadic-16-perms": (list(Chain.square_dyadic(16)), True, None),
    "dyadic-256-perms": (list(Chain.square_dyadic(256)), True, None),
    "12x30-perms": ([(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)], True, None),
    "rank-2": ([(1, 4, 4, 2), (2, 4, 4, 1)], False, None),
    "single-6x10": ([(2, 3, 5, 1)], True, None),
    "padded-13x11": (list(Chain.square_dyadic(16)), True, (13, 11)),
}
NAMES = sorted(BUTTERFLIES)


@functools.lru_cache(maxsize=None)
def build(name, dtype):
    """A random `Butterfly` and its dense matrix from tests/naive.py (cached)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(zlib.crc32(f"{name}-{dtype}".encode()))
    patterns, permuted, shape = BUTTERFLIES[name]
    chain = Chain(patterns)
    m, n = chain.shape
    B = Butterfly(random_factors(rng, chain, dtype),
                  perm=rng.permutation(n) if permuted else None,
                  row_perm=rng.permutation(m) if permuted else None, shape=shape)
    return B, naive.butterfly_dense(B)


def is_multi_factor(name):
    return len(BUTTERFLIES[name][0]) > 1




# ============================================================================ dense reference
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_toarray_matches_the_documented_definition(name, dtype):
    B, dense = build(name, dtype)
    result = B.toarray()
    assert result.dtype == dtype and result.shape == B.shape == dense.shape
    assert_close(result, dense, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_tosparse_product_is_the_matrix(name, dtype):
    B, dense = build(name, dtype)
    matrices = B.tosparse()
    product = functools.reduce(lambda left, right: left @ right, matrices)
    assert_close(product.toarray(), dense, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_sizes(name):
    B, dense = build(name, np.complex64)
    patterns, permuted, shape = BUTTERFLIES[name]
    assert B.shape == dense.shape and B.ndim == 2 and B.dtype == np.complex64
    assert B.nnz == sum(np.prod(p) for p in patterns) == sum(f.nnz for f in B.factors)
    assert [f.pattern for f in B.factors] == [fastbfly.Pattern(*p) for p in patterns]
    expected_bytes = 8 * B.nnz + (8 * sum(Chain(patterns).shape) if permuted else 0)
    assert B.nbytes == expected_bytes
    assert f"{B.shape[0]}x{B.shape[1]}" in repr(B)


# ============================================================================ products
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_products_match_dense(name, dtype, rng):
    B, dense = build(name, dtype)
    m, n = B.shape
    x = random_array(rng, n, dtype)
    y = random_array(rng, m, dtype)
    X = random_array(rng, (n, 5), dtype)
    Y = random_array(rng, (m, 5), dtype)
    assert_close(B @ x, dense @ x, dtype, what="B @ x")
    assert_close(B.matvec(x), dense @ x, dtype, what="matvec")
    assert_close(B.dot(x), dense @ x, dtype, what="dot")
    assert_close(B @ X, dense @ X, dtype, what="B @ X")
    assert_close(B.matmat(X), dense @ X, dtype, what="matmat")
    assert_close(B.rmatvec(y), dense.conj().T @ y, dtype, what="rmatvec")
    assert_close(B.rmatmat(Y), dense.conj().T @ Y, dtype, what="rmatmat")
    assert_close(y @ B, y @ dense, dtype, what="y @ B")
    assert_close(Y.T @ B, Y.T @ dense, dtype, what="Y.T @ B")
    # toarray() @ x == B @ x
    assert_close(B.toarray() @ x, B @ x, dtype, what="toarray() @ x")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_vector_shapes(name, dtype, rng):
    """(n,) gives (m,); (n, 1) gives (m, 1), for products and adjoint products."""
    B, dense = build(name, dtype)
    m, n = B.shape
    x = random_array(rng, n, dtype)
    y = random_array(rng, m, dtype)
    for call, vector, rows, matrix in [(B.matvec, x, m, dense), (B.__matmul__, x, m, dense),
                                       (B.rmatvec, y, n, dense.conj().T)]:
        flat = call(vector)
        column = call(vector[:, None])
        assert flat.shape == (rows,) and column.shape == (rows, 1)
        assert flat.dtype == column.dtype == dtype
        assert_close(column[:, 0], matrix @ vector, dtype)
        np.testing.assert_array_equal(column[:, 0], flat)
    assert (y @ B).shape == (n,) and (y[None, :] @ B).shape == (1, n)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_matmat_equals_stacked_matvec(name, dtype, rng):
    B, _ = build(name, dtype)
    m, n = B.shape
    X = random_array(rng, (n, 7), dtype)
    Y = random_array(rng, (m, 7), dtype)
    stacked = np.stack([B.matvec(X[:, k]) for k in range(7)], axis=1)
    assert_close(B.matmat(X), stacked, dtype)
    stacked = np.stack([B.rmatvec(Y[:, k]) for k in range(7)], axis=1)
    assert_close(B.rmatmat(Y), stacked, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_dot_test(name, dtype, rng):
    """⟨B x, y⟩ = ⟨x, Bᴴ y⟩ for random x, y."""
    B, _ = build(name, dtype)
    m, n = B.shape
    for _ in range(3):
        x = random_array(rng, n, dtype)
        y = random_array(rng, m, dtype)
        left = np.vdot(y, B @ x)
        right = np.vdot(B.rmatvec(y), x)
        scale = np.linalg.norm(B @ x) * np.linalg.norm(y)
        assert abs(left - right) <= 10 * rtol(dtype) * scale


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["H", "T", "conj"])
def test_adjoint_transpose_conjugate(which, name, dtype, rng, request):
    B, dense = build(name, dtype)
    expected = {"H": dense.conj().T, "T": dense.T, "conj": dense.conj()}[which]
    other = B.conj() if which == "conj" else getattr(B, which)
    assert isinstance(other, Butterfly) and other.dtype == dtype
    assert other.shape == expected.shape
    assert_close(other.toarray(), expected, dtype)
    x = random_array(rng, expected.shape[1], dtype)
    assert_close(other @ x, expected @ x, dtype)


# Butterflies used for large products: the parallel kernels and the real-factor /
# complex-vector path with many right-hand sides.
@pytest.mark.parametrize("x_dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("dtype", [np.float64, np.complex64], ids=dtype_id)
@pytest.mark.parametrize("n_columns", [1, 3, 64, 300])
def test_large_products(n_columns, dtype, x_dtype, rng):
    n = 1024
    B = Butterfly(random_factors(rng, Chain.square_dyadic(n), dtype), perm=rng.permutation(n))
    out = np.result_type(dtype, x_dtype)
    dense = B.toarray().astype(out)  # validated against naive.py below and above
    X = random_array(rng, (n, n_columns), x_dtype)
    result = B @ X
    assert result.dtype == out
    # B's values are exact in ``out``; only the product's rounding differs
    tolerance = dtype if np.finfo(dtype).eps >= np.finfo(out).eps else out
    assert_close(result, dense @ X, tolerance, factor=10)
    assert_close(B.rmatmat(X), dense.conj().T @ X, tolerance, factor=10)
    assert_close(B @ X[:, 0], dense @ X[:, 0], tolerance, factor=10)
    assert_close(B.rmatvec(X[:, 0]), dense.conj().T @ X[:, 0], tolerance, factor=10)


def test_large_toarray_matches_naive():
    rng = np.random.default_rng(5)
    big = Butterfly(random_factors(rng, Chain.square_dyadic(1024), np.float64))
    assert_close(big.toarray(), naive.butterfly_dense(big), np.float64)


# ============================================================================ dtype rules
X_DTYPES = [np.bool_, np.int8, np.uint8, np.int64, np.float16, np.float32, np.float64,
            np.complex64, np.complex128]


def sample(rng, shape, dtype):
    """Random values representable in ``dtype`` (small integers for integer types)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        return rng.integers(0, 2 if dtype.kind == "b" else 5, shape).astype(dtype)
    return (3 * random_array(rng, shape, dtype)).astype(dtype)


@pytest.mark.parametrize("x_dtype", X_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_output_dtype_is_the_result_type(dtype, x_dtype, rng):
    B, dense = build("12x30-perms", dtype)
    m, n = B.shape
    out = np.result_type(dtype, x_dtype)
    # the comparison runs at the precision of the less precise operand
    tolerance_dtype = dtype if np.finfo(dtype).eps >= np.finfo(out).eps else out
    x, X, y = (sample(rng, shape, x_dtype) for shape in (n, (n, 4), m))
    reference = dense.astype(out)
    for result, expected, what in [
        (B @ x, reference @ x.astype(out), "B @ x"),
        (B @ X, reference @ X.astype(out), "B @ X"),
        (B.rmatvec(y), reference.conj().T @ y.astype(out), "rmatvec"),
        (y @ B, y.astype(out) @ reference, "y @ B"),
    ]:
        assert result.dtype == out, f"{what}: dtype {result.dtype}, expected {out}"
        assert_close(result, expected, tolerance_dtype, what=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_inputs_are_not_modified_and_any_layout_works(dtype, rng):
    B, dense = build("dyadic-16-perms", dtype)
    X = random_array(rng, (16, 6), dtype)
    expected = dense @ X
    readonly = X.copy()
    readonly.setflags(write=False)
    strided = np.zeros((32, 18), dtype=dtype)
    strided[::2, ::3] = X
    for given in [X, readonly, np.asfortranarray(X), strided[::2, ::3]]:
        before = np.array(given, copy=True)
        assert_close(B @ given, expected, dtype)
        assert_close(B @ given[:, 2], expected[:, 2], dtype)
        assert_close(B.rmatmat(given), dense.conj().T @ X, dtype)
        np.testing.assert_array_equal(given, before)
    assert_close(B @ X.tolist(), expected, dtype)


# ============================================================================ errors
@pytest.mark.parametrize("name", ["dyadic-16", "12x30-perms", "padded-13x11"])
def test_wrong_lengths_are_rejected(name):
    B, _ = build(name, np.float64)
    m, n = B.shape
    with pytest.raises(ValueError, match=rf"needs x with {n} rows, got shape \({n + 1},\)"):
        B @ np.ones(n + 1)
    with pytest.raises(ValueError, match=rf"needs x with {n} rows, got shape \({n - 1}, 3\)"):
        B @ np.ones((n - 1, 3))
    with pytest.raises(ValueError, match=rf"needs x with {m} rows, got shape \({m + 2},\)"):
        B.rmatvec(np.ones(m + 2))
    with pytest.raises(ValueError, match=rf"\({m + 1},\)"):
        np.ones(m + 1) @ B
    with pytest.raises(ValueError, match=rf"got \({n}, 2\)"):
        B.matvec(np.ones((n, 2)))
    with pytest.raises(ValueError, match=rf"got \({m}, 2\)"):
        B.rmatvec(np.ones((m, 2)))
    with pytest.raises(ValueError, match=rf"2-D array, got shape \({n},\)"):
        B.matmat(np.ones(n))
    with pytest.raises(ValueError, match=r"1-D or 2-D, got shape \(.*, 2, 2\)"):
        B @ np.ones((n, 2, 2))
    with pytest.raises(ValueError, match="got shape"):
        B @ np.float64(1.0)


@pytest.mark.parametrize("x, match", [
    (np.array(["a"] * 16), "<U1"),
    (np.array([None] * 16, dtype=object), "object"),
    (np.zeros(16, dtype="datetime64[s]"), "datetime64"),
])
def test_non_numeric_vectors_are_rejected(x, match):
    B, _ = build("dyadic-16", np.float64)
    with pytest.raises(TypeError, match=match):
        B @ x


@pytest.mark.skipif(np.dtype(np.longdouble) == np.dtype(np.float64), reason="no long double")
def test_unsupported_result_dtype_is_rejected():
    B, _ = build("dyadic-16", np.float64)
    with pytest.raises(TypeError, match="float128|longdouble"):
        B @ np.ones(16, dtype=np.longdouble)


def test_constructor_errors(rng):
    good = random_factors(rng, Chain.square_dyadic(8), np.float64)
    with pytest.raises(ValueError, match="at least one factor"):
        Butterfly([])
    with pytest.raises(TypeError, match="Factor objects, got ndarray"):
        Butterfly([np.ones((1, 2, 2, 1))])
    mixed = good[:2] + [Factor(good[2].pattern, good[2].values.astype(np.float32))]
    with pytest.raises(TypeError, match="float32"):
        Butterfly(mixed)
    with pytest.raises(ValueError, match="not chainable"):
        Butterfly([good[0], good[2]])  # inner sizes match, rank 2/4 is not an integer
    with pytest.raises(ValueError, match=r"perm must have shape \(8,\), got \(7,\)"):
        Butterfly(good, perm=np.arange(7))
    with pytest.raises(ValueError, match="row_perm is not a permutation"):
        Butterfly(good, row_perm=[0] * 8)
    with pytest.raises(ValueError, match=r"shape \(9, 8\)"):
        Butterfly(good, shape=(9, 8))


def test_values_are_copied_at_construction(rng):
    factors = random_factors(rng, Chain.square_dyadic(8), np.float64)
    B = Butterfly(factors)
    before = B.toarray()
    for f in factors:
        f.values[...] = 0
    np.testing.assert_array_equal(B.toarray(), before)


def test_aslinearoperator():
    B, _ = build("dyadic-16", np.float64)
    op = B.aslinearoperator()
    assert isinstance(op, fastbfly.ButterflyOperator) and op.butterfly is B
