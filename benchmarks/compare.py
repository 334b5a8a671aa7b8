#!/usr/bin/env python
"""Side-by-side benchmark of fastbfly against its peers (pyfaust, lazylinop, scipy).

One run prints a markdown report: a header with the machine and library versions, then
three tables (factorize the DFT; ``B @ x`` for one complex vector; ``B @ X`` for 64).

    python benchmarks/compare.py                  # full run (~8 min on 2 idle cores)
    python benchmarks/compare.py --quick          # small sizes only, CI smoke test
    python benchmarks/compare.py --out report.md  # also write the markdown there

Method
------
* Every measurement runs in a fresh subprocess (this same file, ``--_worker``), so peak
  memory can be measured per library, OpenMP settings can differ per row, and a peer
  that crashes or hangs (pyfaust segfaults on some inputs) only loses its own row.
* Times are ``time.perf_counter`` medians of ``--repeat`` samples after one warm-up
  call (which also triggers Numba JIT compilation).  A sample of a fast call is the
  mean over a loop of as many calls as fit in ~``--min-sample`` seconds.
* Factorizations take one sample per run (they are slow); after a first full-size run
  (shown on its own), runs are repeated up to ``--fact-repeat`` times while the total
  stays within ``--fact-budget`` seconds, and the number of runs is shown.
* The ratio column is ``t_row / t_fastbfly`` for the same task and size: above 1 means
  fastbfly is faster.  Rows run one after the other, so a ratio between two rows mixes
  two moments of the machine (the 2-worker FFT alone varied 0.9-1.8 ms at N = 4096 from
  run to run).  The goal table (section 4) therefore times each goal head to head in
  one process (`worker_paired`): ``--pair-rounds`` rounds, each timing fastbfly and the
  peer once in rotating order, and reports the median and quartiles of the per-round
  ratios; a goal counts as met robustly only when its worse quartile meets it.  Two
  threads against one for ``B @ X`` are timed the same way, in the same rounds: the
  default against ``numba.set_num_threads(1)``, for ``B @ X`` and for
  ``B.dot(X, out=Y)`` with ``Y`` reused (no fresh result array per call).
* Peers that cannot be imported give a "not installed" row; nothing else is skipped
  silently (skips say why).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
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

import numpy as np

HERE = os.path.abspath(__file__)


# --------------------------------------------------------------------------- helpers
def _maxrss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _maxrss_bytes()


@contextlib.contextmanager
def os_stdout_silenced():
    """Silence fd 1 at the OS level: pyfaust's C++ ``butterfly`` prints
    "factorization #k" with std::cout, which ``contextlib.redirect_stdout`` cannot catch."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        try:  # flush C stdio buffers into /dev/null before restoring the real stdout
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except Exception:
            pass
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def dft_matrix(n: int) -> np.ndarray:
    """Unnormalised DFT ``F[k, l] = exp(-2iπ kl/n)``, built in row blocks so that no
    temporary larger than a few MB raises the peak RSS above the matrix itself."""
    F = np.empty((n, n), dtype=np.complex128)
    cols = np.arange(n, dtype=np.int64)
    step = max(1, (1 << 18) // n)
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step), dtype=np.int64)
        F[start:start + len(rows)] = np.exp((-2j * np.pi / n) * ((rows[:, None] * cols) % n))
    return F


def bitrev_indices(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def dft_csr_chain_closed_form(n: int) -> list:
    """DFT as CSR factors from the closed form of DESIGN.md §6 (used only if fastbfly is
    not importable): F = T_J ⋯ T_1 P with (P x) = x[bitrev]."""
    import scipy.sparse as sp

    mats = []
    J = n.bit_length() - 1
    for ell in range(1, J + 1):
        s = 1 << (ell - 1)
        om = np.exp(-2j * np.pi * np.arange(s) / (2 * s))
        blk = sp.bmat([[sp.identity(s), sp.diags(om)], [sp.identity(s), sp.diags(-om)]])
        mats.append(sp.kron(sp.identity(n >> ell), blk, format="csr"))
    mats = mats[::-1]  # left-most first: T_J ... T_1
    P = sp.csr_matrix((np.ones(n), (np.arange(n), bitrev_indices(n))), shape=(n, n))
    mats.append(P.astype(np.complex128))
    return mats


def time_call(fn, repeat: int, min_sample: float):
    """Warm up once, then return (median seconds per call, calls per sample, all samples)."""
    fn()  # warm-up: JIT compilation, caches, lazy initialisation
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    loops = max(1, int(math.ceil(min_sample / max(single, 1e-7))))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples), loops, samples


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- worker side
def _versions() -> dict:
    out = {}
    for name in ("numpy", "scipy", "numba", "pyfaust", "lazylinop", "fastbfly"):
        try:
            with warnings.catch_warnings(), os_stdout_silenced():
                warnings.simplefilter("ignore")
                mod = __import__(name)
            v = getattr(mod, "__version__", None)
            if v is None and name == "pyfaust":
                v = mod.version()
            out[name] = str(v)
        except Exception as exc:  # noqa: BLE001 - any import failure means "not installed"
            out[name] = f"not installed ({type(exc).__name__})"
    return out


