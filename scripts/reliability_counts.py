"""Count the bad inputs the reliability tests try, per category, and run the load fuzzers.

    python scripts/reliability_counts.py            # counts, then the fuzzers (~15-30 s)
    python scripts/reliability_counts.py --no-fuzz  # counts only (collection, ~5 s)

The counts come from collecting the parametrized tests (one bad input per test case),
so they are exactly what ``pytest`` runs; cases marked as known package bugs
(``xfail(strict=True)``) are counted separately.  The fuzzers are derandomized, so the
number of examples and their outcomes are the same on every run
(``FASTBFLY_FUZZ_EXAMPLES`` changes the run length).  Issue 6 asks for these figures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

# category -> test functions ("file::function") whose every case is one bad input
CATEGORIES = {
    "patterns (Pattern.of, Chain, Factor)": [
        "test_reliability.py::test_bad_pattern_is_rejected"],
    "factor values (Factor, Butterfly)": [
        "test_reliability.py::test_bad_factor_values_are_rejected",
        "test_reliability.py::test_non_finite_factor_values_are_rejected"],
    "chains and factor lists (Chain, Butterfly)": [
        "test_reliability.py::test_bad_chain_is_rejected",
        "test_reliability.py::test_bad_factor_list_is_rejected"],
    "permutations (Butterfly, factorize) x layouts": [
        "test_reliability.py::test_bad_permutation_is_rejected"],
    "Butterfly shape": [
        "test_reliability.py::test_bad_shape_is_rejected"],
    "operands (B @ x, B.H @ x, x @ B, methods, LinearOperator) x layouts": [
        "test_reliability.py::test_bad_operand_is_rejected",
        "test_reliability.py::test_bad_operand_kind_is_rejected"],
    "matrices (factorize) x layouts": [
        "test_reliability.py::test_bad_matrix_is_rejected"],
    "other factorize arguments (chain, tree, rank, perm names, memory_limit)": [
        "test_reliability.py::test_bad_factorize_argument_is_rejected"],
    "files and paths (load)": [
        "test_reliability.py::test_bad_file_is_rejected",
        "test_reliability.py::test_bad_load_path_gives_a_clean_error",
        "test_fuzz.py::test_member_that_is_not_npy_gives_value_error",
        "test_io.py::test_inconsistent_files_give_value_errors",
        "test_io.py::test_pickled_object_array_is_refused",
        "test_io.py::test_truncated_files",
        "test_io.py::test_foreign_files",
        "test_io.py::test_npy_file_is_not_a_butterfly",
        "test_io.py::test_corrupted_compressed_file"],
    "interrupted saves": [
        "test_reliability.py::test_interrupted_save_keeps_the_previous_file_and_leaves_no_temporary",
        "test_reliability.py::test_save_killed_midway_keeps_the_previous_file"],
    "Numba caches (stale, corrupted, read-only, serial/parallel builds)": [
        "test_cache.py::test_stale_cache_is_recompiled",
        "test_cache.py::test_corrupted_cache_still_gives_correct_results",
        "test_cache.py::test_warm_read_only_cache_dir",
        "test_cache.py::test_nothing_writable_still_imports",
        "test_cache.py::test_threaded_kernels_are_not_loaded_from_serial_cache_entries",
        "test_cache.py::test_serial_kernels_are_not_loaded_from_threaded_cache_entries",
        "test_cache.py::test_tolerant_cache_recompiles_unreadable_files",
        "test_cache.py::test_tolerant_cache_save_failures_leave_the_kernel_uncached"],
}


class _Collector:
    def __init__(self):
        self.items = []

    def pytest_collection_modifyitems(self, items):
        self.items = list(items)


def collect() -> list:
    files = sorted({name.split("::")[0] for names in CATEGORIES.values() for name in names})
    collector = _Collector()
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):  # pytest's list of test ids
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", ROOT]
                           + [os.path.join(TESTS, f) for f in files], plugins=[collector])
    if code != 0:
        raise SystemExit(f"collection failed (pytest exit code {code}):\n{listing.getvalue()}")
    return collector.items


def counts(items) -> list:
    by_function = collections.defaultdict(lambda: [0, 0])
    for item in items:
        key = f"{os.path.basename(item.path)}::{item.originalname}"
        xfail = item.get_closest_marker("xfail")
        by_function[key][1 if xfail is not None and xfail.kwargs.get("strict") else 0] += 1
    rows = []
    for category, functions in CATEGORIES.items():
        missing = [f for f in functions if f not in by_function]
        if missing:
            raise SystemExit(f"tests not found (renamed?): {missing}")
        rows.append((category, sum(by_function[f][0] for f in functions),
                     sum(by_function[f][1] for f in functions)))
    return rows


def run_fuzzers():
    sys.path.insert(0, TESTS)
    import test_fuzz

    fuzzers = [test_fuzz.test_fuzz_raw_bytes, test_fuzz.test_fuzz_npz_members, test_fuzz.test_fuzz_npz_arrays,
               test_fuzz.test_fuzz_arbitrary_bytes]
    started = time.perf_counter()
    for fuzzer in fuzzers:
        fuzzer()
    return time.perf_counter() - started, test_fuzz


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-fuzz", action="store_true", help="only count the parametrized bad inputs")
    arguments = parser.parse_args()

    rows = counts(collect())
    width = max(len(r[0]) for r in rows)
    print(f"\n{'bad inputs tried, per category':<{width}}  {'cases':>6}  {'of which known bugs (xfail)':>27}")
    for category, passing, bugs in rows:
        print(f"{category:<{width}}  {passing + bugs:>6}  {bugs:>27}")
    print(f"{'total':<{width}}  {sum(p + b for _, p, b in rows):>6}  {sum(b for *_, b in rows):>27}")

    if arguments.no_fuzz:
        return
    seconds, test_fuzz = run_fuzzers()
    print(f"\nload fuzzing (derandomized Hypothesis, FASTBFLY_FUZZ_EXAMPLES={test_fuzz.FUZZ_EXAMPLES}): "
          f"{sum(test_fuzz.EXAMPLES_RUN.values())} files in {seconds:.1f} s")
    for fuzzer in ("raw", "member", "arrays", "bytes"):
        outcomes = {o: n for (f, o), n in sorted(test_fuzz.OUTCOMES.items()) if f == fuzzer}
        summary = ", ".join(f"{n} {o}" for o, n in outcomes.items())
        print(f"  {fuzzer:<7} {test_fuzz.EXAMPLES_RUN[fuzzer]:>5} files: {summary}")


if __name__ == "__main__":
    main()
