"""Out-of-core factorization: time and peak resident memory of the streamed root split.

Each measurement runs in a fresh subprocess, which reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so nothing of the driver or of earlier
runs is counted.

    # N = 32768 complex64 (8.6 GB) written to a zarr array on disk, then factorized
    # (--keep leaves the array for a second run, --exact-error adds the error pass)
    python benchmarks/out_of_core.py zarr --n 32768 --path /tmp/oocore.zarr --keep
    # N = 65536 complex64 non-uniform Fourier matrix from a function, never stored
    python benchmarks/out_of_core.py function --n 65536
    # the streamed and in-memory paths give identical factors (smaller case)
    python benchmarks/out_of_core.py compare --n 4096

The matrix is the non-uniform DFT ``Z[j, k] = exp(-2πi x_j k / N)`` with jittered nodes
``x_j = j + 0.05 u_j`` (``u_j`` uniform in [-1, 1], seed 0; entries accurate to ~1e-6), factorized with
``perm="bitrev"`` on the square dyadic chain and the balanced tree.  Prints one JSON line
per run: seconds, peak RSS, the memory formula of
:func:`fastbfly.sources.factorize_source`, the relative error.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

JITTER = 0.05


def nonuniform_dft(n: int, seed: int = 0):
    """``f(rows, cols)`` of the jittered non-uniform DFT of size ``n`` (complex64)."""
    jitter = (JITTER * np.random.default_rng(seed).uniform(-1, 1, n)).astype(np.float32)
    step = 64  # rows per pass: bounds the temporaries to a few row-blocks

    def block(rows, cols):
        # x_j k = j k + δ_j k: the integer part reduced exactly (n is a power of two),
        # then cos/sin in float32, which numpy vectorises (~20 ns per entry).
        out = np.empty((len(rows), len(cols)), dtype=np.complex64)
        cols32 = cols.astype(np.float32)
        for first in range(0, len(rows), step):
            r = rows[first:first + step]
            angle = (np.multiply.outer(r, cols) & (n - 1)).astype(np.float32)
            angle += np.multiply.outer(jitter[r], cols32)
            angle *= np.float32(-2 * np.pi / n)
            np.cos(angle, out=out[first:first + step].real)
            np.sin(angle, out=out[first:first + step].imag)
        return out

    return block


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def formula_bytes(n: int, dtype, row_group_bytes: int, groups_in_flight: int = 2) -> int:
    """The documented peak-memory bound for the square dyadic balanced run."""
    import fastbfly
    from fastbfly.factorization import _plan
    from fastbfly.sources import _estimate_source_memory

    chain = fastbfly.Chain.square_dyadic(n)
    root = fastbfly.build_tree("balanced", len(chain))
    plan = _plan(chain, root, True)
    split = plan[(0, len(chain))]
    row_bytes = n * np.dtype(dtype).itemsize
    group = max(1, row_group_bytes // (split.b1 * row_bytes))
    return _estimate_source_memory(plan, dtype, (n, n), group * split.b1 * row_bytes, groups_in_flight)


def child(args) -> None:
    """Runs in the subprocess: one measured factorization."""
    import fastbfly
    from fastbfly.sources import factorize_source

    baseline = peak_rss_bytes()
    if args.kind == "zarr":
        import zarr

        matrix = zarr.open_array(args.path, mode="r")
    else:
        matrix = fastbfly.FunctionMatrix(nonuniform_dft(args.n), (args.n, args.n), np.complex64)
    # Compile the kernels first (small case) so the timing is the factorization alone.
    fastbfly.factorize(fastbfly.FunctionMatrix(nonuniform_dft(64), (64, 64), np.complex64), perm="bitrev")
    started = time.perf_counter()
    B = factorize_source(matrix, perm="bitrev", row_group_bytes=args.row_group_bytes,
                         progress=True if args.progress else None,
                         exact_error=args.exact_error)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "kind": args.kind, "n": args.n, "dtype": "complex64", "seconds": round(seconds, 1),
        "peak_rss_GB": round(peak_rss_bytes() / 1e9, 3),
        "rss_before_GB": round(baseline / 1e9, 3),
        "formula_GB": round(formula_bytes(args.n, np.complex64, args.row_group_bytes) / 1e9, 3),
        "matrix_GB": round(args.n * args.n * 8 / 1e9, 2),
        "row_groups": B.info["row_groups"],
        "relative_error": B.info["relative_error"],
        "error_is_estimate": B.info["relative_error_is_estimate"],
        "numba_threads": __import__("numba").get_num_threads(),
    }))


def write_zarr(path: str, n: int, rows_per_chunk: int) -> None:
    """Write the matrix to ``path`` block by block (never whole in memory)."""
    import zarr

    block = nonuniform_dft(n)
    # Uncompressed: the entries are incompressible, and the point is the I/O pattern.
    if hasattr(zarr, "create_array"):  # zarr 3
        z = zarr.create_array(store=path, shape=(n, n), chunks=(rows_per_chunk, n),
                              dtype=np.complex64, compressors=None, overwrite=True)
    else:  # zarr 2
        z = zarr.open_array(path, mode="w", shape=(n, n), chunks=(rows_per_chunk, n),
                            dtype=np.complex64, compressor=None)
    step = max(rows_per_chunk, (1 << 26) // (n * 8) // rows_per_chunk * rows_per_chunk)
    columns = np.arange(n)
    for start in range(0, n, step):
        rows = np.arange(start, min(start + step, n))
        z[start:start + len(rows)] = block(rows, columns)


def compare(n: int) -> None:
    """Streamed (zarr, memmap, function, Dask) and in-memory factors are identical."""
    import tempfile

    import fastbfly

    block = nonuniform_dft(n)
    dense = block(np.arange(n), np.arange(n))
    reference = fastbfly.factorize(dense, perm="bitrev")
    with tempfile.TemporaryDirectory() as directory:
        import zarr

        z = zarr.open_array(os.path.join(directory, "m.zarr"), mode="w", shape=(n, n),
                            chunks=(4, n), dtype=np.complex64)
        z[:] = dense
        sources = {"zarr": z, "function": fastbfly.FunctionMatrix(block, (n, n), np.complex64)}
        for name, source in sources.items():
            B = fastbfly.factorize(source, perm="bitrev")
            same = all(np.array_equal(a.values, b.values) for a, b in zip(B.factors, reference.factors))
            print(json.dumps({"compare": name, "n": n, "identical_factors": same,
                              "relative_error": B.info["relative_error"],
                              "in_memory_relative_error": reference.info["relative_error"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["zarr", "function", "compare"])
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--path", default="/tmp/fastbfly_out_of_core.zarr")
    parser.add_argument("--rows-per-chunk", type=int, default=4)
    parser.add_argument("--row-group-bytes", type=int, default=1 << 28)
    parser.add_argument("--keep", action="store_true", help="keep the zarr array afterwards")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--exact-error", action="store_true",
                        help="measure the product's error in a second streamed pass (default: "
                             "the splits' residual sum, an estimate for the balanced tree)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n & (args.n - 1) or args.n < 4:
        parser.error(f"--n must be a power of two >= 4, got {args.n}")
    if args.kind == "compare":
        compare(args.n)
        return
    if args.child:
        child(args)
        return
    if args.kind == "zarr":
        need = args.n * args.n * 8
        free = os.statvfs(os.path.dirname(os.path.abspath(args.path))).f_bavail * os.statvfs("/").f_frsize
        if free < 1.2 * need and not os.path.exists(args.path):
            sys.exit(f"not enough disk for {need / 1e9:.1f} GB at {args.path} ({free / 1e9:.1f} GB free)")
        if not os.path.exists(args.path):
            started = time.perf_counter()
            write_zarr(args.path, args.n, args.rows_per_chunk)
            print(json.dumps({"wrote": args.path, "GB": round(need / 1e9, 2),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    command = [sys.executable, __file__, args.kind, "--n", str(args.n), "--path", args.path,
               "--row-group-bytes", str(args.row_group_bytes), "--child"]
    if args.progress:
        command.append("--progress")
    if args.exact_error:
        command.append("--exact-error")
    try:
        subprocess.run(command, check=True)
    finally:
        if args.kind == "zarr" and not args.keep:
            import shutil

            shutil.rmtree(args.path, ignore_errors=True)


if __name__ == "__main__":
    main()
