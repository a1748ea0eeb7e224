"""The signal suite: targets planted in real ECAM samples, one per kind of signal.

Microbiome studies look for a few kinds of signal: how much of a few ASVs
there is, whether they are there at all, a clade that responds together, the
balance of two taxa, ASVs that matter only under one condition, and classes
made from any of these. Each target here plants one kind in **real** samples:
the ECAM table's own abundance profiles and ASV sequences (tens of ASVs per
sample, thousands of distinct ones), so a model meets the sparsity and
prevalence of real data, not an easy generator's.

For a suite of ``n_samples`` samples drawn (seeded) from the dataset:

* the planted ASVs have a prevalence between 0.2 and 0.7 in those samples;
* ``l_j = log10(max(rel_j, 1e-4))`` is ASV ``j``'s log relative abundance
  (absent ASVs sit at the floor, -4), ``z(.)`` a standardisation over the
  samples;
* Gaussian noise is added so that the noise-free function (the *oracle*)
  explains ``oracle_r2`` (default 0.9) of the target's variance.

============== ============================================================
``abundance``  ``sum_j b_j z(l_j)`` over 5 planted ASVs, signs ``b_j`` = ±1
``presence``   ``sum_j b_j z(1[ASV j present])`` over 5 planted ASVs
``clade``      ``z(log10(max(sum of the clade's rel, 1e-4)))``: a subtree of
               the phylogeny with 8-40 of the samples' ASVs, present (any
               member) in 30-70% of the samples
``log-ratio``  ``z(l_a - l_b)`` of two planted ASVs
``interaction`` ``sum_j b_j z(l_j) * 1[season == v_j]`` over 4 planted ASVs
               (two count only in season 'a', two only in 'b') plus
               ``sum_j b_j z(l_j)`` over 2 planted main-effect ASVs. Columns
               ``season`` and ``site`` ('a'/'b', independent of the samples;
               ``site`` carries no signal)
``abundance-class`` the ``abundance`` target split at its median: 2 classes
============== ============================================================

Nothing here imports torch or QIIME 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("abundance", "presence", "clade", "log-ratio", "interaction", "abundance-class")
FLOOR = 1e-4
PREVALENCE = (0.2, 0.7)


@dataclass
class SignalTarget:
    """One target of the suite.

    ``counts`` ``(n, n_features)`` real read counts, ``sequences`` the
    features' DNA (feature IDs are the sequences), ``y`` the target
    (float, or class labels ``"high"``/``"low"``), ``oracle`` the
    noise-free function (or, for classes, the class it implies), ``planted``
    the feature indices that carry the signal (for ``interaction``: those
    whose effect depends on ``season``), ``categorical`` ``{column: values}``
    (only ``interaction`` has columns), ``train``/``test`` row indices.
    """

    kind: str
    counts: np.ndarray
    sequences: list
    sample_ids: list
    y: np.ndarray
    oracle: np.ndarray
    planted: list
    train: np.ndarray
    test: np.ndarray
    categorical: dict = field(default_factory=dict)
    main_effects: list = field(default_factory=list)

    @property
    def classification(self) -> bool:
        return self.y.dtype.kind in "OUS"


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _with_noise(signal: np.ndarray, oracle_r2: float, rng) -> np.ndarray:
    """``signal`` plus noise that leaves it ``oracle_r2`` of the variance."""
    var = signal.var()
    noise_sd = np.sqrt(var * (1 / oracle_r2 - 1))
    return signal + rng.normal(0, noise_sd, len(signal))


def _clade(tree, features: list, present: np.ndarray, rng) -> list:
    """Column indices of a subtree's ASVs (8-40 of them, present together in 30-70%)."""
    column = {f: i for i, f in enumerate(features)}
    candidates = []
    for node in tree.non_tips(include_self=False):
        members = [column[t.name] for t in node.tips() if t.name in column]
        if not 8 <= len(members) <= 40:
            continue
        prevalence = present[:, members].any(axis=1).mean()
        if 0.3 <= prevalence <= 0.7:
            candidates.append(sorted(members))
    if not candidates:
        raise ValueError("No subtree of the phylogeny has 8-40 of the samples' ASVs present "
                         "in 30-70% of the samples.")
    unique = sorted({tuple(c) for c in candidates})
    return list(unique[rng.integers(len(unique))])