def worker_info(spec):
    import numba

    res = {"versions": _versions(), "numba_threads": numba.get_num_threads()}
    try:
        import fastbfly

        src = os.path.dirname(os.path.dirname(os.path.abspath(fastbfly.__file__)))
        git = ["git", "-C", src]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "fastbfly"],
                               capture_output=True, text=True).stdout.strip()
        res["fastbfly_source"] = (f"{src}" + (f" (git {commit}{', uncommitted changes in fastbfly/' if dirty else ''})"
                                             if commit else " (not a git checkout)"))
    except Exception:  # noqa: BLE001
        res["fastbfly_source"] = "not importable"
    layer_from = None
    try:  # run fastbfly's parallel matmat kernel, then ask which layer served it
        import fastbfly

        B = fastbfly.dft_butterfly(4096)
        X = np.ones((4096, 64), dtype=np.complex128)
        B @ X
        res["threading_layer"] = numba.threading_layer()
        layer_from = "after fastbfly B @ X (64 columns, N=4096)"
    except Exception:
        from numba import njit, prange

        @njit(parallel=True)
        def _k(a):
            s = 0.0
            for i in prange(a.shape[0]):
                s += a[i]
            return s

        _k(np.ones(1000))
        try:
            res["threading_layer"] = numba.threading_layer()
            layer_from = "after a test prange kernel (fastbfly kernel not parallel here)"
        except ValueError as exc:
            res["threading_layer"] = f"unknown ({exc})"
    res["threading_layer_from"] = layer_from
    return res


def _fact_callable(lib: str, variant: str):
    """Return (factorize(F) -> handle, handle -> dense approximation of F, note)."""
    if lib == "fastbfly":
        import fastbfly

        def run(M):
            return fastbfly.factorize(M, tree=variant, perm="bitrev")

        return run, (lambda B: B.toarray()), ""
    if lib == "pyfaust":
        import pyfaust.fact

        if variant.startswith("fdb-"):
            order = variant[4:]

            def run(M):
                with os_stdout_silenced():
                    return pyfaust.fact.fdb(M, n_factors=int(math.log2(M.shape[0])),
                                            hierarchical_order=order, bit_rev_perm=True)
        else:
            def run(M):
                with os_stdout_silenced():
                    return pyfaust.fact.butterfly(M, type=variant, perm="bitrev")

        return run, (lambda Fa: Fa.toarray()), ""
    if lib == "lazylinop":
        from lazylinop.basicops import bitrev
        from lazylinop.butterfly import Chain, ksd

        def perm_of(m):
            # lazylinop's own bit-reversal operator as an index vector: (P x)[i] = x[idx[i]]
            return np.asarray(bitrev(m) @ np.arange(m)).astype(np.int64)

        def run(M):
            # ksd has no permutation argument: factorize M[:, idx] = M P^T, so M ≈ L P.
            # The permuted copy is part of the timed and memory-measured work.
            return ksd(M[:, perm_of(M.shape[0])], Chain.square_dyadic(M.shape), order=variant)

        def densify(L):
            return L.toarray()[:, np.argsort(perm_of(L.shape[0]))]

        return run, densify, "ksd on F[:, bitrev] (copy included)"
    raise ValueError(lib)


def worker_fact(spec):
    lib, variant, n = spec["lib"], spec["variant"], spec["n"]
    warnings.simplefilter("ignore")
    try:
        run, densify, note = _fact_callable(lib, variant)
    except ImportError as exc:
        return {"status": "not installed", "note": str(exc)}
    # Warm-up on a small DFT: JIT compilation / lazy imports stay out of the timing and
    # out of the memory baseline.  (Not 2x2: pyfaust.butterfly segfaults on it.)
    run(dft_matrix(16))
    F = dft_matrix(n)
    gc.collect()
    # Peak memory: ru_maxrss (the kernel's high-water mark of resident memory, which sees
    # numpy, Numba-NRT and C++/OpenMP allocations alike; tracemalloc would miss the latter
    # two) after the first run, minus the current RSS just before it.  The baseline
    # process holds only the imports, the small warm-up and F, and F is built in row
    # blocks, so the earlier high-water mark is ~ the current RSS and the difference is
    # the extra memory the factorization needed at its peak (workspace + output).
    rss0 = _rss_bytes()
    peak0 = _maxrss_bytes()
    times = []
    t0 = time.perf_counter()
    out = run(F)
    times.append(time.perf_counter() - t0)
    peak_extra = _maxrss_bytes() - rss0
    # The first full-size run also loads code paths the small warm-up did not reach
    # (fastbfly: the threaded kernels from the Numba cache, 0.3 s at N = 4096): it is
    # reported on its own, and the median is over the runs after it, the same for every
    # library, when the budget allows any.
    budget, max_runs = spec["budget"], spec["repeat"]
    while len(times) < max_runs + 1 and sum(times) + statistics.median(times) <= budget:
        del out
        gc.collect()
        t0 = time.perf_counter()
        out = run(F)
        times.append(time.perf_counter() - t0)
    err = rel_err(densify(out), F)
    return {
        "status": "ok",
        "time": statistics.median(times[1:] or times),
        "first": times[0],
        "times": times[1:] or times,
        "err": err,
        "peak_extra_bytes": peak_extra,
        "baseline_slack_bytes": peak0 - rss0,
        "input_bytes": F.nbytes,
        "note": note,
    }


