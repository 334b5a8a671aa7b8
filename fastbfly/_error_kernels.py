"""Numba kernels measuring errors without building factors.  Valid, contiguous input only.

Two kinds of passes over a whole matrix ``Z`` (``m × n``, the root of a chain, whose
columns are read through a gather ``columns``: entry ``(row, col)`` is
``Z[row, columns[col]]``):

* the exact two-factor errors of the splits of the chain (`split_errors_tiled_*`,
  several rank-one splits per pass; `split_errors_rank_r_serial`): the blocks of DESIGN.md §3 at the root
  (``a = d = 1``), block ``(k1, j2)`` being ``M[j1, k2] = Z[j1*b2 + j2, columns[k1*C2 + k2]]``,
  each reduced to its best rank-``r`` error.  Unlike the factorization's kernels they
  write no factor values: for a certificate only the errors matter, and the scattered
  writes of the large child (``N²/2`` values at the first and last splits of a square
  butterfly) cost more than the blocks' arithmetic;
* the error of a given butterfly product (`product_error_*`), from the product written
  as two fused factors at one split, ``X_1⋯X_h`` and ``X_{h+1}⋯X_L``: entry
  ``(j1*b2 + j2, k1*C2 + k2)`` of the product is
  ``Σ_ρ left[j1, k1*r + ρ, j2] · right[k1, ρ*b2 + j2, k2]``, one pass over ``Z`` in
  memory order (a permuted row is put in the product's order in cache first).

Sums of squares are kept in units of ``4**exponent`` (see ``_kernels._accumulate``), so
entries near the largest float neither overflow nor lose their error to rounding.
"""

import math

import numpy as np
from numba import prange

from ._kernels import (
    EMPTY,
    MAX_POWER_STEPS,
    NOT_FINITE,
    RESIDUAL_TOL,
    _abs2,
    _accumulate,
    _adjoint_times,
    _gather_scale,
    _jit,
    _kernel,
    _residual2,
    _times,
    _top_left_vector,
)

# Blocks whose largest magnitude is within [2**-FAST_RANGE, 2**FAST_RANGE] have their
# squares summed as they are; others are rescaled by a power of two first.
FAST_RANGE = 400
# A run of squares summing to within [SAFE_SUM_LOW, SAFE_SUM_HIGH] had no square overflow
# and lost only terms below 2**-530 of its largest entry: kept as computed.
SAFE_SUM_LOW = 2.0 ** -800
SAFE_SUM_HIGH = 2.0 ** 800
# Blocks with a side of at most this many rows or columns get their top singular value
# from that side's Gram matrix instead of power iteration.  A 16-row Gram costs 8.5
# multiply-adds per entry against about 5 for power iteration, but it also gives the
# Gram matrices of the 8-, 4- and 2-row splits by sums (`_derived_gram`), which would
# cost 4.5 + 2.5 + 1.5 more (measured at N = 4096: 383 -> 316 ms of CPU for the splits).
GRAM_SIDE = 16
# A block's error ``‖M‖² − σ₁²`` below this fraction of ``‖M‖²`` is recomputed from its
# top singular pair: the subtraction, with ``‖M‖²`` and ``σ₁²`` each rounded to about
# ``1e-14`` of ``‖M‖²`` (sums of up to thousands of products), keeps the error to about
# ``1e-9`` above it, the accuracy the power iteration is stopped at (`RESIDUAL_TOL`).
# Looser than the factorization's ``_kernels.CANCELLATION`` (1e-4, where the factors
# must be exact to rounding): with 1e-4, the blocks of a DFT with 1 % noise (errors
# near 1e-4 of their norm) took the slow path, and certify cost 6.7 times as much
# as at 10 % noise (N = 1024, split errors: 108 against 16 ms of CPU time).
# `tests/test_certificate.py` checks the errors against LAPACK from 10 % noise down
# to 1e-7.
CANCELLATION = 1e-5
EPS = float(np.finfo(np.float64).eps)
# Entries (one cache line) added to each row of the tile's planes, against cache-set
# conflicts between the rows (`_split_errors_tiled_py`).
PLANE_PAD = 8
# Power steps on a small Gram matrix before `_top_eigenvalue` hands it to LAPACK.
TOP_EIGEN_STEPS = 24
# Reassociation and contraction only (no ``nnan``/``ninf``: the NaN checks must stay),
# for the loops of the certificate's block solvers that are pure sums and products: it
# lets LLVM vectorise their complex reductions, 2-4 times faster on the power
# iteration, and changes only the order of the additions.  Never on code that reaches
# `_kernels._gather_scale`, whose two-step scaling reassociated would overflow for
# subnormal blocks (see the note at `_kernels.split_rank_one_serial`).
FASTMATH = {"reassoc", "contract"}


@_kernel()
def _scan_block(M, rows, cols, row_norm2):
    """One pass over a gathered block: ``(exponent, norm2)`` with the row norms in
    ``row_norm2``.  ``exponent`` is 0 when the entries are in a safe range (their
    squares cannot overflow nor vanish), else the block is rescaled by a power of two
    (``_kernels._gather_scale``) and ``exponent`` says by how much; ``EMPTY`` /
    ``NOT_FINITE`` as there."""
    biggest = 0.0
    not_finite = 0.0
    norm2 = 0.0
    for j in range(rows):
        acc = 0.0
        for k in range(cols):
            value = M[j, k]
            not_finite += value.real * 0.0 + value.imag * 0.0  # NaN for NaN or Inf
            biggest = max(biggest, abs(value.real), abs(value.imag))
            acc += _abs2(value)
        row_norm2[j] = acc
        norm2 += acc
    if not_finite != 0.0:
        return NOT_FINITE, 0.0
    if biggest == 0.0:
        return EMPTY, 0.0
    if 2.0 ** -FAST_RANGE <= biggest <= 2.0 ** FAST_RANGE:
        return 0, norm2
    exponent = _gather_scale(M, rows, cols)
    norm2 = 0.0
    for j in range(rows):
        acc = 0.0
        for k in range(cols):
            acc += _abs2(M[j, k])
        row_norm2[j] = acc
        norm2 += acc
    return exponent, norm2


@_kernel()
def _rayleigh_step(G, k, x, y):
    """``y = G x`` for the unit ``x``; returns the Rayleigh quotient ``xᴴ G x`` and
    ``‖y‖²`` (the step of `_top_eigenvalue` and `_top_eigenvector`)."""
    length2 = _times(G, k, k, x, y)
    rho = 0.0
    for a in range(k):
        rho += (np.conj(x[a]) * y[a]).real
    return rho, length2


@_kernel()
def _top_eigenvalue(G, k, x, y):
    """Largest eigenvalue of a ``k × k`` Hermitian positive semidefinite ``G`` (``x``
    and ``y``: workspaces of at least ``k`` entries of ``G``'s dtype).

    Closed form for ``k <= 2``.  Larger ``G`` get power iteration from the column of
    the largest diagonal entry, stopped by the Kato–Temple inequality: for a unit
    ``x`` with ``ρ = xᴴ G x`` and ``ε = ‖G x − ρ x‖``, ``λ₂ <= trace − λ₁ <=
    trace − ρ`` gives ``ρ <= λ₁ <= ρ + ε²/(2ρ − trace)`` when ``2ρ > trace``, and the
    iteration stops once that bound is below ``RESIDUAL_TOL`` times ``trace − ρ``
    (the block's error, at least); ``ρ`` is returned (never above ``λ₁`` but for
    rounding).  A few steps suffice for the blocks of a good butterfly fit (a
    dominant ``λ₁``), at a tenth of the cost of ``numpy.linalg.eigvalsh`` (LAPACK's
    call overhead dominates at ``k <= 8``), which the other matrices get after
    ``TOP_EIGEN_STEPS`` steps.  When ``trace − ρ < CANCELLATION · trace`` the caller
    recomputes the error from the singular pair anyway: ``ρ`` is returned at once."""
    if k == 1:
        return G[0, 0].real
    if k == 2:
        p = G[0, 0].real
        s = G[1, 1].real
        half_gap = 0.5 * (p - s)
        return 0.5 * (p + s) + math.sqrt(half_gap * half_gap + _abs2(G[0, 1]))
    trace = 0.0
    first = 0
    for a in range(k):
        trace += G[a, a].real
        if G[a, a].real > G[first, first].real:
            first = a
    norm2 = 0.0
    for a in range(k):
        x[a] = G[a, first]
        norm2 += _abs2(x[a])
    if not 0.0 < norm2 < np.inf:
        return np.linalg.eigvalsh(G)[k - 1]
    inv = 1.0 / math.sqrt(norm2)
    for a in range(k):
        x[a] *= inv
    for _ in range(TOP_EIGEN_STEPS):
        rho, norm2 = _rayleigh_step(G, k, x, y)
        if trace - rho < CANCELLATION * trace:
            return rho
        residual2 = 0.0
        for a in range(k):
            residual2 += _abs2(y[a] - rho * x[a])
        if 2.0 * rho > trace and residual2 / (2.0 * rho - trace) <= RESIDUAL_TOL * (trace - rho):
            return rho
        inv = 1.0 / math.sqrt(norm2)
        for a in range(k):
            x[a] = y[a] * inv
    return np.linalg.eigvalsh(G)[k - 1]


@_kernel()
def _top_eigenvector(G, k, x, y):
    """Unit top eigenvector ``x`` of a ``k × k`` Hermitian positive semidefinite ``G``
    whose top eigenvalue holds nearly all of its trace (``y``: workspace), by power
    iteration from the column of the largest diagonal entry until ``‖G x − ρ x‖ <=
    16 ε ρ`` (the vector then lies within ``~16 ε`` of the eigenvector, the gap being
    about ``ρ``).  Returns False if that does not happen in ``TOP_EIGEN_STEPS`` steps."""
    first = 0
    for a in range(k):
        if G[a, a].real > G[first, first].real:
            first = a
    for a in range(k):
        x[a] = G[a, first]
    for _ in range(TOP_EIGEN_STEPS):
        norm2 = 0.0
        for a in range(k):
            norm2 += _abs2(x[a])
        if not 0.0 < norm2 < np.inf:
            return False
        inv = 1.0 / math.sqrt(norm2)
        for a in range(k):
            x[a] *= inv
        rho, _ = _rayleigh_step(G, k, x, y)
        residual2 = 0.0
        for a in range(k):
            residual2 += _abs2(y[a] - rho * x[a])
        if residual2 <= (16.0 * EPS * rho) ** 2:
            return True
        for a in range(k):
            x[a] = y[a]
    return False


@_kernel(fastmath=FASTMATH)
def _planes_pair_residual2(real, imag, row0, step, first, runs, run_step, run_length,
                           complex_values, x):
    """`_planes_near_exact_residual2` for ``k = 2`` vectors, in one sweep: ``Σ_p ‖X_p
    − conj(x_p) z‖²`` is ``‖(I − a aᴴ) M‖²`` for the ``2 × L`` matrix ``M`` of rows
    ``X_p`` and ``a = conj(x)``; with ``b = (−x_1, x_0)`` (unit, orthogonal to ``a``)
    ``I − a aᴴ = b bᴴ``, so it is ``‖bᴴ M‖² = ‖conj(x_0) X_1 − conj(x_1) X_0‖²``
    (``x`` a unit vector).  One combination per pair of entries instead of ``z`` and two
    residuals."""
    a_r = x[0].real
    a_i = x[0].imag
    b_r = x[1].real
    b_i = x[1].imag
    total = 0.0
    for q in range(runs):
        base = first + q * run_step
        r0 = real[row0, base:base + run_length]
        r1 = real[row0 + step, base:base + run_length]
        if complex_values:
            i0 = imag[row0, base:base + run_length]
            i1 = imag[row0 + step, base:base + run_length]
            for c in range(run_length):
                # conj(x_0) X_1 − conj(x_1) X_0
                dr = (a_r * r1[c] + a_i * i1[c]) - (b_r * r0[c] + b_i * i0[c])
                di = (a_r * i1[c] - a_i * r1[c]) - (b_r * i0[c] - b_i * r0[c])
                total += dr * dr + di * di
        else:
            for c in range(run_length):
                dr = a_r * r1[c] - b_r * r0[c]
                total += dr * dr
    return total


