"""Every Numba kernel against a slow dense reference (tests/naive.py).

The kernels' calling conventions are private and still being tuned, so all calls go
through `call`, which fills the arguments by parameter name: when a kernel grows a new
parameter, teach `call` its meaning (one place) instead of editing every test.
"""

import inspect

import numpy as np
import pytest

from fastbfly import _kernels
from fastbfly.butterfly import Factor, phase_layout, phase_split_is_safe
from fastbfly.patterns import Chain

import naive
from conftest import DTYPES, assert_close, dtype_id, eps, random_array, rtol


def call(kernel, **arguments):
    """Call a Numba kernel with ``arguments`` given by parameter name."""
    # (with NUMBA_DISABLE_JIT=1 the kernels are the plain Python functions)
    function = getattr(kernel, "py_func", kernel)
    parameters = list(inspect.signature(function).parameters)
    missing = [name for name in parameters if name not in arguments]
    if missing:
        pytest.fail(f"{function.__name__} has parameters {missing} unknown to the tests: "
                    f"update tests/test_kernels.py::call")
    return kernel(*[arguments[name] for name in parameters])


def kernel(*names):
    """The first of ``names`` that `fastbfly._kernels` defines."""
    for name in names:
        if hasattr(_kernels, name):
            return getattr(_kernels, name)
    pytest.fail(f"fastbfly._kernels defines none of {names}")


# ============================================================================ apply chain
# Chains (left-most first).  Kernels do not check chainability; the last chain is the
# reversed adjoint of a butterfly, which is a valid product but not "chainable".
APPLY_CHAINS = {
    "dyadic-2": [(1, 2, 2, 1)],
    "dyadic-8": [(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)],
    "dyadic-64": [(2 ** (l - 1), 2, 2, 64 >> l) for l in range(1, 7)],
    "12x30": [(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)],
    "rank-2": [(1, 4, 4, 2), (2, 4, 4, 1)],
    "single-3x5": [(2, 3, 5, 2)],
    "reversed-adjoint": [(2, 2, 2, 1), (1, 2, 2, 2)],
}
MODES = {"forward": (False, False), "adjoint": (True, True), "transpose": (True, False)}


def chain_arrays(rng, patterns, dtype):
    """Flat values, (L, 4) patterns, offsets, and the dense product (reference)."""
    values_list = [random_array(rng, p, dtype) for p in patterns]
    values = np.concatenate([v.ravel() for v in values_list])
    pattern_array = np.array(patterns, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([np.prod(p) for p in patterns])]).astype(np.int64)
    dense = naive.chain_dense(patterns, values_list)
    return values, pattern_array, offsets, dense


def reference(dense, mode):
    return {"forward": dense, "adjoint": dense.conj().T, "transpose": dense.T}[mode]


def run_apply(operand, parallel, values, patterns, offsets, x, n_out, adjoint, conjugate,
              middle=0, tasks=(1, 1)):
    """Run the vector or block-of-vectors chain kernel; ``tasks`` is the number of thread
    tasks of the (block-diagonal, periodic) phases when the chain is split at ``middle``."""
    apply = kernel(f"apply_chain_{'parallel' if parallel else 'serial'}")
    out = np.full((n_out,) + x.shape[1:], np.nan, dtype=values.dtype)  # NaN: unwritten shows
    reversed_chain = Chain([tuple(p) for p in patterns]).reversed
    segments, period = phase_layout(patterns, middle, reversed_chain) if middle else (1, 1)
    call(apply, values=values, patterns=patterns, offsets=offsets, x=x, out=out,
         adjoint=adjoint, conjugate=conjugate, middle=middle, right_blocks=not reversed_chain,
         segments=segments, period=period, block_tasks=tasks[0], period_tasks=tasks[1])
    return out


OPERANDS = {"vec": None, "mat-1": 1, "mat-3": 3, "mat-17": 17}
TASKS = [(1, 1), (2, 2), (3, 1), (1, 3), (5, 4)]


