"""The readout's columns: each vocabulary ASV's log-abundance level and presence, clades
of the phylogeny, and ASV x category levels, as sparse ``(samples, n)`` blocks.

The blocks come in :data:`BLOCK_ORDER`, the order in which :class:`~.module.LinearReadout`
stores their coefficients; a fit over the stacked blocks is split back in that order.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..data import AmpliconSamples, abundance_features, log_level

#: The blocks, in the order :func:`readout_blocks` returns them and the readout module
#: loads their coefficients (each present or not; see the package's docstring).
BLOCK_ORDER = ("level", "presence", "clade", "conditional")
#: A clade enters the readout when held by this share of the training samples.
CLADE_PREVALENCE = (0.02, 0.98)


def relative_matrix(samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                    n_vocabulary: int) -> sp.csr_matrix:
    """``(n_samples, n_vocabulary)``: each vocabulary ASV's relative abundance."""
    data, cols, indptr = [], [], [0]
    for i in range(len(samples)):
        features, counts = samples.sample(i)
        rows = vocabulary_rows[features]
        held = rows > 0
        data.append(abundance_features(counts, samples.totals[i])[held, 1].astype(np.float64))
        cols.append(rows[held] - 1)
        indptr.append(indptr[-1] + int(held.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                          np.concatenate(cols) if cols else np.zeros(0, np.int64), indptr),
                         shape=(len(samples), n_vocabulary))


def clades(tree, tip_columns: dict, relative: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The clades the readout uses, as ``(rows, ids)``: vocabulary row ``rows[k]`` (1-based)
    belongs to clade ``ids[k]``. A clade is an internal node of ``tree`` (a
    ``skbio.TreeNode``; ``tip_columns`` maps a tip's name to its ASV's vocabulary column)
    with 2 or more vocabulary ASVs, held (any member present) by ``CLADE_PREVALENCE`` of
    the samples of ``relative`` (:func:`relative_matrix` of the training samples); nodes
    with the same members count once."""
    members: dict = {}
    for node in tree.postorder(include_self=True):
        if node.is_tip():
            members[id(node)] = ({tip_columns[node.name]} if node.name in tip_columns
                                 else set())
        else:
            members[id(node)] = set().union(*(members[id(child)] for child in node.children))
    unique = sorted({tuple(sorted(m)) for m in members.values() if len(m) >= 2})
    if not unique:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate([np.asarray(m) for m in unique])
    ids = np.repeat(np.arange(len(unique)), [len(m) for m in unique])
    membership = sp.csr_matrix((np.ones(len(rows)), (rows, ids)),
                               shape=(relative.shape[1], len(unique)))
    held = np.asarray(((relative > 0).astype(np.float64) @ membership > 0).mean(axis=0)).ravel()
    kept = np.flatnonzero((held >= CLADE_PREVALENCE[0]) & (held <= CLADE_PREVALENCE[1]))
    renumber = np.full(len(unique), -1)
    renumber[kept] = np.arange(len(kept))
    keep = renumber[ids] >= 0
    return rows[keep] + 1, renumber[ids[keep]]


def readout_blocks(samples: AmpliconSamples, vocabulary_rows: np.ndarray, n_vocabulary: int,
                   clade_rows: np.ndarray | None = None, clade_ids: np.ndarray | None = None,
                   categories: np.ndarray | None = None,
                   cardinalities: list | None = None) -> dict:
    """The readout's column blocks (see the package's docstring), sparse ``(n_samples, .)``
    CSR matrices (a table's ASVs are mostly absent: memory follows its nonzero counts) in
    ``BLOCK_ORDER``: ``level``, ``presence``, then
    ``clade`` when ``clade_ids`` is given (non-empty), then ``conditional`` when
    ``categories`` ``(n_samples, C)`` (indices, 0 unknown) and ``cardinalities`` are: for
    each column, for each index ``0 .. cardinality - 1``, every ASV's level (index 0, the
    unknown value, is never set, so its columns are all 0)."""
    relative = relative_matrix(samples, vocabulary_rows, n_vocabulary)
    relative.eliminate_zeros()
    level = _with_data(relative, log_level(relative.data))
    blocks = {"level": level, "presence": _with_data(relative, np.ones(relative.nnz))}
    if clade_ids is not None and len(clade_ids):
        membership = sp.csr_matrix((np.ones(len(clade_rows)), (clade_rows - 1, clade_ids)),
                                   shape=(n_vocabulary, int(clade_ids.max()) + 1))
        summed = (relative @ membership).tocsr()
        summed.eliminate_zeros()
        blocks["clade"] = _with_data(summed, log_level(summed.data))
    if categories is not None and cardinalities:
        parts = []
        for c, card in enumerate(cardinalities):
            for v in range(card):
                parts.append(sp.diags((categories[:, c] == v) * 1.0) @ level if v else
                             sp.csr_matrix(level.shape))
        blocks["conditional"] = sp.hstack(parts, format="csr")
    return blocks


def _with_data(matrix: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    """``matrix``'s pattern with the values ``data``."""
    return sp.csr_matrix((data, matrix.indices.copy(), matrix.indptr.copy()),
                         shape=matrix.shape)
