"""Kronecker-sparse patterns, chains, fuse, and the Factor storage layout."""

import numpy as np
import pytest

import fastbfly
from fastbfly import Chain, Factor, Pattern, fuse

import naive
from conftest import DTYPES, assert_close, dtype_id, random_array

PATTERNS = [(1, 1, 1, 1), (1, 2, 2, 4), (4, 2, 2, 1), (2, 3, 5, 2), (3, 1, 4, 2), (2, 4, 1, 3)]

# Chains from DESIGN.md §2: square dyadic, the 12 x 30 example, a rank-2 (Monarch-like)
# chain, and a square dyadic chain with a non-dyadic middle.
CHAINS = {
    "dyadic-2": [(1, 2, 2, 1)],
    "dyadic-16": list(Chain.square_dyadic(16)),
    "12x30": [(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)],
    "rank-2": [(1, 4, 4, 2), (2, 4, 4, 1)],
    "rank-3": [(1, 3, 6, 3), (2, 9, 3, 1)],
}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_shape_and_nnz_match_dense_support(pattern):
    p = Pattern.of(pattern)
    dense = naive.support(pattern)
    assert p.shape == dense.shape
    assert p.nnz == dense.sum()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_adjoint_is_transposed_support(pattern):
    p = Pattern.of(pattern)
    np.testing.assert_array_equal(naive.support(p.adjoint), naive.support(p).T)


def test_pattern_of_accepts_sequences_and_numpy_integers():
    assert Pattern.of([1, 2, 2, 4]) == Pattern(1, 2, 2, 4)
    assert Pattern.of(np.array([1, 2, 2, 4])) == Pattern(1, 2, 2, 4)
    assert Pattern.of(np.array([1, 2, 2, 4], dtype=np.int32)) == Pattern(1, 2, 2, 4)
    p = Pattern(2, 2, 2, 1)
    assert Pattern.of(p) is p
    assert all(type(v) is int for v in Pattern.of(np.array([1, 2, 2, 4])))


@pytest.mark.parametrize(
    "value, error, match",
    [
        ((1, 2, 3), ValueError, r"4 entries.*\(1, 2, 3\)"),
        ((1, 2, 2, 2, 2), ValueError, "4 entries"),
        ((1, 2, 0, 1), ValueError, r"positive.*\(1, 2, 0, 1\)"),
        ((1, -2, 2, 1), ValueError, "positive"),
        ((1, 2.0, 2, 1), TypeError, r"integers.*2\.0"),
        ((1, True, 2, 1), TypeError, "integers"),
        ((1, "2", 2, 1), TypeError, "integers"),
        (5, TypeError, "sequence.*5"),
        (None, TypeError, "None"),
    ],
)
def test_pattern_of_rejects_bad_values(value, error, match):
    with pytest.raises(error, match=match):
        Pattern.of(value)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fuse_is_the_support_of_the_product(name):
    """The boolean product of consecutive supports is exactly the fused pattern's."""
    patterns = [Pattern(*p) for p in CHAINS[name]]
    for start in range(len(patterns)):
        product = naive.support(patterns[start]).astype(np.int64)
        fused = patterns[start]
        for right in patterns[start + 1 :]:
            product = product @ naive.support(right).astype(np.int64)
            fused = fuse(fused, right)
            np.testing.assert_array_equal(product > 0, naive.support(fused))


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_shape_nnz_ranks(name):
    chain = Chain(CHAINS[name])
    dense = naive.support(chain[0])
    for p in chain[1:]:
        dense = dense.astype(int) @ naive.support(p).astype(int)
    assert chain.shape == dense.shape
    assert chain.nnz == sum(naive.support(p).sum() for p in CHAINS[name])
    # rank r_l = a_l c_l / a_{l+1} = b_{l+1} d_{l+1} / d_l
    for rank, (l, r) in zip(chain.ranks, zip(chain[:-1], chain[1:])):
        assert rank == l.a * l.c // r.a == r.b * r.d // l.d
    assert len(chain.ranks) == len(chain) - 1


def test_chain_ranks_of_named_chains():
    assert Chain(CHAINS["12x30"]).shape == (12, 30)
    assert Chain(CHAINS["12x30"]).ranks == (1, 1)
    assert Chain(CHAINS["rank-2"]).ranks == (2,)
    assert Chain(CHAINS["rank-3"]).ranks == (3,)
    assert Chain(CHAINS["dyadic-16"]).ranks == (1, 1, 1)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 1024])