@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("operand", sorted(OPERANDS))
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("chain", sorted(APPLY_CHAINS))
def test_apply_chain(chain, dtype, mode, operand, build, rng):
    """Forward, adjoint (conjugate) and transpose products against the dense product of
    the factors, for one phase and (chainable chains) every split point and task count."""
    values, patterns, offsets, dense = chain_arrays(rng, APPLY_CHAINS[chain], dtype)
    expected_matrix = reference(dense, mode)
    adjoint, conjugate = MODES[mode]
    n_columns = OPERANDS[operand]
    shape = (expected_matrix.shape[1],) if n_columns is None else (expected_matrix.shape[1], n_columns)
    x = random_array(rng, shape, dtype)
    x_copy = x.copy()
    expected = expected_matrix @ x
    runs = [(0, (1, 1))]
    reversed_chain = Chain(APPLY_CHAINS[chain]).reversed
    runs += [(middle, tasks) for middle in range(1, len(patterns)) for tasks in TASKS
             if phase_split_is_safe(patterns, middle, reversed_chain)]
    for middle, tasks in runs:
        out = run_apply(operand[:3], build == "parallel", values, patterns, offsets, x,
                        expected_matrix.shape[0], adjoint, conjugate, middle, tasks)
        assert_close(out, expected, dtype, what=f"{chain} {mode} middle={middle} tasks={tasks}")
    np.testing.assert_array_equal(x, x_copy)


# ============================================================================ split
# Node shapes (a, B, C, d), rows per block b1 and column groups c1: blocks are
# b1 × C/c1.  Covers b1 == 1, 2-sided blocks both ways (2 × m and m × 2), square and
# rectangular blocks, odd sizes, and blocks with sides > 16.
SPLIT_CASES = {
    "rows=1": ((2, 3, 4, 2), 1, 2),
    "2x2": ((2, 4, 4, 2), 2, 2),
    "2x8": ((1, 8, 8, 1), 2, 1),  # left-most factor of N=8 peeled off
    "8x2": ((1, 8, 8, 1), 8, 4),  # right-most factor peeled off
    "3x5": ((2, 6, 10, 3), 3, 2),
    "4x4-dyadic": ((1, 16, 16, 1), 4, 4),  # balanced root of N=16
    "5x3": ((1, 10, 12, 2), 5, 4),
    "17x17": ((1, 34, 34, 1), 17, 2),
    "20x30": ((1, 40, 60, 1), 20, 2),
    "32x32-dyadic": ((1, 1024, 1024, 1), 32, 32),  # balanced root of N=1024
    "40x6": ((2, 80, 12, 1), 40, 2),
}
KINDS = ["gaussian", "rank-one", "rank-two", "zeros", "zero-blocks", "rank-one+noise",
         "tiny", "huge", "mixed-scales"]
# The large node only with the kinds that exercise long power iterations.
SLOW_CASES = {"32x32-dyadic"}


# Extreme magnitudes per dtype, far inside the dtype's normal range (squares are not).
EXTREME = {np.dtype(np.float32): 1e30, np.dtype(np.complex64): 1e30,
           np.dtype(np.float64): 1e300, np.dtype(np.complex128): 1e300}


def make_node(rng, shape, b1, c1, kind, dtype):
    """A node whose blocks (DESIGN.md §3) have the requested structure."""
    dtype = np.dtype(dtype)
    work = np.complex128 if dtype.kind == "c" else np.float64
    node = np.zeros(shape, dtype=work)
    extreme = EXTREME[dtype]
    for index, (i, k1, j2, t, rows, cols) in enumerate(naive.block_indices(shape, b1, c1)):
        size = (len(rows), len(cols))
        gaussian = lambda *s: random_array(rng, s, work)  # noqa: E731
        if kind in ("gaussian", "tiny", "huge"):
            M = gaussian(*size)
        elif kind == "rank-one":
            M = np.outer(gaussian(size[0]), gaussian(size[1]))
        elif kind == "rank-two":
            M = np.outer(gaussian(size[0]), gaussian(size[1])) + 0.3 * np.outer(
                gaussian(size[0]), gaussian(size[1]))
        elif kind == "zeros":
            M = np.zeros(size)
        elif kind == "zero-blocks":
            M = gaussian(*size) if index % 3 else np.zeros(size)
        elif kind == "rank-one+noise":
            M = np.outer(gaussian(size[0]), gaussian(size[1]))
            M = M + 1e-3 * np.linalg.norm(M) / np.sqrt(M.size) * gaussian(*size)
        elif kind == "mixed-scales":
            # block magnitudes cycle through extreme ** (-1, -2/3, ..., 1)
            M = gaussian(*size) * extreme ** ((index % 7 - 3) / 3)
        else:
            raise AssertionError(kind)
        node[i][np.ix_(rows, cols, [t])] = M[..., None]
    if kind == "tiny":
        node /= extreme
    if kind == "huge":
        node *= extreme
    return node.astype(dtype)


