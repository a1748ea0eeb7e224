"""Samples as bags of ASVs, and batches that encode each distinct ASV once.

A sample keeps at most ``token_limit`` ASVs: the most abundant ones, ties
broken by the sequence itself, so the choice never depends on table order.
A batch is collated into

* ``asv_tokens`` ``(U, L)``: the token matrix of the batch's *unique* ASVs,
* ``asv_index`` ``(B, S)``: for each sample slot, the row of ``asv_tokens``,
* ``asv_mask`` ``(B, S)``: True for real slots, False for padding,
* ``abundance`` ``(B, S, 3)``: abundance features of each slot,

so the nucleotide encoder runs once per distinct sequence in the batch and
the sample encoder gathers from its output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .tokenizer import tokenize

#: Abundance features per ASV slot (see ``abundance_features``).
N_ABUNDANCE_FEATURES = 3


@dataclass
class AmpliconSamples:
    """Samples truncated to their ``token_limit`` most abundant ASVs.

    Sample ``i`` holds features ``indices[indptr[i]:indptr[i+1]]`` with
    ``counts[...]``, most abundant first; ``totals[i]`` is its read count
    before truncation.
    """

    sample_ids: list[str]
    feature_ids: list[str]
    sequences: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    token_limit: int

    @classmethod
    def from_counts(cls, counts, sample_ids: Sequence[str], feature_ids: Sequence[str],
                    sequences: Sequence[str], token_limit: int) -> "AmpliconSamples":
        """Build from a ``(n_samples, n_features)`` count matrix (dense or sparse).

        Raises:
            ValueError: shapes disagree, counts are negative or not finite,
                or a sample has no reads.
        """
        if token_limit < 1:
            raise ValueError(f"token_limit must be at least 1, got {token_limit}.")
        matrix = sp.csr_matrix(counts, dtype=np.float64)
        n_samples, n_features = matrix.shape
        if len(sample_ids) != n_samples or len(feature_ids) != n_features \
                or len(sequences) != n_features:
            raise ValueError(
                f"Count matrix is {n_samples} samples x {n_features} features, but got "
                f"{len(sample_ids)} sample IDs, {len(feature_ids)} feature IDs and "
                f"{len(sequences)} sequences.")
        matrix.eliminate_zeros()
        if matrix.nnz and (not np.isfinite(matrix.data).all() or (matrix.data < 0).any()):
            raise ValueError("The feature table holds negative or non-finite counts; "
                             "it must hold read counts (FeatureTable[Frequency]).")
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        empty = [sample_ids[i] for i in np.flatnonzero(totals <= 0)]
        if empty:
            raise ValueError(f"{len(empty)} sample(s) have no reads (e.g. {empty[:3]}); "
                             "filter them out of the table first (qiime feature-table "
                             "filter-samples --p-min-frequency 1).")
        # Rank of each feature's sequence, to break abundance ties independently of order.
        seq_rank = np.empty(n_features, dtype=np.int64)
        seq_rank[np.argsort(np.asarray(sequences, dtype=object), kind="stable")] = \
            np.arange(n_features)
        indptr = [0]
        kept_idx, kept_cnt = [], []
        for i in range(n_samples):
            lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
            idx, cnt = matrix.indices[lo:hi], matrix.data[lo:hi]
            order = np.lexsort((seq_rank[idx], -cnt))[:token_limit]
            kept_idx.append(idx[order])
            kept_cnt.append(cnt[order])
            indptr.append(indptr[-1] + len(order))
        return cls(sample_ids=list(sample_ids), feature_ids=list(feature_ids),
                   sequences=list(sequences), indptr=np.asarray(indptr, dtype=np.int64),
                   indices=np.concatenate(kept_idx).astype(np.int64),
                   counts=np.concatenate(kept_cnt), totals=totals, token_limit=token_limit)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Feature indices and counts of sample ``i``, most abundant first."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.counts[lo:hi]

    def kept_counts(self) -> sp.csr_matrix:
        """``(n_samples, n_features)`` counts of the ASVs the model sees."""
        return sp.csr_matrix((self.counts, self.indices, self.indptr),
                             shape=(len(self.sample_ids), len(self.feature_ids)))

    def subset(self, rows: Sequence[int]) -> "AmpliconSamples":
        """The samples at ``rows`` (features unchanged)."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = [self.sample(int(i)) for i in rows]
        lengths = [len(p[0]) for p in parts]
        return AmpliconSamples(
            sample_ids=[self.sample_ids[i] for i in rows], feature_ids=self.feature_ids,
            sequences=self.sequences,
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            indices=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
            counts=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0),
            totals=self.totals[rows], token_limit=self.token_limit)


