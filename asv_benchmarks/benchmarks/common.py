"""Shared machinery of the fastbfly asv benchmarks.

Most benchmark classes subclass one of the two bases below (:class:`_FactorizeBenchmark`,
:class:`_ProductBenchmark`, as pylops-asv's ``OperatorBenchmark``): the base's ``setup``
builds the inputs with a seeded ``numpy.random.default_rng`` and warms the Numba JIT up,
so that each ``time_*`` method is one call.  The bases are private (and the product one
abstract), so asv does not collect them.

Peers
-----
A peer (pyfaust, lazylinop, dense NumPy, a chain of ``scipy.sparse`` CSR factors,
``scipy.fft``) is a benchmark parameter.  ``setup`` raises ``NotImplementedError``, which
asv reports as *skipped*, when the peer is not installed or cannot do the task (pyfaust
has no complex64; the dense matrix of N = 16384 is 4.3 GB; ``scipy.fft`` only computes
the DFT).  Peers are imported inside ``setup`` only: a skipped combination costs one bare
process start, and pyfaust + lazylinop take seconds to import.

One process per parameter combination
-------------------------------------
asv runs every parameter combination in a fresh process (``launch_method: spawn``) and
recent asv-runner re-runs ``setup`` before every timed sample.  So expensive inputs (the
dense N × N targets, the operators) are memoised per process with ``functools.lru_cache``,
and the full-size warm-up runs once per process (``_warm_once``).  None of the memoised
arrays is ever modified in place.

Peak memory
-----------
``peakmem_*`` is the peak resident set size of the whole benchmark process: the imports
(≈ 0.15 GB for fastbfly, more for pyfaust + lazylinop), the input matrix built in
``setup`` and the factorization's own workspace.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import importlib
import importlib.util
import math
import os
import sys
import warnings

import numpy as np

SEED = 0
FACTORIZE_PEERS = ["fastbfly", "pyfaust", "lazylinop"]
PRODUCT_PEERS = ["fastbfly", "scipy.sparse", "dense", "pyfaust", "lazylinop", "scipy.fft"]
TREES = ["balanced", "left-to-right"]
# Relative Frobenius norm of the noise added for the "noisy-dft" target.
NOISE_LEVEL = 0.1
# Largest N for which a dense N x N peer is built (complex128: 268 MB at 4096, 4.3 GB
# at 16384, which would dominate the run and the machine's memory).
DENSE_MAX_N = 4096
# pyfaust's left-to-right butterfly keeps dense N x N factors: ~10 s at N = 1024 and
# ~75 s / 2 GB at N = 2048 on 2 cores (DESIGN.md §8), so larger sizes are skipped.
PYFAUST_LEFT_TO_RIGHT_MAX_N = 1024
# Agreement required in setup between each peer's products and the CSR chain's.
PEER_CHECK_RTOL = {"f": 1e-4, "d": 1e-9}

_WARMED = set()


# --------------------------------------------------------------------------- helpers
def import_peer(name: str):
    """Import an optional peer, or skip the benchmark (``NotImplementedError``)."""
    package = name.partition(".")[0]
    if importlib.util.find_spec(package) is None:
        raise NotImplementedError(f"{package} is not installed")
    try:
        # lazylinop.signal sets simplefilter("always") at import time and then warns
        # that PyWavelets is missing: import it here, eagerly, recording (not showing)
        # the warnings; catch_warnings restores the filters on exit.
        with warnings.catch_warnings(record=True), os_stdout_silenced():
            if package == "lazylinop":
                importlib.import_module("lazylinop.signal")
            return importlib.import_module(name)
    except ImportError as exc:  # e.g. lazylinop without psutil / pandas
        raise NotImplementedError(f"{name} cannot be imported: {exc}") from exc


@contextlib.contextmanager
def os_stdout_silenced():
    """Silence file descriptor 1: pyfaust's C++ code prints "factorization #k" with
    std::cout, which ``contextlib.redirect_stdout`` does not catch."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        with contextlib.suppress(Exception):  # flush C stdio into /dev/null first
            import ctypes

            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def real_dtype(dtype) -> np.dtype:
    """float32 for complex64, float64 for complex128, the dtype itself if real."""
    return np.finfo(np.dtype(dtype)).dtype


