"""Permutation candidates of ``factorize``: "auto", "dao8", lists, rows and columns,
the parallel evaluation of candidates, and the errors reported for each (issue 5, item 2).
"""

import numpy as np
import pytest

import fastbfly
from fastbfly import factorization
from fastbfly.permutations import dao_permutations

from conftest import noisy, relative_error


def scrambled(matrix, rows, columns):
    """``S`` with ``S[rows][:, columns] == matrix``."""
    out = np.empty_like(matrix)
    out[np.ix_(rows, columns)] = matrix
    return out


@pytest.mark.parametrize("n", [16, 64, 256])
def test_auto_chooses_the_bit_reversal_on_the_dft(n):
    F = np.fft.fft(np.eye(n))
    B = fastbfly.factorize(F, perm="auto")
    assert B.info["perm"] == "bitrev"
    np.testing.assert_array_equal(B.perm, fastbfly.bit_reversal_permutation(n))
    assert B.info["relative_error"] < 1e-13
    errors = {c["perm"]: c["relative_error"] for c in B.info["candidates"]}
    assert len(B.info["candidates"]) == 8 and "identity" in errors and "bitrev" in errors
    assert errors["identity"] > 0.5  # the DFT itself is far from a butterfly
    # every candidate's reported error is its actual error (checked on two of them)
    for label in ("identity", "dao-010"):
        other = fastbfly.factorize(F, perm=dict(zip(
            ("identity", "bitrev") + factorization.DAO_NAMES[2:], dao_permutations(n)))[label])
        assert errors[label] == pytest.approx(relative_error(other.toarray(), F), rel=1e-10)


def test_ties_go_to_the_earlier_candidate():
    # Two of the eight make the DFT exact (bit reversal and "111"); the choice must
    # not depend on rounding.
    F = np.fft.fft(np.eye(64))
    errors = [c["relative_error"] for c in fastbfly.factorize(F, perm="auto").info["candidates"]]
    assert sum(e < 1e-13 for e in errors) == 2
    reordered = dao_permutations(64)[::-1]  # "111" first now
    B = fastbfly.factorize(F, perm=list(reordered))
    assert B.info["perm"] == "candidate 0"
    np.testing.assert_array_equal(B.perm, reordered[0])


def test_dao8_keeps_the_dao_names():
    B = fastbfly.factorize(np.fft.fft(np.eye(32)), perm="dao8")
    assert [c["perm"] for c in B.info["candidates"]] == list(factorization.DAO_NAMES)
    assert B.info["perm"] == "dao-001"  # the bit reversal


@pytest.mark.parametrize("row_index, column_index", [(0, 1), (5, 3), (7, 6)])
def test_rows_and_columns_permuted_hadamard_is_recovered_by_auto(row_index, column_index):
    n = 32
    H = fastbfly.hadamard_butterfly(n).toarray()
    perms = dao_permutations(n)
    S = scrambled(H, perms[row_index], perms[column_index])
    B = fastbfly.factorize(S, perm="auto", row_perm="auto")
    assert len(B.info["candidates"]) == 64
    assert max(c["relative_error"] for c in B.info["candidates"]) > 0.3  # the shuffle matters
    assert B.info["relative_error"] < 1e-12
    np.testing.assert_allclose(B.toarray(), S, atol=1e-12 * n)


def test_rows_and_columns_candidates_on_a_noisy_product(rng):
    n = 64
    chain = fastbfly.Chain.square_dyadic(n)
    factors = [fastbfly.Factor(p, rng.standard_normal(tuple(p))) for p in chain]
    Z = noisy(rng, fastbfly.Butterfly(factors).toarray(), 0.05)
    rows, columns = rng.permutation(n), rng.permutation(n)
    S = scrambled(Z, rows, columns)
    B = fastbfly.factorize(S, perm=[None, columns], row_perm=[rows, None])
    assert (B.info["row_perm"], B.info["perm"]) == ("candidate 0", "candidate 1")
    assert B.info["relative_error"] == pytest.approx(relative_error(B.toarray(), S), rel=1e-10)
    assert B.info["relative_error"] < 0.06
    assert [(c["row_perm"], c["perm"]) for c in B.info["candidates"]] == [
        ("candidate 0", "identity"), ("candidate 0", "candidate 1"),
        ("identity", "identity"), ("identity", "candidate 1")]


@pytest.mark.parametrize("tree", ["balanced", "left-to-right", ((0, 1), (2, (3, (4, (5, (6, 7))))))])
def test_parallel_candidates_give_the_serial_results(rng, tree, monkeypatch):
    if factorization.numba.get_num_threads() < 2:
        pytest.skip("needs two Numba threads")
    n = 256  # 65536 entries: the parallel threshold
    Z = noisy(rng, np.fft.fft(np.eye(n)), 0.1)
    candidates = ["bitrev", rng.permutation(n), None]
    fastbfly.factorize(Z, perm="bitrev")  # a threaded kernel ran: the threading layer is known
    try:
        layer = factorization.numba.threading_layer()
    except ValueError:  # NUMBA_DISABLE_JIT: no threaded kernel ever runs
        pytest.skip("no threading layer")
    if layer == "workqueue":
        pytest.skip("candidates run one after another with the workqueue threading layer")
    monkeypatch.setattr(factorization, "PARALLEL_CANDIDATES_MIN_SIZE", 1 << 62)
    serial = fastbfly.factorize(Z, perm=candidates, tree=tree)
    monkeypatch.setattr(factorization, "PARALLEL_CANDIDATES_MIN_SIZE", 1 << 16)
    assert factorization._candidate_workers(3, Z.size, None) == 2
    parallel = fastbfly.factorize(Z, perm=candidates, tree=tree)
    assert parallel.info["perm"] == serial.info["perm"] == "bitrev"
    for a, b in zip(serial.info["candidates"], parallel.info["candidates"]):
        assert a["perm"] == b["perm"]
        # only the order of the error sums may differ (serial vs threaded kernels)
        assert a["relative_error"] == pytest.approx(b["relative_error"], rel=1e-12)
    for a, b in zip(serial.factors, parallel.factors):
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-12)


def test_candidates_run_one_after_another_with_progress_or_small_matrices():
    assert factorization._candidate_workers(8, 1 << 20, lambda done, total: None) == 1
    assert factorization._candidate_workers(8, 1 << 10, None) == 1
    assert factorization._candidate_workers(1, 1 << 20, None) == 1
    calls = []
    n = 256
    fastbfly.factorize(np.fft.fft(np.eye(n)), perm="auto", progress=lambda d, t: calls.append((d, t)))
    splits = n.bit_length() - 2
    assert calls == [(done, splits) for done in range(1, splits + 1)] * 8


def test_a_candidate_with_nan_raises_from_a_worker():
    n = 256
    Z = np.fft.fft(np.eye(n))
    Z[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastbfly.factorize(Z, perm="auto")
