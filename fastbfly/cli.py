"""Command line: ``python -m fastbfly demo`` and ``python -m fastbfly factorize``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    """Run the command line ``python -m fastbfly`` with the arguments ``argv``.

    Parameters
    ----------
    argv : list of str, optional
        Default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 after an error (reported on stderr as
        ``error: ...``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fastbfly.cli import main
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "dft.npy"), np.fft.fft(np.eye(16)))
    >>> main(["factorize", os.path.join(folder, "dft.npy"), "--perm", "bitrev",
    ...       "-o", os.path.join(folder, "dft.npz")])  # doctest: +ELLIPSIS
    <Butterfly 16x16 dtype=complex128 factors=4 nnz=128 perm=yes>
    relative error ..., 128 stored values (50.00% of dense), saved to ...dft.npz
    0
    >>> main(["factorize", os.path.join(folder, "missing.npy"), "-o", "out.npz"])
    2
    """
    parser = argparse.ArgumentParser(prog="python -m fastbfly", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="factorize the DFT (exact and noisy) and time it")
    demo.add_argument("--size", type=int, default=1024, help="power of two (default 1024)")
    demo.add_argument("--noise", type=float, default=0.1, help="relative noise level (default 0.1)")
    demo.add_argument("--seed", type=int, default=0)

    fact = commands.add_parser("factorize", help="factorize a matrix stored as .npy")
    fact.add_argument("input", help="2-D matrix in a .npy file (read memory-mapped)")
    fact.add_argument("-o", "--output", required=True, help="destination .npz file")
    fact.add_argument("--tree", default="balanced",
                      choices=["balanced", "left-to-right", "right-to-left"])
    fact.add_argument("--perm", default=None,
                      help="column permutation: identity, bitrev, dao8, auto, or a .npy file of indices")
    fact.add_argument("--row-perm", default=None, help="row permutation, same choices as --perm")
    fact.add_argument("--no-orthonormalize", action="store_true")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args.size, args.noise, args.seed)
        return _factorize(args)
    except (ValueError, TypeError, OSError, MemoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _progress(done: int, total: int) -> None:
    print(f"\r  split {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _factorize(args) -> int:
    import fastbfly

    matrix = np.load(args.input, mmap_mode="r", allow_pickle=False)
    started = time.perf_counter()
    B = fastbfly.factorize(matrix, tree=args.tree, perm=_permutation(args.perm),
                           row_perm=_permutation(args.row_perm),
                           orthonormalize=not args.no_orthonormalize, progress=_progress)
    seconds = time.perf_counter() - started
    fastbfly.save(args.output, B)
    print(f"{B!r}")
    print(f"relative error {B.info['relative_error']:.3e}, {seconds:.2f} s, "
          f"{B.nnz} stored values ({B.nnz / matrix.size:.2%} of dense), saved to {args.output}")
    return 0


def _permutation(value):
    """A permutation name, or the index vector stored in a .npy file."""
    if value is None or value in ("identity", "bitrev", "dao8", "auto"):
        return value
    return np.load(value, allow_pickle=False)


def _demo(size: int, noise: float, seed: int) -> int:
    import numba

    import fastbfly

    rng = np.random.default_rng(seed)
    dft = np.fft.fft(np.eye(size))
    noise_matrix = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
    noisy = dft + noise * np.linalg.norm(dft) / np.linalg.norm(noise_matrix) * noise_matrix
    x = rng.standard_normal(size) + 1j * rng.standard_normal(size)

    print(f"fastbfly {fastbfly.__version__}: DFT of size {size}, bit-reversal permutation, "
          f"balanced tree ({numba.get_num_threads()} threads, first call includes JIT compile)")
    fastbfly.factorize(dft[:8, :8], perm="bitrev") @ x[:8]  # compile outside the timings
    for label, target in (("exact DFT", dft), (f"DFT + {noise:g} noise", noisy)):
        started = time.perf_counter()
        B = fastbfly.factorize(target, perm="bitrev")
        seconds = time.perf_counter() - started
        error = np.linalg.norm(B.toarray() - target) / np.linalg.norm(target)
        error_clean = np.linalg.norm(B.toarray() - dft) / np.linalg.norm(dft)
        fast = _best_time(lambda: B @ x)
        dense = _best_time(lambda: target @ x)
        print(f"  {label:18s} error {error:.2e} (to clean DFT {error_clean:.2e})  "
              f"factorize {seconds:.3f} s  stored {B.nnz} values "
              f"({B.nnz / target.size:.2%} of dense)  "
              f"B @ x {fast * 1e6:.0f} us vs dense {dense * 1e6:.0f} us ({dense / fast:.1f}x)")
    return 0


def _best_time(call, repeat: int = 20) -> float:
    call()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best
