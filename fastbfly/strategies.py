"""Hypothesis strategies for chains, trees and exact butterfly products.

Shipped in the package so that downstream projects (and this project's tests) can
property-test code built on fastbfly.  Hypothesis is a test extra, not a dependency of
fastbfly: this module is the only one that imports it, and nothing imports this module
implicitly.

    >>> from hypothesis import given, settings
    >>> from fastbfly.strategies import chains, butterfly_products
    >>> @settings(deadline=None, max_examples=5)   # the first call compiles kernels
    ... @given(butterfly_products(chains(max_size=32)))
    ... def test_shape(B):
    ...     assert B.toarray().shape == B.chain.shape
    >>> test_shape()

Every chainable chain of ``L`` factors is ``Chain.from_radices(q, p, ranks)`` for row
radices ``q``, column radices ``p`` and ``L - 1`` internal ranks (see
:meth:`fastbfly.Chain.from_radices`), so the strategies draw those.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from .butterfly import SUPPORTED_DTYPES, Butterfly, Factor
from .patterns import Chain
from .trees import TREE_NAMES

__all__ = ["chains", "butterfly_products", "trees", "smooth_numbers"]


def smooth_numbers(limit: int, primes=(2, 3, 5)) -> list[int]:
    """The integers ``1..limit`` whose prime factors are all in ``primes``, ascending.

    Parameters
    ----------
    limit : int
        Largest number considered.
    primes : tuple of int, default (2, 3, 5)

    Returns
    -------
    list of int

    Examples
    --------
    >>> smooth_numbers(12)
    [1, 2, 3, 4, 5, 6, 8, 9, 10, 12]
    >>> smooth_numbers(20, primes=(2,))
    [1, 2, 4, 8, 16]
    """
    numbers = []
    for k in range(1, limit + 1):
        rest = k
        for p in primes:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            numbers.append(k)
    return numbers


@st.composite
def chains(draw, max_size: int = 128, max_factors: int = 5, max_rank: int = 4,
           primes=(2, 3, 5), max_radix: int | None = None):
    """Random valid chainable chains (`fastbfly.Chain`).

    Parameters
    ----------
    max_size : int, default 128
        Upper bound on both the number of rows ``m = prod(q)`` and of columns
        ``n = prod(p)``; shapes are rectangular either way or square.
    max_factors : int, default 5
        Chains have ``1..max_factors`` factors.
    max_rank : int, default 4
        Internal ranks are drawn in ``1..max_rank``.
    primes : tuple of int, default (2, 3, 5)
        Prime factors of the radices (and so of ``m`` and ``n``).
    max_radix : int, optional
        Upper bound on each radix (default ``max_size``).

    Notes
    -----
    Radices may be 1 (a factor that only mixes rows, only columns, or, with ranks,
    only the rank dimensions), as in the automatic chains of tall and wide matrices.
    The rank ``r_l`` carried between factors ``l`` and ``l + 1`` satisfies the
    constraints of :meth:`fastbfly.Chain.auto`: ``r_l <= q_l r_{l-1}`` (no more than
    factor ``l``'s rows per block) and ``r_{l-1} <= p_l r_l`` (no more than its columns
    per block), with ``r_{-1} = r_{L-1} = 1``.  Ranks are drawn left to right inside
    ``[ceil(r_{l-1} / p_l), min(max_rank, q_l r_{l-1}, p_{l+1} ⋯ p_{L-1})]``, which is
    never empty, and the last bound makes the final ``r_{L-2} <= p_{L-1}`` hold.
    These imply ``r_l <= min(q_0 ⋯ q_l, p_{l+1} ⋯ p_{L-1})``: every split's blocks
    admit the rank, whatever the tree.

    Examples
    --------
    Every drawn chain can be factorized, along every tree:

    >>> import fastbfly
    >>> from hypothesis import given, settings
    >>> @settings(deadline=None, max_examples=10)  # the first call compiles kernels
    ... @given(chains(max_size=16, max_factors=3))
    ... def test_chain(chain):
    ...     assert chain.shape[0] <= 16 and chain.shape[1] <= 16
    ...     assert len(chain) <= 3 and all(r <= 4 for r in chain.ranks)
    ...     assert chain.fused(0, len(chain)) == (1, *chain.shape, 1)
    >>> test_chain()
    """
    max_radix = max_size if max_radix is None else max_radix
    candidates = smooth_numbers(min(max_size, max_radix), primes)
    n_factors = draw(st.integers(1, max_factors))
    rows, cols = [], []
    for _ in range(n_factors):
        rows.append(draw(st.sampled_from([q for q in candidates if math.prod(rows) * q <= max_size])))
        cols.append(draw(st.sampled_from([p for p in candidates if math.prod(cols) * p <= max_size])))
    ranks = []
    previous = 1
    for l in range(n_factors - 1):
        low = -(-previous // cols[l])
        high = min(max_rank, rows[l] * previous, math.prod(cols[l + 1:]))
        previous = draw(st.integers(low, max(low, high)))
        ranks.append(previous)
    return Chain.from_radices(rows, cols, ranks)


def _random_values(rng: np.random.Generator, shape, dtype: np.dtype) -> np.ndarray:
    values = rng.standard_normal(shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def butterfly_products(chain, dtype=np.float64):
    """Random exact products on ``chain``: `fastbfly.Butterfly` objects whose factors
    have independent standard normal values (real and imaginary parts for complex).

    Parameters
    ----------
    chain : Chain, sequence of (a, b, c, d), or a strategy of chains
        E.g. ``butterfly_products(chains())`` draws the chain too.
    dtype : dtype, default float64
        One of float32, float64, complex64, complex128.

    Returns
    -------
    strategy of Butterfly
        Without permutations; ``B.toarray()`` is the exact product ``X_1 ⋯ X_L`` and
        ``B.factors`` are the factors it was built from.

    Notes
    -----
    Values come from ``numpy.random.default_rng(seed)`` with a drawn seed: shrinking
    a failing example shrinks the chain, not the values.

    Examples
    --------
    Exact recovery: the factorization of an exact product reproduces it.

    >>> import numpy as np, fastbfly
    >>> from hypothesis import given, settings
    >>> @settings(deadline=None, max_examples=10)  # the first call compiles kernels
    ... @given(butterfly_products(chains(max_size=16, max_rank=1)))
    ... def test_exact_recovery(B):
    ...     M = B.toarray()
    ...     C = fastbfly.factorize(M, chain=B.chain)
    ...     assert np.allclose(C.toarray(), M, atol=1e-9 * np.linalg.norm(M))
    >>> test_exact_recovery()
    """
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {[str(t) for t in SUPPORTED_DTYPES]}, got {dtype}")
    chain_strategy = chain if isinstance(chain, st.SearchStrategy) else st.just(
        chain if isinstance(chain, Chain) else Chain(chain)
    )

    def build(chain: Chain, seed: int) -> Butterfly:
        rng = np.random.default_rng(seed)
        return Butterfly([Factor(p, _random_values(rng, tuple(p), dtype)) for p in chain])

    return st.builds(build, chain_strategy, st.integers(0, 2**32 - 1))


@st.composite
def _nested_tree(draw, start: int, stop: int):
    if stop - start == 1:
        return start
    split = draw(st.integers(start + 1, stop - 1))
    return (draw(_nested_tree(start, split)), draw(_nested_tree(split, stop)))


def trees(n_factors: int):
    """Trees accepted by :func:`fastbfly.factorize` over ``n_factors`` factors: one of
    the named trees or a random nested tuple of factor indices.

    Examples
    --------
    >>> from fastbfly import build_tree
    >>> from hypothesis import given
    >>> @given(trees(5))
    ... def test_valid(tree):
    ...     assert build_tree(tree, 5).stop == 5
    >>> test_valid()
    """
    if n_factors < 1:
        raise ValueError(f"n_factors must be positive, got {n_factors}")
    return st.one_of(st.sampled_from(TREE_NAMES), _nested_tree(0, n_factors))