def run_split(parallel, node, b1, c1, columns=None, sigma_power=1.0, n_chunks=1, batch=None):
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    left = np.full((a, b1, c1, b2 * d), np.nan, dtype=node.dtype)  # NaN: unwritten shows
    right = np.full((a * c1, b2, c2, d), np.nan, dtype=node.dtype)
    norm2 = np.zeros(n_chunks)
    residual2 = np.zeros(n_chunks)
    exponent = np.zeros(n_chunks, dtype=np.int64)
    bad = np.zeros(n_chunks, dtype=np.int64)
    split = kernel("split_rank_one_parallel" if parallel else "split_rank_one_serial")
    work = np.zeros(1, dtype=np.complex128 if node.dtype.kind == "c" else np.float64)
    call(split, node=node, columns=np.arange(big_c) if columns is None else columns, b1=b1,
         c1=c1, batch=c1 if batch is None else batch, left=left, right=right,
         sigma_power=sigma_power, tol=8.0 * eps(np.float64), work=work, n_chunks=n_chunks,
         chunk_norm2=norm2, chunk_residual2=residual2, chunk_exponent=exponent, chunk_bad=bad)
    return left, right, *combine(norm2, residual2, exponent), int(bad.sum())


def combine(norm2, residual2, exponent):
    """Per-chunk sums in units of ``4**exponent`` -> plain totals (float64; inf if they
    overflow, as for 1e300 entries, where the tests compare ratios only)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.ldexp(1.0, 2 * exponent)
        return float((norm2 * scale).sum()), float((residual2 * scale).sum())


def kernel_blocks(left, right, node_shape, b1, c1, rank=1):
    """Per block (same order as `naive.block_indices`): the rank-``rank`` product the
    kernel wrote, read back with the documented layout
    ``left[i, j1, k1*r + ρ, j2*d + t]``, ``right[i*c1 + k1, ρ*b2 + j2, k2, t]``."""
    a, big_b, big_c, d = node_shape
    b2 = big_b // b1
    products = []
    for i, k1, j2, t, _, _ in naive.block_indices(node_shape, b1, c1):
        u = left[i, :, k1 * rank : (k1 + 1) * rank, j2 * d + t]  # (b1, r)
        v = right[i * c1 + k1, j2::b2, :, t][:rank]  # (r, C2): rows ρ*b2 + j2
        with np.errstate(invalid="ignore", over="ignore"):  # NaN products fail below
            products.append(u.astype(np.complex128) @ v.astype(np.complex128))
    return products


def kernel_vectors(left, right, node_shape, b1, c1):
    """Per block, the rank-one kernel's two vectors ``(σ^p u, σ^(1-p) vᴴ)``."""
    a, big_b, big_c, d = node_shape
    return [(left[i, :, k1, j2 * d + t], right[i * c1 + k1, j2, :, t])
            for i, k1, j2, t, _, _ in naive.block_indices(node_shape, b1, c1)]


# Relative slack on each block's residual for the iterative top singular pair.
RESIDUAL_SLACK = 1e-5
# Blocks with σ_r² − σ_{r+1}² below this fraction of σ₁² count as nearly degenerate.
NEARLY_DEGENERATE = 1e-2


