"""Binary trees over the factors: named trees, the user format, and its errors."""

import numpy as np
import pytest

import fastbfly
from fastbfly import build_tree

from conftest import NAMED_TREES, random_tree


def leaves(nested):
    if isinstance(nested, tuple):
        return leaves(nested[0]) + leaves(nested[1])
    return [nested]


def depth(nested):
    if isinstance(nested, tuple):
        return 1 + max(depth(nested[0]), depth(nested[1]))
    return 0


def check_node(node):
    """Structural invariants of a `Node`: ranges nest and split exactly."""
    assert 0 <= node.start < node.stop
    if node.is_leaf:
        assert node.right is None and node.stop == node.start + 1
        return 1
    assert (node.left.start, node.left.stop, node.right.start, node.right.stop) == (
        node.start, node.split, node.split, node.stop)
    return check_node(node.left) + check_node(node.right)


@pytest.mark.parametrize(
    "name, n_factors, expected",
    [
        ("balanced", 1, 0),
        ("balanced", 2, (0, 1)),
        ("balanced", 3, ((0, 1), 2)),
        ("balanced", 4, ((0, 1), (2, 3))),
        ("balanced", 5, (((0, 1), 2), (3, 4))),
        ("left-to-right", 1, 0),
        ("left-to-right", 4, (0, (1, (2, 3)))),
        ("right-to-left", 4, (((0, 1), 2), 3)),
        ("right-to-left", 2, (0, 1)),
    ],
)
def test_named_trees(name, n_factors, expected):
    assert build_tree(name, n_factors).to_nested() == expected


@pytest.mark.parametrize("name", NAMED_TREES)
@pytest.mark.parametrize("n_factors", range(1, 13))
def test_named_trees_are_valid(name, n_factors):
    root = build_tree(name, n_factors)
    assert (root.start, root.stop) == (0, n_factors)
    assert check_node(root) == n_factors
    nested = root.to_nested()
    assert leaves(nested) == list(range(n_factors))
    assert build_tree(nested, n_factors) == root
    expected_depth = {"balanced": int(np.ceil(np.log2(n_factors))),
                      "left-to-right": n_factors - 1, "right-to-left": n_factors - 1}[name]
    assert depth(nested) == expected_depth


@pytest.mark.parametrize("n_factors", [1, 2, 3, 7, 10])
def test_random_user_trees_round_trip(n_factors, rng):
    for _ in range(5):
        nested = random_tree(rng, 0, n_factors)
        root = build_tree(nested, n_factors)
        assert root.to_nested() == nested
        assert check_node(root) == n_factors


def test_lists_and_numpy_integers_are_accepted():
    root = build_tree([[np.int64(0), 1], [2, np.int32(3)]], 4)
    assert root.to_nested() == ((0, 1), (2, 3))
    assert all(type(leaf) is int for leaf in leaves(root.to_nested()))


@pytest.mark.parametrize(
    "tree, n_factors, error, match",
    [
        ("bogus", 4, ValueError, "unknown tree 'bogus'"),
        ("Balanced", 4, ValueError, "unknown tree 'Balanced'"),
        ((0, 1, 2), 3, ValueError, r"exactly 2 children, got \(0, 1, 2\)"),
        (((0,), 1), 2, ValueError, r"exactly 2 children, got \(0,\)"),
        ((), 1, ValueError, "exactly 2 children"),
        ((1, 0), 2, ValueError, r"\(1, 0\).*in order"),
        (((0, 2), (1, 3)), 4, ValueError, r"\(0, 2\)"),
        ((0, 0), 2, ValueError, r"\(0, 0\)"),  # repeated leaf
        ((0, 2), 3, ValueError, r"\(0, 2\)"),  # missing leaf
        ((0, 1), 3, ValueError, r"covers factors 0\.\.1, expected 0\.\.2"),  # too few
        (((0, 1), (2, 3)), 3, ValueError, r"covers factors 0\.\.3, expected 0\.\.2"),  # too many
        ((1, 2), 3, ValueError, r"covers factors 1\.\.2"),
        (0, 2, ValueError, r"covers factors 0\.\.0"),
        ((-1, 0), 2, ValueError, "leaf -1 is negative"),
        ((0, 1.0), 2, TypeError, r"1\.0.*float"),
        ((0, "1"), 2, TypeError, "'1'.*str"),
        ((0, True), 2, TypeError, "True.*bool"),
        ((0, None), 2, TypeError, "None"),
        ({0, 1}, 2, TypeError, "set"),
        (1.5, 1, TypeError, "1.5"),
    ],
)
def test_malformed_trees_are_rejected(tree, n_factors, error, match):
    with pytest.raises(error, match=match):
        build_tree(tree, n_factors)


def test_self_referencing_tree_is_rejected():
    tree = [0, None]
    tree[1] = tree
    with pytest.raises(ValueError, match="too deeply"):
        build_tree(tree, 2)


@pytest.mark.parametrize(
    "tree, error, match",
    [
        ("bogus", ValueError, "unknown tree 'bogus'"),
        ((0, (1, 2, 3)), ValueError, r"exactly 2 children, got \(1, 2, 3\)"),
        (((0, 1), 2), ValueError, r"expected 0\.\.3"),
        ((0, (1, (2, 2.5))), TypeError, "2.5"),
    ],
)
def test_factorize_rejects_malformed_trees(tree, error, match):
    with pytest.raises(error, match=match):
        fastbfly.factorize(np.eye(16), tree=tree)


@pytest.mark.parametrize("tree", [((0, 1), (2, 3)), (0, ((1, 2), 3)), [[0, [1, 2]], 3]])
def test_factorize_reports_the_user_tree(tree):
    B = fastbfly.factorize(np.eye(16), tree=tree)
    assert B.info["tree"] == build_tree(tree, 4).to_nested()
