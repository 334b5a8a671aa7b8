"""`fastbfly.factorize`: exact recovery, known transforms, noisy inputs, error bounds,
permutations, dtype and layout rules, and every bad input."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse

import fastbfly
from fastbfly import Butterfly, Chain, factorize

import naive
from conftest import (DTYPES, NAMED_TREES, TREES, assert_close, dtype_id, eps, make_tree,
                      noisy, random_array, random_factors, relative_error, rtol)

# dtype × J = log2(N): every dtype up to N = 256, and N = 512, 1024 for two of them (the
# largest sizes are where the parallel block kernel and long power iterations run).
RECOVERY = [(dtype, J) for dtype in DTYPES for J in range(1, 9)] + [
    (np.dtype(dtype), J) for dtype in (np.float64, np.complex64) for J in (9, 10)]


def exact_butterfly(rng, n, dtype, zero_fraction=0.0, **permutations):
    """A random butterfly product on the square dyadic chain, as (factors, dense)."""
    factors = random_factors(rng, Chain.square_dyadic(n), dtype, zero_fraction)
    return factors, Butterfly(factors, **permutations).toarray()


def reported_error_bound(dtype):
    """``info["relative_error"]`` comes from ``‖M‖² − σ²`` per block: on an exact product
    it is only zero to about ``sqrt(eps)``."""
    return 10 * np.sqrt(eps(dtype))


# ============================================================================ exact recovery
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype, J", RECOVERY, ids=[f"{d.name}-J{j}" for d, j in RECOVERY])
def test_exact_recovery_of_random_butterflies(dtype, J, tree, rng):
    n = 2**J
    _, Z = exact_butterfly(rng, n, dtype)
    tree = make_tree(tree, J, rng)
    B = factorize(Z, tree=tree)
    assert B.shape == (n, n) and B.dtype == dtype
    assert [f.pattern for f in B.factors] == list(Chain.square_dyadic(n))
    assert all(f.values.dtype == dtype for f in B.factors)
    assert_close(B.toarray(), Z, dtype, what=f"N={n} tree={tree}")
    assert B.info["relative_error"] <= reported_error_bound(dtype)
    assert B.info["tree"] == fastbfly.build_tree(tree, J).to_nested()


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("n", [4, 16, 64])
def test_recovered_factors_equal_originals_up_to_diagonal_scaling(n, dtype, tree, rng):
    """DESIGN.md §5: X'_l = D_{l-1} X_l D_l^{-1} with diagonal D (D_0 = D_L = I)."""
    factors, Z = exact_butterfly(rng, n, dtype)
    B = factorize(Z, tree=make_tree(tree, n.bit_length() - 1, rng))
    left_scale = np.ones(n)  # D_{l-1}
    for original, recovered in zip(factors, B.factors):
        X, Y = original.toarray(), recovered.toarray()
        support = naive.support(original.pattern)
        assert np.all(Y[~support] == 0)
        # Y = D_{l-1} X D_l^{-1}  =>  column k of D_{l-1}^{-1} Y / X is constant 1/D_l[k]
        ratio = np.where(support, Y / np.where(support, X, 1) / left_scale[:, None], np.nan)
        column_scale = np.nanmean(ratio, axis=0)
        assert_close(np.where(support, ratio, 0), np.where(support, column_scale[None, :], 0),
                     dtype, factor=100, what="scaling")
        left_scale = 1 / column_scale
    assert_close(left_scale, np.ones(n), dtype, factor=100, what="D_L")


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [8, 64])
def test_exact_recovery_with_zeros_in_the_factors(n, dtype, tree, rng):
    """Zero factor entries make rank-deficient and all-zero blocks along the way."""
    _, Z = exact_butterfly(rng, n, dtype, zero_fraction=0.4)
    B = factorize(Z, tree=make_tree(tree, n.bit_length() - 1, rng))
    assert_close(B.toarray(), Z, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [1, 2])
