"""Near-exact split errors (every block's ``‖M‖² − σ₁²`` cancels): the one-read paths.

Blocks solved by power iteration take their error from the start vector's first product
in one more read (`_error_kernels._near_exact_power`); blocks with a side of at most
``GRAM_SIDE`` read their vectors from planes of the tile filled once for all the splits
of a group (`_fill_row_planes`, `_fill_column_planes`).  Each is checked against a
dense reference, and the split errors against LAPACK's per-block SVD.  Sizes are
small enough for ``NUMBA_DISABLE_JIT=1`` but the N = 1024 DFT (skipped there).
"""

import numba
import numpy as np
import pytest
import scipy.linalg

import fastbfly
from fastbfly import _error_kernels, _errors
from fastbfly._errors import split_errors
from fastbfly.certificate import certify

from conftest import noisy, random_array, random_factors

# Blocks of both sides above GRAM_SIDE (power iteration), with row and column counts
# that are not multiples of 4 (the unrolled kernels' remainders): 19 x 21 blocks
# started from B's left vectors (side 2), 21 x 19 from its right ones (side 1).
POWER_CHAINS = {
    "38x42 left starts": fastbfly.Chain([(1, 19, 2, 2), (2, 2, 21, 1)]),
    "42x38 right starts": fastbfly.Chain([(1, 21, 2, 2), (2, 2, 19, 1)]),
}
# Relative accuracy of a split error against LAPACK's: the blocks' errors are
# computed to rounding of the block's entries (``ε ‖M‖`` each), ~1e-9 of errors of
# 1e-7 of the norm; LAPACK's trailing singular values carry the same.
RTOL = {1e-7: 1e-8, 1e-9: 1e-6}
JIT_OFF = numba.config.DISABLE_JIT


