"""Factorize matrices that do not fit in memory, and apply the result to a batch that
does not either, with Dask.

    pip install "fastbfly[dask]"
    python examples/dask_factorize.py            # N = 4096, a few seconds
    python examples/dask_factorize.py --n 16384  # a 2 GB matrix, about a minute

Shows, on one non-uniform DFT ``Z[j, k] = exp(-2πi x_j k / N)`` (jittered nodes):

1. a `fastbfly.FunctionMatrix`: entries computed block by block, never stored;
2. a zarr array on disk, streamed in row groups in this process;
3. a Dask array on the threaded scheduler (no cluster running), with Dask's
   progress bar;
4. the same on a `distributed.LocalCluster` (the code is the same for a real cluster:
   create the `Client` with its scheduler address instead);
5. ``B @ X`` for a Dask array ``X`` of many right-hand sides, chunk by chunk.

All factorizations give identical factors.
"""

import argparse
import tempfile
import time

import numpy as np

import fastbfly
from fastbfly.distributed import matmat


def nonuniform_dft(n, seed=0):
    nodes = np.arange(n) + 0.05 * np.random.default_rng(seed).uniform(-1, 1, n)

    def block(rows, cols):
        return np.exp(-2j * np.pi * np.multiply.outer(nodes[rows], cols) / n).astype(np.complex64)

    return block


def report(label, B, started):
    print(f"{label:<28} {time.perf_counter() - started:6.1f} s   relative error "
          f"{B.info['relative_error']:.2e}   row groups {B.info['row_groups']}")


def same(B, C):
    return all(np.array_equal(f.values, g.values) for f, g in zip(B.factors, C.factors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="a power of two")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    n = args.n
    block = nonuniform_dft(n)

    import dask.array as da
    import zarr
    from dask.diagnostics import ProgressBar
    from distributed import Client, LocalCluster

    # 1. A function source: nothing of the N x N matrix is ever stored.
    Z = fastbfly.FunctionMatrix(block, (n, n), np.complex64)
    started = time.perf_counter()
    B = fastbfly.factorize(Z, perm="bitrev", progress=True)
    report("function, in process", B, started)

    with tempfile.TemporaryDirectory() as directory:
        # 2. A zarr array on disk, in chunks of 4 rows (a divisor of the root split's row
        #    stride, so that every chunk is read exactly once).
        z = zarr.open_array(f"{directory}/z.zarr", mode="w", shape=(n, n), chunks=(4, n),
                            dtype=np.complex64)
        for start in range(0, n, 256):
            z[start:start + 256] = block(np.arange(start, min(start + 256, n)), np.arange(n))
        started = time.perf_counter()
        C = fastbfly.factorize(z, perm="bitrev")
        report("zarr, in process", C, started)
        assert same(B, C)

        # 3. A Dask array, threaded scheduler (no client is running): Dask's own
        #    progress bar sees the tasks, one per row group.
        x = da.from_zarr(z)
        started = time.perf_counter()
        with ProgressBar():
            D = fastbfly.factorize(x, perm="bitrev")
        report("dask array, threads", D, started)
        assert same(B, D)

        # 4. The same call with a distributed client active: the row groups become
        #    tasks on its workers (here a LocalCluster; for a real cluster,
        #    Client("tcp://scheduler:8786")).  Workers read the zarr files themselves.
        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            print("dashboard / client:", client)
            started = time.perf_counter()
            E = fastbfly.factorize(x, perm="bitrev")
            report("dask array, LocalCluster", E, started)
            assert same(B, E)
            started = time.perf_counter()
            F = fastbfly.distributed.factorize(Z, perm="bitrev", progress=True)
            report("function, LocalCluster", F, started)
            assert same(B, F)

            # 5. B @ X with 20 000 right-hand sides, 2 000 at a time: only a few
            #    chunks are in memory at once, wherever the result goes.
            X = da.random.default_rng(1).standard_normal((n, 20_000), chunks=(n, 2_000))
            Y = matmat(B, X.astype(np.complex64))
            started = time.perf_counter()
            norms = da.linalg.norm(Y, axis=0).compute()
            print(f"B @ X, {X.shape[1]} columns in {len(X.chunks[1])} chunks: "
                  f"{time.perf_counter() - started:.1f} s, mean column norm {norms.mean():.1f}")
    print("all factorizations identical")


if __name__ == "__main__":
    main()
