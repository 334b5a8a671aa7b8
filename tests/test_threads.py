"""Threads (issue 6, item 4): ``B @ x`` releases the GIL, is safe to call from many Python
threads at once, and is deterministic (bitwise) across runs with the same thread count.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import numba
import numpy as np
import pytest

import fastbfly.butterfly
from fastbfly import Butterfly, Chain, factorize

from conftest import random_array, random_factors

N_THREADS = 8
PRODUCTS_PER_THREAD = 100  # 20 for the large butterfly, whose products take milliseconds
# Sizes that make `Butterfly` pick its threaded kernels (when Numba has 2+ threads): one
# vector shares the product from PARALLEL_MIN_NNZ_VEC stored values (chains of 2 × 2
# blocks excepted: their one-vector kernel is serial at every size, so the threaded
# one-vector driver is exercised by a radix-4 chain), blocks from PARALLEL_MIN_WORK
# multiply-adds.
LARGE_N = 2**16  # square dyadic: 2 * 2**16 * 16 = 2**21 stored values; radix 4: the same
LARGE_NNZ = 2 * LARGE_N * 16
PARALLEL_COLUMNS = -(-getattr(fastbfly.butterfly, "PARALLEL_MIN_WORK", 1 << 24) // LARGE_NNZ)
assert LARGE_NNZ >= getattr(fastbfly.butterfly, "PARALLEL_MIN_NNZ_VEC", 1 << 21)


def make_shared(name: str):
    """A butterfly shared by all threads, and the operands they apply it to."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "small-complex-serial-kernels":
        chain, dtype, shape, x_dtypes = Chain.square_dyadic(256), np.complex128, None, [np.complex128, np.float64]
    elif name == "large-real-parallel-kernels":  # the threaded kernels (see LARGE_N)
        chain, dtype, shape, x_dtypes = Chain.square_dyadic(LARGE_N), np.float64, None, [np.float64]
    elif name == "large-radix-4-parallel-chain":  # the threaded general driver, one vector too
        radices = [4] * (LARGE_N.bit_length() // 2)
        chain, dtype, shape, x_dtypes = Chain.from_radices(radices, radices), np.float64, None, [np.float64]
    elif name == "float32-casts-in-threads":
        # float64 and complex operands make each thread want a cast copy of the factors
        chain, dtype, shape, x_dtypes = Chain.square_dyadic(512), np.float32, None, [np.float64, np.complex128]
    else:  # "rank-2-padded"
        chain, dtype, shape, x_dtypes = Chain([(1, 4, 8, 4), (4, 8, 4, 1)]), np.complex64, (13, 11), [np.complex64]
    m, n = chain.shape
    B = Butterfly(random_factors(rng, chain, dtype), perm=rng.permutation(n), row_perm=rng.permutation(m),
                  shape=shape)
    m, n = B.shape
    wide = PARALLEL_COLUMNS if name.startswith("large") else 3
    operands = []
    for x_dtype in x_dtypes:
        operands += [
            ("B@x", random_array(rng, n, x_dtype)),
            ("B.H@x", random_array(rng, m, x_dtype)),
            ("x@B", random_array(rng, m, x_dtype)),
            ("B@X", random_array(rng, (n, wide), x_dtype)),
            ("B.H@X", random_array(rng, (m, wide), x_dtype)),
            ("B@column", random_array(rng, (n, 1), x_dtype)),
            ("B.T@x", random_array(rng, m, x_dtype)),
        ]
    return B, operands


def apply(B, kind, x):
    if kind.startswith("B.H"):
        return B.H @ x
    if kind.startswith("B.T"):
        return B.T @ x
    if kind == "x@B":
        return x @ B
    return B @ x


SHARED = ["small-complex-serial-kernels", "large-real-parallel-kernels", "large-radix-4-parallel-chain",
          "float32-casts-in-threads", "rank-2-padded"]


@pytest.mark.parametrize("name", SHARED)
def test_many_threads_share_one_butterfly(name):
    """8 threads x 100 products (vectors and blocks, forward, adjoint, transpose, mixed
    dtypes) of one shared `Butterfly`, all bitwise equal to the serial results (8 x 20
    for the butterfly large enough for the threaded kernels)."""
    B, operands = make_shared(name)
    # the adjoint/transpose objects are built per call, as users do; the serial
    # reference runs on a second, identical butterfly so that B's cast cache starts empty
    twin = Butterfly(B.factors, perm=B.perm, row_perm=B.row_perm, shape=B.shape)
    expected = [apply(twin, kind, x).tobytes() for kind, x in operands]
    start = threading.Barrier(N_THREADS)
    mismatches, errors, done = [], [], [0] * N_THREADS

    products = PRODUCTS_PER_THREAD if not name.startswith("large") else 20

    def work(thread):
        try:
            start.wait()
            for i in range(products):
                k = (thread * 5 + i) % len(operands)
                kind, x = operands[k]
                if apply(B, kind, x).tobytes() != expected[k]:
                    mismatches.append((thread, i, kind))
                done[thread] += 1
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not mismatches
    assert done == [products] * N_THREADS


@pytest.mark.parametrize("name", ["large-real-parallel-kernels", "large-radix-4-parallel-chain"])
def test_results_do_not_depend_on_the_number_of_numba_threads(name):
    """The threaded kernels split rows between tasks but add in the same order, so the
    product is bitwise the same with 1 and with all threads (and so across machines
    with different core counts)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here")
    B, operands = make_shared(name)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = [apply(B, kind, x).tobytes() for kind, x in operands]
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        threaded = [apply(B, kind, x).tobytes() for kind, x in operands]
    finally:
        numba.set_num_threads(previous)
    assert serial == threaded


def test_factorize_from_several_threads():
    """Concurrent factorizations (the parallel block kernel inside the real one) give the
    serial factors bitwise, and do not disturb each other's input."""
    rng = np.random.default_rng(44)
    matrices = [rng.standard_normal((256, 256)), rng.standard_normal((128, 128)) + 0j]
    expected = [[f.values.tobytes() for f in factorize(M, perm="bitrev").factors] for M in matrices]
    results, errors = {}, []

    def work(thread):
        try:
            M = matrices[thread % 2]
            results[thread] = [f.values.tobytes() for f in factorize(M, perm="bitrev").factors]
        except BaseException as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for thread, factors in results.items():
        assert factors == expected[thread % 2], thread


# ============================================================================ the GIL
def increments_per_second(action) -> float:
    """How fast a pure-Python counter thread counts while ``action`` runs in this thread."""
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.02)
        before, started = counter[0], time.perf_counter()
        action()
        after, elapsed = counter[0], time.perf_counter() - started
    finally:
        stop.set()
        spinner.join()
    return (after - before) / elapsed


