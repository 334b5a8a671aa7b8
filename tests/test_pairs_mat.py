"""The column-tile kernels for blocks of vectors on chains of 2 × 2-block factors.

`Butterfly` sends ``B @ X`` with several columns to ``_kernels.apply_pairs_tiles``
(serial) or ``apply_pairs_tiles_parallel`` (threads share the tiles).  Their paths: the
first factor reads the gathered input, the middle factors run in place one at a time
(`_tile_pairs2`) or two at a time (`_tile_pairs4`, when consecutive ``d`` differ by a
factor of two), the last writes the scattered output; complex data in two planes per
tile, real data (and real factors on complex data) in one.  Every path is checked here
against dense products built by tests/naive.py, with the per-dtype tolerances of
conftest.
"""

import numpy as np
import pytest

import fastbfly
from fastbfly import _kernels
from fastbfly.butterfly import _NO_PERMUTATION
from fastbfly.patterns import Chain

import naive
from conftest import DTYPES, assert_close, dtype_id, random_array, random_factors

CHAINS = {
    "one-factor": [(1, 2, 2, 1)],
    "two-factors": [(1, 2, 2, 2), (2, 2, 2, 1)],
    "three-factors": [(1, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2, 1)],
    # d = 1 .. 32 in one direction, 32 .. 1 in the other: fusable in both orders
    "n64": [(2 ** (l - 1), 2, 2, 64 >> l) for l in range(1, 7)],
    # d = 8, 4, 4, 2, 1: a fusable pair next to an equal pair (never fused) either way
    "equal-d": [(1, 2, 2, 8), (2, 2, 2, 4), (2, 2, 2, 4), (4, 2, 2, 2), (8, 2, 2, 1)],
    # n = 24 is not a power of two: d = 12, 6, 3, 3 (6 and 3 fuse)
    "n24": [(1, 2, 2, 12), (2, 2, 2, 6), (4, 2, 2, 3), (4, 2, 2, 3)],
}
MODES = {"forward": (False, False), "adjoint": (True, True), "transpose": (True, False)}


def make_butterfly(rng, name, dtype, permuted):
    patterns = CHAINS[name]
    n = patterns[0][0] * patterns[0][1] * patterns[0][3]
    factors = random_factors(rng, Chain(patterns), dtype)
    perms = (rng.permutation(n), rng.permutation(n)) if permuted else (None, None)
    return fastbfly.Butterfly(factors, perm=perms[0], row_perm=perms[1])


def dense_operator(B, mode):
    """``B``, ``Bᴴ`` or ``Bᵀ`` as a dense complex128 matrix, from naive.py only."""
    dense = naive.chain_dense([f.pattern for f in B.factors],
                              [f.values.astype(np.complex128) for f in B.factors])
    if B.row_perm is not None:  # row i of the chain lands at row_perm[i]
        permuted = np.empty_like(dense)
        permuted[B.row_perm] = dense
        dense = permuted
    if B.perm is not None:  # column j of the chain lands at perm[j]
        permuted = np.empty_like(dense)
        permuted[:, B.perm] = dense
        dense = permuted
    adjoint, conjugate = MODES[mode]
    if adjoint:
        dense = dense.conj().T if conjugate else dense.T
    return dense


def run_tiles(B, mode, X, shape_tiles, fuse, parallel, n_parts=1):
    """Call the tile kernel directly, the way `Butterfly._apply_pairs` does; ``fuse``
    sets both fusion switches."""
    adjoint, conjugate = MODES[mode]
    packed, steps = B._pairs_plan(adjoint, conjugate, B.dtype)
    gather, scatter = (B.row_perm, B.perm) if adjoint else (B.perm, B.row_perm)
    gather = _NO_PERMUTATION if gather is None else gather
    scatter = _NO_PERMUTATION if scatter is None else scatter
    real = np.dtype(X.dtype.char.lower())
    out = np.full_like(X, np.nan)  # every entry must be written
    tiles = np.full(shape_tiles, np.nan, dtype=real)
    kernel = _kernels.apply_pairs_tiles_parallel if parallel else _kernels.apply_pairs_tiles
    kernel(packed, steps, gather, scatter, X.view(real), out.view(real), tiles, fuse, fuse,
           n_parts)
    return out


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fuse", [False, True], ids=["single", "fused"])
@pytest.mark.parametrize("parallel, n_parts", [(False, 1), (True, 1), (True, 3)],
                         ids=["serial", "by-tiles", "by-rows"])
