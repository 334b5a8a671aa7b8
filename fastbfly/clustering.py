"""Recover unknown row and column permutations of a square dyadic butterfly product.

If ``Z = P X_1 ⋯ X_J Q`` with unknown permutation matrices ``P``, ``Q``, the hierarchical
algorithm needs the permutations first.  Following the idea of Zheng, Riccietti and
Gribonval (*Butterfly factorization by algorithmic identification of rank-one blocks*,
2023) — find, level by level, the row and column groups whose blocks are rank one — this
module identifies them with a greedy pairing that is exact on exact products.

The structure used (square dyadic chain, ``N = 2^J``): at the first split the rows come
in ``N/2`` *pairs* ``{j, j + N/2}`` and the columns in two *halves*, and each pair
restricted to each half is a rank-one ``2 × N/2`` block.  Collapsing every such block to
its row vector ``σ vᴴ`` leaves, for each half, an ``N/2 × N/2`` butterfly product with the
same rows (the pairs) for both halves, so the same step repeats ``J`` times.  A row's
position is read off its side in each pair (most significant bit first) and a column's
from the halves it falls in.
"""

from __future__ import annotations

import numpy as np

from .factorization import _as_matrix
from .patterns import log2_exact

__all__ = ["recover_permutations"]

# Rounds of (halves given pairs, pairs given halves) at every level.
MAX_ALTERNATIONS = 5
# Starts tried per level (the strongest row units as seeds); the relative loss below
# which a start is taken as exact, and the relative difference under which two starts
# agree (either ends the search).
SEEDS = 8
EXACT_LOSS = 1e-24
AGREE_TOL = 1e-9
# Sweeps of pairwise exchanges improving a matching, and the relative gain that counts.
MAX_EXCHANGE_SWEEPS = 100
EXCHANGE_TOL = 1e-12