def test_tiny_sizes(n, dtype, rng):
    Z = random_array(rng, (n, n), dtype)
    B = factorize(Z)
    assert B.shape == (n, n) and B.dtype == dtype and len(B.factors) == 1
    np.testing.assert_array_equal(B.toarray(), Z)
    assert B.info["relative_error"] == 0


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_zero_matrix(dtype, tree):
    B = factorize(np.zeros((16, 16), dtype=dtype), tree=tree)
    assert B.dtype == dtype
    np.testing.assert_array_equal(B.toarray(), 0)
    assert B.info["relative_error"] == 0


# Extreme magnitudes: the values are finite, so they must factorize like any other.
SCALES = [
    pytest.param(np.float64, 1e-300, id="float64-1e-300"),
    pytest.param(np.float64, 1e300, id="float64-1e300"),
    pytest.param(np.complex128, 1e-300, id="complex128-1e-300"),
    pytest.param(np.float64, 1e-100, id="float64-1e-100"),
    pytest.param(np.float64, 1e100, id="float64-1e100"),
    pytest.param(np.float64, 1e-315, id="float64-subnormal"),
    pytest.param(np.float32, 1e-25, id="float32-1e-25"),
    pytest.param(np.float32, 1e25, id="float32-1e25"),
    pytest.param(np.complex64, 1e-25, id="complex64-1e-25"),
]


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("dtype, scale", SCALES)
def test_exact_recovery_at_extreme_scales(dtype, scale, tree, rng):
    _, Z = exact_butterfly(rng, 16, np.float64 if np.dtype(dtype).kind == "f" else np.complex128)
    Z = (Z * scale).astype(dtype)
    assert np.all(np.isfinite(Z))
    with np.errstate(all="ignore"):
        B = factorize(Z, tree=tree)
        # compare in units of the scale (the product itself stays in range)
        error = relative_error(B.toarray() / scale, Z / scale)
    # subnormal inputs carry fewer digits: the spacing of the values bounds the accuracy
    tolerance = max(10 * rtol(dtype), 10 * float(np.spacing(np.abs(Z).max()) / np.abs(Z).max()))
    assert error <= tolerance, f"relative error {error:.3e}"


def test_reported_error_is_finite_for_huge_entries(rng):
    _, Z = exact_butterfly(rng, 16, np.float64)
    B = factorize(Z * 1e300)
    assert np.isfinite(B.info["relative_error"])


# ============================================================================ known transforms
@pytest.mark.parametrize("tree", NAMED_TREES + ["user"])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("n", [2, 8, 64, 512])
def test_dft_with_bit_reversal_is_recovered(n, dtype, tree, rng):
    F = np.fft.fft(np.eye(n)).astype(dtype)
    B = factorize(F, perm="bitrev", tree=make_tree(tree, n.bit_length() - 1, rng))
    assert B.dtype == dtype
    np.testing.assert_array_equal(B.perm, fastbfly.bit_reversal_permutation(n))
    assert_close(B.toarray(), np.fft.fft(np.eye(n)), dtype)
    x = rng.standard_normal(n)
    assert_close(B @ x, np.fft.fft(x), dtype)
    assert B.info["relative_error"] <= reported_error_bound(dtype)


def test_dft_1024_balanced(rng):
    F = np.fft.fft(np.eye(1024))
    B = factorize(F, perm="bitrev")
    assert_close(B.toarray(), F, np.complex128)


def test_dft_without_permutation_is_far_from_butterfly():
    """DESIGN.md §6: without bit reversal the best butterfly error on the DFT is large."""
    F = np.fft.fft(np.eye(64))
    B = factorize(F, tree="left-to-right")
    assert relative_error(B.toarray(), F) > 0.5
    assert B.info["relative_error"] == pytest.approx(relative_error(B.toarray(), F), rel=1e-6)


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64, np.complex64], ids=dtype_id)
@pytest.mark.parametrize("n", [2, 16, 256])
def test_hadamard_is_recovered(n, dtype, tree, rng):
    H = scipy.linalg.hadamard(n).astype(dtype)
    B = factorize(H, tree=make_tree(tree, n.bit_length() - 1, rng))
    expected_dtype = np.float64 if np.dtype(dtype).kind == "i" else dtype
    assert B.dtype == expected_dtype
    assert_close(B.toarray(), scipy.linalg.hadamard(n), expected_dtype)


