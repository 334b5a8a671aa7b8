"""
Compressing network weights: butterfly or low rank?
===================================================

Replacing a dense layer's weight matrix by a butterfly is one of the two applications
of the talk: ViT-Base's MLP weights are 768 × 3072 (ViT-Large 1024 × 4096, ViT-Huge
1280 × 5120).  Whether it pays depends on the matrix.  At an equal number of stored
values we compare the butterfly of :func:`fastbfly.factorize` (automatic chain,
:meth:`fastbfly.Chain.auto`) with the best truncated SVD, which stores
``k (m + n)`` values for rank ``k``:

1. on ViT-sized 768 × 3072 matrices made here — Gaussian noise, low rank plus noise,
   a butterfly product plus noise, and the same product with its rows shuffled;
2. on the trained dense layers of the sentence-embedding model all-MiniLM-L6-v2
   (cached results of ``examples/minilm_compression.py``, see :doc:`/minilm`).

No fine-tuning is involved: these are data-free approximations of given weights.
"""

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import fastbfly

try:
    DATA = Path(__file__).resolve().parent.parent / "data"
except NameError:  # run from an interactive session in docs/examples
    DATA = Path.cwd().parent / "data"

rng = np.random.default_rng(0)
m, n = 768, 3072

# %%
# Four ViT-sized matrices
# -----------------------
# Each has unit Frobenius norm, so errors are relative.


def normalized(M):
    return M / np.linalg.norm(M)


generating_chain = fastbfly.Chain.auto(m, n, n_factors=3)
product = fastbfly.Butterfly([fastbfly.Factor(p, rng.standard_normal(tuple(p)))
                              for p in generating_chain]).toarray()
noise = normalized(rng.standard_normal((m, n)))
matrices = {
    "Gaussian": noise,
    "rank 32 + 10 % noise": normalized(
        normalized(rng.standard_normal((m, 32)) @ rng.standard_normal((32, n))) + 0.1 * noise),
    "butterfly + 10 % noise": normalized(normalized(product) + 0.1 * noise),
    "same, rows shuffled": None,
}
matrices["same, rows shuffled"] = matrices["butterfly + 10 % noise"][rng.permutation(m)]
print("generating chain of the butterfly product:", generating_chain)

# %%
# Butterfly vs truncated SVD at equal storage
# -------------------------------------------
# The SVD's error at every rank comes from the singular values (Eckart–Young), so it is
# a curve; each butterfly setting ``(number of factors, rank)`` is one point.  The
# squared singular values are the eigenvalues of the 768 × 768 Gram matrix ``M Mᵀ``,
# much cheaper than an SVD of the 768 × 3072 matrix.

settings = [(4, 1), (3, 1), (2, 1), (3, 2)]
results = {}
started = time.perf_counter()
for name, M in matrices.items():
    energies = np.clip(np.linalg.eigvalsh(M @ M.T)[::-1], 0, None)  # σ², decreasing
    tail = np.sqrt(np.maximum(0.0, 1.0 - np.cumsum(energies)))      # error of rank k+1
    svd_error = np.concatenate([[1.0], tail])                      # rank 0, 1, 2, ...
    points = []
    for n_factors, rank in settings:
        B = fastbfly.factorize(M, n_factors=n_factors, rank=rank)
        error = np.linalg.norm(B.toarray() - M)  # ‖M‖ = 1
        k = B.nnz // (m + n)
        points.append({"setting": (n_factors, rank), "nnz": B.nnz, "error": error,
                       "svd_rank": k, "svd_error": svd_error[k]})
    results[name] = {"svd_error": svd_error, "points": points}
print(f"{len(matrices) * len(settings)} factorizations and {len(matrices)} spectra in "
      f"{time.perf_counter() - started:.1f} s\n")

print(f"{'matrix':24s} {'factors, rank':>13s} {'% dense':>8s} {'butterfly':>10s} "
      f"{'SVD':>8s}  better")
for name, result in results.items():
    for p in result["points"]:
        better = "butterfly" if p["error"] < p["svd_error"] else "SVD"
        print(f"{name:24s} {str(p['setting']):>13s} {100 * p['nnz'] / (m * n):7.2f}% "
              f"{p['error']:10.3f} {p['svd_error']:8.3f}  {better}")

