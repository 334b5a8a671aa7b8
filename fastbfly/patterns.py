"""Kronecker-sparse patterns and chains of them.

A pattern ``(a, b, c, d)`` is the support ``I_a ⊗ 1_{b×c} ⊗ I_d``: a matrix of shape
``(a*b*d, a*c*d)`` with exactly ``a*b*c*d`` nonzeros.  Entry ``(i, j, k, t)`` of the
block-compressed values sits at

    row = i*b*d + j*d + t,    column = i*c*d + k*d + t.

A chain is a sequence of patterns ``π_1, ..., π_L`` describing the product
``X_1 X_2 ⋯ X_L`` (``X_1`` left-most, so ``X_L`` is applied to a vector first).

Everything here is closed-form integer arithmetic: no support matrix is ever formed.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

__all__ = ["Pattern", "Chain", "fuse"]


class Pattern(NamedTuple):
    """Kronecker-sparse pattern ``I_a ⊗ 1_{b×c} ⊗ I_d``.

    Parameters
    ----------
    a, b, c, d : int
        Positive integers.

    Examples
    --------
    >>> p = Pattern(2, 2, 2, 4)
    >>> p.shape, p.nnz
    ((16, 16), 32)
    """

    a: int
    b: int
    c: int
    d: int

    @classmethod
    def of(cls, value) -> "Pattern":
        """Convert a 4-sequence of positive integers to a `Pattern`, with a clear error.

        Parameters
        ----------
        value : Pattern or sequence of 4 ints
            ``(a, b, c, d)``, each a positive integer (NumPy integers are accepted).

        Returns
        -------
        Pattern
            ``value`` itself when it already is one.

        Raises
        ------
        TypeError
            If ``value`` is not a sequence or an entry is not an integer.
        ValueError
            If ``value`` does not have 4 entries or an entry is not positive.

        Examples
        --------
        >>> import numpy as np
        >>> Pattern.of(np.array([1, 2, 2, 4]))
        Pattern(a=1, b=2, c=2, d=4)
        >>> Pattern.of((1, 2, 0, 4))
        Traceback (most recent call last):
        ...
        ValueError: pattern entries must be positive, got (1, 2, 0, 4)
        """
        if isinstance(value, Pattern):
            return value
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"a pattern must be a sequence (a, b, c, d), got {value!r}") from None
        if len(items) != 4:
            raise ValueError(f"a pattern must have 4 entries (a, b, c, d), got {value!r}")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, numbers.Integral):
                raise TypeError(f"pattern entries must be integers, got {value!r}")
            if item < 1:
                raise ValueError(f"pattern entries must be positive, got {value!r}")
        return cls(*(int(item) for item in items))

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(a*b*d, a*c*d)`` of the matrix with this support.

        Examples
        --------
        >>> Pattern(2, 3, 5, 7).shape
        (42, 70)
        """
        return (self.a * self.b * self.d, self.a * self.c * self.d)

    @property
    def nnz(self) -> int:
        """Number of stored values, ``a*b*c*d``.

        Examples
        --------
        >>> Pattern(2, 3, 5, 7).nnz
        210
        """
        return self.a * self.b * self.c * self.d

    @property
    def adjoint(self) -> "Pattern":
        """Pattern of the (conjugate) transpose, ``(a, c, b, d)``.

        Examples
        --------
        >>> p = Pattern(2, 3, 5, 7)
        >>> p.adjoint, p.adjoint.shape == p.shape[::-1]
        (Pattern(a=2, b=5, c=3, d=7), True)
        """
        return Pattern(self.a, self.c, self.b, self.d)

    def __repr__(self) -> str:
        return f"Pattern(a={self.a}, b={self.b}, c={self.c}, d={self.d})"