def _fastbfly_operator(variant: str, n: int):
    """``X -> B @ X`` for ``B = dft_butterfly(n)``; ``variant``: comma-separated options,
    ``out`` (``B.dot(X, out=Y)`` into one buffer per shape, reused from call to call, as
    a solver loop would) and ``1`` (one Numba thread for the call; `numba.set_num_threads`
    is per Python thread, so this times 1 thread against the default in one process)."""
    import numba

    import fastbfly

    B = fastbfly.dft_butterfly(n)
    options = set(variant.split(",")) - {""}
    if options - {"out", "1"}:
        raise ValueError(f"unknown fastbfly variant {variant!r}")
    buffers = {}  # with "out": one result array per shape, reused

    def product(X):
        if "out" not in options:
            return B @ X
        out = buffers.get(X.shape)
        if out is None:
            out = buffers[X.shape] = np.empty(X.shape, dtype=np.result_type(B.dtype, X.dtype))
        return B.dot(X, out=out)

    def one_thread(X):
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return product(X)
        finally:
            numba.set_num_threads(threads)

    return one_thread if "1" in options else product


def _matvec_operator(lib: str, variant: str, n: int):
    """Return (apply(X) callable factory, scale, note, wants_fortran).

    ``apply`` maps an (n,) or (n, k) complex array to ``scale * fft(X, axis=0)``."""
    if lib == "fastbfly":
        return _fastbfly_operator(variant, n), 1.0, "dft_butterfly(N)", False
    if lib == "csr":
        import scipy.sparse  # noqa: F401

        try:
            import fastbfly

            mats = fastbfly.dft_butterfly(n).tosparse()
            src = "fastbfly dft_butterfly(N).tosparse()"
        except ImportError:
            mats = dft_csr_chain_closed_form(n)
            src = "closed-form DFT factors (fastbfly absent)"
        mats = [m.tocsr() for m in mats]
        for m in mats:
            m.sort_indices()
        rev = mats[::-1]

        def apply(X):
            for m in rev:
                X = m @ X
            return X

        return apply, 1.0, f"{len(mats)} CSR matrices from {src}", False
    if lib == "pyfaust":
        import pyfaust

        if variant == "default":
            Fa = pyfaust.dft(n, normed=False)
            note = "pyfaust.dft(N, normed=False)"
        elif variant == "diag_opt":
            Fa = pyfaust.dft(n, normed=False, diag_opt=True)
            note = "pyfaust.dft(N, normed=False, diag_opt=True)"
        elif variant == "optimize_time":
            Fa = pyfaust.dft(n, normed=False)
            note = "pyfaust.dft(N, normed=False).optimize_time(mat=X)"  # done per X below
        else:
            raise ValueError(variant)
        return Fa, 1.0, note, True
    if lib == "lazylinop":
        import lazylinop.butterfly as lb

        ksm_args = {"backend": variant, "params": None}
        L = lb.dft(n, ksm_args=ksm_args)
        # lazylinop.butterfly.dft is the orthonormal DFT (F / sqrt(N)).
        return (lambda X: L @ X), 1.0 / math.sqrt(n), f"lazylinop.butterfly.dft(N, ksm_args={ksm_args})", False
    if lib == "dense":
        F = dft_matrix(n)
        return (lambda X: F @ X), 1.0, "numpy F @ x (BLAS zgemv/zgemm)", False
    if lib == "fft":
        import scipy.fft

        workers = int(variant)
        return (lambda X: scipy.fft.fft(X, axis=0, workers=workers)), 1.0, f"scipy.fft.fft(workers={workers})", False
    raise ValueError(lib)


