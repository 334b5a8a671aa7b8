"""Near-exact power-iteration blocks solved on the row planes, and the copies behind them.

`_error_kernels._tile_split_errors` tries the blocks solved by power iteration on the
row planes of the tile first (`_planes_near_exact_power`: the start vector's first
product and the residual along it, Kato–Temple accepted, no gathered copy) while the
split's previous block was near-exact; groups read only from the row planes fill them
straight from the matrix (`_copy_planes`) and restore a block into the tile only for
the gathered path (`_restore_block`).  The Gram splits' near-exact residuals go four
vectors at a time, and two vectors in one sweep (`_planes_pair_residual2`).  Every
kernel is checked against a dense reference, and the split errors against LAPACK's
per-block SVD; sizes are small enough for ``NUMBA_DISABLE_JIT=1`` but the N = 1024
DFT (skipped there).
"""

import numba
import numpy as np
import pytest

import fastbfly
from fastbfly import _error_kernels, _errors
from fastbfly._errors import split_errors
from fastbfly.certificate import certify

from conftest import noisy, random_array, random_factors
from test_certificate_nearexact7 import POWER_CHAINS, RTOL, lapack_split_errors

JIT_OFF = numba.config.DISABLE_JIT
# Relative accuracy of a kernel against its dense reference (both in double precision:
# single-precision data are promoted exactly).
KERNEL_RTOL = 1e-12


