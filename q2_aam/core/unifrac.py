"""UniFrac distances for the pretraining loss: a precomputed matrix, or pairs computed as
each batch needs them.

:func:`unifrac_distances` chooses between the two by the number of samples
(``options.UNIFRAC_MATRIX_MAX_SAMPLES``) and computes the full matrix with the
``unifrac`` library.

The loss compares embedding distances with UniFrac over the pairs of one batch
(and, in validation, of the validation set), so it never needs all ``n x n``
distances at once. :class:`MatrixDistances` holds a precomputed matrix: the
fastest for small studies, but ``n x n`` doubles are 80 GB at 100,000 samples.
:class:`TreeDistances` computes the distances among any samples from the
phylogeny on demand, in memory linear in the number of samples: per call, the
work grows with the branches the samples touch, not with the tree or the study.

Why not ``unifrac.unweighted`` per batch: it rebuilds its view of the whole tree
on every call (about 60 ms for the 3,155-tip ECAM tree and a batch of 16, as
long as a training step), while here the tree is indexed once. Both give the
same numbers (``tests/test_unifrac_pairs.py`` compares them to the library).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .progress import stderr
from .options import UNIFRAC_MATRIX_MAX_SAMPLES, UNIFRAC_METRICS as METRICS, check_choice


class MatrixDistances:
    """Distances looked up in a precomputed ``(n, n)`` matrix (sample order)."""

    def __init__(self, matrix):
        self.matrix = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"A distance matrix must be square, got {tuple(self.matrix.shape)}.")

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to(self, device) -> "MatrixDistances":
        self.matrix = self.matrix.to(device)
        return self

    def between(self, index: torch.Tensor) -> torch.Tensor:
        """``(k, k)`` distances among the samples at ``index``."""
        index = index.to(self.matrix.device)
        return self.matrix[index][:, index]


class TreeDistances:
    """UniFrac among any of ``samples``, computed per call from the phylogeny.

    Args:
        samples: an :class:`~q2_aam.core.data.AmpliconSamples`; the counts used
            are the ones the model sees (each sample's ``token_limit`` most
            abundant ASVs), as for the precomputed matrix.
        tree: rooted ``skbio.TreeNode`` whose tips include every feature held
            by a sample.
        metric: ``unweighted`` or ``weighted-normalized``.
    """

    def __init__(self, samples, tree, metric: str = "unweighted"):
        check_choice("UniFrac metric", metric, METRICS)
        self.metric = metric
        self.indptr, self.indices = samples.indptr, samples.indices
        self.counts = samples.counts.astype(np.float64)
        used = np.unique(samples.indices)
        column = np.full(len(samples.feature_ids), -1, dtype=np.int64)
        column[used] = np.arange(len(used))
        self.column = column  # feature index -> column of the ancestor matrix
        tips = {t.name: t for t in tree.tips()}
        refuse_missing([samples.feature_ids[i] for i in used
                        if samples.feature_ids[i] not in tips])
        node_id: dict[int, int] = {}
        lengths: list[float] = []
        rows, cols = [], []
        for j, feature in enumerate(used):
            node = tips[samples.feature_ids[feature]]
            while node.parent is not None:  # the root has no branch above it
                key = id(node)
                if key not in node_id:
                    node_id[key] = len(lengths)
                    lengths.append(float(node.length or 0.0))
                rows.append(node_id[key])
                cols.append(j)
                node = node.parent
        # ancestors[b, j] = 1 when branch b lies between feature j's tip and the root.
        self.ancestors = sp.csr_matrix(
            (np.ones(len(rows)), (np.asarray(rows), np.asarray(cols))),
            shape=(len(lengths), len(used)))
        self.lengths = np.asarray(lengths)
        self.tip_depth = self.ancestors.T @ self.lengths  # root-to-tip distance per feature
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def to(self, device) -> "TreeDistances":
        self.device = torch.device(device)
        return self

    def _columns(self, rows: np.ndarray) -> sp.csr_matrix:
        """``(features, k)`` relative abundances of the samples at ``rows``."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        which = np.repeat(np.arange(len(rows)), ends - starts)
        counts = self.counts[take]
        totals = np.bincount(which, weights=counts, minlength=len(rows))
        return sp.csr_matrix((counts / totals[which], (self.column[self.indices[take]], which)),
                             shape=(self.ancestors.shape[1], len(rows)))

    def between(self, index: torch.Tensor) -> torch.Tensor:
        """``(k, k)`` UniFrac distances among the samples at ``index``."""
        rows = np.asarray(index.detach().cpu(), dtype=np.int64)
        columns = self._columns(rows)  # (features, k) relative abundances
        branch = (self.ancestors @ columns).tocsr()  # (branches, k)
        touched = np.flatnonzero(np.diff(branch.indptr))  # branches under any sample
        values = branch[touched].toarray()
        lengths = self.lengths[touched]
        if self.metric == "unweighted":
            held = (values > 0).astype(np.float64)
            per_sample = lengths @ held  # branch length under each sample
            shared = held.T @ (held * lengths[:, None])
            union = per_sample[:, None] + per_sample[None, :] - shared
            with np.errstate(invalid="ignore", divide="ignore"):
                distances = np.where(union > 0, (union - shared) / union, 0.0)
        else:
            numerator = np.stack([lengths @ np.abs(values - values[:, [i]])
                                  for i in range(len(rows))])
            depth = columns.T @ self.tip_depth  # (k,) abundance-weighted root-to-tip depth
            denominator = depth[:, None] + depth[None, :]
            with np.errstate(invalid="ignore", divide="ignore"):
                distances = np.where(denominator > 0, numerator / denominator, 0.0)
        np.fill_diagonal(distances, 0.0)
        return torch.as_tensor(distances, dtype=torch.float32, device=self.device)