def worker_matvec(spec):
    """Time ``op @ X`` for every k in spec["ks"] (k = 1: a 1-D vector) in one process."""
    lib, variant, n = spec["lib"], spec["variant"], spec["n"]
    warnings.simplefilter("ignore")
    try:
        op, scale, note, fortran = _matvec_operator(lib, variant, n)
    except ImportError as exc:
        return {"status": "not installed", "note": str(exc)}
    by_k = {}
    for k in spec["ks"]:
        rng = np.random.default_rng(k)
        X = rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))
        if k == 1:
            X = X[:, 0]
        elif fortran:
            X = np.asfortranarray(X)  # pyfaust wants Fortran order (conversion not timed)
        if lib == "pyfaust":
            Fa = op
            if variant == "optimize_time":  # pyfaust benchmarks its product modes on X itself
                with os_stdout_silenced():
                    Fa = Fa.optimize_time(mat=X.reshape(n, -1, order="F"))
            apply = (lambda F_: (lambda V: F_ @ V))(Fa)
        else:
            apply = op
        Y = apply(X)
        err = rel_err(np.asarray(Y), scale * np.fft.fft(X, axis=0))
        med, loops, samples = time_call(lambda: apply(X), spec["repeat"], spec["min_sample"])
        by_k[str(k)] = {"status": "ok", "time": med, "loops": loops, "samples": samples,
                        "err": err, "note": note}
    return {"status": "ok", "by_k": by_k}


def worker_paired(spec):
    """Head-to-head timing of the operators in ``spec["libs"]`` (``[lib, variant]``
    pairs) on one ``X`` in one process: ``spec["rounds"]`` rounds, each timing every
    operator once, in an order that rotates from round to round, so that a slow spell
    of the machine (other processes, frequency changes) hits all of them alike.  Per
    operator: the median and quartiles of its samples; per peer: the median and
    quartiles of the per-round ratios ``t_peer / t_first`` (the first operator is the
    reference).  A sample is one call, or a loop of calls filling ``min_sample``."""
    n, k = spec["n"], spec["k"]
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(k)
    X = rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))
    if k == 1:
        X = X[:, 0]
    names, calls, loops = [], [], []
    for lib, variant in spec["libs"]:
        try:
            op, scale, _, fortran = _matvec_operator(lib, variant, n)
        except ImportError:
            continue
        if fortran:  # (pyfaust: not used here)
            continue
        apply = (lambda op_: (lambda: op_(X)))(op)
        err = rel_err(np.asarray(apply()), scale * np.fft.fft(X, axis=0))
        if not err < 1e-6:
            return {"status": f"error: {lib} {variant} rel. error {err:.1e}"}
        apply()  # warm-up (JIT, plans, thread pools)
        t0 = time.perf_counter()
        apply()
        single = time.perf_counter() - t0
        names.append(f"{lib}:{variant}" if variant else lib)
        calls.append(apply)
        loops.append(max(1, int(math.ceil(spec["min_sample"] / max(single, 1e-7)))))
    samples = [[] for _ in calls]
    for r in range(spec["rounds"]):
        for j in range(len(calls)):
            i = (j + r) % len(calls)
            fn, count = calls[i], loops[i]
            t0 = time.perf_counter()
            for _ in range(count):
                fn()
            samples[i].append((time.perf_counter() - t0) / count)

    def quartiles(values):
        q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return [q1, q2, q3]

    out = {"status": "ok", "rounds": spec["rounds"], "load": _loadavg(), "ops": {}}
    for i, name in enumerate(names):
        entry = {"time": quartiles(samples[i]), "loops": loops[i], "samples": samples[i]}
        if i > 0:
            entry["ratio"] = quartiles([a / b for a, b in zip(samples[i], samples[0])])
        out["ops"][name] = entry
    return out


def worker_stream(spec):
    """STREAM-like copy bandwidth: ``np.copyto`` of a 256 MB float64 array (far larger
    than the caches), counted as bytes read + bytes written, median of 7."""
    src = np.ones(1 << 25)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # page in both arrays before timing
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return {"status": "ok", "bandwidth": 2 * src.nbytes / statistics.median(times)}


def worker_main(spec_json: str):
    spec = json.loads(spec_json)
    try:
        fn = {"info": worker_info, "fact": worker_fact, "matvec": worker_matvec,
              "paired": worker_paired, "stream": worker_stream}[spec["task"]]
        res = fn(spec)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        res = {"status": f"error: {type(exc).__name__}: {exc}"[:200]}
    with open(spec["result"], "w") as fh:
        json.dump(res, fh)


