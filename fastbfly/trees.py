"""Binary trees over the factors of a chain.

The hierarchical algorithm splits the chain ``X_1 ⋯ X_L`` in two, solves the two-factor
problem, and recurses into each half.  A tree says where each split happens.

User format
-----------
A tree is either a name,

``"balanced"``
    split each range in the middle (left half gets the extra factor when odd);
``"left-to-right"``
    peel off the left-most factor first: ``(0, (1, (2, ...)))``;
``"right-to-left"``
    peel off the right-most factor first: ``(((..., L-3), L-2), L-1)``;

or a nested structure of 2-element tuples/lists whose leaves are the 0-based factor
indices ``0..L-1`` in increasing order, each exactly once, e.g. ``((0, 1), (2, 3))`` for
a balanced tree over four factors.  A single factor is the tree ``0``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

__all__ = ["Node", "build_tree", "TREE_NAMES"]

TREE_NAMES = ("balanced", "left-to-right", "right-to-left")


@dataclass(frozen=True)
class Node:
    """A node covering factors ``start..stop-1`` (0-based, half-open).

    Leaves have ``left is right is None``; internal nodes split at ``left.stop``.
    Nodes are immutable; :func:`build_tree` makes them from the user format.

    Parameters
    ----------
    start, stop : int
        First factor covered and one past the last.
    left, right : Node, optional
        The children of an internal node, covering ``start..split-1`` and
        ``split..stop-1``.

    Examples
    --------
    >>> root = build_tree("balanced", 3)
    >>> root.start, root.stop, root.split
    (0, 3, 2)
    >>> root.right
    Node(start=2, stop=3, left=None, right=None)
    >>> root.left.to_nested(), root.right.is_leaf
    ((0, 1), True)
    """

    start: int
    stop: int
    left: Optional["Node"] = None
    right: Optional["Node"] = None

    @property
    def is_leaf(self) -> bool:
        """True for a node covering a single factor.

        Examples
        --------
        >>> Node(2, 3).is_leaf, build_tree("balanced", 2).is_leaf
        (True, False)
        """
        return self.left is None

    @property
    def split(self) -> int:
        """Index of the first factor of the right child (internal nodes only).

        Examples
        --------
        >>> build_tree("left-to-right", 4).split, build_tree("right-to-left", 4).split
        (1, 3)
        """
        return self.left.stop

    def to_nested(self):
        """The user format of this tree (nested tuples of factor indices).

        ``build_tree(node.to_nested(), n)`` gives the node back.

        Examples
        --------
        >>> build_tree("right-to-left", 4).to_nested()
        (((0, 1), 2), 3)
        >>> build_tree(((0, 1), (2, 3)), 4) == build_tree("balanced", 4)
        True
        """
        if self.is_leaf:
            return self.start
        return (self.left.to_nested(), self.right.to_nested())


def build_tree(tree, n_factors: int) -> Node:
    """Turn a tree name or nested tuple into a `Node` over ``n_factors`` factors.

    Parameters
    ----------
    tree : str or nested tuple
        ``"balanced"``, ``"left-to-right"``, ``"right-to-left"`` (`TREE_NAMES`), or
        nested 2-tuples (or lists) whose leaves are ``0..n_factors-1`` in order.
    n_factors : int
        Number of factors ``L`` of the chain.

    Returns
    -------
    Node
        The root, covering factors ``0..n_factors-1``.

    Raises
    ------
    ValueError
        For an unknown name or a malformed nested tree (not binary, leaves out of order,
        missing or repeated factor indices).
    TypeError
        For leaves that are not integers or containers that are not tuples/lists.

    Examples
    --------
    >>> build_tree("balanced", 5).to_nested()  # the left half gets the extra factor
    (((0, 1), 2), (3, 4))
    >>> build_tree([0, [1, 2]], 3).to_nested()
    (0, (1, 2))
    >>> build_tree((0, (2, 1)), 3)
    Traceback (most recent call last):
    ...
    ValueError: tree node (2, 1): left child covers factors up to 2 but right child starts at 1; leaves must be 0..L-1 in order
    """
    if isinstance(tree, str):
        if tree == "balanced":
            return _named(0, n_factors, lambda start, stop: (start + stop + 1) // 2)
        if tree == "left-to-right":
            return _named(0, n_factors, lambda start, stop: start + 1)
        if tree == "right-to-left":
            return _named(0, n_factors, lambda start, stop: stop - 1)
        raise ValueError(
            f"unknown tree {tree!r}: expected one of {TREE_NAMES} or a nested tuple of "
            f"factor indices"
        )
    root = _parse(tree, depth=0)
    if root.start != 0 or root.stop != n_factors:
        raise ValueError(
            f"tree {tree!r} covers factors {root.start}..{root.stop - 1}, expected "
            f"0..{n_factors - 1}"
        )
    return root


def _named(start: int, stop: int, choose_split) -> Node:
    if stop - start == 1:
        return Node(start, stop)
    split = choose_split(start, stop)
    return Node(start, stop, _named(start, split, choose_split), _named(split, stop, choose_split))


_MAX_DEPTH = 512  # deeper than any chain we can store; stops self-referencing lists


def _parse(tree, depth: int) -> Node:
    if depth > _MAX_DEPTH:
        raise ValueError("tree is nested too deeply (or refers to itself)")
    if isinstance(tree, numbers.Integral) and not isinstance(tree, bool):
        index = int(tree)
        if index < 0:
            raise ValueError(f"tree leaf {index} is negative; leaves are factor indices")
        return Node(index, index + 1)
    if isinstance(tree, (tuple, list)):
        if len(tree) != 2:
            raise ValueError(
                f"every internal tree node must have exactly 2 children, got {tree!r}"
            )
        left = _parse(tree[0], depth + 1)
        right = _parse(tree[1], depth + 1)
        if left.stop != right.start:
            raise ValueError(
                f"tree node {tree!r}: left child covers factors up to {left.stop - 1} "
                f"but right child starts at {right.start}; leaves must be 0..L-1 in order"
            )
        return Node(left.start, right.stop, left, right)
    raise TypeError(
        f"tree must be a name, an int leaf or a 2-tuple of subtrees, got {tree!r} "
        f"of type {type(tree).__name__}"
    )