def log_level(rel):
    """The log-abundance level of relative abundances ``rel`` (a numpy array or a torch
    tensor): ``1 + log10(rel) / 6`` where ``rel > 0`` (1 for a whole sample, 0 at one read
    in a million), else 0. The model's third abundance feature and the linear readout's
    ``level`` columns."""
    if isinstance(rel, torch.Tensor):
        return torch.where(rel > 0, 1 + torch.log10(rel.clamp_min(1e-30)) / 6,
                           torch.zeros_like(rel))
    rel = np.asarray(rel)
    out = np.zeros(rel.shape, dtype=np.result_type(rel.dtype, np.float32))
    held = rel > 0
    out[held] = 1.0 + np.log10(rel[held]) / 6.0
    return out


def abundance_features(counts: np.ndarray, total: float) -> np.ndarray:
    """``(S, 3)`` features of each ASV's abundance in a sample.

    log count, relative abundance, and log relative abundance (:func:`log_level`), each
    scaled to roughly unit range, so the sample encoder sees abundance as an input.
    """
    rel = counts / total
    return np.stack([np.log1p(counts) / math.log(1e5), rel, log_level(rel)],
                    axis=1).astype(np.float32)


class BatchCollator:
    """Collate sample indices into a batch that encodes each distinct ASV once.

    Args:
        samples: the samples.
        tokens: ``(n_features, L)`` token matrix of ``samples.sequences``
            (from :func:`tokenize`).
        targets: optional per-sample targets (float for regression, int class
            index for classification), indexed like ``samples``.
        global_index: optional per-sample global index (into a distance
            matrix), indexed like ``samples``; defaults to ``arange``.
        categories: optional ``(n_samples, C)`` category indices (see
            :func:`encode_categories`).
        vocabulary: optional ``(n_features,)`` row of each feature in a model's
            ASV identity embeddings (0: none of its own; see ``vocabulary``).
    """

    def __init__(self, samples: AmpliconSamples, tokens: np.ndarray,
                 targets: np.ndarray | None = None,
                 global_index: np.ndarray | None = None,
                 categories: np.ndarray | None = None,
                 vocabulary: np.ndarray | None = None):
        self.samples = samples
        self.categories = categories
        self.vocabulary = vocabulary
        self.tokens = tokens
        self.lengths = (tokens != 0).sum(axis=1)
        self.targets = targets
        self.global_index = (np.arange(len(samples)) if global_index is None
                             else np.asarray(global_index, dtype=np.int64))

    def __call__(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [int(r) for r in rows]
        parts = [self.samples.sample(r) for r in rows]
        width = max(len(p[0]) for p in parts)
        all_features = np.concatenate([p[0] for p in parts])
        unique, inverse = np.unique(all_features, return_inverse=True)
        asv_index = np.zeros((len(rows), width), dtype=np.int64)
        asv_mask = np.zeros((len(rows), width), dtype=bool)
        abundance = np.zeros((len(rows), width, N_ABUNDANCE_FEATURES), dtype=np.float32)
        start = 0
        for b, (r, (idx, cnt)) in enumerate(zip(rows, parts)):
            n = len(idx)
            asv_index[b, :n] = inverse[start:start + n]
            asv_mask[b, :n] = True
            abundance[b, :n] = abundance_features(cnt, self.samples.totals[r])
            start += n
        max_len = int(self.lengths[unique].max())
        batch = {
            "row": torch.as_tensor(rows, dtype=torch.int64),  # rows of this collator's samples
            "sample_index": torch.as_tensor(self.global_index[rows]),
            "asv_tokens": torch.as_tensor(self.tokens[unique, :max_len].astype(np.int64)),
            "asv_feature": torch.as_tensor(unique.astype(np.int64)),
            "asv_index": torch.as_tensor(asv_index),
            "asv_mask": torch.as_tensor(asv_mask),
            "abundance": torch.as_tensor(abundance),
        }
        if self.targets is not None:
            batch["target"] = torch.as_tensor(self.targets[rows])
        if self.categories is not None:
            batch["categories"] = torch.as_tensor(self.categories[rows])  # (B, C)
        if self.vocabulary is not None:  # (B, S): padding slots read row 0 (masked anyway)
            batch["asv_vocab"] = torch.as_tensor(
                np.where(asv_mask, self.vocabulary[unique][asv_index], 0).astype(np.int64))
        return batch


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def fit_vocabularies(columns: dict, rows: Sequence[int]) -> dict:
    """Each column's sorted values among the training ``rows`` (missing values left out)."""
    return {name: sorted({str(values[r]) for r in rows if not _is_missing(values[r])})
            for name, values in columns.items()}


def encode_categories(columns: dict, vocabularies: dict, warn=None) -> np.ndarray:
    """``(n, C)`` indices: value ``i`` of a vocabulary -> ``i + 1``; missing/unseen -> 0.

    ``warn`` is called once per column that has values not seen in training,
    naming them.
    """
    names = list(vocabularies)
    missing = [c for c in names if c not in columns]
    if missing:
        raise ValueError(f"The model is conditioned on the metadata column(s) {missing}, which "
                         "the given metadata lacks.")
    n = len(next(iter(columns.values()))) if columns else 0
    out = np.zeros((n, len(names)), dtype=np.int64)
    for c, name in enumerate(names):
        lookup = {v: i + 1 for i, v in enumerate(vocabularies[name])}
        unseen = set()
        for r, value in enumerate(columns[name]):
            if _is_missing(value):
                continue
            index = lookup.get(str(value))
            if index is None:
                unseen.add(str(value))
            else:
                out[r, c] = index
        if unseen and warn is not None:
            warn(f"Column {name!r} has value(s) {sorted(unseen)} not seen in training; they "
                 "use the 'unknown' embedding.")
    return out


def fit_categories(categorical: dict, train_rows: np.ndarray, warn=None):
    """The conditioning columns learned from the training rows: ``(per-sample indices
    (n, C), cardinalities (values + unknown, per column), what the model saves)``."""
    vocabularies = fit_vocabularies(categorical, train_rows)
    empty = [c for c, v in vocabularies.items() if not v]
    if empty:
        raise ValueError(f"The categorical column(s) {empty} have no values in the "
                         "training samples.")
    cats = encode_categories(categorical, vocabularies, warn=warn)
    cardinalities = [len(v) + 1 for v in vocabularies.values()]
    return cats, cardinalities, {"columns": list(vocabularies), "vocabularies": vocabularies}


#: Fewest samples an epoch may train on.
MIN_TRAINING_SAMPLES = 2


def validation_split(n: int, fraction: float, seed: int,
                     groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and for validation (early stopping).

    With ``groups`` (e.g. subject IDs), whole groups go to one side, so no
    subject is on both. ``fraction=0`` gives no validation rows. Refuses a
    split that leaves fewer than ``MIN_TRAINING_SAMPLES`` to train on.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}.")
    train, val = _split(n, fraction, seed, groups)
    if len(train) < MIN_TRAINING_SAMPLES:
        raise ValueError(
            f"{n} sample(s) with validation fraction {fraction:g} leave {len(train)} for "
            f"training and {len(val)} for validation; training needs at least "
            f"{MIN_TRAINING_SAMPLES}. Give more samples or a smaller validation fraction "
            "(--p-validation-fraction).")
    return train, val


def _split(n: int, fraction: float, seed: int, groups: Sequence | None):
    rows = np.arange(n)
    if fraction == 0 or n < 2:
        return rows, rows[:0]
    rng = np.random.default_rng(seed)
    if groups is None:
        shuffled = rng.permutation(n)
        n_val = max(1, round(fraction * n))
        return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])
    groups = np.asarray([str(g) for g in groups], dtype=object)
    unique = np.array(sorted(set(groups)), dtype=object)
    if len(unique) < 2:
        raise ValueError("Validation by group needs at least 2 groups; got "
                         f"{len(unique)}. Pass more subjects or no groups.")
    chosen, count = [], 0
    for g in rng.permutation(unique):
        if count >= fraction * n:
            break
        chosen.append(g)
        count += int((groups == g).sum())
    val = np.isin(groups, chosen)
    if val.all():
        val[groups == chosen[0]] = False
    return rows[~val], rows[val]


