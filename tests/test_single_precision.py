"""Single-precision factorization: float32 / complex64 blocks take their first power step
in single precision (`fastbfly._kernels._top_pair`), so exact butterflies, extreme
scales, slowly converging blocks and the reported error are checked against the same
matrices in double precision and against dense references."""

import numpy as np
import pytest
import scipy.linalg

import fastbfly._kernels as _kernels
from fastbfly import Chain, factorize

import naive
from conftest import (NAMED_TREES, assert_close, dtype_id, eps, noisy, random_array,
                      random_factors, relative_error, rtol, run_split_rank_one)
from fastbfly import Butterfly

SINGLE = [np.dtype(np.float32), np.dtype(np.complex64)]
DOUBLE = {np.dtype(np.float32): np.dtype(np.float64),
          np.dtype(np.complex64): np.dtype(np.complex128)}


def dft(n, dtype):
    return np.fft.fft(np.eye(n)).astype(dtype)


def split(node, b1, c1):
    """The serial rank-one split kernel on ``node``: ``(left, right, norm2, residual2)``
    (sums as plain floats)."""
    left, right, norm2, residual2, bad = run_split_rank_one(node, b1, c1)
    assert bad == 0
    return left, right, norm2, residual2


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("n", [64, 1024])
@pytest.mark.parametrize("dtype", SINGLE, ids=dtype_id)
def test_known_transforms_recovered_to_single_precision(dtype, n, tree):
    if dtype.kind == "c":
        Z, perm = dft(n, dtype), "bitrev"
    else:
        Z, perm = scipy.linalg.hadamard(n).astype(dtype), None
    B = factorize(Z, perm=perm, tree=tree)
    assert B.dtype == dtype
    actual = relative_error(B.toarray(), Z)
    assert actual <= 8 * eps(dtype)  # a few float32 ulps, like the double path's few ulps
    # the reported error is the error of the stored single-precision factors
    assert B.info["relative_error"] <= 8 * eps(dtype)


@pytest.mark.parametrize("dtype", SINGLE, ids=dtype_id)
def test_random_butterflies_agree_with_double_precision(dtype, rng):
    n = 256
    factors = random_factors(rng, Chain.square_dyadic(n), DOUBLE[dtype])
    Z64 = Butterfly(factors).toarray()
    Z32 = Z64.astype(dtype)
    B32 = factorize(Z32)
    B64 = factorize(Z64)
    assert_close(B32.toarray(), Z32, dtype)
    assert_close(B32.toarray(), B64.toarray(), dtype)


@pytest.mark.parametrize("scale", [1e-35, 1e-20, 1e20, 1e35])
@pytest.mark.parametrize("dtype", SINGLE, ids=dtype_id)
def test_extreme_scales_in_single_precision(dtype, scale, rng):
    """Blocks outside the single-precision safe range are rescaled before their float32
    power step (their products with unit vectors would underflow or overflow)."""
    n = 256
    factors = random_factors(rng, Chain.square_dyadic(n), DOUBLE[dtype])
    Z = (Butterfly(factors).toarray() * scale).astype(dtype)
    assert np.all(np.isfinite(Z))
    B = factorize(Z)
    approximation = B.toarray().astype(DOUBLE[dtype])
    assert relative_error(approximation, Z.astype(DOUBLE[dtype])) <= rtol(dtype)
    assert B.info["relative_error"] <= rtol(dtype)


def test_start_nearly_orthogonal_to_the_top_vector_converges():
    """A Gaussian 40 × 6 block whose largest column is nearly orthogonal (1e-5) to the
    top right singular vector, with σ₂/σ₁ = 0.91: in single precision the iteration
    would stall at σ₂ (its increase drops below float32 rounding before the top vector
    grows back); the steps after the first run in double precision and find σ₁."""
    dtype = np.dtype(np.float32)
    rng = np.random.default_rng(7)
    for _ in range(1000):
        M = rng.standard_normal((40, 6)).astype(dtype)
        U, s, Vh = np.linalg.svd(M.astype(DOUBLE[dtype]))
        best = np.argmax(np.sum(np.abs(M.astype(DOUBLE[dtype])) ** 2, axis=0))
        if abs(Vh[0, best]) < 1e-2 and s[1] / s[0] > 0.85:
            break
    else:
        pytest.fail("no such block drawn")
    left, right, norm2, residual2 = split(M.reshape(1, 40, 6, 1), 40, 1)
    product = left[0, :, 0, 0].astype(DOUBLE[dtype])[:, None] * right[0, 0, :, 0].astype(
        DOUBLE[dtype])[None, :]
    optimal2 = np.sum(s[1:] ** 2)
    residual = np.linalg.norm(M.astype(DOUBLE[dtype]) - product)
    assert residual**2 <= optimal2 * (1 + 1e-4)
    assert residual2 == pytest.approx(optimal2, rel=1e-4)


