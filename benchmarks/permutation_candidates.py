#!/usr/bin/env python
"""Permutation candidates: serial vs parallel evaluation, and the exact-error pass.

For ``perm="auto"`` (eight candidates) on a noisy DFT (``σ = 0.1``), times
``factorize`` with the candidates run one after another and in parallel threads (one
candidate per thread, serial kernels inside; `fastbfly.factorization._candidate_workers`),
in the same run, alternating, medians of ``--repeat``.  Also times the one pass over the
matrix that makes ``B.info["relative_error"]`` exact for the balanced tree (run on the
first read of that entry), against a balanced factorization.

    python benchmarks/permutation_candidates.py --sizes 256 512 1024 2048
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np

import fastbfly
from fastbfly import factorization


def noisy_dft(rng, n):
    F = np.fft.fft(np.eye(n))
    W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    return F + 0.1 * np.linalg.norm(F) / np.linalg.norm(W) * W


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    low, high = factorization.PARALLEL_CANDIDATES_MIN_SIZE, factorization.PARALLEL_CANDIDATES_MAX_SIZE
    print(f"load average {os.getloadavg()[0]:.1f}, {numba.get_num_threads()} Numba threads")
    print("| N | auto, serial (s) | auto, parallel (s) | speed-up | default uses | balanced (s) "
          "| exact-error pass (s) | pass / balanced |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        Z = noisy_dft(rng, n)
        fastbfly.factorize(Z, perm="auto")  # warm-up (compilation, threading layer)
        runs = []
        try:
            for _ in range(args.repeat):
                factorization.PARALLEL_CANDIDATES_MIN_SIZE, factorization.PARALLEL_CANDIDATES_MAX_SIZE = 1 << 62, 0
                serial, a = timed(lambda: fastbfly.factorize(Z, perm="auto"))
                factorization.PARALLEL_CANDIDATES_MIN_SIZE, factorization.PARALLEL_CANDIDATES_MAX_SIZE = 0, 1 << 62
                parallel, b = timed(lambda: fastbfly.factorize(Z, perm="auto"))
                assert a.info["perm"] == b.info["perm"] == "bitrev"
                factorization.PARALLEL_CANDIDATES_MIN_SIZE, factorization.PARALLEL_CANDIDATES_MAX_SIZE = low, high
                whole, B = timed(lambda: fastbfly.factorize(Z, perm="bitrev"))
                exact, _ = timed(lambda: factorization._exact_relative_error(Z, B.chain, B.factors, B.perm))
                # (the balanced tree's exact error is measured on first read, not in whole)
                runs.append((serial, parallel, serial / parallel, whole, exact, exact / whole))
        finally:
            factorization.PARALLEL_CANDIDATES_MIN_SIZE, factorization.PARALLEL_CANDIDATES_MAX_SIZE = low, high
        s, p, speedup, whole, exact, share = np.median(np.array(runs), axis=0)
        uses = "parallel" if factorization._candidate_workers(8, Z.size, None) > 1 else "serial"
        print(f"| {n} | {s:.3g} | {p:.3g} | {speedup:.2f} | {uses} | {whole:.3g} | {exact:.3g} | {share:.0%} |",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
