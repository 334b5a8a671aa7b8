"""The rank-one split's gathers (issue 4): in-order rows read four at a time, and a
column permutation read in sorted order (`fastbfly._kernels._sorted_gather`) into the
panel of the given order, so the results keep their bits; exact transforms recovered
through both paths, and the blocks' errors against LAPACK's SVD."""

import numpy as np
import pytest
import scipy.linalg

import fastbfly
from fastbfly import _kernels, factorization
from fastbfly.permutations import bit_reversal_permutation

from conftest import dtype_id, eps, random_array, run_split_rank_one

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def reference_gather(node, columns, groups, i, j2, t, b1, c2, k1_first, k1_count):
    """The gather in the given column order, ``panel[kk, j1, k2] =
    node[i, j1*b2 + j2, columns[k1*c2 + k2], t]`` with ``k1 = groups[k1_first + kk]``,
    and the column norms summed row after row in float64."""
    b2 = node.shape[1] // b1
    panel = np.empty((k1_count, b1, c2), dtype=node.dtype)
    norms = np.zeros((k1_count, c2))
    for kk in range(k1_count):
        k1 = groups[k1_first + kk]
        for j1 in range(b1):
            row = node[i, j1 * b2 + j2, columns[k1 * c2:(k1 + 1) * c2], t]
            panel[kk, j1] = row
            norms[kk] = norms[kk] + (row.real.astype(np.float64) ** 2
                                     + row.imag.astype(np.float64) ** 2)
    return panel, norms


@pytest.mark.parametrize("c1, c2", [(4, 8), (8, 4), (16, 16), (3, 5)])
def test_sorted_gather_orders_every_group(c1, c2, rng):
    """Each group's columns in increasing order with their places in the group; groups
    by first column; for the bit reversal, progressions of step c1, offsets in turn."""
    n = c1 * c2
    for columns in (rng.permutation(n).astype(np.int64),
                    rng.integers(0, n, n).astype(np.int64)):  # (repeats allowed too)
        columns_copy = columns.copy()
        ordered, positions, groups = _kernels._sorted_gather(columns, c1, c2)
        np.testing.assert_array_equal(columns, columns_copy)
        for k1 in range(c1):
            group = slice(k1 * c2, (k1 + 1) * c2)
            assert np.all(np.diff(ordered[group]) >= 0)
            np.testing.assert_array_equal(np.sort(positions[group]), np.arange(c2))
            np.testing.assert_array_equal(ordered[group], columns[group][positions[group]])
        np.testing.assert_array_equal(np.sort(groups), np.arange(c1))
        firsts = ordered[groups * c2]
        assert np.all(np.diff(firsts) >= 0)
    if n & (n - 1) == 0:
        ordered, positions, groups = _kernels._sorted_gather(bit_reversal_permutation(n), c1, c2)
        # groups visited with offsets 0, 1, 2, ...: block q reads q, q + c1, q + 2 c1, ...
        expected = np.arange(c1)[:, None] + c1 * np.arange(c2)[None, :]
        np.testing.assert_array_equal(ordered.reshape(c1, c2)[groups], expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("order", ["in-order", "sorted", "staged"])
@pytest.mark.parametrize("shape, b1, c1", [(((2, 15, 24, 3)), 5, 4), (((1, 64, 32, 1)), 8, 4),
                                           (((1, 14, 12, 1)), 7, 3)])
def test_gather_rows_is_the_given_order_gather(shape, b1, c1, order, dtype, rng):
    """`_gather_rows` (rows four at a time, then the remaining ones; sorted reads
    scattered to their places) gives exactly the panel and column norms of the plain
    gather in the given order, for every task of the node."""
    node = random_array(rng, shape, dtype)
    node_copy = node.copy()
    a, big_b, big_c, d = shape
    b2, c2 = big_b // b1, big_c // c1
    if order == "in-order":
        columns = np.arange(big_c)
    else:
        columns = rng.permutation(big_c).astype(np.int64)
    stage = order == "staged"
    if stage and d != 1:
        pytest.skip("rows are staged for d == 1 only")
    if order == "sorted":
        ordered, positions, groups = _kernels._sorted_gather(columns, c1, c2)
    else:
        ordered, positions, groups = columns.copy(), np.arange(big_c) % c2, np.arange(c1)
    staged = np.empty((2 if stage else 0, big_c), dtype=dtype)
    batch = 2
    for i in range(a):
        for j2 in range(b2):
            for t in range(d):
                for k1_first in range(0, c1, batch):
                    k1_count = min(batch, c1 - k1_first)
                    panel = np.full((batch, b1, c2), np.nan, dtype=dtype)
                    norms = np.full((batch, max(c2, 2)), np.nan)
                    _kernels._gather_rows(node, ordered, positions, groups, order == "in-order",
                                          i, j2, t, b1, b2, c2, k1_first, k1_count, panel,
                                          norms, staged, stage)
                    expected, expected_norms = reference_gather(
                        node, columns, groups, i, j2, t, b1, c2, k1_first, k1_count)
                    np.testing.assert_array_equal(panel[:k1_count], expected)
                    np.testing.assert_array_equal(norms[:k1_count, :c2], expected_norms)
    np.testing.assert_array_equal(node, node_copy)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("order", ["in-order", "sorted", "staged"])
def test_gather_two_rows_is_the_given_order_gather(order, dtype, rng):
    """The same for two-row blocks, whose row norms and Gram off-diagonal are summed in
    the block's own column order whatever the read order (bit for bit)."""
    shape, c1 = (1, 6, 20, 1), 4
    node = random_array(rng, shape, dtype)
    b2, c2 = 3, 5
    columns = np.arange(20) if order == "in-order" else rng.permutation(20).astype(np.int64)
    if order == "sorted":
        ordered, positions, groups = _kernels._sorted_gather(columns, c1, c2)
    else:
        ordered, positions, groups = columns.copy(), np.arange(20) % c2, np.arange(c1)
    stage = order == "staged"
    staged = np.empty((2 if stage else 0, 20), dtype=dtype)
    work = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    for j2 in range(b2):
        panel = np.full((c1, 2, c2), np.nan, dtype=dtype)
        row_norm2 = np.full((c1, c2), np.nan)
        cross = np.full(c1, np.nan, dtype=work)
        _kernels._gather_two_rows(node, ordered, positions, groups, order == "in-order", 0, j2,
                                  0, b2, c2, 0, c1, panel, row_norm2, cross, staged, stage)
        expected, _ = reference_gather(node, columns, groups, 0, j2, 0, 2, c2, 0, c1)
        np.testing.assert_array_equal(panel, expected)
        for kk in range(c1):
            x0 = expected[kk, 0].astype(work)
            x1 = expected[kk, 1].astype(work)
            p = s = 0.0
            q = work(0)
            for k2 in range(c2):  # the kernel's order of summation
                p += x0[k2].real ** 2 + x0[k2].imag ** 2
                s += x1[k2].real ** 2 + x1[k2].imag ** 2
                q += x0[k2] * np.conj(x1[k2])
            assert row_norm2[kk, 0] == pytest.approx(p, rel=4 * eps(np.float64))
            assert row_norm2[kk, 1] == pytest.approx(s, rel=4 * eps(np.float64))
            assert abs(cross[kk] - q) <= 8 * eps(np.float64) * np.sqrt(p * s)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape, b1, c1", [((1, 64, 64, 1), 8, 8), ((2, 10, 14, 2), 5, 2),
                                           ((1, 8, 32, 1), 2, 4), ((1, 30, 12, 1), 6, 3)])