# ============================================================================ noisy inputs
NOISE = 0.1


@pytest.fixture(scope="module")
def noisy_dfts():
    """DFT + 10% relative complex Gaussian noise, N = 256 and 512 (fixed seed)."""
    rng = np.random.default_rng(20220523)
    result = {}
    for n in (256, 512):
        F = np.fft.fft(np.eye(n))
        result[n] = (F, noisy(rng, F, NOISE))
    return result


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("n", [256, 512])
def test_noisy_dft_error_at_noise_level(n, tree, noisy_dfts):
    F, Z = noisy_dfts[n]
    Z_copy = Z.copy()
    B = factorize(Z, perm="bitrev", tree=tree)
    np.testing.assert_array_equal(Z, Z_copy)
    approximation = B.toarray()
    error = relative_error(approximation, Z)
    clean_error = relative_error(approximation, F)
    # the clean DFT is itself a butterfly (after bit reversal): do no worse than it
    assert error <= relative_error(F, Z) <= NOISE
    # and most of the noise is filtered out (≈ 0.019 at N=256, 0.014 at N=512)
    assert clean_error <= 0.25 * NOISE


@pytest.mark.parametrize("tree", [
    "left-to-right", "right-to-left",
])
@pytest.mark.parametrize("n", [256, 512])
def test_reported_error_equals_actual_error_when_orthonormalized(n, tree, noisy_dfts):
    _, Z = noisy_dfts[n]
    B = factorize(Z, perm="bitrev", tree=tree, orthonormalize=True)
    assert B.info["relative_error"] == pytest.approx(relative_error(B.toarray(), Z), rel=1e-8)


@pytest.mark.parametrize("tree", [
    "left-to-right", "right-to-left",
])
@pytest.mark.parametrize("kind", ["gaussian", "butterfly+noise"])
def test_reported_error_equals_actual_error_on_random_matrices(kind, tree, rng):
    n = 32
    if kind == "gaussian":
        Z = rng.standard_normal((n, n))
    else:
        _, Z = exact_butterfly(rng, n, np.float64)
        Z = noisy(rng, Z, 0.3)
    B = factorize(Z, tree=tree)
    assert B.info["relative_error"] == pytest.approx(relative_error(B.toarray(), Z), rel=1e-8)


@pytest.mark.parametrize("tree", ["balanced", ((0, 1), ((2, 3), 4))])
@pytest.mark.parametrize("kind", ["gaussian", "butterfly+noise"])
def test_reported_error_is_a_close_estimate_for_other_trees(kind, tree, rng):
    """Documented: for trees with right-side splits the per-split errors do not add
    exactly orthogonally; the reported error stays within a few percent."""
    n = 32
    if kind == "gaussian":
        Z = rng.standard_normal((n, n))
    else:
        _, Z = exact_butterfly(rng, n, np.float64)
        Z = noisy(rng, Z, 0.3)
    B = factorize(Z, tree=tree)
    assert B.info["relative_error"] == pytest.approx(relative_error(B.toarray(), Z), rel=0.05)


@pytest.mark.parametrize("orthonormalize", [True, False])
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("kind", ["gaussian", "butterfly+noise", "scaled-rows"])
@pytest.mark.parametrize("n", [16, 64])
def test_error_bounds_of_design_section_5(n, kind, tree, orthonormalize, rng):
    """max_l E_l(Z) <= ‖Z − Ẑ‖ for every tree (a butterfly is a two-factor product at
    every split), and ‖Z − Ẑ‖ <= Σ 2^{L-1-l} E_l(Z) for orthonormalized left-to-right."""
    if kind == "gaussian":
        Z = rng.standard_normal((n, n))
    elif kind == "butterfly+noise":
        _, Z = exact_butterfly(rng, n, np.float64)
        Z = noisy(rng, Z, 0.2)
    else:
        Z = rng.standard_normal((n, n)) * np.logspace(0, 3, n)[:, None]
    chain = Chain.square_dyadic(n)
    L = len(chain)
    E = [naive.two_factor_error(Z, chain, split) for split in range(1, L)]
    B = factorize(Z, tree=make_tree(tree, L, rng), orthonormalize=orthonormalize)
    error = np.linalg.norm(B.toarray() - Z)
    assert error >= max(E) * (1 - 1e-9)
    if tree == "left-to-right" and orthonormalize:
        bound = sum(2 ** (L - 1 - split) * E[split - 1] for split in range(1, L))
        assert error <= bound * (1 + 1e-9)