def recover_permutations(matrix):
    """Row and column permutations that make ``matrix`` a square dyadic butterfly product.

    Parameters
    ----------
    matrix : (N, N) array_like
        ``N`` a power of two; float or complex.  A butterfly product on
        ``Chain.square_dyadic(N)`` whose rows and columns were shuffled, possibly noisy.

    Returns
    -------
    row_perm, perm : (N,) int64 arrays
        ``matrix[row_perm][:, perm]`` is (close to) a butterfly product; pass them to
        ``fastbfly.factorize(matrix, row_perm=row_perm, perm=perm)``.  The
        permutations are not unique (swapping the rows of a pair or two column halves
        keeps a butterfly), so compare errors, not permutations.

    Raises
    ------
    ValueError
        If ``matrix`` is not square with a power-of-two size, or has NaN or Inf.

    Notes
    -----
    At each of the ``J`` levels, with ``n = N / 2^k`` row units and ``2^k`` column groups of
    ``n`` columns each:

    1. *Seed.*  For a strong row unit and every candidate partner, the columns of each
       group are seen as points ``(x_r, x_r')`` of the projective line (Bloch vectors,
       weighted by ``|x|²``); a true partner puts them on exactly two points, one per
       half.  The best candidate's balanced split of every group (along the principal
       axis, at the median) gives the first halves.
    2. *Pairing.*  With the halves fixed, every pair of row units is scored by the
       energy its ``2 × n/2`` blocks lose to rank one (smaller eigenvalue of a 2 × 2
       Gram matrix, all pairs at once from one ``B Bᴴ`` per half), relative to its
       weaker row; pairs are taken greedily, lowest score first, then improved by
       pairwise exchanges that lower the total loss (this level's two-factor error).
       Fixing the halves first is what resolves matrices like Hadamard's, where every
       pair of rows is rank one on *some* pair of halves.
    3. *Halves from pairs.*  Per group, the better (lower loss) of a re-assignment of
       each column to the half whose pair directions explain it best, and a spectral
       split: columns of one half are parallel in every pair, so the matrix
       ``D(c, c') = Σ_p |x_pc y_pc' − y_pc x_pc'|²`` vanishes inside halves and the
       eigenvector of its smallest eigenvalue separates them.  Steps 2 and 3 alternate
       until the pairs settle; steps 1–3 run from up to ``SEEDS = 8`` strongest row
       units and the start with the least loss is kept; the search stops once two
       starts agree on it (or at once for an exact product).
    4. *Collapse.*  Each (pair, half) block becomes its best rank-one row ``σ vᴴ``.

    Each level picks a local optimum of its own two-factor error, greedily, level after
    level, so mistakes made under heavy noise are not undone later.

    Where it succeeds (error of ``factorize`` with the recovered permutations within 1 %
    of the error with the true ones; ``docs/clustering.md``,
    ``benchmarks/clustering_recovery.py``; noise ``σ`` relative to ``‖matrix‖``):
    exact products always (random complex and real factors, DFT, Hadamard; N = 2 to
    1024); the DFT up to ``σ = 0.3`` (and 1.0 at N = 256), the Hadamard matrix up to
    ``σ = 1``; random complex factors up to ``σ = 0.1`` in most draws (13 of 13 trials at
    N = 64, 3 of 3 at N = 256, 1 of 1 at N = 1024; a failing draw at N = 64 exists),
    less reliably at 0.3; random real factors only up to ``σ ≈ 0.01–0.03`` (their
    blocks have a wide range of energies and one wrong pairing early propagates).

    Cost: ``O(N³)`` at level 0 (Gram matrices, ``N × N`` eigenproblems), a quarter of
    it per further level, plus Python overhead per column group at the deep levels,
    times the number of starts (1 for exact input, up to 8 with noise).  Measured on 2
    busy cores: 1–6 s at N = 256 and about a minute at N = 1024 for exact input;
    5–90 s at N = 256 and ~4 minutes at N = 1024 with noise.  Memory ``O(N²)``.

    Examples
    --------
    >>> import numpy as np, fastbfly
    >>> from fastbfly.clustering import recover_permutations
    >>> rng = np.random.default_rng(0)
    >>> F = np.fft.fft(np.eye(64))
    >>> Z = F[rng.permutation(64)][:, rng.permutation(64)]
    >>> fastbfly.factorize(Z).info["relative_error"] > 0.5
    True
    >>> rows, cols = recover_permutations(Z)
    >>> B = fastbfly.factorize(Z, row_perm=rows, perm=cols)
    >>> bool(np.linalg.norm(B.toarray() - Z) < 1e-10 * np.linalg.norm(Z))
    True
    """
    matrix = _as_matrix(matrix)
    m, n = matrix.shape
    if m != n:
        raise ValueError(f"recover_permutations needs a square matrix, got shape {matrix.shape}")
    n_levels = log2_exact(n, "the matrix size")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("matrix contains NaN or Inf")
    work = matrix.astype(np.complex128)

    # Row units: each holds original rows with their position offsets so far.
    members = [np.array([r]) for r in range(n)]
    offsets = [np.array([0]) for _ in range(n)]
    groups = [np.arange(n)]  # column groups (original indices), in final order
    blocks = [work]  # blocks[g]: (units, len(groups[g])) reduced matrix of group g
    for level in range(n_levels):
        halves, pairs = _solve_level(blocks)
        weight = n >> (level + 1)  # position bit of the second member of each pair
        new_members, new_offsets = [], []
        for first, second in pairs:
            new_members.append(np.concatenate([members[first], members[second]]))
            new_offsets.append(np.concatenate([offsets[first], offsets[second] + weight]))
        new_groups, new_blocks = [], []
        for g, block in enumerate(blocks):
            for half in halves[g]:
                new_groups.append(groups[g][half])
                new_blocks.append(_collapse(block[:, half], pairs))
        members, offsets, groups, blocks = new_members, new_offsets, new_groups, new_blocks

    row_perm = np.empty(n, dtype=np.int64)
    row_perm[offsets[0]] = members[0]
    perm = np.concatenate(groups).astype(np.int64)
    return row_perm, perm


