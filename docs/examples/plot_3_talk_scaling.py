"""
Talk figure 3: factorization time against size
==============================================

*"Our method scales with the matrix size"*: time to approximate the noisy DFT
(:math:`\\sigma = 0.1`) of size :math:`N = 2^J` by :math:`J` butterfly factors, for
:math:`J = 5, \\dots, 12`.  The input has :math:`N^2` entries, so :math:`O(N^2)` — time
proportional to reading the matrix — is the best any method can do; the hierarchical
algorithm reaches it when its two-factor steps cost linear time in the node size
(closed-form 2 × 2 Gram matrices and power iterations, no full SVDs).

fastbfly runs live; pyfaust (``butterfly``, ``bbtree`` and ``right``) and lazylinop
(``ksd``, balanced and left-to-right) are cached in ``docs/data/scaling.json``, measured
on the same machine together with fastbfly (so the two fastbfly series show how much
the machine's load at build time differs from the cached run).
"""

import json
import statistics
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
sigma = 0.1

# %%
# fastbfly, live
# --------------

fastbfly.factorize(np.fft.fft(np.eye(16)), perm="bitrev")  # compile outside the timings
live = {"balanced": [], "left-to-right": []}
for n_levels in range(5, 13):
    n = 2**n_levels
    F = np.fft.fft(np.eye(n))
    W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    Z = F + sigma * np.linalg.norm(F) / np.linalg.norm(W) * W
    del F, W
    for tree, series in live.items():
        times = []
        for _ in range(3 if n <= 1024 else 1):
            started = time.perf_counter()
            B = fastbfly.factorize(Z, tree=tree, perm="bitrev")
            times.append(time.perf_counter() - started)
        series.append((n, statistics.median(times)))
    print(f"N = {n:5d}: balanced {live['balanced'][-1][1]:8.4f} s, "
          f"left-to-right {live['left-to-right'][-1][1]:8.4f} s, "
          f"relative error {B.info['relative_error']:.3f}")
    del Z

# %%
# Cached peers
# ------------

cached = json.loads((DATA / "scaling.json").read_text())
meta = cached["meta"]
print(f"cached {meta['date'][:16]} on {meta['machine']} (load average at the end "
      f"{meta['load_average_at_end']})")
series = {}
for row in cached["rows"]:
    series.setdefault(row["method"], []).append((row["n"], row["seconds"]))
for method, points in series.items():
    print(f"{method:22s} " + "  ".join(f"{n}: {t:.3g} s" for n, t in points))

# %%
# The figure
# ----------
# Log-log axes; the dotted line is proportional to :math:`N^2`, anchored at fastbfly's
# balanced time for N = 4096.  Slopes are fitted on N >= 256, where fixed costs no
# longer dominate.


def slope(points):
    n, t = np.array([p for p in points if p[0] >= 256]).T
    return np.polyfit(np.log(n), np.log(t), 1)[0]


styles = {
    "fastbfly balanced": ("o", "C0", "-"), "fastbfly left-to-right": ("s", "C0", "--"),
    "pyfaust bbtree": ("^", "C7", "-"), "pyfaust right": ("v", "C8", "--"),
    "lazylinop balanced": ("D", "C5", "-"), "lazylinop l2r": ("d", "C6", "--"),
}
fig, ax = plt.subplots(figsize=(8, 5))
for tree, points in live.items():
    n, t = np.array(points).T
    ax.loglog(n, t, "o-" if tree == "balanced" else "s--", color="C0", lw=2, ms=5,
              label=f"fastbfly {tree} (live), slope {slope(points):.2f}")
for method, points in series.items():
    marker, color, line = styles.get(method, ("x", "k", ":"))
    n, t = np.array(points).T
    ax.loglog(n, t, marker + line, color=color, ms=5, lw=1, mfc="none",
              alpha=0.6 if method.startswith("fastbfly") else 1.0,
              label=f"{method} (cached), slope {slope(points):.2f}")
n = np.array([32, 4096])
anchor = dict(live["balanced"])[4096]
ax.loglog(n, anchor * (n / 4096.0) ** 2, "k:", label="∝ N²")
ax.set_xlabel("N (matrix is N × N, J = log2 N factors)")
ax.set_ylabel("factorization time (s)")
ax.set_title(f"Noisy DFT (σ = {sigma}), bit-reversal permutation")
ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
plt.show()
