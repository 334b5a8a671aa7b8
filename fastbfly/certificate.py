"""Error certificates: how far a butterfly approximation is, at most, from the best one.

For a chain ``π_1, ..., π_L`` and a split ``l`` (``1 <= l < L``), the exact two-factor
error

    E_l(Z) = min ‖Z − A B‖_F,  A on fuse(π_1..π_l),  B on fuse(π_{l+1}..π_L),

is computable exactly (independent blocks, one truncated SVD each; DESIGN.md §3).  Every
product ``X_1 ⋯ X_L`` on the chain is also such a two-factor product, so

    E*(Z) = min over all products on the chain of ‖Z − X_1 ⋯ X_L‖_F  >=  max_l E_l(Z),

whatever the method that produced the product.  Together with the error of a given
approximation this bounds how far it is from optimal; :func:`certify` computes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from . import _errors
from .butterfly import Butterfly
from .factorization import _as_matrix
from .patterns import Chain
from .trees import build_tree

__all__ = ["Certificate", "certify"]

# ``B`` fits the matrix to rounding when its error is at most this fraction of the
# matrix's norm, by the matrix's precision: its own error then bounds every split error
# from above, to within this much, and none is computed.  Double: ~500 ε (an exact
# product factorized by fastbfly: 8e-16 for the DFT at N = 1024, 1.1e-15 at N = 4096,
# ~5e-16 on random chains).  Single: 16 ε, where the matrix's own entries carry 6e-8
# of rounding (exact complex64 DFT factorized: 4.4e-7 at N = 4096, 6.1e-7 at 8192).
EXACT_FIT = {np.dtype(np.float64): 2.0 ** -43, np.dtype(np.float32): 2.0 ** -19}


@dataclass(frozen=True)
class Certificate:
    """Per-instance error certificate of a butterfly approximation (see :func:`certify`).

    All errors are Frobenius norms.  Each has an absolute form (the attribute) and a
    relative form (``relative_*``, divided by ``norm``).

    Attributes
    ----------
    chain : Chain
        The chain of the butterfly (the padded one when zero padding is used).
    split_errors : tuple of float
        ``E_l``, ``l = 1..L-1``: the exact two-factor error at every split of the chain,
        for the matrix with the butterfly's row and column permutations (and padding);
        when `split_errors_bounded`, upper bounds of them instead (see there).  Empty
        for a single factor.
    norm : float
        ``‖matrix‖_F``.
    actual_error : float
        ``‖matrix − B‖_F``, from ``B``'s products.
    padded_error : float
        The error on the zero-padded problem that the chain covers: ``actual_error``
        plus what ``B``'s chain product puts in the padding (equal to ``actual_error``
        without padding).  The bounds refer to this one.
    tree, orthonormalize : object
        ``B.info["tree"]`` and ``B.info["orthonormalize"]`` when ``B`` comes from
        :func:`fastbfly.factorize` (``None`` otherwise); they decide which upper bound
        is proven for ``B`` (`proven_upper_bound`).
    split_seconds, product_seconds : float
        Wall time of the ``L − 1`` two-factor problems and of the product.
    split_errors_bounded : bool
        True when ``B`` fits the matrix to rounding, ``padded_error <= f ‖matrix‖``
        with ``f = 2**-43`` for a double-precision matrix, ``2**-19`` (16 ε) for single
        precision (``EXACT_FIT``; e.g. an exact product factorized by fastbfly): the
        ``E_l`` were then not computed but each set to ``padded_error``, which bounds it
        from above (``B`` is itself a two-factor product at every split; in single
        precision up to the rounding of ``B``'s product, ~1e-7 of the norm) by less
        than ``f ‖matrix‖``.  So `lower_bound` is ``padded_error``, above the best
        error ``E*`` (itself at most ``padded_error``) by less than that: ``B`` is
        optimal to rounding.  The upper bounds, from larger ``E_l``, still hold.

    Examples
    --------
    A Gaussian matrix is far from any butterfly: the lower bound says no method could
    do much better than the factorization did.

    >>> import numpy as np, fastbfly
    >>> Z = np.random.default_rng(0).standard_normal((16, 16))
    >>> cert = fastbfly.certify(Z, fastbfly.factorize(Z, tree="left-to-right"))
    >>> cert.n_factors, [round(e, 3) for e in cert.relative_split_errors]
    (4, [0.515, 0.595, 0.526])
    >>> round(cert.relative_lower_bound, 3), round(cert.relative_actual_error, 3)
    (0.595, 0.72)
    >>> round(cert.ratio, 2), cert.actual_error <= cert.proven_upper_bound
    (1.21, True)

    The bounds are plain formulas of the fields, so a `Certificate` built by hand shows
    them exactly (the property examples below use this one):

    >>> from fastbfly import Certificate, Chain
    >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
    ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
    >>> cert.lower_bound, cert.upper_bound, cert.mirrored_upper_bound, cert.ratio
    (4.0, 22.0, 19.0, 1.25)
    """

    chain: Chain
    split_errors: tuple
    norm: float
    actual_error: float
    padded_error: float
    tree: object = None
    orthonormalize: object = None
    split_seconds: float = 0.0
    product_seconds: float = 0.0
    split_errors_bounded: bool = False

    # ------------------------------------------------------------------ bounds
    @property
    def n_factors(self) -> int:
        """Number of factors ``L`` of the chain.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.n_factors, len(cert.split_errors)
        (4, 3)
        """
        return len(self.chain)

    @property
    def lower_bound(self) -> float:
        """``max_l E_l``: no product on this chain (with these permutations), from any
        method, has a smaller error (but for rounding: when `split_errors_bounded`, it
        is ``padded_error``, above the best error by less than ``2**-43 ‖matrix‖``,
        ``2**-19 ‖matrix‖`` for a single-precision matrix).
        0 for a single factor.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.lower_bound  # max(3, 4, 2)
        4.0
        """
        return max(self.split_errors, default=0.0)

    @property
    def upper_bound(self) -> float:
        """``Σ_l 2^{L-1-l} E_l``: the error guaranteed by the orthonormalised
        hierarchical algorithm with the left-to-right tree (Le et al. 2025).  At most
        ``(2^{L-1} − 1)`` times the best error.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.upper_bound  # 4*3 + 2*4 + 1*2
        22.0
        """
        n = self.n_factors
        return float(sum(2.0 ** (n - 1 - l) * e for l, e in enumerate(self.split_errors, 1)))

    @property
    def mirrored_upper_bound(self) -> float:
        """``Σ_l 2^{l-1} E_l``: the same guarantee for the right-to-left tree (the
        left-to-right algorithm on the transposed problem).

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.mirrored_upper_bound  # 1*3 + 2*4 + 4*2
        19.0
        """
        return float(sum(2.0 ** (l - 1) * e for l, e in enumerate(self.split_errors, 1)))

    @property
    def proven_upper_bound(self):
        """The upper bound that is a theorem for ``B``, or ``None``.

        `upper_bound` for ``factorize(..., tree="left-to-right")``,
        `mirrored_upper_bound` for ``"right-to-left"`` (both with the default
        ``orthonormalize=True``), ``E_1`` (the exact optimum) for two factors with any
        tree, ``0`` for one factor (all from ``factorize``); ``None`` for other trees, for
        ``orthonormalize=False``, and for butterflies not made by ``factorize``.

        Examples
        --------
        >>> import dataclasses
        >>> from fastbfly import build_tree
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> print(cert.proven_upper_bound)  # no tree: not from factorize
        None
        >>> tree = build_tree("left-to-right", 4).to_nested()
        >>> dataclasses.replace(cert, tree=tree, orthonormalize=True).proven_upper_bound
        22.0
        >>> tree = build_tree("balanced", 4).to_nested()
        >>> print(dataclasses.replace(cert, tree=tree, orthonormalize=True).proven_upper_bound)
        None
        """
        n = self.n_factors
        if self.tree is None:
            return None
        if n == 1:
            return 0.0
        if n == 2:
            return self.split_errors[0]
        if self.orthonormalize is not True:
            return None
        if self.tree == build_tree("left-to-right", n).to_nested():
            return self.upper_bound
        if self.tree == build_tree("right-to-left", n).to_nested():
            return self.mirrored_upper_bound
        return None

    @property
    def ratio(self) -> float:
        """``padded_error / lower_bound`` (``actual_error / lower_bound`` without
        padding): ``B``'s error is at most this many times the best error achievable on
        this chain with these permutations.  1 means provably optimal; ``inf`` when the
        lower bound is 0 but ``B`` is not exact.  Near machine precision the ratio of
        two rounding errors says nothing.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.ratio  # 5 / 4
        1.25
        """
        if self.lower_bound > 0:
            return self.padded_error / self.lower_bound
        return 1.0 if self.padded_error == 0 else math.inf

    # ------------------------------------------------------------------ relative forms
    def _relative(self, value: float) -> float:
        return value / self.norm if self.norm > 0 else value

    @property
    def relative_split_errors(self) -> tuple:
        """``E_l / ‖matrix‖_F``.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_split_errors
        (0.3, 0.4, 0.2)
        """
        return tuple(self._relative(e) for e in self.split_errors)

    @property
    def relative_lower_bound(self) -> float:
        """`lower_bound` ``/ ‖matrix‖_F``.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_lower_bound
        0.4
        """
        return self._relative(self.lower_bound)

    @property
    def relative_upper_bound(self) -> float:
        """`upper_bound` ``/ ‖matrix‖_F``.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_upper_bound
        2.2
        """
        return self._relative(self.upper_bound)

    @property
    def relative_mirrored_upper_bound(self) -> float:
        """`mirrored_upper_bound` ``/ ‖matrix‖_F``.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_mirrored_upper_bound
        1.9
        """
        return self._relative(self.mirrored_upper_bound)

    @property
    def relative_actual_error(self) -> float:
        """``actual_error / ‖matrix‖_F``.

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_actual_error
        0.5
        """
        return self._relative(self.actual_error)

    @property
    def relative_padded_error(self) -> float:
        """``padded_error / ‖matrix‖_F`` (equal to `relative_actual_error` without
        zero padding).

        Examples
        --------
        >>> from fastbfly import Certificate, Chain
        >>> cert = Certificate(Chain.square_dyadic(16), split_errors=(3.0, 4.0, 2.0),
        ...                    norm=10.0, actual_error=5.0, padded_error=5.0)
        >>> cert.relative_padded_error
        0.5
        """
        return self._relative(self.padded_error)

    # ------------------------------------------------------------------ display
    def __str__(self) -> str:
        m, n = self.chain.shape
        if self.tree is None:
            how = "not from factorize"
        else:
            how = f"tree {_tree_name(self.tree, self.n_factors)}, orthonormalize={self.orthonormalize}"
        lines = [
            f"Butterfly error certificate: {self.n_factors} factors on a {m} x {n} chain "
            f"({how})",
            f"  {'':48s} {'relative':>10s} {'absolute':>11s}",
        ]

        def row(label, value):
            lines.append(f"  {label:48s} {self._relative(value):10.4g} {value:11.4g}")

        for l, e in enumerate(self.split_errors, 1):
            row(f"E_{l} (best two-factor error at split {l})", e)
        if self.split_errors_bounded:
            lines.append("  (E_l not computed: B fits to rounding, its error bounds each E_l)")
        row("lower bound max_l E_l (any method)", self.lower_bound)
        row("actual error ||Z - B||", self.actual_error)
        if self.padded_error != self.actual_error:
            row("  with the zero padding", self.padded_error)
        row("upper bound sum 2^(L-1-l) E_l (left-to-right)", self.upper_bound)
        row("upper bound sum 2^(l-1) E_l (right-to-left)", self.mirrored_upper_bound)
        proven = self.proven_upper_bound
        lines.append(
            "  proven for this B: "
            + ("none (tree or orthonormalize without a proof)" if proven is None
               else f"error <= {self._relative(proven):.4g} (relative)")
        )
        lines.append(
            f"  actual / lower bound = {self.ratio:.4g}: at most that many times the best "
            f"error on this chain"
        )
        lines.append(
            f"  cost: {self.split_seconds:.3g} s for {max(self.n_factors - 1, 0)} splits, "
            f"{self.product_seconds:.3g} s for the product"
        )
        return "\n".join(lines)


def _tree_name(tree, n_factors: int) -> str:
    """The name of a nested tree when it is one of the named trees, else its repr."""
    for name in ("balanced", "left-to-right", "right-to-left"):
        if tree == build_tree(name, n_factors).to_nested():
            return name
    return repr(tree)


def certify(matrix, B: Butterfly) -> Certificate:
    """Certify a butterfly approximation ``B`` of ``matrix``: its error, a lower bound on
    the best error of any butterfly on the same chain, and the guaranteed upper bound.

    Parameters
    ----------
    matrix : (m, n) array_like
        The matrix ``B`` approximates (float32, float64, complex64, complex128; bool and
        integers are read as float64).  Never modified.
    B : Butterfly
        Any butterfly of shape ``(m, n)``, typically from :func:`fastbfly.factorize`.
        Its chain, permutations and zero padding define the problem: with
        ``B.row_perm`` and ``B.perm``, ``B``'s factors approximate
        ``matrix[row_perm][:, perm]``; when ``B.shape`` is smaller than
        ``B.chain.shape``, ``matrix`` is zero-padded to the chain's shape first, as
        ``factorize(..., pad=True)`` does.

    Returns
    -------
    Certificate
        With ``split_errors`` (``E_l``), ``lower_bound``, ``upper_bound``,
        ``mirrored_upper_bound``, ``proven_upper_bound``, ``actual_error`` and ``ratio``,
        each also relative to ``‖matrix‖_F``; ``print(cert)`` shows a table.

    Raises
    ------
    TypeError
        If ``B`` is not a `Butterfly`, or ``matrix`` is not a dense numeric array.
    ValueError
        If ``matrix`` is not 2-D, is empty, has NaN or Inf, or its shape differs from
        ``B.shape``; if ``B``'s chain does not cover a full matrix (its first pattern has
        ``a > 1`` or its last ``d > 1``: the product is block diagonal).

    Notes
    -----
    **What is proven.**  ``lower_bound = max_l E_l <= E*``, the best error of any
    product on the chain (with ``B``'s permutations), for every ``B`` (up to
    rounding: see Accuracy, and `Certificate.split_errors_bounded` when ``B`` fits
    to rounding); so ``ratio = error / lower_bound >= error / E*`` bounds how far
    ``B`` is from optimal.
    ``upper_bound = Σ_l 2^{L-1-l} E_l <= (2^{L-1} − 1) E*`` is the guarantee of Le,
    Zheng, Riccietti and Gribonval (*Butterfly factorization with error guarantees*,
    arXiv:2411.04506) for the hierarchical algorithm with orthonormalisation and the
    **left-to-right** tree (peel ``X_1`` off first; pyfaust's ``type='right'``); the
    weight ``2^{L-1-l}`` of ``E_l`` reflects how much the later steps can amplify the
    error committed at split ``l``.  Transposing the problem reverses the chain and the
    tree (after perfect-shuffle permutations, which change no error), so
    ``mirrored_upper_bound = Σ_l 2^{l-1} E_l`` holds for the orthonormalised
    **right-to-left** tree.  For two factors every tree is optimal (``error = E_1``).
    `Certificate.proven_upper_bound` picks the bound that applies to ``B``.

    **What was only observed.**  In 1500 random instances per setting (8 × 8 and
    16 × 16 dyadic chains, L = 3 and 4; 12 × 30, rank-2 16 × 16 and mixed-radix
    12 × 12 chains, L = 3; Gaussian matrices, noisy random products with heavy-tailed
    factor entries, matrices with fast-decaying singular values), the error of
    ``factorize`` never exceeded ``upper_bound`` nor ``mirrored_upper_bound`` with the
    balanced, right-to-left and left-to-right trees and a custom 4-factor tree, with
    orthonormalisation on, and with it off for every tree but one (largest ratio
    error / ``upper_bound``: 1.000, met with equality on the rank-2 chain whose first
    split is trivially exact, ``E_1 = 0``).  The exception is the left-to-right tree
    **without** orthonormalisation: errors up to 17 times ``upper_bound``.  The test
    suite checks the same on L = 5 chains.  Reproduce with
    ``python benchmarks/certificate_bounds.py`` (``docs/certificate.md``).  The bounds
    are loose in practice: on noisy inputs the error is typically within 10 % of
    ``lower_bound`` while ``upper_bound`` is ``~2^{L-2}`` times larger.

    **Accuracy.**  ``actual_error`` is measured first, in one pass over the matrix,
    each entry of ``B``'s product formed in double precision from two fused factors
    (``X_1⋯X_h`` and ``X_{h+1}⋯X_L``, multiplied in ``B``'s precision).  When ``B``
    fits to rounding, ``padded_error <= 2**-43 ‖matrix‖`` for a double-precision
    matrix (``EXACT_FIT``, ~500 ε: an exact product factorized by fastbfly, 1e-15 for
    the DFT) or ``<= 2**-19 ‖matrix‖`` for a single-precision one (16 ε; its entries
    carry 6e-8 of rounding: the exact complex64 DFT factorized, 4.4e-7 at N = 4096),
    the ``E_l`` are not computed: each is reported as ``padded_error``, an upper bound
    (``B`` is itself a two-factor product at every split; in single precision up to
    the rounding of ``B``'s product) above the exact ``E_l`` by less than that
    fraction of the norm, and `Certificate.split_errors_bounded` is set.
    ``lower_bound`` is then ``padded_error``, above ``E*`` by less than that (``B``
    is optimal to rounding, ``ratio = 1``), and the upper bounds, sums of larger
    ``E_l``, still hold.  Computing them would only resolve rounding errors, and at
    the highest cost (every block near-exact).  Otherwise ``E_l`` are computed in
    double precision whatever the input's precision
    (:func:`fastbfly._errors.split_errors`).  Blocks with a side of at most
    16 get ``σ₁²`` from that side's Gram matrix: closed form for 2, else power
    iteration on the Gram matrix, stopped when the Kato–Temple inequality proves
    ``σ₁²`` within ``1e-9`` of the block's error, or ``eigvalsh`` when that proof
    does not come within 24 steps (exact to rounding).  Larger blocks use power
    iteration, started from ``B``'s own
    block (exactly rank one on a rank-one split: its top singular vector comes from
    ``B``'s fused factors, and is close to the block's when ``B`` fits well; from the
    block's largest row otherwise), and stopped, testing after every half-step, when
    the Kato–Temple inequality proves ``σ₁²`` within ``1e-9`` of the block's error,
    which applies whenever ``σ₁²`` holds more than half of the block's energy (blocks
    whose best rank-one error is below 70 % of their norm); for the other blocks the
    rule is the geometric-tail estimate of the factorization, not a proof (in the
    tests, Gaussian matrices: within ``1e-7``).  The start changes the work, not the
    answer: a poor ``B`` only costs more steps.  Where ``‖M‖² − σ₁²`` would cancel
    (a near-exact block, error below ``~3e-3`` of its norm) the error is that of an
    explicit rank-one approximation, computed directly from the block: an upper
    bound of the block's best error (but for rounding), above it by the rounding of
    its vector (``~1e-15`` of the block's norm: the Gram matrix's top eigenvector),
    or, for a block solved by power iteration, by at most ``1e-9`` of its error
    (Kato–Temple: the vector one power step from the start, or the power
    iteration's).  So the certificate of a single-precision exact product
    (which ``B`` fits only to ``~1e-7``) is computed, at rounding level: for the
    exact complex64 DFT at N = 4096, ``lower_bound`` is ``1.8e-8 ‖matrix‖`` and
    ``actual_error`` ``4.4e-7 ‖matrix‖``.

    **Cost.**  ``actual_error`` is one pass over the matrix, plus one gather when ``B``
    has permutations; when ``B`` fits to rounding that is all (the exact DFT: certify
    costs 0.5-0.7 and 1.0-1.1 factorizations at N = 1024 and 4096, the bit-reversal
    gather included).  Otherwise each ``E_l`` is an exact two-factor problem of its own,
    but the splits share memory traffic and, at the ends of the chain, arithmetic.  A
    tile of the matrix (rows ``i·m/R + r`` for ``i < R``, consecutive columns) holds
    whole blocks of several consecutive rank-one splits at once (``R`` rows per block of
    the last, the columns of a block of the first): tiles of at most 1 MiB are copied
    once into cache and the blocks of all those splits solved from there, so the
    ``L − 1`` splits cost one pass over the matrix per group (2 passes for the 9 splits
    of N = 1024, 3 for the 11 of N = 4096 and for the 12 of N = 8192, complex128; a
    split of rank > 1 is a pass of its own, an SVD per block).  The blocks of
    neighbouring splits nest (a block of split ``l + 1`` is the union of blocks of split
    ``l`` cut to fewer columns), so the Gram matrices of the splits with 2 to 8 rows are
    sums of those of the 16-row split, and the same for columns: at N = 4096 only splits
    4 and 8 form Gram matrices from the data, and only 5, 6 and 7 run power
    iteration.  The only factor values built for the ``E_l`` are the start vectors (``B``
    fused on the cheaper side of each split, at most ``~N^1.5`` values).  A balanced
    factorization costs about two passes (its root split and the much smaller nodes
    below).  Measured on a 2-core machine shared with other jobs
    (``docs/certificate.md``, ``python benchmarks/certificate_bounds.py --cost-only``,
    load 0.7-0.8, session 10, three runs): certify costs 1.6-2.1 factorizations of a
    noisy DFT at N = 1024 and 2.7-3.0 at N = 4096 (CPU time 1.8-2.3 and
    2.6-2.9).  Near-exact blocks (every block of a DFT with 1e-7 noise) get their errors
    from the block once more: two sweeps of the tile's planes for those with a Gram
    matrix (one for blocks of two rows or columns), and for those solved by power
    iteration two reads of the tile's row planes (the start vector's first product, then
    the error along it), without a copy of the block, when Kato–Temple proves the start
    (from ``B``) good enough.  There certify costs 2.4-3.5 factorizations at N = 1024 and
    3.4-4.0 at N = 4096 (CPU time 3.5-3.8 and 3.8-4.0; the near-exact DFT also
    factorizes faster than the noisy one).
    Memory: one copy of the matrix when ``B`` has a row or column permutation or zero
    padding, none otherwise.

    A ``B`` on the transpose of a chainable chain (``B.chain.reversed``, e.g.
    ``factorize(...).H``) is certified through the transposed problem, which has the
    same errors; no upper bound is proven for it (it does not come from ``factorize``).

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> from fastbfly.certificate import certify
    >>> F = np.fft.fft(np.eye(64))
    >>> cert = certify(F, fastbfly.factorize(F, perm="bitrev"))
    >>> cert.relative_lower_bound < 1e-13, cert.relative_actual_error < 1e-13
    (True, True)
    >>> rng = np.random.default_rng(0)
    >>> noise = rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64))
    >>> Z = F + 0.1 * np.linalg.norm(F) / np.linalg.norm(noise) * noise
    >>> cert = certify(Z, fastbfly.factorize(Z, perm="bitrev", tree="left-to-right"))
    >>> cert.lower_bound <= cert.actual_error <= cert.proven_upper_bound
    True
    >>> 1.0 <= cert.ratio < 1.2
    True
    """
    if not isinstance(B, Butterfly):
        raise TypeError(f"B must be a fastbfly.Butterfly, got {type(B).__name__}")
    matrix = _as_matrix(matrix)
    if matrix.shape != B.shape:
        raise ValueError(f"matrix of shape {matrix.shape} does not match B of shape {B.shape}")
    chain = B.chain
    if getattr(chain, "reversed", False):
        # The transpose of a chainable product (e.g. ``factorize(...).H``): certify the
        # transposed problem, which has the same errors, split ``l`` becoming ``L - l``
        # (checked for NaN and Inf here, to name the index in ``matrix``).
        if not np.all(np.isfinite(matrix)):
            _raise_not_finite(matrix)
        mirrored = certify(np.conj(matrix).T, B.H)
        return dataclasses.replace(
            mirrored, chain=chain, split_errors=mirrored.split_errors[::-1], tree=None,
            orthonormalize=None,
        )
    full = chain.fused(0, len(chain))
    if full.a != 1 or full.d != 1:
        raise ValueError(
            f"the chain's product has pattern {tuple(full)}, not a full matrix (1, m, n, 1): "
            f"certify supports chains whose first pattern has a = 1 and last d = 1"
        )

    tree = B.info.get("tree")
    if tree is not None:
        try:  # a tree saved by fastbfly.save may come back as lists
            tree = build_tree(tree, len(chain)).to_nested()
        except (TypeError, ValueError):
            tree = None

    started = time.perf_counter()
    # (M, N) = padded matrix[row_perm][:, perm]; the padding's entries count as "outside"
    target, row_inside, column_inside = _target(matrix, B)
    values = [f.values for f in B.factors]
    gather_seconds = time.perf_counter() - started

    # The product first: NaN and Inf are not looked for up front (a pass of its own),
    # the product's pass finds them (a norm that is not finite).
    started = time.perf_counter()
    norm, actual, padded = _errors.product_errors(
        target, chain, values, None, row_inside, column_inside)
    if not math.isfinite(norm):
        _raise_not_finite(matrix)
    product_seconds = time.perf_counter() - started

    started = time.perf_counter()
    # B fits to rounding: its own error bounds every E_l from above, to within rounding
    # (B is a two-factor product at every split); computing them would only resolve
    # rounding errors, at the price of their near-exact blocks (2-8 times the noisy
    # matrices' cost, measured at N = 4096).
    fit = EXACT_FIT[np.dtype(matrix.dtype.char.lower())]
    bounded = len(chain) > 1 and padded <= fit * norm
    if bounded:
        errors = np.full(len(chain) - 1, padded)
    else:
        # B's own blocks (exactly rank one) start the power iterations near their answer
        errors = _errors.split_errors(target, chain, values=values) if len(chain) > 1 else np.empty(0)
    split_seconds = gather_seconds + time.perf_counter() - started
    return Certificate(
        chain=chain,
        split_errors=tuple(float(e) for e in errors),
        norm=norm,
        actual_error=actual,
        padded_error=padded,
        tree=tree,
        orthonormalize=B.info.get("orthonormalize"),
        split_seconds=split_seconds,
        product_seconds=product_seconds,
        split_errors_bounded=bool(bounded),
    )


def _raise_not_finite(matrix: np.ndarray):
    where = tuple(int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
    raise ValueError(f"matrix contains NaN or Inf (first at index {where}); cannot certify")


def _target(matrix: np.ndarray, B: Butterfly) -> tuple:
    """``(target, row_inside, column_inside)``: ``matrix`` zero-padded to
    ``B.chain.shape`` with rows and columns permuted by ``B.row_perm`` and ``B.perm``
    (``matrix`` itself when nothing changes), and which rows and columns of it come from
    ``matrix`` (``None``: all of them).

    The permuted copy costs one gather (`_errors.gather`; the split groups and the
    product then read contiguous rows instead of gathering scattered columns each
    time)."""
    m, n = matrix.shape
    big_m, big_n = B.chain.shape
    rows, columns = B.row_perm, B.perm
    if (big_m, big_n) == (m, n):
        if rows is None and columns is None:
            return matrix, None, None
        return _errors.gather(matrix, rows, columns), None, None
    rows = np.arange(big_m) if rows is None else rows
    columns = np.arange(big_n) if columns is None else columns
    row_inside = rows < m
    column_inside = columns < n
    target = np.zeros((big_m, big_n), dtype=matrix.dtype)
    # target[i, j] = matrix[rows[i], columns[j]] where both are inside, zero elsewhere
    target[np.ix_(row_inside, column_inside)] = matrix[np.ix_(rows[row_inside], columns[column_inside])]
    return target, row_inside, column_inside
