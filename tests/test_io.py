"""`fastbfly.save` / `fastbfly.load`: round trips, and clear errors on foreign,
corrupted or inconsistent files."""

import os
import pathlib
import pickle
import zipfile
import zlib

import numpy as np
import pytest

import fastbfly
from fastbfly import Butterfly, Chain, factorize, load, save

from conftest import DTYPES, dtype_id, random_butterfly, random_factors


def assert_identical(loaded, original):
    """Same class, dtype, shape, patterns, permutations, and bitwise-equal values."""
    assert isinstance(loaded, Butterfly)
    assert loaded.dtype == original.dtype and loaded.shape == original.shape
    assert [f.pattern for f in loaded.factors] == [f.pattern for f in original.factors]
    for a, b in zip(loaded.factors, original.factors):
        assert a.values.dtype == b.values.dtype
        assert a.values.tobytes() == b.values.tobytes()
    for name in ("perm", "row_perm"):
        mine, theirs = getattr(loaded, name), getattr(original, name)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(loaded.toarray(), original.toarray())


@pytest.mark.parametrize("permutations", ["none", "perm", "both"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_round_trip(dtype, permutations, tmp_path, rng):
    B = random_butterfly(rng, 64, dtype, perm=permutations != "none", row_perm=permutations == "both")
    path = tmp_path / "b.npz"
    save(path, B)
    assert_identical(load(path), B)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_round_trip_of_a_factorization(dtype, tmp_path, rng):
    F = np.fft.fft(np.eye(32)) + 0.1 * rng.standard_normal((32, 32))
    matrix = F.astype(dtype) if np.dtype(dtype).kind == "c" else F.real.astype(dtype)
    B = factorize(matrix, perm="bitrev")
    save(str(tmp_path / "f.npz"), B)
    loaded = load(str(tmp_path / "f.npz"))
    assert_identical(loaded, B)
    np.testing.assert_array_equal(loaded.perm, fastbfly.bit_reversal_permutation(32))


@pytest.mark.parametrize("patterns, shape", [
    ([(1, 3, 3, 4), (3, 2, 2, 2), (6, 2, 5, 1)], None),
    ([(1, 4, 4, 2), (2, 4, 4, 1)], None),
    (list(Chain.square_dyadic(16)), (13, 11)),
], ids=["12x30", "rank-2", "padded"])
def test_round_trip_of_general_chains(patterns, shape, tmp_path, rng):
    chain = Chain(patterns)
    B = Butterfly(random_factors(rng, chain, np.complex128), perm=rng.permutation(chain.shape[1]),
                  shape=shape)
    save(tmp_path / "g.npz", B)
    assert_identical(load(tmp_path / "g.npz"), B)


def test_special_values_round_trip_bitwise(tmp_path):
    values = np.array([0.0, -0.0, 5e-324, 1.7e308], dtype=np.float64).reshape(1, 2, 2, 1)
    B = Butterfly([fastbfly.Factor((1, 2, 2, 1), values)])
    save(tmp_path / "s.npz", B)
    assert_identical(load(tmp_path / "s.npz"), B)


def test_save_writes_exactly_the_given_path_and_replaces(tmp_path, rng):
    B = random_butterfly(rng, 8, np.float64)
    path = tmp_path / "no_suffix.bin"
    save(path, B)
    save(path, random_butterfly(rng, 16, np.float32))  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["no_suffix.bin"]  # no temporaries left over
    assert load(path).shape == (16, 16) and load(path).dtype == np.float32


def test_save_rejects_non_butterflies(tmp_path):
    with pytest.raises(TypeError, match="Butterfly, got ndarray"):
        save(tmp_path / "x.npz", np.eye(4))
    assert not os.listdir(tmp_path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


# ============================================================================ bad files
def good_arrays(rng):
    B = random_butterfly(rng, 8, np.float64, perm=True)
    return {"format": np.array("fastbfly.butterfly"), "version": np.array(1),
            "patterns": B._patterns, "values": B._values, "perm": B.perm}


def write_npz(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


BAD_CONTENTS = {
    # name: (function of the good arrays -> arrays to write, expected message)
    "foreign-npz": (lambda g: {"a": np.arange(3), "b": np.eye(2)}, "missing 'format'"),
    "no-values": (lambda g: {k: v for k, v in g.items() if k != "values"}, "missing 'values'"),
    "wrong-format": (lambda g: {**g, "format": np.array("something.else")}, "something.else"),
    "format-not-scalar": (lambda g: {**g, "format": np.array(["fastbfly.butterfly"] * 2)}, "format"),
    "version-2": (lambda g: {**g, "version": np.array(2)}, "version.*2"),
    "version-0": (lambda g: {**g, "version": np.array(0)}, "version"),
    "version-float": (lambda g: {**g, "version": np.array(1.0)}, "version"),
    "version-array": (lambda g: {**g, "version": np.array([1])}, "version"),
    "values-too-short": (lambda g: {**g, "values": g["values"][:-1]}, "need 48 values.*holds 47"),
    "values-too-long": (lambda g: {**g, "values": np.append(g["values"], 1.0)}, "holds 49"),
    "values-2d": (lambda g: {**g, "values": g["values"].reshape(2, -1)}, "values"),
    "values-int": (lambda g: {**g, "values": g["values"].astype(np.int64)}, "int64"),
    "values-str": (lambda g: {**g, "values": g["values"].astype(str)}, "values"),
    "patterns-1d": (lambda g: {**g, "patterns": g["patterns"].ravel()}, "patterns"),
    "patterns-float": (lambda g: {**g, "patterns": g["patterns"].astype(float)}, "float64"),
    "patterns-empty": (lambda g: {**g, "patterns": np.zeros((0, 4), dtype=np.int64)}, "patterns"),
    "patterns-zero": (lambda g: {**g, "patterns": np.array([[1, 2, 0, 4], [2, 2, 2, 2], [4, 2, 2, 1]])},
                      "pattern"),
    "patterns-negative": (lambda g: {**g, "patterns": -g["patterns"]}, "pattern"),
    # (the reversed order would be a valid transposed chain, so mix the orders instead)
    "patterns-unchainable": (lambda g: {**g, "patterns": np.array([[1, 2, 2, 4], [4, 2, 2, 1], [2, 2, 2, 2]])},
                             "chainable"),
    "patterns-mismatch": (lambda g: {**g, "patterns": np.array([[1, 2, 2, 2], [2, 2, 2, 1], [1, 2, 2, 2]])},
                          "values"),
    "perm-wrong-length": (lambda g: {**g, "perm": g["perm"][:-1]}, r"perm must have shape \(8,\)"),
    "perm-duplicates": (lambda g: {**g, "perm": np.zeros(8, dtype=np.int64)}, "more than once"),
    "perm-out-of-range": (lambda g: {**g, "perm": g["perm"] + 1}, "max 8"),
    "perm-float": (lambda g: {**g, "perm": g["perm"].astype(float)}, "float64"),
    "row-perm-bad": (lambda g: {**g, "row_perm": np.arange(9)}, "row_perm"),
    "shape-too-big": (lambda g: {**g, "shape": np.array([9, 8])}, "shape"),
    "shape-malformed": (lambda g: {**g, "shape": np.array([8, 8, 1])}, "shape"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONTENTS))
def test_inconsistent_files_give_value_errors(name, tmp_path, rng):
    make, match = BAD_CONTENTS[name]
    path = tmp_path / f"{name}.npz"
    write_npz(path, **make(good_arrays(rng)))
    with pytest.raises(ValueError, match=match):
        load(path)


def test_good_arrays_helper_loads(tmp_path, rng):
    """The baseline of the cases above is itself a valid file."""
    write_npz(tmp_path / "good.npz", **good_arrays(rng))
    assert load(tmp_path / "good.npz").shape == (8, 8)


def test_pickled_object_array_is_refused(tmp_path, rng):
    arrays = good_arrays(rng)
    arrays["values"] = np.array([object()] * arrays["values"].size, dtype=object)
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as file:
        np.savez(file, allow_pickle=True, **arrays)
    with pytest.raises(ValueError, match="pickled.npz"):
        load(path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_files(fraction, tmp_path, rng):
    path = tmp_path / "t.npz"
    save(path, random_butterfly(rng, 64, np.complex128, perm=True))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="t.npz"):
        load(path)


@pytest.mark.parametrize("content", ["random", "text", "pickle", "zip-of-text", "empty-zip"])
def test_foreign_files(content, tmp_path, rng):
    path = tmp_path / "foreign.npz"
    if content == "random":
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "text":
        path.write_text("fastbfly.butterfly version 1\n")
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"values": [1, 2, 3]}))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            if content == "zip-of-text":
                archive.writestr("values.npy", "not an array")
    with pytest.raises(ValueError, match="foreign.npz"):
        load(path)


def test_npy_file_is_not_a_butterfly(tmp_path):
    path = tmp_path / "matrix.npy"
    np.save(path, np.eye(4))
    with pytest.raises(ValueError, match="matrix.npy"):
        load(path)


def test_flipped_bytes_never_crash(tmp_path, rng):
    """Any corruption gives a ValueError (or, in unchecked zip metadata, the same matrix)."""
    path = tmp_path / "c.npz"
    B = random_butterfly(rng, 16, np.float64, perm=True)
    save(path, B)
    data = bytearray(path.read_bytes())
    for position in rng.choice(len(data), size=60, replace=False):
        corrupted = bytearray(data)
        corrupted[position] ^= 0xFF
        path.write_bytes(bytes(corrupted))
        try:
            loaded = load(path)
        except ValueError:
            continue
        assert_identical(loaded, B)


def test_corrupted_compressed_file(tmp_path, rng):
    """A compressed .npz (np.savez_compressed) with damaged deflate data."""
    path = tmp_path / "z.npz"
    np.savez_compressed(path, **good_arrays(rng))
    assert load(path).shape == (8, 8)  # compressed files are fine
    data = bytearray(path.read_bytes())
    member = data.find(b"values.npy")
    position = member + 200  # inside the compressed values
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="z.npz"):
        load(path)


def test_str_and_pathlike_paths(tmp_path, rng):
    B = random_butterfly(rng, 8, np.complex64)
    save(pathlib.Path(tmp_path) / "p.npz", B)
    assert_identical(load(str(tmp_path / "p.npz")), B)
    save(str(tmp_path / "q.npz"), B)
    assert_identical(load(pathlib.Path(tmp_path) / "q.npz"), B)
