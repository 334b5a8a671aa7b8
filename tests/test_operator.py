"""`ButterflyOperator` as a scipy LinearOperator: products, iterative solvers (cg, gmres,
lsqr, lsmr, svds) on systems built from factorization results, and PyLops."""

import functools

import numpy as np
import pytest
import scipy.sparse.linalg as sla
from scipy.sparse.linalg import LinearOperator

import fastbfly
from fastbfly import ButterflyOperator, Chain, factorize

from conftest import (DTYPES, assert_close, dtype_id, noisy, random_array, random_butterfly,
                      random_factors, rtol)

pylops = pytest.importorskip("pylops")



@pytest.fixture(scope="module")
def systems():
    """Well-conditioned butterflies from factorizations of noisy DFT / Hadamard matrices,
    and one of a 12 x 30 rectangular matrix (fixed seed)."""
    rng = np.random.default_rng(2022)
    n = 64
    F = np.fft.fft(np.eye(n)) / np.sqrt(n)
    H = np.array([[(-1) ** bin(i & j).count("1") for j in range(n)] for i in range(n)]) / np.sqrt(n)
    result = {
        "complex128": factorize(noisy(rng, F, 0.1), perm="bitrev"),
        "float64": factorize(noisy(rng, H, 0.1)),
        "complex64": factorize(noisy(rng, F, 0.1).astype(np.complex64), perm="bitrev"),
        "float32": factorize(noisy(rng, H, 0.1).astype(np.float32)),
        "rect-float64": factorize(rng.standard_normal((12, 30)) + np.eye(12, 30) * 5,
                                  chain=[(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)]),
    }
    return result


def dense_of(B):
    return B.toarray().astype(np.complex128 if B.dtype.kind == "c" else np.float64)


# ============================================================================ the interface
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_is_a_scipy_linear_operator(dtype, rng):
    B = random_butterfly(rng, 16, dtype, perm=True)
    op = ButterflyOperator(B)
    assert isinstance(op, LinearOperator)
    assert isinstance(op.dtype, np.dtype) and op.dtype == dtype
    assert op.shape == (16, 16)
    assert isinstance(B.aslinearoperator(), ButterflyOperator)
    with pytest.raises(TypeError, match="Butterfly, got ndarray"):
        ButterflyOperator(np.eye(4))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", ["square", "rectangular"])
