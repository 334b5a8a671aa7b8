"""Rank-r split speed work, part 6 (issue 3): noisy wide blocks projected on the left
skip the refinement (Gram basis rotated into Ritz vectors, `_kernels._ritz_rotate`),
and in-order nodes with one t are gathered by whole-row copies.  Checked against the
SVD, against the refined path's accuracy on exact blocks, and against the element-wise
gather of permuted columns."""

from __future__ import annotations

import numpy as np
import pytest

from fastbfly import _kernels

from conftest import dtype_id
from test_rank_r_speed import blocks, random_array, run_rank_r

TOL = 8.0 * np.finfo(np.float64).eps


def low_rank_node(rng, shape, b1, c1, rank, noise, dtype, spread=1.0):
    """A node whose every block is a random rank-``rank`` matrix (singular values spread
    over ``spread`` decades) plus ``noise`` relative Gaussian noise."""
    a, big_b, big_c, d = shape
    b2, c2 = big_b // b1, big_c // c1
    node = np.zeros(shape, dtype=dtype)
    for i in range(a):
        for k1 in range(c1):
            for j2 in range(b2):
                for t in range(d):
                    U = np.linalg.qr(random_array(rng, (b1, rank), dtype))[0]
                    V = np.linalg.qr(random_array(rng, (c2, rank), dtype))[0]
                    s = np.logspace(0, -spread, rank)
                    block = (U * s) @ V.conj().T
                    E = random_array(rng, (b1, c2), dtype)
                    block = block + noise * np.linalg.norm(block) / np.linalg.norm(E) * E
                    node[i, j2::b2, k1 * c2:(k1 + 1) * c2, t] = block
    return node


# wide blocks (b1 <= C2): the left projection's noisy path; loops and BLAS sizes
WIDE = [((2, 16, 256, 1), 8, 2, 2),    # 8 x 128 (1024 x 1024 rank 2 root)
        ((1, 64, 96, 1), 32, 2, 4),    # 32 x 48 (384 x 1536 rank 4 root)
        ((1, 12, 30, 2), 6, 3, 2)]     # 6 x 10, loops, d = 2 (panel path)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("shape, b1, c1, rank", WIDE)
