"""`factorize`'s scan of the matrix (scale check and deferred-error checksum) in a
thread of its own, in parallel with the serial splits below a threaded root
(`fastbfly.factorization._scan_in_background`)."""

import threading

import numba
import numpy as np
import pytest

import fastbfly
from fastbfly import factorization as FZ

pytestmark = pytest.mark.skipif(numba.get_num_threads() < 2, reason="needs two Numba threads")


@pytest.fixture
def small_threaded_root(monkeypatch):
    """Make 64 × 64 matrices count as large (threaded root), and record the thread and
    the moment of every scan."""
    monkeypatch.setattr(FZ, "SPLIT_PARALLEL_MIN_NODE_SIZE", 1 << 10)
    events = []
    scan, split = FZ._scan, FZ._split

    def recording_scan(matrix):
        events.append(("scan", threading.current_thread().name))
        return scan(matrix)

    def recording_split(*args):
        events.append(("split", threading.current_thread().name))
        return split(*args)

    monkeypatch.setattr(FZ, "_scan", recording_scan)
    monkeypatch.setattr(FZ, "_split", recording_split)
    return events


def scan_first(matrix, **options):
    """`factorize` with the scan before the splits (the path without spare threads)."""
    FZ._SCAN_FIRST.forced = True
    try:
        return fastbfly.factorize(matrix, **options)
    finally:
        FZ._SCAN_FIRST.forced = False


def assert_same_factors(B, C):
    for f, g in zip(B.factors, C.factors):
        np.testing.assert_array_equal(f.values, g.values)
    assert B.info["relative_error"] == C.info["relative_error"]


def test_scan_runs_after_the_root_in_its_own_thread(small_threaded_root):
    """The scan starts after the root split, in its own thread, and the result is the
    scan-first one bit for bit."""
    F = np.fft.fft(np.eye(64))
    B = fastbfly.factorize(F, perm="bitrev")
    events = list(small_threaded_root)
    assert events[0] == ("split", "MainThread")
    assert ("scan", "fastbfly-scan") in events
    assert ("scan", "MainThread") not in events
    small_threaded_root.clear()
    C = scan_first(F, perm="bitrev")
    assert small_threaded_root[0] == ("scan", "MainThread")
    assert_same_factors(B, C)
    assert B.info["relative_error"] < 1e-14


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_a_matrix_out_of_range_starts_again_scaled(small_threaded_root, scale):
    """Entries near the ends of the range, found by the background scan after the
    splits: the factorization starts again, scaled first, and equals that path's."""
    F = np.fft.fft(np.eye(64)) * scale
    B = fastbfly.factorize(F, perm="bitrev")
    scans = [thread for kind, thread in small_threaded_root if kind == "scan"]
    assert scans == ["fastbfly-scan", "MainThread"]
    assert not getattr(FZ._SCAN_FIRST, "forced", False)  # reset after the restart
    assert_same_factors(B, scan_first(F, perm="bitrev"))
    assert B.info["relative_error"] < 1e-14


def test_deferred_error_checksum_from_the_background_scan(small_threaded_root):
    """The checksum taken by the background scan guards the deferred error: read
    before a change it is the error, after an in-place change a RuntimeError."""
    rng = np.random.default_rng(0)
    Z = np.fft.fft(np.eye(64)) + 0.01 * rng.standard_normal((64, 64))
    B = fastbfly.factorize(Z, perm="bitrev")
    assert ("scan", "fastbfly-scan") in small_threaded_root
    C = fastbfly.factorize(Z, perm="bitrev")
    expected = np.linalg.norm(Z - B.toarray()) / np.linalg.norm(Z)
    assert B.info["relative_error"] == pytest.approx(expected, rel=1e-10)
    Z[3, 4] += 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        C.info["relative_error"]


def test_not_finite_matrix_raises_before_any_scan(small_threaded_root):
    F = np.fft.fft(np.eye(64))
    F[5, 7] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastbfly.factorize(F, perm="bitrev")
    assert [kind for kind, _ in small_threaded_root] == ["split"]


@pytest.mark.parametrize("case", ["one thread", "two candidates", "row_perm", "small", "padded"])
def test_scan_first_where_there_is_no_spare_core(small_threaded_root, monkeypatch, case):
    """One Numba thread (one core), several candidates, a row permutation, a root too
    small to be threaded, or padding: the scan comes first, in the caller's thread."""
    F = np.fft.fft(np.eye(64))
    options = {"perm": "bitrev"}
    if case == "one thread":
        monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    elif case == "two candidates":
        options["perm"] = ["bitrev", None]
    elif case == "row_perm":
        options["row_perm"] = np.arange(64)[::-1].copy()
    elif case == "small":
        monkeypatch.setattr(FZ, "SPLIT_PARALLEL_MIN_NODE_SIZE", 1 << 20)
    else:
        F = F[:61, :61]  # (prime: no chain without padding)
        options = {"pad": True, "n_factors": 6}
    fastbfly.factorize(F, **options)
    kinds = [event for event in small_threaded_root if event[0] == "scan"]
    assert kinds == [("scan", "MainThread")]
    assert small_threaded_root[0][0] == "scan"