def test_sorted_reads_give_the_bits_of_the_given_order(shape, b1, c1, dtype, rng):
    """A permutation read in sorted order, in one batch or several, gives bit for bit the
    factors and sums of the pre-permuted node read in order (the kernel's own
    contract for staged rows, extended to the sorted reads)."""
    node = random_array(rng, shape, dtype)
    columns = rng.permutation(shape[2]).astype(np.int64)
    permuted = np.ascontiguousarray(node[:, :, columns, :])
    expected = run_split_rank_one(permuted, b1, c1)
    for batch in (c1, 2, 1):
        got = run_split_rank_one(node, b1, c1, columns=columns, batch=batch)
        assert got[0].tobytes() == expected[0].tobytes()
        assert got[1].tobytes() == expected[1].tobytes()
        assert got[4] == expected[4] == 0
        if batch == c1:
            assert got[2:4] == expected[2:4]
        else:  # blocks summed in another order across batches
            assert got[2] == pytest.approx(expected[2], rel=8 * eps(np.float64))
            assert got[3] == pytest.approx(expected[3], rel=1e-12, abs=1e-12 * expected[2])


def transform(kind, n, dtype):
    if kind == "dft":
        return np.fft.fft(np.eye(n)).astype(dtype)
    return scipy.linalg.hadamard(n).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("panel_bytes", [None, 1 << 12], ids=["staged", "sorted-reads"])
