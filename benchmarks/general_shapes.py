#!/usr/bin/env python
"""Any shape, any rank (issue 3): speed of fastbfly on 768 x 3072 and accuracy/speed
against pyfaust ``fdb`` and lazylinop ``ksd`` on the same chains.

    python benchmarks/general_shapes.py               # both parts (part b needs the peers)
    python benchmarks/general_shapes.py --part a      # fastbfly only
    /work/peervenv/bin/python benchmarks/general_shapes.py --part b

Part a
    768 x 3072 float32 (ViT-Base MLP), automatic chain with 2, 3, 4 factors (rank 1) and
    3 factors rank 2: ``factorize`` time (median of ``--repeat`` runs after one
    warm-up) on a random dense W and on a random exact product of the chain (with its
    recovery error), then ``B @ X`` for 256 vectors against dense ``W @ X`` (numpy /
    BLAS), with ``B.nnz / W.size``.
Part b
    Random products on a chain plus 10% Gaussian noise (relative Frobenius norm),
    float64.  The chain is the one pyfaust's ``fdb`` chooses itself (``DebflyGen``
    smallest monotone chain for the size, number of factors and rank), given
    explicitly to fastbfly and lazylinop, so the three solve the same problem.  Both
    left-to-right orders (fdb's default, ksd's default) and balanced trees.  Errors are
    ``‖Ẑ − Z‖_F / ‖Z‖_F`` against the noisy input, all from dense products.  Times are
    medians over ``--repeat`` runs after a warm-up, each library called as a user
    would (pyfaust's includes building its ``Faust``, lazylinop's its operator):
    ``fastbfly.factorize`` as it returns, which for the balanced tree defers the
    measurement of ``B.info["relative_error"]`` to its first read (the peers report
    no error); the column "+ error read" adds that read.

Machine information (CPU, load average, Numba threads and threading layer, BLAS) is
printed first: on a shared 2-core machine the load average says how much to trust the
times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

import fastbfly
from fastbfly import Butterfly, Chain, Factor

# Part b's peers: (m, n, n_factors, rank).  Square powers of two and rectangular sizes
# with factors 2, 3 and 5; all chains are the ones pyfaust's DebflyGen picks.
PEER_CASES = [
    (256, 256, 4, 1),
    (1024, 1024, 10, 1),
    (1024, 1024, 3, 2),
    (768, 3072, 3, 1),
    (384, 1536, 2, 4),
    (240, 960, 4, 2),
]


# --------------------------------------------------------------------------- helpers
def machine_info() -> str:
    import numba

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # the threading layer is only known once a parallel kernel has run
    fastbfly.factorize(np.random.default_rng(0).standard_normal((512, 512)))
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    blas = "unknown"
    with contextlib.suppress(Exception):
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"]
    lines = [
        f"CPU: {cpu}, {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.2f} "
        f"(1 min), {os.getloadavg()[1]:.2f} (5 min)",
        f"Python {platform.python_version()}, numpy {np.__version__} ({blas}), "
        f"numba {numba.__version__}: {numba.get_num_threads()} threads, threading layer "
        f"{layer!r}; fastbfly {fastbfly.__version__}",
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
    ]
    return "\n".join(lines)


def median_time(function, repeat: int, warmup: bool = True):
    """(median seconds, last result) over ``repeat`` calls, after one warm-up call."""
    if warmup:
        function()
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def random_product(rng, chain: Chain, dtype) -> Butterfly:
    return Butterfly([Factor(p, rng.standard_normal(tuple(p)).astype(dtype)) for p in chain])


def dense_factors(factors) -> np.ndarray:
    """Product of dense matrices (fastbfly factors or anything with ``toarray``)."""
    matrices = [f.toarray() if hasattr(f, "toarray") else np.asarray(f) for f in factors]
    return functools.reduce(np.matmul, [m.astype(np.float64) for m in matrices])


def relative_error(approximation, target) -> float:
    return float(np.linalg.norm(approximation - target) / np.linalg.norm(target))


@contextlib.contextmanager
def quiet():
    """Silence Python warnings and prints of the peers (import-time chatter)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------- part a
