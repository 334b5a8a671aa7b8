"""Numba cache robustness (issue 6, item 7).

A fresh interpreter runs a small factorization and product with ``NUMBA_CACHE_DIR``
pointing to a cache that is cold, warm, stale, corrupted in several ways, or read-only.
It must always import fastbfly and give bitwise the results of this process; a warm
cache must actually be used (Numba's dispatcher statistics: hits, no misses).

All the interpreters are started once per module, two at a time, so that the slow part
(compiling the kernels in each cold process) overlaps.

Read-only directories: ``chmod`` does not stop root, so as root the directories are
made read-only with a read-only bind mount in a private mount namespace (``unshare``);
an unprivileged user cannot be used here because the interpreter lives under ``/root``.
Without either, the read-only cases are skipped with the reason.
"""

from __future__ import annotations

import concurrent.futures
import glob
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import fastbfly

SCRIPT = textwrap.dedent("""
    import hashlib, json, time
    started = time.perf_counter()
    import numba
    import numpy as np
    import fastbfly
    from fastbfly import _kernels
    imported = time.perf_counter()

    def digest():
        rng = np.random.default_rng(0)
        B = fastbfly.factorize(rng.standard_normal((16, 16)))
        y = B @ rng.standard_normal(16)
        h = hashlib.sha256(b"".join(f.values.tobytes() for f in B.factors))
        h.update(y.tobytes())
        return h.hexdigest()

    def threaded_digest():
        # Sizes for which fastbfly picks its threaded kernels (2+ Numba threads), with the
        # argument types of `digest`: same Numba signatures, other kernel variants, and
        # only those (two factors: one split, of the whole matrix, at the smallest square
        # power of two that the split kernels thread).
        from fastbfly.factorization import SPLIT_PARALLEL_MIN_NODE_SIZE
        side = 1 << (SPLIT_PARALLEL_MIN_NODE_SIZE.bit_length() // 2)
        rng = np.random.default_rng(1)
        B = fastbfly.factorize(rng.standard_normal((side, side)), n_factors=2)
        n = 2**16  # one vector: 2**21 stored values, in 4 x 4 blocks (a chain of 2 x 2
        # blocks takes its serial one-vector kernel at every size)
        radices = [4] * 8
        L = fastbfly.Butterfly([fastbfly.Factor(p, rng.standard_normal(tuple(p)))
                                for p in fastbfly.Chain.from_radices(radices, radices)])
        y = L @ rng.standard_normal(n)
        h = hashlib.sha256(b"".join(f.values.tobytes() for f in B.factors))
        h.update(y.tobytes())
        return h.hexdigest()

    if __name__ == "__main__":
        import sys
        threaded = sys.argv[1:] == ["threaded"]
        result = {"digest": threaded_digest() if threaded else digest(),
                  "import_seconds": imported - started, "work_seconds": time.perf_counter() - imported,
                  "stats": {}}
        try:
            result["threading_layer"] = numba.threading_layer()  # set once threads were launched
        except ValueError:
            result["threading_layer"] = None
        for name in dir(_kernels):
            dispatcher = getattr(_kernels, name)
            dispatcher = getattr(dispatcher, "_dispatcher", dispatcher)  # under a _SuperwordKernel
            stats = None if isinstance(dispatcher, type) else getattr(dispatcher, "stats", None)
            if stats is not None and (stats.cache_hits or stats.cache_misses):
                result["stats"][name] = [sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]
        print(json.dumps(result))
""")


_DIGESTS = {}


def expected_digest(threaded: bool = False) -> str:
    if threaded not in _DIGESTS:
        namespace = {"__name__": "cache_script"}
        exec(SCRIPT, namespace)
        _DIGESTS[threaded] = namespace["threaded_digest" if threaded else "digest"]()
    return _DIGESTS[threaded]


def cache_files(directory) -> dict:
    """Relative path -> size of every file under ``directory``."""
    files = {}
    for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
        if os.path.isfile(path):
            files[os.path.relpath(path, directory)] = os.path.getsize(path)
    return files


# ============================================================================ read-only dirs
def _can_bind_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = tempfile.mkdtemp()
    try:
        command = (f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && "
                   f"! touch {probe}/x 2>/dev/null")
        return subprocess.run(["unshare", "--mount", "sh", "-c", command], capture_output=True).returncode == 0
    finally:
        shutil.rmtree(probe)


