"""Reliability (issue 6): bad input never reaches a kernel, numerical edge cases, any
memory layout, interrupted saves, memory limits and Ctrl-C.

Every bad input is one parametrized case, grouped by category in the ``BAD_*`` tables,
so that ``scripts/reliability_counts.py`` counts them by collecting the tests.  A case
passes when the entry point raises `ValueError` or `TypeError` (the type given in the
table) with a message naming the offending argument; the run completing at all shows
that none of them crashed the interpreter.  Cases marked ``xfail(strict=True)`` are
package bugs, reported with a minimal reproducer in the reason.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import scipy.sparse

import fastbfly
from fastbfly import Butterfly, Chain, Factor, Pattern, factorize, load, save
from fastbfly import factorization as factorization_module
from fastbfly import io as io_module

import naive
from conftest import DTYPES, NAMED_TREES, assert_close, dtype_id, random_array, random_factors, rtol

N = 8  # size of the square butterflies the bad inputs are tried on


def bug(reason: str):
    """Mark a case that fails because of a package bug (see the module docstring)."""
    return pytest.mark.xfail(strict=True, reason=f"package bug: {reason}")


class KnownBug(tuple):
    """A ``BAD_*`` table entry with the xfail mark of the package bug it runs into."""

    def __new__(cls, entry, mark):
        return super().__new__(cls, (entry, mark))


def known_bug(entry, reason: str) -> KnownBug:
    return KnownBug(entry, bug(reason))


def names(table):
    """Sorted case names of a ``BAD_*`` table as pytest params, with their bug marks."""
    return [pytest.param(name, id=name, marks=[table[name][1]] if isinstance(table[name], KnownBug) else [])
            for name in sorted(table)]


def entry(table, name):
    """The table entry ``name`` without its bug mark."""
    value = table[name]
    return value[0] if isinstance(value, KnownBug) else value


def zlib_seed(*parts) -> int:
    """A seed from the parts of a test case (each case its own reproducible stream)."""
    return zlib.crc32(repr(parts).encode())


# ============================================================================ layouts
LAYOUTS = ["C", "fortran", "strided", "reversed", "read-only", "memmap", "memmap-rw"]
# Layouts bad inputs are also tried in (Fortran order only for 2-D and more).
BAD_INPUT_LAYOUTS = ["C", "fortran", "strided", "read-only", "memmap"]


def bad_input_layouts(value) -> list:
    """The layouts a bad input is tried in: all of `BAD_INPUT_LAYOUTS` for non-empty
    arrays that can be memory-mapped, else only as given."""
    if not (isinstance(value, np.ndarray) and value.ndim >= 1 and value.size > 0
            and value.dtype != object):
        return ["as-is"]
    return [layout for layout in BAD_INPUT_LAYOUTS if layout != "fortran" or value.ndim >= 2]


def in_layout(array: np.ndarray, layout: str, directory) -> np.ndarray:
    """A new array equal to ``array`` in the memory layout ``layout``.

    ``memmap`` is a read-only ``np.load(..., mmap_mode="r")`` of a file in ``directory``;
    ``memmap-rw`` is opened ``"r+"``, so writing to it would change the file.
    """
    array = np.asarray(array)
    if layout == "C":
        return np.array(array, order="C")
    if layout == "fortran":
        return np.array(array, order="F")
    if layout == "strided":  # every other element of a twice larger array
        big = np.zeros(tuple(2 * s for s in array.shape), dtype=array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "reversed":  # negative strides
        flipped = np.array(array[(slice(None, None, -1),) * array.ndim])
        return flipped[(slice(None, None, -1),) * array.ndim]
    if layout == "read-only":
        copy = np.array(array)
        copy.setflags(write=False)
        return copy
    if layout in ("memmap", "memmap-rw"):
        path = os.path.join(str(directory), f"{layout}-{id(array)}-{time.monotonic_ns()}.npy")
        np.save(path, array)
        return np.load(path, mmap_mode="r" if layout == "memmap" else "r+")
    raise AssertionError(layout)


def snapshot(array):
    """Everything about a caller's array that fastbfly must not change."""
    array = np.asarray(array)
    return (array.tobytes(), array.dtype, array.shape, array.strides, array.flags.writeable,
            array.flags.c_contiguous, array.flags.f_contiguous)


# ============================================================================ 1. malformed input
# -- patterns: Pattern.of, Chain([pattern]) and Factor(pattern, values) -------------------
BAD_PATTERNS = {
    "three-entries": ((1, 2, 2), ValueError),
    "five-entries": ((1, 2, 2, 1, 1), ValueError),
    "empty": ((), ValueError),
    "zero": ((1, 0, 2, 1), ValueError),
    "negative": ((1, -2, 2, 1), ValueError),
    "all-negative": ((-1, -2, -2, -1), ValueError),
    "float": ((1, 2.0, 2, 1), TypeError),
    "numpy-float": (np.array([1.0, 2.0, 2.0, 1.0]), TypeError),
    "complex": ((1, 2j, 2, 1), TypeError),
    "bool": ((True, 2, 2, 1), TypeError),
    "numpy-bool": (np.ones(4, dtype=bool), TypeError),
    "none-entry": ((1, None, 2, 1), TypeError),
    "string-entry": ((1, "2", 2, 1), TypeError),
    "nested": (((1, 2), (2, 1)), ValueError),
    "nested-four": (((1,), (2,), (2,), (1,)), TypeError),
    "none": (None, TypeError),
    "int": (4, TypeError),
    "string": ("abcd", TypeError),
}


@pytest.mark.parametrize("name", sorted(BAD_PATTERNS))
def test_bad_pattern_is_rejected(name):
    pattern, error = BAD_PATTERNS[name]
    with pytest.raises(error, match="pattern"):
        Pattern.of(pattern)
    with pytest.raises(error, match="pattern"):
        Chain([pattern])
    with pytest.raises(error, match="pattern"):
        Factor(pattern, np.ones((1, 2, 2, 1)))


# -- factor values: Factor(pattern, values), then Butterfly([factor]) ----------------------
def _ragged():
    return [[[[1.0], [2.0]], [[3.0]]]]


BAD_FACTOR_VALUES = {
    # name: (pattern, values, error)
    "too-few-dims": ((1, 2, 2, 1), np.ones((1, 2, 2)), ValueError),
    "too-many-dims": ((1, 2, 2, 1), np.ones((1, 2, 2, 1, 1)), ValueError),
    "flat": ((1, 2, 2, 1), np.ones(4), ValueError),
    "b-c-swapped": ((1, 2, 3, 1), np.ones((1, 3, 2, 1)), ValueError),
    "one-too-many": ((2, 2, 2, 2), np.ones((2, 2, 2, 3)), ValueError),
    "empty": ((1, 2, 2, 1), np.ones((1, 0, 2, 1)), ValueError),
    "scalar": ((1, 1, 1, 1), np.float64(1.0), ValueError),
    "huge-pattern": ((2**40, 2**20, 1, 1), np.ones((1, 1, 1, 1)), ValueError),
    "ragged-list": ((1, 2, 2, 1), _ragged, ValueError),
    "int64": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.int64), TypeError),
    "uint8": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.uint8), TypeError),
    "bool": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=bool), TypeError),
    "float16": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.float16), TypeError),
    "longdouble": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.longdouble), TypeError),
    "clongdouble": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=np.clongdouble), TypeError),
    "big-endian-float64": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=">f8"), TypeError),
    "big-endian-complex128": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=">c16"), TypeError),
    "object": ((1, 2, 2, 1), np.ones((1, 2, 2, 1), dtype=object), TypeError),
    "string": ((1, 2, 2, 1), np.full((1, 2, 2, 1), "a"), TypeError),
    "datetime": ((1, 2, 2, 1), np.zeros((1, 2, 2, 1), dtype="datetime64[s]"), TypeError),
    "structured": ((1, 2, 2, 1), np.zeros((1, 2, 2, 1), dtype=[("x", "f8")]), TypeError),
    "none": ((1, 2, 2, 1), None, TypeError),
}
# NaN and Inf factor values: issue 6 asks every entry point to validate finiteness.
NON_FINITE_FACTOR_VALUES = {
    "nan": np.nan,
    "inf": np.inf,
    "complex-nan": complex(0.0, np.nan),
}