@numba.njit(nogil=False, cache=False)
def _spin_holding_the_gil(n):
    total = 0.0
    for i in range(n):
        total += math.sin(i)
    return total


def median_rate(action, repeats=3) -> float:
    return float(np.median([increments_per_second(action) for _ in range(repeats)]))


def test_products_release_the_gil():
    """A pure-Python thread keeps counting while ``B @ X`` runs; a Numba function
    compiled without ``nogil`` (the control) stops it, so the measurement can tell."""
    rng = np.random.default_rng(7)
    B = Butterfly(random_factors(rng, Chain.square_dyadic(LARGE_N), np.float64), perm=rng.permutation(LARGE_N))
    X = rng.standard_normal((LARGE_N, PARALLEL_COLUMNS))
    x = X[:, 0].copy()
    B @ X, B @ x  # compile outside the measurement
    _spin_holding_the_gil(10)
    started = time.perf_counter()
    _spin_holding_the_gil(2_000_000)
    spins = max(1, int(2_000_000 * 0.25 / (time.perf_counter() - started)))  # about 0.25 s

    def products():
        stop = time.perf_counter() + 0.25
        while time.perf_counter() < stop:
            B @ X
            B @ x

    free = median_rate(lambda: time.sleep(0.25))
    holding = median_rate(lambda: _spin_holding_the_gil(spins))
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)  # serial kernels: one core for the product, one for the counter
        serial = median_rate(products)
    finally:
        numba.set_num_threads(previous)
    threaded = median_rate(products)  # the threaded kernels compete with the counter for cores
    report = f"counts/s: free {free:.3g}, GIL held {holding:.3g}, serial {serial:.3g}, threaded {threaded:.3g}"
    assert holding < 0.2 * free, report  # the control: holding the GIL stops the counter
    assert serial > 0.4 * free, report
    assert threaded > 0.2 * free, report