@pytest.mark.parametrize("case", ["bitrev", "random-perm", "row-perm"])
def test_exact_transforms_through_both_gathers(case, panel_bytes, dtype, rng, monkeypatch):
    """The DFT (complex dtypes) and the Hadamard matrix (real ones) behind a bit
    reversal, a random column permutation or a random row permutation are recovered to
    rounding, with the rows staged (default panels) or read in sorted order (small
    panels); both give the same factors, bit for bit."""
    n = 256
    kind = "dft" if np.dtype(dtype).kind == "c" else "hadamard"
    butterfly = transform(kind, n, dtype)
    if kind == "dft":
        butterfly = butterfly[:, bit_reversal_permutation(n)]  # F[:, bitrev] is one
    perm = row_perm = None
    matrix = np.empty_like(butterfly)
    if case == "bitrev":
        perm = "bitrev"
        matrix[:, bit_reversal_permutation(n)] = butterfly
    elif case == "random-perm":
        perm = rng.permutation(n)
        matrix[:, perm] = butterfly
    else:
        perm = "bitrev" if kind == "dft" else None
        row_perm = rng.permutation(n)
        inner = np.empty_like(butterfly)
        if perm is None:
            inner = butterfly
        else:
            inner[:, bit_reversal_permutation(n)] = butterfly
        matrix[row_perm] = inner
    matrix_copy = matrix.copy()
    reference = fastbfly.factorize(matrix, perm=perm, row_perm=row_perm)
    if panel_bytes is not None:
        monkeypatch.setattr(factorization, "PANEL_BYTES", panel_bytes)
    B = fastbfly.factorize(matrix, perm=perm, row_perm=row_perm)
    np.testing.assert_array_equal(matrix, matrix_copy)
    error = np.linalg.norm(B.toarray().astype(np.complex128) - matrix) / np.linalg.norm(matrix)
    assert error <= 20 * eps(dtype)
    assert B.info["relative_error"] <= 20 * eps(dtype)
    assert abs(B.info["relative_error"] - error) <= 20 * eps(dtype)
    for ours, theirs in zip(B.factors, reference.factors):
        assert ours.values.tobytes() == theirs.values.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_block_errors_match_lapack(batch, dtype, rng):
    """Through the sorted reads (a random permutation, several batches), every block's
    residual ``‖M − σ u vᴴ‖²`` is LAPACK's ``Σ_{i>1} s_i²`` to the solver's tolerance,
    and the top singular value is LAPACK's; blocks are a dominant rank-one term plus
    noise (a clear gap: the power iteration converges)."""
    a, b1, c1, b2, c2, d = 1, 12, 8, 3, 10, 1
    x = random_array(rng, (c1, b2, b1, 1), dtype).astype(np.complex128)
    y = random_array(rng, (c1, b2, 1, c2), dtype).astype(np.complex128)
    noise = random_array(rng, (c1, b2, b1, c2), dtype).astype(np.complex128)
    if np.dtype(dtype).kind != "c":
        x, y, noise = x.real, y.real, noise.real
    blocks = (4.0 * x * y + 0.3 * noise).astype(dtype)  # (c1, b2, b1, c2): block (k1, j2)
    # node[0, j1*b2 + j2, k1*c2 + k2, 0] = blocks[k1, j2, j1, k2], then columns scrambled
    inner = blocks.transpose(2, 1, 0, 3).reshape(1, b1 * b2, c1 * c2, 1)
    columns = rng.permutation(c1 * c2).astype(np.int64)
    node = np.empty_like(inner)
    node[:, :, columns, :] = inner
    left, right, norm2, residual2, bad = run_split_rank_one(node, b1, c1, columns=columns,
                                                            batch=batch)
    assert bad == 0
    double = np.finfo(dtype).eps < 1e-10
    total_optimal = 0.0
    for k1 in range(c1):
        for j2 in range(b2):
            M = blocks[k1, j2].astype(np.complex128)
            s = np.linalg.svd(M, compute_uv=False)
            optimal2 = float((s[1:] ** 2).sum())
            total_optimal += optimal2
            u = left[0, :, k1, j2].astype(np.complex128)
            v = right[k1, j2, :, 0].astype(np.complex128)
            got2 = float(np.linalg.norm(M - np.outer(u, v)) ** 2)
            # the solver stops at RESIDUAL_TOL of the error; the stored factors round
            # to the dtype (‖M‖ times its eps, squared against the residual)
            rounding = 0.0 if double else 8 * eps(dtype) * np.linalg.norm(M) * np.sqrt(optimal2)
            assert abs(got2 - optimal2) <= 10 * _kernels.RESIDUAL_TOL * optimal2 + \
                (1e-12 * s[0] ** 2 if double else rounding), (k1, j2, got2, optimal2)
            sigma = np.linalg.norm(u) * np.linalg.norm(v)
            # (σ² converges to RESIDUAL_TOL of the error: σ to a part in 1e11 here)
            assert sigma == pytest.approx(s[0], rel=1e-10 if double else 8 * eps(dtype))
    assert residual2 == pytest.approx(total_optimal, rel=1e-8 if double else 1e-4)