@pytest.mark.parametrize("name", sorted(BAD_FACTOR_VALUES))
def test_bad_factor_values_are_rejected(name):
    pattern, values, error = BAD_FACTOR_VALUES[name]
    values = values() if callable(values) else values
    with pytest.raises(error, match="values|sequence|shape"):
        Factor(pattern, values)


@pytest.mark.parametrize("name", sorted(NON_FINITE_FACTOR_VALUES))
def test_non_finite_factor_values_are_rejected(name):
    """By `Factor`, and by `Butterfly` when the values change after the `Factor` was
    made (a Factor keeps the caller's array); both name the factor and the index."""
    value = NON_FINITE_FACTOR_VALUES[name]
    values = np.ones((1, 2, 2, 1), dtype=np.complex128 if isinstance(value, complex) else np.float64)
    values[0, 1, 0, 0] = value
    with pytest.raises(ValueError, match=r"pattern \(1, 2, 2, 1\) contain NaN or Inf \(first at index \(0, 1, 0, 0\)\)"):
        Factor((1, 2, 2, 1), values)
    values[0, 1, 0, 0] = 1
    factors = [Factor((1, 2, 2, 2), np.ones((1, 2, 2, 2), values.dtype)), Factor((2, 2, 2, 1), np.ones((2, 2, 2, 1), values.dtype))]
    factors[1].values[1, 0, 1, 0] = value
    with pytest.raises(ValueError, match=r"factor 1 \(pattern \(2, 2, 2, 1\)\) has NaN or Inf values \(first at index \(1, 0, 1, 0\)\)"):
        Butterfly(factors)


# -- chains: Chain(patterns) ---------------------------------------------------------------
BAD_CHAINS = {
    "empty": ([], ValueError),
    "inner-sizes-differ": ([(1, 2, 2, 1), (1, 2, 2, 2)], ValueError),
    "rank-not-integer": ([(1, 2, 2, 4), (4, 2, 2, 1)], ValueError),
    "orders-mixed": ([(1, 2, 2, 4), (4, 2, 2, 1), (2, 2, 2, 2)], ValueError),
    "a-does-not-divide": ([(2, 3, 2, 1), (3, 2, 3, 1)], ValueError),
    "d-does-not-divide": ([(1, 2, 3, 2), (2, 3, 2, 1), (1, 2, 2, 3)], ValueError),
    "bad-pattern-inside": ([(1, 2, 2, 4), (2, 2, 0, 2), (4, 2, 2, 1)], ValueError),
    "none-inside": ([(1, 2, 2, 4), None], TypeError),
    "string": ("abcd", TypeError),
    "bytes": (b"abcd", TypeError),
    "none": (None, TypeError),
    "int": (3, TypeError),
}


@pytest.mark.parametrize("name", sorted(BAD_CHAINS))
def test_bad_chain_is_rejected(name):
    patterns, error = BAD_CHAINS[name]
    with pytest.raises(error):
        Chain(patterns)


# -- factor lists: Butterfly(factors) -------------------------------------------------------
def _factors(patterns, dtype=np.float64):
    return [Factor(p, np.ones(tuple(p), dtype=dtype)) for p in patterns]


BAD_FACTOR_LISTS = {
    "empty": (lambda: [], ValueError, "at least one"),
    "none": (lambda: None, TypeError, "NoneType"),
    "int": (lambda: 3, TypeError, "int"),
    "arrays": (lambda: [np.ones((1, 2, 2, 1))], TypeError, "Factor objects"),
    "patterns": (lambda: [(1, 2, 2, 1)], TypeError, "Factor objects"),
    "one-none": (lambda: _factors([(1, 2, 2, 2)]) + [None], TypeError, "Factor objects"),
    "dtypes-mixed": (lambda: _factors([(1, 2, 2, 2)]) + _factors([(2, 2, 2, 1)], np.float32),
                     TypeError, "one dtype"),
    "real-and-complex": (lambda: _factors([(1, 2, 2, 2)]) + _factors([(2, 2, 2, 1)], np.complex64),
                         TypeError, "one dtype"),
    "inner-sizes-differ": (lambda: _factors([(1, 2, 2, 1), (1, 2, 2, 2)]), ValueError, "chain"),
    "rank-not-integer": (lambda: _factors([(1, 2, 2, 4), (4, 2, 2, 1)]), ValueError, "chainable"),
    "orders-mixed": (lambda: _factors([(1, 2, 2, 4), (4, 2, 2, 1), (2, 2, 2, 2)]), ValueError, "chainable"),
}


@pytest.mark.parametrize("name", sorted(BAD_FACTOR_LISTS))
def test_bad_factor_list_is_rejected(name):
    make, error, match = BAD_FACTOR_LISTS[name]
    with pytest.raises(error, match=match):
        Butterfly(make())


