"""The one-vector product of chains of 2 × 2 blocks: ``_kernels.apply_pairs_vec``.

It applies two or three consecutive factors per pass from values stored in *fused
order* (``Butterfly._fused_plan``), and `Butterfly._apply` reaches it through a fast
path for one aligned, contiguous, writeable vector of the butterfly's dtype
(``Butterfly._vector_path``; complex64 excepted, which is computed in complex128 and
rounded once); every other vector goes through the checks first.  The
tests compare with dense references (tests/naive.py) for every pass layout, dtype,
direction and permutation, check that the fast path is only taken when it may be, and
that errors are still raised.
"""

import threading

import numpy as np
import pytest
import scipy.sparse.linalg

import fastbfly
from fastbfly import _kernels
from fastbfly import butterfly as butterfly_module
from fastbfly.patterns import Chain

import naive
from conftest import DTYPES, assert_close, dtype_id, random_array, random_factors


def dyadic(n):
    """Square-dyadic chain of size ``n`` (one run of ``log2 n`` steps)."""
    levels = int(np.log2(n))
    return [(2 ** (l - 1), 2, 2, n >> l) for l in range(1, levels + 1)]


# name -> (patterns, steps per pass for B, for Bᴴ and Bᵀ)
CHAINS = {
    "n2": (dyadic(2), [1], [1]),  # one lone step
    "n8": (dyadic(8), [3], [3]),  # one three-step pass
    "n16": (dyadic(16), [2, 2], [2, 2]),
    "n32": (dyadic(32), [3, 2], [3, 2]),  # odd run: a three-step pass first
    "n128": (dyadic(128), [3, 2, 2], [3, 2, 2]),
    # Repeated d (rank-2 links) break the runs: d = 1 2 | 2 4 8 | 8 for B, and
    # 8 | 8 4 2 | 2 1 for the adjoint.
    "repeat": ([(1, 2, 2, 8), (1, 2, 2, 8), (2, 2, 2, 4), (4, 2, 2, 2), (4, 2, 2, 2),
                (8, 2, 2, 1)], [2, 3, 1], [1, 3, 2]),
}
MODES = {"forward": (False, False), "adjoint": (True, True), "transpose": (True, False)}


def make(rng, name, dtype, permuted):
    patterns = CHAINS[name][0]
    n = patterns[0][0] * patterns[0][1] * patterns[0][3]
    factors = random_factors(rng, Chain(patterns), dtype)
    perms = (rng.permutation(n), rng.permutation(n)) if permuted else (None, None)
    return fastbfly.Butterfly(factors, perm=perms[0], row_perm=perms[1])


def dense(B, mode):
    D = naive.butterfly_dense(B).astype(np.complex128)
    adjoint, conjugate = MODES[mode]
    if adjoint:
        D = D.conj().T if conjugate else D.T
    return D


def product(B, x, mode):
    adjoint, conjugate = MODES[mode]
    if not adjoint:
        return B @ x
    return B.rmatvec(x) if conjugate else x @ B


def pass_sizes(program):
    rows = program[3:3 + 6 * program[0]].reshape(-1, 6)
    return rows[:, 0].tolist()