# ============================================================================ determinism
DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, json, numba, numpy as np
    from fastbfly import Butterfly, Chain, factorize

    def digests():
        rng = np.random.default_rng(2024)
        out = {"threads": numba.get_num_threads()}
        M = rng.standard_normal((512, 512))  # parallel block kernel (node size >= 2**16)
        B = factorize(M, perm="auto")
        out["factorize-real"] = hashlib.sha256(b"".join(f.values.tobytes() for f in B.factors)).hexdigest()
        out["error-real"] = B.info["relative_error"].hex()
        C = factorize(rng.standard_normal((256, 256)) + 1j * rng.standard_normal((256, 256)), tree="left-to-right")
        out["factorize-complex"] = hashlib.sha256(b"".join(f.values.tobytes() for f in C.factors)).hexdigest()
        out["error-complex"] = C.info["relative_error"].hex()
        chain = Chain.square_dyadic(2**16)  # threaded product kernels (see LARGE_N)
        factors = [rng.standard_normal(tuple(p)) for p in chain]
        from fastbfly import Factor
        L = Butterfly([Factor(p, v) for p, v in zip(chain, factors)], perm=rng.permutation(2**16))
        x = rng.standard_normal(2**16)
        X = rng.standard_normal((2**16, COLUMNS))
        # (one vector of a 2 × 2 chain is serial at every size: the threaded one-vector
        # driver is exercised by a radix-4 chain of as many values)
        radix4 = Chain.from_radices([4] * 8, [4] * 8)
        R = Butterfly([Factor(p, rng.standard_normal(tuple(p))) for p in radix4])
        for name, y in [("L@x", L @ x), ("L@X", L @ X), ("L.H@X", L.H @ X), ("B@x", B @ x[:512]),
                        ("C.H@X", C.H @ X[:256, :5]), ("R@x", R @ x), ("R.H@x", R.H @ x)]:
            out[name] = hashlib.sha256(y.tobytes()).hexdigest()
        return out

    if __name__ == "__main__":
        print(json.dumps(digests()))