@_kernel(fastmath=FASTMATH)
def _planes_near_exact_residual2(real, imag, row0, step, k, first, runs, run_step, run_length,
                                 complex_values, x, z_real, z_imag):
    """Best rank-one error of a block whose Gram matrix ``G`` showed an error below
    ``CANCELLATION`` of its norm, computed directly from the tile's planes.

    The block is ``k`` vectors ``X_p = real[row0 + p·step] + i·imag[row0 + p·step]``
    along its long side (its rows, or its columns: `_fill_row_planes`,
    `_fill_column_planes`), each the ``runs`` runs of ``run_length`` entries that
    start at ``first + q·run_step`` (``q < runs``), with ``G[p, q] = Σ_c conj(X_p[c])
    X_q[c]``.  With ``x`` the unit top eigenvector of ``G`` (`_top_eigenvector`) and
    ``z = Σ_p x_p X_p`` (formed in the workspaces ``z_real``, ``z_imag``,
    `_planes_rank_one_residual2`; for two vectors, not at all,
    `_planes_pair_residual2`), returns ``Σ_p ‖X_p − conj(x_p) z‖²``: for rows,
    ``‖M − u uᴴ M‖²`` with ``u = conj(x)`` the top left singular vector (``G =
    conj(M Mᴴ)``, ``z = (uᴴ M)ᵀ``); for columns, ``‖M − M v vᴴ‖²`` with
    ``v = x`` the top right one (``G = Mᴴ M``, ``z = M v``).  The error of an explicit
    rank-one approximation, so never below the best one but for rounding, and above
    it by ``~θ² σ₁²`` for the vector's error ``θ`` (``~16 ε``).  Plain-float loops
    along the runs, which LLVM vectorises (the same arithmetic on complex values
    does not: 2-3 times slower, measured at N = 4096).  ``imag`` is unused for real
    data (``complex_values`` False)."""
    if k == 2:
        return _planes_pair_residual2(real, imag, row0, step, first, runs, run_step, run_length,
                                      complex_values, x)
    return _planes_rank_one_residual2(real, imag, row0, step, k, first, runs, run_step,
                                      run_length, complex_values, x, z_real, z_imag)[0]


@_kernel(fastmath=FASTMATH)
def _planes_rank_one_residual2(real, imag, row0, step, k, first, runs, run_step, run_length,
                               complex_values, x, z_real, z_imag):
    """``(Σ_p ‖X_p − conj(x_p) z‖², ‖z‖²)`` with ``z = Σ_p x_p X_p``, for any unit
    ``x``: the body of `_planes_near_exact_residual2` (same arguments), with the
    length of ``z`` (``‖Mᴴ u‖²`` for the rows' ``u = conj(x)``); ``z_real`` and
    ``z_imag``: workspaces of at least ``run_length`` entries (``z`` of the last
    run)."""
    # slices of the runs: indexing with ``base + c`` kept LLVM from vectorising
    # (Numba's negative-index wraparound).  Four vectors at a time: each entry of
    # ``z`` is loaded (and stored) once per four vectors instead of once per vector
    # (the loops are bound by their loads).  (``z`` of chunks of 64 or 512 entries,
    # each followed by its residuals while in L1, was no faster.)
    quads = k // 4 * 4
    total = 0.0
    length2 = 0.0
    for q in range(runs):
        length = run_length
        base = first + q * run_step
        zr = z_real[:length]
        zi = z_imag[:length]
        for c in range(length):
            zr[c] = 0.0
            zi[c] = 0.0
        for p in range(0, quads, 4):
            r0 = real[row0 + p * step, base:base + length]
            r1 = real[row0 + (p + 1) * step, base:base + length]
            r2 = real[row0 + (p + 2) * step, base:base + length]
            r3 = real[row0 + (p + 3) * step, base:base + length]
            a0 = x[p].real
            a1 = x[p + 1].real
            a2 = x[p + 2].real
            a3 = x[p + 3].real
            if complex_values:
                i0 = imag[row0 + p * step, base:base + length]
                i1 = imag[row0 + (p + 1) * step, base:base + length]
                i2 = imag[row0 + (p + 2) * step, base:base + length]
                i3 = imag[row0 + (p + 3) * step, base:base + length]
                b0 = x[p].imag
                b1 = x[p + 1].imag
                b2 = x[p + 2].imag
                b3 = x[p + 3].imag
                for c in range(length):
                    zr[c] += ((a0 * r0[c] - b0 * i0[c]) + (a1 * r1[c] - b1 * i1[c])
                              + (a2 * r2[c] - b2 * i2[c]) + (a3 * r3[c] - b3 * i3[c]))
                    zi[c] += ((a0 * i0[c] + b0 * r0[c]) + (a1 * i1[c] + b1 * r1[c])
                              + (a2 * i2[c] + b2 * r2[c]) + (a3 * i3[c] + b3 * r3[c]))
            else:
                for c in range(length):
                    zr[c] += (a0 * r0[c] + a1 * r1[c]) + (a2 * r2[c] + a3 * r3[c])
        for p in range(quads, k):
            pr = x[p].real
            pi = x[p].imag
            xr = real[row0 + p * step, base:base + length]
            if complex_values:
                xi = imag[row0 + p * step, base:base + length]
                for c in range(length):
                    zr[c] += pr * xr[c] - pi * xi[c]
                    zi[c] += pr * xi[c] + pi * xr[c]
            else:
                for c in range(length):
                    zr[c] += pr * xr[c]
        for c in range(length):
            length2 += zr[c] * zr[c]
            if complex_values:
                length2 += zi[c] * zi[c]
        for p in range(0, quads, 4):  # conj(x_p) = a - ib
            r0 = real[row0 + p * step, base:base + length]
            r1 = real[row0 + (p + 1) * step, base:base + length]
            r2 = real[row0 + (p + 2) * step, base:base + length]
            r3 = real[row0 + (p + 3) * step, base:base + length]
            a0 = x[p].real
            a1 = x[p + 1].real
            a2 = x[p + 2].real
            a3 = x[p + 3].real
            if complex_values:
                i0 = imag[row0 + p * step, base:base + length]
                i1 = imag[row0 + (p + 1) * step, base:base + length]
                i2 = imag[row0 + (p + 2) * step, base:base + length]
                i3 = imag[row0 + (p + 3) * step, base:base + length]
                b0 = -x[p].imag
                b1 = -x[p + 1].imag
                b2 = -x[p + 2].imag
                b3 = -x[p + 3].imag
                for c in range(length):
                    sr = zr[c]
                    si = zi[c]
                    d0r = r0[c] - (a0 * sr - b0 * si)
                    d0i = i0[c] - (a0 * si + b0 * sr)
                    d1r = r1[c] - (a1 * sr - b1 * si)
                    d1i = i1[c] - (a1 * si + b1 * sr)
                    d2r = r2[c] - (a2 * sr - b2 * si)
                    d2i = i2[c] - (a2 * si + b2 * sr)
                    d3r = r3[c] - (a3 * sr - b3 * si)
                    d3i = i3[c] - (a3 * si + b3 * sr)
                    total += ((d0r * d0r + d0i * d0i) + (d1r * d1r + d1i * d1i)
                              + (d2r * d2r + d2i * d2i) + (d3r * d3r + d3i * d3i))
            else:
                for c in range(length):
                    sr = zr[c]
                    d0r = r0[c] - a0 * sr
                    d1r = r1[c] - a1 * sr
                    d2r = r2[c] - a2 * sr
                    d3r = r3[c] - a3 * sr
                    total += (d0r * d0r + d1r * d1r) + (d2r * d2r + d3r * d3r)
        for p in range(quads, k):
            pr = x[p].real
            pi = -x[p].imag  # conj(x_p)
            xr = real[row0 + p * step, base:base + length]
            if complex_values:
                xi = imag[row0 + p * step, base:base + length]
                for c in range(length):
                    dr = xr[c] - (pr * zr[c] - pi * zi[c])
                    di = xi[c] - (pr * zi[c] + pi * zr[c])
                    total += dr * dr + di * di
            else:
                for c in range(length):
                    dr = xr[c] - pr * zr[c]
                    total += dr * dr
    return total, length2


@_kernel(inline="always")
def _right_residual2_row(source, first, cols, v, scale):
    """One row of `_right_residual2`: ``(Σ_p |m_p − d conj(scale v_p)|², |d|²)`` for
    the row ``m = source[first:first + cols]`` and ``d = scale Σ_p m_p v_p``."""
    d = source[first] * v[0]
    for p in range(1, cols):
        d += source[first + p] * v[p]
    d *= scale
    total = 0.0
    for p in range(cols):
        total += _abs2(source[first + p] - d * (scale * np.conj(v[p])))
    return total, _abs2(d)


@_kernel(fastmath=FASTMATH)
def _right_residual2(A, spread, t, first, rows, cols, v, scale):
    """``(‖M − (M x) xᴴ‖², ‖M x‖²)`` for the block ``M`` of ``A`` with rows ``j·spread
    + t`` (``j < rows``) and columns ``first .. first + cols − 1``, and ``x = scale·v``
    (a unit vector: ``v`` need not be normalised).

    The error of the rank-one approximation with right vector ``x``, computed
    directly (no cancellation): for a near-exact block solved by power iteration,
    with the unit ``Mᴴ u`` of its start vector (`_near_exact_power`).  One read of
    the block, row by row: each row's entry ``d`` of ``M x`` and its residual
    ``Σ_p |M[j, p] − d conj(x_p)|²`` are formed while the row is in registers.  Four
    rows at a time: one row's sums are chains of dependent additions, four rows' are
    independent (measured on a 2048 × 32 complex array: 0.14 ms against 0.22 ms one
    row at a time).
    Products in double precision (``v``'s: single-precision values are promoted; a
    ``* 1.0`` on them doubled the time, a full complex product)."""
    total0 = 0.0
    total1 = 0.0
    total2 = 0.0
    total3 = 0.0
    length0 = 0.0
    length1 = 0.0
    length2 = 0.0
    length3 = 0.0
    quads = rows // 4 * 4
    for j in range(0, quads, 4):
        s0 = A[j * spread + t]
        s1 = A[(j + 1) * spread + t]
        s2 = A[(j + 2) * spread + t]
        s3 = A[(j + 3) * spread + t]
        d0 = s0[first] * v[0]
        d1 = s1[first] * v[0]
        d2 = s2[first] * v[0]
        d3 = s3[first] * v[0]
        for p in range(1, cols):
            x = v[p]
            d0 += s0[first + p] * x
            d1 += s1[first + p] * x
            d2 += s2[first + p] * x
            d3 += s3[first + p] * x
        d0 *= scale
        d1 *= scale
        d2 *= scale
        d3 *= scale
        for p in range(cols):
            x = scale * np.conj(v[p])
            total0 += _abs2(s0[first + p] - d0 * x)
            total1 += _abs2(s1[first + p] - d1 * x)
            total2 += _abs2(s2[first + p] - d2 * x)
            total3 += _abs2(s3[first + p] - d3 * x)
        length0 += _abs2(d0)
        length1 += _abs2(d1)
        length2 += _abs2(d2)
        length3 += _abs2(d3)
    for j in range(quads, rows):
        row_total, row_length = _right_residual2_row(A[j * spread + t], first, cols, v, scale)
        total0 += row_total
        length0 += row_length
    return (total0 + total1) + (total2 + total3), (length0 + length1) + (length2 + length3)