@pytest.mark.parametrize("name", CHAINS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("permuted", [False, True], ids=["noperm", "perm"])
def test_vector_against_dense(rng, name, dtype, mode, permuted):
    """Through the fast path (and the fused kernel called directly) against the dense
    matrix; the passes are the ones the chain should give."""
    B = make(rng, name, dtype, permuted)
    D = dense(B, mode)
    adjoint, conjugate = MODES[mode]
    x = random_array(rng, D.shape[1], dtype)
    got = product(B, x, mode)
    assert got.dtype == dtype and got.shape == (D.shape[0],)
    assert_close(got, D @ x, dtype)
    path = B._pairs_plans[(adjoint, conjugate)]
    compute = butterfly_module.VECTOR_COMPUTE_DTYPES.get(np.dtype(dtype), np.dtype(dtype))
    values, program = B._fused_plan(adjoint, conjugate, compute)
    assert pass_sizes(program) == CHAINS[name][2 if adjoint else 1]
    if compute == dtype:  # the fast path was built and taken
        assert path and path[0] == x.shape[0]
        assert path[1] is values and path[2] is program
    else:  # complex64: computed in complex128, rounded once (no fast path)
        assert path is False
    out = np.full(x.shape[0], np.nan, dtype=compute)
    _kernels.apply_pairs_vec(values, program, x.astype(compute), out)
    np.testing.assert_array_equal(out.astype(dtype), got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_out", [False, True], ids=["new", "out"])
def test_complex64_vector_is_rounded_once(rng, mode, use_out):
    """One complex64 vector is applied in complex128 and rounded once at the end
    (`butterfly.VECTOR_COMPUTE_DTYPES`): every entry is the complex128 product of the
    same complex64 factors and vector, rounded to complex64, to within one unit in the
    last place of the largest entry (complex64 arithmetic throughout would be several
    times further off after seven factors)."""
    B = make(rng, "n128", np.complex64, permuted=True)
    adjoint, conjugate = MODES[mode]
    x = random_array(rng, 128, np.complex64)
    wide_factors = [fastbfly.Factor(f.pattern, f.values.astype(np.complex128)) for f in B.factors]
    B128 = fastbfly.Butterfly(wide_factors, perm=B.perm, row_perm=B.row_perm)
    want = dense(B128, mode) @ x.astype(np.complex128)  # to double precision
    if use_out:
        out = np.full(128, np.nan, dtype=np.complex64)
        got = (B.matvec(x, out=out) if not adjoint
               else B.rmatvec(x, out=out) if conjugate else B.T.matvec(x, out=out))
        assert got is out
    else:
        got = product(B, x, mode)
    assert got.dtype == np.complex64
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2.0 ** -23 * scale
    # and the same bits as the complex128 plan's product, rounded
    values, program = B._fused_plan(adjoint, conjugate, np.dtype(np.complex128))
    wide = np.empty(128, dtype=np.complex128)
    _kernels.apply_pairs_vec(values, program, x.astype(np.complex128), wide)
    np.testing.assert_array_equal(got, wide.astype(np.complex64))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_fused_equals_pair_kernel_bitwise(rng, dtype, mode):
    """Fusing passes changes the order of memory accesses, not of the arithmetic: the
    result is bit for bit that of the one-step-per-pass kernel (in the dtype the vector
    is computed in: complex128 for complex64, rounded at the end)."""
    B = make(rng, "n128", dtype, permuted=True)
    adjoint, conjugate = MODES[mode]
    gather, scatter = (B.row_perm, B.perm) if adjoint else (B.perm, B.row_perm)
    compute = butterfly_module.VECTOR_COMPUTE_DTYPES.get(np.dtype(dtype), np.dtype(dtype))
    packed, steps = B._pairs_plan(adjoint, conjugate, compute)
    x = random_array(rng, 128, dtype)
    want = np.empty(128, dtype=compute)
    _kernels.apply_pairs(packed, steps, gather, scatter, x.astype(compute), want,
                         np.empty((2, 128), compute))
    np.testing.assert_array_equal(product(B, x, mode), want.astype(dtype))


def test_fused_plan_is_a_reordering(rng):
    """The fused values are the pair-order values, each used once; the program holds
    the permutations; the pair-order plan is not kept for one-vector products."""
    B = make(rng, "n32", np.complex128, permuted=True)
    values, program = B._fused_plan(False, False, np.dtype(np.complex128))
    assert (False, False, np.dtype(np.complex128)) not in B._pairs_plans
    packed, _ = B._pairs_plan(False, False, np.dtype(np.complex128))
    assert values.dtype == packed.dtype and values.size == packed.size
    np.testing.assert_array_equal(np.sort_complex(values), np.sort_complex(packed))
    passes = program[0]
    start = 3 + 6 * passes
    assert program[1] == program[2] == 32
    np.testing.assert_array_equal(program[start:start + 32], B.perm)
    np.testing.assert_array_equal(program[start + 32:], B.row_perm)
    assert B._fused_plan(False, False, np.dtype(np.complex128))[0] is values


def test_dft_matches_fft():
    n = 2048  # 11 steps: a three-step pass and four two-step passes
    B = fastbfly.dft_butterfly(n)
    x = np.random.default_rng(3).standard_normal(n) + 1j * np.random.default_rng(4).standard_normal(n)
    assert_close(B @ x, np.fft.fft(x), np.complex128, 100)
    assert_close(B.rmatvec(B @ x), n * x, np.complex128, 100)
    assert pass_sizes(B._fused_plan(False, False, np.dtype(np.complex128))[1]) == [3, 2, 2, 2, 2]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_other_vectors_take_the_checked_path(rng, dtype):
    """Read-only, strided, misaligned-dtype, integer and column inputs give the fast
    path's values (in the dtype of ``result_type``) and are never modified."""
    B = make(rng, "n32", dtype, permuted=True)
    D = dense(B, "forward")
    x = random_array(rng, 64, dtype)
    before = x.copy()
    want = B @ x[::2].copy()
    readonly = x[::2].copy()
    readonly.flags.writeable = False
    for got in (B @ x[::2], B @ readonly, B.matvec(x[::2]), B.dot(x[::2]),
                B @ x[::2].astype(x.dtype.newbyteorder()),  # non-native byte order
                (B @ x[::2].reshape(32, 1))[:, 0]):
        assert got.dtype == dtype and got.shape == (32,)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)
    ints = np.arange(-16, 16, dtype=np.int32)
    got = B @ ints
    assert got.dtype == np.result_type(dtype, np.int32)
    low = np.float32 if dtype in (np.float32, np.complex64) else np.float64  # tolerance
    assert_close(got, D @ ints, low)
    wider = B @ x[::2].astype(np.complex128)  # float32 / complex64 / float64 B on complex128 data
    assert wider.dtype == np.complex128
    assert_close(wider, D @ x[::2], low)


def test_fast_path_only_where_it_applies(rng, monkeypatch):
    # Zero padding: the chain is larger than the matrix.
    factors = random_factors(rng, Chain(dyadic(16)), np.float64)
    padded = fastbfly.Butterfly(factors, shape=(13, 11))
    x = rng.standard_normal(11)
    assert_close(padded @ x, naive.butterfly_dense(padded) @ x, np.float64)
    assert padded._pairs_plans[(False, False)] is False
    # Blocks that are not 2 × 2.
    general = fastbfly.Butterfly(random_factors(rng, Chain([(1, 3, 3, 2), (3, 2, 2, 1)]), np.float64))
    x = rng.standard_normal(6)
    assert_close(general @ x, naive.butterfly_dense(general) @ x, np.float64)
    assert general._pairs_plans[(False, False)] is False
    # Above the size where other chains share one product between threads, chains of
    # 2 × 2 blocks keep the serial fused kernel (faster than the threaded driver).
    monkeypatch.setattr(butterfly_module, "PARALLEL_MIN_NNZ_VEC", 16)
    B = make(rng, "n32", np.complex128, permuted=True)
    x = random_array(rng, 32, np.complex128)
    assert_close(B @ x, dense(B, "forward") @ x, np.complex128)
    assert B._pairs_plans[(False, False)]
    calls = []
    monkeypatch.setattr(fastbfly._kernels, "apply_chain_parallel",
                        lambda *args: calls.append(args))
    assert_close(B.H @ x, dense(B, "forward").conj().T @ x, np.complex128)
    assert_close(B @ x[:, None], dense(B, "forward") @ x[:, None], np.complex128)
    assert calls == []


def test_vector_path_is_built_by_vector_products_only(rng):
    """Blocks of vectors never build the fused plan nor compile the one-vector kernel
    for it (cold start and memory of matmat-only use)."""
    B = make(rng, "n16", np.float64, permuted=False)
    X = random_array(rng, (16, 3), np.float64)
    Y = B @ X
    assert (False, False) not in B._pairs_plans
    assert not any(key[0] == "fused" for key in B._pairs_plans)
    assert_close(B @ X[:, 1].copy(), Y[:, 1], np.float64)  # (the block kernel may use FMA)
    assert B._pairs_plans[(False, False)]


@pytest.mark.parametrize("call", ["matmul", "matvec", "rmatvec", "op_matmul", "op_matvec",
                                  "op_rmatvec", "op_dot", "op_mul", "op_call"])
def test_errors_are_still_raised(rng, call):
    B = make(rng, "n16", np.complex128, permuted=True)
    op = B.aslinearoperator()
    apply = {"matmul": lambda x: B @ x, "matvec": B.matvec, "rmatvec": B.rmatvec,
             "op_matmul": lambda x: op @ x, "op_matvec": op.matvec, "op_rmatvec": op.rmatvec,
             "op_dot": op.dot, "op_mul": lambda x: op * x, "op_call": op}[call]
    with pytest.raises(ValueError, match=r"15"):
        apply(np.zeros(15, dtype=np.complex128))
    with pytest.raises(ValueError, match=r"17"):
        apply(np.zeros(17))
    with pytest.raises(TypeError, match="<U1|dtype"):
        apply(np.array(["a"] * 16))
    with pytest.raises(TypeError, match="object|dtype"):
        apply(np.array([None] * 16, dtype=object))
    if call in ("matmul", "op_matmul", "op_dot"):
        with pytest.raises(ValueError, match=r"\(16, 1, 1\)|3-D|1-d or 2-d|dimension"):
            apply(np.zeros((16, 1, 1)))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_operator_fast_paths_keep_scipy_semantics(rng):
    B = make(rng, "n16", np.complex64, permuted=True)
    op = B.aslinearoperator()
    D = dense(B, "forward")
    x = random_array(rng, 16, np.complex64)
    for got in (op @ x, op * x, op(x), op.dot(x), op.matvec(x),
                scipy.sparse.linalg.aslinearoperator(B) @ x):
        assert got.shape == (16,) and got.dtype == np.complex64
        assert_close(got, D @ x, np.complex64)
    assert_close(op.rmatvec(x), D.conj().T @ x, np.complex64)
    assert_close(op.H @ x, D.conj().T @ x, np.complex64)
    assert_close(op.T @ x, D.T @ x, np.complex64)
    column = op.matvec(x[:, None])  # (n, 1) in, (n, 1) out, as scipy documents
    assert column.shape == (16, 1)
    assert_close(column[:, 0], D @ x, np.complex64)
    matrix = op.matvec(np.asmatrix(x).T)  # np.matrix in, np.matrix out
    assert isinstance(matrix, np.matrix) and matrix.shape == (16, 1)
    assert_close(np.asarray(matrix)[:, 0], D @ x, np.complex64)
    assert_close(op @ np.stack([x, 2 * x], axis=1), D @ np.stack([x, 2 * x], axis=1), np.complex64)
    assert isinstance(op @ op, scipy.sparse.linalg.LinearOperator)


def test_concurrent_products(rng):
    """One `Butterfly` used from several Python threads at once: each product has its
    own output and scratch, so every result is the serial one."""
    B = make(rng, "n128", np.complex128, permuted=True)
    xs = [random_array(rng, 128, np.complex128) for _ in range(8)]
    want = [B @ x for x in xs]
    results = {}

    def work(k):
        for _ in range(200):
            for j, x in enumerate(xs):
                if not np.array_equal(B @ x, want[j]):
                    results[k] = False
                    return
        results[k] = True

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == {k: True for k in range(4)}