def check_blocks(products, blocks, dtype, rank=1):
    """Each kernel block product against the reference best rank-``rank`` approximation.

    Contract: the residual ``‖M − P‖`` of every block is optimal up to a relative
    ``RESIDUAL_SLACK`` (iterative solvers) plus rounding of the entries (``RTOL·‖M‖``).
    For nearly degenerate blocks (``σ_r² − σ_{r+1}² < NEARLY_DEGENERATE·σ₁²``) an excess
    of squared residual up to that gap is allowed (power iteration cannot separate the
    top singular vectors there, and any vector of their span is nearly optimal).
    Otherwise the product ``P`` must be as close to the best product ``P*`` as the
    residual can tell: an excess ``δ`` of squared residual allows
    ``‖P − P*‖ ≲ σ₁ sqrt(δ / (σ_r² − σ_{r+1}²))``, and squared residuals are only known
    to ``RTOL·‖M‖²`` (so iterative solvers get vectors to about ``sqrt(RTOL)``).  This
    catches wrong vectors, wrong layouts and lost blocks, not rounding.
    """
    tolerance = rtol(dtype)
    for product, reference in zip(products, blocks):
        M = reference["block"].astype(np.complex128)
        s = reference["singular_values"]
        where = f"block {reference['index']} of shape {M.shape}"
        # Work in units of the block's largest entry (an exact power of two), so that
        # 1e±300 blocks compare like ordinary ones.
        biggest = np.max(np.abs(M))
        if biggest == 0:
            assert np.all(product == 0), f"{where}: zero block gave a nonzero product"
            continue
        unit = 2.0 ** np.frexp(biggest)[1]
        M, product, best, s = M / unit, product / unit, reference["best"] / unit, s / unit
        norm = np.linalg.norm(M)
        residual = np.linalg.norm(M - product)
        optimal = np.sqrt(np.sum(s[rank:] ** 2))
        gap2 = s[rank - 1] ** 2 - (s[rank] ** 2 if len(s) > rank else 0.0)
        allowed = optimal * (1 + RESIDUAL_SLACK) + 4 * tolerance * norm
        if gap2 < NEARLY_DEGENERATE * s[0] ** 2:
            # any vector of the top singular subspace is nearly optimal: the excess of
            # squared residual is at most the gap
            allowed = np.sqrt(allowed**2 + gap2)
        assert residual <= allowed, (
            f"{where}: residual {residual / norm:.6e} > optimal {optimal / norm:.6e} "
            f"(relative; σ_r+1/σ_r = {s[rank] / s[rank - 1] if len(s) > rank else 0:.4f})")
        excess2 = max(residual**2 - optimal**2, 0.0) + 4 * tolerance * norm**2
        if gap2 <= NEARLY_DEGENERATE * s[0] ** 2:
            continue  # (nearly) degenerate: the best product is ill-determined
        bound = 8 * (tolerance * norm * s[0] ** 2 / gap2 + s[0] * np.sqrt(excess2 / gap2))
        distance = np.linalg.norm(product - best)
        assert distance <= bound, (
            f"{where}: product differs from the best rank-{rank} by {distance / norm:.3e} "
            f"> {bound / norm:.3e} (relative)")


SINGLE = {np.dtype(np.float32), np.dtype(np.complex64)}
TWO_SIDED = {"2x2", "2x8", "8x2"}  # blocks with a side of 2 use a closed form


def known_split_bug(case, kind, dtype):
    """Reason for a known package bug hit by this case, or None (see the final report)."""
    return None  # all bugs found so far are fixed


def split_params():
    for case in sorted(SPLIT_CASES):
        for kind in KINDS:
            if case in SLOW_CASES and kind not in ("gaussian", "rank-one", "rank-one+noise"):
                continue
            for dtype in DTYPES:
                reason = known_split_bug(case, kind, dtype)
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                yield pytest.param(case, kind, dtype, id=f"{case}-{kind}-{dtype.name}", marks=marks)


@pytest.mark.parametrize("case, kind, dtype", list(split_params()))
def test_split_rank_one_serial(case, kind, dtype, rng):
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, kind, dtype)
    node_copy = node.copy()
    left, right, norm2, residual2, bad = run_split(False, node, b1, c1)
    np.testing.assert_array_equal(node, node_copy)
    assert bad == 0
    approximation, blocks = naive.split_rank_one(node, b1, c1)
    check_blocks(kernel_blocks(left, right, shape, b1, c1), blocks, dtype)
    if kind not in ("tiny", "huge", "mixed-scales"):
        # the reported sums: ‖node‖² and the sum of block residuals ‖M‖² − σ₁²
        expected_norm2 = float(np.sum(np.abs(node.astype(np.complex128)) ** 2))
        expected_residual2 = sum(float(np.sum(b["singular_values"][1:] ** 2)) for b in blocks)
        assert abs(norm2 - expected_norm2) <= rtol(dtype) * expected_norm2
        assert abs(residual2 - expected_residual2) <= (
            2 * RESIDUAL_SLACK * expected_residual2 + 4 * rtol(dtype) * expected_norm2)
    if np.prod(shape) <= 4096 and kind in ("rank-one", "zeros"):
        # The dense product of the two factors is the reference approximation (for
        # blocks whose best rank-one product is well conditioned; see check_blocks).
        a, big_b, big_c, d = shape
        b2, c2 = big_b // b1, big_c // c1
        product = (Factor((a, b1, c1, b2 * d), left).toarray()
                   @ Factor((a * c1, b2, c2, d), right).toarray())
        expected = naive.factor_dense(shape, approximation)
        assert_close(product, expected, dtype, factor=100, what="L @ R")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ["2x8", "3x5", "4x4-dyadic", "20x30", "40x6"])