def work_dtype(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def planes_of(rng, rows, width, dtype):
    """Row planes of a random ``rows × width`` tile of ``dtype`` (padded as the kernels'
    are), and the tile in double precision."""
    tile = random_array(rng, (rows, width), dtype)
    complex_values = np.dtype(dtype).kind == "c"
    real = np.full((rows, width + _error_kernels.PLANE_PAD), np.nan)
    imag = np.full((rows, width + _error_kernels.PLANE_PAD if complex_values else 1), np.nan)
    real[:, :width] = tile.real
    if complex_values:
        imag[:, :width] = tile.imag
    return real, imag, tile.astype(work_dtype(dtype)), complex_values


# ------------------------------------------------------------------ the plane kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("rows, cols", [(21, 19), (8, 5), (3, 7), (1, 4), (37, 33)])
def test_first_product_and_right_residual_match_a_dense_reference(rng, dtype, rows, cols):
    # a block of the planes (rows t + j·spread, columns from first), row counts that
    # are and are not multiples of 4 (the four-row loops' remainders)
    spread, t, first = 3, 1, 6
    real, imag, tile, complex_values = planes_of(rng, rows * spread, cols + 11, dtype)
    M = tile[t::spread, first:first + cols]
    for side, length in ((2, rows), (1, cols)):
        start = random_array(rng, length, work_dtype(dtype))
        start_real, start_imag = start.real.copy(), np.imag(start).copy()
        saved = real.copy(), imag.copy(), start_real.copy(), start_imag.copy()
        out_real, out_imag = np.full(cols + rows, np.nan), np.full(cols + rows, np.nan)
        norm2, rho = _error_kernels._planes_first_product(
            real, imag, t, spread, rows, first, cols, complex_values, side, start_real,
            start_imag, out_real, out_imag)
        expected = np.conj(M.T) @ start if side == 2 else M @ start
        size = expected.shape[0]
        got = out_real[:size] + (1j * out_imag[:size] if complex_values else 0)
        scale = np.linalg.norm(M) * np.linalg.norm(start)
        assert np.linalg.norm(got - expected) <= KERNEL_RTOL * scale
        assert norm2 == pytest.approx(np.linalg.norm(M) ** 2, rel=KERNEL_RTOL)
        assert rho == pytest.approx(np.linalg.norm(expected) ** 2, rel=KERNEL_RTOL)
        for array, before in zip((real, imag, start_real, start_imag), saved):
            np.testing.assert_array_equal(array, before)  # inputs are not written
    v = random_array(rng, cols, work_dtype(dtype))
    for scale in (1.0, 0.29):
        residual2, length2 = _error_kernels._planes_right_residual2(
            real, imag, t, spread, rows, first, cols, complex_values, v.real.copy(),
            np.imag(v).copy(), scale)
        x = scale * v
        expected = np.linalg.norm(M - np.outer(M @ x, np.conj(x))) ** 2
        tol = KERNEL_RTOL * np.linalg.norm(M) ** 2 * max(1.0, np.linalg.norm(x) ** 4)
        assert abs(residual2 - expected) <= tol
        assert abs(length2 - np.linalg.norm(M @ x) ** 2) <= tol


@pytest.mark.parametrize("dtype", [np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("k, runs", [(2, 1), (2, 3), (3, 1), (5, 2), (8, 1), (16, 2)])
def test_plane_residuals_match_a_dense_reference(rng, dtype, k, runs):
    # Σ_p ‖X_p − conj(x_p) z‖² with z = Σ_p x_p X_p for a unit x, the vectors being
    # runs of planes' rows: the four-at-a-time loops (k >= 4, with remainders), the
    # one-sweep pair (k = 2), and the length of z
    run_length, run_step, step, row0, first = 13, 17, 2, 1, 4
    real, imag, tile, complex_values = planes_of(rng, row0 + k * step, first + runs * run_step,
                                                 dtype)
    vectors = np.stack([np.concatenate([tile[row0 + p * step, first + q * run_step:][:run_length]
                                        for q in range(runs)]) for p in range(k)])
    x = random_array(rng, k, work_dtype(dtype))
    x /= np.linalg.norm(x)
    z = x @ vectors
    expected = np.linalg.norm(vectors - np.outer(np.conj(x), z)) ** 2
    z_real, z_imag = np.empty(run_length), np.empty(run_length)
    residual2 = _error_kernels._planes_near_exact_residual2(
        real, imag, row0, step, k, first, runs, run_step, run_length, complex_values, x, z_real,
        z_imag)
    assert residual2 == pytest.approx(expected, rel=KERNEL_RTOL)
    residual2, length2 = _error_kernels._planes_rank_one_residual2(
        real, imag, row0, step, k, first, runs, run_step, run_length, complex_values, x, z_real,
        z_imag)
    assert residual2 == pytest.approx(expected, rel=KERNEL_RTOL)
    assert length2 == pytest.approx(np.linalg.norm(z) ** 2, rel=KERNEL_RTOL)
    if k == 2:
        pair = _error_kernels._planes_pair_residual2(real, imag, row0, step, first, runs,
                                                     run_step, run_length, complex_values, x)
        assert pair == pytest.approx(expected, rel=KERNEL_RTOL)


def test_pair_residual_keeps_the_small_error_of_a_near_exact_pair(rng):
    # two nearly parallel vectors (error 1e-7 of the norm): the one-sweep form and the
    # general one agree to the rounding of the entries, far below the error
    a = random_array(rng, 200, np.complex128)
    b = (0.6 - 0.3j) * a + 1e-7 * np.linalg.norm(a) / np.sqrt(200) * random_array(rng, 200, np.complex128)
    real = np.stack([a.real, b.real])
    imag = np.stack([a.imag, b.imag])
    singular = np.linalg.svd(np.stack([a, b]), compute_uv=False)
    G = np.conj(np.stack([a, b]) @ np.conj(np.stack([a, b]).T))  # G[p, q] = Σ conj(X_p) X_q
    x = np.linalg.eigh(G)[1][:, -1]
    pair = _error_kernels._planes_pair_residual2(real, imag, 0, 1, 0, 1, 0, 200, True, x)
    general = _error_kernels._planes_rank_one_residual2(real, imag, 0, 1, 2, 0, 1, 0, 200, True, x,
                                                        np.empty(200), np.empty(200))[0]
    assert pair == pytest.approx(singular[1] ** 2, rel=1e-6)
    assert pair == pytest.approx(general, rel=1e-6)


def near_exact_planes(rng, rows, cols, level, dtype=np.complex128):
    """Row planes (spread 2, from row 1, columns from 3) holding a rank-one block plus
    noise of relative norm ``level``; the block, its rank-one part's unit left and
    right singular vectors, and its best rank-one error (LAPACK)."""
    a = random_array(rng, rows, dtype)
    b = random_array(rng, cols, dtype)
    M = noisy(rng, np.outer(a, b), level)
    real, imag, tile, complex_values = planes_of(rng, 2 * rows, cols + 5, dtype)
    real[1::2, 3:3 + cols] = M.real
    if complex_values:
        imag[1::2, 3:3 + cols] = M.imag
    singular = np.linalg.svd(M, compute_uv=False)
    return (real, imag, M, a / np.linalg.norm(a), np.conj(b) / np.linalg.norm(b),
            float(np.sum(singular[1:] ** 2)))


def planes_power(real, imag, rows, cols, side, start, imaginary=1j):
    length = max(rows, cols)
    vectors = [np.full(length, np.nan) for _ in range(4)]
    x = np.zeros(rows, dtype=complex if imaginary else float)
    return _error_kernels._planes_near_exact_power(
        real, imag, 1, 2, rows, 3, cols, imaginary, side, start.real.copy(),
        np.imag(start).copy(), vectors[0], vectors[1], x, vectors[2], vectors[3])


@pytest.mark.parametrize("side", [1, 2])
@pytest.mark.parametrize("level", [1e-7, 1e-9])
@pytest.mark.parametrize("rows, cols", [(37, 29), (18, 41)])
def test_planes_near_exact_power_matches_lapack(rng, side, level, rows, cols):
    # a start from the rank-one part (B's blocks, to the noise): accepted at once, the
    # error LAPACK's to the rounding of the block's entries, ‖M‖² returned with it
    real, imag, M, left, right, exact = near_exact_planes(rng, rows, cols, level)
    residual2, norm2 = planes_power(real, imag, rows, cols, side, left if side == 2 else right)
    assert residual2 >= 0.0
    assert abs(residual2 - exact) <= RTOL[level] * exact + 64 * np.finfo(float).eps * exact
    assert norm2 == pytest.approx(np.linalg.norm(M) ** 2, rel=KERNEL_RTOL)


@pytest.mark.parametrize("side", [1, 2])
def test_planes_near_exact_power_matches_lapack_on_real_data(rng, side):
    rows, cols = 23, 31
    real, imag, M, left, right, exact = near_exact_planes(rng, rows, cols, 1e-7, np.float64)
    residual2, _ = planes_power(real, imag, rows, cols, side, left if side == 2 else right, 0.0)
    assert abs(residual2 - exact) <= RTOL[1e-7] * exact


@pytest.mark.parametrize("side", [1, 2])
def test_planes_near_exact_power_refuses_what_it_cannot_prove(rng, side):
    rows, cols = 33, 24
    real, imag, M, left, right, _ = near_exact_planes(rng, rows, cols, 1e-7)
    start = left if side == 2 else right
    assert planes_power(real, imag, rows, cols, side, start)[0] >= 0.0
    # a start 1e-3 off the top singular vector: near-exact, not proven (Kato–Temple)
    poor = start + 1e-3 * random_array(rng, start.shape, np.complex128) / np.sqrt(start.size)
    assert planes_power(real, imag, rows, cols, side, poor / np.linalg.norm(poor))[0] == -1.0
    # a noisy block (10 % of its norm): not near-exact
    noisy_real, noisy_imag, *_ = near_exact_planes(rng, rows, cols, 0.1)
    assert planes_power(noisy_real, noisy_imag, rows, cols, side, start)[0] == -1.0
    # a zero block, a block with NaN, tiny entries (squares below SAFE_SUM_LOW): left
    # to the gathered path, which scans and rescales
    for value in (0.0, np.nan, 1e-300):
        bad_real = real.copy()
        bad_imag = imag.copy()
        if value == 1e-300:
            bad_real[1::2, 3:3 + cols] *= value
            bad_imag[1::2, 3:3 + cols] *= value
        else:
            bad_real[1::2, 3:3 + cols] = value
            bad_imag[1::2, 3:3 + cols] = value
        assert planes_power(bad_real, bad_imag, rows, cols, side, start)[0] == -1.0


# ------------------------------------------------------------------ the copies
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
@pytest.mark.parametrize("tile_rows", [8, 7])
@pytest.mark.parametrize("permuted", [False, True])
def test_copies_of_the_tile_match_slicing(rng, dtype, tile_rows, permuted):
    # tile rows i·stride + r, columns from first_column, through a column gather; and
    # the blocks restored into an empty tile from the planes
    stride, r, first_column, width = 3, 2, 4, 10
    matrix = random_array(rng, (tile_rows * stride, 16), dtype)
    before = matrix.copy()
    columns = rng.permutation(16) if permuted else np.arange(16)
    expected = matrix[r::stride][:, columns[first_column:first_column + width]]
    tile = np.zeros((tile_rows, width), dtype=dtype)
    _error_kernels._copy_tile(matrix, columns, not permuted, r, stride, first_column, tile)
    np.testing.assert_array_equal(tile, expected)
    complex_values = np.dtype(dtype).kind == "c"
    real = np.full((tile_rows, width + 8), np.nan)
    imag = np.full((tile_rows, width + 8 if complex_values else 1), np.nan)
    _error_kernels._copy_planes(matrix, columns, not permuted, r, stride, first_column, width,
                                complex_values, real, imag)
    np.testing.assert_array_equal(real[:, :width], expected.real)
    if complex_values:
        np.testing.assert_array_equal(imag[:, :width], expected.imag)
    np.testing.assert_array_equal(matrix, before)
    # block t of a split with spread 2 (rows t, t + 2, ...), columns 3..8
    restored = np.zeros((tile_rows, width), dtype=dtype)
    unit = np.array(1j if complex_values else 0.0, dtype=work_dtype(dtype)).item()
    rows = (tile_rows - 1) // 2 + 1
    _error_kernels._restore_block(real, imag, unit, 0, 2, rows, 3, 6, restored)
    np.testing.assert_array_equal(restored[0::2, 3:9], expected[0::2, 3:9])
    assert not restored[1::2].any() and not restored[:, :3].any() and not restored[:, 9:].any()


# ------------------------------------------------------------ split errors against LAPACK
def mixed_noise(rng, chain, dtype, loud_rows):
    """A product on ``chain`` with 1e-7 noise, and 1 % noise on the rows ``loud_rows``
    (``None``: none): near-exact and noisy blocks in the same split."""
    Z = fastbfly.Butterfly(random_factors(rng, chain, np.dtype(dtype))).toarray()
    Z = noisy(rng, Z, 1e-7)
    if loud_rows is not None:
        Z[loud_rows] = noisy(rng, Z[loud_rows], 1e-2)
    return np.ascontiguousarray(Z.astype(dtype))


# Under NUMBA_DISABLE_JIT the gathered path's products of single-precision entries stay
# in single precision (NumPy scalar rules: ``complex64 * 1.0`` is complex64), 1e-4 off
# LAPACK here, with or without this session's changes: compiled, they are double.
SINGLE_JIT_ONLY = pytest.mark.skipif(JIT_OFF, reason="single-precision products under "
                                     "NUMBA_DISABLE_JIT are formed in single precision")


@pytest.mark.parametrize("chain_name", list(POWER_CHAINS))
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.complex64, marks=SINGLE_JIT_ONLY),
                                   np.complex128])