@_kernel(fastmath=FASTMATH)
def _left_residual2(M, rows, cols, u, scale):
    """``(‖M − x (xᴴ M)‖², ‖Mᴴ x‖²)`` for a gathered block ``M`` and ``x = scale·u``
    (a unit left vector: ``u`` need not be normalised): `_right_residual2` on the
    other side.  Four columns at a time: their entries of ``Mᴴ x`` over all rows,
    then their residuals, while those columns (``4·rows`` values) are in cache."""
    total0 = 0.0
    total1 = 0.0
    total2 = 0.0
    total3 = 0.0
    length = 0.0
    quads = cols // 4 * 4
    for c in range(0, quads, 4):
        y = np.conj(u[0])
        d0 = M[0, c] * y
        d1 = M[0, c + 1] * y
        d2 = M[0, c + 2] * y
        d3 = M[0, c + 3] * y
        for j in range(1, rows):
            y = np.conj(u[j])
            d0 += M[j, c] * y
            d1 += M[j, c + 1] * y
            d2 += M[j, c + 2] * y
            d3 += M[j, c + 3] * y
        d0 *= scale
        d1 *= scale
        d2 *= scale
        d3 *= scale
        for j in range(rows):
            x = scale * u[j]
            total0 += _abs2(M[j, c] - x * d0)
            total1 += _abs2(M[j, c + 1] - x * d1)
            total2 += _abs2(M[j, c + 2] - x * d2)
            total3 += _abs2(M[j, c + 3] - x * d3)
        length += (_abs2(d0) + _abs2(d1)) + (_abs2(d2) + _abs2(d3))
    for c in range(quads, cols):
        d0 = M[0, c] * np.conj(u[0])
        for j in range(1, rows):
            d0 += M[j, c] * np.conj(u[j])
        d0 *= scale
        for j in range(rows):
            total0 += _abs2(M[j, c] - (scale * u[j]) * d0)
        length += _abs2(d0)
    return (total0 + total1) + (total2 + total3), length


@_kernel()
def _near_exact_power(M, rows, cols, norm2, u, w, warm, first):
    """The error of a near-exact block solved by power iteration, in one read of the
    gathered block, or ``-1`` when that is not proven accurate (the caller then runs
    the power iteration, `_block_residual2`).

    ``first`` is the first product of the unit start vector ``z`` with the block,
    formed while it was gathered (`_tile_split_errors`): ``ρ = ‖Mᴴ u‖²`` with ``w =
    Mᴴ u`` (``warm == 2``), or ``ρ = ‖M v‖²`` with ``u = M v`` (``warm == 1``);
    neither is modified.  When ``‖M‖² − ρ < CANCELLATION ‖M‖²`` the block is
    near-exact (``ρ <= σ₁²``, so its error is smaller still), and its error is that
    of the rank-one approximation along ``y``, the normalised ``w`` (right vector,
    `_right_residual2`) or ``u`` (left, `_left_residual2`), computed directly with
    ``ρ' = ‖M y‖²`` (or ``‖Mᴴ y‖²``) in the same read.  That is the power
    iteration's near-exact stop of `_power_sigma2` one half-step in, without its
    separate reads for ``ρ'`` and the residual: ``y`` is one power step from ``z``,
    so its excess ``σ₁² − ρ'`` is at most ``σ₂² (σ₁² − ρ)/ρ``, and Kato–Temple for
    ``z`` bounds that by ``error² (ρ' − ρ)/(2ρ − ‖M‖²)``; the result is accepted when
    this is below ``RESIDUAL_TOL`` times the error (a start from a butterfly that
    fits the block to ``δ`` of its norm gives ``~δ²``: at once for a near-exact
    ``B``, never for a poor one, which pays one read more than before)."""
    if warm == 0 or not first > 0.0 or not 2.0 * first > norm2:
        return -1.0
    if norm2 - first >= CANCELLATION * norm2:
        return -1.0
    scale = 1.0 / math.sqrt(first)
    if warm == 2:
        residual2, quotient = _right_residual2(M, 1, 0, 0, rows, cols, w, scale)
    else:
        residual2, quotient = _left_residual2(M, rows, cols, u, scale)
    if quotient - first <= RESIDUAL_TOL * (2.0 * first - norm2):
        return residual2
    return -1.0


@_kernel(fastmath=FASTMATH)
def _planes_first_product(real, imag, row0, step, rows, first, cols, complex_values, side,
                          start_real, start_imag, out_real, out_imag):
    """``(‖M‖², ρ)`` for the block ``M`` of the row planes with rows ``real[row0 +
    j·step, first:first + cols] + i·imag[...]`` (``j < rows``) and its start vector's
    first product: ``y = Mᴴ u`` (``side == 2``, ``u`` of length ``rows``) or ``y = M v``
    (``side == 1``, ``v`` of length ``cols``), the start given as ``start_real +
    i·start_imag`` and ``y`` written to ``out_real + i·out_imag`` (``out_imag`` zero
    for real data); ``ρ = ‖y‖²``.

    The read of `_tile_split_errors`' gather of a power-iteration block (norms and
    first product), on the planes and without the copy: loops of plain floats along
    the rows, which LLVM vectorises (complex values, as in the gather, do not).
    ``imag`` and the imaginary parts are unused for real data (``complex_values``
    False)."""
    norm2 = 0.0
    if side == 2:
        for c in range(cols):
            out_real[c] = 0.0
            out_imag[c] = 0.0
    j0 = 0
    if side == 2 and complex_values:
        # four rows at a time: ``y`` loaded and stored once per four rows (the loop
        # is bound by its loads and stores)
        while j0 + 4 <= rows:
            r0 = real[row0 + j0 * step, first:first + cols]
            r1 = real[row0 + (j0 + 1) * step, first:first + cols]
            r2 = real[row0 + (j0 + 2) * step, first:first + cols]
            r3 = real[row0 + (j0 + 3) * step, first:first + cols]
            i0 = imag[row0 + j0 * step, first:first + cols]
            i1 = imag[row0 + (j0 + 1) * step, first:first + cols]
            i2 = imag[row0 + (j0 + 2) * step, first:first + cols]
            i3 = imag[row0 + (j0 + 3) * step, first:first + cols]
            a0 = start_real[j0]
            a1 = start_real[j0 + 1]
            a2 = start_real[j0 + 2]
            a3 = start_real[j0 + 3]
            b0 = start_imag[j0]
            b1 = start_imag[j0 + 1]
            b2 = start_imag[j0 + 2]
            b3 = start_imag[j0 + 3]
            for c in range(cols):
                norm2 += ((r0[c] * r0[c] + i0[c] * i0[c]) + (r1[c] * r1[c] + i1[c] * i1[c])
                          + (r2[c] * r2[c] + i2[c] * i2[c]) + (r3[c] * r3[c] + i3[c] * i3[c]))
                out_real[c] += ((r0[c] * a0 + i0[c] * b0) + (r1[c] * a1 + i1[c] * b1)
                                + (r2[c] * a2 + i2[c] * b2) + (r3[c] * a3 + i3[c] * b3))
                out_imag[c] += ((r0[c] * b0 - i0[c] * a0) + (r1[c] * b1 - i1[c] * a1)
                                + (r2[c] * b2 - i2[c] * a2) + (r3[c] * b3 - i3[c] * a3))
            j0 += 4
    for j in range(j0, rows):
        # slices: indexing with ``first + c`` kept LLVM from vectorising (Numba's
        # negative-index wraparound)
        xr = real[row0 + j * step, first:first + cols]
        if complex_values:
            xi = imag[row0 + j * step, first:first + cols]
            if side == 2:  # y += conj(M[j]) u_j
                ur = start_real[j]
                ui = start_imag[j]
                for c in range(cols):
                    norm2 += xr[c] * xr[c] + xi[c] * xi[c]
                    out_real[c] += xr[c] * ur + xi[c] * ui
                    out_imag[c] += xr[c] * ui - xi[c] * ur
            else:  # y_j = M[j] · v
                sr = 0.0
                si = 0.0
                for c in range(cols):
                    norm2 += xr[c] * xr[c] + xi[c] * xi[c]
                    sr += xr[c] * start_real[c] - xi[c] * start_imag[c]
                    si += xr[c] * start_imag[c] + xi[c] * start_real[c]
                out_real[j] = sr
                out_imag[j] = si
        elif side == 2:
            ur = start_real[j]
            for c in range(cols):
                norm2 += xr[c] * xr[c]
                out_real[c] += xr[c] * ur
        else:
            sr = 0.0
            for c in range(cols):
                norm2 += xr[c] * xr[c]
                sr += xr[c] * start_real[c]
            out_real[j] = sr
    length = cols if side == 2 else rows
    rho = 0.0
    for c in range(length):
        rho += out_real[c] * out_real[c]
        if complex_values:
            rho += out_imag[c] * out_imag[c]
        else:  # written all the same: callers combine both parts
            out_imag[c] = 0.0
    return norm2, rho


@_kernel(fastmath=FASTMATH)
def _planes_right_residual2(real, imag, row0, step, rows, first, cols, complex_values, x_real,
                            x_imag, scale):
    """``(‖M − (M x) xᴴ‖², ‖M x‖²)`` for the block of `_planes_first_product` and the
    unit right vector ``x = scale·(x_real + i·x_imag)``: `_right_residual2` on the
    planes.  Row by row: each row's entry ``d`` of ``M x``, then its residual
    ``Σ_c |M[j, c] − d conj(x_c)|²`` while the row is in L1."""
    total = 0.0
    length = 0.0
    j0 = 0
    square = scale * scale
    if complex_values:
        # four rows at a time: ``x`` loaded once per four rows (the loops are bound
        # by their loads)
        while j0 + 4 <= rows:
            r0 = real[row0 + j0 * step, first:first + cols]
            r1 = real[row0 + (j0 + 1) * step, first:first + cols]
            r2 = real[row0 + (j0 + 2) * step, first:first + cols]
            r3 = real[row0 + (j0 + 3) * step, first:first + cols]
            i0 = imag[row0 + j0 * step, first:first + cols]
            i1 = imag[row0 + (j0 + 1) * step, first:first + cols]
            i2 = imag[row0 + (j0 + 2) * step, first:first + cols]
            i3 = imag[row0 + (j0 + 3) * step, first:first + cols]
            d0r = 0.0
            d0i = 0.0
            d1r = 0.0
            d1i = 0.0
            d2r = 0.0
            d2i = 0.0
            d3r = 0.0
            d3i = 0.0
            for c in range(cols):
                vr = x_real[c]
                vi = x_imag[c]
                d0r += r0[c] * vr - i0[c] * vi
                d0i += r0[c] * vi + i0[c] * vr
                d1r += r1[c] * vr - i1[c] * vi
                d1i += r1[c] * vi + i1[c] * vr
                d2r += r2[c] * vr - i2[c] * vi
                d2i += r2[c] * vi + i2[c] * vr
                d3r += r3[c] * vr - i3[c] * vi
                d3i += r3[c] * vi + i3[c] * vr
            d0r *= square
            d0i *= square
            d1r *= square
            d1i *= square
            d2r *= square
            d2i *= square
            d3r *= square
            d3i *= square
            for c in range(cols):
                vr = x_real[c]
                vi = x_imag[c]
                e0r = r0[c] - (d0r * vr + d0i * vi)
                e0i = i0[c] - (d0i * vr - d0r * vi)
                e1r = r1[c] - (d1r * vr + d1i * vi)
                e1i = i1[c] - (d1i * vr - d1r * vi)
                e2r = r2[c] - (d2r * vr + d2i * vi)
                e2i = i2[c] - (d2i * vr - d2r * vi)
                e3r = r3[c] - (d3r * vr + d3i * vi)
                e3i = i3[c] - (d3i * vr - d3r * vi)
                total += ((e0r * e0r + e0i * e0i) + (e1r * e1r + e1i * e1i)
                          + (e2r * e2r + e2i * e2i) + (e3r * e3r + e3i * e3i))
            length += ((d0r * d0r + d0i * d0i) + (d1r * d1r + d1i * d1i)
                       + (d2r * d2r + d2i * d2i) + (d3r * d3r + d3i * d3i)) / square
            j0 += 4
    for j in range(j0, rows):
        xr = real[row0 + j * step, first:first + cols]
        if complex_values:
            xi = imag[row0 + j * step, first:first + cols]
            dr = 0.0
            di = 0.0
            for c in range(cols):
                dr += xr[c] * x_real[c] - xi[c] * x_imag[c]
                di += xr[c] * x_imag[c] + xi[c] * x_real[c]
            dr *= scale * scale  # d·conj(x) = scale² (Σ M x̃) conj(x̃)
            di *= scale * scale
            for c in range(cols):
                er = xr[c] - (dr * x_real[c] + di * x_imag[c])
                ei = xi[c] - (di * x_real[c] - dr * x_imag[c])
                total += er * er + ei * ei
            length += (dr * dr + di * di) / (scale * scale)
        else:
            dr = 0.0
            for c in range(cols):
                dr += xr[c] * x_real[c]
            dr *= scale * scale
            for c in range(cols):
                er = xr[c] - dr * x_real[c]
                total += er * er
            length += dr * dr / (scale * scale)
    return total, length


