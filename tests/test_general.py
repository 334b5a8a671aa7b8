"""Any shape, any rank (issue 3): exact recovery on random chainable chains, the
768 x 3072 case, zero padding, bad input, and the interop and report modules.

Oracles never use the apply kernels when they check the factorization: the dense
product of a `Butterfly` is formed from its factors' ``toarray()`` (an index scatter),
so a bug in ``B @ X`` cannot hide a bug in ``factorize`` or the other way round.  The
apply kernels on general chains get their own property test.
"""

from __future__ import annotations

import functools
import importlib.util
import types

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

import fastbfly
from fastbfly import Butterfly, Chain, Factor, factorize
from fastbfly.interop import from_lazylinop, to_lazylinop, to_scipy_sparse
from fastbfly.report import CompressionReport, compression_report
from fastbfly.strategies import butterfly_products, chains, smooth_numbers, trees

from conftest import DTYPES, assert_close, dtype_id, noisy, random_array, random_factors, relative_error

HYPOTHESIS = settings(deadline=None, max_examples=40)
EXACT_DTYPES = [np.dtype(t) for t in (np.float64, np.complex128, np.float32, np.complex64)]


def dense_product(butterfly: Butterfly) -> np.ndarray:
    """``X_1 ⋯ X_L`` from the factors' dense matrices, in double precision."""
    work = np.complex128 if butterfly.dtype.kind == "c" else np.float64
    return functools.reduce(np.matmul, [f.toarray().astype(work) for f in butterfly.factors])


def random_product(rng, chain, dtype) -> Butterfly:
    return Butterfly(random_factors(rng, chain, dtype))


# ----------------------------------------------------------------------------- strategies
@HYPOTHESIS
@given(chain=chains(max_size=64, max_factors=4, max_rank=3, primes=(2, 3)))
def test_chains_strategy_respects_its_bounds(chain):
    m, n = chain.shape
    assert m <= 64 and n <= 64
    assert 1 <= len(chain) <= 4
    assert all(1 <= r <= 3 for r in chain.ranks)
    assert set(smooth_numbers(64, (2, 3))) >= {m, n}
    # the constraints of Chain.auto: no rank above the rows or columns of a block
    links = (1,) + chain.ranks + (1,)
    for l, pattern in enumerate(chain):
        assert links[l + 1] <= pattern.b and links[l] <= pattern.c


@HYPOTHESIS
@given(data=st.data())
def test_butterfly_products_strategy(data):
    chain = data.draw(chains(max_size=32))
    dtype = data.draw(st.sampled_from(DTYPES))
    B = data.draw(butterfly_products(chain, dtype))
    assert B.chain == chain and B.dtype == dtype and B.perm is None
    tree = data.draw(trees(len(chain)))
    assert fastbfly.build_tree(tree, len(chain)).stop == len(chain)


@settings(deadline=None, max_examples=5)
@given(B=butterfly_products(chains(max_size=16)))
def test_butterfly_products_accepts_a_strategy_of_chains(B):
    assert isinstance(B, Butterfly) and B.dtype == np.float64


def test_strategies_reject_bad_arguments():
    with pytest.raises(TypeError, match="dtype must be one of"):
        butterfly_products(Chain.square_dyadic(4), np.int32)
    with pytest.raises(ValueError, match="n_factors must be positive"):
        trees(0)


# ----------------------------------------------------------------------------- exact recovery
@HYPOTHESIS
@given(data=st.data())
def test_exact_recovery_on_random_chainable_chains(data):
    """Every tree recovers an exact product on any chainable chain (rectangular both
    ways, ranks 1-4, sizes with prime factors 2, 3 and 5), with and without
    orthonormalisation, in every dtype."""
    chain = data.draw(chains(max_size=96, max_factors=5, max_rank=4), label="chain")
    dtype = data.draw(st.sampled_from(EXACT_DTYPES), label="dtype")
    tree = data.draw(trees(len(chain)), label="tree")
    orthonormalize = data.draw(st.booleans(), label="orthonormalize")
    B = data.draw(butterfly_products(chain, dtype), label="product")
    W = dense_product(B).astype(dtype)

    result = factorize(W, chain=chain, tree=tree, orthonormalize=orthonormalize)

    assert result.chain == chain
    assert result.dtype == dtype
    assert_close(dense_product(result), W, dtype, what=f"{chain} tree={tree}")
    assert result.info["relative_error"] <= 1e-3