def test_split_rank_one_parallel_and_chunking_agree(case, dtype, rng):
    """Serial and parallel builds, any chunk count and any batch give the same blocks."""
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, "zero-blocks", dtype)
    left, right, norm2, residual2, _ = run_split(False, node, b1, c1)
    n_tasks = shape[0] * (shape[1] // b1) * shape[3]
    for parallel in (False, True):
        for n_chunks in sorted({1, 2, 3, n_tasks}):
            for batch in sorted({1, max(1, c1 // 2), c1}):
                got = run_split(parallel, node, b1, c1, n_chunks=n_chunks, batch=batch)
                what = f"parallel={parallel} n_chunks={n_chunks} batch={batch}"
                assert_close(got[0], left, dtype, what=what + " left")
                assert_close(got[1], right, dtype, what=what + " right")
                assert got[2] == pytest.approx(norm2, rel=rtol(dtype))
                assert got[3] == pytest.approx(residual2, rel=RESIDUAL_SLACK, abs=rtol(dtype) * norm2)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ["2x2", "3x5", "4x4-dyadic", "20x30"])
def test_split_rank_one_column_gather(case, dtype, parallel, rng):
    """``columns`` reads the node through a column permutation."""
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, "rank-two", dtype)
    columns = rng.permutation(shape[2]).astype(np.int64)
    scrambled = np.empty_like(node)
    scrambled[:, :, columns, :] = node  # so that scrambled[:, :, columns] == node
    left, right, *_ = run_split(parallel, scrambled, b1, c1, columns=columns, n_chunks=2 if parallel else 1)
    _, blocks = naive.split_rank_one(scrambled, b1, c1, columns=columns)
    check_blocks(kernel_blocks(left, right, shape, b1, c1), blocks, dtype)


@pytest.mark.parametrize("sigma_power", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ["2x8", "8x2", "3x5", "20x30"])
def test_split_rank_one_scale_placement(case, dtype, sigma_power, rng):
    """The left vector carries σ^p and the right σ^(1-p), p = ``sigma_power``."""
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, "rank-two", dtype)
    left, right, *_ = run_split(False, node, b1, c1, sigma_power=sigma_power)
    _, blocks = naive.split_rank_one(node, b1, c1)
    check_blocks(kernel_blocks(left, right, shape, b1, c1), blocks, dtype)
    for (u, r), reference in zip(kernel_vectors(left, right, shape, b1, c1), blocks):
        sigma = np.linalg.norm(u) * np.linalg.norm(r)  # the kernel's σ
        assert sigma == pytest.approx(reference["singular_values"][0], rel=RESIDUAL_SLACK)
        assert np.linalg.norm(u) == pytest.approx(sigma**sigma_power, rel=10 * rtol(dtype))
        assert np.linalg.norm(r) == pytest.approx(sigma ** (1 - sigma_power), rel=10 * rtol(dtype))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ["2x2", "3x5", "20x30"])
def test_split_rank_one_counts_nan_and_inf_blocks(case, dtype, parallel, rng):
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, "gaussian", dtype)
    all_blocks = list(naive.block_indices(shape, b1, c1))
    poisoned = set(rng.choice(len(all_blocks), size=3, replace=False).tolist())
    for number in poisoned:
        i, _, _, t, rows, cols = all_blocks[number]
        node[i, rows[0], cols[-1], t] = [np.nan, np.inf, -np.inf][number % 3]
    left, right, _, _, bad = run_split(parallel, node, b1, c1, n_chunks=3 if parallel else 1)
    assert bad == len(poisoned)
    for number, (u, r) in enumerate(kernel_vectors(left, right, shape, b1, c1)):
        if number in poisoned:
            assert np.all(u == 0) and np.all(r == 0)
        else:
            assert np.all(np.isfinite(u)) and np.all(np.isfinite(r))


@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
@pytest.mark.parametrize("case", ["2x2", "3x5"])
def test_split_rank_one_subnormal_blocks(case, dtype, rng):
    """Blocks of subnormal numbers (|x| < 2.2e-308) are still finite input."""
    shape, b1, c1 = SPLIT_CASES[case]
    node = make_node(rng, shape, b1, c1, "rank-one", dtype) * 1e-315
    left, right, *_ = run_split(False, node, b1, c1)
    assert np.all(np.isfinite(left)) and np.all(np.isfinite(right))
    _, blocks = naive.split_rank_one(node, b1, c1)
    for product, reference in zip(kernel_blocks(left, right, shape, b1, c1), blocks):
        M = reference["block"]
        # rank-one blocks: the product is the block, up to the subnormals' precision
        assert np.linalg.norm(product - M) <= 1e-6 * np.linalg.norm(M)


