#!/usr/bin/env python
"""Gradient-based baselines against the hierarchical algorithm, on the same targets.

The talk claims the hierarchical algorithm is "faster and more accurate" than gradient
methods.  This script measures it on two targets, both with the bit-reversal column
permutation so that the noiseless one is an exact butterfly:

* the ``N × N`` DFT (``N = 512``, ``J = 9`` factors);
* the same plus complex Gaussian noise, ``‖σW‖ = σ‖F‖`` with ``σ = 0.1`` (one draw).

Methods:

``fastbfly``
    ``fastbfly.factorize(Z, perm="bitrev")`` (balanced tree, orthonormalised).
``L-BFGS``
    A small learner written here: the ``2 N log2 N`` complex factor values are the
    variables (real and imaginary parts), the loss is ``½‖Z[:, bitrev] − X_1⋯X_J‖²_F``,
    the gradient is exact (``∂/∂X_l = (X_1⋯X_{l-1})ᴴ R (X_{l+1}⋯X_J)ᴴ`` restricted to the
    support, computed with structured products only), scipy's L-BFGS-B runs from a
    random complex Gaussian start (unit variance, so the product has about the norm of
    the DFT) with a fixed seed and a fixed budget of iterations.  Errors after 10, 100,
    ... iterations are recorded on the way.
``pyfaust palm4msa``
    ``pyfaust.fact.palm4msa`` with one ``pyfaust.proj.supp`` constraint per butterfly
    support, pyfaust's default initialisation, a fixed number of iterations, backend
    2016 (backend 2020 crashes with a segmentation fault on these supports in pyfaust
    3.41).  Optional (``--palm-iters 0`` skips it).

    /work/peervenv/bin/python benchmarks/gradient_baseline.py --out docs/gradient_baseline.md
    python benchmarks/gradient_baseline.py --n 64 --lbfgs-iters 200 --palm-iters 0   # quick
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
import scipy
import scipy.optimize

import fastbfly


# ------------------------------------------------------------------ structured products
def apply_factor(values, X):
    """``K @ X`` for the factor with values ``(a, b, c, d)`` and ``X`` of shape (a*c*d, k)."""
    a, b, c, d = values.shape
    k = X.shape[1]
    # X (a*c*d, k) -> (a, d, c, k); values (a, b, c, d) -> (a, d, b, c); one b×c block per (i, t)
    blocks = values.transpose(0, 3, 1, 2)
    Y = blocks @ X.reshape(a, c, d, k).transpose(0, 2, 1, 3)  # (a, d, b, k)
    return Y.transpose(0, 2, 1, 3).reshape(a * b * d, k)


def apply_factor_adjoint(values, X):
    """``Kᴴ @ X`` for ``X`` of shape (a*b*d, k)."""
    a, b, c, d = values.shape
    k = X.shape[1]
    blocks = values.transpose(0, 3, 2, 1).conj()  # (a, d, c, b)
    Y = blocks @ X.reshape(a, b, d, k).transpose(0, 2, 1, 3)  # (a, d, c, k)
    return Y.transpose(0, 2, 1, 3).reshape(a * c * d, k)


def support_gradient(pattern, left_cotangent, right_product):
    """``(G Vᴴ)`` at the support of ``pattern``: ``G`` (a*b*d, N) and ``V`` (a*c*d, N)."""
    a, b, c, d = pattern
    n = left_cotangent.shape[1]
    G = left_cotangent.reshape(a, b, d, n).transpose(0, 2, 1, 3)  # (a, d, b, N)
    V = right_product.reshape(a, c, d, n).transpose(0, 2, 3, 1).conj()  # (a, d, N, c)
    return (G @ V).transpose(0, 2, 3, 1)  # (a, d, b, c) -> (a, b, c, d)


class ButterflyLoss:
    """``f(x) = ½‖target − X_1⋯X_L‖²`` and its gradient, ``x`` = real and imaginary parts
    of all factor values (left-most factor first)."""

    def __init__(self, target, chain):
        self.target = target
        self.patterns = [tuple(p) for p in chain]
        self.sizes = [int(np.prod(p)) for p in self.patterns]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.total = int(self.offsets[-1])
        self.evaluations = 0

    def unpack(self, x):
        z = x[: self.total] + 1j * x[self.total:]
        return [z[s:e].reshape(p) for s, e, p in zip(self.offsets[:-1], self.offsets[1:], self.patterns)]

    def product(self, factors):
        P = np.eye(self.target.shape[1], dtype=complex)
        for values in reversed(factors):
            P = apply_factor(values, P)
        return P

    def __call__(self, x):
        self.evaluations += 1
        factors = self.unpack(x)
        n = self.target.shape[1]
        # right[l] = X_{l+1} ⋯ X_L (dense), built from the right
        right = [None] * len(factors)
        right[-1] = np.eye(n, dtype=complex)
        for l in range(len(factors) - 1, 0, -1):
            right[l - 1] = apply_factor(factors[l], right[l])
        residual = apply_factor(factors[0], right[0]) - self.target
        loss = 0.5 * float(np.vdot(residual, residual).real)
        gradient = []
        cotangent = residual  # (X_1 ⋯ X_{l-1})ᴴ R
        for l, values in enumerate(factors):
            gradient.append(support_gradient(values.shape, cotangent, right[l]).ravel())
            if l + 1 < len(factors):
                cotangent = apply_factor_adjoint(values, cotangent)
        g = np.concatenate(gradient)
        # f real, z complex: ∂f/∂(Re z) = Re G, ∂f/∂(Im z) = Im G with G = Uᴴ R Vᴴ
        return loss, np.concatenate([g.real, g.imag])


def run_lbfgs(target, clean, chain, iterations, seed, checkpoints):
    loss = ButterflyLoss(target, chain)
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(2 * loss.total) / np.sqrt(2)  # E|z|² = 1 per value
    trace = []
    started = time.perf_counter()
    state = {"iteration": 0}

    def callback(xk):
        state["iteration"] += 1
        if state["iteration"] in checkpoints:
            P = loss.product(loss.unpack(xk))
            trace.append((state["iteration"], time.perf_counter() - started,
                          np.linalg.norm(target - P) / np.linalg.norm(target),
                          np.linalg.norm(clean - P) / np.linalg.norm(clean)))

    result = scipy.optimize.minimize(
        loss, x0, jac=True, method="L-BFGS-B", callback=callback,
        options={"maxiter": iterations, "maxfun": 2 * iterations, "ftol": 0.0, "gtol": 0.0},
    )
    seconds = time.perf_counter() - started
    P = loss.product(loss.unpack(result.x))
    return {
        "seconds": seconds,
        "iterations": int(result.nit),
        "evaluations": loss.evaluations,
        "to_target": np.linalg.norm(target - P) / np.linalg.norm(target),
        "to_clean": np.linalg.norm(clean - P) / np.linalg.norm(clean),
        "trace": trace,
        "message": str(result.message),
    }


# ------------------------------------------------------------------ pyfaust
@contextlib.contextmanager
def silenced_stdout():
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


def run_palm(target, clean, chain, iterations):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyfaust.fact
        from pyfaust.factparams import ParamsPalm4MSA, StoppingCriterion
        from pyfaust.proj import supp
    supports = [fastbfly.Factor(p, np.ones(tuple(p))).toarray() for p in chain]
    params = ParamsPalm4MSA([supp(s) for s in supports], StoppingCriterion(num_its=iterations))
    started = time.perf_counter()
    with silenced_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        faust = pyfaust.fact.palm4msa(target, params, backend=2016)
    seconds = time.perf_counter() - started
    P = faust.toarray()
    return {
        "seconds": seconds,
        "iterations": iterations,
        "to_target": np.linalg.norm(target - P) / np.linalg.norm(target),
        "to_clean": np.linalg.norm(clean - P) / np.linalg.norm(clean),
    }


# ------------------------------------------------------------------ driver
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lbfgs-iters", type=int, default=2000)
    parser.add_argument("--palm-iters", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()

    n = args.n
    chain = fastbfly.Chain.square_dyadic(n)
    bitrev = fastbfly.bit_reversal_permutation(n)
    F = np.fft.fft(np.eye(n))
    rng = np.random.default_rng(args.seed)
    W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    noisy = F + args.sigma * np.linalg.norm(F) / np.linalg.norm(W) * W
    targets = [("DFT", F), (f"DFT + noise, σ = {args.sigma}", noisy)]
    checkpoints = {k for k in (10, 30, 100, 300, 1000, 3000, 10000) if k <= args.lbfgs_iters}
    fastbfly.factorize(np.fft.fft(np.eye(8)), perm="bitrev")  # JIT warm-up

    rows = []
    for name, Z in targets:
        started = time.perf_counter()
        B = fastbfly.factorize(Z, perm="bitrev")
        seconds = time.perf_counter() - started
        dense = B.toarray()
        rows.append((name, "fastbfly factorize (balanced, orthonormalised)", "–", seconds,
                     np.linalg.norm(Z - dense) / np.linalg.norm(Z), np.linalg.norm(F - dense) / np.linalg.norm(F)))
        print(f"{name}: fastbfly done", file=sys.stderr)

        result = run_lbfgs(Z[:, bitrev], F[:, bitrev], chain, args.lbfgs_iters, args.seed, checkpoints)
        for iteration, at, to_z, to_f in result["trace"]:
            if iteration != result["iterations"]:
                rows.append((name, f"L-BFGS (numpy/scipy), after {iteration} iterations", iteration, at, to_z, to_f))
        reason = result["message"].split(":")[0].strip().lower() or "stopped"
        reason = "iteration budget" if reason == "stop" else reason
        rows.append((name, f"L-BFGS (numpy/scipy), final ({reason})",
                     f"{result['iterations']} ({result['evaluations']} evaluations)",
                     result["seconds"], result["to_target"], result["to_clean"]))
        print(f"{name}: L-BFGS done", file=sys.stderr)

        if args.palm_iters > 0:
            try:
                palm = run_palm(Z[:, bitrev], F[:, bitrev], chain, args.palm_iters)
                rows.append((name, "pyfaust palm4msa, butterfly supports, default init", palm["iterations"],
                             palm["seconds"], palm["to_target"], palm["to_clean"]))
            except ImportError:
                rows.append((name, "pyfaust palm4msa: pyfaust not installed", "–", float("nan"), float("nan"), float("nan")))
            print(f"{name}: palm4msa done", file=sys.stderr)

    lines = ["# Gradient baselines against the hierarchical algorithm\n",
             f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by\n\n    {sys.executable} "
             f"{shlex.join([os.path.relpath(__file__)] + sys.argv[1:])}\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: times "
             f"are indicative), Python {platform.python_version()}; fastbfly {fastbfly.__version__}, "
             f"numpy {np.__version__}, scipy {scipy.__version__}.\n",
             f"Targets: the {n} × {n} DFT `F` ({len(chain)} butterfly factors, bit-reversal column "
             f"permutation) and `Z = F + σW` (one draw, seed {args.seed}).  *to target* is "
             f"`‖Z − B‖_F / ‖Z‖_F`, *to DFT* is `‖F − B‖_F / ‖F‖_F`.  L-BFGS starts from random "
             f"complex Gaussian factors (seed {args.seed}); times include everything after the "
             f"warm-up (JIT compilation excluded for fastbfly).\n",
             "| target | method | iterations | seconds | to target | to DFT |",
             "|---|---|---|---|---|---|"]
    for name, method, iterations, seconds, to_z, to_f in rows:
        lines.append(f"| {name} | {method} | {iterations} | {seconds:.3g} | {to_z:.3e} | {to_f:.3e} |")
    lines += ["",
              "L-BFGS stops when its budget is spent or scipy reports that the line search can no "
              "longer decrease the loss (\"abnormal\": the iterate is stationary to rounding) or "
              "that the relative reduction of the loss vanished (\"convergence\").  pyfaust's "
              "palm4msa runs a fixed number of iterations (StoppingCriterion(num_its=...)); each costs "
              "tens of seconds at N = 512 with the 2016 backend on this machine."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