@_kernel()
def _planes_near_exact_power(real, imag, row0, step, rows, first, cols, imaginary, side,
                             start_real, start_imag, y_real, y_imag, x, z_real, z_imag):
    """The error of a near-exact power-iteration block read from the row planes (no
    gathered copy), or ``-1`` when it is not proven accurate (the caller then gathers
    the block and solves it as before, `_near_exact_power` and `_block_residual2`).

    `_near_exact_power` on the planes, with the start vector's first product formed
    here (`_planes_first_product`, into ``y_real``, ``y_imag``) instead of during a
    copy: the same test (near-exact, ``‖M‖² − ρ < CANCELLATION ‖M‖²``) and the same
    Kato–Temple acceptance (``ρ' − ρ <= RESIDUAL_TOL (2ρ − ‖M‖²)``, which proves the
    explicit rank-one error within ``RESIDUAL_TOL`` of the best one); the error is
    that of the rank-one approximation along the normalised first product, right
    (`_planes_right_residual2`, ``side == 2``) or left (`_planes_near_exact_residual2`,
    ``side == 1``; ``x``, ``rows`` entries of the solvers' dtype, ``z_real``, ``z_imag``,
    ``cols``: its workspaces).  ``imaginary`` is ``1j``, or ``0`` for real data.  Blocks
    whose ``‖M‖²`` is outside ``[SAFE_SUM_LOW, SAFE_SUM_HIGH]`` (zero, NaN or Inf,
    extreme magnitudes) are refused: the gathered path scans and rescales them.
    Returns ``(error or -1, ‖M‖²)``."""
    complex_values = imaginary != 0.0
    norm2, rho = _planes_first_product(real, imag, row0, step, rows, first, cols,
                                       complex_values, side, start_real, start_imag, y_real,
                                       y_imag)
    if not SAFE_SUM_LOW <= norm2 <= SAFE_SUM_HIGH:
        return -1.0, norm2
    if not rho > 0.0 or not 2.0 * rho > norm2 or norm2 - rho >= CANCELLATION * norm2:
        return -1.0, norm2
    scale = 1.0 / math.sqrt(rho)
    if side == 2:  # right vector w/‖w‖
        residual2, quotient = _planes_right_residual2(real, imag, row0, step, rows, first, cols,
                                                      complex_values, y_real, y_imag, scale)
    else:  # left vector u/‖u‖: the rows' residual ‖M − u uᴴ M‖² with x = conj(u)
        for j in range(rows):
            x[j] = y_real[j] * scale - imaginary * (y_imag[j] * scale)
        # and ‖Mᴴ u‖² = ‖z‖²
        residual2, quotient = _planes_rank_one_residual2(real, imag, row0, step, rows, first, 1, 0,
                                                         cols, complex_values, x, z_real, z_imag)
    if quotient - rho <= RESIDUAL_TOL * (2.0 * rho - norm2):
        return residual2, norm2
    return -1.0, norm2


@_kernel()
def _fill_row_planes(tile, complex_values, real, imag):
    """The tile in double precision as real and imaginary planes, ``real[i, c] +
    i·imag[i, c] = tile[i, c]``: the layout of the blocks that have at most
    ``GRAM_SIDE`` rows, their rows as vectors (`_gram_planes`,
    `_planes_near_exact_residual2`).  Plain floats vectorise, complex pairs do not
    (the reason for the planes).  ``imag`` is left alone for real data."""
    tile_rows, width = tile.shape
    for i in range(tile_rows):
        source = tile[i]
        target_real = real[i]
        for c in range(width):
            target_real[c] = source[c].real
        if complex_values:
            target_imag = imag[i]
            for c in range(width):
                target_imag[c] = source[c].imag


@_kernel()
def _fill_column_planes(tile, complex_values, spread, real, imag):
    """The tile transposed into planes, for the blocks that have at most
    ``GRAM_SIDE`` columns (and more rows), their columns as vectors:
    ``real[c, π(i)] + i·imag[c, π(i)] = tile[i, c]`` with ``π(i) = (i mod spread)
    · (tile_rows / spread) + i div spread``.  ``spread`` is that of the group's first
    such split (the fewest rows per block, ``L = tile_rows / spread``): block ``t``
    of that split (tile rows ``j·spread + t``) is then the run of positions ``t·L ..
    t·L + L − 1``, and each block of a later split (``spread / n`` for some ``n``)
    the ``n`` runs from ``(t + q·spread/n)·L``, ``q < n``: the vectors of every
    split's blocks are runs of consecutive entries.  Read once per tile, for all
    those splits (their Gram matrices, and near-exact blocks' errors), instead of
    a transposed copy per block and split."""
    tile_rows, width = tile.shape
    run = tile_rows // spread
    # in the order of the positions: each plane row's cache line is written whole
    # before the next (in the tile's row order, every write hit another line)
    for t in range(spread):
        for j in range(run):
            source = tile[j * spread + t]
            position = t * run + j
            for c in range(width):
                value = source[c]
                real[c, position] = value.real
                if complex_values:
                    imag[c, position] = value.imag


@_kernel(fastmath=FASTMATH)
def _gram_top_eigenvalue(M, rows, cols, G, work_x, work_y):
    """Largest eigenvalue of the small Gram matrix of a block (``M Mᴴ`` when ``rows``
    is the smaller side, else ``Mᴴ M``; ``G`` is its ``k × k`` workspace, ``work_x`` and
    ``work_y`` those of `_top_eigenvalue`): ``σ₁²``.

    Forming ``G`` costs ``(k + 1)/2`` multiply-adds per entry (used for blocks solved
    alone, e.g. the cancellation fallback; the tiles form theirs from planes)."""
    by_rows = rows <= cols
    k = rows if by_rows else cols
    for p in range(k):
        for q in range(k):
            G[p, q] = 0.0
    # ``* 1.0``: products of single-precision entries are formed in double precision
    if by_rows:
        for p in range(k):
            for q in range(p, k):
                acc = M[p, 0] * 1.0 * np.conj(M[q, 0])
                for c in range(1, cols):
                    acc += M[p, c] * 1.0 * np.conj(M[q, c])
                G[p, q] = acc
                G[q, p] = np.conj(acc)
    else:  # upper triangle only, row by row (``M`` is read in memory order)
        for j in range(rows):
            for p in range(k):
                x = np.conj(M[j, p]) * 1.0
                for q in range(p, k):
                    G[p, q] += x * M[j, q]
        for p in range(k):
            for q in range(p + 1, k):
                G[q, p] = np.conj(G[p, q])
    return _top_eigenvalue(G, k, work_x, work_y)


# `_kernels._times`, `_kernels._adjoint_times` and `_kernels._residual2` built once more
# with FASTMATH (vectorised), under names of their own so that the cache keeps both
# builds.
_times_fast = _jit(getattr(_times, "py_func", _times), "_fast", fastmath=FASTMATH)
_adjoint_times_fast = _jit(getattr(_adjoint_times, "py_func", _adjoint_times), "_fast",
                           fastmath=FASTMATH)
_residual2_fast = _jit(getattr(_residual2, "py_func", _residual2), "_fast", fastmath=FASTMATH)


@_kernel(fastmath=FASTMATH)
def _power_sigma2(M, rows, cols, row_norm2, norm2, u, v, w, tol, warm, first):
    """``σ₁²`` of a block by power iteration, tested after every half-step.

    Starts from the unit right vector ``v`` when ``warm == 1``, from the unit left
    vector ``u`` when ``warm == 2`` (e.g. the singular vectors of the certified
    butterfly's block), else (``warm == 0``) from the largest row.  ``first >= 0``
    (warm starts only): the first product is already in ``u = M v`` (``warm == 1``)
    or ``w = Mᴴ u`` (``warm == 2``), with ``first`` its squared norm (formed while
    the block was gathered, `_tile_split_errors`).  The
    iterate alternates sides: a unit ``z`` (right or left) and ``y = A z``
    (``A = M`` or ``Mᴴ``) with ``ρ = ‖y‖²``, the Rayleigh quotient of ``z``; then
    ``t = Aᴴ y/‖y‖`` gives the Rayleigh quotient ``ρ' = ‖t‖²`` of ``y/‖y‖`` (the
    estimate, ``ρ <= ρ' <= σ₁²``) and the residual ``‖AᴴA z − ρ z‖² = ρ(ρ' − ρ)``
    of ``z``.  When ``2ρ > ‖M‖²`` (``σ₁²`` holds more than half of the block's
    energy, as in any block a butterfly fits well) the Kato–Temple inequality, with
    ``λ₂ <= ‖M‖² − λ₁ <= ‖M‖² − ρ``, bounds ``σ₁² − ρ <= ρ(ρ' − ρ)/(2ρ − ‖M‖²)``:
    the iteration stops once this proven bound, less ``ρ' − ρ``, is below
    ``RESIDUAL_TOL`` times the block's error ``‖M‖² − ρ'``.  Otherwise it stops by the
    geometric-tail rule of ``_kernels._top_left_vector`` (not a proof), or when the
    estimate stalls.  A near-exact block (``‖M‖² − ρ' < CANCELLATION ‖M‖²``, whose
    error the caller recomputes from ``u``) stops once ``ρ' − ρ <= RESIDUAL_TOL (2ρ −
    ‖M‖²)``, which proves ``u``'s contribution to that error, ``σ₁² − ‖Mᴴ u‖²``,
    below ``RESIDUAL_TOL`` times the error (see the code).  Testing every half-step (each
    one block read) instead of every second one saves a read per block, as does a
    warm start close to the top singular vector.  Returns ``(ρ', paired)``: ``ρ'``
    never above ``σ₁²`` but for rounding; ``u`` is left as a unit left vector of the
    last iterate, and ``paired`` says that ``w`` holds ``Mᴴ u`` (the last half-step
    was from the left side).
    """
    if warm == 2:  # z = u, y = w = Mᴴ u
        rho = first if first >= 0.0 else _adjoint_times_fast(M, rows, cols, u, w)
        left = False  # y lives on the right (columns) side
    elif warm == 1 and first >= 0.0:  # z = v, y = u = M v
        rho = first
        left = True
    else:
        if warm == 0:
            best_row = 0
            for j in range(1, rows):
                if row_norm2[j] > row_norm2[best_row]:
                    best_row = j
            inv = 1.0 / math.sqrt(row_norm2[best_row])
            for k in range(cols):
                v[k] = np.conj(M[best_row, k]) * inv
        rho = _times_fast(M, rows, cols, v, u)  # z = v, y = u
        left = True
    estimate = rho
    estimate_old = rho
    increase_old = 0.0
    for _ in range(2 * MAX_POWER_STEPS):
        if rho == 0.0:  # cannot happen for a nonzero block
            return estimate, False
        inv = 1.0 / math.sqrt(rho)
        if left:
            for j in range(rows):
                u[j] *= inv
            quotient = _adjoint_times_fast(M, rows, cols, u, w)  # t = w
        else:
            for k in range(cols):
                w[k] *= inv
            quotient = _times_fast(M, rows, cols, w, u)  # t = u
        estimate = max(quotient, rho)
        error2 = norm2 - estimate
        increase = estimate - estimate_old
        if error2 < CANCELLATION * norm2:
            # Near-exact: the caller recomputes the error from ``u``, the unit ``A z``
            # (or ``M Mᴴ z``), whose excess ``σ₁² − ‖Mᴴ u‖²`` is at most ``σ₂² (σ₁² −
            # ρ)/ρ`` (one power step), so at most ``error² (ρ' − ρ)/(2ρ − ‖M‖²)`` by
            # Kato–Temple for ``z`` (``σ₂² <= error²``): stop once that is below
            # RESIDUAL_TOL of it.  From a poor start (a butterfly far from the
            # matrix), stopping as soon as ``σ₁²`` is known to rounding left ``u``
            # off by ``~σ₂/σ₁`` and the error up to several times too large.
            done = 2.0 * rho > norm2 and quotient - rho <= RESIDUAL_TOL * (2.0 * rho - norm2)
        else:
            done = increase <= tol * estimate
            if not done and 2.0 * rho > norm2:
                temple = rho * max(quotient - rho, 0.0) / (2.0 * rho - norm2)
                done = temple - (estimate - rho) <= RESIDUAL_TOL * error2
            elif not done and increase_old > 0.0 and increase < increase_old:
                ratio = increase / increase_old
                done = increase * ratio / (1.0 - ratio) <= RESIDUAL_TOL * error2
        if done:
            if not left:  # u = M w / ‖M w‖
                inv = 1.0 / math.sqrt(quotient)
                for j in range(rows):
                    u[j] *= inv
            return estimate, left
        estimate_old = estimate
        increase_old = increase
        rho = quotient
        left = not left
    return estimate, False


