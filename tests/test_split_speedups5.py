"""Speed-ups of the split kernels for issue 3's general shapes: the Gram-matrix
continuation of slowly converging rank-one power iterations (noise-like blocks), the
L2-sized panels of in-order columns, and the rank-r kernel's blocks solved unscaled in
the safe range."""

import numpy as np
import pytest

import fastbfly
from fastbfly import _kernels, factorization
from fastbfly.patterns import Chain

from conftest import dtype_id, eps, random_array, rtol, run_split_rank_one

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def run_rank_one(node, b1, c1):
    """The serial rank-one split kernel: ``(left, right, residual2)``."""
    left, right, _, residual2, bad = run_split_rank_one(node, b1, c1)
    assert bad == 0
    return left, right, residual2


def blocks_of(node, b1, c1):
    """``{(i, k1, j2, t): block}`` (the layout of `fastbfly._kernels._split_rank_one_py`)."""
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    out = {}
    for i in range(a):
        for k1 in range(c1):
            for j2 in range(b2):
                for t in range(d):
                    out[i, k1, j2, t] = node[i, j2::b2, k1 * c2:(k1 + 1) * c2, t]
    return out


def check_near_optimal(node, b1, c1, left, right, residual2, slack):
    """Every block's rank-one residual within ``slack`` (relative, plus rounding of the
    stored factors) of the best (SVD), and the reported sum the sum of the blocks'."""
    a, big_b, big_c, d = node.shape
    b2 = big_b // b1
    dtype = node.dtype
    total = 0.0
    for (i, k1, j2, t), M in blocks_of(node, b1, c1).items():
        M = M.astype(np.complex128)
        u = left[i, :, k1, j2 * d + t].astype(np.complex128)
        v = right[i * c1 + k1, j2, :, t].astype(np.complex128)
        residual = np.linalg.norm(M - np.outer(u, v))
        s = np.linalg.svd(M, compute_uv=False)
        optimal = np.sqrt(np.sum(s[1:] ** 2))
        norm = np.linalg.norm(M)
        assert residual <= optimal * (1 + slack) + 4 * rtol(dtype) * norm, (
            (i, k1, j2, t), residual / optimal - 1, s[1] / s[0])
        total += optimal**2
    assert abs(residual2 - total) <= 1e-6 * total + 8 * rtol(dtype) * np.linalg.norm(node) ** 2


# Gaussian blocks: their top singular values nearly tie, so power iteration takes about
# a hundred steps (more than GRAM_STEPS_BASE + min(b1, c2) // 4): the Gram-matrix
# continuation (`_kernels._gram_power`) solves them.  Tall, wide, square; the Gram
# matrix through BLAS (192 x 16, 16 x 64) and through loops (6 x 5: 150 < BLAS_MIN_WORK).
NOISE_SHAPES = {"192x16": (192, 16), "40x6": (40, 6), "16x64": (16, 64), "6x40": (6, 40),
                "24x24": (24, 24), "6x5": (6, 5)}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", sorted(NOISE_SHAPES))
def test_noise_like_blocks_reach_the_best_rank_one_residual(shape, dtype, rng):
    b1, c2 = NOISE_SHAPES[shape]
    b2, c1 = 3, 4  # 12 blocks
    node = random_array(rng, (1, b1 * b2, c1 * c2, 1), dtype)
    node_copy = node.copy()
    left, right, residual2 = run_rank_one(node, b1, c1)
    np.testing.assert_array_equal(node, node_copy)
    # Before the Gram continuation the power iteration stopped up to 3e-7 (relative, in
    # the total error) above the optimum on such blocks; a vector outside the top
    # singular direction is percents off.
    check_near_optimal(node, b1, c1, left, right, residual2, slack=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=dtype_id)
def test_blocks_too_large_for_the_gram_workspace(dtype, rng):
    """A block whose shorter side exceeds `GRAM_MAX_SIDE` gets no Gram workspace (a
    one-block chain would allocate ``3 min(m, n)²`` values): plain power iteration."""
    b1, c2 = _kernels.GRAM_MAX_SIDE + 12, _kernels.GRAM_MAX_SIDE + 4
    node = random_array(rng, (1, b1, c2, 1), dtype)
    left, right, residual2 = run_rank_one(node, b1, 1)
    check_near_optimal(node, b1, 1, left, right, residual2, slack=1e-5)