# ============================================================================ rank r
RANK_CASES = {  # node shape, b1, c1, rank
    "4x4-r2": ((1, 8, 8, 1), 4, 2, 2),
    "3x5-r2": ((2, 6, 10, 3), 3, 2, 2),
    "3x5-r3": ((2, 6, 10, 3), 3, 2, 3),
    "4x4-r3": ((1, 16, 16, 1), 4, 4, 3),
    "6x2-r1": ((1, 12, 4, 2), 6, 2, 1),
    "8x12-r4": ((2, 16, 24, 1), 8, 2, 4),
}
RANK_KINDS = ["gaussian", "low-rank", "zero-blocks", "tiny", "huge", "mixed-scales"]


def make_low_rank_node(rng, shape, b1, c1, rank, kind, dtype):
    if kind != "low-rank":
        return make_node(rng, shape, b1, c1, kind, dtype)
    dtype = np.dtype(dtype)
    work = np.complex128 if dtype.kind == "c" else np.float64
    node = np.zeros(shape, dtype=work)
    for i, k1, j2, t, rows, cols in naive.block_indices(shape, b1, c1):
        M = random_array(rng, (len(rows), rank), work) @ random_array(rng, (rank, len(cols)), work)
        node[i][np.ix_(rows, cols, [t])] = M[..., None]
    return node.astype(dtype)


def run_split_rank(node, b1, c1, rank, sigma_power=1.0, n_chunks=1, columns=None,
                   parallel=False, batch=None):
    a, big_b, big_c, d = node.shape
    b2, c2 = big_b // b1, big_c // c1
    left = np.full((a, b1, c1 * rank, b2 * d), np.nan, dtype=node.dtype)
    right = np.full((a * c1, rank * b2, c2, d), np.nan, dtype=node.dtype)
    norm2 = np.zeros(n_chunks)
    residual2 = np.zeros(n_chunks)
    exponent = np.zeros(n_chunks, dtype=np.int64)
    bad = np.zeros(n_chunks, dtype=np.int64)
    work = np.zeros(1, dtype=np.complex128 if node.dtype.kind == "c" else np.float64)
    call(kernel("split_rank_r_parallel" if parallel else "split_rank_r_serial"), node=node,
         columns=np.arange(big_c) if columns is None else columns, b1=b1, c1=c1, rank=rank,
         batch=d if batch is None else batch, left=left, right=right,
         sigma_power=sigma_power, tol=8.0 * eps(np.float64), work=work, n_chunks=n_chunks,
         chunk_norm2=norm2, chunk_residual2=residual2, chunk_exponent=exponent, chunk_bad=bad)
    return left, right, *combine(norm2, residual2, exponent), int(bad.sum())


