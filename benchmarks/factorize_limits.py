#!/usr/bin/env python
"""Factorization at scale (issue 4): the limits of ``fastbfly.factorize`` in one run.

    python benchmarks/factorize_limits.py                      # fastbfly rows (~5 min idle)
    python benchmarks/factorize_limits.py --peers              # + pyfaust / lazylinop at N=4096
    python benchmarks/factorize_limits.py --quick              # small sizes (smoke test)
    python benchmarks/factorize_limits.py --out docs/factorize_limits.md

Measured, each case in a fresh subprocess (so peak memory is per case and the thread
count can differ per case):

* DFT (``perm="bitrev"``) N = 4096 complex128, balanced and left-to-right trees, and the
  same with 10% complex Gaussian noise (relative Frobenius norm);
* N = 16384 complex128 (4.3 GB input): time and peak resident memory against the input;
* single against double precision: complex64 / complex128 (DFT) and float32 / float64
  (Hadamard) at N = 4096 and 8192;
* ``NUMBA_NUM_THREADS=1`` against 2 on the same large factorization;
* with ``--peers`` (run by the peers' Python, ``--peer-python``): pyfaust
  ``fact.butterfly(type="bbtree")`` and ``fact.fdb(hierarchical_order="left-to-right")``,
  lazylinop ``ksd`` (balanced and l2r) on the same DFT, one timed run each (they are slow).

Times are medians of ``--repeat`` runs inside the subprocess after a small warm-up
factorization (JIT and Numba cache) and one untimed run at the full size, whose time is
shown in its own column (the first large call of a process: threaded kernels loaded from
the Numba cache, fresh pages); wall clock (``time.perf_counter``); the CPU time of
the process (``time.process_time``, all threads) is shown beside it: on a loaded machine
wall time includes waiting for a core, CPU time does not.  Peak memory
is the subprocess's ``ru_maxrss``: the input (built in place, without temporaries of its
size) included, so it is compared with the input's size; the increase of the peak over
the resident size just before the first timed factorization is shown too.  The load
average is printed before and after: on a shared machine it says how far to trust the
times; ratios within one run are more robust than times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.abspath(__file__)
PEER_PYTHON = "/work/peervenv/bin/python"


# --------------------------------------------------------------------------- inputs
def dft(n: int, dtype) -> np.ndarray:
    """``F[j, k] = exp(-2πi jk / n)`` built in place, row block by row block (no
    temporary of the input's size, so peak memory is the input plus the factorization)."""
    table = np.exp(-2j * np.pi * np.arange(n) / n).astype(dtype)
    matrix = np.empty((n, n), dtype=dtype)
    k = np.arange(n, dtype=np.int64)
    for j in range(n):
        matrix[j] = table[(j * k) % n]
    return matrix


def hadamard(n: int, dtype) -> np.ndarray:
    """Sylvester Hadamard matrix, doubled in place."""
    matrix = np.empty((n, n), dtype=dtype)
    matrix[0, 0] = 1
    size = 1
    while size < n:
        matrix[:size, size:2 * size] = matrix[:size, :size]
        matrix[size:2 * size, :size] = matrix[:size, :size]
        np.negative(matrix[:size, :size], out=matrix[size:2 * size, size:2 * size])
        size *= 2
    return matrix


def make_input(case: dict) -> tuple[np.ndarray, str | None]:
    """The matrix of a case and the column permutation that makes it a butterfly."""
    n, dtype = case["n"], np.dtype(case["dtype"])
    if case["matrix"] == "dft":
        matrix, perm = dft(n, dtype), "bitrev"
    elif case["matrix"] == "hadamard":
        matrix, perm = hadamard(n, dtype), None
    else:
        raise ValueError(case["matrix"])
    if case.get("noise"):
        add_noise(matrix, case["noise"])
    return matrix, perm


def add_noise(matrix: np.ndarray, level: float, rows: int = 256) -> None:
    """``matrix += level ‖matrix‖ / ‖N‖ · N`` for Gaussian ``N`` (complex for complex
    matrices), in place, ``rows`` rows at a time: two passes over the same seeded noise
    (its norm, then the update), so no temporary of the matrix's size inflates the peak
    memory measured for the factorization."""
    def chunks():
        rng = np.random.default_rng(0)
        for first in range(0, matrix.shape[0], rows):
            shape = (min(rows, matrix.shape[0] - first), matrix.shape[1])
            noise = rng.standard_normal(shape)
            if matrix.dtype.kind == "c":
                noise = noise + 1j * rng.standard_normal(shape)
            yield first, noise

    noise_norm = math.sqrt(sum(float(np.vdot(noise, noise).real) for _, noise in chunks()))
    scale = level * float(np.linalg.norm(matrix)) / noise_norm
    for first, noise in chunks():
        matrix[first:first + noise.shape[0]] += (scale * noise).astype(matrix.dtype)


# --------------------------------------------------------------------------- worker
def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _current_rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(case: dict) -> dict:
    warnings.simplefilter("ignore")
    lib = case["lib"]
    matrix, perm = make_input(case)
    result = {"input_bytes": int(matrix.nbytes)}
    small, small_perm = make_input(dict(case, n=512, noise=0))
    if lib == "fastbfly":
        import numba

        import fastbfly

        def run():
            return fastbfly.factorize(matrix, tree=case["tree"], perm=perm)

        fastbfly.factorize(small, tree=case["tree"], perm=small_perm)  # JIT / cache warm-up
        error = lambda B: B.info["relative_error"]  # noqa: E731
        result["threads"] = numba.get_num_threads()
        with contextlib.suppress(ValueError):
            result["threading_layer"] = numba.threading_layer()
        repeat = case["repeat"]
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            _peer(case, small, small_perm)[0]()  # the same warm-up for the peers
            run, error = _peer(case, matrix, perm)
        repeat = 1
    del small
    # One untimed run at the full size for every library (reported on its own): it
    # loads the threaded kernels the small warm-up does not use, and the first large
    # allocations of a process fault their pages in; the median is over the runs after.
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run()
    result["first_run"] = time.perf_counter() - started
    rss_before = _current_rss()
    seconds, cpu_seconds = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            handle = run()
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        if _ is repeat - 1:
            result["error"] = float(error(handle))
        del handle
    result["seconds"] = seconds
    result["cpu_seconds"] = cpu_seconds
    result["peak_rss"] = _peak_rss()
    # what the factorization itself added on top of the input (and the warm-up)
    result["peak_increase"] = max(result["peak_rss"] - rss_before, 0)
    return result


def _peer(case, matrix, perm):
    """pyfaust / lazylinop calls on the same problem, as compare.py makes them."""
    n = matrix.shape[0]
    norm = np.linalg.norm(matrix)
    if case["lib"] == "pyfaust":
        import pyfaust.fact

        if case["tree"] == "balanced":
            run = lambda: pyfaust.fact.butterfly(matrix, type="bbtree", perm="bitrev")  # noqa: E731
        else:
            run = lambda: pyfaust.fact.fdb(  # noqa: E731
                matrix, n_factors=int(math.log2(n)), hierarchical_order="left-to-right",
                bit_rev_perm=True)
        return run, lambda F: np.linalg.norm(F.toarray() - matrix) / norm
    from lazylinop.basicops import bitrev
    from lazylinop.butterfly import Chain, ksd

    index = np.asarray(bitrev(n) @ np.arange(n)).astype(np.int64)
    order = "balanced" if case["tree"] == "balanced" else "l2r"
    run = lambda: ksd(matrix[:, index], Chain.square_dyadic(matrix.shape), order=order)  # noqa: E731
    return run, lambda L: np.linalg.norm(L.toarray()[:, np.argsort(index)] - matrix) / norm


# --------------------------------------------------------------------------- driver
def run_case(case: dict, python: str) -> dict:
    env = dict(os.environ)
    if case.get("threads"):
        env["NUMBA_NUM_THREADS"] = str(case["threads"])
    completed = subprocess.run([python, HERE, "--_worker", json.dumps(case)], env=env,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["?"]
        return {"failed": f"exit {completed.returncode}: {tail[0][:200]}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine_info() -> str:
    import numba

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as file:
        memory = f"{int(file.readline().split()[1]) / 2**20:.1f} GiB"
    load = os.getloadavg()
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores, {memory} RAM; load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at start\n"
            f"Python {platform.python_version()}, numpy {np.__version__}, numba "
            f"{numba.__version__}; NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')} "
            f"(default {numba.config.NUMBA_NUM_THREADS})")


def cases(args) -> list[dict]:
    big, mid, base = (1024, 512, 256) if args.quick else (16384, 8192, 4096)
    r = args.repeat

    def case(key, matrix, n, dtype, tree="balanced", noise=0.0, threads=None, lib="fastbfly",
             repeat=r):
        return {"key": key, "lib": lib, "matrix": matrix, "n": n, "dtype": dtype,
                "tree": tree, "noise": noise, "threads": threads, "repeat": repeat}

    rows = [
        case("dft-balanced", "dft", base, "complex128"),
        case("dft-l2r", "dft", base, "complex128", tree="left-to-right"),
        case("dft-noisy", "dft", base, "complex128", noise=0.1),
        case("dft-noisy-l2r", "dft", base, "complex128", tree="left-to-right", noise=0.1),
    ]
    for n in (base, mid):
        rows += [case(f"dft-c64-{n}", "dft", n, "complex64"),
                 case(f"dft-c128-{n}", "dft", n, "complex128"),
                 case(f"had-f32-{n}", "hadamard", n, "float32"),
                 case(f"had-f64-{n}", "hadamard", n, "float64")]
    rows += [case("threads-1", "dft", mid, "complex128", threads=1),
             case("threads-2", "dft", mid, "complex128", threads=2),
             case("big", "dft", big, "complex128", repeat=max(1, min(r, args.big_repeat)))]
    if args.peers:
        rows += [case("pyfaust-balanced", "dft", base, "complex128", lib="pyfaust"),
                 case("pyfaust-l2r", "dft", base, "complex128", tree="left-to-right", lib="pyfaust"),
                 case("lazylinop-balanced", "dft", base, "complex128", lib="lazylinop"),
                 case("lazylinop-l2r", "dft", base, "complex128", tree="left-to-right", lib="lazylinop")]
    return rows


def describe(case) -> str:
    noise = f" + {case['noise']:.0%} noise" if case["noise"] else ""
    threads = f", {case['threads']} thread{'s' * (case['threads'] != 1)}" if case["threads"] else ""
    matrix = "DFT" if case["matrix"] == "dft" else "Hadamard"
    return f"{case['lib']}: {matrix} N={case['n']} {case['dtype']}{noise}, {case['tree']}{threads}"


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.3f} s"


def report(args) -> str:
    header = machine_info()
    print(header, flush=True)
    results = {}
    rows = ["| case | runs | median time | all times (s) | first full-size run | CPU time (median) | "
            "error | peak RSS / input | peak increase during factorize / input | threads, layer |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases(args):
        python = args.peer_python if case["lib"] != "fastbfly" else sys.executable
        result = run_case(case, python)
        results[case["key"]] = result
        if "failed" in result:
            row = f"| {describe(case)} | – | failed: {result['failed']} | | | | | | | |"
        else:
            median = statistics.median(result["seconds"])
            result["median"] = median
            layer = (f"{result.get('threads', '–')}, {result.get('threading_layer', '–')}"
                     if case["lib"] == "fastbfly" else "–")
            row = (f"| {describe(case)} | {len(result['seconds'])} | {median:.3f} s | "
                   f"{', '.join(f'{s:.3f}' for s in result['seconds'])} | "
                   f"{_seconds(result.get('first_run'))} | "
                   f"{statistics.median(result['cpu_seconds']):.3f} s | {result['error']:.1e} | "
                   f"{result['peak_rss'] / 2**30:.2f} GiB / {result['input_bytes'] / 2**30:.2f} GiB "
                   f"= {result['peak_rss'] / result['input_bytes']:.2f}x | "
                   f"{result['peak_increase'] / result['input_bytes']:.2f}x | {layer} |")
        rows.append(row)
        print(row, flush=True)
    load = os.getloadavg()
    goals = _goals(results, args)
    return "\n\n".join([
        "```\n" + header + f"\nload average at end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n```",
        "\n".join(rows), "## Goals (issue 4)", "\n".join(goals)])


def _goals(results, args) -> list[str]:
    def t(key):
        return results.get(key, {}).get("median")

    def cpu(key):
        samples = results.get(key, {}).get("cpu_seconds")
        return statistics.median(samples) if samples else None

    lines = ["| goal | measured (wall) | met (wall) | CPU-time ratio |", "|---|---|---|---|"]

    def ratio_goal(label, numerator, denominator, target, above=True):
        a, b = t(numerator), t(denominator)
        if a is None or b is None:
            lines.append(f"| {label} | not measured | – | – |")
            return
        value = a / b
        met = value >= target if above else value <= target
        cpu_a, cpu_b = cpu(numerator), cpu(denominator)
        cpu_ratio = f"{cpu_a / cpu_b:.2f}x" if cpu_a and cpu_b else "–"
        lines.append(f"| {label} | {value:.2f}x ({a:.3f} s / {b:.3f} s) | "
                     f"{'yes' if met else 'no'} | {cpu_ratio} |")

    base = 256 if args.quick else 4096
    mid = 512 if args.quick else 8192
    ratio_goal("DFT+10% noise within 2x of noiseless (balanced)", "dft-noisy", "dft-balanced", 2.0, above=False)
    ratio_goal("DFT+10% noise within 2x of noiseless (left-to-right)", "dft-noisy-l2r", "dft-l2r", 2.0, above=False)
    for n in (base, mid):
        ratio_goal(f"complex64 >= 1.7x faster than complex128, N={n}", f"dft-c128-{n}", f"dft-c64-{n}", 1.7)
        ratio_goal(f"float32 >= 1.7x faster than float64, N={n}", f"had-f64-{n}", f"had-f32-{n}", 1.7)
    ratio_goal(f"2 threads >= 1.6x faster than 1 (DFT N={mid})", "threads-1", "threads-2", 1.6)
    if t("threads-2") and cpu("threads-2"):
        # CPU time / wall time of the 2-thread run: ~2 if both cores were ours throughout
        lines.append(f"| ... cores actually used by the 2-thread run (CPU / wall) | "
                     f"{cpu('threads-2') / t('threads-2'):.2f} | – | – |")
    big = results.get("big", {})
    if "median" in big:
        lines.append(f"| N={'1024' if args.quick else '16384'} complex128 under 30 s | {big['median']:.1f} s | "
                     f"{'yes' if big['median'] < 30 else 'no'} | – |")
        ratio = big["peak_rss"] / big["input_bytes"]
        lines.append(f"| ... peak memory <= 2x the input | {ratio:.2f}x | {'yes' if ratio <= 2 else 'no'} | – |")
    if args.peers:
        ratio_goal("balanced: >= 30x faster than pyfaust butterfly(bbtree)", "pyfaust-balanced", "dft-balanced", 30)
        ratio_goal("balanced: >= 20x faster than lazylinop ksd", "lazylinop-balanced", "dft-balanced", 20)
        ratio_goal("left-to-right: >= 30x faster than pyfaust fdb(left-to-right)", "pyfaust-l2r", "dft-l2r", 30)
        ratio_goal("left-to-right: >= 20x faster than lazylinop ksd(l2r)", "lazylinop-l2r", "dft-l2r", 20)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--big-repeat", type=int, default=3, help="runs of the largest case")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--peers", action="store_true", help="also time pyfaust and lazylinop (slow)")
    parser.add_argument("--peer-python", default=PEER_PYTHON)
    parser.add_argument("--out", help="also write the markdown report here")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return 0
    text = "# Factorization limits\n\n" + report(args) + "\n"
    if args.out:
        with open(args.out, "w") as file:
            file.write(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
