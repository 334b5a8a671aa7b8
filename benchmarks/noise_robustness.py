#!/usr/bin/env python
"""Noise robustness: factorize a noisy DFT, compare trees, orthonormalisation and pyfaust.

Target ``Z = F + σ W``: ``F`` the ``N × N`` DFT, ``W`` complex Gaussian scaled so that
``‖σ W‖_F = σ ‖F‖_F``, columns permuted by bit reversal (``F`` is then an exact
butterfly product).  For every draw, fastbfly runs with each tree (balanced,
left-to-right, right-to-left) and ``orthonormalize`` on/off, and pyfaust's
``fact.butterfly(Z, type=..., perm='bitrev')`` with each of its trees on the *same*
draw.  Reported per setting: the relative error to ``Z`` (``‖Z − B‖/‖Z‖``, the
objective) and to the clean DFT (``‖F − B‖/‖F‖``, denoising), mean and max over draws,
the worst ratio fastbfly / pyfaust over draws, and the error divided by the lower
bound ``max_l E_l`` on the best butterfly error (:func:`fastbfly.certificate.certify`).

    /work/peervenv/bin/python benchmarks/noise_robustness.py --out docs/noise_robustness.md
    python benchmarks/noise_robustness.py --n 64 --draws 2      # quick smoke run

pyfaust's C++ code prints "factorization #k" on stdout; it is silenced with an OS-level
redirect of file descriptor 1 around each call.  Without pyfaust the script still runs
(fastbfly only).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import shlex
import sys
import time
import warnings

import numpy as np

import fastbfly
from fastbfly._errors import split_errors

FASTBFLY_TREES = ("balanced", "left-to-right", "right-to-left")
# pyfaust's names for the same trees: 'right' splits off the right-hand side of the
# left-most factor first, i.e. peels X_1 off first (left-to-right).
PYFAUST_TYPES = {"balanced": "bbtree", "left-to-right": "right", "right-to-left": "left"}


@contextlib.contextmanager
def silenced_stdout():
    """Send file descriptor 1 to /dev/null (C/C++ writes included) inside the block."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        libc.fflush(None)  # C stdio buffers still hold text meant for /dev/null
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def noisy_dft(rng, F, sigma):
    W = rng.standard_normal(F.shape) + 1j * rng.standard_normal(F.shape)
    return F + sigma * np.linalg.norm(F) / np.linalg.norm(W) * W


