"""Benchmarks of applying a butterfly: ``B @ x``, ``B @ X``, ``Bᴴ @ y``, a solver step,
and the bytes each peer stores.

The operator (see :func:`.common.benchmark_butterfly`) is the exact DFT butterfly
``fastbfly.dft_butterfly(N)`` for complex dtypes, so that ``scipy.fft.fft`` computes the
same product, and a seeded random real butterfly with the same bit-reversal column
permutation for float64.  Every peer applies the same factors: the ``scipy.sparse`` CSR
chain of ``B.tosparse()``, a pyfaust ``Faust`` of those CSR factors (Fortran-ordered X),
lazylinop ``butterfly.ksm`` of the factor values (plus the permutation gather), and the
dense matrix (N ≤ 4096).  Issue 4's goals read off these, e.g. ``MatVec`` at N = 16384
(≤ 0.6x the CSR chain) and ``MatMat`` at N = 4096 / 16384 (≤ 1.0x ``scipy.fft``).
"""

import numpy as np

from .common import PRODUCT_PEERS, _ProductBenchmark, dense_nbytes, make_product

DTYPES = ["complex64", "complex128", "float64"]
# MatMat: single vs double precision at large N (issue 4 asks complex64 >= 1.7x faster).
COMPLEX_DTYPES = ["complex64", "complex128"]
# Right-hand sides of MatMat (MatVec is the one-vector case).
K = 64


class MatVec(_ProductBenchmark):
    """``B @ x`` for one vector: memory-bound on the factor values at large N; at
    N = 1024 it shows the fixed per-call overhead (no thread start-up on small work)."""

    params = [[1024, 16384], DTYPES, PRODUCT_PEERS]
    param_names = ["N", "dtype", "peer"]

    def input_shape(self, n):
        return (n,)

    def time_matvec(self, n, dtype, peer):
        self.product.forward(self.x)


class MatMat(_ProductBenchmark):
    """``B @ X`` for ``K`` = 64 right-hand sides: the factor values are reused across
    columns, so this is where 2 threads and vectorisation must pay."""

    params = [[4096, 16384], COMPLEX_DTYPES, PRODUCT_PEERS]
    param_names = ["N", "dtype", "peer"]

    def input_shape(self, n):
        return (n, K)

    def time_matmat(self, n, dtype, peer):
        self.product.forward(self.x)


class MatMatInto(MatMat):
    """``B @ X`` into one preallocated result, reused from call to call (fastbfly's
    ``B.dot(X, out=Y)``, numpy's ``matmul(F, X, out=Y)``), as a solver loop that keeps
    its vectors would: no fresh result array, whose first writes cost here (DFT
    N = 4096, 64 vectors, previous result kept alive, two threads: 2.3-2.5 ms against
    1.4-1.7 ms into a reused one).  Peers without an output argument are skipped."""

    def setup(self, n, dtype, peer):
        super().setup(n, dtype, peer)
        if self.product.forward_into is None:
            raise NotImplementedError(f"{peer} has no output argument")
        self.out = np.empty(self.input_shape(n), dtype=dtype)

    def time_matmat(self, n, dtype, peer):
        self.product.forward_into(self.x, self.out)


class Adjoint(_ProductBenchmark):
    """``Bᴴ @ y`` for one vector (``B.rmatvec``; the conjugate-transposed CSR chain;
    ``Faust.H``; lazylinop ``L.H`` then the inverse permutation; ``N · ifft``)."""

    params = [[1024, 16384], ["complex128"], PRODUCT_PEERS]
    param_names = ["N", "dtype", "peer"]

    def input_shape(self, n):
        return (n,)

    def time_rmatvec(self, n, dtype, peer):
        self.product.adjoint(self.y)


class SolverIteration(_ProductBenchmark):
    """One ``scipy.sparse.linalg.lsqr`` iteration (``iter_lim=1``: its set-up ``Aᴴ b``
    plus one ``A v`` and one ``Aᴴ u``) on ``fastbfly.ButterflyOperator``; the peers are
    wrapped in a ``LinearOperator`` (pyfaust's ``Faust`` is not one and has no rmatvec)."""

    params = [[4096], ["complex128"], PRODUCT_PEERS]
    param_names = ["N", "dtype", "peer"]

    def input_shape(self, n):
        return (n,)

    def setup(self, n, dtype, peer):
        super().setup(n, dtype, peer)
        from scipy.sparse.linalg import lsqr

        self.lsqr = lsqr
        self.operator = self.product.linear_operator((n, n), np.dtype(dtype))
        self.rhs = np.ascontiguousarray(self.y)
        self.lsqr(self.operator, self.rhs, iter_lim=1)

    def time_lsqr_iteration(self, n, dtype, peer):
        self.lsqr(self.operator, self.rhs, iter_lim=1)


class StoredBytes:
    """Bytes each peer keeps for the operator: factor values plus permutations
    (fastbfly ``B.nbytes``), CSR data + indices + indptr, the Faust's ``nbytes``,
    lazylinop's ``ks_values`` plus the permutation, the dense matrix N²·itemsize
    (computed, not built)."""

    params = [[16384], ["complex128"], ["fastbfly", "scipy.sparse", "dense", "pyfaust", "lazylinop"]]
    param_names = ["N", "dtype", "peer"]
    unit = "bytes"

    def setup(self, n, dtype, peer):
        if peer == "dense":
            self.nbytes = dense_nbytes(n, dtype)
        else:
            self.nbytes = make_product(peer, n, dtype).nbytes

    def track_stored_bytes(self, n, dtype, peer):
        return self.nbytes