def test_square_dyadic_chain(n):
    chain = Chain.square_dyadic(n)
    J = n.bit_length() - 1
    if n == 1:
        assert list(chain) == [Pattern(1, 1, 1, 1)]
    else:
        # pi_l = (2^(l-1), 2, 2, N / 2^l), l = 1..J
        assert list(chain) == [Pattern(2 ** (l - 1), 2, 2, n // 2**l) for l in range(1, J + 1)]
    assert chain.shape == (n, n)
    assert chain.nnz == (2 * n * J if n > 1 else 1)
    # fused(s..e) = I_{2^(s-1)} ⊗ 1_{2^(e-s+1)} ⊗ I_{N/2^e}; here 0-based half-open
    for start in range(len(chain)):
        for stop in range(start + 1, len(chain) + 1):
            if n > 1:
                width = 2 ** (stop - start)
                assert chain.fused(start, stop) == Pattern(2**start, width, width, n // 2**stop)


def test_square_dyadic_product_support_is_full():
    chain = Chain.square_dyadic(32)
    product = np.eye(32, dtype=np.int64)
    for p in chain:
        product = product @ naive.support(p).astype(np.int64)
    assert (product > 0).all()


@pytest.mark.parametrize(
    "n, error, match",
    [(6, ValueError, "power of two, got 6"), (0, ValueError, "got 0"), (-4, ValueError, "got -4"),
     (2.0, TypeError, "integer, got 2.0"), (True, TypeError, "True"), ("8", TypeError, "'8'")],
)
def test_square_dyadic_rejects_bad_sizes(n, error, match):
    with pytest.raises(error, match=match):
        Chain.square_dyadic(n)


@pytest.mark.parametrize(
    "left, right, match",
    [
        ((1, 2, 2, 2), (1, 2, 2, 1), r"\(1, 2, 2, 2\) and \(1, 2, 2, 1\) do not chain"),
        ((2, 2, 2, 1), (1, 2, 2, 2), r"\(2, 2, 2, 1\) and \(1, 2, 2, 2\) are not chainable"),
        ((1, 2, 2, 2), (4, 1, 1, 1), "not chainable"),
        ((1, 2, 2, 3), (3, 2, 3, 1), "not an integer"),
    ],
)
def test_fuse_and_chain_reject_unchainable_patterns(left, right, match):
    with pytest.raises(ValueError, match=match):
        fuse(Pattern(*left), Pattern(*right))
    mirror = [Pattern(*right).adjoint, Pattern(*left).adjoint]
    try:  # the transpose of a chainable product is a valid (reversed) Chain
        Chain(mirror)
    except ValueError:
        with pytest.raises(ValueError, match=match):
            Chain([left, right])
    else:
        chain = Chain([left, right])
        assert chain.reversed
        with pytest.raises(ValueError, match="transposes"):
            chain.fused(0, 2)


def test_reversed_chain_is_the_transpose_of_a_chainable_chain():
    chain = Chain.auto(12, 30, 3, rank=1)
    mirror = Chain([p.adjoint for p in reversed(chain)])
    assert mirror.reversed and not chain.reversed
    assert mirror.shape == chain.shape[::-1]
    assert mirror.ranks == chain.ranks[::-1]
    assert "reversed=True" in repr(mirror)


def test_chain_rejects_empty_and_strings():
    with pytest.raises(ValueError, match="at least one"):
        Chain([])
    with pytest.raises(TypeError, match="'abcd'"):
        Chain("abcd")


@pytest.mark.parametrize("start, stop", [(0, 0), (2, 1), (-1, 2), (0, 5)])
def test_chain_fused_rejects_bad_ranges(start, stop):
    with pytest.raises(ValueError, match=rf"\[{start}, {stop}\)"):
        Chain.square_dyadic(16).fused(start, stop)


def test_chain_equality_and_hash():
    assert Chain.square_dyadic(8) == Chain([(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)])
    assert hash(Chain.square_dyadic(8)) == hash(Chain(list(Chain.square_dyadic(8))))
    assert Chain.square_dyadic(8) != Chain.square_dyadic(16)
    assert "(8, 8)" in repr(Chain.square_dyadic(8))


# ----------------------------------------------------------------------------- Factor
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_factor_toarray_matches_layout_formula(pattern, dtype, rng):
    values = random_array(rng, pattern, dtype)
    factor = Factor(pattern, values)
    dense = factor.toarray()
    assert dense.dtype == dtype
    np.testing.assert_array_equal(dense, naive.factor_dense(pattern, values))
    np.testing.assert_array_equal(factor.tosparse().toarray(), dense)
    assert factor.shape == Pattern(*pattern).shape and factor.nnz == Pattern(*pattern).nnz


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("conjugate", [True, False])
def test_factor_adjoint(dtype, conjugate, rng):
    pattern = (2, 3, 5, 2)
    factor = Factor(pattern, random_array(rng, pattern, dtype))
    adjoint = factor.adjoint(conjugate)
    expected = factor.toarray().T
    if conjugate:
        expected = expected.conj()
    assert adjoint.pattern == Pattern(2, 5, 3, 2)
    np.testing.assert_array_equal(adjoint.toarray(), expected)


def test_factor_rejects_bad_values():
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 1\).*\(2, 2\)"):
        Factor((1, 2, 2, 1), np.ones((2, 2)))
    with pytest.raises(TypeError, match="int64"):
        Factor((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="object"):
        Factor((1, 1, 1, 1), np.array([[[[None]]]], dtype=object))


def test_chain_of_random_factors_matches_naive_product(rng):
    patterns = CHAINS["12x30"]
    factors = [Factor(p, random_array(rng, p, np.float64)) for p in patterns]
    B = fastbfly.Butterfly(factors)
    expected = naive.chain_dense(patterns, [f.values for f in factors])
    assert_close(B.toarray(), expected, np.float64)
