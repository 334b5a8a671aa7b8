"""The pair-order product kernels (chains whose factors all have 2 × 2 blocks).

`Butterfly` routes such chains to ``_kernels.apply_pairs`` (one vector) and
``_kernels.apply_pairs_mat`` (a block of vectors), compiled with the SLP vectoriser;
everything else goes through the general driver.  These tests check both kernels
directly against dense references (tests/naive.py), and through `Butterfly` for every
direction, dtype pair, permutation and memory layout.
"""

import numpy as np
import pytest

import fastbfly
from fastbfly import _kernels
from fastbfly.butterfly import _NO_PERMUTATION
from fastbfly.patterns import Chain

import naive
from conftest import DTYPES, assert_close, dtype_id, random_array, random_factors

# Square-dyadic chains and chains mixing a > 1 with d > 1 (all 2 × 2 blocks).
PAIR_CHAINS = {
    "n2": [(1, 2, 2, 1)],
    "n8": [(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)],
    "n64": [(2 ** (l - 1), 2, 2, 64 >> l) for l in range(1, 7)],
    "n16-monarch-like": [(1, 2, 2, 8), (2, 2, 2, 4), (2, 2, 2, 4)],
}
MODES = {"forward": (False, False), "adjoint": (True, True), "transpose": (True, False)}


def dense_of(B: fastbfly.Butterfly) -> np.ndarray:
    """``B`` as a dense complex128 matrix from naive.py (no package product code)."""
    dense = naive.chain_dense([f.pattern for f in B.factors],
                              [f.values.astype(np.complex128) for f in B.factors])
    m, n = dense.shape
    if B.row_perm is not None:  # B = P_rowᵀ X P_colᵀ: row i of X lands at row_perm[i]
        permuted = np.empty_like(dense)
        permuted[B.row_perm] = dense
        dense = permuted
    if B.perm is not None:  # (X P_colᵀ)[:, perm[j]] = X[:, j]
        permuted = np.empty_like(dense)
        permuted[:, B.perm] = dense
        dense = permuted
    return dense


def random_butterfly(rng, name, dtype, permuted):
    patterns = PAIR_CHAINS[name]
    n = patterns[0][0] * patterns[0][1] * patterns[0][3]
    factors = random_factors(rng, Chain(patterns), dtype)
    perms = (rng.permutation(n), rng.permutation(n)) if permuted else (None, None)
    return fastbfly.Butterfly(factors, perm=perms[0], row_perm=perms[1])


@pytest.mark.parametrize("name", PAIR_CHAINS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("columns", [None, 1, 5])
@pytest.mark.parametrize("permuted", [False, True], ids=["noperm", "perm"])
def test_pairs_against_dense(rng, name, dtype, mode, columns, permuted):
    B = random_butterfly(rng, name, dtype, permuted)
    assert B._all_pairs
    D = dense_of(B)
    n = D.shape[0]
    x = random_array(rng, n if columns is None else (n, columns), dtype)
    adjoint, conjugate = MODES[mode]
    if not adjoint:
        got, want = B @ x, D @ x
    elif conjugate:
        got = B.rmatvec(x) if columns is None else B.rmatmat(x)
        want = D.conj().T @ x
    else:
        got, want = x.T @ B, x.T @ D
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype)


