"""Slow, obviously-correct dense references for the fastbfly tests.

Everything here follows the formulas of DESIGN.md literally, with explicit loops or
dense matrices, and shares no code with the package.  Use small sizes only.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- patterns
def support(pattern) -> np.ndarray:
    """Boolean support of ``I_a ⊗ 1_{b×c} ⊗ I_d`` built with Kronecker products."""
    a, b, c, d = (int(v) for v in pattern)
    return np.kron(np.kron(np.eye(a), np.ones((b, c))), np.eye(d)).astype(bool)


def factor_dense(pattern, values) -> np.ndarray:
    """Dense matrix of a factor: ``K[i*b*d + j*d + t, i*c*d + k*d + t] = T[i, j, k, t]``."""
    a, b, c, d = (int(v) for v in pattern)
    values = np.asarray(values)
    assert values.shape == (a, b, c, d)
    dense = np.zeros((a * b * d, a * c * d), dtype=values.dtype)
    for i in range(a):
        for j in range(b):
            for k in range(c):
                for t in range(d):
                    dense[i * b * d + j * d + t, i * c * d + k * d + t] = values[i, j, k, t]
    return dense


def chain_dense(patterns, values_list) -> np.ndarray:
    """``X_1 X_2 ⋯ X_L`` as one dense matrix (X_1 left-most)."""
    product = None
    for pattern, values in zip(patterns, values_list):
        dense = factor_dense(pattern, values)
        product = dense if product is None else product @ dense
    return product


def butterfly_dense(B) -> np.ndarray:
    """Dense matrix of a `fastbfly.Butterfly` from its documented definition:
    ``M[row_perm][:, perm] == X_1 ⋯ X_L`` (identity where a permutation is ``None``),
    cut to ``B.shape`` when the chain covers a zero-padded matrix."""
    product = chain_dense([f.pattern for f in B.factors], [f.values for f in B.factors])
    m, n = product.shape
    rows = np.arange(m) if B.row_perm is None else np.asarray(B.row_perm)
    cols = np.arange(n) if B.perm is None else np.asarray(B.perm)
    dense = np.zeros_like(product)
    for r in range(m):
        for s in range(n):
            dense[rows[r], cols[s]] = product[r, s]
    # a zero-padded chain: the matrix is the leading block
    return dense[: B.shape[0], : B.shape[1]]


# ----------------------------------------------------------------------------- permutations
def bit_reversal(n: int) -> np.ndarray:
    """Bit reversal by reversing the binary string of every index."""
    bits = n.bit_length() - 1
    if bits == 0:
        return np.zeros(n, dtype=np.int64)
    return np.array([int(format(i, f"0{bits}b")[::-1], 2) for i in range(n)], dtype=np.int64)


def dft_matrix(n: int) -> np.ndarray:
    """``F[k, l] = exp(-2iπ k l / n)`` entry by entry."""
    k = np.arange(n)[:, None]
    l = np.arange(n)[None, :]
    return np.exp(-2j * np.pi * ((k * l) % n) / n)


def dft_radix2_factors(n: int) -> list:
    """Dense radix-2 factors of DESIGN.md §6: ``F[:, bitrev] = T_J ⋯ T_1`` with
    ``T_ℓ = I_{n/2^ℓ} ⊗ [[I_s, Ω_ℓ], [I_s, −Ω_ℓ]]``, ``s = 2^{ℓ-1}``.  Returned as
    ``[T_J, ..., T_1]`` (left-most first)."""
    J = n.bit_length() - 1
    factors = []
    for level in range(1, J + 1):
        s = 2 ** (level - 1)
        omega = np.diag(np.exp(-2j * np.pi * np.arange(s) / 2**level))
        identity = np.eye(s)
        block = np.block([[identity, omega], [identity, -omega]])
        factors.append(np.kron(np.eye(n // 2**level), block))
    return factors[::-1]


# ----------------------------------------------------------------------------- two-factor split
def block_indices(node_shape, b1: int, c1: int):
    """Yield ``(i, k1, j2, t, rows, cols)`` for every block of DESIGN.md §3: block
    ``(i, k1, j2, t)`` is ``M[j1, k2] = T[i, j1*b2 + j2, k1*C2 + k2, t]``."""
    a, big_b, big_c, d = node_shape
    b2, c2 = big_b // b1, big_c // c1
    assert b1 * b2 == big_b and c1 * c2 == big_c
    rows_of = np.arange(b1) * b2
    cols_of = np.arange(c2)
    for i in range(a):
        for k1 in range(c1):
            for j2 in range(b2):
                for t in range(d):
                    yield i, k1, j2, t, rows_of + j2, k1 * c2 + cols_of


def best_rank(M: np.ndarray, rank: int = 1):
    """Best rank-``rank`` approximation of ``M`` by a full SVD, with its singular values."""
    U, s, Vh = np.linalg.svd(M)
    return (U[:, :rank] * s[:rank]) @ Vh[:rank], s


def split_rank_one(node: np.ndarray, b1: int, c1: int, columns=None, rank: int = 1):
    """Reference two-factor split of ``node[:, :, columns, :]``.

    Returns
    -------
    approximation : array like ``node``
        Every block replaced by its best rank-``rank`` approximation (SVD in float64
        or complex128), in the node's 4-D layout.
    blocks : list of dict
        Per block: ``index`` ``(i, k1, j2, t)``, ``block`` (the block), ``best``
        (its best approximation), ``singular_values``.
    """
    node = np.asarray(node)
    if columns is not None:
        node = node[:, :, np.asarray(columns), :]
    work = node.astype(np.complex128 if node.dtype.kind == "c" else np.float64)
    approximation = np.zeros_like(work)
    blocks = []
    for i, k1, j2, t, rows, cols in block_indices(node.shape, b1, c1):
        M = work[i][np.ix_(rows, cols)][..., t]
        best, s = best_rank(M, rank)
        approximation[i][np.ix_(rows, cols, [t])] = best[..., None]
        blocks.append({"index": (i, k1, j2, t), "block": M, "best": best, "singular_values": s})
    return approximation, blocks


def two_factor_error(matrix: np.ndarray, chain, split: int) -> float:
    """``E_ℓ(Z) = min ‖Z − A B‖_F`` over A on ``fuse(π_1..π_ℓ)``, B on
    ``fuse(π_{ℓ+1}..π_L)`` (DESIGN.md §5), ``split = ℓ`` (1-based count of left
    factors), computed with the reference block SVDs at the root."""
    n = matrix.shape[0]
    left = chain.fused(0, split)
    right = chain.fused(split, len(chain))
    _, blocks = split_rank_one(matrix.reshape(1, n, n, 1), left.b, right.a)
    residual2 = sum(float(np.sum(b["singular_values"][1:] ** 2)) for b in blocks)
    return float(np.sqrt(residual2))