def held_features(samples):
    """The counts the model sees ``(features, samples)``, the features some sample holds
    (their indices) and their IDs."""
    kept = samples.kept_counts().T.tocsr()
    used = np.flatnonzero(np.asarray(kept.sum(axis=1)).ravel() > 0)
    return kept, used, [samples.feature_ids[i] for i in used]


def missing_tips(feature_ids, tree) -> list:
    """Those of ``feature_ids`` that are not tips of ``tree``."""
    tips = {t.name for t in tree.tips()}
    return [f for f in feature_ids if f not in tips]


def refuse_missing(missing: list) -> None:
    """Refuse a phylogeny that lacks the features ``missing``."""
    if missing:
        raise ValueError(f"{len(missing)} feature(s) are not tips of the phylogeny (e.g. "
                         f"{missing[:3]}). Use a tree built from these sequences.")


def unifrac_distances(samples, tree, metric: str = "unweighted",
                      log: Callable[[str], None] = stderr):
    """UniFrac among ``samples`` from ``tree``, on the counts the model sees (each sample's
    ``token_limit`` most abundant ASVs): an ``(n, n)`` matrix in sample order from the
    ``unifrac`` library, or, past ``UNIFRAC_MATRIX_MAX_SAMPLES`` samples, a
    :class:`TreeDistances` that computes each batch's pairs."""
    import biom
    import unifrac
    check_choice("UniFrac metric", metric, METRICS)
    ids = samples.sample_ids
    if len(ids) > UNIFRAC_MATRIX_MAX_SAMPLES:  # read when called, so that tests can lower it
        log(f"{len(ids)} samples: {metric} UniFrac is computed for each batch's pairs as "
            f"training needs them (past {UNIFRAC_MATRIX_MAX_SAMPLES} samples the full matrix "
            "is not held in memory).")
        return TreeDistances(samples, tree, metric)
    kept, used, feature_ids = held_features(samples)
    refuse_missing(missing_tips(feature_ids, tree))
    table = biom.Table(kept[used], feature_ids, ids)
    log(f"Computing {metric} UniFrac for {len(ids)} samples on the ASVs the model sees.")
    if metric == "unweighted":
        result = unifrac.unweighted(table, tree)
    else:
        # unifrac 1.2 reads weighted UniFrac's inputs from files only (it passes str(table)
        # on), so they go through a BIOM HDF5 file and a Newick file.
        with tempfile.TemporaryDirectory(prefix="q2-aam-unifrac-") as folder:
            table_path, tree_path = (os.path.join(folder, "table.biom"),
                                     os.path.join(folder, "tree.nwk"))
            with biom.util.biom_open(table_path, "w") as handle:
                table.to_hdf5(handle, "q2-aam")
            tree.write(tree_path, format="newick")
            result = unifrac.weighted_normalized(table_path, tree_path)
    return result.filter(ids).data


def deferred(distances) -> bool:
    """Whether ``distances`` is a function that computes them (called by
    :func:`pair_distances`, or once before worker processes start)."""
    return callable(distances) and not isinstance(distances, (MatrixDistances, TreeDistances))


def pair_distances(distances, n: int) -> "MatrixDistances | TreeDistances | None":
    """``distances`` (an ``(n, n)`` array, a :class:`TreeDistances`, or a function that
    returns either, called now) as the loss reads them, checked to cover the ``n`` samples."""
    if deferred(distances):
        distances = distances()
    if distances is None:
        return None
    if not isinstance(distances, (MatrixDistances, TreeDistances)):
        distances = MatrixDistances(distances)
    if len(distances) != n:
        raise ValueError(f"The distances cover {len(distances)} samples, but there are {n} "
                         "samples; they must hold exactly the same samples.")
    return distances