READ_ONLY_METHOD = "bind-mount" if _can_bind_read_only() else ("chmod" if os.geteuid() != 0 else None)
# Numba's fallback cache location is the package's __pycache__: the package directory
# is made read-only too, so that the fallback goes to HOME (or nowhere).
PACKAGE_DIR = os.path.dirname(os.path.abspath(fastbfly.__file__))


def command_with_read_only(read_only: list, argv: list) -> list:
    """``argv`` run with the directories ``read_only`` not writable (see module docstring)."""
    if not read_only:
        return argv
    if READ_ONLY_METHOD == "bind-mount":
        mounts = " && ".join(f"mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}'" for d in read_only)
        quoted = " ".join(f"'{a}'" for a in argv)
        return ["unshare", "--mount", "sh", "-c", f"{mounts} && exec {quoted}"]
    for directory in read_only:  # unprivileged: permissions are enough
        os.chmod(directory, 0o555)
    return argv


# ============================================================================ the runs
def _garbage(path, data):
    return np.random.default_rng(len(path)).integers(0, 256, max(len(data), 64), dtype=np.uint8).tobytes()


def _stale_index(path, data):
    """The same index with another source stamp, as after editing the source file."""
    if not path.endswith(".nbi"):
        return data
    stream = io.BytesIO(data)
    version = pickle.load(stream)
    stamp, overloads = pickle.loads(stream.read())
    return pickle.dumps(version) + pickle.dumps(((stamp[0] - 3600.0,) + tuple(stamp[1:]), overloads))