def random_array(rng, shape, dtype, order="C") -> np.ndarray:
    """Standard normal entries (real and imaginary parts for complex dtypes)."""
    dtype = np.dtype(dtype)
    values = rng.standard_normal(shape)
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return np.asarray(values, dtype=dtype, order=order)


@functools.lru_cache(maxsize=4)
def bit_reversal(n: int) -> np.ndarray:
    """Bit-reversal permutation of ``0..n-1`` (its own inverse), built here so that the
    peers' benchmarks do not depend on fastbfly's helper."""
    bits = n.bit_length() - 1
    index = np.arange(n)
    reversed_index = np.zeros(n, dtype=np.int64)
    for bit in range(bits):
        reversed_index |= ((index >> bit) & 1) << (bits - 1 - bit)
    return reversed_index


def relative_error(approximation, reference) -> float:
    return float(np.linalg.norm(approximation - reference) / np.linalg.norm(reference))


def _warm_once(key, warm_up) -> None:
    """Run ``warm_up()`` the first time ``key`` is seen in this process (setup is re-run
    before every sample; the JIT only needs warming once)."""
    if key not in _WARMED:
        warm_up()
        _WARMED.add(key)


# --------------------------------------------------------------------------- matrices
@functools.lru_cache(maxsize=2)
def dft_matrix(n: int, dtype: str = "complex128") -> np.ndarray:
    """Unnormalised DFT ``F[k, l] = exp(-2iπ kl/n)``, built in row blocks so that no
    temporary much larger than a few MB raises the peak memory above the matrix."""
    matrix = np.empty((n, n), dtype=dtype)
    columns = np.arange(n, dtype=np.int64)
    step = max(1, (1 << 18) // n)
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step), dtype=np.int64)
        matrix[start:start + len(rows)] = np.exp((-2j * np.pi / n) * ((rows[:, None] * columns) % n))
    return matrix