# ============================================================================ permutations
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [8, 64])
def test_exact_recovery_with_a_given_column_permutation(n, dtype, rng):
    p = rng.permutation(n)
    _, Z = exact_butterfly(rng, n, dtype, perm=p)
    p_copy = p.copy()
    B = factorize(Z, perm=p)
    np.testing.assert_array_equal(B.perm, p)
    np.testing.assert_array_equal(p, p_copy)
    assert_close(B.toarray(), Z, dtype)
    x = random_array(rng, n, dtype)
    assert_close(B @ x, Z @ x, dtype)


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "2d-array"])
def test_best_permutation_candidate_is_kept(as_list, rng):
    n = 32
    p = rng.permutation(n)
    _, Z = exact_butterfly(rng, n, np.float64, perm=p)
    candidates = [np.arange(n), rng.permutation(n), p, rng.permutation(n)]
    B = factorize(Z, perm=candidates if as_list else np.array(candidates))
    np.testing.assert_array_equal(B.perm, p)
    assert_close(B.toarray(), Z, np.float64)
    errors = [c["relative_error"] for c in B.info["candidates"]]
    assert len(errors) == 4
    assert np.argmin(errors) == 2
    assert B.info["relative_error"] == min(errors)


def test_bitrev_candidate_among_names_and_none():
    F = np.fft.fft(np.eye(32))
    B = factorize(F, perm=[None, "bitrev"])
    np.testing.assert_array_equal(B.perm, fastbfly.bit_reversal_permutation(32))
    assert_close(B.toarray(), F, np.complex128)
    assert len(B.info["candidates"]) == 2


def test_bitrev_name_equals_bitrev_vector():
    F = np.fft.fft(np.eye(64))
    by_name = factorize(F, perm="bitrev")
    by_vector = factorize(F, perm=fastbfly.bit_reversal_permutation(64))
    np.testing.assert_array_equal(by_name.toarray(), by_vector.toarray())


@pytest.mark.parametrize("dtype", [np.float64, np.complex64], ids=dtype_id)
def test_exact_recovery_with_a_given_row_permutation(dtype, rng):
    n = 32
    p, q = rng.permutation(n), rng.permutation(n)
    _, Z = exact_butterfly(rng, n, dtype, perm=p, row_perm=q)
    B = factorize(Z, perm=p, row_perm=q)
    assert_close(B.toarray(), Z, dtype)


# ============================================================================ dtypes, layouts
@pytest.mark.parametrize("given, expected", [
    (np.bool_, np.float64), (np.int8, np.float64), (np.int64, np.float64),
    (np.uint16, np.float64), (np.float16, np.float32), (np.float32, np.float32),
    (np.float64, np.float64), (np.complex64, np.complex64), (np.complex128, np.complex128),
], ids=lambda t: np.dtype(t).name)
def test_dtype_rules(given, expected, rng):
    if np.dtype(given).kind in "biu":
        Z = rng.integers(0, 2, (16, 16)).astype(given)
    else:
        Z = random_array(rng, (16, 16), given)
    B = factorize(Z)
    assert B.dtype == expected
    assert all(f.values.dtype == expected for f in B.factors)
    assert B.toarray().dtype == expected


def layouts(Z):
    readonly = Z.copy()
    readonly.setflags(write=False)
    strided = np.zeros((2 * Z.shape[0], 3 * Z.shape[1]), dtype=Z.dtype)
    strided[::2, ::3] = Z
    return {
        "readonly": readonly,
        "fortran": np.asfortranarray(Z),
        "strided": strided[::2, ::3],
        "transposed-view": np.ascontiguousarray(Z.T).T,
        "list": Z.tolist(),
    }


