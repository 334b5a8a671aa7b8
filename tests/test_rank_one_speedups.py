"""The fast paths of the rank-one split (issue 4): blocks solved unscaled when their
norm is in a safe range, rows staged before a column permutation, the 2-row residual
from the complement of ``u``, and the one-pass scale check of `factorize`."""

import numpy as np
import pytest

import fastbfly
from fastbfly import Butterfly, Factor, _kernels
from fastbfly.patterns import Chain
from fastbfly.factorization import _scan

from conftest import dtype_id, eps, random_array, run_split_rank_one


run = run_split_rank_one


def products(left, right, shape, b1, c1):
    """Per block ``(i, k1, j2, t)`` the rank-one product ``u vᴴ`` the kernel wrote."""
    a, big_b, big_c, d = shape
    b2 = big_b // b1
    out = {}
    for i in range(a):
        for k1 in range(c1):
            for j2 in range(b2):
                for t in range(d):
                    u = left[i, :, k1, j2 * d + t].astype(np.complex128)
                    v = right[i * c1 + k1, j2, :, t].astype(np.complex128)
                    out[i, k1, j2, t] = np.outer(u, v)
    return out


# (node shape, b1, c1): 2-row blocks (closed form fed by the gather), 2 columns, and
# general blocks (fused power iteration), with d = 1 (staging) and d > 1.
SHAPES = {
    "2x16": ((1, 8, 32, 1), 2, 2),
    "2x6-d3": ((2, 4, 12, 3), 2, 2),
    "6x2": ((1, 12, 8, 1), 6, 4),
    "8x8": ((1, 64, 64, 1), 8, 8),
    "5x7-d2": ((1, 10, 14, 2), 5, 2),
}
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(SHAPES))
def test_staged_permuted_gather_is_bitwise_the_plain_gather(case, dtype, rng):
    """A column permutation applied by the kernel (rows staged, then permuted) gives
    exactly the factors of the pre-permuted node with identity columns."""
    shape, b1, c1 = SHAPES[case]
    node = random_array(rng, shape, dtype)
    columns = rng.permutation(shape[2]).astype(np.int64)
    permuted = np.ascontiguousarray(node[:, :, columns, :])
    got = run(node, b1, c1, columns=columns)
    expected = run(permuted, b1, c1)
    assert got[0].tobytes() == expected[0].tobytes()
    assert got[1].tobytes() == expected[1].tobytes()
    assert got[2:] == expected[2:]
    # and in several batches (no staging: rows are read per batch)
    if c1 > 1:
        batched = run(node, b1, c1, columns=columns, batch=1)
        np.testing.assert_allclose(batched[0], expected[0], rtol=0, atol=0)
        np.testing.assert_allclose(batched[1], expected[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(SHAPES))
def test_blocks_scale_exactly_across_the_unscaled_range(case, dtype, rng):
    """Blocks inside the safe norm range are solved unscaled, others rescaled first: the
    block products of ``2**e · node`` are ``2**e`` times those of ``node`` (to rounding)
    for exponents on both sides of the range's ends, and exact rank-one blocks are
    recovered to a few eps at every scale."""
    shape, b1, c1 = SHAPES[case]
    real = np.float32 if np.dtype(dtype) in (np.float32, np.complex64) else np.float64
    info = np.finfo(real)
    # exponents whose ‖M‖² (~2**(2e)) lands either side of 2**±300, within the dtype
    exponents = [0, -149, -151, 149, 151, -400, 400]
    exponents = [e for e in exponents if info.minexp + 30 < e < info.maxexp - 30]
    a, big_b, big_c, d = shape
    b2, c2 = big_b // b1, big_c // c1
    # exact rank-one blocks: node[i, j1*b2 + j2, k1*c2 + k2, t] = x[...j1] y[...k2]
    x = random_array(rng, (a, b1, b2, c1, d), dtype)
    y = random_array(rng, (a, c1, c2, b2, d), dtype)
    node = np.einsum("ipjkt,ikqjt->ipjkqt", x, y).reshape(shape).astype(dtype)
    base = products(*run(node, b1, c1)[:2], shape, b1, c1)
    tol = 20 * eps(dtype)
    for e in exponents:
        scaled = np.ldexp(node.real, e) + (1j * np.ldexp(node.imag, e) if node.dtype.kind == "c" else 0)
        scaled = scaled.astype(dtype)
        left, right, norm2, residual2, bad = run(scaled, b1, c1)
        assert bad == 0
        got = products(left, right, shape, b1, c1)
        for key, P in got.items():
            M = _block(scaled, key, b1, c1)
            reference = np.ldexp(1.0, e) * base[key]
            size = np.linalg.norm(M)
            assert np.linalg.norm(P - M) <= tol * size, (e, key)
            assert np.linalg.norm(P - reference) <= tol * size, (e, key)
        assert residual2 <= (tol ** 2) * norm2 * 4


def _block(node, key, b1, c1):
    """Block ``(i, k1, j2, t)`` of ``node`` as a ``b1 × C2`` complex128 matrix."""
    i, k1, j2, t = key
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    return node[i, j2::b2, k1 * c2:(k1 + 1) * c2, t].astype(np.complex128)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("ratio", [1e-3, 1e-7, 1e-10])
def test_two_row_residual_is_accurate_when_tiny(ratio, dtype, rng):
    """2-row blocks get their residual ‖u⊥ᴴ M‖² directly: accurate to a small relative
    error even where ‖M‖² − σ₁² has no correct digit (σ₂/σ₁ = 1e-10)."""
    c2, blocks = 64, 3
    node = np.zeros((1, 2, c2 * blocks, 1), dtype=dtype)
    expected = 0.0
    for k1 in range(blocks):
        U, _ = np.linalg.qr(random_array(rng, (2, 2), dtype))
        V, _ = np.linalg.qr(random_array(rng, (c2, 2), dtype))
        M = U @ np.diag([1.0, ratio]) @ V.conj().T
        node[0, :, k1 * c2:(k1 + 1) * c2, 0] = M
        expected += np.linalg.svd(M, compute_uv=False)[1] ** 2
    _, _, norm2, residual2, _ = run(node, 2, blocks)
    assert norm2 == pytest.approx(blocks * (1 + ratio ** 2), rel=1e-13)
    assert residual2 == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("size", [1, 7, 4097])
def test_largest_magnitude(size, dtype, rng):
    """One pass for factorize's scale check: max |real|, |imag| (NaN if any is NaN;
    Inf is its largest magnitude)."""
    def largest(values):
        return _scan(values)[0]

    values = random_array(rng, (size,), dtype)
    spot = int(rng.integers(size))
    values[spot] = -3e30 if np.dtype(dtype).kind == "f" else 2e30j - 1
    parts = np.abs(values.view(values.real.dtype))
    assert largest(values) == float(parts.max()) == pytest.approx(3e30 if np.dtype(dtype).kind == "f" else 2e30)
    matrix = values.reshape(1, -1)
    assert largest(matrix) == float(parts.max())
    assert largest(np.asfortranarray(values.reshape(-1, 1))) == float(parts.max())
    values[(spot + 1) % size] = np.inf
    assert largest(values) == np.inf
    values[(spot + 2) % size] = -np.nan
    assert np.isnan(largest(values))
    assert largest(np.zeros(3, dtype)) == 0.0
    assert largest(np.full(3, -0.0, dtype)) == 0.0


@pytest.mark.parametrize("unsigned", [np.uint32, np.uint64])
def test_scan_kernel(unsigned, rng):
    """The scan kernel's maximum of the masked bit patterns and its checksum, against
    Python integers."""
    bits = rng.integers(0, np.iinfo(unsigned).max, size=1001, dtype=unsigned, endpoint=True)
    mask = ~(unsigned(1) << unsigned(8 * bits.itemsize - 1))
    largest, checksum = _kernels.scan(bits, mask)
    assert int(largest) == int((bits & mask).max())
    assert int(checksum) == sum(int(b) * (2 * k + 1) for k, b in enumerate(bits)) % 2**64
    assert [int(v) for v in _kernels.scan(bits[:0], mask)] == [0, 0]


@pytest.mark.parametrize("tree", ["balanced", "left-to-right"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_exact_butterflies_after_the_fast_paths(tree, dtype, rng):
    """End to end, through the staged permuted gather and both block paths: the DFT with
    its bit reversal (complex), and a random real butterfly product whose columns were
    scrambled (real, the permutation given), are recovered to a few eps of the dtype,
    with an exact reported error."""
    n = 256
    if np.dtype(dtype).kind == "c":
        F = np.fft.fft(np.eye(n)).astype(dtype)
        perm = "bitrev"
    else:
        chain = Chain.square_dyadic(n)
        factors = [Factor(p, random_array(rng, tuple(p), dtype)) for p in chain]
        product = Butterfly(factors).toarray()
        perm = rng.permutation(n)
        F = np.empty_like(product)
        F[:, perm] = product  # F[:, perm] is the butterfly product
    B = fastbfly.factorize(F, perm=perm, tree=tree)
    error = np.linalg.norm(B.toarray() - F) / np.linalg.norm(F)
    assert error <= 20 * eps(dtype)
    assert B.info["relative_error"] <= 20 * eps(dtype)
    assert abs(B.info["relative_error"] - error) <= 20 * eps(dtype)
