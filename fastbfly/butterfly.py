"""The butterfly matrix object: factors, permutations, products."""

from __future__ import annotations

import functools

import numpy as np
import numba

from . import _kernels
from .patterns import Chain, Pattern
from .permutations import validate_permutation

__all__ = ["Factor", "Butterfly", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))

# Threads only for products of at least this many multiply-adds (~20 ms of serial
# work): waking the OpenMP threads costs microseconds on an idle machine but was
# measured at 10-40 ms per parallel region when other processes load the cores.
PARALLEL_MIN_WORK = 1 << 24
# Tasks per thread of the two-phase products of many vectors.
TASKS_PER_THREAD = 4
# Stored values from which one matrix-vector product is shared between threads (same
# reasoning: only where the product itself takes milliseconds).  Chains of 2 × 2 blocks
# are excepted: their fused serial kernel is faster (`Butterfly._vector_path`).
PARALLEL_MIN_NNZ_VEC = 1 << 21
# The fused one-vector kernel of chains of 2 × 2 blocks (`Butterfly._apply_vector`)
# computes these dtypes in another one.  LLVM's SLP vectoriser pairs the real and
# imaginary parts of Numba's complex128 arithmetic in one SIMD register, but leaves
# complex64 arithmetic scalar, so complex64 took 1.4x as long as complex128 (DFT, one
# vector, 10.9 / 48.4 / 228 us against 8.0 / 34.4 / 162 us at N = 1024 / 4096 /
# 16384).  Converted to complex128, applied there and rounded once at the end:
# 10.5 / 38.9 / 172 us (through `Butterfly._apply`'s checks: no fast path), with half
# the rounding error (5.8e-8 against 1.3e-7 relative to the FFT at N = 4096).
# (float32 runs as fast as float64 there: no conversion.)
VECTOR_COMPUTE_DTYPES = {np.dtype(np.complex64): np.dtype(np.complex128)}
# The identity permutation, passed to kernels as "no permutation".
_NO_PERMUTATION = np.empty(0, dtype=np.int64)


def _integer_pair(value, name: str) -> tuple[int, int]:
    """``value`` as a pair of Python ints: integers (or integral floats such as 8.0)
    only, so that 2.5, NaN and Inf are refused instead of truncated."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a pair of integers, got {value!r}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair of integers, got {len(value)} entries: {value!r}")
    pair = []
    for entry in value:
        if isinstance(entry, (bool, np.bool_)) or not isinstance(entry, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} entries must be integers, got {entry!r} in {value!r}")
        if entry != entry or entry in (float("inf"), float("-inf")) or int(entry) != entry:
            raise ValueError(f"{name} entries must be integers, got {entry!r} in {value!r}")
        pair.append(int(entry))
    return tuple(pair)


def _first_non_finite(values: np.ndarray) -> tuple:
    """Index of the first NaN or Inf of ``values`` (C order)."""
    return tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])


class Factor:
    """One Kronecker-sparse factor: a pattern and its block-compressed values.

    Parameters
    ----------
    pattern : Pattern or 4-tuple
        ``(a, b, c, d)``: the support ``I_a ⊗ 1_{b×c} ⊗ I_d``.
    values : (a, b, c, d) array_like
        ``values[i, j, k, t]`` is the entry at row ``i*b*d + j*d + t`` and column
        ``i*c*d + k*d + t`` (see :mod:`fastbfly._kernels` for the layout).  Finite;
        kept as given (no copy).

    Attributes
    ----------
    pattern : Pattern
    values : (a, b, c, d) ndarray

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For values of another shape than the pattern, or holding NaN or Inf.

    Examples
    --------
    >>> import numpy as np
    >>> f = Factor((1, 2, 2, 1), np.array([[[[1.0], [2.0]], [[3.0], [4.0]]]]))
    >>> f.toarray()
    array([[1., 2.],
           [3., 4.]])
    """

    def __init__(self, pattern, values):
        self.pattern = Pattern.of(pattern)
        values = np.asarray(values)
        if values.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"factor values must have one of the dtypes "
                f"{[str(t) for t in SUPPORTED_DTYPES]}, got {values.dtype}"
            )
        if values.shape != tuple(self.pattern):
            raise ValueError(
                f"factor values of pattern {tuple(self.pattern)} must have that shape, "
                f"got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(
                f"factor values of pattern {tuple(self.pattern)} contain NaN or Inf "
                f"(first at index {_first_non_finite(values)}); factors need finite values"
            )
        self.values = values

    @classmethod
    def _view(cls, pattern: Pattern, values: np.ndarray) -> "Factor":
        """A factor on ``values`` as they are (already validated: no checks, no copy)."""
        factor = cls.__new__(cls)
        factor.pattern = pattern
        factor.values = values
        return factor

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(a*b*d, a*c*d)`` of the factor as a matrix.

        Examples
        --------
        >>> Factor((2, 1, 2, 1), np.arange(1.0, 5.0).reshape(2, 1, 2, 1)).shape
        (2, 4)
        """
        return self.pattern.shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the values.

        Examples
        --------
        >>> Factor((1, 1, 1, 1), np.ones((1, 1, 1, 1), np.complex64)).dtype
        dtype('complex64')
        """
        return self.values.dtype

    @property
    def nnz(self) -> int:
        """Number of stored values, ``a*b*c*d`` (zeros among them included).

        Examples
        --------
        >>> Factor((2, 1, 2, 1), np.zeros((2, 1, 2, 1))).nnz
        4
        """
        return self.pattern.nnz

    def _coordinates(self):
        """Row and column of every stored value, in the values' C order."""
        a, b, c, d = self.pattern
        i, j, k, t = np.indices((a, b, c, d), sparse=True)
        return ((i * b + j) * d + t), ((i * c + k) * d + t)

    def toarray(self) -> np.ndarray:
        """Dense ``(a*b*d, a*c*d)`` matrix of this factor.

        Examples
        --------
        Two ``1 × 2`` blocks on the diagonal (``a = 2``):

        >>> Factor((2, 1, 2, 1), np.arange(1.0, 5.0).reshape(2, 1, 2, 1)).toarray()
        array([[1., 2., 0., 0.],
               [0., 0., 3., 4.]])
        """
        rows, cols = self._coordinates()
        dense = np.zeros(self.shape, dtype=self.dtype)
        dense[rows, cols] = self.values
        return dense

    def tosparse(self):
        """This factor as a ``scipy.sparse.csr_array`` with ``nnz`` stored values.

        Examples
        --------
        >>> S = Factor((2, 1, 2, 1), np.arange(1.0, 5.0).reshape(2, 1, 2, 1)).tosparse()
        >>> S.shape, S.nnz
        ((2, 4), 4)
        >>> S.toarray()
        array([[1., 2., 0., 0.],
               [0., 0., 3., 4.]])
        """
        from scipy import sparse

        rows, cols = self._coordinates()
        rows, cols = np.broadcast_arrays(rows, cols)
        return sparse.csr_array(
            (self.values.ravel(), (rows.ravel(), cols.ravel())), shape=self.shape
        )

    def adjoint(self, conjugate: bool = True) -> "Factor":
        """The factor's conjugate transpose (or transpose), pattern ``(a, c, b, d)``.

        Parameters
        ----------
        conjugate : bool, default True
            False gives the plain transpose.

        Returns
        -------
        Factor
            New values (a copy); this factor is unchanged.

        Examples
        --------
        >>> f = Factor((1, 2, 1, 1), np.array([1j, 2.0]).reshape(1, 2, 1, 1))
        >>> f.adjoint().pattern
        Pattern(a=1, b=1, c=2, d=1)
        >>> bool(np.array_equal(f.adjoint().toarray(), f.toarray().conj().T))
        True
        >>> bool(np.array_equal(f.adjoint(conjugate=False).toarray(), f.toarray().T))
        True
        """
        values = self.values.transpose(0, 2, 1, 3)
        values = np.conj(values) if conjugate else values
        return Factor(self.pattern.adjoint, np.ascontiguousarray(values))

    def __repr__(self) -> str:
        return f"Factor({self.pattern!r}, dtype={self.dtype})"