@pytest.mark.parametrize("noise", [0.1, 1.0])
def test_noisy_wide_blocks_match_the_svd(shape, b1, c1, rank, noise, dtype, rng):
    """Noisy blocks (squared error far above ``UNREFINED``): ``U Uᴴ M`` with ``U``
    orthonormal, the residual orthogonal to ``U``, the error the SVD's to 1e-7 (the
    subspace iteration stops at an estimated 1e-9: single blocks exceed it by a little),
    the right rows' norms the singular values, in decreasing order."""
    node = low_rank_node(rng, shape, b1, c1, rank, noise, dtype)
    left, right, norm2, residual2 = run_rank_r(node, b1, c1, rank, 0.0)
    total = 0.0
    for M, U, R in blocks(node, left, right, b1, c1, rank):
        scale = np.linalg.norm(M)
        s = np.linalg.svd(M, compute_uv=False)
        optimal = np.sum(s[rank:] ** 2)
        assert optimal > 1e-4 * scale**2  # noisy indeed: this path is not the refined one
        np.testing.assert_allclose(U.conj().T @ U, np.eye(rank), atol=1e-14)
        residual = M - U @ R
        assert np.linalg.norm(U.conj().T @ residual) <= 1e-13 * scale
        error2 = np.linalg.norm(residual) ** 2
        assert optimal * (1 - 1e-12) <= error2 <= optimal * (1 + 1e-7)
        sigma = np.linalg.norm(R, axis=1)
        np.testing.assert_allclose(sigma, s[:rank], rtol=1e-6)
        assert np.all(np.diff(sigma) <= 0)
        # Ritz vectors: the right rows are orthogonal up to the Gram's rounding
        gram = R @ R.conj().T
        off = np.abs(gram - np.diag(np.diag(gram)))
        assert off.max() <= 1e-11 * scale**2
        total += error2
    assert residual2 == pytest.approx(total, rel=1e-10)
    assert norm2 == pytest.approx(np.linalg.norm(node) ** 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("shape, b1, c1, rank", WIDE)
@pytest.mark.parametrize("noise", [0.0, 1e-4, 1e-2])
def test_exact_and_nearly_exact_blocks_keep_svd_accuracy(shape, b1, c1, rank, noise, dtype, rng):
    """Exact blocks with singular values over 5 decades, and noise that puts ‖M‖² − σ²
    just below (1e-8) and above (1e-4) ``UNREFINED`` = 1e-6 of ‖M‖²: either path
    reaches the SVD's error to rounding (the refinement keeps exact blocks exact), or to
    1e-6 of it where noise ties σ_r and σ_{r+1} (σ₄/σ₅ = 1.15 here: the subspace
    iteration's geometric tail estimate then stops at 2e-7, with or without this path,
    as the bound of ``test_orthonormal_leaf_blocks_are_left_projections``)."""
    assert _kernels.UNREFINED == 1e-6
    node = low_rank_node(rng, shape, b1, c1, rank, noise, dtype, spread=5.0)
    left, right, _, _ = run_rank_r(node, b1, c1, rank, 0.0)
    for M, U, R in blocks(node, left, right, b1, c1, rank):
        scale = np.linalg.norm(M)
        optimal = np.sum(np.linalg.svd(M, compute_uv=False)[rank:] ** 2)
        np.testing.assert_allclose(U.conj().T @ U, np.eye(rank), atol=1e-14)
        error2 = np.linalg.norm(M - U @ R) ** 2
        assert error2 <= optimal * (1 + 1e-6) + (1e-13 * scale) ** 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("shape, b1, c1, rank", [((2, 16, 256, 1), 8, 2, 2),   # wide: row copies
                                                 ((1, 128, 32, 1), 64, 2, 2),  # tall: slice panel
                                                 ((1, 12, 30, 3), 6, 3, 2)])   # d = 3: gather
@pytest.mark.parametrize("sigma_power", [0.0, 1.0])
def test_in_order_gather_matches_permuted_gather(shape, b1, c1, rank, sigma_power, dtype, rng):
    """The in-order gathers (row copies into the block, slice copies into the panel)
    give bit for bit the blocks, hence the factors, of the element-wise gather through
    a column permutation of the same data."""
    node = random_array(rng, shape, dtype)
    permutation = rng.permutation(shape[2]).astype(np.int64)
    permuted = np.empty_like(node)
    permuted[:, :, permutation, :] = node  # column c of the blocks is permuted[..., π[c], :]
    expected = run_rank_r(node, b1, c1, rank, sigma_power)
    got = run_rank_r(permuted, b1, c1, rank, sigma_power, columns=permutation)
    for e, g in zip(expected[:2], got[:2]):
        np.testing.assert_array_equal(g, e)
    assert got[2:] == expected[2:]


def random_gram(rng, p, spectrum, dtype):
    Q = np.linalg.qr(random_array(rng, (p, p), dtype))[0]
    G = (Q * spectrum) @ Q.conj().T
    return (G + G.conj().T) / 2


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("p, r, kind", [(12, 3, "gap"), (40, 2, "flat"), (8, 2, "rank")])
def test_top_subspace_returns_the_energy_and_the_products(p, r, kind, dtype, rng):
    """`_top_subspace` returns ``σ² = trace(Qᴴ G Q)`` of the rows it returns, and leaves
    ``G q_ρ`` in ``Z``: after subspace iteration, after the LAPACK fallback (a flat
    spectrum exhausts the step budget) and for a Gram of rank r (one step)."""
    if kind == "gap":
        spectrum = np.concatenate([[9.0, 5.0, 3.0], rng.uniform(0, 0.1, p - 3)])
    elif kind == "flat":
        spectrum = 1.0 + 1e-3 * rng.uniform(size=p)
    else:
        spectrum = np.concatenate([[4.0, 1.0], np.zeros(p - 2)])
    G = random_gram(rng, p, spectrum, dtype)
    Q = np.empty((r, p), dtype=dtype)
    Z = np.empty((r, p), dtype=dtype)
    norm2 = float(np.trace(G).real)
    sigma2 = _kernels._top_subspace(G, p, r, norm2, Q, Z, np.empty(p), TOL)
    np.testing.assert_allclose(Q @ Q.conj().T, np.eye(r), atol=1e-14)
    np.testing.assert_allclose(Z, Q @ G.T, atol=1e-13 * np.abs(spectrum).max())
    assert sigma2 == pytest.approx(float(np.trace(Q.conj() @ G @ Q.T).real), rel=1e-13)
    top = np.sort(spectrum)[::-1][:r].sum()
    assert sigma2 <= top * (1 + 1e-13)
    if kind != "flat":  # a flat spectrum's top subspace is ill-determined, its energy not
        # the stopping rule: the remaining decrease of ‖A‖² − σ², about RESIDUAL_TOL of it
        assert top - sigma2 <= 10 * _kernels.RESIDUAL_TOL * (norm2 - top) + 1e-13 * top


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("p, r", [(20, 4), (8, 2), (5, 5)])
def test_ritz_rotate_diagonalises_the_projected_gram(p, r, dtype, rng):
    """`_ritz_rotate` keeps ``Q`` orthonormal and its span, and makes ``Q G Qᴴ``
    diagonal down to ``floor`` (the Gram's rounding)."""
    G = random_gram(rng, p, rng.uniform(0, 1, p) ** 2, dtype)
    Q = np.ascontiguousarray(np.linalg.qr(random_array(rng, (p, r), dtype))[0].T)
    projector = Q.T @ Q.conj()
    Z = np.ascontiguousarray(Q @ G.T)
    J = np.empty((r, r), dtype=dtype)
    K = np.empty((r, r), dtype=dtype)
    floor = p * TOL * float(np.trace(G).real)  # as the split kernel passes it
    _kernels._ritz_rotate(Q, Z, p, r, floor, J, K)
    np.testing.assert_allclose(Q @ Q.conj().T, np.eye(r), atol=1e-14)
    np.testing.assert_allclose(Q.T @ Q.conj(), projector, atol=1e-13)
    H = Q.conj() @ G @ Q.T
    off = np.abs(H - np.diag(np.diag(H)))
    assert off.max() <= 2 * floor
    assert np.abs(H).max() > 1e3 * floor  # (not vacuous)