@pytest.mark.parametrize("factor_dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_dtype", DTYPES + [np.dtype(np.int32)], ids=dtype_id)
def test_pairs_mixed_dtypes(rng, factor_dtype, x_dtype):
    """Output dtype is ``result_type(B.dtype, x.dtype)``; real factors on complex data
    use the real kernels on a free view (re/im as two columns)."""
    B = random_butterfly(rng, "n64", factor_dtype, permuted=True)
    x = (random_array(rng, (64, 3), x_dtype) if x_dtype.kind != "i"
         else rng.integers(-5, 5, (64, 3)).astype(x_dtype))
    want_dtype = np.result_type(factor_dtype, x_dtype)
    D = dense_of(B)
    # float32 factors or data: single-precision tolerance for the whole product.
    low = np.dtype(np.float32) in (factor_dtype, x_dtype) or np.dtype(np.complex64) in (factor_dtype, x_dtype)
    tol_dtype = np.float32 if low else np.float64
    for got, want in ((B @ x, D @ x), (B @ x[:, 0], D @ x[:, 0]),
                      (B.H @ x, D.conj().T @ x)):
        assert got.dtype == want_dtype
        assert_close(got, want, tol_dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pairs_layouts_and_caller_arrays(rng, dtype):
    """Strided, Fortran-ordered and read-only inputs give the same result and are not
    modified."""
    B = random_butterfly(rng, "n64", dtype, permuted=True)
    X = random_array(rng, (64, 6), dtype)
    want = B @ np.ascontiguousarray(X)
    fortran = np.asfortranarray(X)
    readonly = X.copy()
    readonly.flags.writeable = False
    before = X.copy()
    assert_close(B @ fortran, want, dtype)
    assert_close(B @ readonly, want, dtype)
    assert_close(B @ X[:, ::2], want[:, ::2], dtype)
    assert_close(B @ X[:, 1], want[:, 1], dtype)
    assert_close(B @ readonly[:, 1], want[:, 1], dtype)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_pair_kernels_direct(rng, dtype, mode):
    """Both kernels called directly on a plan, against the dense product."""
    B = random_butterfly(rng, "n64", dtype, permuted=True)
    adjoint, conjugate = MODES[mode]
    packed, steps = B._pairs_plan(adjoint, conjugate, np.dtype(dtype))
    D = dense_of(B)
    if adjoint:
        D = D.conj().T if conjugate else D.T
        gather, scatter = B.row_perm, B.perm
    else:
        gather, scatter = B.perm, B.row_perm
    x = random_array(rng, 64, dtype)
    out = np.full(64, np.nan, dtype=dtype)
    _kernels.apply_pairs(packed, steps, gather, scatter, x, out, np.empty((2, 64), dtype))
    assert_close(out, D @ x, dtype)
    X = random_array(rng, (64, 4), dtype)
    out = np.full((64, 4), np.nan, dtype=dtype)
    _kernels.apply_pairs_mat(packed, steps, gather, scatter, X, out,
                             np.empty((2, 64, 4), dtype))
    assert_close(out, D @ X, dtype)
    # Identity permutations given as empty index arrays.
    out = np.empty(64, dtype=dtype)
    _kernels.apply_pairs(packed, steps, _NO_PERMUTATION, _NO_PERMUTATION, x, out,
                         np.empty((2, 64), dtype))
    bare = fastbfly.Butterfly(B.factors)
    bare_dense = dense_of(bare)
    if adjoint:
        bare_dense = bare_dense.conj().T if conjugate else bare_dense.T
    assert_close(out, bare_dense @ x, dtype)


def test_pairs_exact_on_dft():
    """The DFT's factors are exact in binary up to rounding of the twiddles: the
    product equals numpy's FFT to double precision, and B.H inverts it (times N)."""
    n = 1024
    B = fastbfly.dft_butterfly(n)
    x = np.random.default_rng(7).standard_normal(n) + 0j
    assert_close(B @ x, np.fft.fft(x), np.complex128, 100)
    assert_close(B.H @ (B @ x), n * x, np.complex128, 100)


def test_pairs_plans_are_cached_and_match_storage(rng):
    B = random_butterfly(rng, "n8", np.complex128, permuted=False)
    packed, steps = B._pairs_plan(False, False, np.dtype(np.complex128))
    assert B._pairs_plan(False, False, np.dtype(np.complex128))[0] is packed
    # Forward steps run right to left: the last factor (a = 4, d = 1) comes first.
    np.testing.assert_array_equal(steps[:, :2], [[4, 1], [2, 2], [1, 4]])
    last = B.factors[-1].values  # (4, 2, 2, 1): packed block (i, t=0) is values[i, :, :, 0]
    start = steps[0, 2]
    np.testing.assert_array_equal(packed[start:start + 16].reshape(4, 2, 2), last[..., 0])


def test_general_chains_do_not_take_the_pair_path(rng):
    """A chain with 3 × 3 blocks keeps the general driver (and stays correct)."""
    factors = random_factors(rng, Chain([(1, 3, 3, 2), (3, 2, 2, 1)]), np.float64)
    B = fastbfly.Butterfly(factors)
    assert not B._all_pairs
    x = rng.standard_normal(6)
    assert_close(B @ x, naive.chain_dense([f.pattern for f in factors],
                                          [f.values for f in factors]) @ x, np.float64)
