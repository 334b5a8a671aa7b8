#!/usr/bin/env python
"""When does :func:`fastbfly.clustering.recover_permutations` find unknown permutations?

Targets: square dyadic butterfly products whose rows and columns are shuffled by random
permutations, plus noise ``σ ‖S‖ W / ‖W‖`` (``W`` Gaussian, complex for complex data):
random complex and real products (standard normal factor values), the DFT and the
Hadamard matrix.  For each, the permutations are recovered, ``factorize`` runs with them,
and the error is compared with the *oracle* (``factorize`` with the true permutations).
Success: error at most 1.01 times the oracle's (plus 1e-12 for exact products).

    python benchmarks/clustering_recovery.py --out docs/clustering.md
    python benchmarks/clustering_recovery.py --sizes 16 64 --trials 2   # quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time

import numpy as np

import fastbfly
from fastbfly.clustering import recover_permutations

KINDS = ("random complex", "random real", "DFT", "Hadamard")


def butterfly_and_perm(kind, n, rng):
    """A butterfly ``Z`` (dense) and the column permutation under which it factors."""
    chain = fastbfly.Chain.square_dyadic(n)
    if kind == "DFT":
        return np.fft.fft(np.eye(n)), fastbfly.bit_reversal_permutation(n)
    if kind == "Hadamard":
        return fastbfly.hadamard_butterfly(n).toarray(), np.arange(n)
    factors = []
    for p in chain:
        values = rng.standard_normal(tuple(p))
        if kind == "random complex":
            values = values + 1j * rng.standard_normal(tuple(p))
        factors.append(fastbfly.Factor(p, values))
    return fastbfly.Butterfly(factors).toarray(), np.arange(n)


def trial(kind, n, sigma, rng):
    Z, column_perm = butterfly_and_perm(kind, n, rng)
    rows, cols = rng.permutation(n), rng.permutation(n)
    S = Z[rows][:, cols]
    if sigma > 0:
        W = rng.standard_normal(S.shape)
        if np.iscomplexobj(S):
            W = W + 1j * rng.standard_normal(S.shape)
        S = S + sigma * np.linalg.norm(S) / np.linalg.norm(W) * W
    norm = np.linalg.norm(S)
    oracle = fastbfly.factorize(S, row_perm=np.argsort(rows), perm=np.argsort(cols)[column_perm])
    oracle_error = np.linalg.norm(S - oracle.toarray()) / norm
    started = time.perf_counter()
    row_perm, perm = recover_permutations(S)
    seconds = time.perf_counter() - started
    found = fastbfly.factorize(S, row_perm=row_perm, perm=perm)
    error = np.linalg.norm(S - found.toarray()) / norm
    plain = fastbfly.factorize(S).info["relative_error"]
    return error, oracle_error, plain, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.3, 0.5, 1.0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--append", action="store_true",
                        help="append this run's command and rows to --out instead of a new report")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lines = ["# Recovering unknown row and column permutations\n",
             f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by\n\n    {sys.executable} "
             f"{shlex.join([os.path.relpath(__file__)] + sys.argv[1:])}\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: times "
             f"are indicative); fastbfly {fastbfly.__version__}, numpy {np.__version__}.\n",
             f"Each row: {args.trials} trials (random permutations, noise and factors; seed "
             f"{args.seed}).  *error* is `‖S − B‖/‖S‖` after `factorize(S, row_perm=..., perm=...)` "
             f"with the recovered permutations; *oracle* uses the true ones; *no perm* is "
             f"`factorize(S)` without any.  Success: error <= 1.01 × oracle + 1e-12.\n",
             "| matrix | N | σ | successes | worst error / oracle | mean error | mean oracle | mean no perm | s/recovery |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind in args.kinds:
        for n in args.sizes:
            for sigma in args.sigmas:
                results = np.array([trial(kind, n, sigma, rng) for _ in range(args.trials)])
                error, oracle, plain, seconds = results.T
                success = int(np.sum(error <= 1.01 * oracle + 1e-12))
                worst = np.max(error / np.maximum(oracle, 1e-16))
                lines.append(f"| {kind} | {n} | {sigma} | {success}/{args.trials} | {worst:.4g} | "
                             f"{error.mean():.3e} | {oracle.mean():.3e} | {plain.mean():.3f} | {seconds.mean():.2f} |")
                print(lines[-1], file=sys.stderr)
    if args.append:
        header_end = lines.index("| matrix | N | σ | successes | worst error / oracle | mean error | mean oracle | mean no perm | s/recovery |")
        lines = [f"\nAppended ({args.trials} trials per row) by\n\n    {sys.executable} "
                 f"{shlex.join([os.path.relpath(__file__)] + sys.argv[1:])}\n"] + lines[header_end:]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