# name -> how every cache file (path, bytes) -> new bytes
CORRUPTIONS = {
    "stale-index": _stale_index,
    "garbage-index": lambda path, data: _garbage(path, data) if path.endswith(".nbi") else data,
    "garbage-data": lambda path, data: _garbage(path, data) if path.endswith(".nbc") else data,
    "truncated": lambda path, data: data[: len(data) // 2],
    "empty": lambda path, data: b"",
}
# (A flipped byte inside the compiled code is not in this list: depending on where it
# lands it is caught, harmless, or executed; Numba keeps no checksums to detect it.)
READ_ONLY_CASES = ["warm-read-only-cache", "nothing-writable"]


def run_script(script, cache_dir, home, read_only=(), arguments=()):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, HOME=home, NUMBA_NUM_THREADS="2")
    env.pop("XDG_CACHE_HOME", None)
    argv = command_with_read_only(list(read_only), [sys.executable, script, *arguments])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {result.returncode}",
                "returncode": result.returncode}
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every interpreter run of this module: name -> its JSON report (or error)."""
    root = tmp_path_factory.mktemp("numba-cache")
    script = str(root / "run.py")
    with open(script, "w") as file:
        file.write(SCRIPT)

    def fresh(name):
        directory = root / name
        directory.mkdir()
        (directory / "cache").mkdir()
        (directory / "home").mkdir()
        return str(directory / "cache"), str(directory / "home")

    results = {}
    cold_cache, cold_home = fresh("cold")
    results["cold"] = run_script(script, cold_cache, cold_home)
    results["cold-files"] = cache_files(cold_cache)
    jobs = {"warm": (script, cold_cache, cold_home)}
    for name, change in CORRUPTIONS.items():
        cache, home = fresh(name)
        shutil.copytree(cold_cache, cache, dirs_exist_ok=True)
        for path in glob.glob(os.path.join(cache, "**", "*.nb[ic]"), recursive=True):
            with open(path, "rb") as file:
                data = file.read()
            with open(path, "wb") as file:
                file.write(change(path, data))
        jobs[name] = (script, cache, home)
    if READ_ONLY_METHOD is not None:
        cache, home = fresh("warm-read-only-cache")
        shutil.copytree(cold_cache, cache, dirs_exist_ok=True)
        results["warm-read-only-cache-files-before"] = cache_files(cache)
        jobs["warm-read-only-cache"] = (script, cache, home, [cache, PACKAGE_DIR] if READ_ONLY_METHOD == "bind-mount"
                                        else [cache])
        if READ_ONLY_METHOD == "bind-mount":  # unprivileged users usually own the package dir
            cache, home = fresh("nothing-writable")
            jobs["nothing-writable"] = (script, cache, home, [cache, home, PACKAGE_DIR])
    # serial and threaded variants of one kernel in one cache: threaded work on a cache
    # that holds the serial variants, and serial work after the threaded variants
    cache, home = fresh("threaded-on-serial-cache")
    shutil.copytree(cold_cache, cache, dirs_exist_ok=True)
    jobs["threaded-on-serial-cache"] = (script, cache, home, (), ("threaded",))
    threaded_first, threaded_home = fresh("threaded-first")

    def threaded_then_serial():
        first = run_script(script, threaded_first, threaded_home, (), ("threaded",))
        return first, run_script(script, threaded_first, threaded_home)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_script, *job) for name, job in jobs.items()}
        pair = pool.submit(threaded_then_serial)
        results.update({name: future.result() for name, future in futures.items()})
        results["threaded-first"], results["serial-after-threaded"] = pair.result()
    results["warm-files"] = cache_files(cold_cache)
    if "warm-read-only-cache" in jobs:
        results["warm-read-only-cache-files"] = cache_files(jobs["warm-read-only-cache"][1])
    return results


def assert_correct(report, threaded=False):
    assert "error" not in report, report
    assert report["digest"] == expected_digest(threaded)


# ============================================================================ tests
def test_cold_cache_is_filled_and_results_are_correct(runs):
    assert_correct(runs["cold"])
    assert any(misses for hits, misses in runs["cold"]["stats"].values())
    names = runs["cold-files"]
    assert any(name.endswith(".nbi") for name in names) and any(name.endswith(".nbc") for name in names)


def test_second_process_hits_the_warm_cache(runs):
    """Every kernel the work needs comes from the cache: hits, and no compilation."""
    assert_correct(runs["warm"])
    stats = runs["warm"]["stats"]
    compiled_cold = {name for name, (hits, misses) in runs["cold"]["stats"].items() if misses}
    assert stats, "no kernel statistics"
    assert all(misses == 0 for hits, misses in stats.values()), stats
    # the entry points (the helpers are inlined into them) are loaded, not compiled
    assert {name for name, (hits, misses) in stats.items() if hits} <= compiled_cold
    assert sum(hits for hits, misses in stats.values()) >= 2
    assert runs["warm"]["work_seconds"] < runs["cold"]["work_seconds"]


def test_warm_runs_do_not_grow_the_cache(runs):
    assert runs["warm-files"] == runs["cold-files"]


def test_stale_cache_is_recompiled(runs):
    """An index whose source stamp no longer matches (the source changed) is ignored."""
    report = runs["stale-index"]
    assert_correct(report)
    assert any(misses for hits, misses in report["stats"].values())


@pytest.mark.parametrize("name", sorted(name for name in CORRUPTIONS if name != "stale-index"))
def test_corrupted_cache_still_gives_correct_results(runs, name):
    """Unreadable index or data files (Numba's loader raises UnpicklingError, EOFError,
    UnicodeDecodeError...): the kernels are compiled again and the results are right."""
    assert_correct(runs[name])
    assert any(misses for hits, misses in runs[name]["stats"].values())


# ============================================================================ in this process
def _twice(x):
    return 2.0 * x


def _cache_files_of(dispatcher):
    cache_file = dispatcher._cache._cache_file
    return cache_file._index_path, glob.glob(os.path.join(os.path.dirname(cache_file._index_path),
                                                         "*_twice*.nbc"))


@pytest.mark.parametrize("corruption", sorted(name for name in CORRUPTIONS if name != "stale-index"))
def test_tolerant_cache_recompiles_unreadable_files(corruption, tmp_path, monkeypatch):
    """The same, in this process, on a one-line kernel: a fresh dispatcher over a
    corrupted cache compiles (a miss, no exception), gives the right result, and
    leaves a cache that the next dispatcher loads (a hit)."""
    from numba.core import config
    from fastbfly import _kernels

    if config.DISABLE_JIT:
        pytest.skip("no dispatchers with NUMBA_DISABLE_JIT")
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    first = _kernels._jit(_twice, "_tolerant_cache_test")
    assert isinstance(first._cache, _kernels._TolerantCache)
    assert first(3.0) == 6.0 and first.stats.cache_misses
    index, data = _cache_files_of(first)
    assert os.path.exists(index) and data
    for path in [index, *data]:
        with open(path, "rb") as file:
            content = file.read()
        with open(path, "wb") as file:
            file.write(CORRUPTIONS[corruption](path, content))
    second = _kernels._jit(_twice, "_tolerant_cache_test")
    assert second(4.0) == 8.0
    assert sum(second.stats.cache_misses.values()) == 1 and not second.stats.cache_hits
    third = _kernels._jit(_twice, "_tolerant_cache_test")
    assert third(5.0) == 10.0
    assert sum(third.stats.cache_hits.values()) == 1 and not third.stats.cache_misses


def test_tolerant_cache_save_failures_leave_the_kernel_uncached(tmp_path, monkeypatch):
    """A cache directory that turns unwritable after the locator chose it (a full or
    read-only volume): the kernel still compiles and runs, uncached."""
    from numba.core import config
    from fastbfly import _kernels

    if config.DISABLE_JIT:
        pytest.skip("no dispatchers with NUMBA_DISABLE_JIT")
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    kernel = _kernels._jit(_twice, "_tolerant_cache_save_test")

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kernel._cache._cache_file, "_save_data", refuse)
    assert kernel(1.5) == 3.0
    assert glob.glob(os.path.join(str(tmp_path), "**", "*_twice*.nbc"), recursive=True) == []
    # and with an unreadable index as well (the save is retried on a fresh index, and
    # fails again)
    kernel = _kernels._jit(_twice, "_tolerant_cache_save_test")
    index = kernel._cache._cache_file._index_path
    with open(index, "wb") as file:
        file.write(b"garbage")
    monkeypatch.setattr(kernel._cache._cache_file, "_save_data", refuse)
    assert kernel(2.5) == 5.0 and kernel.stats.cache_misses
    assert glob.glob(os.path.join(str(tmp_path), "**", "*_twice*.nbc"), recursive=True) == []


def _read_only(name):
    if READ_ONLY_METHOD is None:
        pytest.skip("running as root without mount namespaces: chmod cannot make a directory "
                    "read-only for root, and the interpreter under /root is not usable by other users")
    if name not in READ_ONLY_CASES:
        raise AssertionError(name)


def test_warm_read_only_cache_dir(runs):
    """A warm cache on a read-only volume: fastbfly imports and computes correctly, and
    the files are untouched (Numba does not use a cache it cannot write: it falls back
    to ``~/.cache``)."""
    _read_only("warm-read-only-cache")
    assert_correct(runs["warm-read-only-cache"])
    assert runs["warm-read-only-cache-files"] == runs["warm-read-only-cache-files-before"]


def test_nothing_writable_still_imports(runs):
    """No writable cache location at all (read-only cache, package directory and HOME,
    as in a read-only container image): the kernels compile without a cache."""
    if READ_ONLY_METHOD != "bind-mount":
        pytest.skip("needs read-only bind mounts (root with mount namespaces)")
    assert_correct(runs["nothing-writable"])


# The serial and parallel=True builds of a kernel come from one Python function, and
# Numba's cache keys entries by name, line, bytecode and signature, not by options:
# unless each build has its own name, one loads the other's machine code.


def _variant_hits(report, suffix):
    """Cache hits of the kernels named ``*_<suffix>`` (serial or parallel variants)."""
    return {name: hits for name, (hits, misses) in report["stats"].items() if name.endswith(suffix) and hits}


def test_threaded_kernels_are_not_loaded_from_serial_cache_entries(runs):
    """The cache holds only serial kernels: the threaded ones must be compiled."""
    report = runs["threaded-on-serial-cache"]
    assert_correct(report, threaded=True)
    assert _variant_hits(report, "_parallel") == {}


def test_serial_kernels_are_not_loaded_from_threaded_cache_entries(runs):
    """The cache holds only threaded kernels: the serial ones must be compiled."""
    assert_correct(runs["threaded-first"], threaded=True)
    assert not any(name.endswith("_serial") for name in runs["threaded-first"]["stats"])
    report = runs["serial-after-threaded"]
    assert_correct(report)
    assert _variant_hits(report, "_serial") == {}