@pytest.mark.parametrize("tree", ["balanced", "left-to-right", "right-to-left"])
def test_exact_recovery_with_single_column_blocks(rng, tree):
    """Tall chains with column radix 1 (as Chain.auto makes them) split off blocks of
    one column; their best rank-one approximation is the column itself."""
    chain = Chain.from_radices([4, 5, 3], [8, 1, 1])  # blocks of 15 x 1 and 3 x 1
    W = dense_product(random_product(rng, chain, np.float64))
    result = factorize(W, chain=chain, tree=tree)
    assert_close(dense_product(result), W, np.float64)


@pytest.mark.parametrize("shape, n_factors, rank", [
    ((12, 30), 3, 1), ((30, 12), 3, 1), ((45, 75), 2, 2), ((75, 45), 3, 1),
    ((27, 27), 3, 1), ((40, 100), 2, 4), ((96, 24), 3, 2), ((81, 16), 2, 1),
])
def test_automatic_chain_recovers_its_products(rng, shape, n_factors, rank):
    chain = Chain.auto(*shape, n_factors, rank)
    W = dense_product(random_product(rng, chain, np.float64))
    result = factorize(W, n_factors=n_factors, rank=rank)
    assert result.chain == chain
    assert_close(dense_product(result), W, np.float64)


@pytest.mark.parametrize("n_factors, rank", [(2, 1), (3, 1), (4, 1), (3, 2)])
def test_768_by_3072_end_to_end(rng, n_factors, rank):
    """ViT-Base MLP shape, float32, automatic chain: the exact product comes back, and
    the result applies like the dense matrix."""
    chain = Chain.auto(768, 3072, n_factors, rank)
    W = dense_product(random_product(rng, chain, np.float32)).astype(np.float32)

    B = factorize(W, n_factors=n_factors, rank=rank)

    assert B.chain == chain and B.shape == (768, 3072) and B.dtype == np.float32
    assert B.nnz == chain.nnz < W.size // 10
    assert_close(dense_product(B), W, np.float32, what="factors")
    X = random_array(rng, (3072, 7), np.float32)
    assert_close(B @ X, W.astype(np.float64) @ X, np.float32, what="B @ X")