@functools.lru_cache(maxsize=2)
def target_matrix(n: int, dtype: str, target: str) -> np.ndarray:
    """The matrix to factorize.

    ``"dft"``: the complex DFT for complex dtypes; for real dtypes the Walsh–Hadamard
    matrix (the DFT of the group Z_2^J) with bit-reversed columns.  Both are exact
    butterflies once their columns are bit-reversed, so ``perm="bitrev"`` recovers them
    to rounding.  ``"noisy-dft"``: the same plus Gaussian noise of relative Frobenius
    norm ``NOISE_LEVEL``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        matrix = dft_matrix(n, dtype.name)
    else:
        from scipy.linalg import hadamard

        matrix = np.ascontiguousarray(hadamard(n, dtype=dtype)[:, bit_reversal(n)])
    if target == "dft":
        return matrix
    if target != "noisy-dft":
        raise ValueError(f"unknown target {target!r}")
    noise = random_array(np.random.default_rng(SEED), (n, n), dtype)
    # ‖F‖_F = n for the DFT and the Hadamard matrix (all entries of modulus one).
    noise *= NOISE_LEVEL * n / np.linalg.norm(noise)
    noise += matrix
    return noise


@functools.lru_cache(maxsize=2)
def benchmark_butterfly(n: int, dtype: str):
    """The operator of the product benchmarks: the exact DFT butterfly for complex
    dtypes (so ``scipy.fft`` computes the same product); for real dtypes a butterfly
    with seeded random factor values and the same bit-reversal column permutation."""
    import fastbfly

    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return fastbfly.dft_butterfly(n, dtype=dtype)
    rng = np.random.default_rng(SEED)
    factors = [
        fastbfly.Factor(pattern, random_array(rng, tuple(pattern), dtype) / math.sqrt(2))
        for pattern in fastbfly.Chain.square_dyadic(n)
    ]
    return fastbfly.Butterfly(factors, perm=bit_reversal(n))


# --------------------------------------------------------------------------- factorize
class Factorizer:
    """One peer's factorization: ``run(M)`` returns a handle, ``toarray(handle)`` the
    dense approximation of ``M``, ``reported_error(handle)`` the library's own error
    figure (NaN when it gives none)."""

    def __init__(self, run, toarray, reported_error=None):
        self.run = run
        self.toarray = toarray
        self.reported_error = reported_error or (lambda handle: math.nan)


def make_factorizer(peer: str, tree: str, n: int, dtype: str) -> Factorizer:
    """Every peer factorizes ``M`` with the bit-reversal column permutation."""
    if tree not in TREES:
        raise ValueError(f"unknown tree {tree!r}")
    if peer == "fastbfly":
        import fastbfly

        def toarray(B):
            # The CSR chain of B.tosparse() on the identity rather than B.toarray(): no
            # product kernel to compile in this process, and a cross-check of tosparse.
            return _csr_chain_apply(B.tosparse(), np.eye(B.shape[1], dtype=B.dtype))

        return Factorizer(
            lambda M: fastbfly.factorize(M, tree=tree, perm="bitrev"),
            toarray,
            lambda B: float(B.info["relative_error"]),
        )
    if peer == "pyfaust":
        if np.dtype(dtype) == np.complex64:
            raise NotImplementedError("pyfaust has no complex64")
        if tree == "left-to-right" and n > PYFAUST_LEFT_TO_RIGHT_MAX_N:
            raise NotImplementedError(
                f"pyfaust butterfly(type='right') above N={PYFAUST_LEFT_TO_RIGHT_MAX_N} "
                "takes minutes and GBs (dense N x N factors)"
            )
        pyfaust_fact = import_peer("pyfaust.fact")
        kind = {"balanced": "bbtree", "left-to-right": "right"}[tree]

        def run(M):
            with os_stdout_silenced():
                return pyfaust_fact.butterfly(M, type=kind, perm="bitrev")

        return Factorizer(run, lambda faust: faust.toarray())
    if peer == "lazylinop":
        butterfly = import_peer("lazylinop.butterfly")
        order = {"balanced": "balanced", "left-to-right": "l2r"}[tree]

        def run(M):
            # ksd has no permutation argument: factorize M[:, bitrev], so M ≈ L P with
            # (P x) = x[bitrev]; the permuted copy is part of the timed work.
            return butterfly.ksd(
                M[:, bit_reversal(M.shape[1])], butterfly.Chain.square_dyadic(M.shape), order=order
            )

        # bitrev is an involution: L P = L[:, bitrev].
        return Factorizer(run, lambda L: L.toarray()[:, bit_reversal(L.shape[1])])
    raise ValueError(f"unknown factorization peer {peer!r}")


class _FactorizeBenchmark:
    """Factorize a target matrix of size N.

    Subclasses set ``params``/``param_names``; ``setup`` receives
    ``(n, dtype, tree[, target[, peer]])``.  The matrix is built (memoised) and the
    factorizer is warmed up: fastbfly by one full-size factorization per process (so
    that the parallel kernels used at large N are compiled or loaded from the Numba
    cache before timing), peers by a small one (their lazy initialisation).
    """

    timeout = 900
    rounds = 1
    # Seconds-long calls: one call per sample, 1 to 3 samples within ~30 s.
    number = 1
    repeat = (1, 3, 30.0)
    min_run_count = 1
    warmup_time = 0.0

    def setup(self, n, dtype, tree, target="dft", peer="fastbfly"):
        self.factorizer = make_factorizer(peer, tree, n, dtype)
        self.matrix = target_matrix(n, dtype, target)
        if peer == "fastbfly":
            _warm_once(("factorize", peer, n, dtype, tree, target),
                       lambda: self.factorizer.run(self.matrix))
        else:
            _warm_once(("factorize", peer, dtype, tree),
                       lambda: self.factorizer.run(target_matrix(16, dtype, "dft")))


# --------------------------------------------------------------------------- products
class Product:
    """One peer's way of applying the benchmark operator B: ``forward(X) = B @ X``,
    ``adjoint(Y) = Bᴴ @ Y``, ``nbytes`` stored, ``fortran`` if it wants F-ordered X, and
    ``forward_into(X, out)`` (``B @ X`` into a given array) for peers that have one."""

    def __init__(self, forward, adjoint, nbytes, fortran=False, linear_operator=None,
                 forward_into=None):
        self.forward = forward
        self.adjoint = adjoint
        self.nbytes = nbytes
        self.fortran = fortran
        self._linear_operator = linear_operator
        self.forward_into = forward_into

    def linear_operator(self, shape, dtype):
        """A ``scipy.sparse.linalg.LinearOperator`` (for the solver benchmark)."""
        if self._linear_operator is not None:
            return self._linear_operator
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(shape, matvec=self.forward, rmatvec=self.adjoint,
                              matmat=self.forward, rmatmat=self.adjoint, dtype=dtype)


@functools.lru_cache(maxsize=1)
def _csr_chain(B):
    """B's factors as sorted ``scipy.sparse`` CSR arrays, left-most first (the
    permutations included as CSR matrices)."""
    matrices = [m.tocsr() for m in B.tosparse()]
    for m in matrices:
        m.sort_indices()
    return matrices


def _csr_chain_apply(matrices, X):
    for m in reversed(matrices):  # right-most factor first
        X = m @ X
    return X


def _csr_chain_apply_adjoint(adjoints, Y):
    for m in adjoints:  # Bᴴ = X_Lᴴ ⋯ X_1ᴴ: X_1ᴴ first
        Y = m @ Y
    return Y


@functools.lru_cache(maxsize=1)
def _csr_chain_adjoints(B):
    adjoints = [m.conj().T.tocsr() for m in _csr_chain(B)]
    for m in adjoints:
        m.sort_indices()
    return adjoints


def reference_products(n: int, dtype: str, X, Y):
    """``B @ X`` and ``Bᴴ @ Y`` for :func:`benchmark_butterfly` by the CSR chain: the
    reference against which every peer (fastbfly included) is checked in ``setup``.
    (scipy.sparse needs no JIT; fastbfly's product kernels would be compiled again in
    every process of a peer.)"""
    B = benchmark_butterfly(n, dtype)
    return (_csr_chain_apply(_csr_chain(B), X),
            _csr_chain_apply_adjoint(_csr_chain_adjoints(B), Y))


def _csr_nbytes(matrices) -> int:
    return int(sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in matrices))


def dense_nbytes(n: int, dtype) -> int:
    return n * n * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=1)
def make_product(peer: str, n: int, dtype: str) -> Product:
    """``Product`` of ``peer`` for :func:`benchmark_butterfly` ``(n, dtype)``."""
    dtype = np.dtype(dtype)
    is_dft = dtype.kind == "c"
    if peer == "scipy.fft":
        if not is_dft:
            raise NotImplementedError("scipy.fft only computes the DFT (the real operator is a random butterfly)")
        import scipy.fft

        # Bᴴ = n · IDFT; norm="forward" puts no 1/n on the inverse transform.
        return Product(lambda X: scipy.fft.fft(X, axis=0, workers=-1),
                       lambda Y: scipy.fft.ifft(Y, axis=0, norm="forward", workers=-1),
                       nbytes=0)
    if peer == "dense" and n > DENSE_MAX_N:
        raise NotImplementedError(f"dense N x N above N={DENSE_MAX_N} ({dense_nbytes(n, dtype) / 1e9:.1f} GB)")
    if peer == "pyfaust" and dtype == np.complex64:
        raise NotImplementedError("pyfaust has no complex64")
    if peer == "pyfaust":
        pyfaust = import_peer("pyfaust")
    if peer == "lazylinop":
        lazylinop_butterfly = import_peer("lazylinop.butterfly")

    B = benchmark_butterfly(n, dtype.name)
    if peer == "fastbfly":
        import fastbfly

        def adjoint(Y):
            return B.rmatvec(Y) if Y.ndim == 1 else B.rmatmat(Y)

        return Product(B.__matmul__, adjoint, B.nbytes,
                       linear_operator=fastbfly.ButterflyOperator(B),
                       forward_into=lambda X, out: B.dot(X, out=out))
    if peer == "scipy.sparse":
        matrices, adjoints = _csr_chain(B), _csr_chain_adjoints(B)
        return Product(functools.partial(_csr_chain_apply, matrices),
                       functools.partial(_csr_chain_apply_adjoint, adjoints),
                       _csr_nbytes(matrices))
    if peer == "dense":
        # Without fastbfly's kernels (B.toarray()), which would need compiling here.
        if is_dft:
            M = dft_matrix(n, dtype.name)
        else:
            M = _csr_chain_apply(_csr_chain(B), np.eye(n, dtype=dtype))
        MH = np.ascontiguousarray(M.conj().T)
        # MH is a convenience copy for a contiguous adjoint; the operator is M.
        return Product(M.__matmul__, MH.__matmul__, M.nbytes,
                       forward_into=lambda X, out: np.matmul(M, X, out=out))
    if peer == "pyfaust":
        from scipy import sparse

        faust = pyfaust.Faust([sparse.csr_matrix(m) for m in _csr_chain(B)])
        faust_adjoint = faust.H
        return Product(faust.__matmul__, faust_adjoint.__matmul__, int(faust.nbytes),
                       fortran=True)
    if peer == "lazylinop":
        # Same factor values, same (a, b, c, d) layout as fastbfly's Factor.values.
        L = lazylinop_butterfly.ksm([np.ascontiguousarray(f.values) for f in B.factors])
        LH = L.H
        perm, row_perm = B.perm, B.row_perm
        if row_perm is not None:
            raise NotImplementedError("benchmark operators have no row permutation")

        def forward(X):
            return L @ X[perm]

        def adjoint(Y):
            result = LH @ Y
            scattered = np.empty_like(result)
            scattered[perm] = result
            return scattered

        nbytes = int(sum(np.asarray(v).nbytes for v in L.ks_values) + perm.nbytes)
        return Product(forward, adjoint, nbytes)
    raise ValueError(f"unknown product peer {peer!r}")


class _ProductBenchmark(abc.ABC):
    """``B @ X`` or ``Bᴴ @ Y`` for the benchmark operator of size N (see
    :func:`benchmark_butterfly`), by one peer.

    Subclasses set ``params`` as ``[N, dtype, peer]`` and say what the input looks like
    (:meth:`input_shape`).  ``setup`` builds the product (memoised) and seeded inputs,
    then, once per process, checks that the peer agrees with fastbfly and warms the JIT
    and the peer's caches up.
    """

    timeout = 300
    rounds = 1
    repeat = (3, 20, 5.0)
    number = 0
    sample_time = 0.01
    warmup_time = 0.05
    min_run_count = 2

    @abc.abstractmethod
    def input_shape(self, n: int) -> tuple:
        """Shape of ``x`` and ``y``: ``(n,)`` for one vector, ``(n, k)`` for k."""

    def setup(self, n, dtype, peer):
        self.product = make_product(peer, n, dtype)
        order = "F" if self.product.fortran else "C"
        rng = np.random.default_rng(SEED)
        self.x = random_array(rng, self.input_shape(n), dtype, order)
        self.y = random_array(rng, self.input_shape(n), dtype, order)
        _warm_once(("product", peer, n, dtype, self.input_shape(n)),
                   lambda: self._check_products(n, dtype, peer))

    def _check_products(self, n, dtype, peer):
        """Both products of the peer against the CSR chain of the same factors: a
        mis-wired peer (or a wrong fastbfly kernel) fails loudly instead of timing the
        wrong thing.  These are also the warm-up calls."""
        rtol = PEER_CHECK_RTOL[real_dtype(dtype).char]
        expected = reference_products(n, dtype, self.x, self.y)
        got = (self.product.forward(self.x), self.product.adjoint(self.y))
        for what, result, reference in zip(("B @ x", "B^H @ y"), got, expected):
            error = relative_error(np.asarray(result).reshape(n, -1), reference.reshape(n, -1))
            if not error <= rtol:
                raise RuntimeError(f"{peer} {what} disagrees with the CSR chain: relative error {error:.2e}")