class Butterfly:
    """A product of Kronecker-sparse factors with optional row and column permutations.

    The matrix represented is ``P_rowᵀ X_1 X_2 ⋯ X_L P_colᵀ``: a vector ``x`` is first
    permuted, ``x[perm]``, then the factors are applied right to left (``X_L`` first),
    then the result is scattered back by ``row_perm`` (``y[row_perm] = ...``).  In other
    words ``M[row_perm][:, perm] == X_1 ⋯ X_L``.

    Most users get a `Butterfly` from :func:`fastbfly.factorize`.

    Parameters
    ----------
    factors : sequence of Factor
        Left-most first; consecutive patterns must be chainable and of one dtype.
    perm, row_perm : (n,) / (m,) int array, optional
        Column and row permutations (``None``: identity).
    info : dict, optional
        Free-form information from the factorization (errors, timings, choices).
    shape : (m, n), optional
        Shape of the matrix when the chain covers a zero-padded ``(M, N)`` with
        ``m <= M``, ``n <= N``: vectors are padded with zeros before the product and
        the result is cut to ``m`` rows.  Default: the chain's shape.

    Attributes
    ----------
    factors : list of Factor
        Left-most first; their values are read-only views of one shared buffer.
    chain : Chain
        The factors' patterns.
    shape : (m, n) tuple
    dtype : numpy.dtype
    perm, row_perm : (n,) / (m,) int64 ndarray or None
        Read-only copies of the permutations.
    info : dict
        What :func:`fastbfly.factorize` recorded (empty otherwise).

    Raises
    ------
    TypeError
        For items that are not `Factor` objects, mixed dtypes, or a ``shape`` that is
        not a pair of integers.
    ValueError
        For patterns that do not chain, factor values holding NaN or Inf, invalid
        permutations, or a ``shape`` that does not fit the chain.

    Notes
    -----
    All factor values live in one flat buffer (``L`` 4-D arrays raveled and
    concatenated), which the Numba kernels consume without copying.  The values are
    copied there at construction, and a `Butterfly` is immutable: ``B.factors[k].values``
    are read-only views of that buffer (writing to them raises ``ValueError``).  To
    change values, build a new one, e.g.
    ``Butterfly([Factor(f.pattern, new_values) for f in B.factors], perm=B.perm, ...)``.

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> B = fastbfly.hadamard_butterfly(4)
    >>> B.toarray()
    array([[ 1.,  1.,  1.,  1.],
           [ 1., -1.,  1., -1.],
           [ 1.,  1., -1., -1.],
           [ 1., -1., -1.,  1.]])
    >>> B @ np.ones(4)
    array([4., 0., 0., 0.])
    """

    __array_priority__ = 100  # so that ``ndarray @ B`` defers to ``B.__rmatmul__``

    def __init__(self, factors, perm=None, row_perm=None, info=None, shape=None):
        factors = list(factors)
        if not factors:
            raise ValueError("a Butterfly needs at least one factor")
        for factor in factors:
            if not isinstance(factor, Factor):
                raise TypeError(f"factors must be Factor objects, got {type(factor).__name__}")
        dtypes = {f.dtype for f in factors}
        if len(dtypes) != 1:
            raise TypeError(f"all factors must have one dtype, got {sorted(map(str, dtypes))}")
        self.chain = Chain([f.pattern for f in factors])
        self.dtype = factors[0].dtype
        sizes = [f.nnz for f in factors]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._values = np.empty(self._offsets[-1], dtype=self.dtype)
        self.factors = []
        for factor, start, stop in zip(factors, self._offsets[:-1], self._offsets[1:]):
            view = self._values[start:stop].reshape(tuple(factor.pattern))
            view[...] = factor.values
            # Read-only: products may use cached casts of the buffer (`_values_as`),
            # which an in-place edit would leave stale.
            view.flags.writeable = False
            self.factors.append(Factor._view(factor.pattern, view))
        # Checked again here: a Factor's values are the caller's array, which may have
        # changed since the Factor was made.
        if not np.isfinite(self._values).all():
            index = int(np.flatnonzero(~np.isfinite(self._values))[0])
            k = int(np.searchsorted(self._offsets, index, side="right")) - 1
            raise ValueError(
                f"factor {k} (pattern {tuple(factors[k].pattern)}) has NaN or Inf values (first "
                f"at index {_first_non_finite(self.factors[k].values)}); a Butterfly needs "
                f"finite values"
            )
        self._patterns = np.array([tuple(f.pattern) for f in factors], dtype=np.int64)
        self._middle, self._segments, self._period = _best_middle(self._patterns, self.chain.reversed)
        m, n = self.chain.shape
        shape = (m, n) if shape is None else _integer_pair(shape, "shape")
        if not (1 <= shape[0] <= m and 1 <= shape[1] <= n):
            raise ValueError(f"shape {shape} must fit inside the chain's shape {(m, n)}")
        self.shape = shape
        self.perm = None if perm is None else validate_permutation(perm, n, "perm")
        self.row_perm = None if row_perm is None else validate_permutation(row_perm, m, "row_perm")
        self.info = {} if info is None else dict(info)
        self._cast_values = {self.dtype: self._values}
        self._all_pairs = bool(np.all(self._patterns[:, 1:3] == 2))
        self._pairs_plans = {}

    # ---------------------------------------------------------------- properties
    @property
    def ndim(self) -> int:
        """Always 2, as for a matrix (NumPy-style code checks it).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> fastbfly.hadamard_butterfly(4).ndim
        2
        """
        return 2

    @property
    def nnz(self) -> int:
        """Number of stored factor values.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> fastbfly.hadamard_butterfly(1024).nnz  # 2 N log2 N instead of N**2
        20480
        """
        return int(self._values.size)

    @property
    def nbytes(self) -> int:
        """Bytes held by factor values and permutations (the pair-order copy of the
        values that the first product of a 2 × 2-block chain makes, per direction and
        dtype, is not counted).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(4)  # 16 complex128 values and one permutation
        >>> B.nbytes, B.nnz * 16 + B.perm.nbytes
        (288, 288)
        """
        total = self._values.nbytes
        for p in (self.perm, self.row_perm):
            if p is not None:
                total += p.nbytes
        return total

    def __repr__(self) -> str:
        return (
            f"<Butterfly {self.shape[0]}x{self.shape[1]} dtype={self.dtype} "
            f"factors={len(self.factors)} nnz={self.nnz} "
            f"perm={'yes' if self.perm is not None else 'no'}>"
        )

    # ---------------------------------------------------------------- products
    def matvec(self, x, out=None) -> np.ndarray:
        """``B @ x`` for ``x`` of shape ``(n,)`` or ``(n, 1)``.

        Parameters
        ----------
        x : (n,) or (n, 1) array_like
            Any numeric dtype; the result has ``numpy.result_type(B.dtype, x.dtype)``
            (one of the four supported dtypes, else `TypeError`).  ``x`` is not
            modified.
        out : ndarray, optional
            Where to put the result (as in ``numpy.dot``): its shape and dtype must be
            the result's exactly (else `ValueError` / `TypeError`).  For loops that
            apply ``B`` again and again: a C-contiguous ``out`` that shares no memory
            with ``x`` is written by the kernels directly, instead of a fresh result
            array per call, whose first writes cost (DFT N = 4096, 64 vectors, the
            previous result kept alive, two threads: 2.3-2.5 ms per product, 1.4-1.7
            ms into a reused ``out``); any other writeable ``out``, ``x`` itself included, is
            filled with a copy.

        Returns
        -------
        (m,) or (m, 1) ndarray
            ``out`` when given.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(4)
        >>> B.matvec(np.arange(4.0))
        array([ 6.+0.j, -2.+2.j, -2.+0.j, -2.-2.j])
        >>> bool(np.allclose(B.matvec(np.arange(4.0)), np.fft.fft(np.arange(4.0))))
        True
        >>> y = np.empty(4, dtype=complex)
        >>> B.matvec(np.ones(4), out=y) is y
        True
        >>> y
        array([4.+0.j, 0.+0.j, 0.+0.j, 0.+0.j])
        """
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] != 1:
            raise ValueError(f"matvec expects shape ({self.shape[1]},) or ({self.shape[1]}, 1), got {x.shape}")
        return self._apply(x, adjoint=False, conjugate=False, out=out)

    def rmatvec(self, x, out=None) -> np.ndarray:
        """``Bᴴ @ x`` (conjugate transpose) for ``x`` of shape ``(m,)`` or ``(m, 1)``;
        ``out`` as in `matvec`.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(8)
        >>> x = np.random.default_rng(0).standard_normal(8)
        >>> bool(np.allclose(B.rmatvec(x), B.toarray().conj().T @ x))
        True
        """
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] != 1:
            raise ValueError(f"rmatvec expects shape ({self.shape[0]},) or ({self.shape[0]}, 1), got {x.shape}")
        return self._apply(x, adjoint=True, conjugate=True, out=out)

    def matmat(self, X, out=None) -> np.ndarray:
        """``B @ X`` for ``X`` of shape ``(n, k)``: all ``k`` columns in one pass;
        ``out`` (shape ``(m, k)``) as in `matvec`.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.hadamard_butterfly(4)
        >>> B.matmat(np.eye(4)[:, :2])
        array([[ 1.,  1.],
               [ 1., -1.],
               [ 1.,  1.],
               [ 1., -1.]])
        """
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"matmat expects a 2-D array, got shape {X.shape}")
        return self._apply(X, adjoint=False, conjugate=False, out=out)

    def rmatmat(self, X, out=None) -> np.ndarray:
        """``Bᴴ @ X`` for ``X`` of shape ``(m, k)``; ``out`` (shape ``(n, k)``) as in
        `matvec`.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(8)
        >>> X = np.random.default_rng(0).standard_normal((8, 3))
        >>> bool(np.allclose(B.rmatmat(B.matmat(X)), 8 * X))  # F^H F = N I
        True
        """
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"rmatmat expects a 2-D array, got shape {X.shape}")
        return self._apply(X, adjoint=True, conjugate=True, out=out)

    def __matmul__(self, x):
        if type(x) is np.ndarray:  # the common case first
            return self._apply(x, adjoint=False, conjugate=False)
        if isinstance(x, Butterfly):
            return NotImplemented
        if not isinstance(x, np.ndarray):
            from .sources import _is_dask_array

            if _is_dask_array(x):  # lazily, chunk by chunk, instead of np.asarray(x)
                from .distributed import matmat

                return matmat(self, x)
        return self._apply(np.asarray(x), adjoint=False, conjugate=False)

    def __rmatmul__(self, x):
        # x @ B == (Bᵀ @ xᵀ)ᵀ
        x = np.asarray(x)
        if x.ndim == 1:
            return self._apply(x, adjoint=True, conjugate=False)
        if x.ndim == 2:
            return self._apply(x.T, adjoint=True, conjugate=False).T
        raise ValueError(f"x @ B expects a 1-D or 2-D x, got shape {x.shape}")

    def dot(self, x, out=None):
        """Same as ``B @ x``, for one vector or a 2-D array of columns; ``out`` as in
        `matvec`.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> fastbfly.hadamard_butterfly(4).dot(np.ones(4))
        array([4., 0., 0., 0.])
        """
        if out is None:
            return self @ x
        return self._apply(np.asarray(x), adjoint=False, conjugate=False, out=out)

    def toarray(self) -> np.ndarray:
        """The dense matrix (``O(m n log n)`` work; for checks and small sizes).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(16)
        >>> bool(np.allclose(B.toarray(), np.fft.fft(np.eye(16))))
        True
        """
        identity = np.eye(self.shape[1], dtype=self.dtype)
        return self.matmat(identity)

    def tosparse(self) -> list:
        """Factors as ``scipy.sparse.csr_array`` matrices, left-most first, with the
        row permutation first and the column permutation last when present, so that
        the product of the list is ``B``.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> from functools import reduce
        >>> B = fastbfly.dft_butterfly(8)
        >>> matrices = B.tosparse()  # 3 factors, then the column permutation
        >>> len(matrices), [S.nnz for S in matrices]
        (4, [16, 16, 16, 8])
        >>> bool(np.allclose(reduce(lambda P, Q: P @ Q, matrices).toarray(), B.toarray()))
        True
        """
        from scipy import sparse

        matrices = [f.tosparse() for f in self.factors]
        m, n = self.chain.shape
        if self.row_perm is not None:
            ones = np.ones(m, dtype=self.dtype)
            matrices.insert(0, sparse.csr_array((ones, (self.row_perm, np.arange(m))), shape=(m, m)))
        if self.perm is not None:
            ones = np.ones(n, dtype=self.dtype)
            matrices.append(sparse.csr_array((ones, (np.arange(n), self.perm)), shape=(n, n)))
        if self.shape != self.chain.shape:  # zero padding: cut rows, embed columns
            matrices.insert(0, sparse.eye_array(self.shape[0], m, dtype=self.dtype, format="csr"))
            matrices.append(sparse.eye_array(n, self.shape[1], dtype=self.dtype, format="csr"))
        return matrices

    # ---------------------------------------------------------------- adjoints
    def _adjoint(self, conjugate: bool) -> "Butterfly":
        factors = [f.adjoint(conjugate) for f in reversed(self.factors)]
        return Butterfly(factors, perm=self.row_perm, row_perm=self.perm, shape=self.shape[::-1])

    @property
    def H(self) -> "Butterfly":
        """Conjugate transpose, as a new `Butterfly` (factors reversed and adjoint,
        permutations swapped).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(8)
        >>> bool(np.allclose(B.H.toarray(), B.toarray().conj().T))
        True
        """
        return self._adjoint(conjugate=True)

    @property
    def T(self) -> "Butterfly":
        """Transpose, as a new `Butterfly` (no conjugation).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(8)
        >>> bool(np.allclose(B.T.toarray(), B.toarray().T))
        True
        """
        return self._adjoint(conjugate=False)

    def conj(self) -> "Butterfly":
        """Complex conjugate, as a new `Butterfly`.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> B = fastbfly.dft_butterfly(8)
        >>> bool(np.allclose(B.conj().toarray(), B.toarray().conj()))
        True
        """
        factors = [Factor(f.pattern, np.conj(f.values)) for f in self.factors]
        return Butterfly(factors, perm=self.perm, row_perm=self.row_perm, shape=self.shape)

    def aslinearoperator(self):
        """This matrix as a :class:`fastbfly.ButterflyOperator` (a scipy LinearOperator).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> from scipy.sparse.linalg import cg
        >>> op = fastbfly.hadamard_butterfly(8).aslinearoperator()
        >>> op
        <8x8 ButterflyOperator with dtype=float64>
        >>> x, status = cg(op, op @ np.arange(8.0))  # symmetric: cg applies
        >>> status, bool(np.allclose(x, np.arange(8.0)))
        (0, True)
        """
        from .operator import ButterflyOperator

        return ButterflyOperator(self)

    # ---------------------------------------------------------------- kernel call
    def _apply(self, x: np.ndarray, adjoint: bool, conjugate: bool, out=None) -> np.ndarray:
        """Validate ``x``, apply ``B`` (or ``Bᴴ``/``Bᵀ``) with the Numba kernels.

        With ``out`` (validated by `_out_target`), the result goes there and ``out`` is
        returned: written by the kernels themselves where it is C-contiguous and apart
        from ``x``, else copied in."""
        # The common case first, in a few attribute lookups (at N = 1024 the whole
        # product takes microseconds): one aligned, C-contiguous, writeable vector of
        # B's dtype, with a ready one-vector path (`_vector_path`, built at the first
        # 1-D product only).  Anything else, including every error, takes the checks
        # below.
        path = self._pairs_plans.get((adjoint, conjugate))
        if path is None and x.ndim == 1:
            path = self._vector_path(adjoint, conjugate)
        if (path and out is None and x.dtype is self.dtype and x.ndim == 1 and x.shape[0] == path[0]
                and x.flags.carray):
            out = np.empty(path[0], dtype=self.dtype)
            path[3](path[1], path[2], x, out)
            return out
        if x.dtype.kind not in "biufc":
            raise TypeError(f"x must be a numeric array, got dtype {x.dtype}")
        if x.ndim not in (1, 2):
            raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
        m, n = self.shape
        n_in, n_out = (m, n) if adjoint else (n, m)
        if x.shape[0] != n_in:
            op = "B^H @ x" if adjoint else "B @ x"
            raise ValueError(f"{op} needs x with {n_in} rows, got shape {x.shape}")
        # (the common case first: np.result_type costs a microsecond)
        out_dtype = self.dtype if x.dtype == self.dtype else np.result_type(self.dtype, x.dtype)
        if out_dtype is not self.dtype and out_dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"cannot compute with dtype {out_dtype} (from x.dtype {x.dtype})")
        gather, scatter = (self.row_perm, self.perm) if adjoint else (self.perm, self.row_perm)
        chain_out, chain_in = self.chain.shape[::-1] if adjoint else self.chain.shape

        squeeze = x.ndim == 1
        x2 = x.reshape(n_in, -1)
        # the kernels' output: a 2-D view of ``out`` where they can write it directly
        into = None
        if out is not None and self._out_target(out, (n_out,) + x.shape[1:], out_dtype, x):
            into = out.reshape(n_out, x2.shape[1])
        if self._all_pairs and chain_in == n_in and chain_out == n_out:
            if x2.shape[1] == 1 and not (out_dtype.kind == "c" and self.dtype.kind == "f"):
                result = self._apply_vector(x2[:, 0], adjoint, conjugate, out_dtype,
                                            None if into is None else into[:, 0])
                result = result if squeeze else result[:, None]
            else:
                result = self._apply_pairs(x2, gather, scatter, adjoint, conjugate, out_dtype, into)
                result = result[:, 0] if squeeze else result
            return result if out is None else _filled(out, result, into is not None)
        if scatter is not None or chain_out != n_out:
            into = None  # the kernels' result is rearranged first
        if chain_in != n_in:  # zero padding
            x2 = np.concatenate([x2, np.zeros((chain_in - n_in, x2.shape[1]), dtype=x2.dtype)])
        if gather is not None:
            x2 = x2[gather]  # fancy indexing: a fresh C-ordered copy
        x2 = np.ascontiguousarray(x2, dtype=out_dtype)
        if not x2.flags.writeable:  # e.g. a read-only caller array: the kernel wants one type
            x2 = x2.copy()
        n_columns = x2.shape[1]

        if out_dtype.kind == "c" and self.dtype.kind == "f":
            # Real factors on complex data: treat real and imaginary parts as two real
            # columns each (a free view) instead of casting every factor to complex.
            real = np.dtype(out_dtype.char.lower())
            values = self._values_as(real)
            x2 = x2.view(real)
            result = np.empty((chain_out, x2.shape[1]), dtype=real) if into is None else into.view(real)
            self._run(values, x2, result, adjoint, conjugate, prefer_vec=False)
            result = result.view(out_dtype)
        else:
            values = self._values_as(out_dtype)
            result = np.empty((chain_out, n_columns), dtype=out_dtype) if into is None else into
            self._run(values, x2, result, adjoint, conjugate, prefer_vec=True)

        if scatter is not None:
            scattered = np.empty_like(result)
            scattered[scatter] = result
            result = scattered
        if chain_out != n_out:
            result = result[:n_out]
        result = result[:, 0] if squeeze else result
        return result if out is None else _filled(out, result, into is not None)

    @staticmethod
    def _out_target(out, shape: tuple, dtype: np.dtype, x: np.ndarray) -> bool:
        """Validate ``out=`` for a result of ``shape`` and ``dtype``; whether the kernels
        can write it directly (C-contiguous, aligned, no memory shared with ``x``).

        The dtype must be the result's exactly (as for ``numpy.dot``'s ``out``): a
        cast would cost the pass over memory that ``out`` is there to save."""
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape} (the product's), got {out.shape}")
        if out.dtype != dtype:
            raise TypeError(f"out must have dtype {dtype} (the product's), got {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable, got a read-only array")
        return out.flags.c_contiguous and out.flags.aligned and not np.may_share_memory(out, x)

    def _apply_pairs(self, x2, gather, scatter, adjoint, conjugate, out_dtype, into=None):
        """``B``, ``Bᴴ`` or ``Bᵀ`` times ``x2`` (shape ``(n, k)``) when every factor has
        2 × 2 blocks: the pair-order kernels of ``_kernels``.  One vector: the serial
        vector kernel.  A block of vectors: the column-tile kernels
        (``_kernels.apply_pairs_tiles``; tiles of up to 64 columns, complex data split
        into real and imaginary planes, factors applied in place two at a time, on the
        unit-pivot plan of `_unit_plan`: half the multiply-adds), and
        with several threads once the work pays for a parallel region.  The threads
        share the tiles when there is at least one 64-column tile each; else (64
        vectors on two threads, say) they share the rows of every pass of one
        full-width tile: two tiles of 32 columns cost more set-up per row group (3.0
        against 2.2 ms of CPU, DFT N = 4096, 64 complex128 vectors), which held two
        threads to 1.09-1.33× over one, where the row slices give 1.84-1.86× at
        N = 4096 and 16384 (docs/performance.md)."""
        real_on_complex = out_dtype.kind == "c" and self.dtype.kind == "f"
        # Real factors on complex data: real and imaginary parts are two real columns
        # each (a free view) instead of casting every factor to complex.
        compute = np.dtype(out_dtype.char.lower()) if real_on_complex else out_dtype
        packed, steps = self._unit_plan(adjoint, conjugate, compute)
        gather = _NO_PERMUTATION if gather is None else gather
        scatter = _NO_PERMUTATION if scatter is None else scatter
        if x2.shape[1] == 1 and not real_on_complex:  # (`_apply` goes straight there)
            return self._apply_vector(x2[:, 0], adjoint, conjugate, out_dtype,
                                      None if into is None else into[:, 0])[:, None]
        xc = np.ascontiguousarray(x2, dtype=out_dtype)
        if not xc.flags.writeable:  # one array type per kernel: no recompilation
            xc = xc.copy()
        # The tile kernels take real views: complex data as interleaved re/im columns,
        # split into two planes per tile when the factors are complex too.
        real = np.dtype(out_dtype.char.lower())
        planes = 2 if compute.kind == "c" else 1
        xr = xc.view(real)
        n, columns = xr.shape
        threads = numba.get_num_threads()
        parallel = (threads > 1
                    and n * columns * len(steps) >= _kernels.PAIRS_PARALLEL_MIN_WORK)
        # Threads share the tiles (one parallel region, no barrier) when there are
        # enough full-width tiles to go round; else they share the rows of each pass,
        # keeping full-width tiles at the cost of a barrier or two
        # (`_kernels._apply_pairs_tiles_py`).
        by_rows = parallel and -(-(columns // planes) // _kernels.PAIRS_TILE_COLUMNS) < threads
        shape = _kernels.pairs_tiles_shape(n, columns // planes, planes,
                                           threads if parallel and not by_rows else 1)
        tiles = _kernels.pairs_tiles_scratch(shape, real)
        # Unit-pivot factors take half the arithmetic, so the traffic of a pass per
        # factor is what costs at every tile size: two per pass.
        fuse = bool(steps[:, 3].any()) or tiles[0].nbytes >= _kernels.PAIRS_FUSE_MIN_TILE_BYTES
        out = np.empty_like(xc) if into is None else into
        if parallel:
            _kernels.apply_pairs_tiles_parallel(packed, steps, gather, scatter, xr,
                                                out.view(real), tiles, fuse,
                                                _kernels.PAIRS_FUSE_ENDS,
                                                threads if by_rows else 1)
        else:
            _kernels.apply_pairs_tiles(packed, steps, gather, scatter, xr, out.view(real),
                                       tiles, fuse, _kernels.PAIRS_FUSE_ENDS, 1)
        return out

    def _pairs_plan(self, adjoint: bool, conjugate: bool, dtype: np.dtype):
        """The values (as ``dtype``) in the pair order of ``_kernels.apply_pairs`` for
        ``B``, ``Bᴴ`` or ``Bᵀ``, and the ``(a, d, offset)`` steps in application
        order; built on first use and kept (the factors are read-only, so a plan cannot
        go stale)."""
        conjugate = conjugate and adjoint and dtype.kind == "c"
        key = (adjoint, conjugate, dtype)
        plan = self._pairs_plans.get(key)
        if plan is None:
            values = self._values_as(dtype)
            packed = np.empty_like(values)
            order = range(len(self.factors)) if adjoint else range(len(self.factors) - 1, -1, -1)
            steps = []
            for f in order:
                a, _, _, d = self.factors[f].pattern
                start, stop = self._offsets[f], self._offsets[f + 1]
                blocks = values[start:stop].reshape(a, 2, 2, d)
                # Axes (i, t, row, column) of each 2 × 2 block; an adjoint block is the
                # transpose (rows and columns swapped), conjugated for Bᴴ.
                blocks = blocks.transpose(0, 3, 2, 1) if adjoint else blocks.transpose(0, 3, 1, 2)
                packed[start:stop] = (np.conj(blocks) if conjugate else blocks).ravel()
                steps.append((a, d, start))
            plan = (packed, np.array(steps, dtype=np.int64))
            self._pairs_plans[key] = plan
        return plan

    def _source_pairs_plan(self, adjoint: bool, conjugate: bool, dtype: np.dtype):
        """`_pairs_plan` as the source of a derived plan: kept only if it was built for
        its own use."""
        had_pairs = (adjoint, conjugate, dtype) in self._pairs_plans
        plan = self._pairs_plan(adjoint, conjugate, dtype)
        if not had_pairs:  # (pop: another thread may be building the same plan)
            self._pairs_plans.pop((adjoint, conjugate, dtype), None)
        return plan

    def _unit_plan(self, adjoint: bool, conjugate: bool, dtype: np.dtype):
        """`_pairs_plan` with unit pivots (``_kernels.unit_pivot_plan``: half the
        arithmetic for blocks of vectors); built on first use and kept."""
        conjugate = conjugate and adjoint and dtype.kind == "c"
        key = ("unit", adjoint, conjugate, dtype)
        plan = self._pairs_plans.get(key)
        if plan is None:
            packed, steps = self._source_pairs_plan(adjoint, conjugate, dtype)
            plan = _kernels.unit_pivot_plan(packed, steps, self.chain.shape[0])
            self._pairs_plans[key] = plan
        return plan

    def _apply_vector(self, x1, adjoint, conjugate, out_dtype, into=None):
        """``B``, ``Bᴴ`` or ``Bᵀ`` times one vector ``x1`` (shape ``(n,)``, any layout,
        validated) of a chain of 2 × 2 blocks, computed in ``out_dtype`` (real factors on
        complex data excepted: `_apply_pairs` treats them; complex64 is computed in
        complex128, see `VECTOR_COMPUTE_DTYPES`), into ``into`` if given."""
        compute = VECTOR_COMPUTE_DTYPES.get(out_dtype, out_dtype)
        values, program = self._fused_plan(adjoint, conjugate, compute)
        x1 = np.ascontiguousarray(x1, dtype=compute)
        if not x1.flags.writeable:  # one array type per kernel: no recompilation
            x1 = x1.copy()
        direct = compute == out_dtype
        out = into if direct and into is not None else np.empty(x1.shape[0], dtype=compute)
        _kernels.apply_pairs_vec(values, program, x1, out)
        if direct:
            return out
        if into is None:  # rounded once, at the end
            return out.astype(out_dtype)
        into[...] = out
        return into

    def _vector_path(self, adjoint: bool, conjugate: bool):
        """``(n, values, program, kernel)`` for the fast path of `_apply` (one vector of
        ``B``'s dtype: ``kernel(values, program, x, out)``), or ``False`` when
        ``B`` has none: factors that are not all 2 × 2 blocks, a zero-padded shape, or
        a dtype computed in another one (`VECTOR_COMPUTE_DTYPES`: complex64).  Built on
        first use and kept, with the kernel compiled for it.

        Chains of 2 × 2 blocks take this serial kernel at every size, also where the
        threaded general driver would share the product between threads: one pass per
        two or three factors beats one barrier-separated pass per factor (DFT
        complex128, 2 threads, same process, loaded machine: N = 2**16 2.1 ms against
        20.6 ms, 2**18 36 against 56 ms, 2**20 84 against 160 ms)."""
        path = False
        if (self._all_pairs and self.shape == self.chain.shape
                and self.dtype not in VECTOR_COMPUTE_DTYPES):
            values, program = self._fused_plan(adjoint, conjugate, self.dtype)
            n = self.shape[0]
            vector = np.zeros(n, dtype=self.dtype)
            kernel = _kernels.apply_pairs_vec.specialize(values, program, vector, vector.copy())
            path = (n, values, program, kernel)
        self._pairs_plans[(adjoint, conjugate)] = path
        return path

    def _fused_plan(self, adjoint: bool, conjugate: bool, dtype: np.dtype):
        """The values (as ``dtype``) in the fused order of ``_kernels.apply_pairs_vec``
        for ``B``, ``Bᴴ`` or ``Bᵀ``, and its int64 ``program`` (passes, then the
        permutations); built on first use and kept.

        Consecutive steps are fused while their ``d`` double or halve from one step to
        the next (a square-dyadic chain is one such run): a run of ``m`` steps becomes
        ``m / 2`` two-step passes, or one three-step pass and ``(m - 3) / 2`` two-step
        passes for odd ``m`` (one three-step pass measured faster than a two-step pass
        plus a one-step pass); a lone step is a one-step pass.
        """
        conjugate = conjugate and adjoint and dtype.kind == "c"
        key = ("fused", adjoint, conjugate, dtype)
        plan = self._pairs_plans.get(key)
        if plan is not None:
            return plan
        packed, steps = self._source_pairs_plan(adjoint, conjugate, dtype)
        n = self.chain.shape[0]
        runs = [[0]]
        for s in range(1, len(steps)):
            previous, d = steps[runs[-1][-1], 1], steps[s, 1]
            rising = d == 2 * previous and (len(runs[-1]) == 1 or previous > steps[runs[-1][-2], 1])
            falling = 2 * d == previous and (len(runs[-1]) == 1 or previous < steps[runs[-1][-2], 1])
            if rising or falling:
                runs[-1].append(s)
            else:
                runs.append([s])
        groups = []
        for run in runs:
            if len(run) == 1:
                sizes = [1]
            elif len(run) % 2:
                sizes = [3] + [2] * ((len(run) - 3) // 2)
            else:
                sizes = [2] * (len(run) // 2)
            start = 0
            for size in sizes:
                groups.append(run[start:start + size])
                start += size
        rows, indices, offset = [], [], 0
        for group in groups:
            k = len(group)
            ds = [int(steps[s, 1]) for s in group]
            q = min(ds)
            span = q << k
            # First row of each iteration (g, t) of the pass, in loop order.
            first = (np.arange(n // span)[:, None] * span + np.arange(q)).ravel()
            blocks = []
            for j, s in enumerate(group):  # step j pairs the rows ds[j] apart
                d, base = ds[j], int(steps[s, 2])
                for m in range(1 << k):  # slot m is the row first + Σ_b bit_b(m) ds[b]
                    if m >> j & 1:
                        continue
                    row = first + sum(ds[b] for b in range(k) if m >> b & 1)
                    # block (row // 2d, row % d) of the step: its packed position
                    blocks.append(base + 4 * ((row // (2 * d)) * d + row % d))
            # (iterations, blocks per iteration) -> value indices in consumption order
            index = (np.stack(blocks, axis=1)[:, :, None] + np.arange(4)).ravel()
            indices.append(index)
            rows.append((k, q, *(ds + [0] * (3 - k)), offset))
            offset += index.size
        gather, scatter = (self.row_perm, self.perm) if adjoint else (self.perm, self.row_perm)
        gather = _NO_PERMUTATION if gather is None else gather
        scatter = _NO_PERMUTATION if scatter is None else scatter
        program = np.concatenate([[len(rows), gather.size, scatter.size], np.ravel(rows),
                                  gather, scatter]).astype(np.int64)
        plan = (packed[np.concatenate(indices)], program)
        self._pairs_plans[key] = plan
        return plan

    def _threaded(self, x2: np.ndarray) -> bool:
        """True when ``B @ x2`` is big enough to share between threads (the two-phase
        driver); below that, serial kernels (a parallel region costs milliseconds on a
        loaded machine)."""
        if x2.shape[1] == 1:
            if self.nnz < PARALLEL_MIN_NNZ_VEC:  # (cheap tests before asking Numba)
                return False
            threads = numba.get_num_threads()
            return threads > 1 and min(self._segments, self._period) >= 8 * threads
        return self.nnz * x2.shape[1] >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1

    def _values_as(self, dtype: np.dtype) -> np.ndarray:
        cached = self._cast_values.get(dtype)
        if cached is None:
            cached = self._values.astype(dtype)
            self._cast_values[dtype] = cached
        return cached

    def _run(self, values, x2, out, adjoint, conjugate, prefer_vec):
        """Pick the kernel: one vector or many, serial or threaded, and the tasks."""
        threads = numba.get_num_threads()
        layout = (self._middle, not self.chain.reversed, self._segments, self._period)
        if x2.shape[1] == 1 and prefer_vec:
            # One vector: threads share the product in two phases when the work pays
            # for the barrier; otherwise one serial pass per factor.
            if self._threaded(x2):
                _kernels.apply_chain_parallel(
                    values, self._patterns, self._offsets, x2[:, 0], out[:, 0], adjoint,
                    conjugate, *layout, threads, threads,
                )
            else:
                _kernels.apply_chain_serial(
                    values, self._patterns, self._offsets, x2[:, 0], out[:, 0], adjoint,
                    conjugate, 0, True, 1, 1, 1, 1,
                )
            return
        # Many vectors: the two phases, in a few tasks per thread, so that a task's rows
        # stay in cache through all factors of its phase (one task per segment or
        # residue measured slower: too little work per call).
        parallel = self._threaded(x2)
        kernel = _kernels.apply_chain_parallel if parallel else _kernels.apply_chain_serial
        tasks = TASKS_PER_THREAD * (threads if parallel else 1)
        kernel(values, self._patterns, self._offsets, x2, out, adjoint, conjugate, *layout,
               min(self._segments, tasks), min(self._period, tasks))


def _filled(out: np.ndarray, result: np.ndarray, written: bool) -> np.ndarray:
    """``out`` holding ``result`` (``written``: the kernels already put it there)."""
    if not written:
        out[...] = result
    return out


def _best_middle(patterns: np.ndarray, reversed_chain: bool) -> tuple[int, int, int]:
    """Where to split a chain for the two-phase products (see
    ``_kernels._apply_chain_py``): the factor ``m`` maximising the smaller of the
    number of independent row segments and the residue period, and those two numbers.
    ``(0, 1, 1)`` (one phase) for a single factor or when no split is safe.  Memoised:
    12 µs a chain, 2 % of a 256 x 256 factorization, which builds a Butterfly."""
    return _best_middle_of(tuple(map(tuple, patterns.tolist())), bool(reversed_chain))


@functools.lru_cache(maxsize=256)
def _best_middle_of(patterns: tuple, reversed_chain: bool) -> tuple[int, int, int]:
    patterns = np.array(patterns, dtype=np.int64)
    best = (0, 1, 1)
    for m in range(1, len(patterns)):
        segments, period = phase_layout(patterns, m, reversed_chain)
        if phase_split_is_safe(patterns, m, reversed_chain) and min(segments, period) > min(best[1:]):
            best = (m, segments, period)
    return best


def phase_layout(patterns: np.ndarray, middle: int, reversed_chain: bool) -> tuple[int, int]:
    """Number of independent row segments of the block-diagonal factors and residue
    period of the others, for a split at ``middle``."""
    if reversed_chain:  # adjoint of a chainable chain: the mirror image
        return int(patterns[middle - 1, 0]), int(patterns[middle, 3])
    return int(patterns[middle, 0]), int(patterns[middle - 1, 3])


def phase_split_is_safe(patterns: np.ndarray, middle: int, reversed_chain: bool) -> bool:
    """True if every intermediate vector of the block-diagonal phase has the same
    length (the outer dimension, read from or written to the caller's arrays,
    excepted): each task then owns the same rows of the work buffers at every step, so
    steps that reuse a buffer cannot overwrite another task's rows."""
    rows = patterns[:, 0] * patterns[:, 1] * patterns[:, 3]
    cols = patterns[:, 0] * patterns[:, 2] * patterns[:, 3]
    last = len(patterns) - 1
    if reversed_chain:
        group = range(0, middle)
        sizes = {int(cols[f]) for f in group} | {int(rows[f]) for f in group if f > 0}
    else:
        group = range(middle, last + 1)
        sizes = {int(rows[f]) for f in group} | {int(cols[f]) for f in group if f < last}
    return len(sizes) == 1
