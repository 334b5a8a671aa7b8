"""Shared fixtures, tolerances and random test data for the fastbfly suite.

Conventions (STYLE.md, habits 8 and 9):

- randomness comes from the ``rng`` fixture, a ``numpy.random.default_rng`` seeded from
  the test's node id (so every parametrized case has its own reproducible stream; there
  are no global seeds);
- accuracy is checked with :func:`assert_close`, a relative Frobenius-norm error against
  the one tolerance table :data:`RTOL` (per dtype), times an explicit factor where an
  operation legitimately loses more (iterative solvers, ill-conditioned blocks).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

import fastbfly

DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128)]
REAL_DTYPES = [t for t in DTYPES if t.kind == "f"]
COMPLEX_DTYPES = [t for t in DTYPES if t.kind == "c"]

# Relative (Frobenius) tolerance per dtype for results that should hold "to machine
# precision": a few hundred ulps, which covers products of up to 10 factors at N = 1024.
RTOL = {
    np.dtype(np.float32): 2e-5,
    np.dtype(np.complex64): 2e-5,
    np.dtype(np.float64): 1e-12,
    np.dtype(np.complex128): 1e-12,
}

NAMED_TREES = ["balanced", "left-to-right", "right-to-left"]
# "user" stands for a random nested tree drawn with the test's rng (see `make_tree`).
TREES = NAMED_TREES + ["user"]


def rtol(dtype) -> float:
    """The relative tolerance of :data:`RTOL` for ``dtype``."""
    return RTOL[np.dtype(dtype)]


def eps(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test id: reproducible, different for every case."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ----------------------------------------------------------------------------- data
def random_array(rng, shape, dtype) -> np.ndarray:
    """Standard normal entries (real and imaginary parts for complex ``dtype``)."""
    dtype = np.dtype(dtype)
    values = rng.standard_normal(shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def random_factors(rng, chain, dtype, zero_fraction=0.0) -> list:
    """Factors with random values on every pattern of ``chain`` (left-most first)."""
    factors = []
    for pattern in chain:
        values = random_array(rng, tuple(pattern), dtype)
        if zero_fraction:
            values[rng.random(values.shape) < zero_fraction] = 0
        factors.append(fastbfly.Factor(pattern, values))
    return factors


def random_butterfly(rng, n, dtype, perm=False, row_perm=False) -> fastbfly.Butterfly:
    """A random butterfly on ``Chain.square_dyadic(n)``, optionally with random
    column and row permutations."""
    chain = fastbfly.Chain.square_dyadic(n)
    return fastbfly.Butterfly(
        random_factors(rng, chain, dtype),
        perm=rng.permutation(n) if perm else None,
        row_perm=rng.permutation(n) if row_perm else None,
    )


def random_tree(rng, start: int, stop: int):
    """A random binary tree (user format) over the factor indices ``start..stop-1``."""
    if stop - start == 1:
        return start
    split = int(rng.integers(start + 1, stop))
    return (random_tree(rng, start, split), random_tree(rng, split, stop))


def make_tree(tree, n_factors: int, rng):
    """A named tree as is; ``"user"`` becomes a random nested tree."""
    return random_tree(rng, 0, n_factors) if tree == "user" else tree


def noisy(rng, matrix, level: float) -> np.ndarray:
    """``matrix`` plus Gaussian noise of relative Frobenius norm ``level``."""
    noise = random_array(rng, matrix.shape, matrix.dtype if matrix.dtype.kind == "c" else np.float64)
    return matrix + level * np.linalg.norm(matrix) / np.linalg.norm(noise) * noise


# ----------------------------------------------------------------------------- checks
def relative_error(actual, desired) -> float:
    """``‖actual − desired‖_F / ‖desired‖_F`` in float64/complex128 (0 if both are 0)."""
    actual = np.asarray(actual).astype(np.complex128)
    desired = np.asarray(desired).astype(np.complex128)
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    scale = np.linalg.norm(desired)
    difference = np.linalg.norm(actual - desired)
    if scale == 0:
        return float(difference)
    return float(difference / scale)


def assert_close(actual, desired, dtype, factor: float = 1.0, what: str = "") -> None:
    """Relative Frobenius error at most ``factor * RTOL[dtype]``."""
    error = relative_error(actual, desired)
    bound = factor * rtol(dtype)
    assert error <= bound, f"{what} relative error {error:.3e} > {bound:.1e} ({np.dtype(dtype)})"


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="session")
def numba_cache_dir(tmp_path_factory) -> str:
    """A Numba cache folder shared by all subprocesses of the session (and with later
    sessions when the caller sets ``NUMBA_CACHE_DIR``), so each compiles at most once."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return configured
    return str(tmp_path_factory.getbasetemp().parent / "fastbfly-numba-cache")


@pytest.fixture(scope="session")
def subprocess_env(numba_cache_dir) -> dict:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = numba_cache_dir
    return env


# ----------------------------------------------------------------------------- kernels
def run_split_rank_one(node, b1, c1, columns=None, batch=None, work=None):
    """The serial rank-one split kernel (one chunk): ``(left, right, norm2, residual2,
    bad)`` with the sums as plain floats (the kernel keeps them in units of
    ``4**exponent``).  All column groups in one batch unless ``batch`` says otherwise;
    the solvers' precision is ``work``'s (default double)."""
    from fastbfly import _kernels

    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    left = np.full((a, b1, c1, b2 * d), np.nan, dtype=node.dtype)
    right = np.full((a * c1, b2, c2, d), np.nan, dtype=node.dtype)
    norm2, residual2 = np.zeros(1), np.zeros(1)
    exponent, bad = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    if work is None:
        work = np.zeros(1, dtype=np.complex128 if node.dtype.kind == "c" else np.float64)
    _kernels.split_rank_one_serial(
        node, np.arange(big_c) if columns is None else columns, b1, c1,
        c1 if batch is None else batch, left, right, 1.0, 8 * eps(np.float64), work, 1,
        norm2, residual2, exponent, bad)
    scale = 4.0 ** float(exponent[0])
    return left, right, norm2[0] * scale, residual2[0] * scale, int(bad[0])