def test_products_and_shapes(dtype, shape, rng):
    if shape == "square":
        B = random_butterfly(rng, 32, dtype, perm=True, row_perm=True)
    else:
        B = fastbfly.Butterfly(random_factors(rng, Chain([(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)]), dtype))
    op = B.aslinearoperator()
    dense = B.toarray()
    m, n = op.shape
    x = random_array(rng, n, dtype)
    y = random_array(rng, m, dtype)
    X = random_array(rng, (n, 4), dtype)
    Y = random_array(rng, (m, 4), dtype)
    for result, expected, shape_expected in [
        (op.matvec(x), dense @ x, (m,)),
        (op.matvec(x[:, None]), (dense @ x)[:, None], (m, 1)),
        (op @ x, dense @ x, (m,)),
        (op.dot(x), dense @ x, (m,)),
        (op.matmat(X), dense @ X, (m, 4)),
        (op @ X, dense @ X, (m, 4)),
        (op.rmatvec(y), dense.conj().T @ y, (n,)),
        (op.rmatvec(y[:, None]), (dense.conj().T @ y)[:, None], (n, 1)),
        (op.rmatmat(Y), dense.conj().T @ Y, (n, 4)),
        ((2 * op) @ x, 2 * (dense @ x), (m,)),
        ((op + op) @ x, 2 * (dense @ x), (m,)),
        (op.toarray(), dense, (m, n)),
    ]:
        assert result.shape == shape_expected
        assert_close(result, expected, dtype)
    with pytest.raises(ValueError):
        op.matvec(np.ones(n + 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_scipy_dot_test(dtype, rng):
    op = random_butterfly(rng, 64, dtype, perm=True).aslinearoperator()
    x = random_array(rng, 64, dtype)
    y = random_array(rng, 64, dtype)
    left = np.vdot(y, op.matvec(x))
    right = np.vdot(op.rmatvec(y), x)
    assert abs(left - right) <= 10 * rtol(dtype) * np.linalg.norm(op @ x) * np.linalg.norm(y)


@pytest.mark.parametrize("which", ["H", "T", "adjoint()", "transpose()"])
@pytest.mark.parametrize("n", [2, 16])
def test_adjoint_and_transpose_operators(n, which, rng):
    B = random_butterfly(rng, n, np.complex128, perm=True)
    op = B.aslinearoperator()
    other = {"H": lambda: op.H, "T": lambda: op.T, "adjoint()": op.adjoint,
             "transpose()": op.transpose}[which]()
    assert isinstance(other, ButterflyOperator)
    dense = B.toarray()
    expected = dense.conj().T if which in ("H", "adjoint()") else dense.T
    x = random_array(rng, n, np.complex128)
    assert_close(other @ x, expected @ x, np.complex128)


# ============================================================================ solvers
@pytest.mark.parametrize("name", ["float64", "complex128", "float32", "complex64"])
def test_gmres(name, systems, rng):
    B = systems[name]
    op = B.aslinearoperator()
    dense = dense_of(B)
    x_true = random_array(rng, 64, np.complex128 if B.dtype.kind == "c" else np.float64)
    b = dense @ x_true
    single = B.dtype in (np.float32, np.complex64)
    x, info = sla.gmres(op, b, rtol=1e-5 if single else 1e-12, atol=0, restart=64, maxiter=50)
    assert info == 0
    assert_close(x, x_true, np.float64, factor=1e7 if single else 1e3)
    assert_close(x, np.linalg.solve(dense, b), np.float64, factor=1e7 if single else 1e3)


@pytest.mark.parametrize("solver", ["lsqr", "lsmr"])
@pytest.mark.parametrize("name", ["float64", "complex128", "rect-float64"])
def test_least_squares(name, solver, systems, rng):
    B = systems[name]
    op = B.aslinearoperator()
    dense = dense_of(B)
    m, n = B.shape
    x_true = random_array(rng, n, np.complex128 if B.dtype.kind == "c" else np.float64)
    b = dense @ x_true
    if m < n:  # underdetermined: lsqr/lsmr return the minimum-norm solution
        x_true = np.linalg.pinv(dense) @ b
    limit = {"lsqr": "iter_lim", "lsmr": "maxiter"}[solver]
    run = functools.partial({"lsqr": sla.lsqr, "lsmr": sla.lsmr}[solver], **{limit: 1000})
    x = run(op, b, atol=1e-14, btol=1e-14)[0]
    assert_close(x, x_true, np.float64, factor=1e3)
    # a damped (regularized) least-squares problem against the dense normal equations
    damp = 0.5
    x = run(op, b, damp=damp, atol=1e-14, btol=1e-14)[0]
    expected = np.linalg.solve(dense.conj().T @ dense + damp**2 * np.eye(n), dense.conj().T @ b)
    assert_close(x, expected, np.float64, factor=1e3)


@pytest.mark.parametrize("name", ["float64", "complex128", "rect-float64"])
def test_cg_on_normal_equations(name, systems, rng):
    """cg on the Hermitian positive definite Bᴴ B + I, built from matvec/rmatvec."""
    B = systems[name]
    op = B.aslinearoperator()
    dense = dense_of(B)
    n = B.shape[1]
    normal = LinearOperator((n, n), matvec=lambda v: op.rmatvec(op.matvec(v)) + v, dtype=op.dtype)
    b = random_array(rng, n, np.complex128 if B.dtype.kind == "c" else np.float64)
    x, info = sla.cg(normal, b, rtol=1e-13, atol=0, maxiter=500)
    assert info == 0
    expected = np.linalg.solve(dense.conj().T @ dense + np.eye(n), b)
    assert_close(x, expected, np.float64, factor=1e3)


def test_cg_with_operator_algebra(systems, rng):
    """The same system written as ``op.H @ op + I`` (uses ButterflyOperator._adjoint)."""
    B = systems["complex128"]
    op = B.aslinearoperator()
    normal = op.H @ op + sla.aslinearoperator(np.eye(64))
    b = random_array(rng, 64, np.complex128)
    x, info = sla.cg(normal, b, rtol=1e-13, atol=0)
    dense = B.toarray()
    assert_close(x, np.linalg.solve(dense.conj().T @ dense + np.eye(64), b), np.float64, factor=1e3)


@pytest.mark.filterwarnings("ignore:The problem size")  # lobpcg on 12 x 30: dense fallback
@pytest.mark.parametrize("solver", ["arpack", "propack", "lobpcg"])
@pytest.mark.parametrize("name", ["float64", "complex128", "rect-float64"])
def test_svds(name, solver, systems):
    B = systems[name]
    op = B.aslinearoperator()
    k = 3
    if solver == "lobpcg":
        pytest.importorskip("scipy", minversion="1.9")
    singular = sla.svds(op, k=k, solver=solver, return_singular_vectors=False,
                        random_state=np.random.default_rng(0), maxiter=2000)
    expected = np.linalg.svd(dense_of(B), compute_uv=False)[:k]
    np.testing.assert_allclose(np.sort(singular)[::-1], expected, rtol=1e-6 if solver == "lobpcg" else 1e-10)


# ============================================================================ PyLops
@pytest.mark.parametrize("name", ["float64", "complex128", "float32", "complex64", "rect-float64"])
def test_pylops_dottest(name, systems):
    from pylops.utils import dottest

    B = systems[name]
    Op = pylops.LinearOperator(B.aslinearoperator())
    m, n = B.shape
    complexflag = 3 if B.dtype.kind == "c" else 0
    tolerance = 1e-4 if B.dtype in (np.float32, np.complex64) else 1e-10
    assert dottest(Op, m, n, complexflag=complexflag, rtol=tolerance, raiseerror=True)
    # PyLops' own adjoint operator goes through rmatvec
    assert dottest(Op.H, n, m, complexflag=complexflag, rtol=tolerance, raiseerror=True)


@pytest.mark.parametrize("name", ["float64", "complex128", "rect-float64"])
def test_pylops_inversion(name, systems, rng):
    from pylops.optimization.basic import cgls, lsqr

    B = systems[name]
    Op = pylops.LinearOperator(B.aslinearoperator())
    dense = dense_of(B)
    m, n = B.shape
    dtype = np.complex128 if B.dtype.kind == "c" else np.float64
    x_true = random_array(rng, n, dtype)
    y = dense @ x_true
    expected = np.linalg.lstsq(dense, y, rcond=None)[0]  # minimum norm when m < n
    x0 = np.zeros(n, dtype=dtype)
    x = cgls(Op, y, x0=x0, niter=300, tol=1e-20)[0]
    assert_close(x, expected, np.float64, factor=1e4)
    x = lsqr(Op, y, x0=x0, niter=300, atol=1e-15, btol=1e-15)[0]
    assert_close(x, expected, np.float64, factor=1e4)
    # and the overloaded operators
    assert_close(Op * x_true, y, np.float64, factor=10)
    assert_close(Op.H @ y, dense.conj().T @ y, np.float64, factor=10)