def part_a(repeat: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    m, n, batch = 768, 3072, 256
    W_random = rng.standard_normal((m, n)).astype(np.float32)
    X = rng.standard_normal((n, batch)).astype(np.float32)
    dense_seconds, _ = median_time(lambda: W_random @ X, max(repeat, 10))
    rows = [
        "| factors, rank | chain | B.nnz / W.size | factorize random W | factorize exact product "
        "(recovery error) | B @ X, 256 vectors | dense W @ X | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n_factors, rank in [(2, 1), (3, 1), (4, 1), (3, 2)]:
        chain = Chain.auto(m, n, n_factors, rank)
        seconds_random, B = median_time(
            lambda: fastbfly.factorize(W_random, n_factors=n_factors, rank=rank), repeat)
        product = random_product(rng, chain, np.float32)
        W_exact = dense_factors(product.factors).astype(np.float32)
        seconds_exact, B_exact = median_time(
            lambda: fastbfly.factorize(W_exact, n_factors=n_factors, rank=rank), repeat)
        recovery = relative_error(dense_factors(B_exact.factors), W_exact.astype(np.float64))
        apply_seconds, Y = median_time(lambda: B @ X, max(repeat, 10))
        # the kernels' answer against the dense product of the same factors
        apply_error = relative_error(Y, dense_factors(B.factors) @ X.astype(np.float64))
        flag = "" if apply_error < 1e-4 else f" **(B @ X wrong: error {apply_error:.2e})**"
        rows.append(
            f"| {n_factors}, {rank} | {list(map(tuple, chain))} | {B.nnz / W_random.size:.2%} | "
            f"{seconds_random * 1e3:.0f} ms | {seconds_exact * 1e3:.0f} ms ({recovery:.1e}) | "
            f"{apply_seconds * 1e3:.2f} ms{flag} | {dense_seconds * 1e3:.2f} ms | "
            f"{dense_seconds / apply_seconds:.1f}x |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------- part b
def peer_chain(m, n, n_factors, rank) -> Chain:
    """The chain pyfaust's fdb uses for this problem (DebflyGen, monotone, fewest values)."""
    with quiet():
        from pyfaust.fdb.GB_param_generate import DebflyGen

        _, patterns = DebflyGen(m, n, rank).smallest_monotone_debfly_chain(n_factors, format="abcd")
    return Chain([tuple(int(v) for v in p) for p in patterns])


def part_b(repeat: int, seed: int, cases) -> str:
    with quiet():
        try:
            import pyfaust
            from pyfaust.fact import fdb
        except ImportError:
            pyfaust = None
        try:
            import lazylinop
            from lazylinop.butterfly import Chain as LazyChain
            from lazylinop.butterfly import ksd
        except ImportError:
            lazylinop = None
    if pyfaust is None or lazylinop is None:
        missing = [name for name, module in (("pyfaust", pyfaust), ("lazylinop", lazylinop)) if module is None]
        return f"part b skipped: {', '.join(missing)} not installed (run it with the peers' Python)"
    header = (f"pyfaust {pyfaust.__version__}, lazylinop {lazylinop.__version__}; "
              f"error = ‖Ẑ − Z‖/‖Z‖ against the noisy Z; time = median of {repeat} after a warm-up")
    rows = [
        "| m × n | factors, rank | chain nnz (Chain.auto's) | tree | fastbfly error | fdb error | ksd error | "
        "fastbfly time | + error read | fdb time | ksd time | fdb / fastbfly | ksd / fastbfly |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(seed)
    for m, n, n_factors, rank in cases:
        chain = peer_chain(m, n, n_factors, rank)
        try:
            same = "same" if chain == Chain.auto(m, n, n_factors, rank) else "other"
        except ValueError:
            same = "none"
        clean = dense_factors(random_product(rng, chain, np.float64).factors)
        noise = rng.standard_normal(clean.shape)
        Z = clean + 0.1 * np.linalg.norm(clean) / np.linalg.norm(noise) * noise
        lazy_chain = LazyChain([tuple(p) for p in chain])
        for ours, theirs_fdb, theirs_ksd in [("left-to-right", "left-to-right", "l2r"),
                                              ("balanced", "balanced", "balanced")]:
            # fewer repeats for the slow peers on big problems
            t_ours, B = median_time(lambda: fastbfly.factorize(Z, chain=chain, tree=ours), repeat)
            t_read, _ = median_time(
                lambda: fastbfly.factorize(Z, chain=chain, tree=ours).info["relative_error"], repeat)
            with quiet():
                t_fdb, F = median_time(
                    lambda: fdb(Z, n_factors=n_factors, rank=rank, hierarchical_order=theirs_fdb), repeat)
                t_ksd, K = median_time(lambda: ksd(Z, lazy_chain, order=theirs_ksd), repeat)
            fdb_chain = [tuple(int(v) for v in F.factors(i).shape) for i in range(F.numfactors())]
            assert fdb_chain == [p.shape for p in chain], (fdb_chain, chain)
            error_ours = relative_error(dense_factors(B.factors), Z)
            # the reported error (deferred or not) is the measured one
            assert abs(B.info["relative_error"] - error_ours) <= 1e-10 * error_ours, (
                B.info["relative_error"], error_ours)
            with quiet():
                error_fdb = relative_error(F.toarray(), Z)
                error_ksd = relative_error(np.asarray(K.toarray()), Z)
            rows.append(
                f"| {m} × {n} | {n_factors}, {rank} | {chain.nnz:,} ({same}) | {ours} | {error_ours:.5f} | "
                f"{error_fdb:.5f} | {error_ksd:.5f} | {t_ours * 1e3:.1f} ms | {t_read * 1e3:.1f} ms | "
                f"{t_fdb * 1e3:.1f} ms | "
                f"{t_ksd * 1e3:.1f} ms | {t_fdb / t_ours:.1f}x | {t_ksd / t_ours:.1f}x |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return header + "\n\n" + "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="part b on the two smallest cases")
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    sections = ["# fastbfly: general shapes", "```\n" + machine_info() + "\n```"]
    print("\n\n".join(sections), flush=True)
    if args.part in ("a", "all"):
        section = "## a. 768 × 3072 float32, automatic chain\n\n" + part_a(args.repeat, args.seed)
        print("\n" + section, flush=True)
        sections.append(section)
    if args.part in ("b", "all"):
        cases = PEER_CASES[:2] if args.quick else PEER_CASES
        section = ("## b. Random chainable products + 10% noise, same chain as pyfaust fdb\n\n"
                   + part_b(args.repeat, args.seed, cases))
        print("\n" + section, flush=True)
        sections.append(section)
    if args.out:
        with open(args.out, "w") as file:
            file.write("\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