# --------------------------------------------------------------------------- driver side
def run_worker(spec: dict, env_extra: dict | None, timeout: float) -> dict:
    env = dict(os.environ)
    if env_extra:
        env.update(env_extra)
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        path = fh.name
    spec = dict(spec, result=path)
    try:
        proc = subprocess.run([sys.executable, HERE, "--_worker", json.dumps(spec)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, text=True)
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            return {"status": f"crashed (exit {proc.returncode}) {tail[0][:120]}"}
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout:.0f} s)"}
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _emit_product_goals(emit, sizes, product_sections, timeout, pair_rounds):
    """The product goals of issues 2 and 4, each timed head to head (`worker_paired`)."""
    stream = run_worker({"task": "stream"}, None, timeout)
    bandwidth = stream.get("bandwidth")

    emit("## 4. Product goals (issues 2 and 4), timed head to head")
    emit()
    if bandwidth:
        emit(f"STREAM-like copy bandwidth measured in this run: {bandwidth / 1e9:.1f} GB/s "
             "(`np.copyto` of 256 MB, read + write bytes). Bandwidth floor of one product = "
             "bytes of factor values (16 · 2N · log2 N) ÷ that bandwidth.")
        emit()
    ks = {k for _, k, _ in product_sections}
    cores = str(os.cpu_count())

    def paired(n, k, peers):
        """fastbfly against ``peers`` head to head (`worker_paired`): its median time and,
        per peer, the quartiles of the per-round ratios fastbfly ÷ peer."""
        res = run_worker({"task": "paired", "n": n, "k": k,
                          "libs": [["fastbfly", ""]] + [list(p) for p in peers],
                          "rounds": pair_rounds, "min_sample": 0.005}, None, timeout)
        if res.get("status") != "ok" or "fastbfly" not in res["ops"]:
            return None, {}, res.get("status", "?"), {}
        ratios = {name: [1 / r for r in entry["ratio"][::-1]]
                  for name, entry in res["ops"].items() if "ratio" in entry}
        times = {name: entry["time"][1] for name, entry in res["ops"].items()}
        samples = {name: entry["samples"] for name, entry in res["ops"].items()}
        return times, ratios, res["load"], samples

    def row(goal, n, k, peer, limit, larger_is_better=False, detail=""):
        """One goal on the ratio fastbfly ÷ ``peer`` (or its inverse), from `paired`."""
        times, ratios, load, _ = measured[(n, k)]
        q = ratios.get(peer)
        if q is None:
            emit(f"| {goal} | not measured in this run ({load}) | – | – |")
            return
        if larger_is_better:
            q = [1 / r for r in q[::-1]]
        met = q[1] >= limit if larger_is_better else q[1] <= limit
        robust = q[0] >= limit if larger_is_better else q[2] <= limit
        verdict = ("yes" if robust else "yes (median only)") if met else "**no**"
        emit(f"| {goal} | {q[1]:.2f} ({q[0]:.2f}–{q[2]:.2f}){detail} | "
             f"{fmt_time(times['fastbfly'])} vs {fmt_time(times[peer])}; load {load} | {verdict} |")

    def thread_row(goal, n, k, variant, limit=1.6):
        """One thread ÷ the default threads for the fastbfly ``variant`` ("" or "out"),
        from the per-round samples of both in `paired`."""
        times, _, load, samples = measured[(n, k)]
        threaded = f"fastbfly:{variant}" if variant else "fastbfly"
        single = f"fastbfly:{variant},1" if variant else "fastbfly:1"
        if single not in samples or threaded not in samples:
            emit(f"| {goal} | not measured in this run ({load}) | – | – |")
            return
        q1, q2, q3 = statistics.quantiles(
            [a / b for a, b in zip(samples[single], samples[threaded])], n=4, method="inclusive")
        verdict = ("yes" if q1 >= limit else "yes (median only)") if q2 >= limit else "**no**"
        emit(f"| {goal} | {q2:.2f} ({q1:.2f}–{q3:.2f}) | {fmt_time(times[threaded])} vs "
             f"{fmt_time(times[single])}; load {load} | {verdict} |")

    # 1 thread against the default, for B @ X and for B.dot(X, out=Y) (no fresh result
    # array, whose page faults cost both thread counts alike), in the same rounds.
    thread_peers = [("fastbfly", "1"), ("fastbfly", "out"), ("fastbfly", "out,1")]
    wanted = []
    for n in sizes:
        if 1 in ks and n == 4096:
            wanted.append((n, 1, [("csr", "")]))
        if 1 in ks and n == 16384:
            wanted.append((n, 1, [("csr", "")]))
        if 1 in ks and n == 1024:
            wanted.append((n, 1, [("fft", "1")]))
        for k in sorted(ks - {1}):
            if n in (4096, 16384):
                wanted.append((n, k, [("fft", cores), ("csr", "")] + thread_peers))
    measured = {(n, k): paired(n, k, peers) for n, k, peers in wanted}

    emit("Each goal below is timed head to head in one process (`worker_paired`): "
         f"{pair_rounds} rounds, each timing fastbfly and the peer once (order rotating), "
         "so a slow spell of the machine hits both. Shown: the median of the per-round "
         "ratios fastbfly ÷ peer (or its inverse where larger is better), with the "
         "quartiles in brackets, and the median times. \"yes\" = the quartile on the "
         "wrong side still meets the goal (met in ≥ 75% of rounds); \"yes (median "
         "only)\" = met by the median.")
    emit()
    emit("| goal | ratio, median (quartiles) | median times; load | met |")
    emit("|---|---|---|---|")
    for n, k, _ in wanted:
        if k == 1 and n == 4096:
            row("N=4096, one vector: CSR chain time ÷ fastbfly time ≥ 2", n, k, "csr", 2.0, True)
        elif k == 1 and n == 16384:
            times = measured[(n, k)][0]
            mine1 = times["fastbfly"] if times else None
            floor = 16 * 2 * n * int(math.log2(n)) / bandwidth if bandwidth else None
            if mine1 and floor:
                emit(f"| N=16384, one vector: fastbfly ÷ bandwidth floor ≤ 1.2 | "
                     f"{mine1 / floor:.2f} | {fmt_time(mine1)} vs floor {fmt_time(floor)} | "
                     f"{'yes' if mine1 / floor <= 1.2 else '**no**'} |")
            row("N=16384, one vector: fastbfly ÷ CSR chain ≤ 0.6", n, k, "csr", 0.6)
        elif k == 1:
            row("N=1024, one vector: fastbfly ÷ scipy.fft.fft ≤ 1.5", n, k, "fft:1", 1.5)
        else:
            row(f"N={n}, {k} vectors: fastbfly ÷ scipy.fft.fft(workers=-1) ≤ 1.0", n, k,
                f"fft:{cores}", 1.0)
            row(f"N={n}, {k} vectors: fastbfly ÷ CSR chain ≤ 0.3", n, k, "csr", 0.3)
            if int(cores) > 1:
                thread_row(f"N={n}, {k} vectors: 1 thread ÷ {cores} threads, `B @ X`, ≥ 1.6",
                           n, k, "")
                thread_row(f"N={n}, {k} vectors: 1 thread ÷ {cores} threads, "
                           "`B.dot(X, out=Y)` (Y reused), ≥ 1.6", n, k, "out")
    emit()