# ----------------------------------------------------------------------------- apply on any chain
@HYPOTHESIS
@given(data=st.data())
def test_products_on_random_chains_match_the_dense_product(data):
    """``B @ x``, ``B @ X`` and ``Bᴴ @ Y`` on general chains against the dense factors."""
    B = data.draw(butterfly_products(chains(max_size=96, max_factors=5), np.complex128))
    n_columns = data.draw(st.sampled_from([2, 3, 16]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dense = dense_product(B)
    m, n = dense.shape
    x = random_array(rng, n, np.complex128)
    X = random_array(rng, (n, n_columns), np.complex128)
    Y = random_array(rng, (m, n_columns), np.complex128)
    assert_close(B @ x, dense @ x, np.complex128, what=f"{B.chain}: B @ x")
    assert_close(B @ X, dense @ X, np.complex128, what=f"{B.chain}: B @ X")
    assert_close(B.rmatmat(Y), dense.conj().T @ Y, np.complex128, what=f"{B.chain}: B^H @ Y")


def test_adjoint_and_transpose_of_a_rectangular_rank_chain(rng):
    B = random_product(rng, Chain.from_radices([2, 3, 2], [5, 2, 1], [2, 2]), np.complex128)
    dense = dense_product(B)
    assert_close(B.H.toarray(), dense.conj().T, np.complex128, what="B.H")
    assert_close(B.T.toarray(), dense.T, np.complex128, what="B.T")


# ----------------------------------------------------------------------------- zero padding
def test_large_prime_factor_is_an_error_naming_sizes_and_primes(rng):
    W = random_array(rng, (97, 97), np.float64)
    with pytest.raises(ValueError, match=r"97 x 97.*prime factors \[97\].*pad=True"):
        factorize(W, n_factors=2)


def test_pad_is_opt_in_and_keeps_the_shape(rng):
    W = random_array(rng, (97, 97), np.float64)
    B = factorize(W, n_factors=2, pad=True)
    assert B.shape == (97, 97)
    assert B.info["padded_shape"] == (98, 98)
    assert B.chain == Chain.auto(98, 98, 2)
    x = random_array(rng, 97, np.float64)
    assert (B @ x).shape == (97,)
    dense = B.toarray()
    assert dense.shape == (97, 97)
    # orthonormalised: the reported error is the actual one (zero rows/columns add nothing)
    assert relative_error(dense, W) == pytest.approx(B.info["relative_error"], rel=1e-6)
    # nothing is padded when the shape has a chain
    assert factorize(random_array(rng, (12, 30), np.float64), n_factors=3, pad=True).info[
        "padded_shape"] == (12, 30)


def test_pad_recovers_a_product_that_vanishes_on_the_padding(rng):
    """A 98 x 98 product whose last row and column are zero, cut to 97 x 97, is
    recovered exactly after padding back to 98 x 98."""
    chain = Chain.auto(98, 98, 2)
    factors = random_factors(rng, chain, np.float64)
    first, last = factors[0], factors[-1]
    a, b, c, d = first.pattern
    rows = np.indices((a, b, c, d))
    first.values[(rows[0] * b + rows[1]) * d + rows[3] == 97] = 0  # row 97 of X_1
    a, b, c, d = last.pattern
    cols = np.indices((a, b, c, d))
    last.values[(cols[0] * c + cols[2]) * d + cols[3] == 97] = 0  # column 97 of X_L
    full = dense_product(Butterfly(factors))
    assert not full[97].any() and not full[:, 97].any()
    W = full[:97, :97]

    B = factorize(W, n_factors=2, pad=True)

    assert B.info["padded_shape"] == (98, 98)
    assert_close(B.toarray(), W, np.float64)


# ----------------------------------------------------------------------------- bad input (item 7)
def test_chain_shape_must_match_the_matrix(rng):
    W = random_array(rng, (12, 30), np.float64)
    with pytest.raises(ValueError, match=r"chain of shape \(30, 12\) does not match the matrix shape \(12, 30\)"):
        factorize(W, chain=Chain.auto(30, 12, 2))


@pytest.mark.parametrize("patterns, message", [
    ([(2, 2, 2, 3), (3, 2, 2, 2)], r"\(2, 2, 2, 3\) and \(3, 2, 2, 2\) are not chainable: need a1 \| a2"),
    ([(1, 2, 3, 2), (2, 3, 2, 1)], r"not chainable: the rank a1\*c1/a2 = 3/2 is not an integer"),
    ([(1, 2, 2, 2), (1, 3, 3, 1)], r"do not chain: inner sizes a\*c\*d = 4 and a\*b\*d = 3 differ"),
])
def test_non_chainable_chain_is_rejected(rng, patterns, message):
    m = patterns[0][0] * patterns[0][1] * patterns[0][3]
    n = patterns[-1][0] * patterns[-1][2] * patterns[-1][3]
    W = random_array(rng, (m, n), np.float64)
    with pytest.raises(ValueError, match=message):
        factorize(W, chain=patterns)


def test_transpose_of_a_chainable_chain_is_not_factorized(rng):
    """``(X_1 X_2)ᵀ`` has the reversed, transposed patterns: a valid product, but not a
    chain the hierarchical algorithm handles (factorize the transpose instead)."""
    transposed = [(2, 2, 2, 1), (1, 2, 2, 2)]  # mirror of (1, 2, 2, 2), (2, 2, 2, 1)
    with pytest.raises(ValueError, match="chainable"):
        factorize(random_array(rng, (4, 4), np.float64), chain=transposed)


def test_rank_larger_than_a_block_allows(rng):
    W = random_array(rng, (4, 4), np.float64)
    chain = Chain.from_radices([2, 2], [2, 2], ranks=3)  # blocks of 2 x 2 cannot hold rank 3
    with pytest.raises(ValueError, match=r"rank 3 between factors 0 and 1 is larger than the 2 x 2 blocks"):
        factorize(W, chain=chain)
    with pytest.raises(ValueError, match=r"rank 3 for a 4 x 4 matrix"):
        factorize(W, n_factors=2, rank=3)
    with pytest.raises(ValueError, match=r"rank must be positive, got 0"):
        factorize(W, n_factors=2, rank=0)


@pytest.mark.parametrize("shape, n_factors, message", [
    ((16, 16), 5, r"no chain of 5 factors with rank 1 for a 16 x 16 matrix"),
    ((12, 30), 10, r"no chain of 10 factors .* 12 x 30 matrix: .*prime factors \[2, 2, 3\] and \[2, 3, 5\]"),
    ((12, 30), 0, r"n_factors must be positive, got 0"),
])
def test_impossible_number_of_factors(rng, shape, n_factors, message):
    W = random_array(rng, shape, np.float64)
    with pytest.raises(ValueError, match=message):
        factorize(W, n_factors=n_factors)


def test_chain_and_n_factors_together_are_rejected(rng):
    W = random_array(rng, (12, 30), np.float64)
    with pytest.raises(ValueError, match="either chain or n_factors/rank"):
        factorize(W, chain=Chain.auto(12, 30, 2), n_factors=2)


# ----------------------------------------------------------------------------- interop
@HYPOTHESIS
@given(B=butterfly_products(chains(max_size=64), np.complex64))
def test_lazylinop_round_trip(B):
    ks_values, patterns = to_lazylinop(B)
    assert patterns == [tuple(p) for p in B.chain]
    assert all(type(v) is int for p in patterns for v in p)
    for values, factor in zip(ks_values, B.factors):
        assert values.shape == tuple(factor.pattern) and values.flags.c_contiguous
        np.testing.assert_array_equal(values, factor.values)
        assert not np.shares_memory(values, factor.values)
    back = from_lazylinop(ks_values)
    assert back.chain == B.chain and back.dtype == B.dtype
    np.testing.assert_array_equal(dense_product(back), dense_product(B))


def test_lazylinop_values_follow_the_documented_index_formula(rng):
    """K[i*b*d + j*d + t, i*c*d + k*d + t] = T[i, j, k, t], entry by entry."""
    pattern = (2, 3, 5, 2)
    values = random_array(rng, pattern, np.float64)
    B = from_lazylinop([values])
    dense = B.factors[0].toarray()
    a, b, c, d = pattern
    for i, j, k, t in np.ndindex(*pattern):
        assert dense[i * b * d + j * d + t, i * c * d + k * d + t] == values[i, j, k, t]
    assert np.count_nonzero(dense) == a * b * c * d


def test_to_lazylinop_refuses_permutations_unless_dropped(rng):
    chain = Chain.square_dyadic(8)
    B = Butterfly(random_factors(rng, chain, np.float64), perm=rng.permutation(8))
    with pytest.raises(ValueError, match=r"column permutation \(B.perm\).*drop_permutations=True"):
        to_lazylinop(B)
    ks_values, _ = to_lazylinop(B, drop_permutations=True)
    np.testing.assert_array_equal(ks_values[0], B.factors[0].values)
    padded = factorize(random_array(rng, (97, 97), np.float64), n_factors=2, pad=True)
    with pytest.raises(ValueError, match=r"zero padding \(shape \(97, 97\) inside a chain of shape \(98, 98\)\)"):
        to_lazylinop(padded)
    with pytest.raises(TypeError, match="expects a Butterfly"):
        to_lazylinop(np.eye(4))


def test_from_lazylinop_permutations_objects_and_dtypes(rng):
    chain = Chain.from_radices([2, 3], [5, 2], 2)
    factors = random_factors(rng, chain, np.float64)
    ks_values = [f.values for f in factors]
    perm = rng.permutation(10)
    B = from_lazylinop(ks_values, perm)
    x = random_array(rng, 10, np.float64)
    # B[:, perm] == X_1 X_2, i.e. B x = X_1 X_2 x[perm]
    assert_close(B @ x, dense_product(Butterfly(factors)) @ x[perm], np.float64)
    # anything with a ks_values attribute (lazylinop's KsmLazyLinOp), mixed dtypes
    holder = types.SimpleNamespace(ks_values=[ks_values[0].astype(np.float32), ks_values[1].astype(np.complex64)])
    assert from_lazylinop(holder).dtype == np.complex64
    assert from_lazylinop(np.ones((1, 2, 2, 1), dtype=np.int64)).dtype == np.float64
    with pytest.raises(ValueError, match=r"ks_values\[1\] must be a 4-D array .* got shape \(2, 2\)"):
        from_lazylinop([ks_values[0], np.ones((2, 2))])
    with pytest.raises(ValueError, match="non-empty list"):
        from_lazylinop([])
    with pytest.raises(ValueError, match="not chainable"):
        from_lazylinop([np.ones((2, 2, 2, 3)), np.ones((3, 2, 2, 2))])
    with pytest.raises(TypeError, match="must be numeric"):
        from_lazylinop([np.array(["x"] * 4).reshape(1, 2, 2, 1)])


def test_to_scipy_sparse_multiplies_back_to_the_butterfly(rng):
    chain = Chain.from_radices([2, 3], [5, 2], 2)
    B = Butterfly(random_factors(rng, chain, np.float64), perm=rng.permutation(10), row_perm=rng.permutation(6))
    matrices = to_scipy_sparse(B)
    assert all(scipy.sparse.issparse(matrix) for matrix in matrices)
    product = functools.reduce(lambda left, right: left @ right, matrices).toarray()
    assert_close(product, B.toarray(), np.float64)
    padded = factorize(random_array(rng, (97, 97), np.float64), n_factors=2, pad=True)
    product = functools.reduce(lambda left, right: left @ right, to_scipy_sparse(padded)).toarray()
    assert product.shape == (97, 97)
    assert_close(product, padded.toarray(), np.float64)


@pytest.mark.skipif(importlib.util.find_spec("lazylinop") is None, reason="lazylinop is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=dtype_id)
def test_lazylinop_agrees_numerically(rng, dtype):
    """lazylinop's ksm on our ks_values is our product; its ksd result converts back."""
    from lazylinop.butterfly import Chain as LazyChain
    from lazylinop.butterfly import ksd, ksm

    for chain in [Chain.square_dyadic(16), Chain.auto(12, 30, 3), Chain.from_radices([2, 3], [5, 2], 2)]:
        B = random_product(rng, chain, dtype)
        dense = dense_product(B)
        ks_values, patterns = to_lazylinop(B)
        assert_close(ksm(ks_values).toarray(), dense, dtype, what=f"ksm on {chain}")
        approximation = ksd(dense.astype(dtype), LazyChain(patterns))
        back = from_lazylinop(approximation)
        assert back.chain == chain
        assert_close(dense_product(back), dense, dtype, factor=100, what=f"ksd on {chain}")


# ----------------------------------------------------------------------------- report
def test_report_on_a_hadamard_matrix():
    H = fastbfly.hadamard_butterfly(16)
    report = compression_report(H.toarray(), H)
    assert isinstance(report, CompressionReport)
    assert (report.nnz, report.dense_size, report.compression_ratio) == (128, 256, 2.0)
    assert report.relative_error < 1e-14
    assert report.svd_rank_same_budget == 4 and report.svd_nnz == 128
    assert report.svd_relative_error_same_budget == pytest.approx(np.sqrt(12 / 16))
    text = str(report)
    assert "16 x 16" in text and "128 of 256" in text and "rank 4" in text
    assert "butterfly is more accurate" in text


def test_report_prefers_low_rank_on_a_low_rank_matrix(rng):
    W = random_array(rng, (64, 2), np.float64) @ random_array(rng, (2, 64), np.float64)
    B = factorize(W)
    report = compression_report(W, B)
    assert report.svd_rank_same_budget == B.nnz // 128 >= 2
    assert report.svd_relative_error_same_budget < 1e-12 < report.relative_error
    assert "low rank is more accurate" in str(report)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=dtype_id)
def test_report_error_is_measured_in_chunks(rng, dtype, monkeypatch):
    """The chunked error equals the dense one, whatever the chunk size, and the SVD
    error equals the error of the explicit truncated SVD."""
    W = noisy(rng, dense_product(random_product(rng, Chain.auto(24, 60, 2), dtype)), 0.1).astype(dtype)
    B = factorize(W, n_factors=2)
    direct = relative_error(B.toarray(), W)
    reports = []
    for entries in (10**9, 100, 1):
        monkeypatch.setattr("fastbfly.report.CHUNK_ENTRIES", entries)
        reports.append(compression_report(W, B))
    for report in reports:
        assert report.relative_error == pytest.approx(direct, rel=1e-5)
        assert report.relative_error == pytest.approx(reports[0].relative_error, rel=1e-12)
    k = reports[0].svd_rank_same_budget
    assert k == min(B.nnz // 84, 24)
    U, s, Vh = np.linalg.svd(W.astype(np.complex128))
    truncated = (U[:, :k] * s[:k]) @ Vh[:k]
    assert reports[0].svd_relative_error_same_budget == pytest.approx(relative_error(truncated, W), rel=1e-6)


def test_report_with_a_budget_below_one_rank():
    B = Butterfly([Factor((8, 1, 1, 1), np.ones((8, 1, 1, 1)))])  # the identity: 8 values
    report = compression_report(np.eye(8), B)
    assert report.svd_rank_same_budget == 0
    assert report.svd_relative_error_same_budget == 1.0
    assert report.relative_error == 0.0


def test_report_rejects_bad_input(rng):
    H = fastbfly.hadamard_butterfly(8)
    with pytest.raises(ValueError, match=r"shape \(8, 4\) does not match the butterfly's shape \(8, 8\)"):
        compression_report(np.ones((8, 4)), H)
    with pytest.raises(TypeError, match="expects a Butterfly"):
        compression_report(np.ones((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        compression_report(np.full((8, 8), np.nan), H)
    with pytest.raises(ValueError, match="2-D"):
        compression_report(np.ones(8), H)