""").replace("COLUMNS", str(PARALLEL_COLUMNS))


def test_bitwise_identical_across_fresh_processes(tmp_path):
    """Two fresh interpreters with the same thread count give bitwise-identical factors,
    reported errors and products (threaded kernels included).  They share this process's
    Numba cache, so the first may compile and the second loads: freshly compiled and
    cached code must agree too."""
    script = tmp_path / "digests.py"
    script.write_text(DETERMINISM_SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    outputs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(json.loads(run.stdout))
    assert outputs[0]["threads"] == 2
    assert outputs[0] == outputs[1]
    # and this process agrees too when its thread count is the same
    if numba.get_num_threads() == 2:
        namespace = {"__name__": "digests"}
        exec(DETERMINISM_SCRIPT, namespace)
        assert namespace["digests"]() == outputs[0]


def test_workqueue_threading_layer_from_many_threads(tmp_path):
    """Numba's fallback threading layer must survive threaded products and
    factorizations launched from several Python threads at once (here the operands are
    large enough for the threaded kernels, so the launches really overlap): without
    the lock of `fastbfly._kernels._ParallelKernel` the interpreter aborts (SIGABRT,
    "Numba workqueue threading layer is terminating: Concurrent access has been
    detected")."""
    script = textwrap.dedent("""
        import threading, numba, numpy as np
        import fastbfly
        from fastbfly import Butterfly, Chain, Factor, _kernels
        rng = np.random.default_rng(3)
        chain = Chain.square_dyadic(LARGE_N)
        B = Butterfly([Factor(p, rng.standard_normal(tuple(p))) for p in chain])
        X = rng.standard_normal((LARGE_N, COLUMNS))
        Z = rng.standard_normal((256, 256))  # one 2**16-entry node: the threaded split
        assert _kernels.parallel_launch_needs_lock()  # no parallel region run yet
        expected = (B @ X).tobytes()
        expected_factors = [f.values.tobytes() for f in fastbfly.factorize(Z, n_factors=2).factors]
        assert _kernels.parallel_launch_needs_lock()  # the layer is workqueue
        bad = []
        def work(k):
            for _ in range(3):
                if k % 2 and (B @ X).tobytes() != expected:
                    bad.append(1)
                if not k % 2 and [f.values.tobytes() for f in fastbfly.factorize(Z, n_factors=2).factors] != expected_factors:
                    bad.append(1)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        def compiled(kernel):
            dispatcher = getattr(kernel, "_dispatcher", kernel)  # under a _SuperwordKernel
            return sum(dispatcher.stats.cache_misses.values())
        threaded = [name for name in dir(_kernels) if name.endswith("_parallel")
                    and compiled(getattr(_kernels, name))]
        print(numba.threading_layer(), len(bad), bool(threaded))
    """).replace("LARGE_N", str(LARGE_N)).replace("COLUMNS", str(PARALLEL_COLUMNS))
    # a private cache: the layer must not depend on which kernel variants are cached
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # the threaded kernels ran (compiled in the private cache), and every result agreed
    assert result.stdout.split() == ["workqueue", "0", "True"]


WAIT_POLICY_SCRIPT = textwrap.dedent("""
    import ctypes, os, numpy as np, numba
    import fastbfly
    B = fastbfly.dft_butterfly(4096)
    numba.set_num_threads(2)
    B @ np.ones((4096, 256), complex)  # a threaded product: the OpenMP runtime starts
    print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"),
          numba.threading_layer(), flush=True)
    if numba.threading_layer() == "omp":
        ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # (verbose, to stderr)
""")


@pytest.mark.parametrize("preset, spin_preset", [(None, None), ("ACTIVE", None),
                                                  ("PASSIVE", None), (None, "20000")])
def test_openmp_threads_wait_briefly_unless_the_user_chose(preset, spin_preset,
                                                          tmp_path_factory):
    """``import fastbfly`` makes OpenMP's idle threads spin only briefly (1000 spins)
    and then sleep, instead of spinning for milliseconds (they stole the cores of other
    processes: see ``fastbfly/__init__.py``), and the runtime Numba loads really uses
    that setting; a policy or spin count set by the user is kept, and a policy set by
    the user gets libgomp's own spin count for it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    if spin_preset is not None:
        env["GOMP_SPINCOUNT"] = spin_preset
    # (one private cache for the four cases: the kernels compile once)
    cache = tmp_path_factory.getbasetemp() / "wait-policy-cache"
    env.update(NUMBA_NUM_THREADS="2", NUMBA_CACHE_DIR=str(cache))
    result = subprocess.run([sys.executable, "-c", WAIT_POLICY_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    policy, spin, layer = result.stdout.split()
    expected = preset or "PASSIVE"
    expected_spin = spin_preset or ("1000" if preset is None else "None")
    assert (policy, spin) == (expected, expected_spin)
    if layer == "omp":  # libgomp's own report of the settings it runs with
        assert f"OMP_WAIT_POLICY = '{expected}'" in result.stderr
        if expected_spin != "None":
            assert f"GOMP_SPINCOUNT = '{expected_spin}'" in result.stderr