def _loadavg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_time(t: float) -> str:
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def fmt_ratio(t, ref, is_ref=False) -> str:
    if is_ref:
        return "1 (ref)"
    if t is None or ref is None:
        return "–"
    return f"{t / ref:.2f}×"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_sizes(text: str) -> list:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096,16384",
                   help="comma list of N for the B @ x / B @ X tables (default 1024,4096,16384)")
    p.add_argument("--fact-sizes", default="1024,4096",
                   help="comma list of N for the factorization table (default 1024,4096)")
    p.add_argument("--repeat", type=int, default=7, help="samples per timing (median reported)")
    p.add_argument("--fact-repeat", type=int, default=3, help="max runs per factorization")
    p.add_argument("--fact-budget", type=float, default=30.0,
                   help="seconds: stop repeating a factorization once the total would exceed this")
    p.add_argument("--min-sample", type=float, default=0.05,
                   help="seconds per timing sample (fast calls are looped)")
    p.add_argument("--pair-rounds", type=int, default=41,
                   help="rounds of the head-to-head timings behind the goal table")
    p.add_argument("--k", type=int, default=64, help="right-hand sides for the B @ X table")
    p.add_argument("--dense-max", type=int, default=4096, help="largest N for dense F @ x")
    p.add_argument("--slow-peers", action="store_true",
                   help="also run pyfaust butterfly(type='right') above N=1024 (≈75 s and 2 GB at "
                        "N=2048 on 2 cores: dense N×N factors) and pyfaust fdb(balanced)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per subprocess")
    p.add_argument("--sections", default="fact,matvec,matmat",
                   help="comma list among fact, matvec, matmat")
    p.add_argument("--quick", action="store_true",
                   help="small sizes only (CI smoke): N=256 factorization, N=1024 products")
    p.add_argument("--out", help="also write the markdown report to this file")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        worker_main(args._worker)
        return 0

    if args.quick:
        args.sizes, args.fact_sizes = "1024", "256"
        args.repeat = min(args.repeat, 3)
        args.fact_repeat = 1
        args.min_sample = min(args.min_sample, 0.02)
    sizes, fact_sizes = parse_sizes(args.sizes), parse_sizes(args.fact_sizes)
    sections = set(args.sections.split(","))

    omp_user = os.environ.get("OMP_NUM_THREADS")
    omp_default = omp_user if omp_user is not None else f"unset (= {os.cpu_count()} cores)"
    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    started = time.perf_counter()
    info = run_worker({"task": "info"}, None, args.timeout)
    v = info.get("versions", {})
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    emit("# fastbfly vs peers")
    emit()
    emit(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    emit(f"- command: `{' '.join([os.path.basename(sys.executable)] + sys.argv)}`")
    emit(f"- CPU: {cpu_model()}; {os.cpu_count()} logical cores ({affinity} usable); "
         f"platform {platform.platform()}; Python {platform.python_version()}")
    emit(f"- numba threads: {info.get('numba_threads', '?')}; threading layer: "
         f"{info.get('threading_layer', '?')} ({info.get('threading_layer_from', '')})")
    emit("- versions: " + ", ".join(f"{k} {v.get(k, '?')}" for k in
                                     ("fastbfly", "numpy", "scipy", "numba", "pyfaust", "lazylinop")))
    emit(f"- fastbfly imported from: {info.get('fastbfly_source', '?')}")
    emit(f"- OMP_NUM_THREADS: {omp_default}; NUMBA_NUM_THREADS: "
         f"{os.environ.get('NUMBA_NUM_THREADS', 'unset')}; rows marked `OMP=1` / `NUMBA=1` re-run "
         "with that variable set to 1 (pyfaust's 2-thread single-vector times are erratic; the "
         "fastbfly `NUMBA=1` row shows its serial kernels)")
    emit(f"- OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset')}, GOMP_SPINCOUNT: "
         f"{os.environ.get('GOMP_SPINCOUNT', 'unset')} when this script started; `import "
         "fastbfly` sets PASSIVE and 1000 spins in its own processes unless a policy is set (see "
         "fastbfly/__init__.py); peers' rows run in processes that do not import fastbfly, "
         "with their runtimes' defaults")
    emit(f"- timing: median of {args.repeat} samples after one warm-up call, each sample "
         f"≥ {args.min_sample * 1e3:.0f} ms of looped calls; factorizations: up to "
         f"{args.fact_repeat} runs within {args.fact_budget:.0f} s after a first full-size run "
         "(shown on its own: it also loads code the small warm-up did not reach), runs shown; ratio = t / t_fastbfly "
         "(> 1: fastbfly faster)")
    emit("- every row runs in its own fresh subprocess")
    load0 = _loadavg()
    emit(f"- load average (1/5/15 min) at start: {load0} — anything well above 0 means other "
         "processes share the cores and timings are noisy")
    emit()

    # ------------------------------------------------------------------ factorization
    if "fact" in sections:
        t_section = time.perf_counter()
        emit("## 1. Factorize the complex128 DFT (bit-reversal column permutation)")
        emit()
        emit("Error = ‖F − B‖_F / ‖F‖_F of the returned product. Peak mem = peak RSS increase "
             "during the first run (ru_maxrss after − RSS before, in a fresh process) / bytes "
             "of F (16·N² B).")
        emit()
        emit("| N | tree | implementation | time (median) | runs | first run | ratio | rel. error | peak mem / input | notes |")
        emit("|---|---|---|---|---|---|---|---|---|---|")
        rows_spec = [
            ("balanced", "fastbfly", "balanced", "fastbfly `factorize(F, tree='balanced', perm='bitrev')`"),
            ("balanced", "pyfaust", "bbtree", "pyfaust `fact.butterfly(F, type='bbtree', perm='bitrev')`"),
            ("balanced", "pyfaust", "fdb-balanced", "pyfaust `fact.fdb(F, n_factors=log2 N, hierarchical_order='balanced', bit_rev_perm=True)`"),
            ("balanced", "lazylinop", "balanced", "lazylinop `ksd(F[:, bitrev], Chain.square_dyadic, order='balanced')`"),
            ("left-to-right", "fastbfly", "left-to-right", "fastbfly `factorize(F, tree='left-to-right', perm='bitrev')`"),
            ("left-to-right", "pyfaust", "right", "pyfaust `fact.butterfly(F, type='right', perm='bitrev')`"),
            ("left-to-right", "pyfaust", "fdb-left-to-right", "pyfaust `fact.fdb(F, n_factors=log2 N, hierarchical_order='left-to-right', bit_rev_perm=True)`"),
            ("left-to-right", "lazylinop", "l2r", "lazylinop `ksd(F[:, bitrev], Chain.square_dyadic, order='l2r')`"),
        ]
        for n in fact_sizes:
            ref = {}
            for tree, lib, variant, label in rows_spec:
                if variant == "fdb-balanced" and not args.slow_peers:
                    continue  # same GB algorithm as lazylinop ksd(order='balanced'); slow
                if (lib == "pyfaust" and variant == "right" and n > 1024 and not args.slow_peers
                        and not v.get("pyfaust", "").startswith("not installed")):
                    emit(f"| {n} | {tree} | {label} | skipped | – | – | – | – | – | too slow: ≈10 s at "
                         "N=1024, ≈75 s and 2 GB RSS at N=2048 on 2 cores (keeps N×N dense factors); "
                         "`--slow-peers` runs it |")
                    continue
                res = run_worker({"task": "fact", "lib": lib, "variant": variant, "n": n,
                                  "repeat": args.fact_repeat, "budget": args.fact_budget},
                                 None, args.timeout)
                if res.get("status") != "ok":
                    emit(f"| {n} | {tree} | {label} | {res.get('status')} | – | – | – | – | – | {res.get('note', '')[:80]} |")
                    continue
                t = res["time"]
                if lib == "fastbfly":
                    ref[tree] = t
                mem = res["peak_extra_bytes"] / res["input_bytes"]
                note = res.get("note", "")
                if lib == "pyfaust":
                    note = (note + "; " if note else "") + f"OMP_NUM_THREADS {omp_default}"
                if res["baseline_slack_bytes"] > max(0.05 * res["input_bytes"], 32 << 20):
                    note += f"; baseline high-water mark {res['baseline_slack_bytes'] / 2**20:.0f} MB above RSS (peak may be under-counted)"
                note = note.lstrip("; ")
                emit(f"| {n} | {tree} | {label} | {fmt_time(t)} | {len(res['times'])} | "
                     f"{fmt_time(res['first'])} | {fmt_ratio(t, ref.get(tree), lib == 'fastbfly')} | {res['err']:.1e} | {mem:.2f}× | {note} |")
        emit()
        emit(f"_Section wall time {time.perf_counter() - t_section:.0f} s, load average now {_loadavg()}._")
        emit()

    # ------------------------------------------------------------------ products
    mv_rows = [
        ("fastbfly", "", "fastbfly `B @ x`", None),
        ("fastbfly", "", "fastbfly `B @ x`", {"NUMBA_NUM_THREADS": "1"}),
        ("csr", "", "scipy.sparse CSR chain", None),
        ("pyfaust", "default", "pyfaust `Faust @ x`", None),
        ("pyfaust", "default", "pyfaust `Faust @ x`", {"OMP_NUM_THREADS": "1"}),
        ("pyfaust", "diag_opt", "pyfaust diag_opt", None),
        ("pyfaust", "diag_opt", "pyfaust diag_opt", {"OMP_NUM_THREADS": "1"}),
        ("pyfaust", "optimize_time", "pyfaust optimize_time", None),
        ("lazylinop", "xp", "lazylinop butterfly.dft (backend xp)", None),
        ("lazylinop", "scipy", "lazylinop butterfly.dft (backend scipy)", None),
        ("dense", "", "dense `F @ x`", None),
        ("fft", "1", "scipy.fft.fft", None),
    ]
    product_sections = [(sec, k, title) for sec, k, title in (
        ("matvec", 1, "## 2. `B @ x`: one complex128 vector, B = DFT butterfly"),
        ("matmat", args.k, f"## 3. `B @ X`: {args.k} complex128 vectors (X is N × {args.k}, "
                           "C order)")) if sec in sections]
    if product_sections:
        t_section = time.perf_counter()
        rows = list(mv_rows) + [("fft", str(os.cpu_count()),
                                 f"scipy.fft.fft (workers={os.cpu_count()})", None)]
        # one subprocess per (implementation, N) measures every k; tables are printed after
        results = {}
        for n in sizes:
            for idx, (lib, variant, label, env_extra) in enumerate(rows):
                if lib == "dense" and n > args.dense_max:
                    continue
                ks = [k for _, k, _ in product_sections]
                if lib == "fft" and variant != "1":  # multi-worker FFT only matters for k > 1
                    ks = [k for k in ks if k > 1]
                if not ks:
                    continue
                res = run_worker({"task": "matvec", "lib": lib, "variant": variant, "n": n,
                                  "ks": ks, "repeat": args.repeat,
                                  "min_sample": args.min_sample}, env_extra, args.timeout)
                for k in ks:
                    results[(n, idx, k)] = (res["by_k"][str(k)] if res.get("status") == "ok"
                                            else res)
        t_section = time.perf_counter() - t_section
        for section, k, title in product_sections:
            emit(title)
            emit()
            emit("Rel. error = ‖y − scale·fft(x)‖/‖scale·fft(x)‖ (checks every operator is the "
                 "DFT; lazylinop's is orthonormal, scale 1/√N). pyfaust rows use `pyfaust.dft(N)` "
                 "(its closed-form DFT Faust, not a factorization: factorizing N=16384 would take "
                 "minutes and 4 GB); X is passed to pyfaust in Fortran order.")
            emit()
            emit("| N | implementation | time (median) | ratio | rel. error | notes |")
            emit("|---|---|---|---|---|---|")
            for n in sizes:
                ref = None
                for idx, (lib, variant, label, env_extra) in enumerate(rows):
                    res = results.get((n, idx, k))
                    if res is None:
                        continue
                    lab = label + "".join(f" `{key.split('_')[0]}={val}`"
                                          for key, val in (env_extra or {}).items())
                    if k > 1:
                        lab = lab.replace("@ x`", "@ X`")
                    if res.get("status") != "ok":
                        emit(f"| {n} | {lab} | {res.get('status')} | – | – | "
                             f"{res.get('note', '')[:80]} |")
                        continue
                    t = res["time"]
                    if lib == "fastbfly" and not env_extra:
                        ref = t
                    spread = (f"samples {fmt_time(min(res['samples']))}–"
                              f"{fmt_time(max(res['samples']))}")
                    emit(f"| {n} | {lab} | {fmt_time(t)} | {fmt_ratio(t, ref, lib == 'fastbfly' and not env_extra)} "
                         f"| {res['err']:.1e} | {res['note']}; {spread} |")
            emit()
        emit(f"_Sections 2–3 wall time {t_section:.0f} s, load average now {_loadavg()}._")
        emit()
        _emit_product_goals(emit, sizes, product_sections, args.timeout, args.pair_rounds)

    emit(f"_Total wall time: {time.perf_counter() - started:.0f} s; load average at the end: "
         f"{_loadavg()}._")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