@pytest.mark.parametrize("dtype", SINGLE, ids=dtype_id)
@pytest.mark.parametrize("kind", ["exact", "noise-1e-5", "noise-1e-2"])
def test_block_residuals_in_single_precision(dtype, kind, rng):
    """Per block: the residual sum the kernel reports matches the residual of the
    single-precision factors it wrote (computed densely in double), at the three
    regimes of `_top_pair`: exact (first step confirmed by the direct residual), nearly
    exact (the float32 σ² cannot tell: double steps), noisy."""
    b1, c1, b2, c2 = 16, 8, 4, 24
    shape = (2, b1 * b2, c1 * c2, 1)
    node = np.empty(shape, dtype=dtype)
    level = {"exact": 0.0, "noise-1e-5": 1e-5, "noise-1e-2": 1e-2}[kind]
    for block in naive.block_indices(shape, b1, c1):
        i, k1, j2, t, rows, columns = block
        M = np.outer(random_array(rng, (b1,), DOUBLE[dtype]), random_array(rng, (c2,), DOUBLE[dtype]))
        if level:
            M = noisy(rng, M, level)
        node[i][np.ix_(rows, columns, [t])] = M.astype(dtype)[..., None]
    left, right, norm2, residual2 = split(node, b1, c1)
    products = []
    total2 = 0.0
    for i, k1, j2, t, rows, columns in naive.block_indices(shape, b1, c1):
        M = node[i][np.ix_(rows, columns, [t])][..., 0].astype(np.complex128)
        u = left[i, :, k1, j2 * 1 + t].astype(np.complex128)
        v = right[i * c1 + k1, j2, :, t].astype(np.complex128)
        total2 += np.linalg.norm(M - np.outer(u, v)) ** 2
        products.append(np.linalg.svd(M, compute_uv=False))
    optimal2 = sum(float(np.sum(s[1:] ** 2)) for s in products)
    assert norm2 == pytest.approx(float(np.sum(np.abs(node.astype(np.complex128)) ** 2)),
                                  rel=1e-12)
    if kind == "exact":
        # rounding level: the entries themselves are float32
        assert residual2 <= 64 * eps(dtype) ** 2 * norm2
        assert total2 <= 64 * eps(dtype) ** 2 * norm2
    else:
        assert total2 <= optimal2 * (1 + 1e-3) + 64 * eps(dtype) ** 2 * norm2
        # what is reported is the residual of the computed vectors, before they are
        # rounded to single precision: to rounding of the factors
        assert residual2 == pytest.approx(total2, rel=1e-3)
        assert residual2 == pytest.approx(optimal2, rel=1e-3)


@pytest.mark.parametrize("tree", ["left-to-right", "right-to-left"])
@pytest.mark.parametrize("dtype", SINGLE, ids=dtype_id)
def test_reported_error_from_residual_sums_in_single_precision(dtype, tree, rng):
    """Orthonormalised one-sided trees report the root-sum-square of the block residuals
    (no separate error pass): in single precision too it must match the actual error of
    the single-precision factors."""
    n = 256
    factors = random_factors(rng, Chain.square_dyadic(n), DOUBLE[dtype])
    Z = noisy(rng, Butterfly(factors).toarray(), 0.05).astype(dtype)
    B = factorize(Z, tree=tree, orthonormalize=True)
    actual = relative_error(B.toarray().astype(DOUBLE[dtype]), Z.astype(DOUBLE[dtype]))
    assert B.info["relative_error"] == pytest.approx(actual, rel=1e-4)