@_kernel()
def _load_flat_start(starts, offset, length, side, u, v):
    """Copy one block's start vector ``starts[offset:offset + length]``,
    normalised, into ``v`` (right, ``side == 1``) or ``u`` (left, ``side == 2``);
    returns the side, or 0 (start from the largest row) when there is none
    (``side == 0``) or it is zero."""
    if side == 0:
        return 0
    norm2 = 0.0
    for k in range(length):
        norm2 += _abs2(starts[offset + k])
    if not 0.0 < norm2 < np.inf:
        return 0
    inv = 1.0 / math.sqrt(norm2)
    target = v if side == 1 else u
    for k in range(length):
        target[k] = starts[offset + k] * inv
    return side


@_kernel()
def _block_residual2(M, rows, cols, row_norm2, norm2, u, v, w, G, tol, warm, first):
    """Best rank-one error ``‖M‖² − σ₁²`` of a gathered block whose ``norm2`` is in
    range: ``σ₁²`` from the small Gram matrix
    when a side is at most ``GRAM_SIDE``, else by power iteration started as ``warm``
    and ``first`` say (`_power_sigma2`); recomputed from the top singular pair where
    the subtraction would have cancelled."""
    if min(rows, cols) <= GRAM_SIDE:
        sigma2 = _gram_top_eigenvalue(M, rows, cols, G, v, w)
        residual2 = max(norm2 - sigma2, 0.0)
        if residual2 < CANCELLATION * norm2:
            _top_left_vector(M, rows, cols, row_norm2, norm2, u, v, w, tol)
            _adjoint_times(M, rows, cols, u, w)
            residual2 = _residual2(M, rows, cols, u, w)
        return residual2
    sigma2, paired = _power_sigma2(M, rows, cols, row_norm2, norm2, u, v, w, tol, warm, first)
    residual2 = max(norm2 - sigma2, 0.0)
    if residual2 < CANCELLATION * norm2:  # ‖M‖² − σ² lost its digits
        if not paired:
            _adjoint_times_fast(M, rows, cols, u, w)
        residual2 = _residual2_fast(M, rows, cols, u, w)
    return residual2


@_kernel(fastmath=FASTMATH)
def _gram_planes(real, imag, row0, step, k, first, runs, run_step, run_length, imaginary, G):
    """``G[p, q] = Σ_c conj(x_p[c]) x_q[c]`` for the ``k`` vectors ``x_p = real[row0
    + p·step] + i·imag[row0 + p·step]`` restricted to the ``runs`` runs of
    ``run_length`` entries from ``first + q·run_step`` (as in
    `_planes_near_exact_residual2`): the Gram matrix ``Mᴴ M`` of the block whose
    columns they are, or the conjugate of ``M Mᴴ``, with the same eigenvalues, when
    they are its rows; returns its trace, ``‖M‖²``.  ``imaginary`` is ``1j``, or
    ``0`` for real data (``imag`` is then skipped).

    Each entry is four plain-float dot products, which LLVM vectorises (the reason
    for the planes)."""
    complex_values = imaginary != 0.0
    for p in range(k):
        for q in range(k):
            G[p, q] = 0.0
    for run in range(runs):
        # slices: indexing with ``base + c`` kept LLVM from vectorising (Numba's
        # negative-index wraparound; 7 times slower)
        base = first + run * run_step
        for p in range(k):
            pr = real[row0 + p * step, base:base + run_length]
            pi = imag[row0 + p * step, base:base + run_length]
            q0 = p
            if complex_values:
                # four entries of the row at a time: ``x_p`` is loaded once for four
                # products (the loop is bound by its loads: 16 x 16 Gram matrices
                # of 256-entry runs, 2.2 -> 1.65 ns per entry, Python calls included)
                while q0 + 4 <= k:
                    ar = real[row0 + q0 * step, base:base + run_length]
                    ai = imag[row0 + q0 * step, base:base + run_length]
                    br = real[row0 + (q0 + 1) * step, base:base + run_length]
                    bi = imag[row0 + (q0 + 1) * step, base:base + run_length]
                    cr = real[row0 + (q0 + 2) * step, base:base + run_length]
                    ci = imag[row0 + (q0 + 2) * step, base:base + run_length]
                    dr = real[row0 + (q0 + 3) * step, base:base + run_length]
                    di = imag[row0 + (q0 + 3) * step, base:base + run_length]
                    s0r = 0.0
                    s0i = 0.0
                    s1r = 0.0
                    s1i = 0.0
                    s2r = 0.0
                    s2i = 0.0
                    s3r = 0.0
                    s3i = 0.0
                    for c in range(run_length):
                        xr = pr[c]
                        xi = pi[c]
                        s0r += xr * ar[c] + xi * ai[c]
                        s0i += xr * ai[c] - xi * ar[c]
                        s1r += xr * br[c] + xi * bi[c]
                        s1i += xr * bi[c] - xi * br[c]
                        s2r += xr * cr[c] + xi * ci[c]
                        s2i += xr * ci[c] - xi * cr[c]
                        s3r += xr * dr[c] + xi * di[c]
                        s3i += xr * di[c] - xi * dr[c]
                    G[p, q0] += s0r + imaginary * s0i
                    G[p, q0 + 1] += s1r + imaginary * s1i
                    G[p, q0 + 2] += s2r + imaginary * s2i
                    G[p, q0 + 3] += s3r + imaginary * s3i
                    q0 += 4
            for q in range(q0, k):
                qr = real[row0 + q * step, base:base + run_length]
                sr = 0.0
                si = 0.0
                if complex_values:
                    qi = imag[row0 + q * step, base:base + run_length]
                    for c in range(run_length):
                        sr += pr[c] * qr[c] + pi[c] * qi[c]
                        si += pr[c] * qi[c] - pi[c] * qr[c]
                else:
                    for c in range(run_length):
                        sr += pr[c] * qr[c]
                G[p, q] += sr + imaginary * si
    trace = 0.0
    for p in range(k):
        for q in range(p + 1, k):
            G[q, p] = np.conj(G[p, q])
        trace += G[p, p].real
    return trace


