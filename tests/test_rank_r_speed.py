"""Rank-r speed work (issue 3): the rank-r block kernel's BLAS products and column-group
panels, its left projection (which makes the orthonormalised left-to-right error exact
for every rank, so `factorize` skips the extra pass over the matrix), and the in-order
path of the product-error kernel."""

from __future__ import annotations

import numpy as np
import pytest

from fastbfly import Chain, factorize
from fastbfly import _errors, _kernels
from fastbfly.factorization import _exact_relative_error, _residual_sum_is_exact
from fastbfly.trees import build_tree

from conftest import dtype_id, rtol

# Chains with ranks 2-4 between factors, wide and tall blocks, primes 3 and 5.
RANK_CHAINS = {
    "24x40-r2": Chain.auto(24, 40, 3, 2),
    "96x60-r3": Chain.auto(96, 60, 3, 3),
    "64x64-r2-4f": Chain.auto(64, 64, 4, 2),
    "48x48-r4": Chain.auto(48, 48, 2, 4),
}


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    values = rng.standard_normal(shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def dense_error(B, Z) -> float:
    difference = B.toarray().astype(np.complex128) - Z.astype(np.complex128)
    return float(np.linalg.norm(difference) / np.linalg.norm(Z.astype(np.complex128)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("name", sorted(RANK_CHAINS))
def test_left_to_right_error_is_exact_for_every_rank(name, dtype, rng):
    """The residual sum is the product's error (no extra pass), to the factors' rounding."""
    chain = RANK_CHAINS[name]
    root = build_tree("left-to-right", len(chain))
    assert _residual_sum_is_exact(root, True, chain)
    Z = random_array(rng, chain.shape, dtype)
    B = factorize(Z, chain=chain, tree="left-to-right")
    # double precision: rounding; single: the factors' own rounding (as for rank one)
    tolerance = 1e-12 if np.dtype(dtype) in (np.float64, np.complex128) else 1e-6
    assert 0.1 < B.info["relative_error"] < 1
    assert B.info["relative_error"] == pytest.approx(dense_error(B, Z), rel=tolerance)


@pytest.mark.parametrize("name", sorted(RANK_CHAINS))
def test_residual_sum_is_only_trusted_where_exact(name):
    chain = RANK_CHAINS[name]
    for tree in ("left-to-right", "balanced", "right-to-left"):
        root = build_tree(tree, len(chain))
        expected = len(chain) <= 2 or tree == "left-to-right"
        assert _residual_sum_is_exact(root, True, chain) == expected
        assert _residual_sum_is_exact(root, False, chain) == (len(chain) <= 2)


@pytest.mark.parametrize("tree", ["balanced", "right-to-left"])
def test_other_trees_measure_the_error(tree, rng):
    """Trees whose residual sum is not exact still report the dense error."""
    chain = RANK_CHAINS["64x64-r2-4f"]
    Z = random_array(rng, chain.shape, np.float64)
    B = factorize(Z, chain=chain, tree=tree)
    assert B.info["relative_error"] == pytest.approx(dense_error(B, Z), rel=1e-12)


def run_rank_r(node, b1, c1, rank, sigma_power, batch=None, columns=None):
    """Run the serial rank-r split kernel; ``(left, right, norm2, residual2)``."""
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    left = np.full((a, b1, c1 * rank, b2 * d), np.nan, dtype=node.dtype)
    right = np.full((a * c1, rank * b2, c2, d), np.nan, dtype=node.dtype)
    sums = [np.zeros(1), np.zeros(1), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)]
    work = np.zeros(1, dtype=np.complex128 if node.dtype.kind == "c" else np.float64)
    if columns is None:
        columns = np.arange(big_c, dtype=np.int64)
    _kernels.split_rank_r_serial(node, columns, b1, c1, rank,
                                 d if batch is None else batch, left, right, sigma_power,
                                 8.0 * np.finfo(np.float64).eps, work, 1, *sums)
    norm2, residual2, exponent, bad = (s[0] for s in sums)
    assert bad == 0
    return left, right, norm2 * 4.0**exponent, residual2 * 4.0**exponent


def blocks(node, left, right, b1, c1, rank):
    """``(M, U, R)`` per block: the node's block, the left vectors (b1 × r) and the right
    rows (r × C2) the kernel wrote for it."""
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    for i in range(a):
        for k1 in range(c1):
            for j2 in range(b2):
                for t in range(d):
                    M = node[i, j2::b2, k1 * c2:(k1 + 1) * c2, t]
                    U = left[i, :, k1 * rank:(k1 + 1) * rank, j2 * d + t]
                    R = right[i * c1 + k1, j2::b2, :, t]
                    yield M, U, R


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("shape, b1, c1, rank", [((1, 8, 64, 2), 4, 2, 2),    # wide, loops
                                                 ((1, 32, 96, 1), 16, 2, 3),  # wide, BLAS
                                                 ((1, 64, 16, 1), 32, 2, 2)])  # tall
def test_orthonormal_leaf_blocks_are_left_projections(shape, b1, c1, rank, dtype, rng):
    """With σ**0 on the left, every block is approximated by ``U Uᴴ M``: ``U``
    orthonormal and the residual orthogonal to it, the property the exact
    left-to-right error rests on."""
    node = random_array(rng, shape, dtype)
    left, right, norm2, residual2 = run_rank_r(node, b1, c1, rank, 0.0)
    total = 0.0
    for M, U, R in blocks(node, left, right, b1, c1, rank):
        np.testing.assert_allclose(U.conj().T @ U, np.eye(rank), atol=1e-14)
        residual = M - U @ R
        scale = np.linalg.norm(M)
        assert np.linalg.norm(U.conj().T @ residual) <= 1e-13 * scale
        total += np.linalg.norm(residual) ** 2
        optimal = np.sum(np.linalg.svd(M, compute_uv=False)[rank:] ** 2)
        assert np.linalg.norm(residual) ** 2 <= optimal * (1 + 1e-6) + 1e-24 * scale**2
    assert residual2 == pytest.approx(total, rel=1e-10)
    assert norm2 == pytest.approx(np.linalg.norm(node) ** 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_column_group_panels_with_remainders(batch, dtype, rng):
    """Several column groups per panel (``RANK_PANEL_VALUES``, ``RANK_BATCH_PANEL_VALUES``
    for several t), a last panel with fewer groups, batches of t with a remainder: exact
    rank-2 blocks come back exactly."""
    b1, c1, rank, c2, b2, d = 4, 13, 2, 8, 2, 64
    panel_values = _kernels.RANK_PANEL_VALUES if batch == 1 else _kernels.RANK_BATCH_PANEL_VALUES
    groups = panel_values // (batch * b1 * c2)
    if batch == d:  # panels of several column groups, the last one shorter
        assert 1 < groups < c1 and c1 % groups
    else:  # all groups in one panel; t in batches with a remainder (batch 5)
        assert groups >= c1
    work = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    node = np.zeros((1, b1 * b2, c1 * c2, d), dtype=work)
    for k1 in range(c1):
        for j2 in range(b2):
            for t in range(d):
                block = random_array(rng, (b1, rank), work) @ random_array(rng, (rank, c2), work)
                node[0, j2::b2, k1 * c2:(k1 + 1) * c2, t] = block
    node = node.astype(dtype)
    left, right, norm2, residual2 = run_rank_r(node, b1, c1, rank, 1.0, batch=batch)
    for M, U, R in blocks(node, left, right, b1, c1, rank):
        scale = np.linalg.norm(M.astype(work))
        assert np.linalg.norm((U.astype(work) @ R.astype(work)) - M) <= 30 * rtol(dtype) * scale
    assert residual2 <= (30 * rtol(dtype)) ** 2 * norm2


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (3, 5, 7), (2, 8, 64), (16, 16, 16), (4, 32, 48)])
def test_block_products_match_numpy(m, n, k, dtype, rng):
    """`_times_transpose` and `_times_plain` below and above ``BLAS_MIN_WORK``."""
    X = random_array(rng, (m, k), dtype)
    Y = random_array(rng, (n, k), dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    _kernels._times_transpose(X, Y, out)
    np.testing.assert_allclose(out, X @ Y.T, rtol=1e-13, atol=1e-13 * k)
    Yt = np.ascontiguousarray(Y.T)
    out = np.full((m, n), np.nan, dtype=dtype)
    _kernels._times_plain(X, Yt, out)
    np.testing.assert_allclose(out, X @ Yt, rtol=1e-13, atol=1e-13 * k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("name", sorted(RANK_CHAINS) + ["dyadic-16"])
@pytest.mark.parametrize("permuted", [False, True])
def test_product_error_in_order_and_permuted(name, permuted, dtype, rng):
    """`product_errors` (four partial sums in column order, or the permuted loop)
    against the dense difference."""
    chain = RANK_CHAINS.get(name) or Chain.square_dyadic(16)
    m, n = chain.shape
    values = [random_array(rng, tuple(p), dtype) for p in chain]
    product = values_product(chain, values)
    if np.dtype(dtype).kind == "f":
        product = product.real  # real factors: the imaginary part is exactly zero
    Z = (product + 0.3 * random_array(rng, (m, n), np.complex128 if np.dtype(dtype).kind == "c"
                                       else np.float64)).astype(dtype)
    columns = rng.permutation(n).astype(np.int64) if permuted else None
    norm, inside, total = _errors.product_errors(Z, chain, values, columns)
    target = Z.astype(np.complex128)[:, columns if permuted else slice(None)]
    expected = np.linalg.norm(target - product)
    # single precision: the fused factors are formed in the factors' own precision
    tolerance = 1e-12 if np.dtype(dtype) in (np.float64, np.complex128) else 1e-6
    assert norm == pytest.approx(np.linalg.norm(Z.astype(np.complex128)), rel=1e-13)
    assert total == pytest.approx(expected, rel=tolerance)
    assert inside == pytest.approx(expected, rel=tolerance)


def values_product(chain, values) -> np.ndarray:
    """Dense ``X_1⋯X_L`` in complex128 from the 4-D values (the storage layout of
    `fastbfly._kernels`)."""
    product = None
    for pattern, value in zip(chain, values):
        a, b, c, d = pattern
        dense = np.zeros((a * b * d, a * c * d), dtype=np.complex128)
        for i in range(a):
            for t in range(d):
                dense[i * b * d + t:(i + 1) * b * d:d, i * c * d + t:(i + 1) * c * d:d] = value[i, :, :, t]
        product = dense if product is None else product @ dense
    return product


def test_exact_relative_error_is_the_dense_one(rng):
    chain = RANK_CHAINS["96x60-r3"]
    Z = random_array(rng, chain.shape, np.float64)
    B = factorize(Z, chain=chain, tree="balanced")
    error = _exact_relative_error(Z, chain, B.factors, np.arange(chain.shape[1], dtype=np.int64))
    assert error == pytest.approx(dense_error(B, Z), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("name", sorted(RANK_CHAINS))
@pytest.mark.parametrize("kind", ["random", "dependent", "huge", "tiny"])
def test_push_column_frames_rank_r(name, kind, dtype, rng):
    """The Gram-Schmidt kernel: column groups orthonormal, the product of the factor and
    the next one unchanged, also for dependent columns (a zero and a repeated column
    per group) and entries whose squares overflow or underflow."""
    from fastbfly.factorization import _push_column_frames

    chain = RANK_CHAINS[name]
    for k in range(len(chain) - 1):
        rank = chain.ranks[k]
        first = random_array(rng, tuple(chain[k]), dtype)
        second = random_array(rng, tuple(chain[k + 1]), dtype)
        if kind == "dependent":
            first[:, :, 0::rank, :] = 0
            if rank > 2:
                first[:, :, rank - 1::rank, :] = first[:, :, 1::rank, :]
        elif kind in ("huge", "tiny"):
            # squares beyond the largest float, or below the smallest normal one
            scale = np.finfo(dtype).max / 1e4 if kind == "huge" else np.sqrt(np.finfo(dtype).tiny) * 1e-10
            first = (first / np.abs(first).max() * scale).astype(dtype)
            second = (second / np.abs(second).max()).astype(dtype)
        before = values_product([chain[k], chain[k + 1]], [first, second])
        q, target = first.copy(), second.copy()
        _push_column_frames(q, target, rank)
        assert np.all(np.isfinite(q)) and np.all(np.isfinite(target))
        a, b, c, d = q.shape
        groups = q.reshape(a, b, c // rank, rank, d).transpose(0, 2, 4, 1, 3).astype(np.complex128)
        gram = np.conj(groups.swapaxes(-1, -2)) @ groups
        np.testing.assert_allclose(gram, np.broadcast_to(np.eye(rank), gram.shape), atol=30 * rtol(dtype))
        after = values_product([chain[k], chain[k + 1]], [q, target])
        assert np.all(np.isfinite(before)) and np.all(np.isfinite(after))
        unit = np.abs(before).max()  # norms of the scaled products: no overflow in the test
        difference = np.linalg.norm((after - before) / unit)
        assert difference <= 30 * rtol(dtype) * np.linalg.norm(before / unit)