def test_tile_kernels_against_dense(rng, name, dtype, mode, fuse, parallel, n_parts):
    """Every chain shape, dtype and direction; permuted; 7 columns in tiles of 3 (the
    last tile ragged: one column); threads sharing the tiles or every pass's rows (3
    slices: uneven for every pass)."""
    B = make_butterfly(rng, name, dtype, permuted=True)
    n = B.shape[0]
    X = random_array(rng, (n, 7), dtype)
    before = X.copy()
    planes = 2 if dtype.kind == "c" else 1
    got = run_tiles(B, mode, X, (3, n, planes, 3), fuse, parallel, n_parts)
    assert_close(got, dense_operator(B, mode) @ X, dtype)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n_tiles, width", [(1, 5), (2, 3), (5, 1), (4, 2)])
def test_tile_shapes(rng, dtype, n_tiles, width):
    """One tile, even tiles, one column per tile, and more tiles than needed (the last
    one empty) give the same product; without permutations."""
    B = make_butterfly(rng, "n64", dtype, permuted=False)
    X = random_array(rng, (64, 5), dtype)
    planes = 2 if dtype.kind == "c" else 1
    want = dense_operator(B, "forward") @ X
    for fuse in (False, True):
        for n_parts in (1, 2):
            got = run_tiles(B, "forward", X, (n_tiles, 64, planes, width), fuse,
                            parallel=True, n_parts=n_parts)
            assert_close(got, want, dtype)


