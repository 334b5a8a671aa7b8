"""Fuzzing `fastbfly.load` (issue 6, item 2): damaged and foreign files never crash it.

Every example ends in one of two ways: `load` raises `ValueError`, or it returns a
valid `Butterfly`: consistent chain, shape and permutations, products that run (forward,
adjoint, blocks) and agree with the dense reference of tests/naive.py, and finite
whenever the stored values are moderate.  Any other exception, or a crash, fails.

Four fuzzers, from blind to structure-aware:

- ``raw``: flips, truncations, insertions, deletions and overwrites of the bytes of
  valid saved files (the zip layer's CRCs catch most of these);
- ``member``: the same mutations inside one ``.npy`` member, or member renames,
  drops and additions, re-zipped with valid CRCs, so they reach NumPy's header parser
  and fastbfly's own checks;
- ``arrays``: well-formed ``.npz`` files whose arrays are random (dtype, shape, values);
- ``bytes``: arbitrary byte strings.

The examples are derandomized, so every run tries the same inputs (reproducible counts,
see ``scripts/reliability_counts.py``); ``FASTBFLY_FUZZ_EXAMPLES`` scales the run.
The fuzz functions take no pytest fixtures so that the script can call them directly.
"""

from __future__ import annotations

import collections
import io
import os
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastbfly import Butterfly, Chain, Factor, load, save
from fastbfly.butterfly import SUPPORTED_DTYPES

import naive
from conftest import assert_close

# Examples per fuzzer (half for ``arrays``, whose examples cost more to draw); the four
# together run in about 15 s of CPU time, well under a minute on 2 cores.
FUZZ_EXAMPLES = int(os.environ.get("FASTBFLY_FUZZ_EXAMPLES", "400"))


def fuzz_settings(max_examples: int = FUZZ_EXAMPLES):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Examples actually run, and how each ended, per fuzzer (read by the counts script).
EXAMPLES_RUN = collections.Counter()
OUTCOMES = collections.Counter()


def _seed_butterflies() -> dict:
    """Small valid butterflies covering every optional member of the file format."""
    rng = np.random.default_rng(2024)

    def random(chain, dtype):
        factors = []
        for pattern in chain:
            values = rng.standard_normal(tuple(pattern))
            if np.dtype(dtype).kind == "c":
                values = values + 1j * rng.standard_normal(tuple(pattern))
            factors.append(Factor(pattern, values.astype(dtype)))
        return factors

    dyadic = Chain.square_dyadic(8)
    general = Chain([(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)])
    return {
        "dyadic-8-both-perms-float64": Butterfly(random(dyadic, np.float64), perm=rng.permutation(8),
                                                 row_perm=rng.permutation(8)),
        "12x30-perm-complex64": Butterfly(random(general, np.complex64), perm=rng.permutation(30)),
        "padded-7x5-float32": Butterfly(random(dyadic, np.float32), perm=rng.permutation(8), shape=(7, 5)),
        "rank-2-complex128": Butterfly(random(Chain([(1, 4, 4, 2), (2, 4, 4, 1)]), np.complex128)),
    }


def _saved_bytes(butterfly) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "seed.npz")
        save(path, butterfly)
        with open(path, "rb") as file:
            return file.read()


SEEDS = {name: _saved_bytes(B) for name, B in _seed_butterflies().items()}
SEED_NAMES = sorted(SEEDS)

_directory = None


def _scratch_path() -> str:
    """A file path in one temporary directory for the whole session."""
    global _directory
    if _directory is None:
        _directory = tempfile.TemporaryDirectory(prefix="fastbfly-fuzz-")
    return os.path.join(_directory.name, "fuzzed.npz")