@pytest.mark.parametrize("layout", ["readonly", "fortran", "strided", "transposed-view", "list"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_any_memory_layout_gives_the_same_result(dtype, layout, rng):
    _, Z = exact_butterfly(rng, 32, dtype)
    B = factorize(layouts(Z)[layout])
    assert B.dtype == (np.complex128 if layout == "list" and dtype.kind == "c" else
                       np.float64 if layout == "list" else dtype)
    assert_close(B.toarray(), Z, dtype)


@pytest.mark.parametrize("orthonormalize", [True, False])
@pytest.mark.parametrize("perm", [None, "bitrev", "vector", "candidates"])
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_caller_array_is_never_modified(dtype, tree, perm, orthonormalize, rng):
    n = 16
    Z = noisy(rng, exact_butterfly(rng, n, dtype)[1], 0.1).astype(dtype)
    Z_copy = Z.copy()
    perm_value = {"vector": rng.permutation(n), "candidates": [None, rng.permutation(n)]}.get(perm, perm)
    B = factorize(Z, tree=make_tree(tree, 4, rng), perm=perm_value, orthonormalize=orthonormalize)
    np.testing.assert_array_equal(Z, Z_copy)
    assert Z.flags.writeable and Z.flags.c_contiguous
    # and the result does not alias it
    before = B.toarray()
    Z[...] = 0
    np.testing.assert_array_equal(B.toarray(), before)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_result_does_not_alias_tiny_inputs(n, rng):
    Z = rng.standard_normal((n, n))
    B = factorize(Z)
    before = B.toarray()
    Z[...] = 7.0
    np.testing.assert_array_equal(B.toarray(), before)


def test_progress_reports_every_split():
    calls = []
    factorize(np.eye(64), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 5) for k in range(1, 6)]


def test_progress_per_candidate():
    calls = []
    factorize(np.eye(8), perm=[None, "bitrev"], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2), (1, 2), (2, 2)]


def test_info_contents(rng):
    B = factorize(rng.standard_normal((16, 16)), tree="left-to-right", orthonormalize=False)
    assert B.info["tree"] == (0, (1, (2, 3)))
    assert B.info["orthonormalize"] is False
    assert B.info["seconds"] >= 0
    assert 0 < B.info["relative_error"] < 1


# ============================================================================ general chains
@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("patterns", [
    [(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)],  # 12 x 30, DESIGN.md §2
    [(1, 4, 4, 2), (2, 4, 4, 1)],  # rank 2
    [(1, 2, 2, 9), (2, 3, 3, 3), (6, 3, 3, 1)],  # 18 x 18
], ids=["12x30", "rank-2", "18x18"])
def test_exact_recovery_on_given_chains(patterns, dtype, tree, rng):
    chain = Chain(patterns)
    factors = random_factors(rng, chain, dtype)
    Z = Butterfly(factors).toarray()
    B = factorize(Z, chain=chain, tree=tree)
    assert B.shape == chain.shape
    assert [f.pattern for f in B.factors] == list(chain)
    assert_close(B.toarray(), Z, dtype, factor=10)


# ============================================================================ bad input
def with_value(shape, index, value, dtype=np.float64):
    Z = np.ones(shape, dtype=dtype)
    Z[index] = value
    return Z