def test_factorize_random_weights_close_to_the_best_splits(rng):
    """The 768 x 3072 part of issue 3 in small: random float32 weights on an automatic
    chain of two factors with 8 x 48 blocks (the Gram continuation, BLAS for the Gram
    matrix): the error is the optimal one of its blocks."""
    W = rng.standard_normal((96, 384)).astype(np.float32)
    chain = Chain([(1, 8, 8, 12), (8, 12, 48, 1)])  # blocks 8 x 48
    B = fastbfly.factorize(W, chain=chain)
    blocks = W.astype(np.float64).reshape(8, 12, 8, 48).transpose(1, 2, 0, 3)
    s = np.linalg.svd(blocks, compute_uv=False)
    optimal = np.sqrt((s[..., 1:] ** 2).sum() / (s**2).sum())
    assert optimal <= B.info["relative_error"] <= optimal * (1 + 1e-6)
    dense = np.linalg.multi_dot([f.toarray().astype(np.float64) for f in B.factors])
    measured = np.linalg.norm(W - dense) / np.linalg.norm(W)
    assert abs(measured - B.info["relative_error"]) <= 1e-5 * measured


@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("tree", ["balanced", "left-to-right"])
def test_panel_size_does_not_change_the_result(tree, dtype, rng, monkeypatch):
    """In-order columns are gathered in L2-sized panels (`IN_ORDER_PANEL_BYTES`), a
    permutation in `PANEL_BYTES` ones: the blocks are solved independently, so any
    panel size (here one block per panel, and everything in one) gives the same bits,
    and so does an explicit identity permutation (detected as in order)."""
    Z = random_array(rng, (96, 384), dtype)
    chain = Chain([(1, 6, 6, 16), (6, 8, 8, 2), (48, 2, 8, 1)])
    reference = fastbfly.factorize(Z, chain=chain, tree=tree)
    for panel in (1, 1 << 30):
        monkeypatch.setattr(factorization, "IN_ORDER_PANEL_BYTES", panel)
        B = fastbfly.factorize(Z, chain=chain, tree=tree)
        for ours, theirs in zip(B.factors, reference.factors):
            np.testing.assert_array_equal(ours.values, theirs.values)
    monkeypatch.setattr(factorization, "IN_ORDER_PANEL_BYTES", 1)
    B = fastbfly.factorize(Z, chain=chain, tree=tree, perm=np.arange(384))
    for ours, theirs in zip(B.factors, reference.factors):
        np.testing.assert_array_equal(ours.values, theirs.values)
    assert factorization._in_order(np.arange(5)) and factorization._in_order(np.arange(1))
    assert not factorization._in_order(np.array([0, 2, 1, 3]))


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("exponent", [-200, 200])
def test_rank_r_blocks_outside_the_safe_range_are_rescaled(exponent, dtype, rng):
    """The rank-r kernel solves blocks as they are when ‖A‖² is in [2**-300, 2**300]
    and rescales the others: a node scaled by 2**±200 (‖A‖² ≈ 2**±400) gives the same
    factors scaled by the same power of two (left = σ u takes it, right = vᴴ not)."""
    b1, c1, rank = 8, 4, 2
    node = random_array(rng, (1, b1 * 3, c1 * 12, 1), dtype)
    scaled = np.ldexp(node.real, exponent) + (1j * np.ldexp(node.imag, exponent) if node.dtype.kind == "c" else 0)
    scaled = scaled.astype(dtype)

    def run(values):
        a, big_b, big_c, d = values.shape
        b2, c2 = big_b // b1, big_c // c1
        left = np.full((a, b1, c1 * rank, b2 * d), np.nan, dtype=dtype)
        right = np.full((a * c1, rank * b2, c2, d), np.nan, dtype=dtype)
        sums = [np.zeros(1), np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.int64)]
        work = np.zeros(1, dtype=np.complex128 if values.dtype.kind == "c" else np.float64)
        _kernels.split_rank_r_serial(values, np.arange(big_c), b1, c1, rank, 1, left, right, 1.0,
                                     8 * eps(np.float64), work, 1, *sums)
        return left, right, sums
    left, right, (norm2, residual2, e, bad) = run(node)
    left_s, right_s, (norm2_s, residual2_s, e_s, bad_s) = run(scaled)
    assert bad[0] == bad_s[0] == 0
    tolerance = 1e-13
    np.testing.assert_allclose(left_s, np.ldexp(left.real, exponent) + (1j * np.ldexp(left.imag, exponent) if left.dtype.kind == "c" else 0), rtol=tolerance, atol=tolerance * np.ldexp(np.abs(left).max(), exponent))
    np.testing.assert_allclose(right_s, right, rtol=tolerance, atol=tolerance * np.abs(right).max())
    total = norm2[0] * 4.0 ** float(e[0])
    total_s = norm2_s[0] * 4.0 ** float(e_s[0] - exponent)
    assert abs(total_s - total) <= 1e-13 * total