def members_of(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zipped(members: dict, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def raw_member_archive(name: str = "values.npy") -> bytes:
    """A saved file whose member ``name`` is not a ``.npy`` file (``np.load`` hands such
    members back as raw ``bytes``)."""
    members = members_of(SEEDS["dyadic-8-both-perms-float64"])
    members[name] = b"not an array"
    return zipped(members)


# ============================================================================ the property
def check_load(data: bytes, fuzzer: str, in_hypothesis: bool = True) -> str:
    """Write ``data``, load it, and check the outcome; returns how it ended."""
    EXAMPLES_RUN[fuzzer] += 1
    path = _scratch_path()
    with open(path, "wb") as file:
        file.write(data)
    try:
        B = load(path)
    except ValueError as error:
        assert "fuzzed.npz" in str(error)  # the message names the file
        outcome = "ValueError"
    else:
        outcome = check_valid(B)
    OUTCOMES[(fuzzer, outcome)] += 1
    if in_hypothesis:
        event(outcome)
    return outcome


def check_valid(B) -> str:
    """Everything a loaded `Butterfly` must satisfy; returns a label of the case."""
    assert isinstance(B, Butterfly)
    assert B.dtype in SUPPORTED_DTYPES
    chain = Chain([f.pattern for f in B.factors])
    m, n = chain.shape
    assert 1 <= B.shape[0] <= m and 1 <= B.shape[1] <= n
    assert B.nnz == chain.nnz == sum(f.values.size for f in B.factors)
    for perm, size in ((B.perm, n), (B.row_perm, m)):
        if perm is not None:
            np.testing.assert_array_equal(np.sort(perm), np.arange(size))
    assert all(np.all(np.isfinite(f.values)) for f in B.factors), "load returned NaN or Inf values"
    # Each factor multiplies the largest entry of a vector by at most max|v| * max(b, c):
    # below 1e300 for the whole chain, no product may overflow.
    bound = float(max(B.shape))
    for f in B.factors:
        bound *= float(np.max(np.abs(f.values), initial=0.0)) * max(f.pattern.b, f.pattern.c)
    moderate = bound < 1e300
    # every product runs and has the right shape, whatever the values
    x = np.linspace(-1.0, 1.0, B.shape[1])
    y = B @ x
    Y = B @ np.stack([x, x[::-1]], axis=1)
    z = B.H @ np.ones(B.shape[0])
    assert y.shape == (B.shape[0],) and Y.shape == (B.shape[0], 2) and z.shape == (B.shape[1],)
    if not moderate:
        return "loaded, huge values"
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(Y)) and np.all(np.isfinite(z))
    dense = naive.butterfly_dense(B)
    assert_close(B.toarray(), dense, B.dtype, factor=10)
    assert_close(y, dense @ x, B.dtype, factor=10)
    assert_close(z, dense.conj().T @ np.ones(B.shape[0]), B.dtype, factor=10)
    return "loaded, valid"


# ============================================================================ mutations
positions = st.integers(0, 2**20)
mutation = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), positions, st.integers(1, 32)),
    st.tuples(st.just("overwrite"), positions, st.binary(min_size=1, max_size=32)),
)


def mutate(data: bytes, mutations, focus: int | None = None) -> bytes:
    """Apply ``mutations``; positions wrap around the data (or its first ``focus``
    bytes, to hit headers more often)."""
    data = bytearray(data)
    for kind, position, *argument in mutations:
        span = max(1, min(len(data), focus or len(data)))
        at = position % (span + (kind in ("truncate", "insert")))
        if kind == "flip" and data:
            data[at % len(data)] ^= argument[0]
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = argument[0]
        elif kind == "delete":
            del data[at:at + argument[0]]
        elif kind == "overwrite":
            data[at:at + len(argument[0])] = argument[0]
    return bytes(data)


# ============================================================================ fuzzers
@fuzz_settings()
@given(seed=st.sampled_from(SEED_NAMES), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_raw_bytes(seed, mutations):
    check_load(mutate(SEEDS[seed], mutations), "raw")


MEMBER_NAMES = ["format.npy", "version.npy", "patterns.npy", "values.npy", "perm.npy", "row_perm.npy",
                "shape.npy"]
member_change = st.one_of(
    # mutate one member, mostly in its header (magic, version, header length, dict)
    st.tuples(st.just("mutate"), st.sampled_from(MEMBER_NAMES), st.lists(mutation, min_size=1, max_size=3),
              st.sampled_from([128, None])),
    st.tuples(st.just("drop"), st.sampled_from(MEMBER_NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(MEMBER_NAMES), st.sampled_from(MEMBER_NAMES + ["x.npy", "perm"])),
    st.tuples(st.just("copy"), st.sampled_from(MEMBER_NAMES), st.sampled_from(MEMBER_NAMES)),
    st.tuples(st.just("add"), st.sampled_from(MEMBER_NAMES + ["extra.npy"]), st.binary(max_size=200)),
)


@fuzz_settings()
@given(seed=st.sampled_from(SEED_NAMES), changes=st.lists(member_change, min_size=1, max_size=3),
       compressed=st.booleans())
def test_fuzz_npz_members(seed, changes, compressed):
    members = members_of(SEEDS[seed])
    for change in changes:
        kind, name = change[0], change[1]
        if kind == "mutate" and name in members:
            members[name] = mutate(members[name], change[2], focus=change[3])
        elif kind == "drop":
            members.pop(name, None)
        elif kind == "rename" and name in members:
            members[change[2]] = members.pop(name)
        elif kind == "copy" and name in members:
            members[change[2]] = members[name]
        elif kind == "add":
            members[name] = change[2]
    check_load(zipped(members, compressed), "member")


def _any_array():
    dtypes = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes())
    return hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))