def _solve_level(blocks):
    """Pairs of row units and halves of every group for one level: from each of the
    ``SEEDS`` strongest row units, seed the halves, then alternate (pairs given halves,
    halves given pairs) until the pairs settle; keep the start losing least to rank one.
    Stop early once two starts agree on the least loss (or one is exact)."""
    energy = sum(np.sum(np.abs(b) ** 2, axis=1) for b in blocks)
    total = float(np.sum(energy))
    best, agreeing = None, 0
    for seed in np.argsort(-energy, kind="stable")[:SEEDS]:
        halves = _seed_halves(blocks, int(seed))
        pairs = _pair_units(blocks, halves)
        for _ in range(MAX_ALTERNATIONS):
            halves = _best_halves(blocks, pairs, halves)
            new_pairs = _pair_units(blocks, halves)
            if set(new_pairs) == set(pairs):
                break
            pairs = new_pairs
        loss = sum(_group_loss(block, pairs, h) for block, h in zip(blocks, halves))
        if best is not None and abs(loss - best[0]) <= AGREE_TOL * max(best[0], 1e-300):
            agreeing += 1
        elif best is None or loss < best[0]:
            best, agreeing = (loss, halves, pairs), 1
        if loss <= EXACT_LOSS * total or agreeing >= 2:
            break
    return best[1], best[2]


def _bloch(x, y):
    """Weighted Bloch vectors of the points ``(x, y)`` of the projective line:
    ``(|x|² − |y|², 2 Re x ȳ, 2 Im x ȳ)``, whose length is ``|x|² + |y|²``."""
    cross = x * np.conj(y)
    return np.stack([np.abs(x) ** 2 - np.abs(y) ** 2, 2 * cross.real, 2 * cross.imag], axis=-1)