BAD_MATRICES = [
    ("nan", with_value((8, 8), (1, 2), np.nan), ValueError, r"NaN or Inf.*\(1, 2\)"),
    ("inf", with_value((8, 8), (7, 0), np.inf), ValueError, r"NaN or Inf.*\(7, 0\)"),
    ("-inf", with_value((4, 4), (0, 3), -np.inf), ValueError, r"NaN or Inf.*\(0, 3\)"),
    ("nan-2x2", with_value((2, 2), (1, 1), np.nan), ValueError, r"NaN or Inf.*\(1, 1\)"),
    ("nan-1x1", np.array([[np.nan]]), ValueError, "NaN or Inf"),
    ("complex-nan", with_value((8, 8), (3, 3), complex(np.nan, 1), np.complex128), ValueError, r"\(3, 3\)"),
    ("complex-inf-imag", with_value((8, 8), (3, 4), complex(1, np.inf), np.complex64), ValueError, r"\(3, 4\)"),
    ("complex-nan-imag", with_value((8, 8), (3, 3), complex(1, np.nan), np.complex128), ValueError, r"\(3, 3\)"),
    ("float32-inf", with_value((8, 8), (5, 6), np.inf, np.float32), ValueError, r"\(5, 6\)"),
    ("all-nan", np.full((16, 16), np.nan), ValueError, "NaN or Inf"),
    ("1-D", np.ones(4), ValueError, r"2-D, got 1-D.*\(4,\)"),
    ("3-D", np.ones((2, 4, 4)), ValueError, r"2-D, got 3-D.*\(2, 4, 4\)"),
    ("0-D", np.float64(3.0), ValueError, "got 0-D"),
    ("empty", np.zeros((0, 0)), ValueError, r"empty.*\(0, 0\)"),
    ("empty-rows", np.zeros((0, 4)), ValueError, r"empty.*\(0, 4\)"),
    ("object", np.array([[1, 2], [3, 4]], dtype=object), TypeError, "dtype object"),
    ("string", np.array([["a", "b"], ["c", "d"]]), TypeError, "<U1"),
    ("bytes", np.array([[b"a", b"b"], [b"c", b"d"]]), TypeError, "S1"),
    ("datetime", np.zeros((2, 2), dtype="datetime64[s]"), TypeError, "datetime64"),
    ("none", None, TypeError, "object"),
    ("sparse", scipy.sparse.eye(4, format="csr"), TypeError, "csr"),
]


@pytest.mark.parametrize("matrix, error, match", [
    b if isinstance(b, type(pytest.param(0))) else pytest.param(*b[1:], id=b[0])
    for b in BAD_MATRICES])
def test_bad_matrices_are_rejected(matrix, error, match):
    with pytest.raises(error, match=match):
        factorize(matrix)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tree": "bogus"}, ValueError, "unknown tree 'bogus'"),
    ({"tree": (0, 1, 2, 3)}, ValueError, "exactly 2 children"),
    ({"tree": ((0, 1), (3, 2))}, ValueError, r"\(3, 2\)"),
    ({"tree": ((0, 1), (2, 2))}, ValueError, r"\(2, 2\)"),
    ({"tree": ((0, 1), 2)}, ValueError, r"expected 0\.\.3"),
    ({"tree": ((0, 1), (2.0, 3))}, TypeError, "2.0"),
    ({"perm": "bogus"}, ValueError, "unknown perm 'bogus'"),
    ({"perm": [0, 1, 2]}, ValueError, r"shape \(16,\), got \(3,\)"),
    ({"perm": [0] * 16}, ValueError, "index 0 appears more than once"),
    ({"perm": list(range(1, 17))}, ValueError, "max 16"),
    ({"perm": list(range(-1, 15))}, ValueError, "min -1"),
    ({"perm": np.arange(16.0)}, TypeError, "float64"),
    ({"perm": [np.arange(16), np.arange(15)]}, ValueError, r"got \(15,\)"),
    ({"row_perm": [1, 1] + list(range(2, 16))}, ValueError, "row_perm.*index 1 appears"),
    ({"chain": [(1, 2, 2, 2)]}, ValueError, r"shape \(4, 4\) does not match.*\(16, 16\)"),
    ({"n_factors": 7}, ValueError, "16"),
    ({"memory_limit": 1}, MemoryError, "GiB"),
])
def test_bad_arguments_are_rejected(kwargs, error, match, rng):
    with pytest.raises(error, match=match):
        factorize(rng.standard_normal((16, 16)), **kwargs)


def test_bitrev_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two size, got 12"):
        factorize(np.ones((12, 12)), perm="bitrev")