def _draw_samples(table, n_samples: int, rng):
    """``n_samples`` rows of ``table`` drawn at random (kept in table order), cut to the
    features present in them: (counts, feature IDs, sample IDs)."""
    all_counts = table.matrix_data.T.toarray()  # (samples, features)
    rows = np.sort(rng.choice(all_counts.shape[0], n_samples, replace=False))
    counts = all_counts[rows]
    kept = counts.sum(axis=0) > 0
    counts = counts[:, kept]
    features = [f for f, k in zip(table.ids(axis="observation"), kept) if k]
    sample_ids = [table.ids()[r] for r in rows]
    return counts, features, sample_ids


def _interaction(log_rel: np.ndarray, pick, signs, n_samples: int, rng):
    """The ``interaction`` signal: 4 ASVs that count only in one season, 2 main effects.

    Returns (planted, signal, categorical, main_effects).
    """
    chosen = pick(6)
    order = rng.permutation(chosen)
    planted, main_effects = sorted(order[:4].tolist()), sorted(order[4:].tolist())
    season = rng.choice(["a", "b"], n_samples)
    categorical = {"season": season.tolist(),
                   "site": rng.choice(["a", "b"], n_samples).tolist()}
    values = {j: "ab"[i % 2] for i, j in enumerate(order[:4].tolist())}
    b = signs(6)
    signal = sum(b[i] * _z(log_rel[:, j]) * (season == values[j])
                 for i, j in enumerate(order[:4].tolist()))
    signal = signal + sum(b[4 + i] * _z(log_rel[:, j]) for i, j in enumerate(main_effects))
    return planted, signal, categorical, main_effects


def _plant(kind: str, tree, counts: np.ndarray, features: list, n_samples: int, rng):
    """The noise-free signal of ``kind`` planted in ``counts``.

    Returns (planted, signal, categorical, main_effects).
    """
    rel = counts / counts.sum(axis=1, keepdims=True)
    present = counts > 0
    log_rel = np.log10(np.maximum(rel, FLOOR))
    prevalence = present.mean(axis=0)
    eligible = np.flatnonzero((prevalence >= PREVALENCE[0]) & (prevalence <= PREVALENCE[1]))

    def pick(n):
        return sorted(rng.choice(eligible, n, replace=False).tolist())

    def signs(n):
        return rng.choice([-1.0, 1.0], n)

    if kind == "interaction":
        return _interaction(log_rel, pick, signs, n_samples, rng)
    if kind in ("abundance", "abundance-class"):
        planted = pick(5)
        signal = sum(b * _z(log_rel[:, j]) for b, j in zip(signs(5), planted))
    elif kind == "presence":
        planted = pick(5)
        signal = sum(b * _z(present[:, j].astype(float)) for b, j in zip(signs(5), planted))
    elif kind == "clade":
        planted = _clade(tree, features, present, rng)
        signal = _z(np.log10(np.maximum(rel[:, planted].sum(axis=1), FLOOR)))
    else:  # log-ratio
        planted = pick(2)
        signal = _z(log_rel[:, planted[0]] - log_rel[:, planted[1]])
    return planted, signal, {}, []


def make_target(dataset, kind: str, *, n_samples: int = 600, test_fraction: float = 0.2,
                oracle_r2: float = 0.9, seed: int = 0) -> SignalTarget:
    """A target of kind ``kind`` planted in ``n_samples`` of ``dataset``'s samples.

    ``dataset``: an :class:`~q2_aam.example_data.mitre.Dataset` (ECAM; any
    dataset whose feature IDs are DNA and that has a tree). The same
    ``seed`` gives the same samples, planted ASVs, noise and split.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    counts, features, sample_ids = _draw_samples(dataset.table, n_samples, rng)
    planted, signal, categorical, main_effects = _plant(kind, dataset.tree, counts,
                                                        features, n_samples, rng)
    y = _with_noise(signal, oracle_r2, rng)
    oracle = signal
    if kind == "abundance-class":
        cut = np.median(y)
        y = np.where(y > cut, "high", "low").astype(object)
        oracle = np.where(signal > cut, "high", "low").astype(object)
    order = rng.permutation(n_samples)
    n_test = int(round(test_fraction * n_samples))
    return SignalTarget(kind=kind, counts=counts, sequences=features, sample_ids=sample_ids,
                        y=y, oracle=oracle, planted=[int(j) for j in planted],
                        main_effects=[int(j) for j in main_effects],
                        train=np.sort(order[n_test:]), test=np.sort(order[:n_test]),
                        categorical=categorical)
