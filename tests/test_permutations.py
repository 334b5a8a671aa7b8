"""Bit reversal, permutation validation, and the closed-form DFT / Hadamard oracles."""

import numpy as np
import pytest
import scipy.linalg

import fastbfly
from fastbfly.permutations import validate_permutation

import naive
from conftest import assert_close

SIZES = [1, 2, 4, 8, 16, 64, 256, 1024]


@pytest.mark.parametrize("n", SIZES)
def test_bit_reversal_matches_string_reversal(n):
    perm = fastbfly.bit_reversal_permutation(n)
    assert perm.dtype == np.int64 and perm.shape == (n,)
    np.testing.assert_array_equal(perm, naive.bit_reversal(n))
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    np.testing.assert_array_equal(perm[perm], np.arange(n))  # an involution


def test_bit_reversal_of_eight():
    np.testing.assert_array_equal(fastbfly.bit_reversal_permutation(8), [0, 4, 2, 6, 1, 5, 3, 7])


@pytest.mark.parametrize(
    "n, error, match",
    [(6, ValueError, "power of two, got 6"), (0, ValueError, "got 0"), (-8, ValueError, "got -8"),
     (8.0, TypeError, "8.0"), (None, TypeError, "None")],
)
def test_bit_reversal_rejects_bad_sizes(n, error, match):
    with pytest.raises(error, match=match):
        fastbfly.bit_reversal_permutation(n)


@pytest.mark.parametrize("n", [2, 4, 8, 32, 64])
def test_design_radix2_formula_gives_the_dft(n):
    """DESIGN.md §6: F[:, bitrev] = T_J ⋯ T_1 with dense Kronecker factors."""
    product = np.linalg.multi_dot(naive.dft_radix2_factors(n) + [np.eye(n)])
    F = naive.dft_matrix(n)
    assert_close(product, F[:, naive.bit_reversal(n)], np.complex128)
    assert_close(np.fft.fft(np.eye(n)), F, np.complex128)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("n", SIZES)
def test_dft_butterfly_is_the_dft(n, dtype, rng):
    B = fastbfly.dft_butterfly(n, dtype=dtype)
    assert B.dtype == dtype
    np.testing.assert_array_equal(B.perm, naive.bit_reversal(n))
    assert_close(B.toarray(), np.fft.fft(np.eye(n)), dtype)
    x = rng.standard_normal(n)
    assert_close(B @ x, np.fft.fft(x), dtype)
    # the factors are the radix-2 factors of DESIGN.md §6
    if n > 1:
        for factor, dense in zip(B.factors, naive.dft_radix2_factors(n)):
            assert_close(factor.toarray(), dense, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("n", SIZES)
def test_hadamard_butterfly_is_sylvester_hadamard(n, dtype):
    B = fastbfly.hadamard_butterfly(n, dtype=dtype)
    assert B.dtype == dtype and B.perm is None
    np.testing.assert_array_equal(B.toarray(), scipy.linalg.hadamard(n))


def test_dft_butterfly_needs_complex_dtype():
    with pytest.raises(TypeError, match="float64"):
        fastbfly.dft_butterfly(8, dtype=np.float64)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("perm", [[2, 0, 1], np.array([2, 0, 1], dtype=np.int32),
                                  np.array([2, 0, 1], dtype=np.uint8), (2, 0, 1)])
def test_validate_permutation_returns_a_readonly_int64_copy(perm):
    original = np.array(perm)
    checked = validate_permutation(perm, 3)
    assert checked.dtype == np.int64 and not checked.flags.writeable
    np.testing.assert_array_equal(checked, [2, 0, 1])
    if isinstance(perm, np.ndarray):
        assert not np.shares_memory(checked, perm)
        np.testing.assert_array_equal(perm, original)


@pytest.mark.parametrize(
    "perm, error, match",
    [
        ([0, 1], ValueError, r"shape \(3,\), got \(2,\)"),
        ([0, 1, 2, 3], ValueError, r"got \(4,\)"),
        ([[0, 1, 2]], ValueError, r"got \(1, 3\)"),
        (5, ValueError, r"got \(\)"),
        ([0, 1, 1], ValueError, "index 1 appears more than once"),
        ([2, 2, 2], ValueError, "index 2 appears more than once"),
        ([0, 1, 3], ValueError, r"\[0, 3\).*max 3"),
        ([-1, 0, 1], ValueError, "min -1"),
        ([0.0, 1.0, 2.0], TypeError, "float64"),
        (np.array([0, 1, 2], dtype=np.float32), TypeError, "float32"),
        ([True, False, True], TypeError, "bool"),
        (["0", "1", "2"], TypeError, "<U1"),
        ([0, None, 2], TypeError, "object"),
    ],
)
def test_validate_permutation_rejects(perm, error, match):
    with pytest.raises(error, match=match):
        validate_permutation(perm, 3)
