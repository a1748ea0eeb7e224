"""Classical anchors for tables whose features differ from the training table's.

A model on feature IDs can only read a test feature that the training table has. The
anchors here show what a careful user gets without q2-aam:

* ``random forest (default)``: q2-sample-classifier's default forest (100 trees, read
  counts of every training feature, ``random_state=0``), on feature IDs: a test feature
  the training table lacks is dropped;
* ``extra-trees (tuned)``: 500 trees, ``max_features=0.33``, log10(relative abundance +
  1e-5) of the training features held by >= 2 % of the training samples, on feature IDs;
* ``... + nearest``: the same, after each test feature that the training table lacks is
  counted as its nearest training sequence (``q2_aam.core.vocabulary.nearest``, alignment
  identity >= 97 %, as closed-reference OTU picking would), or dropped without one;
* ``extra-trees on k-mers``: 500 trees, ``max_features=0.33``, on each sample's
  abundance-weighted profile of 6-mers (every ASV's k-mer frequencies weighted by its
  relative abundance): a model that reads sequences, not IDs.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

FORESTS = ("random forest (default)", "extra-trees (tuned)")
ANCHORS = FORESTS + tuple(f"{m} + nearest" for m in FORESTS) + ("extra-trees on k-mers",)
KMER = 6


def counts_of(table, sample_ids) -> tuple[sp.csr_matrix, list]:
    """``(samples, features)`` read counts of ``sample_ids`` (in that order) and the
    feature IDs (sequences) of ``table``, features without reads in them dropped."""
    sub = table.filter(list(sample_ids), axis="sample", inplace=False)
    sub = sub.sort_order(list(sample_ids), axis="sample")
    counts = sp.csr_matrix(sub.matrix_data.T, dtype=np.float64)
    held = np.asarray(counts.sum(axis=0)).ravel() > 0
    ids = [str(i) for i, h in zip(sub.ids(axis="observation"), held) if h]
    return counts[:, held].tocsr(), ids


def project(counts: sp.csr_matrix, ids: list, onto: list, nearest: bool,
            log=None) -> tuple[sp.csr_matrix, float]:
    """``counts`` of features ``ids`` as counts of the features ``onto`` (by exact sequence;
    with ``nearest``, features ``onto`` lacks are counted as their nearest sequence in it,
    at 97 % identity or more); what cannot be placed is dropped. Also returns the share of
    the reads that fell on a feature other than their own."""
    from q2_aam.core.vocabulary import nearest as nearest_rows
    position = {s: i for i, s in enumerate(onto)}
    column = np.array([position.get(s, -1) for s in ids])
    new = np.flatnonzero(column < 0)
    if nearest and len(new):
        rows, _ = nearest_rows([ids[i] for i in new], onto, log=log)
        column[new] = rows - 1
    placed = column >= 0
    moved = np.zeros(len(ids), dtype=bool)
    moved[new] = placed[new]
    total = max(float(counts.sum()), 1e-300)
    share = float(counts[:, moved].sum()) / total
    mapping = sp.csr_matrix((np.ones(int(placed.sum())),
                             (np.flatnonzero(placed), column[placed])),
                            shape=(len(ids), len(onto)))
    return sp.csr_matrix(counts @ mapping), share


def kmer_profiles(counts: sp.csr_matrix, ids: list, k: int = KMER) -> np.ndarray:
    """``(samples, 4**k)``: each sample's k-mer frequencies, every ASV's own frequencies
    weighted by its relative abundance."""
    from q2_aam.core.vocabulary import _kmer_matrix
    per_asv = _kmer_matrix(ids, k).astype(np.float64)
    per_asv = sp.diags(1 / np.maximum(np.asarray(per_asv.sum(axis=1)).ravel(), 1)) @ per_asv
    rel = sp.diags(1 / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)) @ counts
    return np.asarray((rel @ per_asv).todense())


def fit_anchor(name: str, train_counts: sp.csr_matrix, train_ids: list, y: np.ndarray,
               classification: bool = False):
    """The anchor ``name`` (without ``+ nearest``) fitted on the training samples; returns
    ``predict(counts, ids, totals)`` for samples given as ``counts`` of features ``ids``
    (the training features for the models on IDs, any for the k-mer model) with
    ``totals`` reads in all."""
    from sklearn import ensemble
    kind = "Classifier" if classification else "Regressor"
    if name == "random forest (default)":
        model = getattr(ensemble, f"RandomForest{kind}")(100, random_state=0, n_jobs=1)
        model.fit(train_counts.toarray(), y)
        return lambda counts, ids, totals: model.predict(counts.toarray())
    extra = getattr(ensemble, f"ExtraTrees{kind}")(500, max_features=0.33, random_state=0,
                                                   n_jobs=1)
    if name == "extra-trees on k-mers":
        extra.fit(kmer_profiles(train_counts, train_ids), y)
        return lambda counts, ids, totals: extra.predict(kmer_profiles(counts, ids))
    if name != "extra-trees (tuned)":
        raise ValueError(f"unknown anchor {name!r}")
    kept = np.asarray((train_counts > 0).mean(axis=0)).ravel() >= 0.02

    def log_rel(counts, totals):
        rel = counts[:, kept].toarray() / np.maximum(np.asarray(totals, float), 1)[:, None]
        return np.log10(rel + 1e-5)
    extra.fit(log_rel(train_counts, np.asarray(train_counts.sum(axis=1)).ravel()), y)
    return lambda counts, ids, totals: extra.predict(log_rel(counts, totals))
