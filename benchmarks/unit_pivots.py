#!/usr/bin/env python
"""Blocks of vectors on unit-pivot plans against plain blocks (`B @ X`, issue 4).

    python benchmarks/unit_pivots.py [--threads 1] [--dtype complex128] [--sizes 1024 4096 16384]

Calls the column-tile kernel (``fastbfly._kernels.apply_pairs_tiles``, or its threaded
build with ``--threads 2``, threads sharing the rows of each pass) on the DFT
butterfly's pair-order plan in four ways, in one process, interleaved round by round:
plain blocks one factor per pass ("full") and two per pass ("full+fuse"), and the
unit-pivot plan (``_kernels.unit_pivot_plan``) the same two ways.  Prints the medians
over the rounds and the median per-round speed-up against "full".  64 vectors.
"""

import argparse
import os
import platform
import time

import numba
import numpy as np

import fastbfly
from fastbfly import _kernels
from fastbfly.butterfly import _NO_PERMUTATION


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="complex128")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    real = np.dtype(dtype.char.lower())
    planes = 2 if dtype.kind == "c" else 1
    rng = np.random.default_rng(0)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba {numba.__version__}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    for n in args.sizes:
        B = fastbfly.dft_butterfly(n)
        X = rng.standard_normal((n, 64)) + (1j * rng.standard_normal((n, 64)) if planes == 2 else 0)
        X = X.astype(dtype)
        reference = B.toarray().astype(dtype) @ X if n <= 4096 else B @ X
        packed, steps = B._pairs_plan(False, False, dtype)
        unit_packed, unit_steps = _kernels.unit_pivot_plan(packed, steps, n)
        plain_steps = unit_steps.copy()
        plain_steps[:, 3] = 0
        gather = _NO_PERMUTATION if B.perm is None else B.perm
        scatter = _NO_PERMUTATION if B.row_perm is None else B.row_perm
        tiles = _kernels.pairs_tiles_scratch(_kernels.pairs_tiles_shape(n, 64, planes), real)
        out = np.empty_like(X)
        kernel = _kernels.apply_pairs_tiles_parallel if args.threads > 1 else _kernels.apply_pairs_tiles
        variants = {"full": (packed, plain_steps, False), "full+fuse": (packed, plain_steps, True),
                    "unit": (unit_packed, unit_steps, False),
                    "unit+fuse": (unit_packed, unit_steps, True)}

        def run(name):
            values, plan, fuse = variants[name]
            kernel(values, plan, gather, scatter, X.view(real), out.view(real), tiles, fuse,
                   True, args.threads)

        times = {}
        for name in variants:
            run(name)
            error = np.linalg.norm(out - reference) / np.linalg.norm(reference)
            assert error < (1e-4 if real == np.float32 else 1e-12), (name, error)
            times[name] = []
        for _ in range(args.rounds):
            for name in variants:
                started = time.perf_counter()
                for _ in range(5):
                    run(name)
                times[name].append((time.perf_counter() - started) / 5)
        base = np.array(times["full"])
        print(f"N={n} {dtype}: " + "  ".join(
            f"{name} {np.median(t) * 1e3:.3f} ms ({np.median(base / np.array(t)):.2f}x)"
            for name, t in times.items()))
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
