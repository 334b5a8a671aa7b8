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
        """Convert a 4-sequence of positive integers to a `Pattern`, with a clear error."""
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
        """Shape ``(a*b*d, a*c*d)`` of the matrix with this support."""
        return (self.a * self.b * self.d, self.a * self.c * self.d)

    @property
    def nnz(self) -> int:
        """Number of stored values, ``a*b*c*d``."""
        return self.a * self.b * self.c * self.d

    @property
    def adjoint(self) -> "Pattern":
        """Pattern of the (conjugate) transpose, ``(a, c, b, d)``."""
        return Pattern(self.a, self.c, self.b, self.d)

    def __repr__(self) -> str:
        return f"Pattern(a={self.a}, b={self.b}, c={self.c}, d={self.d})"


def fuse(left: Pattern, right: Pattern) -> Pattern:
    """Pattern of the product of two consecutive chainable patterns.

    ``(a1, b1, c1, d1) · (a2, b2, c2, d2) = (a1, b1*d1/d2, a2*c2/a1, d2)``.

    Raises
    ------
    ValueError
        If the two patterns are not chainable (see `Chain`).
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

    Parameters
    ----------
    patterns : sequence of Pattern or 4-tuples
        At least one pattern.

    Examples
    --------
    >>> chain = Chain.square_dyadic(8)
    >>> chain
    Chain([(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)], shape=(8, 8), ranks=(1, 1))
    >>> chain.nnz
    24
    """

    def __init__(self, patterns: Sequence):
        if isinstance(patterns, (str, bytes)):
            raise TypeError(f"patterns must be a sequence of (a, b, c, d), got {patterns!r}")
        patterns = tuple(Pattern.of(p) for p in patterns)
        if not patterns:
            raise ValueError("a chain needs at least one pattern")
        self.patterns = patterns
        self.ranks = tuple(_link_rank(l, r) for l, r in zip(patterns[:-1], patterns[1:]))

    @classmethod
    def square_dyadic(cls, n: int) -> "Chain":
        """The square dyadic butterfly chain of size ``n = 2**J``: ``J`` patterns
        ``(2**(l-1), 2, 2, n / 2**l)``, ``l = 1..J``.

        ``n = 1`` gives the single pattern ``(1, 1, 1, 1)``.
        """
        n_levels = log2_exact(n, "n")
        if n_levels == 0:
            return cls([(1, 1, 1, 1)])
        return cls([(2 ** (l - 1), 2, 2, n >> l) for l in range(1, n_levels + 1)])

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
        """Shape of the product: rows of the first pattern, columns of the last."""
        return (self.patterns[0].shape[0], self.patterns[-1].shape[1])

    @property
    def nnz(self) -> int:
        """Total number of stored values over all factors."""
        return sum(p.nnz for p in self.patterns)

    def fused(self, start: int, stop: int) -> Pattern:
        """Pattern of the product of factors ``start..stop-1`` (0-based, half-open)."""
        if not 0 <= start < stop <= len(self):
            raise ValueError(f"invalid factor range [{start}, {stop}) for {len(self)} factors")
        pattern = self.patterns[start]
        for right in self.patterns[start + 1 : stop]:
            pattern = fuse(pattern, right)
        return pattern

    def __repr__(self) -> str:
        body = ", ".join(str(tuple(p)) for p in self.patterns)
        return f"Chain([{body}], shape={self.shape}, ranks={self.ranks})"


def log2_exact(n, name: str) -> int:
    """``log2(n)`` for a power of two ``n >= 1``; ValueError naming ``name`` otherwise."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    n = int(n)
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n.bit_length() - 1