@pytest.mark.parametrize("n_chunks", [1, 3])
@pytest.mark.parametrize("kind", RANK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", sorted(RANK_CASES))
def test_split_rank_r(case, dtype, kind, n_chunks, rng):
    if not hasattr(_kernels, "split_rank_r_serial"):
        pytest.skip("no rank-r kernel")
    shape, b1, c1, rank = RANK_CASES[case]
    node = make_low_rank_node(rng, shape, b1, c1, rank, kind, dtype)
    node_copy = node.copy()
    left, right, norm2, residual2, bad = run_split_rank(node, b1, c1, rank, n_chunks=n_chunks)
    np.testing.assert_array_equal(node, node_copy)
    assert bad == 0
    _, blocks = naive.split_rank_one(node, b1, c1, rank=rank)
    check_blocks(kernel_blocks(left, right, shape, b1, c1, rank), blocks, dtype, rank=rank)
    if kind not in ("tiny", "huge", "mixed-scales"):
        expected_norm2 = sum(float(np.sum(b["singular_values"] ** 2)) for b in blocks)
        expected_residual2 = sum(float(np.sum(b["singular_values"][rank:] ** 2)) for b in blocks)
        assert norm2 == pytest.approx(expected_norm2, rel=10 * rtol(dtype))
        # iterative solver: the same contract as the rank-one kernel
        assert abs(residual2 - expected_residual2) <= (
            2 * RESIDUAL_SLACK * expected_residual2 + 10 * rtol(dtype) * expected_norm2)


@pytest.mark.parametrize("sigma_power", [1.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_split_rank_r_columns_and_scale(dtype, sigma_power, rng):
    """Column gather, and σ^p / σ^(1-p) on the ρ-th left / right vectors."""
    shape, b1, c1, rank = RANK_CASES["3x5-r2"]
    node = make_node(rng, shape, b1, c1, "gaussian", dtype)
    columns = rng.permutation(shape[2]).astype(np.int64)
    scrambled = np.empty_like(node)
    scrambled[:, :, columns, :] = node
    left, right, *_ = run_split_rank(scrambled, b1, c1, rank, sigma_power, columns=columns)
    _, blocks = naive.split_rank_one(node, b1, c1, rank=rank)
    check_blocks(kernel_blocks(left, right, shape, b1, c1, rank), blocks, dtype, rank=rank)
    a, big_b, big_c, d = shape
    b2 = big_b // b1
    for (i, k1, j2, t, _, _), reference in zip(naive.block_indices(shape, b1, c1), blocks):
        for rho in range(rank):
            sigma = reference["singular_values"][rho]
            u = left[i, :, k1 * rank + rho, j2 * d + t]
            v = right[i * c1 + k1, rho * b2 + j2, :, t]
            # singular values of an iterative solver: to RESIDUAL_SLACK, not to rounding
            tolerance = max(100 * rtol(dtype), RESIDUAL_SLACK)
            assert np.linalg.norm(u) == pytest.approx(sigma**sigma_power, rel=tolerance)
            assert np.linalg.norm(v) == pytest.approx(sigma ** (1 - sigma_power), rel=tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_split_rank_r_counts_nan_and_inf_blocks(dtype, rng):
    shape, b1, c1, rank = RANK_CASES["3x5-r2"]
    node = make_node(rng, shape, b1, c1, "gaussian", dtype)
    all_blocks = list(naive.block_indices(shape, b1, c1))
    for number, value in [(0, np.nan), (5, np.inf)]:
        i, _, _, t, rows, cols = all_blocks[number]
        node[i, rows[1], cols[2], t] = value
    left, right, _, _, bad = run_split_rank(node, b1, c1, rank)
    assert bad == 2
    products = kernel_blocks(left, right, shape, b1, c1, rank)
    assert np.all(products[0] == 0) and np.all(products[5] == 0)
    assert all(np.all(np.isfinite(p)) for p in products)


# Rank-r solver (Gram matrix of the shorter side + subspace iteration + refinement):
# wide and tall blocks (the Gram matrix of Mᴴ), larger blocks, several t per batch.
SOLVER_CASES = {  # node shape, b1, c1, rank
    "8x128-r2": ((1, 16, 256, 2), 8, 2, 2),
    "64x16-r2": ((1, 128, 32, 1), 64, 2, 2),
    "32x48-r4": ((1, 64, 96, 1), 32, 2, 4),
    "12x20-r3-d4": ((2, 24, 40, 4), 12, 2, 3),
}


def exact_rank_node(rng, shape, b1, c1, rank, dtype, condition=1.0, true_rank=None):
    """Blocks ``U diag(s) Vᴴ`` of exact rank ``true_rank`` (default ``rank``) with
    singular values spread geometrically from 1 to ``1 / condition``."""
    work = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    true_rank = rank if true_rank is None else true_rank
    node = np.zeros(shape, dtype=work)
    s = np.geomspace(1.0, 1.0 / condition, true_rank)
    for i, k1, j2, t, rows, cols in naive.block_indices(shape, b1, c1):
        U = np.linalg.qr(random_array(rng, (len(rows), true_rank), work))[0]
        V = np.linalg.qr(random_array(rng, (len(cols), true_rank), work))[0]
        node[i][np.ix_(rows, cols, [t])] = ((U * s) @ V.conj().T)[..., None]
    return node.astype(dtype)


def relative_block_error(left, right, node, b1, c1, rank):
    products = kernel_blocks(left, right, node.shape, b1, c1, rank)
    _, blocks = naive.split_rank_one(node, b1, c1, rank=rank)
    error2 = sum(np.linalg.norm(p - b["block"]) ** 2 for p, b in zip(products, blocks))
    return np.sqrt(error2) / np.linalg.norm(node.astype(np.complex128))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_rank_r_solver_recovers_exact_low_rank_blocks(case, dtype, parallel, rng):
    """Exact rank-r blocks come back to the dtype's rounding, serial and parallel builds,
    one t or all t per panel."""
    shape, b1, c1, rank = SOLVER_CASES[case]
    node = exact_rank_node(rng, shape, b1, c1, rank, dtype, condition=10.0)
    for batch in sorted({1, shape[3]}):
        left, right, norm2, residual2, bad = run_split_rank(
            node, b1, c1, rank, n_chunks=3 if parallel else 1, parallel=parallel, batch=batch)
        assert bad == 0
        assert relative_block_error(left, right, node, b1, c1, rank) <= 10 * rtol(dtype)
        assert residual2 <= (10 * rtol(dtype)) ** 2 * norm2


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rank_r_solver_exact_recovery_ranks_1_to_4(rank, dtype, rng):
    shape, b1, c1 = (1, 24, 40, 2), 6, 4
    node = exact_rank_node(rng, shape, b1, c1, rank, dtype, condition=4.0)
    left, right, *_ = run_split_rank(node, b1, c1, rank)
    assert relative_block_error(left, right, node, b1, c1, rank) <= 10 * rtol(dtype)


@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128], ids=dtype_id)
def test_rank_r_solver_ill_conditioned_exact_blocks(condition, dtype, rng):
    """The Gram matrix squares the condition number, the refinement against the block
    itself does not: σ₁/σ_r up to 1e6 is still recovered to rounding."""
    shape, b1, c1, rank = SOLVER_CASES["32x48-r4"]
    node = exact_rank_node(rng, shape, b1, c1, rank, dtype, condition=condition)
    left, right, *_ = run_split_rank(node, b1, c1, rank)
    assert relative_block_error(left, right, node, b1, c1, rank) <= 10 * rtol(dtype)


@pytest.mark.parametrize("true_rank", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rank_r_solver_blocks_of_lower_rank(true_rank, dtype, rng):
    """Blocks of rank below r: exact, finite, nothing divided by zero."""
    shape, b1, c1, rank = SOLVER_CASES["12x20-r3-d4"]
    node = exact_rank_node(rng, shape, b1, c1, rank, dtype, true_rank=true_rank) if true_rank \
        else np.zeros(shape, dtype=dtype)
    left, right, norm2, residual2, bad = run_split_rank(node, b1, c1, rank)
    assert np.all(np.isfinite(left)) and np.all(np.isfinite(right))
    if true_rank == 0:
        assert np.all(left == 0) and np.all(right == 0) and norm2 == 0 and bad == 0
    else:
        assert relative_block_error(left, right, node, b1, c1, rank) <= 10 * rtol(dtype)


@pytest.mark.parametrize("noise", [0.1, 1.0, "only"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_rank_r_solver_agrees_with_lapack_on_noisy_blocks(case, dtype, noise, rng):
    """Low-rank blocks plus noise, and pure noise (flat spectra, where subspace
    iteration is slow and the dense eigensolver takes over): per block, the residual of
    the LAPACK SVD within the iterative contract (`check_blocks`), and the total
    squared residual within 1e-6 of LAPACK's."""
    shape, b1, c1, rank = SOLVER_CASES[case]
    work = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    clean = exact_rank_node(rng, shape, b1, c1, rank, work, condition=3.0)
    noisy = random_array(rng, shape, work)
    if noise == "only":
        node = noisy.astype(dtype)
    else:
        node = (clean + noise * np.linalg.norm(clean) / np.linalg.norm(noisy) * noisy).astype(dtype)
    left, right, norm2, residual2, bad = run_split_rank(node, b1, c1, rank)
    _, blocks = naive.split_rank_one(node, b1, c1, rank=rank)
    check_blocks(kernel_blocks(left, right, shape, b1, c1, rank), blocks, dtype, rank=rank)
    expected = sum(float(np.sum(b["singular_values"][rank:] ** 2)) for b in blocks)
    assert expected <= residual2 * (1 + 10 * rtol(dtype))
    assert residual2 <= expected * (1 + max(1e-6, 10 * rtol(dtype)))
    # the serial and parallel builds compute the same thing block by block
    left_parallel, right_parallel, *_ = run_split_rank(node, b1, c1, rank, n_chunks=3, parallel=True)
    np.testing.assert_allclose(left_parallel, left, rtol=0, atol=1e-6 * np.abs(left).max())
    np.testing.assert_allclose(right_parallel, right, rtol=0, atol=1e-6 * np.abs(right).max())
