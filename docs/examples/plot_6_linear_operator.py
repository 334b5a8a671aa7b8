"""
Butterfly as a drop-in LinearOperator
=====================================

:class:`fastbfly.ButterflyOperator` is a genuine :class:`scipy.sparse.linalg.LinearOperator`:
``matvec``, ``matmat`` (all right-hand sides in one pass), ``adjoint()`` and
``transpose()`` run on the Numba kernels.  Anything written for scipy's operators works
unchanged.  This example runs ``cg``, ``gmres`` and ``svds`` on a butterfly and checks
each answer against the dense matrix, then hands the same operator to PyLops.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, aslinearoperator, cg, gmres, svds

import fastbfly

rng = np.random.default_rng(0)
n = 1024
identity = aslinearoperator(sparse.eye_array(n, dtype=complex))

# %%
# A butterfly to work with
# ------------------------
# A noisy DFT of size 1024, factorized (10 factors, bit-reversal columns).  ``B`` is
# the operator; its dense form is kept only to check the solvers' answers.

F = np.fft.fft(np.eye(n)) / np.sqrt(n)  # unitary DFT
W = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
Z = F + 0.05 * np.linalg.norm(F) / np.linalg.norm(W) * W
B = fastbfly.factorize(Z, perm="bitrev")
op = B.aslinearoperator()
dense = B.toarray()
print(B)
print(f"relative error to Z: {B.info['relative_error']:.3f}; stored values: {B.nnz:,} "
      f"({B.nnz / n**2:.2%} of dense)")
print("is a scipy LinearOperator:", isinstance(op, LinearOperator))

# %%
# Conjugate gradient on the normal equations
# ------------------------------------------
# ``op.H @ op + λ I`` is Hermitian positive definite.  scipy composes operators
# lazily, so each CG iteration costs one product and one adjoint product of the
# butterfly: no matrix is formed.

lam = 1e-2
normal = op.H @ op + lam * identity
x_true = rng.standard_normal(n) + 1j * rng.standard_normal(n)
rhs = normal @ x_true
residuals = []
started = time.perf_counter()
x_cg, info = cg(normal, rhs, rtol=1e-10, maxiter=200,
                callback=lambda xk: residuals.append(np.linalg.norm(normal @ xk - rhs)))
seconds_cg = time.perf_counter() - started
dense_normal = dense.conj().T @ dense + lam * np.eye(n)
print(f"cg: info {info}, {len(residuals)} iterations, {seconds_cg:.3f} s, "
      f"error vs dense solve {np.linalg.norm(x_cg - np.linalg.solve(dense_normal, rhs)) / np.linalg.norm(x_true):.1e}")

# %%
# GMRES on a non-Hermitian system
# -------------------------------
# ``I + 0.5 B`` is not Hermitian; GMRES only needs products.

shifted = identity + 0.5 * op
b = rng.standard_normal(n) + 1j * rng.standard_normal(n)
gmres_residuals = []
started = time.perf_counter()
x_gmres, info = gmres(shifted, b, rtol=1e-10, restart=50, maxiter=20,
                      callback=gmres_residuals.append, callback_type="pr_norm")
seconds_gmres = time.perf_counter() - started
x_dense = np.linalg.solve(np.eye(n) + 0.5 * dense, b)
print(f"gmres: info {info}, {len(gmres_residuals)} inner iterations, {seconds_gmres:.3f} s, "
      f"error vs dense solve {np.linalg.norm(x_gmres - x_dense) / np.linalg.norm(x_dense):.1e}")

# %%
# Leading singular values with ``svds``
# -------------------------------------
# ARPACK needs products with the operator and its adjoint only.  The (noisy) DFT has
# all its singular values close to 1, where ARPACK converges slowly; a product of random
# butterfly factors has a widely spread spectrum instead.  ``Butterfly`` builds it from
# its factors directly: one :class:`fastbfly.Factor` (pattern and 4-D values) each.

factors = [fastbfly.Factor(p, rng.standard_normal(tuple(p)))
           for p in fastbfly.Chain.square_dyadic(n)]
random_op = fastbfly.Butterfly(factors).aslinearoperator()
started = time.perf_counter()
top = np.sort(svds(random_op, k=6, return_singular_vectors=False, random_state=0))[::-1]
seconds_svds = time.perf_counter() - started
reference = np.linalg.svd(random_op.toarray(), compute_uv=False)[:6]
print(f"svds: {seconds_svds:.2f} s; top singular values {np.round(top, 2)}")
print(f"largest relative difference to LAPACK on the dense matrix: "
      f"{np.max(np.abs(top - reference) / reference):.1e}")

# %%
# PyLops
# ------
# ``pylops.LinearOperator`` wraps any scipy operator; PyLops' dot test checks that the
# adjoint is consistent, ⟨B x, y⟩ = ⟨x, Bᴴ y⟩, to rounding.

try:
    import pylops
    from pylops.utils import dottest

    pylops_op = pylops.LinearOperator(op)
    print("PyLops dot test passed:",
          dottest(pylops_op, n, n, complexflag=3, rtol=1e-10, raiseerror=False))
except ImportError:
    print("PyLops is not installed: pip install pylops")

# %%
# Time per product
# ----------------
# One product with the butterfly against the dense matrix, for one vector and for a
# block of 32 (``matmat``: all columns in one pass over the factors).


def best_time(call, repeat=20):
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


x = rng.standard_normal(n) + 1j * rng.standard_normal(n)
X = rng.standard_normal((n, 32)) + 1j * rng.standard_normal((n, 32))
timings = {
    "B @ x": best_time(lambda: op @ x), "dense @ x": best_time(lambda: dense @ x),
    "B @ X (32)": best_time(lambda: op @ X), "dense @ X (32)": best_time(lambda: dense @ X),
}
for label, seconds in timings.items():
    print(f"{label:15s} {seconds * 1e3:8.3f} ms")

fig, (ax_cg, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
ax_cg.semilogy(np.arange(1, len(residuals) + 1), np.array(residuals) / np.linalg.norm(rhs),
               "o-", ms=3, label="cg on BᴴB + λI")
ax_cg.semilogy(np.arange(1, len(gmres_residuals) + 1), gmres_residuals, "s-", ms=3,
               label="gmres on I + B/2")
ax_cg.set_xlabel("iteration")
ax_cg.set_ylabel("relative residual")
ax_cg.set_title(f"Solvers on a ButterflyOperator, N = {n}")
ax_cg.legend()
labels = list(timings)
ax_time.barh(labels, [timings[k] * 1e3 for k in labels],
             color=["C0", "C7", "C0", "C7"])
ax_time.set_xscale("log")
ax_time.set_xlabel("time per product (ms, log scale)")
ax_time.set_title("Butterfly vs dense product")
ax_time.invert_yaxis()
fig.tight_layout()
plt.show()