# %%
# The same comparison on trained weights
# --------------------------------------
# Cached from ``examples/minilm_compression.py`` (40 cases: layers 0 and 5 of
# all-MiniLM-L6-v2, four dense layers each, five settings; 384 × 384, 1536 × 384 and
# 384 × 1536 matrices).

minilm = json.loads((DATA / "minilm.json").read_text())
rows = minilm["rows"]
print(f"{minilm['model']}, measured {minilm['meta']['date'][:10]} on {minilm['meta']['machine']}")
wins = sum(r["weight_error"] < r["svd_weight_error"] for r in rows)
print(f"butterfly more accurate (weight error) in {wins} of {len(rows)} cases; "
      f"median gap {np.median([r['weight_error'] - r['svd_weight_error'] for r in rows]):.3f}")
wins = sum(r["activation_error"] < r["svd_activation_error"] for r in rows)
print(f"butterfly more accurate (activation error on real inputs) in {wins} of {len(rows)}")

# %%
# Figures
# -------

fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
for ax, (name, result) in zip(axes, results.items()):
    ranks = np.arange(len(result["svd_error"]))
    budget = 100 * ranks * (m + n) / (m * n)
    keep = budget <= 5
    ax.plot(budget[keep], result["svd_error"][keep], "-", color="C7", label="truncated SVD")
    for p in result["points"]:
        ax.plot(100 * p["nnz"] / (m * n), p["error"], "o", color="C0")
        ax.annotate(f"{p['setting'][0]},{p['setting'][1]}", (100 * p["nnz"] / (m * n), p["error"]),
                    textcoords="offset points", fontsize=7,
                    xytext=(3, -9) if p["setting"][1] > 1 else (3, 3))
    ax.plot([], [], "o", color="C0", label="butterfly (factors,rank)")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("stored values (% of dense)")
    ax.set_ylim(0, 1.05)
axes[0].set_ylabel("relative error")
axes[0].legend(fontsize=8, loc="lower left")

ax = axes[4]
kinds = sorted({r["kind"] for r in rows})
for index, kind in enumerate(kinds):
    chosen = [r for r in rows if r["kind"] == kind]
    ax.plot([r["svd_weight_error"] for r in chosen], [r["weight_error"] for r in chosen],
            "o", ms=4, color=f"C{index}", label=kind)
ax.plot([0.5, 1], [0.5, 1], "k--", lw=1)
ax.text(0.52, 0.95, "butterfly worse ↑", fontsize=8)
ax.set_xlabel("SVD weight error")
ax.set_ylabel("butterfly weight error")
ax.set_title("all-MiniLM-L6-v2 (cached)", fontsize=10)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
plt.show()

# %%
# Conclusion
# ----------
# * On **Gaussian noise** nothing compresses: at 1–3.6 % of the values both errors
#   stay above 0.96, within 0.01 of each other.
# * **Low rank plus noise** is the SVD's case: at 3.6 % of the values the SVD's error
#   is about half the butterfly's, and it reaches the noise level from rank 32 on,
#   while the butterfly, blind to the low rank, stays above 0.9.
# * A **butterfly product plus noise** is the butterfly's case: on its own chain
#   (3 factors, rank 1) it reaches the noise level (0.1) with 1.4 % of the values,
#   where the SVD at the same budget is at 0.96 — products of butterfly factors have a
#   flat spectrum.  On other chains the butterfly is less accurate but still ahead.
# * **Shuffling the rows** of that matrix keeps its singular values (the SVD curve does
#   not move) but breaks the butterfly structure: on the generating chain the error
#   goes from 0.1 to about 0.87.  The permutation would have to be recovered first
#   (:func:`fastbfly.recover_permutations` does it for square power-of-two
#   sizes).
# * **Trained weights behave like the noise / low-rank cases, not like butterflies**:
#   on all-MiniLM-L6-v2 the truncated SVD is more accurate in 38 of 40 cases, and
#   neither is accurate at useful compression rates.  Hidden units come in no
#   particular order, so fixed butterfly supports are not aligned with anything in the
#   weights.  Butterfly layers that work in networks are *trained* as butterflies (or
#   fine-tuned from a butterfly initialisation); compressing trained dense weights
#   data-free, as done here, is not where butterflies help.