@pytest.mark.parametrize("name", ["n64", "equal-d", "n24"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_parts", [2, 4, 8])
def test_row_slices_run_passes_back_to_back(rng, name, mode, n_parts):
    """Threads sharing rows run the passes that keep their row slices without a barrier
    between them (`_pass_keeps_row_slices`): with ``d`` rising (forward on n64) all but
    the last pass, with ``d`` falling (adjoint) all but the first; n = 24 in 8 slices
    keeps nothing.  One tile of full width, fused and not."""
    dtype = np.dtype(np.complex128)
    B = make_butterfly(rng, name, dtype, permuted=True)
    n = B.shape[0]
    X = random_array(rng, (n, 5), dtype)
    want = dense_operator(B, mode) @ X
    for fuse in (False, True):
        got = run_tiles(B, mode, X, (1, n, 2, 5), fuse, parallel=True, n_parts=n_parts)
        assert_close(got, want, dtype)


def test_which_passes_keep_row_slices():
    """The rule itself, on n64's steps (d = 1, 2, .., 32) in two slices: a factor keeps
    them while its blocks of ``2 d`` rows fit a slice (d <= 16), two fused factors while
    blocks of ``4 lo`` rows do."""
    steps = np.array([(64 // (2 * d), d, 0) for d in (1, 2, 4, 8, 16, 32)], dtype=np.int64)
    keeps = getattr(_kernels._pass_keeps_row_slices, "py_func", _kernels._pass_keeps_row_slices)
    single = [keeps(_kernels._PAIRS2, s, steps, 64, 2) for s in range(6)]
    assert single == [True, True, True, True, True, False]
    fused = [keeps(_kernels._PAIRS4, s, steps, 64, 2) for s in range(5)]
    assert fused == [True, True, True, True, False]
    assert keeps(_kernels._STORE, 0, steps, 64, 2) and not keeps(_kernels._STORE, 0, steps, 64, 3)
    assert not keeps(_kernels._PAIRS2, 0, steps, 64, 3)  # 3 does not divide 32 blocks


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)], ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_real_factors_on_complex_columns(rng, dtype, mode):
    """Real factors on complex data: the kernel sees the real view, two real columns
    per complex one, in one plane."""
    B = make_butterfly(rng, "n64", dtype, permuted=True)
    complex_dtype = np.result_type(dtype, np.complex64)
    X = random_array(rng, (64, 5), complex_dtype)
    adjoint, conjugate = MODES[mode]
    packed, steps = B._pairs_plan(adjoint, conjugate, dtype)
    gather, scatter = (B.row_perm, B.perm) if adjoint else (B.perm, B.row_perm)
    out = np.full_like(X, np.nan)
    tiles = np.empty((2, 64, 1, 5), dtype=dtype)  # 10 real columns in 2 tiles
    _kernels.apply_pairs_tiles_parallel(packed, steps, gather, scatter, X.view(dtype),
                                        out.view(dtype), tiles, True, True, 2)
    assert_close(out, dense_operator(B, mode) @ X, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("unit", [False, True], ids=["full", "unit"])
def test_fused_pass_equals_two_single_passes(rng, dtype, unit):
    """`_tile_pairs4` on factors with d1 = 2 d2 and with d2 = 2 d1 equals
    `_tile_pairs2` twice (to rounding: the fused pass keeps its intermediate sums in
    registers), for plain blocks and for unit-pivot ones (`unit_pivot_plan`: every
    mix of unit and full factors)."""
    B = make_butterfly(rng, "n64", dtype, permuted=False)
    planes = 2 if dtype.kind == "c" else 1
    real = np.dtype(dtype.char.lower())
    for adjoint in (False, True):
        packed, steps = B._pairs_plan(adjoint, False, dtype)
        if unit:
            packed, steps = _kernels.unit_pivot_plan(packed, steps, 64)
            assert steps[:-1, 3].all() and steps[-1, 3] == 0
        for s in range(len(steps) - 1):
            (d1, o1), (d2, o2) = steps[s, 1:3], steps[s + 1, 1:3]
            assert d1 == 2 * d2 or d2 == 2 * d1
            for u1, u2 in ([(False, False)] if not unit
                           else [(True, bool(steps[s + 1, 3])), (False, False)]):
                tile = rng.standard_normal((64, planes, 6)).astype(real)
                fused, single = tile.copy(), tile.copy()
                _kernels._tile_pairs4(packed, d1, o1, d2, o2, u1, u2, fused, 6, 0, 16)
                _kernels._tile_pairs2(packed, d1, o1, u1, single, 6, 0, 32)
                _kernels._tile_pairs2(packed, d2, o2, u2, single, 6, 0, 32)
                assert_close(fused, single, dtype)
                assert not np.array_equal(fused, tile)


def _plan_dense(packed, steps, n):
    """The dense product of a pair-order plan (first step applied first)."""
    dense = np.eye(n, dtype=packed.dtype)
    for a, d, offset in steps[:, :3]:
        blocks = packed[offset:offset + 4 * a * d].reshape(a, d, 2, 2)
        factor = np.zeros((n, n), dtype=packed.dtype)
        for i in range(a):
            for t in range(d):
                rows = (2 * i * d + t, 2 * i * d + d + t)
                factor[np.ix_(rows, rows)] = blocks[i, t]
        dense = factor @ dense
    return dense


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_unit_pivot_plan_is_the_same_product(rng, dtype, mode):
    """The unit-pivot plan has ones in the left column of every factor but the last,
    leaves the caller's values alone, and is the same product (to rounding)."""
    B = make_butterfly(rng, "n64", dtype, permuted=False)
    adjoint, conjugate = MODES[mode]
    packed, steps = B._pairs_plan(adjoint, conjugate, dtype)
    before = packed.copy()
    unit_packed, unit_steps = _kernels.unit_pivot_plan(packed, steps, 64)
    np.testing.assert_array_equal(packed, before)
    assert unit_steps[:-1, 3].all() and unit_steps[-1, 3] == 0
    np.testing.assert_array_equal(unit_steps[:, :3], steps[:, :3])
    for a, d, offset, _ in unit_steps[:-1]:
        left = unit_packed[offset:offset + 4 * a * d].reshape(a, d, 2, 2)[..., 0]
        assert np.all(left == 1)
    want = _plan_dense(packed, steps, 64)
    got = _plan_dense(unit_packed, unit_steps, 64)
    assert_close(got, want, dtype)


def test_unit_pivot_plan_skips_zero_pivots_and_keeps_the_range(rng):
    """A factor with a zero pivot stays plain (and passes no scale on); pivots whose
    carried product would overflow leave the whole plan unchanged."""
    B = make_butterfly(rng, "n64", np.dtype(np.complex128), permuted=False)
    packed, steps = B._pairs_plan(False, False, np.dtype(np.complex128))
    zeroed = packed.copy()
    a, d, offset = steps[2]
    zeroed[offset + 4 * 5] = 0  # block 5 of step 2: p = 0
    unit_packed, unit_steps = _kernels.unit_pivot_plan(zeroed, steps, 64)
    assert list(unit_steps[:, 3]) == [1, 1, 0, 1, 1, 0]
    want = _plan_dense(zeroed, steps, 64)
    assert_close(_plan_dense(unit_packed, unit_steps, 64), want, np.dtype(np.complex128))
    # Huge left columns: their product along the chain leaves the double range.
    huge = packed.copy()
    for a, d, offset in steps[:-1]:
        huge[offset:offset + 4 * a * d].reshape(a, d, 2, 2)[..., 0] *= 1e200
    unit_packed, unit_steps = _kernels.unit_pivot_plan(huge, steps, 64)
    assert not unit_steps[:, 3].any()
    np.testing.assert_array_equal(unit_packed, huge)


def test_products_use_the_unit_pivot_plan(rng):
    """`B @ X` runs on the unit-pivot plan (built once and kept) and matches the
    dense product; the one-vector plan is not changed by it."""
    B = make_butterfly(rng, "n64", np.dtype(np.complex128), permuted=True)
    X = rng.standard_normal((64, 5)) + 1j * rng.standard_normal((64, 5))
    assert_close(B @ X, B.toarray() @ X, np.dtype(np.complex128))
    plan = B._pairs_plans[("unit", False, False, np.dtype(np.complex128))]
    assert plan[1][:-1, 3].all()
    B @ X
    assert B._pairs_plans[("unit", False, False, np.dtype(np.complex128))] is plan


def test_pairs_tiles_shape():
    """At most PAIRS_TILE_COLUMNS columns per tile, as few tiles as that allows in a
    number the threads share evenly (never more tiles than columns), enough columns in
    all."""
    width = _kernels.PAIRS_TILE_COLUMNS
    assert width == 64  # (the cases below assume it)
    assert _kernels.pairs_tiles_shape(4096, 64, 2) == (1, 4096, 2, 64)
    assert _kernels.pairs_tiles_shape(4096, 64, 2, 2) == (2, 4096, 2, 32)
    assert _kernels.pairs_tiles_shape(4096, 256, 2, 2) == (4, 4096, 2, 64)
    assert _kernels.pairs_tiles_shape(4096, 130, 1) == (3, 4096, 1, 44)
    assert _kernels.pairs_tiles_shape(4096, 130, 1, 2) == (4, 4096, 1, 33)
    assert _kernels.pairs_tiles_shape(16, 3, 2, 4) == (3, 16, 2, 1)
    for m in (1, 2, 7, 63, 64, 65, 256, 1000):
        for threads in (1, 2, 3):
            n_tiles, _, planes, w = _kernels.pairs_tiles_shape(8, m, 2, threads)
            assert planes == 2 and n_tiles * w >= m > (n_tiles - 1) * w and w <= width
            assert n_tiles % threads == 0 or n_tiles == m


def test_tile_pass_plans():
    """The passes chosen for a chain: ends fused with the load and the store, middle
    factors two at a time when their d differ by two, never across equal d."""
    def plan(ds, fuse=True, fuse_ends=True):
        steps = np.array([(1, d, 0) for d in ds], dtype=np.int64)
        return [tuple(p) for p in _kernels._tile_passes(steps, fuse, fuse_ends)]
    F, F4, P2, P4, L, L4, S = range(7)
    assert plan([1]) == [(F, 0), (S, 0)]
    assert plan([1, 2]) == [(F, 0), (L, 1)]
    assert plan([1, 2, 4]) == [(F4, 0), (L, 2)]
    assert plan([1, 2, 4, 8, 16, 32]) == [(F4, 0), (P4, 2), (L4, 4)]
    assert plan([1, 2, 4, 8, 16, 32, 64]) == [(F4, 0), (P4, 2), (P2, 4), (L4, 5)]
    assert plan([8, 4, 4, 2, 1]) == [(F4, 0), (P2, 2), (L4, 3)]
    assert plan([1, 2, 4, 8], fuse=False) == [(F4, 0), (L4, 2)]
    assert plan([1, 2, 4, 8], fuse_ends=False) == [(F, 0), (P4, 1), (L, 3)]
    assert plan([1, 2, 4, 8], False, False) == [(F, 0), (P2, 1), (P2, 2), (L, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("columns", [2, 7, 33])
def test_butterfly_threaded_and_fused_paths(rng, monkeypatch, dtype, mode, columns):
    """Through `Butterfly`: thresholds lowered so that small products take the threaded
    and fused paths too; odd column counts; results against dense."""
    monkeypatch.setattr(_kernels, "PAIRS_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_kernels, "PAIRS_FUSE_MIN_TILE_BYTES", 0)
    B = make_butterfly(rng, "n64", dtype, permuted=True)
    X = random_array(rng, (64, columns), dtype)
    adjoint, conjugate = MODES[mode]
    if not adjoint:
        got = B @ X
    elif conjugate:
        got = B.rmatmat(X)
    else:
        got = (X.T @ B).T
    assert got.dtype == dtype
    assert_close(got, dense_operator(B, mode) @ X, dtype)


def test_butterfly_large_block_matches_fft():
    """The DFT butterfly on a block big enough for the default threaded / fused
    choices equals numpy's FFT, and its adjoint inverts it (times n)."""
    n = 4096
    B = fastbfly.dft_butterfly(n)
    X = np.random.default_rng(3).standard_normal((n, 17)) + 0j
    Y = B @ X
    assert_close(Y, np.fft.fft(X, axis=0), np.complex128, 100)
    assert_close(B.H @ Y, n * X, np.complex128, 100)
    assert_close((B @ X.real.astype(np.float32)), np.fft.fft(X.real, axis=0), np.complex64)


def test_apply_pairs_mat_wrapper(rng):
    """The one-tile wrapper with a ``(2, n, m)`` scratch array."""
    B = make_butterfly(rng, "n64", np.dtype(np.complex128), permuted=True)
    packed, steps = B._pairs_plan(False, False, B.dtype)
    X = random_array(rng, (64, 3), np.complex128)
    out = np.full_like(X, np.nan)
    _kernels.apply_pairs_mat(packed, steps, B.perm, B.row_perm, X, out,
                             np.empty((2, 64, 3), np.complex128))
    assert_close(out, dense_operator(B, "forward") @ X, np.complex128)


def test_tiles_scratch_is_reused_per_thread_and_capped(monkeypatch):
    """The scratch array is reused by later calls of the same thread when big enough,
    is a fresh one in another thread, and is not kept above the cap."""
    import threading

    monkeypatch.setattr(_kernels, "_TILES_SCRATCH", threading.local())  # (empty cache)
    first = _kernels.pairs_tiles_scratch((1, 8, 2, 4), np.float64)
    again = _kernels.pairs_tiles_scratch((2, 4, 1, 4), np.float64)
    assert again.shape == (2, 4, 1, 4) and np.shares_memory(first, again)
    assert not np.shares_memory(first, _kernels.pairs_tiles_scratch((1, 8, 2, 4), np.float32))
    other = []
    thread = threading.Thread(
        target=lambda: other.append(_kernels.pairs_tiles_scratch((1, 8, 2, 4), np.float64)))
    thread.start()
    thread.join()
    assert not np.shares_memory(first, other[0])
    monkeypatch.setattr(_kernels, "PAIRS_SCRATCH_MAX_BYTES", 1024)
    big = _kernels.pairs_tiles_scratch((1, 64, 2, 4), np.float64)  # 4 KiB: not kept
    assert not np.shares_memory(big, _kernels.pairs_tiles_scratch((1, 64, 2, 4), np.float64))


def test_repeated_products_with_reused_scratch(rng):
    """Products of different shapes and dtypes in a row (the scratch array reused and
    reshaped) all match the dense reference."""
    for dtype, columns in ((np.dtype(np.complex128), 9), (np.dtype(np.float64), 3),
                           (np.dtype(np.complex128), 2), (np.dtype(np.float32), 11)):
        B = make_butterfly(rng, "n64", dtype, permuted=True)
        X = random_array(rng, (64, columns), dtype)
        assert_close(B @ X, dense_operator(B, "forward") @ X, dtype)