def _plausible_patterns():
    """Patterns arrays that are often valid chains, with int dtypes of every width."""
    row = st.tuples(*[st.integers(1, 4)] * 4)
    return st.builds(lambda rows, dtype: np.array(rows, dtype=dtype),
                     st.lists(row, min_size=1, max_size=3),
                     st.sampled_from([np.int64, np.int32, np.uint8, np.int8, np.uint64]))


@fuzz_settings(max(1, FUZZ_EXAMPLES // 2))
@given(data=st.data())
def test_fuzz_npz_arrays(data):
    """Well-formed archives of random arrays under the expected names; values of the
    right size for the drawn patterns half of the time, so the deeper checks run."""
    arrays = {}
    if data.draw(st.booleans()):
        arrays["format"] = np.array("fastbfly.butterfly")
    else:
        arrays["format"] = data.draw(_any_array())
    arrays["version"] = np.array(1) if data.draw(st.booleans()) else data.draw(_any_array())
    patterns = data.draw(st.one_of(_plausible_patterns(), _any_array()))
    arrays["patterns"] = patterns
    if data.draw(st.booleans()) and patterns.dtype.kind in "iu" and patterns.ndim == 2 and patterns.shape[1] == 4:
        count = int(np.prod(patterns.astype(np.int64), axis=1).sum())
        if 0 < count <= 4096:
            dtype = data.draw(st.sampled_from(list(SUPPORTED_DTYPES)))
            arrays["values"] = data.draw(hnp.arrays(dtype, count, elements={"allow_nan": True,
                                                                             "allow_infinity": True,
                                                                             "allow_subnormal": True}))
    if "values" not in arrays:
        arrays["values"] = data.draw(_any_array())
    for optional in ("perm", "row_perm", "shape"):
        if data.draw(st.booleans()):
            arrays[optional] = data.draw(st.one_of(
                _any_array(), hnp.arrays(np.int64, st.integers(0, 40), elements=st.integers(-2, 40))))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    check_load(buffer.getvalue(), "arrays")


@fuzz_settings()
@given(content=st.one_of(st.binary(max_size=4096),
                         st.builds(lambda tail: b"PK\x03\x04" + tail, st.binary(max_size=512)),
                         st.builds(lambda tail: b"\x93NUMPY" + tail, st.binary(max_size=512))))
def test_fuzz_arbitrary_bytes(content):
    """Anything at all, including zip and .npy magic numbers followed by garbage."""
    check_load(content, "bytes")


def test_seeds_load_back():
    """The unmutated seed files are valid (so the fuzzers start from good files)."""
    for name in SEED_NAMES:
        assert check_load(SEEDS[name], "seeds", in_hypothesis=False) == "loaded, valid", name
        rezipped = zipped(members_of(SEEDS[name]), compressed=True)
        assert check_load(rezipped, "seeds", in_hypothesis=False) == "loaded, valid", name


@pytest.mark.parametrize("member", ["values.npy", "patterns.npy", "format.npy", "version.npy", "shape.npy",
                                    "perm.npy", "notes.txt"])
def test_member_that_is_not_npy_gives_value_error(member, tmp_path):
    """np.load hands members that are not .npy files back as raw bytes (found by
    test_fuzz_npz_members: load used them as arrays, AttributeError)."""
    path = tmp_path / "raw-member.npz"
    path.write_bytes(raw_member_archive(member))
    key = member.removesuffix(".npy")  # np.load's name for the member
    with pytest.raises(ValueError, match=f"raw-member.npz.*member '{key}' is not a .npy array"):
        load(path)
