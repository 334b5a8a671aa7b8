#!/usr/bin/env python
"""The matrix scan in the background against the scan first (issue 4, two threads).

    python benchmarks/scan_overlap.py [N ...]        # default 4096 8192

`factorize` scans the matrix once (scale check, deferred-error checksum).  With Numba
threads to spare it does so in a thread of its own after the root split, beside the
serial splits below it (`fastbfly.factorization._scan_in_background`).  This times the
DFT with ``perm="bitrev"`` both ways, alternating, in one process: the default, and the
scan forced first (``factorization._SCAN_FIRST.forced``).  Medians of 9 of wall and
CPU time (CPU time counts the scan thread).
"""

import os
import sys
import time

import numba
import numpy as np

import fastbfly
from fastbfly import factorization


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [4096, 8192]
    print(f"{numba.get_num_threads()} Numba threads, load {os.getloadavg()[0]:.2f}")
    for n in sizes:
        F = np.fft.fft(np.eye(n))
        times = {False: [], True: []}
        for rounds in (1, 9):
            for _ in range(rounds):
                for forced in times:
                    factorization._SCAN_FIRST.forced = forced
                    wall, cpu = time.perf_counter(), time.process_time()
                    fastbfly.factorize(F, perm="bitrev")
                    if rounds > 1:
                        times[forced].append((time.perf_counter() - wall, time.process_time() - cpu))
        factorization._SCAN_FIRST.forced = False
        for forced, samples in times.items():
            wall, cpu = np.median(np.array(samples), axis=0) * 1e3
            print(f"N={n} {'scan first' if forced else 'background scan'}: wall {wall:.1f} ms, CPU {cpu:.1f} ms")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