def run(args):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyfaust
            import pyfaust.fact
    except ImportError:
        pyfaust = None
    n = args.n
    F = np.fft.fft(np.eye(n))
    chain = fastbfly.Chain.square_dyadic(n)
    bitrev = fastbfly.bit_reversal_permutation(n)
    fastbfly.factorize(np.fft.fft(np.eye(8)), perm="bitrev")  # JIT warm-up
    settings = [("fastbfly", tree, orth) for tree in FASTBFLY_TREES for orth in (True, False)]
    if pyfaust is not None:
        settings += [("pyfaust", tree, None) for tree in FASTBFLY_TREES]
    rng = np.random.default_rng(args.seed)
    # records[sigma][setting] = list of (error to Z, error to F, seconds, error / lower)
    records = {}
    for sigma in args.sigmas:
        records[sigma] = {s: [] for s in settings}
        for draw in range(args.draws):
            Z = noisy_dft(rng, F, sigma)
            norm_z, norm_f = np.linalg.norm(Z), np.linalg.norm(F)
            lower = split_errors(Z, chain, bitrev).max() / norm_z
            for setting in settings:
                library, tree, orth = setting
                started = time.perf_counter()
                if library == "fastbfly":
                    approx = fastbfly.factorize(Z, tree=tree, orthonormalize=orth, perm="bitrev")
                    seconds = time.perf_counter() - started
                else:
                    with silenced_stdout(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        approx = pyfaust.fact.butterfly(Z, type=PYFAUST_TYPES[tree], perm="bitrev")
                    seconds = time.perf_counter() - started
                dense = approx.toarray()
                error_z = np.linalg.norm(Z - dense) / norm_z
                error_f = np.linalg.norm(F - dense) / norm_f
                records[sigma][setting].append((error_z, error_f, seconds, error_z / lower))
            print(f"sigma={sigma} draw {draw + 1}/{args.draws} done", file=sys.stderr)
    return settings, records, pyfaust


def label(setting):
    library, tree, orth = setting
    if library == "pyfaust":
        return f"pyfaust `{PYFAUST_TYPES[tree]}` ({tree})"
    return f"fastbfly {tree}, orthonormalize={'on' if orth else 'off'}"


def report(args, settings, records, pyfaust) -> str:
    lines = []
    lines.append("# Noise robustness: butterfly factorization of a noisy DFT\n")
    lines.append(f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by\n\n    {sys.executable} "
                 f"{shlex.join([os.path.relpath(__file__)] + sys.argv[1:])}\n")
    versions = f"fastbfly {fastbfly.__version__}, numpy {np.__version__}"
    if pyfaust is not None:
        versions += f", pyfaust {getattr(pyfaust, '__version__', '?')}"
    lines.append(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                 f"{platform.python_version()}; {versions}.\n")
    lines.append(
        f"Target `Z = F + σW`: `F` the {args.n} × {args.n} DFT (J = {args.n.bit_length() - 1} "
        f"factors), `W` complex Gaussian scaled so that `‖σW‖_F = σ‖F‖_F`, {args.draws} draws "
        f"per σ (seed {args.seed}), bit-reversal column permutation for every method.  "
        f"*to Z* is `‖Z − B‖_F / ‖Z‖_F` (what is minimised), *to DFT* is `‖F − B‖_F / ‖F‖_F` "
        f"(how much noise is left).  *worst ratio* is the largest over draws of "
        f"fastbfly's error / pyfaust's error on the same draw, against pyfaust with the same "
        f"tree and against the best of pyfaust's three trees.  *÷ lower bound* is the mean "
        f"of error to Z / max_l E_l (1 = provably optimal).  Times are wall-clock means "
        f"(machine shared with other jobs: indicative only).\n")
    have_pyfaust = pyfaust is not None
    for sigma in args.sigmas:
        lines.append(f"\n## σ = {sigma}\n")
        header = "| setting | to Z mean | to Z max | to DFT mean | to DFT max | ÷ lower bound | s/run |"
        rule = "|---|---|---|---|---|---|---|"
        if have_pyfaust:
            header += " worst ratio to Z (same tree / best pyfaust) | worst ratio to DFT (same tree / best pyfaust) |"
            rule += "---|---|"
        lines += [header, rule]
        per = records[sigma]
        for setting in settings:
            data = np.array(per[setting])
            row = (f"| {label(setting)} | {data[:, 0].mean():.6f} | {data[:, 0].max():.6f} | "
                   f"{data[:, 1].mean():.6f} | {data[:, 1].max():.6f} | {data[:, 3].mean():.5f} | "
                   f"{data[:, 2].mean():.3f} |")
            if have_pyfaust:
                if setting[0] == "fastbfly":
                    same = np.array(per[("pyfaust", setting[1], None)])
                    best = np.min([np.array(per[("pyfaust", t, None)]) for t in FASTBFLY_TREES], axis=0)
                    row += (f" {np.max(data[:, 0] / same[:, 0]):.6f} / {np.max(data[:, 0] / best[:, 0]):.6f} |"
                            f" {np.max(data[:, 1] / same[:, 1]):.6f} / {np.max(data[:, 1] / best[:, 1]):.6f} |")
                else:
                    row += " – | – |"
            lines.append(row)
    # Which setting is best: mean over σ of (mean error / best mean error at that σ).
    lines.append("\n## Best setting\n")
    fast = [s for s in settings if s[0] == "fastbfly"]
    for column, name in ((0, "error to Z"), (1, "error to the clean DFT")):
        scores = {}
        for setting in fast:
            values = []
            for sigma in args.sigmas:
                means = {s: np.mean([r[column] for r in records[sigma][s]]) for s in fast}
                values.append(means[setting] / min(means.values()))
            scores[setting] = np.mean(values)
        ranking = sorted(fast, key=scores.get)
        lines.append(f"By {name} (mean over σ of the error relative to the best setting at that σ):\n")
        for setting in ranking:
            lines.append(f"- {label(setting)}: {scores[setting]:.6f}")
        lines.append("")
    if have_pyfaust:
        worst = max(
            np.max(np.array(records[s_][st])[:, 0] / np.array(records[s_][("pyfaust", st[1], None)])[:, 0])
            for s_ in args.sigmas for st in fast if st[2]
        )
        lines.append(f"Worst ratio fastbfly / pyfaust (same tree, orthonormalize on, error to Z) over "
                     f"all σ and draws: {worst:.6f}.\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.1, 0.3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args()
    settings, records, pyfaust = run(args)
    text = report(args, settings, records, pyfaust)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