# -- permutations: Butterfly(perm=, row_perm=) and factorize(perm=, row_perm=) -----------
BAD_PERMUTATIONS = {
    # name: (value for n = 8, error); arrays are also tried in every layout
    "short": (np.arange(N - 1), ValueError),
    "long": (np.arange(N + 1), ValueError),
    "empty-int": (np.zeros(0, dtype=np.int64), ValueError),
    "2-D": (np.arange(N).reshape(2, N // 2), ValueError),
    "0-D": (np.int64(3), ValueError),
    "all-equal": (np.zeros(N, dtype=np.int64), ValueError),
    "one-duplicate": (np.array([0, 1, 2, 3, 4, 5, 6, 6]), ValueError),
    "negative": (np.array([-1, 1, 2, 3, 4, 5, 6, 7]), ValueError),
    "python-style-negative": (np.array([0, 1, 2, 3, 4, 5, 6, -1]), ValueError),
    "out-of-range": (np.array([0, 1, 2, 3, 4, 5, 6, 8]), ValueError),
    "shifted": (np.arange(1, N + 1), ValueError),
    "huge": (np.array([0, 1, 2, 3, 4, 5, 6, 2**62]), ValueError),
    "int64-min": (np.array([0, 1, 2, 3, 4, 5, 6, np.iinfo(np.int64).min]), ValueError),
    "uint64-max": (np.array([0, 1, 2, 3, 4, 5, 6, 2**64 - 1], dtype=np.uint64), ValueError),
    "int8": (np.array([0, 1, 2, 3, 4, 5, 6, -128], dtype=np.int8), ValueError),
    "float": (np.arange(N, dtype=np.float64), TypeError),
    "float-nan": (np.array([0, 1, 2, 3, 4, 5, 6, np.nan]), TypeError),
    "complex": (np.arange(N) + 0j, TypeError),
    "bool": (np.ones(N, dtype=bool), TypeError),
    "object-ints": (np.array(list(range(N)), dtype=object), TypeError),
    "python-big-ints": ([2**70] * N, TypeError),
    "empty-list": ([], TypeError),
}
PERMUTATION_TARGETS = {
    "Butterfly-perm": lambda p: Butterfly(_factors(Chain.square_dyadic(N)), perm=p),
    "Butterfly-row_perm": lambda p: Butterfly(_factors(Chain.square_dyadic(N)), row_perm=p),
    "factorize-perm": lambda p: factorize(np.eye(N), perm=p),
    "factorize-row_perm": lambda p: factorize(np.eye(N), row_perm=p),
    "factorize-candidates": lambda p: factorize(np.eye(N), perm=[None, p]),
}


def _permutation_cases():
    for name, (value, error) in sorted(BAD_PERMUTATIONS.items()):
        for layout in bad_input_layouts(value):
            for target in sorted(PERMUTATION_TARGETS):
                if target == "factorize-candidates" and np.ndim(value) != 1:
                    continue  # 0-D and 2-D items of a candidate list have their own message
                yield pytest.param(name, layout, target, id=f"{name}-{layout}-{target}")


@pytest.mark.parametrize("name, layout, target", list(_permutation_cases()))
def test_bad_permutation_is_rejected(name, layout, target, tmp_path):
    value, error = BAD_PERMUTATIONS[name]
    if layout != "as-is":
        value = in_layout(value, layout, tmp_path)
    with pytest.raises(error, match="perm"):
        PERMUTATION_TARGETS[target](value)


# -- Butterfly(shape=) ---------------------------------------------------------------------
BAD_SHAPES = {
    "zero-rows": ((0, N), ValueError),
    "zero-columns": ((N, 0), ValueError),
    "negative": ((-1, N), ValueError),
    "too-many-rows": ((N + 1, N), ValueError),
    "too-many-columns": ((N, N + 1), ValueError),
    "one-entry": ((N,), ValueError),
    "three-entries": ((N, N, 1), ValueError),
    "int": (N, TypeError),
    "none-entry": ((None, N), TypeError),
    "string": ("ab", TypeError),
    "bool-entry": ((True, N), TypeError),
    "nan": ((float("nan"), N), ValueError),
    "inf": ((float("inf"), N), ValueError),
    "minus-inf": ((N, float("-inf")), ValueError),
    "fractional": ((2.5, N), ValueError),
    "numpy-fractional": ((N, np.float32(7.5)), ValueError),
}


@pytest.mark.parametrize("name", names(BAD_SHAPES))
def test_bad_shape_is_rejected(name):
    shape, error = entry(BAD_SHAPES, name)
    with pytest.raises(error):
        Butterfly(_factors(Chain.square_dyadic(N)), shape=shape)


# -- operands: B @ x, B.H @ x, x @ B, matvec/rmatvec/matmat/rmatmat, the LinearOperator ----
BAD_OPERANDS = {
    # name: (x for an 8 x 8 butterfly, error); arrays are also tried in every layout
    "short": (np.ones(N - 1), ValueError),
    "long": (np.ones(N + 1), ValueError),
    "empty": (np.ones(0), ValueError),
    "short-block": (np.ones((N - 1, 3)), ValueError),
    "long-block": (np.ones((N + 1, 3)), ValueError),
    "3-D": (np.ones((N, 2, 2)), ValueError),
    "4-D": (np.ones((N, 1, 1, 1)), ValueError),
    "0-D": (np.float64(1.0), ValueError),
    "ragged-list": ([[1.0]] * (N - 1) + [[1.0, 2.0]], ValueError),
    "object": (np.array([None] * N, dtype=object), TypeError),
    "object-numbers": (np.ones(N, dtype=object), TypeError),
    "string": (np.array(["1"] * N), TypeError),
    "bytes": (np.array([b"1"] * N), TypeError),
    "datetime": (np.zeros(N, dtype="datetime64[s]"), TypeError),
    "timedelta": (np.zeros(N, dtype="timedelta64[s]"), TypeError),
    "structured": (np.zeros(N, dtype=[("x", "f8")]), TypeError),
    "void": (np.zeros(N, dtype="V8"), TypeError),
    "none": (None, TypeError),
}
if np.dtype(np.longdouble) != np.dtype(np.float64):
    BAD_OPERANDS["longdouble"] = (np.ones(N, dtype=np.longdouble), TypeError)
    BAD_OPERANDS["clongdouble"] = (np.ones(N, dtype=np.clongdouble), TypeError)

OPERATIONS = {
    "B@x": lambda B, x: B @ x,
    "B.H@x": lambda B, x: B.H @ x,
    "x@B": lambda B, x: np.asarray(x).T @ B if np.ndim(x) == 2 else x @ B,
    "matvec": lambda B, x: B.matvec(x),
    "rmatvec": lambda B, x: B.rmatvec(x),
    "matmat": lambda B, x: B.matmat(x),
    "rmatmat": lambda B, x: B.rmatmat(x),
    "operator": lambda B, x: B.aslinearoperator() @ x,
}
# Shapes that are fine for B @ x but not for a method with a fixed operand kind.
BAD_OPERANDS_PER_METHOD = {
    "matvec-block": ("matvec", np.ones((N, 2))),
    "rmatvec-block": ("rmatvec", np.ones((N, 2))),
    "matmat-vector": ("matmat", np.ones(N)),
    "rmatmat-vector": ("rmatmat", np.ones(N)),
}


@pytest.fixture(scope="module")
def butterfly8():
    rng = np.random.default_rng(8)
    return Butterfly(random_factors(rng, Chain.square_dyadic(N), np.float64),
                     perm=rng.permutation(N), row_perm=rng.permutation(N))


def _operand_cases():
    for name, (value, error) in sorted(BAD_OPERANDS.items()):
        for layout in bad_input_layouts(value):
            for operation in sorted(OPERATIONS):
                yield pytest.param(name, layout, operation, id=f"{name}-{layout}-{operation}")


@pytest.mark.parametrize("name, layout, operation", list(_operand_cases()))
def test_bad_operand_is_rejected(name, layout, operation, butterfly8, tmp_path):
    x, error = BAD_OPERANDS[name]
    if layout != "as-is":
        x = in_layout(x, layout, tmp_path)
    # B @ x and B.H @ x give the table's error; the methods with a fixed operand kind
    # check the number of dimensions first, scipy's LinearOperator has its own checks
    with pytest.raises(error if operation in ("B@x", "B.H@x") else (ValueError, TypeError)):
        OPERATIONS[operation](butterfly8, x)


@pytest.mark.parametrize("name", sorted(BAD_OPERANDS_PER_METHOD))
def test_bad_operand_kind_is_rejected(name, butterfly8):
    method, x = BAD_OPERANDS_PER_METHOD[name]
    with pytest.raises(ValueError, match=f"{method} expects"):
        getattr(butterfly8, method)(x)


# -- matrices given to factorize -----------------------------------------------------------
def _with(shape, index, value, dtype=np.float64):
    matrix = np.ones(shape, dtype=dtype)
    matrix[index] = value
    return matrix


BAD_MATRICES = {
    # name: (matrix, error); numeric arrays are also tried in every layout
    "nan": (_with((N, N), (3, 5), np.nan), ValueError),
    "inf": (_with((N, N), (0, 0), np.inf), ValueError),
    "-inf": (_with((N, N), (N - 1, N - 1), -np.inf), ValueError),
    "nan-float32": (_with((N, N), (2, 2), np.nan, np.float32), ValueError),
    "inf-complex64-imag": (_with((N, N), (1, 6), complex(0, np.inf), np.complex64), ValueError),
    "nan-complex128-real": (_with((N, N), (6, 1), complex(np.nan, 0), np.complex128), ValueError),
    "nan-1x1": (np.full((1, 1), np.nan), ValueError),
    "nan-2x2": (_with((2, 2), (1, 0), np.nan), ValueError),
    "nan-padded": (_with((11, 11), (10, 10), np.nan), ValueError),  # pad=True, 2 factors
    "nan-rectangular": (_with((4, 16), (3, 15), np.nan), ValueError),
    "1-D": (np.ones(N), ValueError),
    "3-D": (np.ones((2, N, N)), ValueError),
    "0-D": (np.float64(1.0), ValueError),
    "empty": (np.ones((0, 0)), ValueError),
    "no-rows": (np.ones((0, N)), ValueError),
    "no-columns": (np.ones((N, 0)), ValueError),
    "ragged": ([[1.0, 2.0], [3.0]], ValueError),
    "object": (np.ones((N, N), dtype=object), TypeError),
    "string": (np.full((N, N), "1"), TypeError),
    "bytes": (np.full((N, N), b"1"), TypeError),
    "datetime": (np.zeros((N, N), dtype="datetime64[s]"), TypeError),
    "timedelta": (np.zeros((N, N), dtype="timedelta64[s]"), TypeError),
    "structured": (np.zeros((N, N), dtype=[("x", "f8")]), TypeError),
    "python-big-ints": ([[2**70] * 2] * 2, TypeError),
    "none": (None, TypeError),
    "sparse": (scipy.sparse.eye(N, format="csr"), TypeError),
}
if np.dtype(np.longdouble) != np.dtype(np.float64):
    BAD_MATRICES["longdouble"] = (np.ones((N, N), dtype=np.longdouble), TypeError)
    BAD_MATRICES["clongdouble"] = (np.ones((N, N), dtype=np.clongdouble), TypeError)


def _matrix_cases():
    for name, (value, error) in sorted(BAD_MATRICES.items()):
        for layout in bad_input_layouts(value):
            yield pytest.param(name, layout, id=f"{name}-{layout}")


@pytest.mark.parametrize("name, layout", list(_matrix_cases()))
def test_bad_matrix_is_rejected(name, layout, tmp_path):
    matrix, error = BAD_MATRICES[name]
    if layout != "as-is":
        matrix = in_layout(matrix, layout, tmp_path)
        before = snapshot(matrix)
    with pytest.raises(error, match="matrix|dense|sequence|inhomogeneous"):
        padded = {"pad": True, "n_factors": 2} if name == "nan-padded" else {}
        factorize(matrix, memory_limit=None, **padded)
    if layout != "as-is":
        assert snapshot(matrix) == before


# -- other factorize arguments -------------------------------------------------------------
BAD_FACTORIZE_ARGUMENTS = {
    "chain-wrong-shape": ({"chain": Chain.square_dyadic(4)}, ValueError, "does not match"),
    "chain-reversed": ({"chain": [(4, 2, 2, 1), (2, 2, 2, 2), (1, 2, 2, 4)]}, ValueError, "transpose"),
    "chain-unchainable": ({"chain": [(1, 2, 2, 4), (4, 2, 2, 1), (2, 2, 2, 2)]}, ValueError, "chainable"),
    "chain-garbage": ({"chain": "abcd"}, TypeError, "patterns"),
    "chain-and-n_factors": ({"chain": Chain.square_dyadic(N), "n_factors": 3}, ValueError, "either"),
    "chain-and-rank": ({"chain": Chain.square_dyadic(N), "rank": 2}, ValueError, "either"),
    "n_factors-zero": ({"n_factors": 0}, ValueError, "n_factors"),
    "n_factors-negative": ({"n_factors": -3}, ValueError, "n_factors"),
    "n_factors-float": ({"n_factors": 1.5}, TypeError, "n_factors"),
    "n_factors-too-many": ({"n_factors": 7}, ValueError, "factors"),
    "rank-zero": ({"rank": 0}, ValueError, "rank"),
    "rank-bool": ({"rank": True, "n_factors": 2}, TypeError, "rank"),
    "rank-float": ({"rank": 2.0}, TypeError, "rank"),
    "rank-too-big": ({"rank": 8, "n_factors": 2}, ValueError, "rank"),
    "tree-unknown": ({"tree": "bogus"}, ValueError, "unknown tree"),
    "tree-ternary": ({"tree": (0, 1, 2)}, ValueError, "2 children"),
    "tree-unordered": ({"tree": ((1, 0), 2)}, ValueError, "order"),
    "tree-repeated": ({"tree": ((0, 0), 2)}, ValueError, "tree"),
    "tree-missing": ({"tree": (0, 1)}, ValueError, "expected 0..2"),
    "tree-negative": ({"tree": ((-1, 0), 1)}, ValueError, "negative"),
    "tree-float-leaf": ({"tree": ((0, 1.0), 2)}, TypeError, "tree"),
    "tree-none": ({"tree": None}, TypeError, "tree"),
    "tree-self-referencing": ({"tree": "self"}, ValueError, "deeply"),
    "perm-name": ({"perm": "bogus"}, ValueError, "unknown perm"),
    "row_perm-name": ({"row_perm": "bogus"}, ValueError, "unknown row_perm"),
    "perm-bitrev-not-power-of-two": ({"perm": "bitrev", "_shape": (12, 12)}, ValueError, "power-of-two"),
    "perm-dao8-not-power-of-two": ({"perm": "dao8", "_shape": (12, 12)}, ValueError, "power-of-two"),
    "perm-candidate-2-D": ({"perm": [None, np.zeros((2, 2), dtype=int)]}, ValueError, "candidates"),
    "perm-candidate-scalar": ({"perm": [None, 3]}, ValueError, "candidates"),
    "memory_limit-string": ({"memory_limit": "1GB"}, ValueError, "memory_limit"),
    "memory_limit-float": ({"memory_limit": 1e9}, TypeError, "memory_limit"),
    "memory_limit-bool": ({"memory_limit": True}, TypeError, "memory_limit"),
    "memory_limit-list": ({"memory_limit": [1]}, TypeError, "memory_limit"),
    "no-chain-prime-size": ({"_shape": (7, 7), "n_factors": 2}, ValueError, "chain"),
}


@pytest.mark.parametrize("name", sorted(BAD_FACTORIZE_ARGUMENTS))
def test_bad_factorize_argument_is_rejected(name):
    kwargs, error, match = BAD_FACTORIZE_ARGUMENTS[name]
    kwargs = dict(kwargs)
    shape = kwargs.pop("_shape", (N, N))
    if kwargs.get("tree") == "self":
        loop = [0, 1]
        loop[1] = loop
        kwargs["tree"] = loop
    matrix = np.ones(shape)
    with pytest.raises(error, match=match):
        factorize(matrix, **kwargs)
    np.testing.assert_array_equal(matrix, np.ones(shape))


# -- load ----------------------------------------------------------------------------------
def _good_butterfly():
    rng = np.random.default_rng(1)
    return Butterfly(random_factors(rng, Chain.square_dyadic(N), np.float64),
                     perm=rng.permutation(N), row_perm=rng.permutation(N))


def _good_arrays():
    """The arrays `save` writes for `_good_butterfly` (loads as it)."""
    B = _good_butterfly()
    return {"format": np.array("fastbfly.butterfly"), "version": np.array(1, dtype=np.int64),
            "patterns": B._patterns.copy(), "values": B._values.copy(), "perm": B.perm.copy(),
            "row_perm": B.row_perm.copy()}


def _values_with(value, dtype=np.float64):
    def change(arrays):
        values = arrays["values"].astype(dtype)
        values[5] = value
        return {**arrays, "values": values}
    return change


BAD_FILE_CONTENTS = {
    # name: (function of the good arrays -> arrays to write, writer options)
    "values-object-pickled": (lambda g: {**g, "values": g["values"].astype(object)}, True),
    "perm-object-pickled": (lambda g: {**g, "perm": g["perm"].astype(object)}, True),
    "extra-member-pickled": (lambda g: {**g, "evil": np.array([print], dtype=object)}, True),
    "values-big-endian": (lambda g: {**g, "values": g["values"].astype(">f8")}, False),
    "values-float16": (lambda g: {**g, "values": g["values"].astype(np.float16)}, False),
    "values-bool": (lambda g: {**g, "values": g["values"] > 0}, False),
    "values-0-D": (lambda g: {**g, "values": np.array(1.0)}, False),
    "values-empty": (lambda g: {**g, "values": np.zeros(0)}, False),
    "patterns-uint64-huge": (lambda g: {**g, "patterns": np.full((3, 4), 2**63 + 5, dtype=np.uint64)}, False),
    "patterns-product-overflows-int64": (lambda g: {**g, "patterns": np.array([[2**31, 2**31, 2**31, 2**31]])}, False),
    "patterns-3-columns": (lambda g: {**g, "patterns": g["patterns"][:, :3]}, False),
    "patterns-3-D": (lambda g: {**g, "patterns": g["patterns"][None]}, False),
    "patterns-bool": (lambda g: {**g, "patterns": g["patterns"] > 0}, False),
    "patterns-object": (lambda g: {**g, "patterns": g["patterns"].astype(object)}, True),
    "format-bytes": (lambda g: {**g, "format": np.array(b"fastbfly.butterfly")}, False),
    "format-int": (lambda g: {**g, "format": np.array(1)}, False),
    "version-uint64-max": (lambda g: {**g, "version": np.array(2**64 - 1, dtype=np.uint64)}, False),
    "version-bool": (lambda g: {**g, "version": np.array(True)}, False),
    "version-string": (lambda g: {**g, "version": np.array("1")}, False),
    "perm-negative": (lambda g: {**g, "perm": g["perm"] - 1}, False),
    "perm-uint64-huge": (lambda g: {**g, "perm": g["perm"].astype(np.uint64) + np.uint64(2**63)}, False),
    "perm-2-D": (lambda g: {**g, "perm": g["perm"].reshape(2, -1)}, False),
    "perm-bool": (lambda g: {**g, "perm": g["perm"] > 3}, False),
    "row_perm-duplicates": (lambda g: {**g, "row_perm": np.zeros(N, dtype=np.int64)}, False),
    "row_perm-float": (lambda g: {**g, "row_perm": g["row_perm"].astype(float)}, False),
    "shape-negative": (lambda g: {**g, "shape": np.array([-1, N])}, False),
    "shape-zero": (lambda g: {**g, "shape": np.array([0, N])}, False),
    "shape-float": (lambda g: {**g, "shape": np.array([4.0, 4.0])}, False),
    "shape-2-D": (lambda g: {**g, "shape": np.array([[4, 4]])}, False),
    "values-nan": (_values_with(np.nan), False),
    "values-inf": (_values_with(-np.inf), False),
    "values-complex-nan": (_values_with(complex(1, np.nan), np.complex128), False),
}


@pytest.mark.parametrize("name", names(BAD_FILE_CONTENTS))
def test_bad_file_is_rejected(name, tmp_path):
    make, pickled = entry(BAD_FILE_CONTENTS, name)
    path = tmp_path / f"{name}.npz"
    with open(path, "wb") as file:
        np.savez(file, allow_pickle=pickled, **make(_good_arrays()))
    with pytest.raises(ValueError, match=f"{name}.npz"):
        load(path)


BAD_LOAD_PATHS = {
    "int": (3, (ValueError, TypeError)),
    "none": (None, (ValueError, TypeError)),
    "list": ([1], (ValueError, TypeError)),
    "missing": ("missing.npz", FileNotFoundError),
    "directory": (".", IsADirectoryError),
}


@pytest.mark.parametrize("name", sorted(BAD_LOAD_PATHS))
def test_bad_load_path_gives_a_clean_error(name, tmp_path):
    """Filesystem problems stay `OSError` subclasses; non-paths are refused."""
    path, error = BAD_LOAD_PATHS[name]
    if isinstance(path, str):
        path = tmp_path / path
    with pytest.raises(error):
        load(path)


@pytest.mark.parametrize("layout", ["fortran-patterns", "read-only-file", "no-suffix", "compressed",
                                    "big-endian-perm", "int32-patterns"])
def test_valid_variants_of_files_load(layout, tmp_path):
    """Files that are unusual but valid load to the same butterfly."""
    arrays = _good_arrays()
    reference = _good_butterfly()
    path = tmp_path / ("plain" if layout == "no-suffix" else "file.npz")
    if layout == "fortran-patterns":
        arrays["patterns"] = np.asfortranarray(arrays["patterns"])
    if layout == "big-endian-perm":
        arrays["perm"] = arrays["perm"].astype(">i8")
    if layout == "int32-patterns":
        arrays["patterns"] = arrays["patterns"].astype(np.int32)
    with open(path, "wb") as file:
        (np.savez_compressed if layout == "compressed" else np.savez)(file, **arrays)
    if layout == "read-only-file":
        os.chmod(path, 0o444)
    loaded = load(path)
    np.testing.assert_array_equal(loaded.toarray(), reference.toarray())
    np.testing.assert_array_equal(loaded @ np.arange(N, dtype=float), reference @ np.arange(N, dtype=float))


# ============================================================================ 3. layouts
# Valid input in any layout gives bitwise the same result as C-ordered input and leaves
# the caller's array (bytes, dtype, strides, flags) exactly as it was.

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_factorize_accepts_any_layout_and_leaves_input_intact(dtype, layout, tmp_path):
    rng = np.random.default_rng(zlib_seed("factorize", dtype, layout))
    matrix = random_array(rng, (32, 32), dtype)
    expected = factorize(matrix, perm="bitrev")
    given = in_layout(matrix, layout, tmp_path)
    before = snapshot(given)
    B = factorize(given, perm="bitrev")
    assert snapshot(given) == before
    for mine, theirs in zip(B.factors, expected.factors):
        assert mine.values.tobytes() == theirs.values.tobytes()
    if layout.startswith("memmap"):
        # memory maps are streamed (fastbfly.sources): the same factors, but the error
        # is summed in another order
        assert B.info["relative_error"] == pytest.approx(expected.info["relative_error"], rel=rtol(dtype))
    else:
        assert B.info["relative_error"] == expected.info["relative_error"]
    if layout == "memmap-rw":  # the file itself is untouched
        assert np.load(given.filename).tobytes() == matrix.tobytes()
    # the result owns its values
    assert not any(np.shares_memory(f.values, given) for f in B.factors)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_butterfly_accepts_any_layout_and_leaves_input_intact(dtype, layout, tmp_path):
    rng = np.random.default_rng(zlib_seed("butterfly", dtype, layout))
    factors = random_factors(rng, Chain.square_dyadic(16), dtype)
    perm, row_perm = rng.permutation(16), rng.permutation(16)
    expected = Butterfly(factors, perm=perm, row_perm=row_perm)
    given_values = [in_layout(f.values, layout, tmp_path) for f in factors]
    given_perm = in_layout(perm, layout, tmp_path)
    given_row_perm = in_layout(row_perm, layout, tmp_path)
    before = [snapshot(a) for a in given_values + [given_perm, given_row_perm]]
    B = Butterfly([Factor(f.pattern, v) for f, v in zip(factors, given_values)],
                  perm=given_perm, row_perm=given_row_perm)
    assert [snapshot(a) for a in given_values + [given_perm, given_row_perm]] == before
    assert B.toarray().tobytes() == expected.toarray().tobytes()
    assert_close(B.toarray(), naive.butterfly_dense(expected), dtype)
    # later changes to the caller's arrays do not reach B
    if layout not in ("read-only", "memmap"):
        given_values[0][...] = 0
        given_perm[...] = 0
        assert B.toarray().tobytes() == expected.toarray().tobytes()


def test_butterfly_factor_values_are_read_only():
    """A Butterfly is immutable: products may use a cached cast of its values (here
    float32 factors, float64 and complex operands), which an in-place edit of
    ``B.factors[k].values`` would leave stale, so the views refuse writes.  Changed
    values go into a new Butterfly, whose products of every dtype see them."""
    rng = np.random.default_rng(9)
    B = Butterfly(random_factors(rng, Chain.square_dyadic(8), np.float32))
    x = np.ones(8)
    before = {dtype: (B @ x.astype(dtype)).tobytes() for dtype in (np.float32, np.float64, np.complex128)}
    for f in B.factors:
        assert not f.values.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            f.values[...] = 0
        with pytest.raises(ValueError, match="read-only"):
            f.values.flat[0] = 0
    assert {dtype: (B @ x.astype(dtype)).tobytes() for dtype in before} == before
    changed = [Factor(f.pattern, f.values * 0) if k == 0 else f for k, f in enumerate(B.factors)]
    C = Butterfly(changed, perm=B.perm, row_perm=B.row_perm)
    for dtype in before:
        assert np.all(C @ x.astype(dtype) == 0)
        assert (B @ x.astype(dtype)).tobytes() == before[dtype]  # B unchanged


OPERAND_SHAPES = {"vector": (16,), "block": (16, 5), "column": (16, 1)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("operand", sorted(OPERAND_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_products_accept_any_layout_and_leave_input_intact(dtype, operand, layout, tmp_path):
    rng = np.random.default_rng(zlib_seed("products", dtype, operand, layout))
    B = Butterfly(random_factors(rng, Chain.square_dyadic(16), dtype),
                  perm=rng.permutation(16), row_perm=rng.permutation(16))
    x = random_array(rng, OPERAND_SHAPES[operand], dtype)
    given = in_layout(x, layout, tmp_path)
    before = snapshot(given)
    products = {
        "B@x": lambda v: B @ v,
        "B.H@x": lambda v: B.H @ v,
        "B.T@x": lambda v: B.T @ v,
        "x@B": lambda v: v @ B if v.ndim == 1 else v.T @ B,
        "operator": lambda v: B.aslinearoperator().matmat(v if v.ndim == 2 else v[:, None]),
    }
    for name, product in products.items():
        result = product(given)
        assert snapshot(given) == before, name
        assert result.tobytes() == product(x).tobytes(), name
        assert result.flags.writeable and not np.shares_memory(result, given), name
    assert_close(B @ given, naive.butterfly_dense(B) @ x, dtype)
    if layout == "memmap-rw":
        assert np.load(given.filename).tobytes() == x.tobytes()


# ============================================================================ 3. numerical edge cases
SIZES = [1, 2, 4, 16, 64]


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_zero_matrix_gives_exact_zeros(dtype, n, tree):
    B = factorize(np.zeros((n, n), dtype=dtype), tree=tree)
    assert B.dtype == dtype
    for f in B.factors:
        assert np.all(np.isfinite(f.values))
    assert B.info["relative_error"] == 0.0
    dense = B.toarray()
    assert not np.any(np.isnan(dense)) and np.all(dense == 0)
    x = np.ones((n, 3), dtype=dtype)
    assert np.all((B @ x) == 0) and np.all((B.H @ x) == 0) and np.all((x.T @ B) == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_zero_matrix_on_rank_r_and_rectangular_chains(dtype):
    for shape, kwargs in [((16, 16), {"rank": 2, "n_factors": 2}), ((12, 30), {}), ((30, 12), {"n_factors": 3}),
                          ((7, 13), {"pad": True, "n_factors": 2})]:
        B = factorize(np.zeros(shape, dtype=dtype), **kwargs)
        dense = B.toarray()
        assert dense.shape == shape and np.all(dense == 0) and not np.any(np.isnan(dense)), kwargs
        assert B.info["relative_error"] == 0.0


ZERO_BLOCK_CASES = ["block-diagonal", "one-quadrant", "single-entry", "zero-rows-and-columns",
                    "zero-factor-blocks"]


def zero_block_matrix(case, rng, dtype, n=16):
    if case == "block-diagonal":
        matrix = np.zeros((n, n), dtype=dtype)
        matrix[: n // 2, : n // 2] = random_array(rng, (n // 2, n // 2), dtype)
        matrix[n // 2:, n // 2:] = random_array(rng, (n // 2, n // 2), dtype)
    elif case == "one-quadrant":
        matrix = np.zeros((n, n), dtype=dtype)
        matrix[: n // 2, n // 2:] = random_array(rng, (n // 2, n // 2), dtype)
    elif case == "single-entry":
        matrix = np.zeros((n, n), dtype=dtype)
        matrix[3, 11] = 2.5
    elif case == "zero-rows-and-columns":
        matrix = random_array(rng, (n, n), dtype)
        matrix[::3] = 0
        matrix[:, 1::4] = 0
    else:  # an exact butterfly whose factors have all-zero 2 x 2 blocks
        factors = random_factors(rng, Chain.square_dyadic(n), dtype)
        for f in factors:
            f.values[0] = 0  # every block of the first a-group
            f.values[..., -1] = 0  # and every block at the last offset t
        matrix = Butterfly(factors).toarray()
    return matrix


@pytest.mark.parametrize("tree", NAMED_TREES)
@pytest.mark.parametrize("case", ZERO_BLOCK_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_all_zero_blocks_stay_exactly_zero(dtype, case, tree):
    rng = np.random.default_rng(zlib_seed("zero-blocks", dtype, case, tree))
    matrix = zero_block_matrix(case, rng, dtype)
    B = factorize(matrix, tree=tree)
    dense = B.toarray()
    assert np.all(np.isfinite(dense)) and np.isfinite(B.info["relative_error"])
    assert np.all(dense[matrix == 0] == 0) or case == "zero-rows-and-columns"
    # zero rows and columns of the matrix are exactly zero in the approximation
    assert np.all(dense[np.all(matrix == 0, axis=1)] == 0)
    assert np.all(dense[:, np.all(matrix == 0, axis=0)] == 0)
    if case in ("single-entry", "zero-factor-blocks"):  # exact butterflies
        assert_close(dense, matrix, dtype, factor=4)


RANK_DEFICIENT = {
    # name: (matrix builder (rng, dtype) -> matrix, factorize keyword arguments)
    "ones": (lambda rng, dtype: np.ones((32, 32), dtype=dtype), {}),
    "outer-product": (lambda rng, dtype: np.outer(random_array(rng, 32, dtype), random_array(rng, 32, dtype)), {}),
    "identity": (lambda rng, dtype: np.eye(32, dtype=dtype), {}),
    "diagonal": (lambda rng, dtype: np.diag(random_array(rng, 32, dtype)), {}),
    "repeated-rows": (lambda rng, dtype: np.tile(random_array(rng, (1, 32), dtype), (32, 1)), {}),
    "hadamard": (lambda rng, dtype: fastbfly.hadamard_butterfly(32).toarray().astype(dtype), {}),
    "rank-one-on-rank-2-chain": (lambda rng, dtype: np.outer(random_array(rng, 16, dtype),
                                                             random_array(rng, 16, dtype)),
                                 {"rank": 2, "n_factors": 2}),
    "identity-on-rank-2-chain": (lambda rng, dtype: np.eye(16, dtype=dtype), {"rank": 2, "n_factors": 2}),
    "ones-on-12x30-chain": (lambda rng, dtype: np.ones((12, 30), dtype=dtype), {}),
}


@pytest.mark.parametrize("name", sorted(RANK_DEFICIENT))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rank_deficient_blocks_are_recovered_without_nan(dtype, name):
    """Each matrix is an exact product on its chain whose blocks have rank below their
    size (degenerate or repeated singular values): no NaN, exact recovery."""
    rng = np.random.default_rng(zlib_seed("rank-deficient", dtype, name))
    build, kwargs = RANK_DEFICIENT[name]
    matrix = build(rng, dtype).astype(dtype)
    for tree in NAMED_TREES:
        B = factorize(matrix, tree=tree, **kwargs)
        assert all(np.all(np.isfinite(f.values)) for f in B.factors), tree
        assert_close(B.toarray(), matrix, dtype, factor=10, what=f"{name} {tree}")
        assert B.info["relative_error"] <= 10 * np.finfo(dtype).eps * 64


# Exact powers of two: scaling by them is exact, so the scaled problem must give the
# same relative error to the last bit, and results equal to the scaled unscaled ones.
EXTREME_SCALES = {
    np.dtype(np.float64): [996, 1000, -1000, -996],  # 2**996 ~ 6.7e299, 2**-1000 ~ 9.3e-302
    np.dtype(np.complex128): [996, 1000, -1000, -996],
    np.dtype(np.float32): [100, 110, -100, -110],  # 2**110 ~ 1.3e33
    np.dtype(np.complex64): [100, 110, -100, -110],
}


@pytest.mark.parametrize("n", [2, 8, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extreme_scales_near_1e300_are_exact_and_finite(dtype, n):
    rng = np.random.default_rng(zlib_seed("scales", dtype, n))
    matrix = random_array(rng, (n, n), dtype)
    x = random_array(rng, n, dtype)
    reference = factorize(matrix)
    for exponent in EXTREME_SCALES[dtype]:
        scaled = np.ldexp(matrix.real, exponent).astype(dtype)
        if dtype.kind == "c":
            scaled = scaled + 1j * np.ldexp(matrix.imag, exponent).astype(dtype)
        B = factorize(scaled)
        assert B.info["relative_error"] == reference.info["relative_error"], exponent
        assert all(np.all(np.isfinite(f.values)) for f in B.factors), exponent
        y = B @ x
        assert np.all(np.isfinite(y)), exponent
        # compare in unscaled units (exact powers of two)
        unscaled = np.ldexp(y.real.astype(np.float64), -exponent)
        if dtype.kind == "c":
            unscaled = unscaled + 1j * np.ldexp(y.imag.astype(np.float64), -exponent)
        assert_close(unscaled, reference @ x, dtype, factor=10, what=f"2**{exponent}")


@pytest.mark.parametrize("value", [1e300, -1e300, 1e-300, 1e305])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
def test_exact_butterflies_near_1e300_are_recovered(dtype, value):
    for n in (2, 16, 256) if value != 1e305 else (2, 16):  # see test_entries_near_the_overflow_threshold
        matrix = fastbfly.hadamard_butterfly(n).toarray().astype(dtype) * value
        B = factorize(matrix)
        dense = B.toarray()
        assert np.all(np.isfinite(dense))
        error = np.max(np.abs(dense / value - matrix / value))
        assert error <= 64 * np.finfo(np.float64).eps, (n, error)


OVERFLOW_CASES = ["full-4x4-1e308", "full-8x8-1.7e308", "complex-full-8x8-1.7e308", "hadamard-64-1e307",
                  "hadamard-1024-1e306", "float32-full-8x8-3e38"]


@pytest.mark.parametrize("orthonormalize", [True, False])
@pytest.mark.parametrize("case", OVERFLOW_CASES)
def test_entries_near_the_overflow_threshold(case, orthonormalize):
    """Finite entries near the largest float: the finiteness check must not overflow
    (it summed magnitudes), nor the block singular values or pushed column norms in
    the matrix's units (their factors are representable, the intermediates are not)."""
    if case == "full-4x4-1e308":
        matrix = np.full((4, 4), 1e308)
    elif case == "full-8x8-1.7e308":
        matrix = np.full((8, 8), 1.7e308)
    elif case == "complex-full-8x8-1.7e308":
        matrix = np.full((8, 8), 1.7e308 - 1.7e308j)
    elif case == "float32-full-8x8-3e38":
        matrix = np.full((8, 8), 3e38, dtype=np.float32)
    elif case == "hadamard-64-1e307":
        matrix = fastbfly.hadamard_butterfly(64).toarray() * 1e307
    else:
        matrix = fastbfly.hadamard_butterfly(1024).toarray() * 1e306
    B = factorize(matrix, orthonormalize=orthonormalize)
    assert B.dtype == matrix.dtype
    assert all(np.all(np.isfinite(f.values)) for f in B.factors)
    dense = B.toarray()
    assert np.all(np.isfinite(dense))
    scale = np.max(np.abs(matrix))
    assert_close(dense / scale, matrix / scale, matrix.dtype, factor=10)
    assert B.info["relative_error"] <= 10 * np.finfo(matrix.dtype).eps


SUBNORMAL_EXPONENTS = {np.dtype(np.float64): [-1030, -1060, -1070], np.dtype(np.float32): [-130, -140, -145]}


@pytest.mark.parametrize("n", [2, 8, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=dtype_id)
def test_subnormal_entries_real(dtype, n):
    """Subnormal matrices (few significant bits): finite factors, and exact butterflies
    (±2**e entries) recovered to within a few units of the smallest subnormal, the
    spacing of the values any result can hold there."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(zlib_seed("subnormal", dtype, n))
    hadamard = fastbfly.hadamard_butterfly(n).toarray()
    for exponent in SUBNORMAL_EXPONENTS[dtype]:
        matrix = np.ldexp(hadamard, exponent).astype(dtype)
        assert 0 < np.abs(matrix).max() < np.finfo(dtype).tiny  # really subnormal
        B = factorize(matrix)
        assert all(np.all(np.isfinite(f.values)) for f in B.factors)
        spacing = np.ldexp(1.0, np.finfo(dtype).minexp - np.finfo(dtype).nmant)  # smallest subnormal
        error = np.abs(B.toarray().astype(np.float64) - matrix.astype(np.float64)).max()
        assert error <= 4 * n * spacing, (exponent, error / spacing)
        noisy = np.ldexp(rng.standard_normal((n, n)), exponent).astype(dtype)
        B = factorize(noisy)
        assert all(np.all(np.isfinite(f.values)) for f in B.factors)
        assert np.isfinite(B.info["relative_error"]) and B.info["relative_error"] <= 1.0
        y = B @ np.ones(n, dtype=dtype)
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("orthonormalize", [True, False])
@pytest.mark.parametrize("shape", [(4, 4), (8, 8), (16, 16)])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=dtype_id)
def test_subnormal_entries_complex(dtype, shape, orthonormalize):
    """Complex subnormal input (numpy's complex division by a subnormal norm gives
    Inf/NaN): finite factors, exact butterflies recovered to within a few units of
    the smallest subnormal, and random matrices to the dtype's relative accuracy."""
    dtype = np.dtype(dtype)
    real = np.dtype(dtype.char.lower())
    spacing = np.ldexp(1.0, np.finfo(dtype).minexp - np.finfo(dtype).nmant)  # smallest subnormal
    n = shape[0]
    rng = np.random.default_rng(zlib_seed("subnormal-complex", dtype, n, orthonormalize))
    for exponent in SUBNORMAL_EXPONENTS[real]:
        for matrix in (np.ldexp(fastbfly.hadamard_butterfly(n).toarray(), exponent) * (1 - 1j),
                       np.full(shape, np.ldexp(1.0, exponent) + 0j)):
            matrix = matrix.astype(dtype)
            assert 0 < np.abs(matrix.real).max() < np.finfo(real).tiny  # really subnormal
            B = factorize(matrix, orthonormalize=orthonormalize)
            assert all(np.all(np.isfinite(f.values)) for f in B.factors)
            error = np.abs(B.toarray() - matrix).max()
            assert error <= 4 * n * spacing, (exponent, error / spacing)
    # a product of random factors scaled into the subnormals (every entry below the
    # smallest normal): recovered to the input's own resolution, a few ``spacing``
    exact = naive.butterfly_dense(Butterfly(random_factors(rng, Chain.square_dyadic(n), np.complex128)))
    exponent = np.finfo(real).minexp - 1 - math.frexp(np.abs(exact).max())[1]
    matrix = (np.ldexp(exact.real, exponent) + 1j * np.ldexp(exact.imag, exponent)).astype(dtype)
    assert np.abs(matrix).max() < np.finfo(real).tiny
    B = factorize(matrix, orthonormalize=orthonormalize)
    assert all(np.all(np.isfinite(f.values)) for f in B.factors)
    error = np.abs(B.toarray() - matrix).max()
    assert error <= 4 * n * spacing, error / spacing


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
def test_products_with_extreme_values(dtype):
    """Huge factors times tiny vectors, and sums of subnormals, computed exactly where
    the exact result is representable."""
    B = fastbfly.hadamard_butterfly(64, dtype=dtype)
    integers = np.arange(-32, 32).astype(dtype)
    expected = B.toarray() @ integers  # small integers: exact
    for exponent in (-1060, -1000, 1000):
        x = np.ldexp(integers.real, exponent).astype(dtype)
        y = B @ x
        np.testing.assert_array_equal(y, np.ldexp(expected.real, exponent).astype(dtype))
    big = Butterfly([Factor(f.pattern, f.values * 2.0**160) for f in B.factors])  # 6 factors: 2**960
    y = big @ np.ldexp(integers.real, -900).astype(dtype)
    np.testing.assert_array_equal(y, np.ldexp(expected.real, 60).astype(dtype))
    assert np.all(np.isfinite(big.H @ np.ones(64, dtype=dtype)))


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_sizes_one_and_two(dtype, n, tmp_path):
    rng = np.random.default_rng(zlib_seed("tiny", dtype, n))
    matrix = random_array(rng, (n, n), dtype)
    for tree in NAMED_TREES:
        for perm in (None, "auto", np.arange(n)[::-1].copy()):
            B = factorize(matrix, tree=tree, perm=perm, row_perm=perm if perm is not None else None)
            assert B.shape == (n, n) and len(B.factors) == 1
            np.testing.assert_array_equal(B.toarray(), matrix)  # one factor: an exact copy
            assert B.info["relative_error"] == 0.0
    x = random_array(rng, n, dtype)
    X = random_array(rng, (n, 3), dtype)
    assert_close(B @ x, matrix @ x, dtype)
    assert_close(B @ X, matrix @ X, dtype)
    assert_close(B.H @ X, matrix.conj().T @ X, dtype)
    assert_close(x @ B, x @ matrix, dtype)
    assert_close(B.aslinearoperator().rmatvec(x), matrix.conj().T @ x, dtype)
    save(tmp_path / "tiny.npz", B)
    np.testing.assert_array_equal(load(tmp_path / "tiny.npz").toarray(), matrix)


# ============================================================================ 2. interrupted saves
class Interrupted(BaseException):
    """Not an Exception: stands for KeyboardInterrupt/SystemExit-like interruptions."""


INTERRUPTIONS = {
    "savez-oserror-midway": ("savez", OSError),
    "savez-keyboard-interrupt-midway": ("savez", KeyboardInterrupt),
    "savez-memory-error-midway": ("savez", MemoryError),
    "savez-base-exception-midway": ("savez", Interrupted),
    "fsync-fails": ("fsync", OSError),
    "rename-fails": ("replace", OSError),
}


@pytest.mark.parametrize("existing", [True, False], ids=["over-a-good-file", "new-file"])
@pytest.mark.parametrize("name", sorted(INTERRUPTIONS))
def test_interrupted_save_keeps_the_previous_file_and_leaves_no_temporary(name, existing, tmp_path,
                                                                          monkeypatch):
    where, error = INTERRUPTIONS[name]
    rng = np.random.default_rng(5)
    good = Butterfly(random_factors(rng, Chain.square_dyadic(64), np.complex128), perm=rng.permutation(64))
    path = tmp_path / "factors.npz"
    if existing:
        save(path, good)
        good_bytes = path.read_bytes()
    new = fastbfly.hadamard_butterfly(128)
    real_savez = np.savez

    def savez_then_fail(file, *args, **kwargs):
        real_savez(file, *args, **kwargs)  # write everything ...
        file.seek(file.tell() // 2)  # ... then lose the second half, as a crash would
        file.truncate()
        raise error("interrupted while writing")

    def fail(*args, **kwargs):
        raise error("interrupted")

    if where == "savez":
        monkeypatch.setattr(np, "savez", savez_then_fail)
    elif where == "fsync":
        monkeypatch.setattr(io_module.os, "fsync", fail)
    else:
        monkeypatch.setattr(io_module.os, "replace", fail)
    with pytest.raises(error):
        save(path, new)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == (["factors.npz"] if existing else [])
    if existing:
        assert path.read_bytes() == good_bytes
        loaded = load(path)
        assert loaded.toarray().tobytes() == good.toarray().tobytes()
    save(path, new)  # and the next save works
    np.testing.assert_array_equal(load(path).toarray(), new.toarray())


def test_save_killed_midway_keeps_the_previous_file(tmp_path):
    """SIGKILL while the new file is half written (a real crash: no cleanup runs): the
    previous file is untouched; only a stray ``.fastbfly-*.npz.tmp`` may remain."""
    path = tmp_path / "factors.npz"
    good = fastbfly.hadamard_butterfly(64)
    save(path, good)
    good_bytes = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, fastbfly
        real_savez = np.savez
        def savez_then_die(file, *args, **kwargs):
            real_savez(file, *args, **kwargs)
            file.seek(file.tell() // 2)
            file.truncate()
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        np.savez = savez_then_die
        fastbfly.save({str(path)!r}, fastbfly.hadamard_butterfly(256))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), timeout=120,
                            capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert path.read_bytes() == good_bytes
    np.testing.assert_array_equal(load(path).toarray(), good.toarray())
    leftovers = sorted(set(os.listdir(tmp_path)) - {"factors.npz"})
    assert len(leftovers) == 1 and leftovers[0].startswith(".fastbfly-") and leftovers[0].endswith(".npz.tmp")


# ============================================================================ 5. resources
def expected_need(matrix_shape, dtype, input_copies=0, tree="balanced") -> int:
    """The memory estimate factorize compares with memory_limit (square dyadic chain),
    from its documented parts."""
    chain = Chain.square_dyadic(matrix_shape[0])
    root = fastbfly.build_tree(tree, len(chain))
    plan = factorization_module._plan(chain, root, True)
    return factorization_module.estimate_memory(plan, dtype, matrix_shape, input_copies)


@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=dtype_id)
def test_memory_limit_raises_memory_error_with_the_needed_size(dtype):
    matrix = np.ones((256, 256), dtype=dtype)
    need = expected_need(matrix.shape, dtype)
    calls = []
    started = time.perf_counter()
    with pytest.raises(MemoryError) as raised:
        factorize(matrix, memory_limit=need - 1, progress=lambda *a: calls.append(a))
    assert time.perf_counter() - started < 1.0 and not calls  # refused before any work
    message = str(raised.value)
    assert f"needs about {need / 2**30:.2f} GiB" in message
    assert "256 x 256" in message and np.dtype(dtype).name in message
    assert f"memory_limit={need - 1}" in message and "memory_limit=None" in message
    # the estimate is the threshold: exactly enough memory passes
    assert factorize(matrix, memory_limit=need).shape == (256, 256)
    assert factorize(matrix, memory_limit=None).shape == (256, 256)


def test_memory_limit_counts_input_copies():
    """Integer input (converted), padding and row permutations each add one copy."""
    base = expected_need((64, 64), np.float64, 0)
    per_copy = 64 * 64 * 8
    for matrix, kwargs, copies in [
        (np.ones((64, 64)), {}, 0),
        (np.ones((64, 64), dtype=np.int64), {}, 1),
        (np.ones((64, 64)), {"row_perm": np.arange(64)}, 1),
        (np.ones((64, 64), dtype=np.int32), {"row_perm": np.arange(64)}, 2),
    ]:
        need = base + copies * per_copy
        with pytest.raises(MemoryError, match=f"{need / 2**30:.2f} GiB"):
            factorize(matrix, memory_limit=need - 1, **kwargs)
        factorize(matrix, memory_limit=need, **kwargs)


def test_memory_limit_auto_uses_available_memory(monkeypatch):
    monkeypatch.setattr(factorization_module, "_available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="memory_limit='auto'"):
        factorize(np.ones((64, 64)))
    monkeypatch.setattr(factorization_module, "_available_memory", lambda: None)  # unknown: no check
    assert factorize(np.ones((64, 64))).shape == (64, 64)


@pytest.mark.parametrize("tree", NAMED_TREES)
def test_memory_estimate_bounds_the_traced_allocations(tree):
    """What NumPy allocates during a factorization (tracemalloc's view; Numba's own
    panel allocations are not traced) stays below the estimate."""
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((1024, 1024))
    need = expected_need(matrix.shape, np.float64, tree=tree)
    factorize(matrix[:64, :64], tree=tree)  # warm up
    tracemalloc.start()
    try:
        factorize(matrix, tree=tree, memory_limit=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= need, (peak, need)


def test_keyboard_interrupt_from_progress_stops_promptly_and_keeps_input():
    rng = np.random.default_rng(12)
    matrix = rng.standard_normal((1024, 1024))
    before = snapshot(matrix)
    calls = []

    def interrupt(done, total):
        calls.append((done, total, time.perf_counter()))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        factorize(matrix, progress=interrupt)
    stopped = time.perf_counter()
    assert len(calls) == 1 and calls[0][:2] == (1, 9)  # stopped after the first of 9 splits
    assert stopped - calls[0][2] < 0.5  # nothing long runs after the interrupt
    assert snapshot(matrix) == before
    # nothing is left in a broken state: the next call works and is reproducible
    B = factorize(matrix, tree="left-to-right")
    again = factorize(matrix, tree="left-to-right")
    assert all(a.values.tobytes() == b.values.tobytes() for a, b in zip(B.factors, again.factors))


def test_sigint_during_factorize_stops_within_one_split():
    """A real Ctrl-C (SIGINT) while a kernel runs: the KeyboardInterrupt arrives when the
    current split returns, the input is intact and fastbfly keeps working."""
    script = textwrap.dedent("""
        import sys, time, numpy as np, fastbfly
        matrix = np.random.default_rng(0).standard_normal((2048, 2048))
        saved = matrix.copy()
        fastbfly.factorize(matrix[:64, :64])
        started = time.monotonic()
        fastbfly.factorize(matrix)
        splits = []
        print("ready", time.monotonic() - started, flush=True)
        try:
            while True:  # until interrupted: the signal never arrives too late
                fastbfly.factorize(matrix, progress=lambda done, total: splits.append(done))
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), len(splits),
                  "intact" if np.array_equal(matrix, saved) and matrix.flags.writeable else "CHANGED",
                  flush=True)
        B = fastbfly.factorize(matrix[:256, :256])
        print("recovered", B.shape == (256, 256), flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        ready, one_factorization = child.stdout.readline().split()
        assert ready == "ready"
        time.sleep(0.3 + float(one_factorization) / 2)
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    lines = out.split("\n")
    assert child.returncode == 0, (out, err)
    _, when, _, state = lines[0].split()
    assert state == "intact", out
    # one split (the root split is most of a factorization: < 1 s here without load),
    # with room for a loaded machine; without the interrupt the loop never ends
    assert float(when) - sent < 2.0 + 3.0 * float(one_factorization), (out, one_factorization)
    assert lines[1] == "recovered True"