def _balanced_split(points, weights):
    """Split weighted 3-D points (``(..., n, 3)``) into two halves of ``n/2`` along the
    principal axis; return the labels (bool, ``(..., n)``) and the within-halves
    weighted sum of squares relative to the total one (``(...,)``)."""
    n = points.shape[-2]
    total_w = weights.sum(-1, keepdims=True)
    total_w = np.where(total_w > 0, total_w, 1.0)
    mean = (weights[..., None] * points).sum(-2, keepdims=True) / total_w[..., None]
    centred = points - mean
    cov = np.einsum("...i,...ij,...ik->...jk", weights, centred, centred)
    _, vectors = np.linalg.eigh(cov)
    axis = vectors[..., :, -1]
    projection = np.einsum("...ij,...j->...i", centred, axis)
    order = np.argsort(projection, axis=-1)
    labels = np.zeros(projection.shape, dtype=bool)
    np.put_along_axis(labels, order[..., n // 2:], True, axis=-1)
    within = np.zeros(projection.shape[:-1])
    for side in (False, True):
        mask = (labels == side).astype(float) * weights
        w = mask.sum(-1, keepdims=True)
        w = np.where(w > 0, w, 1.0)
        centre = (mask[..., None] * points).sum(-2, keepdims=True) / w[..., None]
        within += np.einsum("...i,...ij->...", mask, (points - centre) ** 2)
    total = np.einsum("...i,...ij->...", weights, centred ** 2)
    return labels, within / np.where(total > 0, total, 1.0)


def _seed_halves(blocks, seed):
    """Halves of every column group from row unit ``seed`` and its best partner."""
    score = np.zeros(blocks[0].shape[0])
    splits = []
    for block in blocks:
        if block.shape[1] == 1:
            splits.append(None)
            continue
        points = _bloch(block[seed][None, :], block)  # (units, columns, 3)
        weights = np.linalg.norm(points, axis=-1)  # = |x|² + |y|²
        directions = points / np.where(weights > 0, weights, 1.0)[..., None]
        labels, within = _balanced_split(directions, weights)
        score += within
        splits.append(labels)
    score[seed] = np.inf
    partner = int(np.argmin(score))
    halves = []
    for block, labels in zip(blocks, splits):
        if labels is None:  # one column left: nothing to split (last level)
            halves.append((np.array([0]), np.array([], dtype=np.int64)))
        else:
            halves.append((np.flatnonzero(~labels[partner]), np.flatnonzero(labels[partner])))
    return halves


def _pair_scores(blocks, halves):
    """Energy each pair of row units loses to rank one on every (group, half): relative
    to the energy of the weaker row (the loss cannot exceed it, so a weak row does not
    look well paired just because its partner is strong), and absolute; ``inf`` on the
    diagonals."""
    units = blocks[0].shape[0]
    lost = np.zeros((units, units))
    energy = np.zeros((units, units))
    for block, (first, second) in zip(blocks, halves):
        for half in (first, second):
            if half.size == 0:
                continue
            part = block[:, half]
            gram = part @ part.conj().T  # (units, units)
            d = np.real(np.diag(gram))
            trace = d[:, None] + d[None, :]
            det = np.maximum(d[:, None] * d[None, :] - np.abs(gram) ** 2, 0.0)
            root = np.sqrt(np.maximum(trace ** 2 - 4 * det, 0.0))
            # smaller eigenvalue of [[d_r, g], [ḡ, d_r']] without cancellation
            lost += np.where(trace > 0, 2 * det / np.where(trace + root > 0, trace + root, 1.0), 0.0)
            energy += np.minimum(d[:, None], d[None, :])
    scores = lost / np.where(energy > 0, energy, 1.0)
    np.fill_diagonal(scores, np.inf)
    np.fill_diagonal(lost, np.inf)
    return scores, lost


def _pair_units(blocks, halves):
    """Perfect matching of the row units: greedy on the relative scores (lowest first),
    then pairwise exchanges that lower the total absolute loss, which is this level's
    two-factor error; greedy alone can strand two rows whose partners were taken."""
    units = blocks[0].shape[0]
    if units == 2:
        return [(0, 1)]
    scores, lost = _pair_scores(blocks, halves)
    upper = np.triu_indices(units, 1)
    order = np.argsort(scores[upper], kind="stable")
    free = np.ones(units, dtype=bool)
    pairs = []
    for index in order:
        r, s = int(upper[0][index]), int(upper[1][index])
        if free[r] and free[s]:
            pairs.append((r, s))
            free[r] = free[s] = False
            if len(pairs) == units // 2:
                break
    return _exchange(pairs, lost)


def _exchange(pairs, lost):
    """2-opt on a matching: replace pairs ``(a, b), (c, d)`` by ``(a, c), (b, d)`` or
    ``(a, d), (b, c)`` while that lowers the summed ``lost``; disjoint improving
    exchanges are applied together, best first."""
    first = np.array([p[0] for p in pairs])
    second = np.array([p[1] for p in pairs])
    count = len(pairs)
    for _ in range(MAX_EXCHANGE_SWEEPS):
        current = lost[first, second]
        keep = current[:, None] + current[None, :]
        cross = lost[first[:, None], first[None, :]] + lost[second[:, None], second[None, :]]
        twist = lost[first[:, None], second[None, :]] + lost[second[:, None], first[None, :]]
        gain = keep - np.minimum(cross, twist)
        gain[np.tril_indices(count)] = 0.0
        candidates = np.argwhere(gain > EXCHANGE_TOL * np.maximum(keep, 1e-300))
        if candidates.size == 0:
            break
        candidates = candidates[np.argsort(-gain[candidates[:, 0], candidates[:, 1]])]
        touched = np.zeros(count, dtype=bool)
        for i, j in candidates:
            if touched[i] or touched[j]:
                continue
            touched[i] = touched[j] = True
            a, b, c, d = first[i], second[i], first[j], second[j]
            if cross[i, j] <= twist[i, j]:
                first[i], second[i], first[j], second[j] = a, c, b, d
            else:
                first[i], second[i], first[j], second[j] = a, d, b, c
    return [(int(a), int(b)) for a, b in zip(first, second)]


def _halves_from_pairs(blocks, pairs):
    """Halves of every group from all pairs at once, spectrally.

    Two columns ``c, c'`` of one half are parallel in every pair ``(x, y)``:
    ``det_p(c, c') = x_c y_c' − y_c x_c' = 0``.  With ``D(c, c') = Σ_p |det_p(c, c')|²``
    (by Cauchy–Binet, the determinants of the pairs' 2 × 2 Gram matrices add up from
    these), the halves minimise ``sᵀ D s`` over balanced signs ``s``; for an exact
    product ``D = [[0, C], [Cᵀ, 0]]`` with ``C > 0`` and the eigenvector of the smallest
    eigenvalue, ``(u, −v)``, has the halves as its signs.  Split at its median.
    """
    first_rows = np.array([p[0] for p in pairs])
    second_rows = np.array([p[1] for p in pairs])
    halves = []
    for block in blocks:
        columns = block.shape[1]
        if columns == 1:
            halves.append((np.array([0]), np.array([], dtype=np.int64)))
            continue
        x, y = block[first_rows], block[second_rows]  # (pairs, columns)
        x2, y2 = np.abs(x) ** 2, np.abs(y) ** 2
        q = x * np.conj(y)
        # |x_c y_c' − y_c x_c'|² = |x_c|²|y_c'|² + |y_c|²|x_c'|² − 2 Re(x_c ȳ_c · x̄_c' y_c')
        D = x2.T @ y2 + y2.T @ x2 - 2 * np.real(q.T @ np.conj(q))
        vector = np.linalg.eigh(D)[1][:, 0]
        order = np.argsort(vector, kind="stable")
        halves.append((np.sort(order[: columns // 2]), np.sort(order[columns // 2:])))
    return halves


def _best_halves(blocks, pairs, halves):
    """Of the halves re-assigned from the current ones and those computed afresh from
    the pairs, per group the ones losing less to rank one."""
    candidates = (_refine_halves(blocks, pairs, halves), _halves_from_pairs(blocks, pairs))
    chosen = []
    for g, block in enumerate(blocks):
        losses = [_group_loss(block, pairs, option[g]) for option in candidates]
        chosen.append(candidates[int(np.argmin(losses))][g])
    return chosen


def _group_loss(block, pairs, halves):
    """Energy the pairs lose to rank one on the two halves of one group."""
    stacked = np.stack([block[[p[0] for p in pairs]], block[[p[1] for p in pairs]]], axis=1)
    loss = 0.0
    for half in halves:
        if half.size:
            part = stacked[:, :, half]
            gram = part @ part.conj().transpose(0, 2, 1)
            loss += float(np.sum(np.linalg.eigvalsh(gram)[:, 0]))
    return loss


def _refine_halves(blocks, pairs, halves):
    """Re-assign the columns of every group to halves given the pairs: each half has,
    for every pair, a best direction ``u`` in ``C²`` (top singular vector of the pair's
    block on that half); a column goes to the half whose directions explain it best
    (least ``Σ_pairs |x|² − |uᴴx|²``), the ``n/2`` columns preferring the second half
    most forming it.  One step of alternating minimisation of the rank-one loss."""
    refined = []
    first_rows = np.array([p[0] for p in pairs])
    second_rows = np.array([p[1] for p in pairs])
    for block, current in zip(blocks, halves):
        columns = block.shape[1]
        if columns == 1:
            refined.append(current)
            continue
        stacked = np.stack([block[first_rows], block[second_rows]], axis=1)  # (pairs, 2, columns)
        energy = np.sum(np.abs(stacked) ** 2, axis=1)  # (pairs, columns)
        lost = []
        for half in current:
            part = stacked[:, :, half]
            gram = part @ part.conj().transpose(0, 2, 1)  # (pairs, 2, 2)
            u = np.linalg.eigh(gram)[1][..., :, -1]  # (pairs, 2)
            explained = np.abs(np.einsum("pi,pic->pc", u.conj(), stacked)) ** 2
            lost.append(np.sum(energy - explained, axis=0))  # (columns,)
        preference = lost[0] - lost[1]  # large: the second half explains it better
        order = np.argsort(preference, kind="stable")
        refined.append((np.sort(order[: columns // 2]), np.sort(order[columns // 2:])))
    return refined


def _collapse(part, pairs):
    """One row per pair: the best rank-one approximation ``u σ vᴴ`` of the 2-row block,
    kept as ``σ vᴴ`` (``u`` only rescales the row, which rank-one tests ignore)."""
    first = part[[p[0] for p in pairs]]
    second = part[[p[1] for p in pairs]]
    if part.shape[1] == 0:
        return np.zeros((len(pairs), 0), dtype=part.dtype)
    stacked = np.stack([first, second], axis=1)  # (pairs, 2, columns)
    # top left singular vector from the 2 × 2 Gram matrix, then uᴴ · block = σ vᴴ
    gram = stacked @ stacked.conj().transpose(0, 2, 1)
    _, vectors = np.linalg.eigh(gram)
    u = vectors[..., :, -1]  # (pairs, 2)
    return np.einsum("pi,pic->pc", u.conj(), stacked)