@_kernel(fastmath=FASTMATH)
def _derived_gram(grams, offset, by_rows, b1_source, c2_source, tile_rows, width, b1, c2, t, kk,
                  G):
    """Gram matrix ``G`` (``k × k``) of block ``(t, kk)`` of a split summed from the
    stored Gram matrices of a neighbouring split's blocks in the same tile (layout of
    `_tile_split_errors`: from ``offset``, block ``(t, kk)``'s ``k_s × k_s`` matrix
    at ``offset + (t·groups_s + kk)·k_s²``); returns its trace, ``‖M‖²``.

    Row side (``by_rows``, rows Gram, the next split): the block's rows are the
    rows ``j1·p + π`` of source block ``t mod spread_s`` (``π = t // spread_s``,
    ``p = b1_s/b1``) and its columns those of source blocks ``kk·q .. kk·q + q − 1``
    (``q = C2/C2_s``), so ``G`` sums the ``q`` sub-matrices of rows and columns
    ``a·p + π``.  Column side (the previous split, columns Gram): the block's columns
    are columns ``o .. o + C2 − 1`` (``o = (kk mod q)·C2``) of source block ``kk // q``
    and its rows those of source blocks ``π·spread + t`` for ``π < p``, so ``G`` sums
    the ``p`` diagonal sub-matrices at ``o``."""
    k = G.shape[0]
    for a in range(k):
        for b in range(k):
            G[a, b] = 0.0
    if by_rows:
        k_source = b1_source
        p = b1_source // b1
        q = c2 // c2_source
        spread_source = tile_rows // b1_source
        groups_source = width // c2_source
        t_source = t % spread_source
        pi = t // spread_source
        for kq in range(q):
            base = offset + (t_source * groups_source + kk * q + kq) * k_source * k_source
            for a in range(k):
                row = base + (a * p + pi) * k_source + pi
                for b in range(k):
                    G[a, b] += grams[row + b * p]
    else:
        k_source = c2_source
        p = b1 // b1_source
        q = c2_source // c2
        spread = tile_rows // b1
        groups_source = width // c2_source
        o = (kk % q) * c2
        for pi in range(p):
            base = offset + ((pi * spread + t) * groups_source + kk // q) * k_source * k_source
            for a in range(k):
                row = base + (o + a) * k_source + o
                for b in range(k):
                    G[a, b] += grams[row + b]
    trace = 0.0
    for a in range(k):
        trace += G[a, a].real
    return trace


@_kernel()
def _row_plane_kinds(block_rows, block_columns, start_sides):
    """``(gram_rows, power_rows)``: whether a group has blocks read from row planes
    (`_fill_row_planes`) for their Gram matrix (at most ``GRAM_SIDE`` rows, no more
    rows than columns), and power-iteration blocks with start vectors, which read
    them when near-exact (`_planes_near_exact_power`)."""
    gram_rows = False
    power_rows = False
    for s in range(block_rows.shape[0]):
        b1 = block_rows[s]
        c2 = block_columns[s]
        gram_rows = gram_rows or b1 <= min(c2, GRAM_SIDE)
        power_rows = power_rows or (min(b1, c2) > GRAM_SIDE and start_sides[s] != 0)
    return gram_rows, power_rows


@_kernel(fastmath=FASTMATH)
def _tile_split_errors(tile, r, first_column, m, stride, block_rows, block_columns, start_sides,
                       start_offsets, starts, tol, imaginary, gram_plan, grams, row_real,
                       row_imag, column_real, column_imag, column_spread, row_planes,
                       planes_only, row_norm2, u, v, w, vectors, near_exact, norm2_sums,
                       residual2_sums, exponent_sums, bad):
    """The blocks of every split of `_split_errors_tiled_py` in one tile (rows
    ``i*stride + r``, columns from ``first_column``), solved and added to the
    per-split sums (a function of its own: in the ``prange`` body of the parallel
    build, Numba's parfor passes would rewrite its array allocations).  Splits are
    taken in the order ``gram_plan[:, 2]``; the Gram matrices of a split with
    ``gram_plan[s, 1] >= 0`` are stored in ``grams`` from there, and a split with
    ``gram_plan[s, 0] >= 0`` sums its own from those of that split (`_derived_gram`)
    instead of reading its blocks.  The blocks with a side of at most ``GRAM_SIDE``
    are read from planes of the tile, filled here once for all the splits: by rows
    (``row_real``, ``row_imag``, `_fill_row_planes`) for the short and wide blocks,
    transposed (``column_real``, ``column_imag``, `_fill_column_planes` with
    ``column_spread``; ``0``: no such blocks) for the tall and narrow ones.

    The row planes are filled when ``row_planes`` says so; with ``planes_only`` the
    caller filled them straight from the matrix (`_copy_planes`) and the tile holds
    nothing: the few blocks solved from a gathered copy restore their rows into it
    first (`_restore_block`).  (The column planes are filled from the tile: straight
    from the matrix, their scattered writes slowed the reads, 45 -> 57 ms for the
    2048 × 32 tiles at N = 4096.)  The blocks solved by power iteration that have a
    start vector are tried on the row planes first (`_planes_near_exact_power`:
    near-exact ones, the error in two reads of the planes, no copy) while
    ``near_exact[s]`` says that the split's previous block was near-exact; the
    others, and those it refuses, are gathered from the tile and solved as before
    (which sets ``near_exact[s]`` again).  ``vectors``: ``(6, max(tile_rows,
    width))`` float64 workspace."""
    tile_rows, width = tile.shape
    n_splits = block_rows.shape[0]
    complex_values = imaginary != 0.0
    if row_planes and not planes_only:
        _fill_row_planes(tile, complex_values, row_real, row_imag)
    if column_spread > 0:
        _fill_column_planes(tile, complex_values, column_spread, column_real, column_imag)
    for index in range(n_splits):
        s = gram_plan[index, 2]
        from_split = gram_plan[s, 0]
        store = gram_plan[s, 1]
        b1 = block_rows[s]
        c2 = block_columns[s]
        b2 = m // b1
        spread = tile_rows // b1
        groups = width // c2
        side = start_sides[s]
        length = c2 if side == 1 else b1
        M = np.empty((b1, c2), dtype=tile.dtype)
        # the Gram matrix must be exactly the block's smaller side (unused above)
        side_length = min(b1, c2, GRAM_SIDE)
        G = np.empty((side_length, side_length), dtype=u.dtype)
        gram = side_length == min(b1, c2)  # a side of at most GRAM_SIDE
        tall = b1 > c2
        long_side = max(b1, c2)
        z_real = np.empty(long_side)
        z_imag = np.empty(long_side)
        # where the block's vectors (along its long side) are in the planes: vector
        # p of block (t, kk) is row ``row0 + p·step`` (row0 = t, or kk·c2 when tall),
        # the runs of ``run_length`` entries from ``first + q·run_step`` (first =
        # kk·c2, or t·run_length when tall), q < runs
        real, imag = row_real, row_imag
        step = spread
        runs = 1
        run_length = c2
        run_step = 0
        if tall and gram:
            real, imag = column_real, column_imag
            step = 1
            run_length = tile_rows // column_spread
            runs = b1 // run_length
            run_step = spread * run_length
        for t in range(spread):
            j2 = r + t * stride
            for kk in range(groups):
                k1 = first_column // c2 + kk
                if gram and from_split >= 0:
                    norm2 = _derived_gram(grams, gram_plan[from_split, 1], from_split == s + 1,
                                          block_rows[from_split], block_columns[from_split],
                                          tile_rows, width, b1, c2, t, kk, G)
                elif gram:
                    if tall:
                        row0, first = kk * c2, t * run_length
                    else:
                        row0, first = t, kk * c2
                    norm2 = _gram_planes(real, imag, row0, step, side_length, first, runs,
                                         run_step, run_length, imaginary, G)
                if gram:
                    if store >= 0:
                        base = store + (t * groups + kk) * side_length * side_length
                        for a in range(side_length):
                            for b in range(side_length):
                                grams[base + a * side_length + b] = G[a, b]
                    # in range (so also finite and nonzero) and no cancellation: done;
                    # a near-exact block (where ‖M‖² − σ₁² cancels) gets its error
                    # straight from the tile, in one read; else (out of range, or
                    # that fails) it is solved from the gathered block below
                    if SAFE_SUM_LOW <= norm2 <= SAFE_SUM_HIGH:
                        residual2 = max(norm2 - _top_eigenvalue(G, side_length, v, w), 0.0)
                        if residual2 < CANCELLATION * norm2:
                            residual2 = -1.0  # unless the top eigenvector converges
                            if _top_eigenvector(G, side_length, u, w):
                                if tall:
                                    row0, first = kk * c2, t * run_length
                                else:
                                    row0, first = t, kk * c2
                                residual2 = _planes_near_exact_residual2(
                                    real, imag, row0, step, side_length, first, runs, run_step,
                                    run_length, complex_values, u, z_real, z_imag)
                        if residual2 >= 0.0:
                            norm2_sums[s], residual2_sums[s], exponent_sums[s] = _accumulate(
                                norm2_sums[s], residual2_sums[s], int(exponent_sums[s]), norm2,
                                residual2, 0)
                            continue
                # The start vector of the block (blocks solved by power iteration): its
                # first product with the block is formed while gathering it, which
                # saves the power iteration one read of the block.
                warm = 0
                if min(b1, c2) > GRAM_SIDE:
                    warm = _load_flat_start(starts, start_offsets[s] + (k1 * b2 + j2) * length,
                                            length, side, u, v)
                    if warm != 0 and near_exact[s] and row_planes:
                        # a near-exact block (as the previous one was) in two reads
                        # of the planes, without the gathered copy (the split's
                        # copies and complex arithmetic cost as much again)
                        start = u if warm == 2 else v
                        for a in range(length):
                            vectors[0, a] = start[a].real
                            vectors[1, a] = start[a].imag
                        residual2, norm2 = _planes_near_exact_power(
                            row_real, row_imag, t, spread, b1, kk * c2, c2, imaginary, warm,
                            vectors[0], vectors[1], vectors[2], vectors[3], u, vectors[4],
                            vectors[5])
                        if residual2 >= 0.0:
                            norm2_sums[s], residual2_sums[s], exponent_sums[s] = _accumulate(
                                norm2_sums[s], residual2_sums[s], int(exponent_sums[s]), norm2,
                                residual2, 0)
                            continue
                        near_exact[s] = False
                if planes_only:  # the block's rows are only in the planes
                    _restore_block(row_real, row_imag, imaginary, t, spread, b1, kk * c2, c2, tile)
                if warm == 2:
                    for k2 in range(c2):
                        w[k2] = imaginary * 0.0
                norm2 = 0.0
                first = 0.0
                for j1 in range(b1):
                    source = tile[j1 * spread + t]
                    acc = 0.0
                    if warm == 1:  # u = M v
                        y = imaginary * 0.0
                        for k2 in range(c2):
                            value = source[kk * c2 + k2]
                            M[j1, k2] = value
                            acc += _abs2(value * 1.0)  # squares in double precision
                            y += value * v[k2]
                        u[j1] = y
                        first += _abs2(y)
                    elif warm == 2:  # w = Mᴴ u
                        coefficient = u[j1]
                        for k2 in range(c2):
                            value = source[kk * c2 + k2]
                            M[j1, k2] = value
                            acc += _abs2(value * 1.0)
                            w[k2] += np.conj(value) * coefficient
                    else:
                        for k2 in range(c2):
                            value = source[kk * c2 + k2]
                            M[j1, k2] = value
                            acc += _abs2(value * 1.0)
                    row_norm2[j1] = acc
                    norm2 += acc
                if warm == 2:
                    for k2 in range(c2):
                        first += _abs2(w[k2])
                exponent = 0
                # within range (so also finite and nonzero), no square overflowed
                # and none that vanished mattered; else rescale, or report NaN/Inf
                if not SAFE_SUM_LOW <= norm2 <= SAFE_SUM_HIGH:
                    exponent, norm2 = _scan_block(M, b1, c2, row_norm2)
                    if exponent == NOT_FINITE or exponent == EMPTY:
                        bad[s] += exponent == NOT_FINITE  # reported by the caller
                        continue
                    first = -1.0  # rescaled: the product is formed again
                residual2 = -1.0
                if exponent == 0:  # not rescaled: ``first`` is the product's
                    residual2 = _near_exact_power(M, b1, c2, norm2, u, w, warm, first)
                    near_exact[s] = residual2 >= 0.0
                if residual2 < 0.0:
                    residual2 = _block_residual2(M, b1, c2, row_norm2, norm2, u, v, w, G, tol,
                                                 warm, first)
                norm2_sums[s], residual2_sums[s], exponent_sums[s] = _accumulate(
                    norm2_sums[s], residual2_sums[s], int(exponent_sums[s]), norm2, residual2,
                    exponent)


@_kernel()
def _copy_tile(matrix, columns, contiguous, r, stride, first_column, tile):
    """``tile[i, k] = matrix[i·stride + r, columns[first_column + k]]``.  Without a
    permutation, four rows at a time: the rows are ``stride`` rows apart, so each
    read starts cold, and four interleaved streams keep four times as many cache
    misses in flight (N = 4096 complex, one thread: 20 -> 16 ms for the 16 × 2048
    tiles, 33 -> 21 ms for the 128 × 128 ones, 33 -> 28 ms for the 2048 × 32 ones;
    eight at a time was slower for the first two)."""
    tile_rows, width = tile.shape
    i = 0
    if contiguous:
        last = first_column + width
        while i + 4 <= tile_rows:
            source0 = matrix[i * stride + r, first_column:last]
            source1 = matrix[(i + 1) * stride + r, first_column:last]
            source2 = matrix[(i + 2) * stride + r, first_column:last]
            source3 = matrix[(i + 3) * stride + r, first_column:last]
            target0 = tile[i]
            target1 = tile[i + 1]
            target2 = tile[i + 2]
            target3 = tile[i + 3]
            for k in range(width):
                target0[k] = source0[k]
                target1[k] = source1[k]
                target2[k] = source2[k]
                target3[k] = source3[k]
            i += 4
    while i < tile_rows:
        row = i * stride + r
        if contiguous:
            for k in range(width):
                tile[i, k] = matrix[row, first_column + k]
        else:
            for k in range(width):
                tile[i, k] = matrix[row, columns[first_column + k]]
        i += 1


@_kernel()
def _copy_planes(matrix, columns, contiguous, r, stride, first_column, width, complex_values,
                 real, imag):
    """The tile of `_copy_tile` as row planes straight from the matrix (the layout of
    `_fill_row_planes`; ``real`` has the tile's rows): for the groups whose blocks are
    all read from the row planes, the tile itself is not written (the blocks solved
    from a gathered copy restore theirs, `_restore_block`).  Four rows at a time, as
    in `_copy_tile`."""
    tile_rows = real.shape[0]
    i = 0
    if contiguous:
        last = first_column + width
        while i + 4 <= tile_rows:
            source0 = matrix[i * stride + r, first_column:last]
            source1 = matrix[(i + 1) * stride + r, first_column:last]
            source2 = matrix[(i + 2) * stride + r, first_column:last]
            source3 = matrix[(i + 3) * stride + r, first_column:last]
            real0 = real[i]
            real1 = real[i + 1]
            real2 = real[i + 2]
            real3 = real[i + 3]
            if complex_values:
                imag0 = imag[i]
                imag1 = imag[i + 1]
                imag2 = imag[i + 2]
                imag3 = imag[i + 3]
                for k in range(width):
                    real0[k] = source0[k].real
                    imag0[k] = source0[k].imag
                    real1[k] = source1[k].real
                    imag1[k] = source1[k].imag
                    real2[k] = source2[k].real
                    imag2[k] = source2[k].imag
                    real3[k] = source3[k].real
                    imag3[k] = source3[k].imag
            else:
                for k in range(width):
                    real0[k] = source0[k].real
                    real1[k] = source1[k].real
                    real2[k] = source2[k].real
                    real3[k] = source3[k].real
            i += 4
    while i < tile_rows:
        source = matrix[i * stride + r]
        for k in range(width):
            value = source[first_column + k] if contiguous else source[columns[first_column + k]]
            real[i, k] = value.real
            if complex_values:
                imag[i, k] = value.imag
        i += 1


@_kernel()
def _restore_block(real, imag, imaginary, t, spread, rows, first, cols, tile):
    """``tile[j·spread + t, first:first + cols]`` from the row planes, ``j < rows``
    (exactly: the planes hold the matrix's values in double precision)."""
    complex_values = imaginary != 0.0
    for j in range(rows):
        row = j * spread + t
        target = tile[row]
        for c in range(cols):
            value = real[row, first + c] + imaginary * 0.0
            if complex_values:
                value += imaginary * imag[row, first + c]
            target[first + c] = value


def _split_errors_tiled_py(matrix, columns, contiguous, block_rows, block_columns, start_sides,
                           start_offsets, starts, width, tol, work, unit, gram_plan, gram_size,
                           n_chunks, chunk_norm2, chunk_residual2, chunk_exponent, chunk_bad):
    """Best rank-one error of every block of several consecutive rank-one root splits,
    in one pass over the matrix; no factor is written.

    Parameters
    ----------
    matrix : (m, n) array
        The root (any of the four supported dtypes).
    columns : (n,) int64 array
        Column gather (a permutation); ``contiguous``: it is the identity.
    block_rows, block_columns : (S,) int64 arrays
        ``b1`` and ``C2`` of the ``S`` splits, in chain order (``b1`` increasing, each
        dividing the next; ``C2`` decreasing, each dividing the previous).
    start_sides, start_offsets : (S,) int64 arrays
        Per split, the side of its start vectors and where its ``(c1, b2, k)`` array
        of them begins in ``starts``: block ``(k1, j2)`` starts the power iteration
        from the right vector ``starts[k1, j2]`` (``k = C2``) when the side is 1,
        from the left one (``k = b1``) when it is 2, from its largest row when it is
        0 (or the vector is zero).  Any scale.
    starts : 1-D array of ``work``'s dtype
        The splits' start vectors, flattened one after the other (a placeholder
        when no split has any).
    width : int
        Columns per tile: a multiple of ``block_columns[0]`` dividing ``n``.
    tol : float
        Convergence tolerance of the top singular vectors in the cancellation
        fallback (``_kernels._top_left_vector``).
    work : (1,) array
        Its dtype (float64 or complex128) is the precision of the solvers.
    unit : (1,) array of ``work``'s dtype
        ``1j`` for a complex ``matrix``, else ``0`` (its imaginary planes are then
        skipped): the imaginary unit in a type that also compiles for real data.
    gram_plan : (S, 3) int64 array
        Per split ``s``: ``gram_plan[s, 0]``, the neighbouring split whose blocks'
        Gram matrices sum to those of ``s`` (``-1``: formed from ``s``'s own blocks);
        ``gram_plan[s, 1]``, where the Gram matrices of ``s``'s blocks in a tile are
        kept for such a split (``-1``: not kept); ``gram_plan[:, 2]``, the order in
        which the splits are solved (every kept split before the splits summed from
        it).  See `_derived_gram`: the blocks of neighbouring splits nest, so the
        small Gram matrices of a run of splits with ``b1 <= GRAM_SIDE`` (rows) or
        ``C2 <= GRAM_SIDE`` (columns) come from those of the split with the largest
        side, without reading the blocks again.
    gram_size : int
        Entries of the kept Gram matrices of one tile (at least 1).
    n_chunks : int
        Contiguous chunks of tiles (one parallel task each).
    chunk_norm2, chunk_residual2, chunk_exponent, chunk_bad : (n_chunks, S) arrays
        Outputs: per chunk and split, the sums of ``‖M‖²`` and of the blocks' best
        rank-one errors ``‖M‖² − σ₁²``, in units of ``4**chunk_exponent``, and the
        number of blocks holding NaN or Inf.

    Notes
    -----
    Why several splits at once: a block of split ``s`` reads rows ``j1*b2 + j2``
    (every ``b2``-th row) over ``C2`` consecutive columns.  With ``R = b1[S-1]`` and
    ``stride = m / R``, the tile of rows ``i*stride + r`` (``i < R``) and columns
    ``[q·width, (q+1)·width)`` holds, for every split of the group, whole blocks:
    those with ``j2 ≡ r (mod stride)`` and column groups inside the columns, block
    ``(k1, j2)`` with ``j2 = r + t·stride`` being tile rows ``j1·(R/b1) + t``.  So
    the tile is copied once from the matrix (gathering the columns, into a
    contiguous buffer: the matrix's rows are a power-of-two stride apart and would
    collide in the cache) and all the splits' blocks are then gathered from it while
    it stays in cache (the caller sizes it, ``TILE_BYTES``): the matrix is read once
    per group instead of once per split.

    Each block is solved in cache: blocks with a side of at most ``GRAM_SIDE`` get
    ``σ₁²`` from their small Gram matrix, formed from real and imaginary planes
    (`_gram_planes`); the others by power iteration (`_power_sigma2`), started
    from the given vectors.  Only blocks whose ``‖M‖²`` is outside ``[SAFE_SUM_LOW,
    SAFE_SUM_HIGH]`` (zero, NaN/Inf, squares that may have overflowed or vanished)
    go through `_scan_block`, and where ``‖M‖² − σ₁²`` would have lost its digits to
    cancellation (near-exact blocks) the error is that of an explicit rank-one
    approximation, computed directly: from the Gram matrix's top eigenvector in two
    sweeps of the block's vectors in the tile's planes (`_planes_near_exact_residual2`;
    the planes are filled once per tile for all the splits of the group, not per
    block and split), from the start vector's first product for power-iteration
    blocks, in two reads of the row planes without a copy (`_planes_near_exact_power`,
    while the split's blocks are near-exact) or one read of the gathered block
    (`_near_exact_power`), else from the top singular pair (`_block_residual2`); each
    is never below the block's best error but for rounding.  A start vector's first
    product with its block is formed while the block is gathered (one read fewer for
    the power iteration).  When every block of a tile is read from the row planes
    (no column planes), they are filled straight from the matrix (`_copy_planes`),
    four rows at a time, and the tile is written only for the blocks gathered from
    it (`_restore_block`); otherwise the tile is copied (`_copy_tile`) and the planes
    filled from it.
    """
    m, n = matrix.shape
    n_splits = block_rows.shape[0]
    tile_rows = block_rows[n_splits - 1]
    stride = m // tile_rows
    n_column_tiles = n // width
    n_tiles = stride * n_column_tiles
    widest = block_columns[0]
    imaginary = unit[0]
    complex_values = imaginary != 0.0
    # the group's blocks read from planes: short and wide ones and those solved by
    # power iteration (by rows), tall and narrow ones (transposed, ordered by the
    # first such split's spread)
    gram_rows, power_rows = _row_plane_kinds(block_rows, block_columns, start_sides)
    has_rows = gram_rows or power_rows
    column_spread = 0
    for s in range(n_splits):
        b1 = block_rows[s]
        c2 = block_columns[s]
        if column_spread == 0 and c2 < b1 and c2 <= GRAM_SIDE:
            column_spread = tile_rows // b1
    for chunk in prange(n_chunks):
        tile = np.empty((tile_rows, width), dtype=matrix.dtype)
        row_norm2 = np.empty(tile_rows)
        u = np.empty(tile_rows, dtype=work.dtype)
        v = np.empty(widest, dtype=work.dtype)
        w = np.empty(widest, dtype=work.dtype)
        norm2_sums = np.zeros(n_splits)
        residual2_sums = np.zeros(n_splits)
        exponent_sums = np.zeros(n_splits, dtype=np.int64)
        bad = np.zeros(n_splits, dtype=np.int64)
        grams = np.empty(gram_size, dtype=work.dtype)
        vectors = np.empty((6, max(tile_rows, width)))
        near_exact = np.ones(n_splits, dtype=np.bool_)  # until a block says otherwise
        # planes of the tile (`_tile_split_errors`), by rows and transposed, where
        # the group has such blocks (imaginary planes for complex data only); rows
        # padded by PLANE_PAD entries: a power-of-two stride would put the vectors of
        # a block in the same cache sets
        row_real = np.empty((tile_rows if has_rows else 1, width + PLANE_PAD))
        row_imag = np.empty((tile_rows if has_rows else 1,
                             width + PLANE_PAD if complex_values else 1))
        column_real = np.empty((width if column_spread else 1, tile_rows + PLANE_PAD))
        column_imag = np.empty((width if column_spread else 1,
                                tile_rows + PLANE_PAD if complex_values else 1))
        for tile_index in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
            # neighbouring tiles share their rows: consecutive column ranges
            r = tile_index // n_column_tiles
            first_column = (tile_index % n_column_tiles) * width
            # row planes for the Gram blocks, and for the power-iteration blocks
            # while they are near-exact; straight from the matrix when no block
            # needs the tile (no column planes)
            row_planes = gram_rows
            for s in range(n_splits):
                row_planes = row_planes or (power_rows and near_exact[s]
                                            and min(block_rows[s], block_columns[s]) > GRAM_SIDE
                                            and start_sides[s] != 0)
            planes_only = row_planes and column_spread == 0
            if planes_only:
                _copy_planes(matrix, columns, contiguous, r, stride, first_column, width,
                             complex_values, row_real, row_imag)
            else:
                _copy_tile(matrix, columns, contiguous, r, stride, first_column, tile)
            _tile_split_errors(tile, r, first_column, m, stride, block_rows, block_columns,
                               start_sides, start_offsets, starts, tol, imaginary, gram_plan,
                               grams, row_real, row_imag, column_real, column_imag,
                               column_spread, row_planes, planes_only, row_norm2, u, v, w,
                               vectors, near_exact, norm2_sums, residual2_sums, exponent_sums,
                               bad)
        for s in range(n_splits):
            chunk_norm2[chunk, s] = norm2_sums[s]
            chunk_residual2[chunk, s] = residual2_sums[s]
            chunk_exponent[chunk, s] = exponent_sums[s]
            chunk_bad[chunk, s] = bad[s]


split_errors_tiled_serial = _jit(_split_errors_tiled_py, "_serial", fastmath=FASTMATH)
split_errors_tiled_parallel = _jit(_split_errors_tiled_py, "_parallel", parallel=True,
                                   fastmath=FASTMATH)


def _split_errors_rank_r_py(matrix, columns, b1, c1, rank, chunk_norm2, chunk_residual2,
                            chunk_exponent, chunk_bad):
    """Best rank-``rank`` error of every block of one root split (one chunk, serial:
    each block gets a LAPACK SVD, whose own threads would oversubscribe a parallel
    region).  Blocks and outputs as in `_split_errors_tiled_py` (one split); ``rank <=
    min(b1, C2)`` (checked by the caller)."""
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    M = np.empty((b1, c2), dtype=matrix.dtype)
    norm2_sum = 0.0
    residual2_sum = 0.0
    exponent_sum = 0
    bad = 0
    for j2 in range(b2):
        for k1 in range(c1):
            for j1 in range(b1):
                for k2 in range(c2):
                    M[j1, k2] = matrix[j1 * b2 + j2, columns[k1 * c2 + k2]]
            exponent = _gather_scale(M, b1, c2)
            if exponent == NOT_FINITE or exponent == EMPTY:
                bad += exponent == NOT_FINITE
                continue
            singular = np.linalg.svd(M, full_matrices=False)[1]
            norm2 = 0.0
            residual2 = 0.0
            for rho in range(singular.shape[0]):
                sigma2 = float(singular[rho]) ** 2
                norm2 += sigma2
                if rho >= rank:  # the trailing singular values are the error
                    residual2 += sigma2
            norm2_sum, residual2_sum, exponent_sum = _accumulate(
                norm2_sum, residual2_sum, exponent_sum, norm2, residual2, exponent)
    chunk_norm2[0] = norm2_sum
    chunk_residual2[0] = residual2_sum
    chunk_exponent[0] = exponent_sum
    chunk_bad[0] = bad


split_errors_rank_r_serial = _jit(_split_errors_rank_r_py, "_serial")


@_kernel()
def _gather_row_ahead(matrix, row, ahead, columns, target, target_row):
    """``target[target_row, p] = matrix[row, columns[p]]``, after reading row ``ahead``
    (if ``>= 0``) in order, one entry per cache line; returns the sum of the entries
    read ahead, so that the reads stay.

    Read in a permuted order (bit reversal: lines 2048 entries apart), a row's lines
    each wait for memory, since the hardware prefetcher follows only runs of nearby
    lines; read in order, the next row's lines stream in while this one is permuted
    from cache.  N = 4096 complex128 with bit reversal, the whole matrix into written
    memory (`_gather_py`): 43 -> 27 ms on one thread, 23 -> 13 ms on two (a copy takes
    13 ms)."""
    n = matrix.shape[1]
    total = 0.0
    if ahead >= 0:
        line = max(1, 64 // matrix.itemsize)  # one entry per 64-byte line
        for k in range(0, n, line):
            total += matrix[ahead, k].real
    for p in range(columns.shape[0]):
        target[target_row, p] = matrix[row, columns[p]]
    return total


def _gather_py(matrix, rows, columns, out, n_chunks):
    """``out[i, j] = matrix[rows[i], columns[j]]`` (indices valid: checked by the
    caller), the rows in ``n_chunks`` chunks, each row by `_gather_row_ahead` (which
    reads the chunk's next row ahead).  A row of ``matrix`` stays in cache while it is
    gathered, and ``out`` is written in order: several times faster than
    ``numpy.take`` along the columns.  Returns the sum of the entries read ahead."""
    m = rows.shape[0]
    sums = np.zeros(n_chunks)
    for chunk in prange(n_chunks):
        first = chunk * m // n_chunks
        stop = (chunk + 1) * m // n_chunks
        total = 0.0
        for i in range(first, stop):
            ahead = rows[i + 1] if i + 1 < stop else -1
            total += _gather_row_ahead(matrix, rows[i], ahead, columns, out, i)
        sums[chunk] = total
    return sums.sum()


gather_serial = _jit(_gather_py, "_serial")
gather_parallel = _jit(_gather_py, "_parallel", parallel=True)


@_kernel()
def _add_scaled(sums, exponent, norm2, inside2, outside2, segment_exponent):
    """Add one segment's three sums (units ``4**segment_exponent``) to the running
    ``sums`` (units ``4**exponent``, updated in place); returns the new exponent."""
    if sums[0] == 0.0 and sums[1] == 0.0 and sums[2] == 0.0:
        sums[0] = norm2
        sums[1] = inside2
        sums[2] = outside2
        return segment_exponent
    if segment_exponent > exponent:
        shift = 2 * (exponent - segment_exponent)
        sums[0] = norm2 + math.ldexp(sums[0], shift)
        sums[1] = inside2 + math.ldexp(sums[1], shift)
        sums[2] = outside2 + math.ldexp(sums[2], shift)
        return segment_exponent
    shift = 2 * (segment_exponent - exponent)
    sums[0] += math.ldexp(norm2, shift)
    sums[1] += math.ldexp(inside2, shift)
    sums[2] += math.ldexp(outside2, shift)
    return exponent


@_kernel(fastmath=FASTMATH)
def _row_error2_in_order(matrix, row, coefficients, shared, c1, c2, rank, zero):
    """``(‖Z[row]‖², ‖Z[row] − P[row]‖²)`` when the product's columns are in ``Z``'s
    order: ``P[row, g*C2 + k] = Σ_ρ coefficients[g*r + ρ] · shared[ρ, g*C2 + k]``,
    formed in double precision (``zero`` promotes single-precision values).

    Column group by column group, so the coefficients are constant along each
    contiguous run of ``C2`` entries, and with reassociation (`FASTMATH`: pure sums of
    squares, never rescaled here), so LLVM vectorises the run and its two sums: at
    N = 4096 complex, rank one, 27 -> 9 ms for the pass on two threads (17 ms on one)
    against the entry-by-entry loop with four fixed partial sums (the order of the
    additions is fixed by the compiled code, so the result is deterministic).
    """
    norm2 = 0.0
    error2 = 0.0
    for group in range(c1):
        first = group * c2
        if rank == 1:
            coefficient = coefficients[group] + zero
            # ``first + k``, not ``range(first, first + c2)``: with the latter the loop
            # was not vectorised (28 against 9 ms)
            for k in range(c2):
                entry = matrix[row, first + k] + zero
                norm2 += _abs2(entry)
                error2 += _abs2(entry - coefficient * shared[0, first + k])
        else:
            for k in range(c2):
                value = (coefficients[group * rank] + zero) * shared[0, first + k]
                for rho in range(1, rank):
                    value += (coefficients[group * rank + rho] + zero) * shared[rho, first + k]
                entry = matrix[row, first + k] + zero
                norm2 += _abs2(entry)
                error2 += _abs2(entry - value)
    return norm2, error2


@_kernel()
def _product_row(coefficients, shared, c1, c2, rank, zero, product):
    """``product[g*C2 + k] = Σ_ρ coefficients[g*r + ρ] · shared[ρ, g*C2 + k]``: a row of
    the product in its columns' order, in double precision (``zero`` promotes
    single-precision values)."""
    for group in range(c1):
        first = group * c2
        for k in range(c2):
            value = (coefficients[group * rank] + zero) * shared[0, first + k]
            for rho in range(1, rank):
                value += (coefficients[group * rank + rho] + zero) * shared[rho, first + k]
            product[first + k] = value


def _product_error_py(matrix, columns, row_inside, column_inside, left, right, b1, c1, rank,
                      work, n_chunks, chunk_sums, chunk_exponent):
    """``‖Z‖²`` and ``‖Z − P‖²`` in one pass, for a product ``P = X_1⋯X_L`` given at
    one split and compared with ``Z[:, columns]``.

    Parameters
    ----------
    matrix : (m, n) array
        ``Z`` (entries outside the problem, e.g. zero padding, are zero).
    columns : (n,) int64 array
        The gather: column ``p`` of ``P`` is compared with column ``columns[p]`` of
        ``Z``.
    row_inside, column_inside : (m,) bool / (n,) float64 arrays
        Per row and column of ``P``: entries whose row and column are both inside
        (``column_inside`` 1.0) count as "inside", the others as "outside" (the zero
        padding a product may write into).
    left : (b1, c1*rank, b2) array
        Values of ``X_1⋯X_h`` (pattern ``(1, b1, c1·rank, b2)``, ``a`` dropped).
    right : (c1, rank*b2, C2) array
        Values of ``X_{h+1}⋯X_L`` (pattern ``(c1, rank·b2, C2, 1)``, ``d`` dropped).
        Entry ``(j1*b2 + j2, k1*C2 + k2)`` of ``P`` is
        ``Σ_ρ left[j1, k1*r + ρ, j2] · right[k1, ρ*b2 + j2, k2]``.
    b1, c1, rank : int
        The split's rows per block, column groups and rank.
    work : (1,) array
        Its dtype (float64 or complex128) is the precision of the differences.
    n_chunks : int
        Contiguous chunks of ``j2`` (one parallel task each).
    chunk_sums : (n_chunks, 3) float64 array
        Output: ``‖Z‖²``, the squared error inside and outside, per chunk, in units of
        ``4**chunk_exponent``.
    chunk_exponent : (n_chunks,) int64 array
        Output.

    Notes
    -----
    A task is one ``j2``: the rows ``j1*b2 + j2`` all use the same ``rank·n`` values
    ``right[:, ρ*b2 + j2, :]``, copied once into a buffer.  Each row of ``Z`` is read
    once, in memory order; when the columns are permuted, it is first put in the
    product's order (in a buffer in cache: `_gather_row_ahead`, the next row read
    ahead).  The sums then run over each column group's ``C2`` contiguous entries with
    one coefficient per rank (`_row_error2_in_order`, vectorised).  Products and
    differences are formed in double precision (``left`` and ``right`` hold the fused
    values in the factors' own precision); rows whose sums of squares are extreme are
    redone rescaled by a power of two before squaring.  Through a bit reversal at
    N = 4096 (complex, two threads) the pass took 22 ms reading ``Z`` through the
    permutation entry by entry, 14 ms with each row put in order first, against 9 ms
    without a permutation.
    """
    m, n = matrix.shape
    b2 = m // b1
    c2 = n // c1
    zero = work[0] * 0.0  # adding it promotes single-precision values to double
    everything_inside = True
    for row in range(m):
        everything_inside = everything_inside and row_inside[row]
    for c in range(n):
        everything_inside = everything_inside and column_inside[c] == 1.0
    in_order = True  # the columns of the product and of Z line up
    for c in range(n):
        in_order = in_order and columns[c] == c
    read_ahead = np.zeros(n_chunks)  # stored, so that the reads ahead are not optimised away
    for chunk in prange(n_chunks):
        shared = np.empty((rank, n), dtype=right.dtype)
        coefficients = np.empty(c1 * rank, dtype=left.dtype)
        product = np.empty(n, dtype=work.dtype)
        # a row of Z in the product's order
        gathered = np.empty((0 if in_order else 1, n), dtype=matrix.dtype)
        sums = np.zeros(3)
        exponent = 0
        first_j2 = chunk * b2 // n_chunks
        stop_j2 = (chunk + 1) * b2 // n_chunks
        for j2 in range(first_j2, stop_j2):
            for rho in range(rank):
                for k1 in range(c1):
                    for k2 in range(c2):
                        shared[rho, k1 * c2 + k2] = right[k1, rho * b2 + j2, k2]
            for j1 in range(b1):
                row = j1 * b2 + j2
                for q in range(c1 * rank):
                    coefficients[q] = left[j1, q, j2]
                # the row in the product's order: ``source[line]``
                source = matrix
                line = row
                if not in_order:
                    if j1 + 1 < b1:
                        ahead = row + b2
                    else:
                        ahead = j2 + 1 if j2 + 1 < stop_j2 else -1
                    source = gathered
                    line = 0
                    read_ahead[chunk] += _gather_row_ahead(matrix, row, ahead, columns,
                                                           gathered, 0)
                all_inside = 1.0 if row_inside[row] else 0.0
                # Fast path: the sums as they come, accepted when their size shows that
                # no square overflowed and none that matters vanished.
                norm2 = 0.0
                inside2 = 0.0
                outside2 = 0.0
                if everything_inside:  # factorize's and certify's case: plain runs
                    norm2, inside2 = _row_error2_in_order(source, line, coefficients, shared,
                                                          c1, c2, rank, zero)
                else:
                    _product_row(coefficients, shared, c1, c2, rank, zero, product)
                    for c in range(n):
                        entry = source[line, c] + zero
                        norm2 += _abs2(entry)
                        error2 = _abs2(entry - product[c])
                        # branch-free split between inside and outside
                        inside = all_inside * column_inside[c]
                        inside2 += inside * error2
                        outside2 += (1.0 - inside) * error2
                largest = max(norm2, inside2 + outside2)
                if SAFE_SUM_LOW <= largest <= SAFE_SUM_HIGH:
                    exponent = _add_scaled(sums, exponent, norm2, inside2, outside2, 0)
                    continue
                # Slow path (extreme magnitudes, or an all-zero row): the row again,
                # rescaled by a power of two before squaring.
                _product_row(coefficients, shared, c1, c2, rank, zero, product)
                biggest = 0.0
                for c in range(n):
                    entry = source[line, c] + zero
                    biggest = max(biggest, abs(entry.real), abs(entry.imag),
                                  abs(product[c].real), abs(product[c].imag))
                if biggest == 0.0:
                    continue
                row_exponent = 0
                first = 1.0
                second = 1.0
                if biggest < np.inf:  # else Inf or NaN in the product: keep it
                    row_exponent = math.frexp(biggest)[1]
                    half = -row_exponent // 2
                    first = math.ldexp(1.0, half)
                    second = math.ldexp(1.0, -row_exponent - half)
                norm2 = 0.0
                inside2 = 0.0
                outside2 = 0.0
                for c in range(n):
                    entry = ((source[line, c] + zero) * first) * second
                    norm2 += _abs2(entry)
                    error2 = _abs2(entry - (product[c] * first) * second)
                    inside = all_inside * column_inside[c]
                    inside2 += inside * error2
                    outside2 += (1.0 - inside) * error2
                exponent = _add_scaled(sums, exponent, norm2, inside2, outside2, row_exponent)
        for q in range(3):
            chunk_sums[chunk, q] = sums[q]
        chunk_exponent[chunk] = exponent


product_error_serial = _jit(_product_error_py, "_serial")
product_error_parallel = _jit(_product_error_py, "_parallel", parallel=True)
