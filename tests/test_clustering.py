"""Recovery of unknown row and column permutations (fastbfly.clustering).

Success is judged by the error of ``factorize`` with the recovered permutations against
the error with the true ones (the permutations themselves are not unique).  Only the
regimes the module claims (``docs/clustering.md``) are tested.
"""

import numpy as np
import pytest

import fastbfly
from fastbfly.clustering import recover_permutations

from conftest import random_factors


def shuffled(rng, kind, n, sigma=0.0):
    """(S, oracle row_perm, oracle perm): a shuffled butterfly product, plus noise."""
    column_perm = np.arange(n)
    if kind == "dft":
        Z, column_perm = np.fft.fft(np.eye(n)), fastbfly.bit_reversal_permutation(n)
    elif kind == "hadamard":
        Z = fastbfly.hadamard_butterfly(n).toarray()
    else:
        dtype = np.complex128 if kind == "complex" else np.float64
        Z = fastbfly.Butterfly(random_factors(rng, fastbfly.Chain.square_dyadic(n), dtype)).toarray()
    rows, cols = rng.permutation(n), rng.permutation(n)
    S = Z[rows][:, cols]
    if sigma:
        W = rng.standard_normal(S.shape) + (1j * rng.standard_normal(S.shape) if np.iscomplexobj(S) else 0)
        S = S + sigma * np.linalg.norm(S) / np.linalg.norm(W) * W
    return S, np.argsort(rows), np.argsort(cols)[column_perm]


def error(S, row_perm, perm):
    B = fastbfly.factorize(S, row_perm=row_perm, perm=perm)
    return np.linalg.norm(S - B.toarray()) / np.linalg.norm(S)


@pytest.mark.parametrize("kind", ["dft", "hadamard", "complex", "real"])
@pytest.mark.parametrize("n", [2, 4, 16, 64, 256])
def test_exact_products_are_recovered(rng, kind, n):
    S, _, _ = shuffled(rng, kind, n)
    row_perm, perm = recover_permutations(S)
    assert sorted(row_perm) == list(range(n)) and sorted(perm) == list(range(n))
    assert error(S, row_perm, perm) < 1e-12
    if n >= 16:
        assert fastbfly.factorize(S).info["relative_error"] > 0.2  # the shuffle mattered


@pytest.mark.parametrize("kind, n, sigma", [("dft", 64, 0.1), ("dft", 64, 0.3), ("hadamard", 64, 0.1),
                                            ("complex", 256, 0.01),
                                            ("real", 64, 0.01)])
def test_noisy_products_reach_the_oracle_error(rng, kind, n, sigma):
    S, rows, cols = shuffled(rng, kind, n, sigma)
    found = error(S, *recover_permutations(S))
    assert found <= 1.01 * error(S, rows, cols)


def test_real_and_complex_inputs_of_every_dtype(rng):
    S, _, _ = shuffled(rng, "dft", 32)
    for dtype in (np.complex64, np.complex128):
        row_perm, perm = recover_permutations(S.astype(dtype))
        assert error(S, row_perm, perm) < 1e-12
    H, _, _ = shuffled(rng, "hadamard", 32)
    for dtype in (np.float32, np.int64):  # ±1 entries: exact in both
        row_perm, perm = recover_permutations(H.astype(dtype))
        assert error(H, row_perm, perm) < 1e-12


@pytest.mark.parametrize(
    "matrix, error_type, match",
    [
        (np.ones((4, 8)), ValueError, "square"),
        (np.ones((6, 6)), ValueError, "power of two"),
        (np.full((4, 4), np.nan), ValueError, "NaN"),
        (np.ones((2, 2, 2)), ValueError, "2-D"),
        (np.array([["a"]]), TypeError, "numeric"),
    ],
)
def test_rejects_bad_input(matrix, error_type, match):
    with pytest.raises(error_type, match=match):
        recover_permutations(matrix)
