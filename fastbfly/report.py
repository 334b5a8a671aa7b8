"""How well a butterfly compresses a matrix, next to low rank at the same budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .butterfly import Butterfly

__all__ = ["CompressionReport", "compression_report"]

# Entries of the dense block ``B @ I[:, chunk]`` formed at a time by the error
# computation (x 8-16 bytes): the memory stays at a few tens of MB for any size.
CHUNK_ENTRIES = 1 << 21


@dataclass(frozen=True)
class CompressionReport:
    """Result of :func:`compression_report`.

    Attributes
    ----------
    shape : (m, n)
    nnz : int
        Values stored by the butterfly (``B.nnz``).
    dense_size : int
        ``m * n``.
    compression_ratio : float
        ``dense_size / nnz``.
    relative_error : float
        ``‖matrix − B‖_F / ‖matrix‖_F``, computed from ``B``'s products.
    svd_rank_same_budget : int
        The largest ``k`` with ``k * (m + n) <= nnz`` (and ``k <= min(m, n)``): the
        rank of a truncated SVD ``(U_k Σ_k) V_kᴴ`` storing no more values.
    svd_relative_error_same_budget : float
        ``‖matrix − matrix_k‖_F / ‖matrix‖_F`` for the best rank-``k`` approximation
        ``matrix_k`` (Eckart–Young: from the singular values alone).

    Examples
    --------
    A rank-2 matrix is a poor butterfly but an exact low-rank matrix:

    >>> import numpy as np, fastbfly
    >>> rng = np.random.default_rng(0)
    >>> M = rng.standard_normal((64, 2)) @ rng.standard_normal((2, 64))
    >>> report = fastbfly.compression_report(M, fastbfly.factorize(M))
    >>> report.shape, report.nnz, report.dense_size, round(report.compression_ratio, 2)
    ((64, 64), 768, 4096, 5.33)
    >>> round(report.relative_error, 3), report.svd_rank_same_budget
    (0.606, 6)
    >>> report.svd_relative_error_same_budget < 1e-12
    True
    >>> print(report)  # doctest: +ELLIPSIS
    64 x 64 matrix: butterfly stores 768 of 4,096 values (18.75%, compression 5.3x)
      butterfly relative error:            6.062e-01
      truncated SVD, rank 6 (768 values): ...
      low rank is more accurate than the butterfly at this budget
    """

    shape: tuple
    nnz: int
    dense_size: int
    compression_ratio: float
    relative_error: float
    svd_rank_same_budget: int
    svd_relative_error_same_budget: float

    @property
    def svd_nnz(self) -> int:
        """Values stored by the rank-``k`` truncated SVD, ``k * (m + n)``.

        Examples
        --------
        >>> import fastbfly
        >>> H = fastbfly.hadamard_butterfly(16)
        >>> report = fastbfly.compression_report(H.toarray(), H)
        >>> report.svd_rank_same_budget, report.svd_nnz, report.nnz
        (4, 128, 128)
        """
        return self.svd_rank_same_budget * (self.shape[0] + self.shape[1])

    def __str__(self) -> str:
        m, n = self.shape
        if self.relative_error < self.svd_relative_error_same_budget:
            verdict = "the butterfly is more accurate than low rank at this budget"
        elif self.relative_error > self.svd_relative_error_same_budget:
            verdict = "low rank is more accurate than the butterfly at this budget"
        else:
            verdict = "butterfly and low rank are equally accurate at this budget"
        return "\n".join([
            f"{m} x {n} matrix: butterfly stores {self.nnz:,} of {self.dense_size:,} values "
            f"({100 * self.nnz / self.dense_size:.2f}%, compression {self.compression_ratio:.1f}x)",
            f"  butterfly relative error:            {self.relative_error:.3e}",
            f"  truncated SVD, rank {self.svd_rank_same_budget} ({self.svd_nnz:,} values): "
            f"{self.svd_relative_error_same_budget:.3e}",
            f"  {verdict}",
        ])


def compression_report(matrix, butterfly: Butterfly) -> CompressionReport:
    """Stored values, compression and error of ``butterfly`` as an approximation of
    ``matrix``, and the error of the best truncated SVD storing as many values.

    Parameters
    ----------
    matrix : (m, n) array_like
        The dense matrix that was approximated.
    butterfly : Butterfly
        Its approximation, e.g. from :func:`fastbfly.factorize`; shape ``(m, n)``.

    Returns
    -------
    CompressionReport
        ``print(report)`` gives a short summary with a verdict.

    Raises
    ------
    TypeError
        If ``butterfly`` is not a `Butterfly` or ``matrix`` is not numeric.
    ValueError
        If the shapes differ, or ``matrix`` is not 2-D or holds NaN or Inf.

    Notes
    -----
    The error is measured, not taken from ``butterfly.info``: ``B`` is applied to
    blocks of columns of the identity (``O(nnz · n)`` work) and compared with the
    matching columns of ``matrix``, so only one block of ``B`` is ever dense.  The
    truncated SVD's error comes from the singular values of ``matrix``
    (``numpy.linalg.svd``, ``O(m n min(m, n))``).  A rank-``k`` SVD stores
    ``k (m + n)`` values; when the butterfly stores fewer than ``m + n`` values,
    ``k = 0`` and its error is 1.

    Examples
    --------
    A Hadamard matrix is an exact butterfly, but it has no good low-rank
    approximation (all its singular values are equal):

    >>> import fastbfly
    >>> from fastbfly.report import compression_report
    >>> H = fastbfly.hadamard_butterfly(16)
    >>> report = compression_report(H.toarray(), H)
    >>> report.nnz, report.dense_size, report.compression_ratio
    (128, 256, 2.0)
    >>> report.relative_error < 1e-12
    True
    >>> report.svd_rank_same_budget, round(report.svd_relative_error_same_budget, 4)
    (4, 0.866)
    >>> print(report)  # doctest: +ELLIPSIS
    16 x 16 matrix: butterfly stores 128 of 256 values (50.00%, compression 2.0x)
      butterfly relative error:            ...
      truncated SVD, rank 4 (128 values): 8.660e-01
      the butterfly is more accurate than low rank at this budget
    """
    if not isinstance(butterfly, Butterfly):
        raise TypeError(f"compression_report expects a Butterfly, got {type(butterfly).__name__}")
    matrix = np.asarray(matrix)
    if matrix.dtype.kind not in "biufc":
        raise TypeError(f"matrix must be numeric, got dtype {matrix.dtype}")
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    if matrix.shape != butterfly.shape:
        raise ValueError(
            f"matrix of shape {matrix.shape} does not match the butterfly's shape {butterfly.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix contains NaN or Inf")
    m, n = matrix.shape
    work_dtype = np.complex128 if matrix.dtype.kind == "c" or butterfly.dtype.kind == "c" else np.float64

    # ‖matrix − B‖² and ‖matrix‖² accumulated over column blocks, in double precision.
    step = max(1, min(n, CHUNK_ENTRIES // max(m, n)))
    error2 = 0.0
    norm2 = 0.0
    for start in range(0, n, step):
        stop = min(n, start + step)
        identity = np.zeros((n, stop - start), dtype=butterfly.dtype)
        identity[np.arange(start, stop), np.arange(stop - start)] = 1
        columns = butterfly.matmat(identity).astype(work_dtype)  # (m, stop - start)
        block = matrix[:, start:stop].astype(work_dtype)
        error2 += float(np.sum(np.abs(block - columns) ** 2))
        norm2 += float(np.sum(np.abs(block) ** 2))
    relative_error = math.sqrt(error2 / norm2) if norm2 > 0 else math.sqrt(error2)

    rank = min(butterfly.nnz // (m + n), m, n)
    singular = np.linalg.svd(matrix.astype(work_dtype), compute_uv=False)
    total2 = float(np.sum(singular**2))
    tail2 = float(np.sum(singular[rank:] ** 2))
    svd_error = math.sqrt(tail2 / total2) if total2 > 0 else 0.0

    return CompressionReport(
        shape=(m, n),
        nnz=butterfly.nnz,
        dense_size=m * n,
        compression_ratio=m * n / butterfly.nnz,
        relative_error=relative_error,
        svd_rank_same_budget=int(rank),
        svd_relative_error_same_budget=svd_error,
    )