def fuse(left: Pattern, right: Pattern) -> Pattern:
    """Pattern of the product of two consecutive chainable patterns.

    ``(a1, b1, c1, d1) · (a2, b2, c2, d2) = (a1, b1*d1/d2, a2*c2/a1, d2)``.

    Parameters
    ----------
    left, right : Pattern
        Consecutive patterns of a chain, ``left`` applied after ``right``.

    Returns
    -------
    Pattern
        The support of every product ``X Y`` with ``X`` on ``left`` and ``Y`` on
        ``right``.

    Raises
    ------
    ValueError
        If the two patterns are not chainable (see `Chain`).

    Examples
    --------
    The first two factors of the 16-point butterfly make one ``4 × 4`` block per
    ``d = 4`` interleaved positions:

    >>> fuse(Pattern(1, 2, 2, 8), Pattern(2, 2, 2, 4))
    Pattern(a=1, b=4, c=4, d=4)
    >>> fuse(Pattern(1, 2, 2, 8), Pattern(2, 2, 2, 2))
    Traceback (most recent call last):
    ...
    ValueError: patterns (1, 2, 2, 8) and (2, 2, 2, 2) do not chain: inner sizes a*c*d = 16 and a*b*d = 8 differ
    """
    _link_rank(left, right)  # raises if not chainable
    return Pattern(left.a, left.b * left.d // right.d, right.a * right.c // left.a, right.d)


def _link_rank(left: Pattern, right: Pattern) -> int:
    """Rank carried between two consecutive patterns; ValueError if not chainable."""
    if left.shape[1] != right.shape[0]:
        raise ValueError(
            f"patterns {tuple(left)} and {tuple(right)} do not chain: inner sizes "
            f"a*c*d = {left.shape[1]} and a*b*d = {right.shape[0]} differ"
        )
    if right.a % left.a or left.d % right.d:
        raise ValueError(
            f"patterns {tuple(left)} and {tuple(right)} are not chainable: need "
            f"a1 | a2 and d2 | d1"
        )
    if (left.a * left.c) % right.a:
        raise ValueError(
            f"patterns {tuple(left)} and {tuple(right)} are not chainable: the rank "
            f"a1*c1/a2 = {left.a * left.c}/{right.a} is not an integer"
        )
    rank = left.a * left.c // right.a
    # a1 c1 d1 = a2 b2 d2 with a1 | a2, d2 | d1 makes b2 d2 / d1 equal to the same rank.
    return rank


class Chain:
    """A chainable sequence of Kronecker-sparse patterns, left-most first.

    The chain describes products ``X_1 X_2 ⋯ X_L`` with ``X_l`` supported on
    ``patterns[l]``.  Consecutive patterns must be *chainable*: ``a_l | a_{l+1}``,
    ``d_{l+1} | d_l`` and the rank ``r_l = a_l c_l / a_{l+1} = b_{l+1} d_{l+1} / d_l`` is an
    integer.  Chainable chains are exactly those the hierarchical algorithm factorizes
    with guarantees.

    The transpose of a chainable product is accepted too (``chain.reversed`` is then
    True): a `Butterfly` can hold it, but only chainable chains can be factorized.

    Parameters
    ----------
    patterns : sequence of Pattern or 4-tuples
        At least one pattern.

    Attributes
    ----------
    patterns : tuple of Pattern
        Left-most first; ``chain[l]`` and ``len(chain)`` index them.
    ranks : tuple of int
        ``L - 1`` ranks ``r_l`` carried between consecutive factors.
    reversed : bool
        True for the (conjugate) transpose of a chainable chain.

    Examples
    --------
    >>> chain = Chain.square_dyadic(8)
    >>> chain
    Chain([(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)], shape=(8, 8), ranks=(1, 1))
    >>> chain.nnz
    48
    """

    def __init__(self, patterns: Sequence):
        if isinstance(patterns, (str, bytes)):
            raise TypeError(f"patterns must be a sequence of (a, b, c, d), got {patterns!r}")
        patterns = tuple(Pattern.of(p) for p in patterns)
        if not patterns:
            raise ValueError("a chain needs at least one pattern")
        self.patterns = patterns
        self.reversed = False
        try:
            self.ranks = tuple(_link_rank(l, r) for l, r in zip(patterns[:-1], patterns[1:]))
        except ValueError as error:
            # The (conjugate) transpose of a chainable product: reversed order, b <-> c.
            mirror = [p.adjoint for p in reversed(patterns)]
            try:
                ranks = [_link_rank(l, r) for l, r in zip(mirror[:-1], mirror[1:])]
            except ValueError:
                raise error from None
            self.ranks = tuple(reversed(ranks))
            self.reversed = True

    @classmethod
    def square_dyadic(cls, n: int) -> "Chain":
        """The square dyadic butterfly chain of size ``n = 2**J``: ``J`` patterns
        ``(2**(l-1), 2, 2, n / 2**l)``, ``l = 1..J``.

        ``n = 1`` gives the single pattern ``(1, 1, 1, 1)``.

        Parameters
        ----------
        n : int
            A power of two.

        Returns
        -------
        Chain
            ``log2(n)`` patterns, ``2 n`` values each.

        Examples
        --------
        >>> Chain.square_dyadic(4)
        Chain([(1, 2, 2, 2), (2, 2, 2, 1)], shape=(4, 4), ranks=(1,))
        >>> Chain.square_dyadic(1024).nnz
        20480
        """
        n_levels = log2_exact(n, "n")
        if n_levels == 0:
            return cls([(1, 1, 1, 1)])
        return cls([(2 ** (l - 1), 2, 2, n >> l) for l in range(1, n_levels + 1)])

    @classmethod
    def from_radices(cls, row_radices, col_radices, ranks=None) -> "Chain":
        """The chain with row radices ``q``, column radices ``p`` and internal ranks.

        Factor ``l`` (0-based) gets the pattern ``(a_l, q_l r_{l-1}, p_l r_l, d_l)`` with
        ``a_l = p_0 ⋯ p_{l-1}``, ``d_l = q_{l+1} ⋯ q_{L-1}`` and ``r_{-1} = r_{L-1} = 1``,
        so the product has shape ``(prod(q), prod(p))``.  Every chainable chain of
        ``L`` factors is of this form.

        Parameters
        ----------
        row_radices, col_radices : sequences of ``L`` positive ints
        ranks : int or sequence of ``L - 1`` positive ints, default 1

        Examples
        --------
        >>> Chain.from_radices([2, 2], [4, 2], ranks=2)
        Chain([(1, 2, 8, 2), (4, 4, 2, 1)], shape=(4, 8), ranks=(2,))
        """
        rows = [_positive_int(q, "row radix") for q in row_radices]
        cols = [_positive_int(p, "column radix") for p in col_radices]
        if len(rows) != len(cols) or not rows:
            raise ValueError(
                f"row and column radices must be non-empty and of equal length, got "
                f"{len(rows)} and {len(cols)}"
            )
        n_factors = len(rows)
        if ranks is None:
            ranks = 1
        if isinstance(ranks, (numbers.Integral,)) and not isinstance(ranks, bool):
            ranks = [int(ranks)] * (n_factors - 1)
        ranks = [_positive_int(r, "rank") for r in ranks]
        if len(ranks) != n_factors - 1:
            raise ValueError(f"need {n_factors - 1} ranks for {n_factors} factors, got {len(ranks)}")
        links = [1] + ranks + [1]
        patterns = []
        for l in range(n_factors):
            a = math.prod(cols[:l])
            d = math.prod(rows[l + 1 :])
            patterns.append((a, rows[l] * links[l], cols[l] * links[l + 1], d))
        return cls(patterns)

    @classmethod
    def monarch(cls, m: int, n: int, blocks: int | None = None, rank: int = 1) -> "Chain":
        """Two-factor Monarch-like chain for an ``m × n`` matrix: the right factor is
        block diagonal with ``blocks`` blocks, the left one mixes across blocks.

        ``blocks`` must divide ``n``; its default is the divisor of ``n`` closest to
        ``sqrt(n)``.  The row radices are split the same way over ``m``.

        Examples
        --------
        >>> Chain.monarch(16, 16)
        Chain([(1, 4, 4, 4), (4, 4, 4, 1)], shape=(16, 16), ranks=(1,))
        """
        m = _positive_int(m, "m")
        n = _positive_int(n, "n")
        if blocks is None:
            blocks = min(_divisors(n), key=lambda p: (abs(p - math.sqrt(n)), p))
        blocks = _positive_int(blocks, "blocks")
        if n % blocks:
            raise ValueError(f"blocks = {blocks} must divide n = {n}")
        row_split = min(_divisors(m), key=lambda q: (abs(q - math.sqrt(m)), q))
        return cls.from_radices([row_split, m // row_split], [blocks, n // blocks], rank)

    @classmethod
    def auto(cls, m: int, n: int, n_factors: int | None = None, rank: int = 1) -> "Chain":
        """The chainable chain for an ``m × n`` matrix with ``n_factors`` factors and
        internal rank ``rank`` that stores the fewest values.

        Dynamic programming over the divisors of ``m`` and ``n`` (the search pyfaust's
        ``DebflyGen`` does).  Every factor must have a row or column radix above 1, and
        the rank may not exceed the block sizes it joins.  Chains are *monotone*: each
        factor's row radix equals (square matrix), exceeds (tall) or is below (wide) its
        column radix, as in pyfaust's ``DebflyGen``.  ``n_factors=None`` tries
        every feasible number of factors and keeps the cheapest.

        Raises
        ------
        ValueError
            If no chain exists, e.g. because ``m`` or ``n`` has too few prime factors
            for ``n_factors`` factors (zero-padding, ``factorize(..., pad=True)``, is
            the remedy for sizes with a large prime factor).

        Examples
        --------
        >>> Chain.auto(12, 30, 3)
        Chain([(1, 2, 2, 6), (2, 3, 3, 2), (6, 2, 5, 1)], shape=(12, 30), ranks=(1, 1))
        """
        m = _positive_int(m, "m")
        n = _positive_int(n, "n")
        rank = _positive_int(rank, "rank")
        if n_factors is None:
            best = None
            for count in range(1, _count_prime_factors(m) + _count_prime_factors(n) + 1):
                try:
                    chain = cls.auto(m, n, count, rank)
                except ValueError:
                    continue
                if best is None or chain.nnz < best.nnz:
                    best = chain
            if best is None:
                raise ValueError(f"no chainable chain for a {m} x {n} matrix with rank {rank}")
            return best
        n_factors = _positive_int(n_factors, "n_factors")
        row_radices, col_radices = _cheapest_radices(m, n, n_factors, rank)
        return cls.from_radices(row_radices, col_radices, rank)

    def __len__(self) -> int:
        return len(self.patterns)

    def __getitem__(self, index):
        return self.patterns[index]

    def __iter__(self):
        return iter(self.patterns)

    def __eq__(self, other) -> bool:
        return isinstance(other, Chain) and self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the product: rows of the first pattern, columns of the last.

        Examples
        --------
        >>> Chain.from_radices([2, 3], [5, 2]).shape
        (6, 10)
        """
        return (self.patterns[0].shape[0], self.patterns[-1].shape[1])

    @property
    def nnz(self) -> int:
        """Total number of stored values over all factors.

        Examples
        --------
        >>> chain = Chain.square_dyadic(8)
        >>> chain.nnz, [p.nnz for p in chain]
        (48, [16, 16, 16])
        """
        return sum(p.nnz for p in self.patterns)

    def fused(self, start: int, stop: int) -> Pattern:
        """Pattern of the product of factors ``start..stop-1`` (0-based, half-open).

        This is the pattern of a tree node covering those factors.

        Raises
        ------
        ValueError
            For an empty or out-of-range ``[start, stop)``, or a reversed chain.

        Examples
        --------
        >>> chain = Chain.square_dyadic(16)
        >>> chain.fused(0, 2), chain.fused(1, 4)
        (Pattern(a=1, b=4, c=4, d=4), Pattern(a=2, b=8, c=8, d=1))
        >>> chain.fused(0, 4)  # the whole product: one dense 16 x 16 block
        Pattern(a=1, b=16, c=16, d=1)
        """
        if not 0 <= start < stop <= len(self):
            raise ValueError(f"invalid factor range [{start}, {stop}) for {len(self)} factors")
        if self.reversed:
            raise ValueError("fused patterns are defined for chainable chains, not their transposes")
        pattern = self.patterns[start]
        for right in self.patterns[start + 1 : stop]:
            pattern = fuse(pattern, right)
        return pattern

    def __repr__(self) -> str:
        body = ", ".join(str(tuple(p)) for p in self.patterns)
        mirror = ", reversed=True" if self.reversed else ""
        return f"Chain([{body}], shape={self.shape}, ranks={self.ranks}{mirror})"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted(set(small + [n // k for k in small]))


def _count_prime_factors(n: int) -> int:
    count, k = 0, 2
    while k * k <= n:
        while n % k == 0:
            n //= k
            count += 1
        k += 1
    return count + (n > 1)


def _cheapest_radices(m: int, n: int, n_factors: int, rank: int):
    """Row and column radices minimising the stored values (see `Chain.auto`).

    State after ``l`` factors: ``(P, Q)``, the products of the column and row radices so
    far.  Factor ``l`` stores ``P_l * (m / Q_{l-1}) * r_{l-1} * r_l`` values.
    """
    links = [1] + [rank] * (n_factors - 1) + [1]
    row_divisors, col_divisors = _divisors(m), _divisors(n)
    # best[(P, Q)] = (cost, row radices, column radices)
    best = {(1, 1): (0, (), ())}
    for l in range(n_factors):
        last = l == n_factors - 1
        following = {}
        for (P, Q), (cost, rows, cols) in best.items():
            for q in row_divisors:
                if (m // Q) % q or (last and Q * q != m):
                    continue
                for p in col_divisors:
                    if (n // P) % p or (last and P * p != n) or p * q < 2:
                        continue
                    # Monotone chains (Deformable Butterfly, Lin et al. 2022): every
                    # factor is square, tall or wide like the matrix.  Without this the
                    # cheapest "chain" is a rank-one outer product.
                    if (m == n and q != p) or (m > n and q < p) or (m < n and q > p):
                        continue
                    # the rank cannot exceed the sizes of the blocks it joins
                    if q * links[l] < links[l + 1] or p * links[l + 1] < links[l]:
                        continue
                    total = cost + P * p * (m // Q) * links[l] * links[l + 1]
                    key = (P * p, Q * q)
                    if key not in following or total < following[key][0]:
                        following[key] = (total, rows + (q,), cols + (p,))
        best = following
    if (n, m) not in best:
        raise ValueError(
            f"no chain of {n_factors} factors with rank {rank} for a {m} x {n} matrix: "
            f"{m} and {n} do not have enough divisors (prime factors {_prime_factors(m)} "
            f"and {_prime_factors(n)}); use fewer factors, or zero-padding "
            f"(factorize(..., pad=True)) for sizes with a large prime factor"
        )
    _, rows, cols = best[(n, m)]
    return list(rows), list(cols)


def _prime_factors(n: int) -> list[int]:
    factors, k = [], 2
    while k * k <= n:
        while n % k == 0:
            factors.append(k)
            n //= k
        k += 1
    if n > 1:
        factors.append(n)
    return factors


def log2_exact(n, name: str) -> int:
    """``log2(n)`` for a power of two ``n >= 1``; ValueError naming ``name`` otherwise.

    Examples
    --------
    >>> log2_exact(1024, "n")
    10
    >>> log2_exact(12, "size")
    Traceback (most recent call last):
    ...
    ValueError: size must be a power of two, got 12
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    n = int(n)
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n.bit_length() - 1

