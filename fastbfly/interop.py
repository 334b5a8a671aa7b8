"""Conversions between `Butterfly` and the peers' formats, without importing the peers.

lazylinop
---------
``lazylinop.butterfly.ksm(ks_values)`` takes a list of 4-D arrays, left-most factor
first, and ``ksd(...).ks_values`` returns one.  Its indexing is fastbfly's own: a factor
with pattern ``(a, b, c, d)`` is an array ``T`` of shape ``(a, b, c, d)`` with

    K[i*b*d + j*d + t, i*c*d + k*d + t] = T[i, j, k, t],

and ``ksm([T_1, ..., T_L])`` is ``K_1 K_2 ⋯ K_L``.  The conversion is therefore a copy
of the values (checked against lazylinop in ``tests/test_general.py``).  lazylinop has
no place for fastbfly's row and column permutations or zero padding: see
:func:`to_lazylinop`.

scipy.sparse
------------
:func:`to_scipy_sparse` gives one CSR matrix per factor (plus permutation and padding
matrices), whose product is the butterfly.
"""

from __future__ import annotations

import numpy as np

from .butterfly import Butterfly, Factor

__all__ = ["to_lazylinop", "from_lazylinop", "to_scipy_sparse"]


def to_lazylinop(butterfly: Butterfly, *, drop_permutations: bool = False):
    """The factors of ``butterfly`` as lazylinop ``ks_values`` and patterns.

    Parameters
    ----------
    butterfly : Butterfly
    drop_permutations : bool, default False
        lazylinop's ``ks_values`` describe the product ``X_1 ⋯ X_L`` only.  By default a
        `Butterfly` with a column or row permutation or zero padding raises, since the
        result would silently be another matrix.  With True its factors are returned
        anyway; they then represent ``M[row_perm][:, perm]`` (see `Butterfly`), and the
        permutations must be applied separately (``B.perm``, ``B.row_perm``).

    Returns
    -------
    ks_values : list of (a, b, c, d) ndarray
        Fresh C-contiguous copies, left-most factor first: pass them to
        ``lazylinop.butterfly.ksm``.
    patterns : list of (a, b, c, d) tuples of int
        The same patterns, the ``ks_patterns`` of a ``lazylinop.butterfly.Chain``.

    Raises
    ------
    TypeError
        If ``butterfly`` is not a `Butterfly`.
    ValueError
        If it has permutations or padding and ``drop_permutations`` is False.

    Examples
    --------
    >>> import fastbfly
    >>> from fastbfly.interop import to_lazylinop
    >>> ks_values, patterns = to_lazylinop(fastbfly.hadamard_butterfly(4))
    >>> patterns
    [(1, 2, 2, 2), (2, 2, 2, 1)]
    >>> ks_values[0].shape
    (1, 2, 2, 2)
    """
    if not isinstance(butterfly, Butterfly):
        raise TypeError(f"to_lazylinop expects a Butterfly, got {type(butterfly).__name__}")
    if not drop_permutations:
        extras = []
        if butterfly.perm is not None:
            extras.append("a column permutation (B.perm)")
        if butterfly.row_perm is not None:
            extras.append("a row permutation (B.row_perm)")
        if butterfly.shape != butterfly.chain.shape:
            extras.append(
                f"zero padding (shape {butterfly.shape} inside a chain of shape "
                f"{butterfly.chain.shape})"
            )
        if extras:
            raise ValueError(
                f"this Butterfly has {' and '.join(extras)}, which lazylinop's ks_values "
                f"cannot hold; pass drop_permutations=True to get the factors X_1 ⋯ X_L "
                f"alone and apply the rest yourself"
            )
    ks_values = [np.array(f.values, order="C", copy=True) for f in butterfly.factors]
    patterns = [tuple(int(v) for v in f.pattern) for f in butterfly.factors]
    return ks_values, patterns


def from_lazylinop(ks_values, perm=None, *, row_perm=None) -> Butterfly:
    """A `Butterfly` from lazylinop ``ks_values``.

    Parameters
    ----------
    ks_values : list of (a, b, c, d) array_like, one 4-D array, or an object with a
        ``ks_values`` attribute (what ``lazylinop.butterfly.ksd`` and ``ksm`` return)
        Left-most factor first.  Arrays are copied; factors of different dtypes are
        promoted to a common one.
    perm, row_perm : (n,) / (m,) int array, optional
        Column and row permutations of the result (see `Butterfly`): for example the
        bit reversal used to factorize a DFT with lazylinop,
        ``ksd(F[:, perm], chain)``, gives back ``F`` with ``from_lazylinop(L, perm)``.

    Returns
    -------
    Butterfly

    Raises
    ------
    TypeError
        For values that are not numeric (float16 is converted to float32, bool and
        integers to float64).
    ValueError
        If an array is not 4-D or the patterns do not form a chainable chain.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbfly.interop import from_lazylinop
    >>> B = from_lazylinop([np.ones((1, 2, 2, 1))])
    >>> B.toarray()
    array([[1., 1.],
           [1., 1.]])
    """
    if hasattr(ks_values, "ks_values") and not isinstance(ks_values, (list, tuple, np.ndarray)):
        ks_values = ks_values.ks_values
    if isinstance(ks_values, np.ndarray) and ks_values.ndim == 4:
        ks_values = [ks_values]
    if not isinstance(ks_values, (list, tuple)) or not ks_values:
        raise ValueError("ks_values must be a non-empty list of 4-D arrays (a, b, c, d)")
    arrays = []
    for index, values in enumerate(ks_values):
        values = np.asarray(values)
        if values.ndim != 4:
            raise ValueError(
                f"ks_values[{index}] must be a 4-D array (a, b, c, d), got shape {values.shape}"
            )
        if values.dtype.kind in "biu":
            values = values.astype(np.float64)
        elif values.dtype == np.float16:
            values = values.astype(np.float32)
        elif values.dtype.kind not in "fc":
            raise TypeError(f"ks_values[{index}] must be numeric, got dtype {values.dtype}")
        arrays.append(values)
    dtype = np.result_type(*arrays)
    factors = [Factor(v.shape, np.array(v, dtype=dtype, order="C", copy=True)) for v in arrays]
    return Butterfly(factors, perm=perm, row_perm=row_perm)


def to_scipy_sparse(butterfly: Butterfly) -> list:
    """The butterfly as a list of ``scipy.sparse.csr_array`` matrices whose product,
    left to right, is the butterfly (same as :meth:`Butterfly.tosparse`).

    Permutations and zero padding appear as extra matrices at the ends of the list.

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> from fastbfly.interop import to_scipy_sparse
    >>> B = fastbfly.hadamard_butterfly(8)
    >>> matrices = to_scipy_sparse(B)
    >>> [m.nnz for m in matrices]
    [16, 16, 16]
    >>> product = matrices[0] @ matrices[1] @ matrices[2]
    >>> bool(np.allclose(product.toarray(), B.toarray()))
    True
    """
    if not isinstance(butterfly, Butterfly):
        raise TypeError(f"to_scipy_sparse expects a Butterfly, got {type(butterfly).__name__}")
    return butterfly.tosparse()