#: The longest sequence a new model accepts: past a full-length 16S gene (about 1,550 nt),
#: a sequence is almost surely not an amplicon, and attention over it costs minutes an epoch.
NEW_MODEL_MAX_LENGTH = 2000


def sample_tokens(samples: AmpliconSamples, max_length: int | None = None,
                  log=None) -> np.ndarray:
    """The token matrix of the samples' features (``tokenizer.tokenize``); ``max_length``:
    what an existing model reads, else a new model's limit ``NEW_MODEL_MAX_LENGTH``."""
    if max_length is None:
        lengths = np.fromiter(map(len, samples.sequences), dtype=np.int64,
                              count=len(samples.sequences))
        long = np.flatnonzero(lengths > NEW_MODEL_MAX_LENGTH)
        if len(long):
            raise ValueError(
                f"{len(long)} feature sequence(s) are longer than the {NEW_MODEL_MAX_LENGTH} nt "
                "a model reads (a full-length 16S gene is about 1,550 nt): " + ", ".join(
                    f"{samples.feature_ids[i]!r} ({lengths[i]} nt)" for i in long[:3])
                + ". Trim the sequences to the amplicon (e.g. 'qiime feature-classifier "
                "extract-reads' or cutadapt) or filter these features from the table.")
    tokenized = tokenize(samples.sequences, names=samples.feature_ids, max_length=max_length)
    if tokenized.n_ambiguous and log is not None:
        log(f"{tokenized.n_ambiguous} feature sequence(s) hold IUPAC ambiguity codes; each such "
            "nucleotide is read as 'N'.")
    return tokenized.tokens
