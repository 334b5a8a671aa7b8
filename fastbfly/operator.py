"""`ButterflyOperator`: a butterfly product as a ``scipy.sparse.linalg.LinearOperator``."""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .butterfly import Butterfly

__all__ = ["ButterflyOperator"]


class ButterflyOperator(LinearOperator):
    """A `Butterfly` as a scipy ``LinearOperator``, for cg, gmres, lsqr, lsmr, svds,
    and PyLops (``pylops.LinearOperator(op)``).

    Products, adjoints and transposes use the native kernels: ``matmat`` applies all
    right-hand sides in one pass, ``adjoint()``/``.H`` and ``transpose()``/``.T``
    return `ButterflyOperator` objects.

    Parameters
    ----------
    butterfly : Butterfly

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> from scipy.sparse.linalg import lsqr
    >>> op = fastbfly.ButterflyOperator(fastbfly.hadamard_butterfly(8))
    >>> y = op @ np.arange(8.0)
    >>> x = lsqr(op, y, atol=1e-12, btol=1e-12)[0]
    >>> bool(np.allclose(x, np.arange(8.0)))
    True
    """

    def __init__(self, butterfly: Butterfly):
        if not isinstance(butterfly, Butterfly):
            raise TypeError(f"ButterflyOperator wraps a Butterfly, got {type(butterfly).__name__}")
        self.butterfly = butterfly
        super().__init__(dtype=np.dtype(butterfly.dtype), shape=butterfly.shape)

    # One 1-D ndarray (what iterative solvers pass) goes straight to the Butterfly,
    # which validates it: scipy's generic route through ``dot`` and ``matvec`` (shape
    # checks, reshapes, ``asarray`` of the result) costs more than the product itself
    # at small sizes.  Everything else (2-D, np.matrix, sparse, scalars, operators)
    # keeps scipy's semantics.

    def matvec(self, x):
        """``A @ x`` for one vector, as scipy's ``matvec`` (a 1-D array goes straight to
        the butterfly kernels; other inputs take scipy's route).

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> op = fastbfly.ButterflyOperator(fastbfly.hadamard_butterfly(4))
        >>> op.matvec(np.array([1.0, 0.0, 0.0, 0.0]))
        array([1., 1., 1., 1.])
        """
        if type(x) is np.ndarray and x.ndim == 1:
            return self.butterfly._apply(x, adjoint=False, conjugate=False)
        return super().matvec(x)

    def rmatvec(self, x):
        """``Aᴴ @ x`` for one vector, as scipy's ``rmatvec``.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> op = fastbfly.ButterflyOperator(fastbfly.dft_butterfly(4))
        >>> bool(np.allclose(op.rmatvec(np.ones(4)), np.fft.fft(np.eye(4)).conj().T @ np.ones(4)))
        True
        """
        if type(x) is np.ndarray and x.ndim == 1:
            return self.butterfly._apply(x, adjoint=True, conjugate=True)
        return super().rmatvec(x)

    def dot(self, x):
        """``A @ x`` for a vector, a block of vectors, or an operator, as scipy's ``dot``.

        Examples
        --------
        >>> import numpy as np, fastbfly
        >>> op = fastbfly.ButterflyOperator(fastbfly.hadamard_butterfly(4))
        >>> op.dot(np.ones(4))
        array([4., 0., 0., 0.])
        >>> op.dot(np.eye(4)).shape
        (4, 4)
        """
        if type(x) is np.ndarray and x.ndim == 1:
            return self.butterfly._apply(x, adjoint=False, conjugate=False)
        return super().dot(x)

    def __matmul__(self, other):
        if type(other) is np.ndarray and other.ndim == 1:
            return self.butterfly._apply(other, adjoint=False, conjugate=False)
        return super().__matmul__(other)

    def _matvec(self, x):
        return self.butterfly.matvec(x)

    def _rmatvec(self, x):
        return self.butterfly.rmatvec(x)

    def _matmat(self, X):
        return self.butterfly.matmat(X)

    def _rmatmat(self, X):
        return self.butterfly.rmatmat(X)

    def _adjoint(self):
        return ButterflyOperator(self.butterfly.H)

    def _transpose(self):
        return ButterflyOperator(self.butterfly.T)

    def toarray(self) -> np.ndarray:
        """The dense matrix (``O(m n log n)`` work; for checks and small sizes).

        Examples
        --------
        >>> import fastbfly
        >>> fastbfly.hadamard_butterfly(2).aslinearoperator().toarray()
        array([[ 1.,  1.],
               [ 1., -1.]])
        """
        return self.butterfly.toarray()
