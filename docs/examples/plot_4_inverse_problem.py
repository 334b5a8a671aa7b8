"""
A large inverse problem with a compressed operator
===================================================

Recover an image :math:`X` from noisy non-uniform Fourier data

.. math::

   Y = A X A^\\top + E, \\qquad
   A[k, j] = e^{-2 i \\pi \\xi_k j / n}, \\quad \\xi_k = k + \\delta_k,

where the frequencies are *jittered* (:math:`\\delta_k` uniform in
:math:`[-0.25, 0.25]`) and were acquired in a random order.  Vectorised, the forward
operator is :math:`A \\otimes A`, a :math:`65\\,536 \\times 65\\,536` complex matrix for
a 256 × 256 image (64 GiB dense).  There is no FFT shortcut: the jitter breaks the
Cooley–Tukey structure, so every product with :math:`A` is a dense matrix product.

fastbfly compresses :math:`A`: rows sorted by frequency (a row permutation) and
columns bit-reversed (a column permutation), with rank 2 or 3 between factors because
a jittered Fourier matrix is only *approximately* a butterfly.  The image is then
recovered with scipy's ``lsqr`` and PyLops' ``cgls`` on the dense and on the butterfly
operator, and we compare accuracy (PSNR), time per iteration and memory.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from scipy.sparse.linalg import LinearOperator, lsqr
from skimage import data
from skimage.transform import downscale_local_mean

import fastbfly

rng = np.random.default_rng(0)

# %%
# The image and the operator
# --------------------------
# ``camera`` ships with scikit-image (512 × 512); averaging 2 × 2 blocks gives 256 × 256.

image = downscale_local_mean(data.camera().astype(float) / 255.0, (2, 2))
n = image.shape[0]

xi = np.arange(n) + rng.uniform(-0.25, 0.25, n)   # jittered frequencies
xi = xi[rng.permutation(n)]                         # in acquisition order
A = np.exp(-2j * np.pi * np.outer(xi, np.arange(n)) / n)
print(f"image {image.shape}, A {A.shape}, condition number of A: {np.linalg.cond(A):.2f}")

# %%
# Compress A
# ----------
# ``row_perm`` sorts the rows by frequency, ``perm="bitrev"`` is the DFT's column order.
# ``rank`` is the number of values carried between consecutive factors: rank 1 (a plain
# butterfly) leaves a 25 % error on this matrix, higher ranks store more values.

row_perm = np.argsort(xi)
fastbfly.factorize(A[:8, :8], rank=2)  # compile the kernels outside the timings
compressed = {}
for rank in (1, 2, 3):
    started = time.perf_counter()
    B = fastbfly.factorize(A, perm="bitrev", row_perm=row_perm, rank=rank)
    seconds = time.perf_counter() - started
    error = np.linalg.norm(B.toarray() - A) / np.linalg.norm(A)
    compressed[rank] = B
    print(f"rank {rank}: {len(B.factors)} factors, {B.nnz:6d} values ({B.nnz / A.size:5.1%} "
          f"of dense), relative error {error:.1e}, factorized in {seconds:.2f} s")

# %%
# The separable operators
# -----------------------
# ``(A ⊗ A) vec(X) = vec(A X Aᵀ)`` for row-major ``vec``, and the adjoint is
# ``Aᴴ Y Ā``.  Both products take one ``matmat`` of a whole image per side: for the
# butterfly, ``B @ X`` runs all 256 columns through the factors in one kernel call.


def separable(apply, apply_adjoint):
    """``A ⊗ A`` as a LinearOperator from the products with ``A`` and ``Aᴴ``."""

    def matvec(x):
        X = x.reshape(n, n)
        return apply(apply(X).T).T.ravel()           # A X Aᵀ

    def rmatvec(y):
        Y = y.reshape(n, n)
        return apply_adjoint(apply_adjoint(Y).T).T.ravel()   # Aᴴ Y Ā

    return LinearOperator((n * n, n * n), matvec=matvec, rmatvec=rmatvec, dtype=complex)


AH = np.ascontiguousarray(A.conj().T)
operators = {"dense A": separable(lambda X: A @ X, lambda Y: AH @ Y)}
for rank in (2, 3):
    B = compressed[rank]
    operators[f"butterfly rank {rank}"] = separable(B.matmat, B.rmatmat)

# Data from the exact operator, 1 % noise (relative, in norm).
x_true = image.ravel()
clean = operators["dense A"] @ x_true
noise = rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
y = clean + 0.01 * np.linalg.norm(clean) / np.linalg.norm(noise) * noise


def psnr(estimate):
    """Peak signal-to-noise ratio (dB) of the real part, for an image in [0, 1]."""
    error = np.mean((np.clip(estimate.real, 0, 1) - x_true) ** 2)
    return 10 * np.log10(1.0 / error)


# %%
# Invert with scipy's ``lsqr``
# ----------------------------
# Same data, same stopping rule, for the dense operator and the two butterflies.

results = {}
for label, op in operators.items():
    started = time.perf_counter()
    x_hat, istop, iterations = lsqr(op, y, atol=1e-5, btol=1e-5, iter_lim=100)[:3]
    seconds = time.perf_counter() - started
    results[label] = {"x": x_hat, "iterations": iterations, "seconds": seconds,
                      "per_iteration": seconds / iterations, "psnr": psnr(x_hat)}
    print(f"lsqr, {label:17s}: {iterations} iterations, {seconds:.2f} s "
          f"({1e3 * seconds / iterations:.1f} ms/iteration), PSNR {psnr(x_hat):.2f} dB")

# %%
# Invert with PyLops' ``cgls``
# ----------------------------
# PyLops wraps the same scipy operators; the callback records the PSNR at every
# iteration.

try:
    import pylops
    from pylops.optimization.basic import cgls

    history = {}
    for label in ("dense A", "butterfly rank 3"):
        curve = []
        started = time.perf_counter()
        x_cgls = cgls(pylops.LinearOperator(operators[label]), y, x0=np.zeros(n * n, complex),
                      niter=30, tol=0, callback=lambda xk: curve.append(psnr(xk)))[0]
        history[label] = (curve, time.perf_counter() - started)
        print(f"cgls, {label:17s}: 30 iterations, {history[label][1]:.2f} s, "
              f"PSNR {psnr(x_cgls):.2f} dB")
except ImportError:
    history = {}
    print("PyLops is not installed (pip install pylops): cgls skipped")

# %%
# Memory
# ------
# Bytes of what each operator stores.  The dense Kronecker matrix is never formed.

memory = {"dense A ⊗ A (not formed)": 16 * (n * n) ** 2, "dense A": A.nbytes}
for rank in (2, 3):
    memory[f"butterfly rank {rank}"] = compressed[rank].nbytes
for label, size in memory.items():
    print(f"{label:26s} {size / 2**20:12.3f} MiB")

# %%
# Images and numbers
# ------------------

fig, axes = plt.subplots(1, 4, figsize=(12, 3.6))
axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
axes[0].set_title("camera, 256 × 256")
for ax, label in zip(axes[1:], operators):
    r = results[label]
    ax.imshow(np.clip(r["x"].real.reshape(n, n), 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"lsqr, {label}\nPSNR {r['psnr']:.1f} dB, "
                 f"{1e3 * r['per_iteration']:.0f} ms/it", fontsize=9)
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()

fig, (ax_psnr, ax_cost) = plt.subplots(1, 2, figsize=(11, 3.8))
for label, (curve, _) in history.items():
    ax_psnr.plot(np.arange(1, len(curve) + 1), curve, "o-", ms=3, label=f"cgls, {label}")
ax_psnr.set_xlabel("iteration")
ax_psnr.set_ylabel("PSNR (dB)")
ax_psnr.set_title("PyLops cgls: PSNR per iteration")
if history:
    ax_psnr.legend()
labels = list(operators)
ax_cost.bar(labels, [1e3 * results[k]["per_iteration"] for k in labels], color="C0")
ax_cost.set_ylabel("lsqr time per iteration (ms)", color="C0")
ax_memory = ax_cost.twinx()
ax_memory.plot(labels, [memory[k] / 2**10 for k in labels], "s", color="C3", ms=9)
ax_memory.set_ylabel("operator storage (KiB)", color="C3")
ax_memory.set_ylim(bottom=0)
ax_cost.set_title("Cost of the operator")
fig.tight_layout()
plt.show()