def test_near_exact_and_noisy_blocks_in_one_split_match_lapack(rng, chain_name, dtype):
    # blocks (k1, j2) read rows j1·b2 + j2: noise on the rows of j2 = 0 makes those
    # blocks noisy and the others near-exact, so the planes path is taken, refused
    # and taken again; with B from factorize and from a poor random B
    chain = POWER_CHAINS[chain_name]
    Z = mixed_noise(rng, chain, dtype, slice(0, None, 2))
    before = Z.copy()
    exact = lapack_split_errors(Z, chain)
    rtol = RTOL[1e-7] if np.dtype(dtype).itemsize == 16 else 1e-6
    for B in (fastbfly.factorize(Z, chain=chain),
              fastbfly.Butterfly(random_factors(rng, chain, np.dtype(dtype)))):
        values = [f.values for f in B.factors]
        np.testing.assert_allclose(split_errors(Z, chain, values=values), exact, rtol=rtol)
        np.testing.assert_allclose(certify(Z, B).split_errors, exact, rtol=rtol)
    np.testing.assert_array_equal(Z, before)


@pytest.mark.parametrize("chain_name", list(POWER_CHAINS))
def test_zero_and_not_finite_blocks_through_the_planes(rng, chain_name):
    # a near-exact matrix whose first blocks are zero (EMPTY: left out), then one with
    # NaN: the planes path refuses them and the gathered path reports them as before
    chain = POWER_CHAINS[chain_name]
    Z = mixed_noise(rng, chain, np.complex128, None)
    B = fastbfly.factorize(Z, chain=chain)
    values = [f.values for f in B.factors]
    zeroed = Z.copy()
    zeroed[1::2] = 0.0  # the blocks of j2 = 1
    exact = lapack_split_errors(zeroed, chain)
    np.testing.assert_allclose(split_errors(zeroed, chain, values=values), exact,
                               rtol=RTOL[1e-7])
    broken = Z.copy()
    broken[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        split_errors(broken, chain, values=values)


@pytest.mark.skipif(JIT_OFF, reason="N = 1024 takes minutes in plain Python")
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_near_exact_dft_1024_matches_lapack_with_every_path(rng, dtype):
    # the cost table's case: row planes straight from the matrix (splits 1-4, Gram;
    # 5-7, power blocks on the planes), column planes (8-11); bit reversal gathered
    # by certify.  Single precision: 1e-4 noise (1e-7 would be fitted to the
    # data's own rounding, and the errors bounded instead of computed).
    n = 1024
    F = np.fft.fft(np.eye(n))
    B0 = fastbfly.factorize(F, perm="bitrev")
    Z = noisy(rng, F, 1e-7 if dtype == np.complex128 else 1e-4).astype(dtype)
    B = fastbfly.factorize(Z, perm=B0.perm)
    exact = lapack_split_errors(Z, B.chain, B.perm)
    cert = certify(Z, B)
    assert not cert.split_errors_bounded
    np.testing.assert_allclose(cert.split_errors, exact, rtol=1e-8)
    assert cert.lower_bound <= cert.actual_error