def lapack_split_errors(Z, chain, perm=None):
    """``E_l`` from LAPACK's singular values of every block (double precision)."""
    double = Z.astype(np.complex128 if Z.dtype.kind == "c" else np.float64)
    m, n = Z.shape
    columns = double if perm is None else double[:, perm]
    errors = []
    for split_at in range(1, len(chain)):
        b1, c1, rank, c2 = _errors.split_geometry(chain, split_at)
        blocks = columns.reshape(b1, m // b1, c1, c2).transpose(2, 1, 0, 3)
        singular = np.linalg.svd(blocks, compute_uv=False)
        errors.append(float(np.sqrt(np.sum(singular[..., rank:] ** 2))))
    return np.array(errors)


def product(rng, chain, dtype=np.complex128):
    return fastbfly.Butterfly(random_factors(rng, chain, dtype)).toarray()


def work_dtype(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


# ------------------------------------------------------------------ the one-read kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("rows, cols", [(21, 19), (8, 5), (3, 7), (1, 4)])
def test_right_and_left_residuals_match_a_dense_reference(rng, dtype, rows, cols):
    # (‖M − (M x) xᴴ‖², ‖M x‖²) and (‖M − x (xᴴ M)‖², ‖Mᴴ x‖²) for x = scale·v, on a
    # block of a larger array (rows j·spread + t, columns from first) and on a whole one
    spread, t, first = 3, 2, 5
    A = random_array(rng, (rows * spread, cols + 9), dtype)
    M = A[t::spread, first:first + cols].astype(work_dtype(dtype))
    v = random_array(rng, cols, work_dtype(dtype))
    u = random_array(rng, rows, work_dtype(dtype))
    before = A.copy(), v.copy(), u.copy()
    for scale in (1.0, 0.37):
        x = scale * v
        residual2, length2 = _error_kernels._right_residual2(A, spread, t, first, rows, cols, v, scale)
        expected = np.linalg.norm(M - np.outer(M @ x, np.conj(x))) ** 2
        tol = 1e-12 * np.linalg.norm(M) ** 2 * max(1.0, np.linalg.norm(x) ** 4)
        assert abs(residual2 - expected) <= tol
        assert abs(length2 - np.linalg.norm(M @ x) ** 2) <= tol
        block = np.ascontiguousarray(A[t::spread, first:first + cols])
        x = scale * u
        residual2, length2 = _error_kernels._left_residual2(block, rows, cols, u, scale)
        expected = np.linalg.norm(M - np.outer(x, np.conj(x) @ M)) ** 2
        tol = 1e-12 * np.linalg.norm(M) ** 2 * max(1.0, np.linalg.norm(x) ** 4)
        assert abs(residual2 - expected) <= tol
        assert abs(length2 - np.linalg.norm(np.conj(M.T) @ x) ** 2) <= tol
    for array, saved in zip((A, v, u), before):  # nothing written
        np.testing.assert_array_equal(array, saved)


def near_exact_block(rng, rows, cols, level, dtype=np.complex128):
    """A rank-one block plus noise of relative norm ``level``, its left and right
    singular vectors of the rank-one part, and its best rank-one error (LAPACK)."""
    a = random_array(rng, rows, dtype)
    b = random_array(rng, cols, dtype)
    M = noisy(rng, np.outer(a, b), level)
    singular = np.linalg.svd(M, compute_uv=False)
    return (np.ascontiguousarray(M), a / np.linalg.norm(a), np.conj(b) / np.linalg.norm(b),
            float(np.sum(singular[1:] ** 2)))


@pytest.mark.parametrize("warm", [1, 2])
@pytest.mark.parametrize("level", [1e-7, 1e-9])
def test_near_exact_power_blocks_in_one_read_match_lapack(rng, warm, level):
    # a start from the rank-one part (B's blocks, to the noise): accepted at once,
    # and the error is LAPACK's (to the rounding of the block's entries)
    rows, cols = 37, 29
    M, left, right, exact = near_exact_block(rng, rows, cols, level)
    norm2 = float(np.linalg.norm(M) ** 2)
    u = left.copy()
    w = np.zeros(cols, dtype=complex)
    if warm == 2:  # w = Mᴴ u, formed during the block's copy
        w[:] = np.conj(M.T) @ u
        first = float(np.linalg.norm(w) ** 2)
    else:  # u = M v
        u[:] = M @ right
        first = float(np.linalg.norm(u) ** 2)
    before = u.copy(), w.copy()
    residual2 = _error_kernels._near_exact_power(M, rows, cols, norm2, u, w, warm, first)
    assert residual2 >= 0.0
    assert abs(residual2 - exact) <= RTOL[level] * exact + 64 * np.finfo(float).eps * exact
    # the start vectors are left for the power iteration (unchanged)
    np.testing.assert_array_equal(u, before[0])
    np.testing.assert_array_equal(w, before[1])


@pytest.mark.parametrize("warm", [1, 2])
def test_near_exact_power_refuses_what_it_cannot_prove(rng, warm):
    rows, cols = 33, 24
    M, left, right, _ = near_exact_block(rng, rows, cols, 1e-7)
    norm2 = float(np.linalg.norm(M) ** 2)

    def attempt(M, start):
        w = np.zeros(cols, dtype=complex)
        u = start.copy()
        if warm == 2:
            w[:] = np.conj(M.T) @ u
            first = float(np.linalg.norm(w) ** 2)
        else:
            u = M @ start
            first = float(np.linalg.norm(u) ** 2)
        return _error_kernels._near_exact_power(M, rows, cols, float(np.linalg.norm(M) ** 2),
                                                u, w, warm, first)

    start = left if warm == 2 else right
    assert attempt(M, start) >= 0.0
    # a start 1e-3 off the top singular vector: near-exact, but one power step from it
    # is not proven within RESIDUAL_TOL of the error (the power iteration goes on)
    poor = start + 1e-3 * np.linalg.norm(start) * random_array(rng, start.shape, np.complex128)
    assert attempt(M, poor / np.linalg.norm(poor)) == -1.0
    # a noisy block (error 10 % of its norm): not near-exact
    noisy_block = np.ascontiguousarray(noisy(rng, M, 0.1))
    assert attempt(noisy_block, start) == -1.0
    # no start vector
    assert _error_kernels._near_exact_power(M, rows, cols, norm2, left.copy(),
                                            np.zeros(cols, dtype=complex), 0, -1.0) == -1.0


# --------------------------------------------------------------- planes of the tile
@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
def test_column_planes_put_every_splits_blocks_in_runs(rng, dtype):
    # tile of 16 rows, 8 columns; column splits with 4, 8 and 16 rows per block
    # (spread 4, 2, 1): the planes ordered by the first one's spread hold every
    # block's columns as runs, and the Gram matrices and near-exact residuals formed
    # from them are the blocks'
    tile = random_array(rng, (16, 8), dtype)
    complex_values = np.dtype(dtype).kind == "c"
    spread = 4
    run = 16 // spread
    real = np.full((8, 16), np.nan)
    imag = np.full((8, 16 if complex_values else 1), np.nan)
    _error_kernels._fill_column_planes(tile, complex_values, spread, real, imag)
    position = (np.arange(16) % spread) * run + np.arange(16) // spread
    np.testing.assert_array_equal(real[:, position], tile.real.T)
    if complex_values:
        np.testing.assert_array_equal(imag[:, position], tile.imag.T)
    planes = real + 1j * imag if complex_values else real
    unit = 1j if complex_values else 0.0
    for b1, c2 in ((4, 4), (8, 2), (16, 1)):
        split_spread = 16 // b1
        runs = b1 // run
        for t in range(split_spread):
            for kk in range(8 // c2):
                M = tile[t::split_spread, kk * c2:(kk + 1) * c2].astype(work_dtype(dtype))
                G = np.empty((c2, c2), dtype=work_dtype(dtype))
                trace = _error_kernels._gram_planes(real, imag, kk * c2, 1, c2, t * run, runs,
                                                    split_spread * run, run, unit, G)
                np.testing.assert_allclose(G, np.conj(M.T) @ M, rtol=1e-13, atol=1e-13)
                assert trace == pytest.approx(np.linalg.norm(M) ** 2, rel=1e-13)
                # the residual of any unit right vector, as the planes give it
                x = random_array(rng, c2, work_dtype(dtype))
                x /= np.linalg.norm(x)
                z_real, z_imag = np.empty(b1), np.empty(b1)
                residual2 = _error_kernels._planes_near_exact_residual2(
                    real, imag, kk * c2, 1, c2, t * run, runs, split_spread * run, run,
                    complex_values, x, z_real, z_imag)
                expected = np.linalg.norm(M - np.outer(M @ x, np.conj(x))) ** 2
                assert residual2 == pytest.approx(expected, rel=1e-12)
                # the runs are the block's rows (in some order)
                vectors = np.concatenate(
                    [planes[kk * c2:(kk + 1) * c2, t * run + q * split_spread * run:][:, :run]
                     for q in range(runs)], axis=1)
                np.testing.assert_array_equal(np.sort_complex(vectors[0].astype(complex)),
                                              np.sort_complex(M[:, 0].astype(complex)))


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_row_planes_and_their_residuals(rng, dtype):
    tile = random_array(rng, (8, 12), dtype)
    complex_values = np.dtype(dtype).kind == "c"
    real = np.full((8, 12), np.nan)
    imag = np.full((8, 12 if complex_values else 1), np.nan)
    _error_kernels._fill_row_planes(tile, complex_values, real, imag)
    np.testing.assert_array_equal(real, tile.real)
    unit = 1j if complex_values else 0.0
    for b1, c2 in ((2, 6), (4, 3), (8, 12)):
        spread = 8 // b1
        for t in range(spread):
            for kk in range(12 // c2):
                M = tile[t::spread, kk * c2:(kk + 1) * c2].astype(work_dtype(dtype))
                G = np.empty((b1, b1), dtype=work_dtype(dtype))
                _error_kernels._gram_planes(real, imag, t, spread, b1, kk * c2, 1, 0, c2, unit, G)
                np.testing.assert_allclose(G, np.conj(M @ np.conj(M.T)), rtol=1e-6, atol=1e-6)
                x = random_array(rng, b1, work_dtype(dtype))
                x /= np.linalg.norm(x)
                residual2 = _error_kernels._planes_near_exact_residual2(
                    real, imag, t, spread, b1, kk * c2, 1, 0, c2, complex_values, x,
                    np.empty(c2), np.empty(c2))
                u = np.conj(x)  # the rows' residual is ‖M − u uᴴ M‖²
                expected = np.linalg.norm(M - np.outer(u, np.conj(u) @ M)) ** 2
                assert residual2 == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------ split errors against LAPACK
@pytest.mark.parametrize("chain_name", list(POWER_CHAINS))
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("level", [1e-7, 1e-9])
def test_near_exact_split_errors_with_warm_starts_match_lapack(rng, chain_name, dtype, level):
    # B from factorize (a near-exact fit): the power-iteration blocks take the one-read
    # path; a random B (poor starts) gets the power iteration: the same errors
    chain = POWER_CHAINS[chain_name]
    Z = noisy(rng, product(rng, chain, np.dtype(dtype)), level).astype(dtype)
    exact = lapack_split_errors(Z, chain)
    for B in (fastbfly.factorize(Z, chain=chain),
              fastbfly.Butterfly(random_factors(rng, chain, np.dtype(dtype)))):
        values = [f.values for f in B.factors]
        np.testing.assert_allclose(split_errors(Z, chain, values=values), exact,
                                   rtol=RTOL[level])
        cert = certify(Z, B)
        assert not cert.split_errors_bounded
        np.testing.assert_allclose(cert.split_errors, exact, rtol=RTOL[level])


@pytest.mark.parametrize("n", [16, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.complex128])
def test_near_exact_dft_with_both_kinds_of_planes_in_one_tile(rng, n, dtype):
    # N <= 64: every split in one tile, short-wide (row planes) and tall-narrow
    # (column planes) blocks together; with and without a column permutation
    chain = fastbfly.Chain.square_dyadic(n)
    # the DFT, or the (Sylvester) Hadamard matrix for real data: butterflies after
    # bit reversal of the columns (DESIGN.md §6)
    F = np.fft.fft(np.eye(n)) if np.dtype(dtype).kind == "c" else scipy.linalg.hadamard(n) * 1.0
    perm = fastbfly.factorize(np.fft.fft(np.eye(n)), perm="bitrev").perm
    level = 1e-7 if np.dtype(dtype).itemsize == 16 else 1e-3
    Z = noisy(rng, F, level).astype(dtype)
    assert len(_errors._tile_groups(chain, np.dtype(dtype).itemsize)) == 1
    exact = lapack_split_errors(Z, chain, perm)
    rtol = RTOL[1e-7] if level == 1e-7 else 1e-9
    np.testing.assert_allclose(split_errors(Z, chain, perm), exact, rtol=rtol)
    B = fastbfly.factorize(Z, perm=perm)
    np.testing.assert_allclose(certify(Z, B).split_errors, exact, rtol=rtol)


@pytest.mark.skipif(JIT_OFF, reason="N = 1024 takes minutes in plain Python")
@pytest.mark.parametrize("level", [1e-7, 1e-2])
def test_near_exact_dft_1024_matches_lapack(rng, level):
    # the case of the cost table: every block near-exact at 1e-7 (row planes, power
    # iteration from left starts, column planes), and noisy at 1 %
    n = 1024
    F = np.fft.fft(np.eye(n))
    B0 = fastbfly.factorize(F, perm="bitrev")
    Z = noisy(rng, F, level)
    B = fastbfly.factorize(Z, perm=B0.perm)
    exact = lapack_split_errors(Z, B.chain, B.perm)
    cert = certify(Z, B)
    np.testing.assert_allclose(cert.split_errors, exact, rtol=1e-9)
    assert cert.lower_bound <= cert.actual_error
