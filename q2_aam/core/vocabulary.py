"""The training vocabulary, and where a sequence the model never saw finds its place in it.

The vocabulary is the ASVs held by ``asv_min_samples`` or more training samples. Each has
an identity embedding and linear-readout coefficients of its own (row ``i + 1``); every
other ASV reads row 0, which has neither.

A second denoising run, another sequencing batch or another study calls sequences a few
nucleotides away from the training ones, or trims them differently. Keyed by exact
sequence, such an ASV would read row 0 and lose everything the readout learned about its
neighbour, which is how a forest on feature IDs fails. So at prediction a sequence outside
the vocabulary reads the row of its **nearest vocabulary sequence**, when that one is
close enough (``options.DEFAULT_MATCH_IDENTITY``, closed-reference OTU picking's customary
97 %): candidates are the vocabulary sequences sharing the most informative k-mers with
it, and the one with the highest alignment identity wins (ties: the one more training
samples held). The network itself still reads the new sequence.

Identity is ``matches / overlap``: a local alignment (``skbio``'s Striped Smith-Waterman)
extended along its diagonal to both sequences' ends, so that a shifted or shortened
trimming of the same amplicon (a terminal overhang) costs nothing, while mismatches,
gaps and ends the local alignment clipped all count against it. The overlap must cover
``MATCH_COVERAGE`` of the new sequence.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from .options import DEFAULT_MATCH_IDENTITY
from .progress import Ticker

#: Length of the k-mers that pick the candidates.
KMER = 8
#: How many candidates (by shared k-mers) each new sequence is aligned to.
CANDIDATES = 8
#: A k-mer held by more than this share of the vocabulary (a conserved stretch of the 16S
#: gene) does not rank candidates: it is shared by nearly all, and it makes the k-mer
#: product dense (it is still used when no other k-mer is shared).
COMMON_KMER_SHARE = 0.05
#: The share of a new sequence that its overlap with a vocabulary sequence must cover.
MATCH_COVERAGE = 0.9
#: New sequences matched at once: their candidate scores are a dense (chunk x vocabulary)
#: float32 matrix, kept near this many entries (64 MB).
_SCORES = 16_000_000


def sequence_key(sequence: str) -> str:
    """The MD5 of an upper-case DNA sequence (as DADA2 and Deblur name features)."""
    return hashlib.md5(sequence.upper().encode("ascii")).hexdigest()


@dataclass
class Vocabulary:
    """The vocabulary ASVs in row order (row ``i + 1`` is ``keys[i]``): their sequence keys,
    sequences (upper case) and how many training samples held each (``prevalence``); and
    the keys of the training ASVs that training read as row 0 (``unmatched``), which keep
    row 0 at prediction, as the model learned them.

    Models saved before the sequences were kept have ``keys`` only; they match sequences
    exactly."""

    keys: list
    sequences: list | None = None
    prevalence: list | None = None
    unmatched: list | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of_samples(cls, samples, min_samples: int) -> "Vocabulary":
        """The ASVs held (within the token limit) by ``min_samples`` or more of ``samples``
        (an ``AmpliconSamples``), sorted by key; features with the same sequence count
        as one. The others are ``unmatched``: training reads them as row 0, and so does
        prediction (matching them to a vocabulary neighbour at training too, so that their
        reads add to its readout columns, was no better: ``benchmarks/results/ablation.md``)."""
        held = np.bincount(samples.indices, minlength=len(samples.sequences))
        per_key: dict = {}
        for f in np.flatnonzero(held):
            sequence = samples.sequences[f].upper()
            key = sequence_key(sequence)
            per_key.setdefault(key, [sequence, 0])[1] += int(held[f])
        keys = sorted(k for k, (_, n) in per_key.items() if n >= min_samples)
        rare = sorted(k for k, (_, n) in per_key.items() if n < min_samples)
        return cls(keys, [per_key[k][0] for k in keys], [per_key[k][1] for k in keys], rare)

    @classmethod
    def from_target(cls, target: dict) -> "Vocabulary | None":
        """The vocabulary a model saved in its target description (``None`` if none)."""
        keys = target.get("asv_vocabulary")
        if not keys:
            return None
        return cls(list(keys), target.get("asv_sequences"), target.get("asv_prevalence"),
                   target.get("asv_unmatched"))

    def to_target(self) -> dict:
        """What a model saves of it (see :meth:`from_target`)."""
        return {"asv_vocabulary": self.keys, "asv_sequences": self.sequences,
                "asv_prevalence": self.prevalence, "asv_unmatched": self.unmatched}

    def exact_rows(self, sequences: Sequence[str]) -> np.ndarray:
        """``(n,)`` row of each sequence by exact sequence: ``i + 1`` for the ``i``-th key,
        0 for a sequence not in the vocabulary."""
        row = {key: i + 1 for i, key in enumerate(self.keys)}
        return np.fromiter((row.get(sequence_key(s), 0) for s in sequences),
                           dtype=np.int64, count=len(sequences))

    def match(self, sequences: Sequence[str], min_identity: float = DEFAULT_MATCH_IDENTITY,
              log: Callable[[str], None] | None = None) -> "VocabularyMatch":
        """Each sequence's row: its own; else, unless training read it as row 0
        (``unmatched``), its nearest vocabulary sequence's at ``min_identity`` or more
        (``min_identity`` < 1 and the vocabulary's sequences known)."""
        rows = self.exact_rows(sequences)
        exact = rows > 0
        identity = exact.astype(np.float64)
        learned = set(self.unmatched or ())
        new = np.flatnonzero(~exact & np.fromiter(
            (sequence_key(s) not in learned for s in sequences), dtype=bool,
            count=len(sequences)))
        if len(new) and min_identity < 1 and self.sequences:
            rows[new], identity[new] = nearest(
                [sequences[i] for i in new], self.sequences, min_identity,
                prevalence=self.prevalence, log=log)
        return VocabularyMatch(rows, exact, identity, min_identity)


@dataclass
class VocabularyMatch:
    """Rows of a table's features (:meth:`Vocabulary.match`): ``rows`` (0: none),
    ``exact`` (the sequence is a vocabulary ASV's) and ``identity`` to the row's
    sequence (0 without a row)."""

    rows: np.ndarray
    exact: np.ndarray
    identity: np.ndarray
    min_identity: float

    def read_shares(self, counts: sp.csr_matrix) -> dict:
        """Per sample of ``counts`` ``(samples, features)``: the share of its reads in
        vocabulary ASVs (``vocabulary``), in new ASVs read as their nearest vocabulary ASV
        (``neighbour``) and in new ASVs with no vocabulary sequence close enough
        (``unmatched``)."""
        counts = sp.csr_matrix(counts, dtype=np.float64)
        totals = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1e-300)
        neighbour = (self.rows > 0) & ~self.exact
        return {name: np.asarray(counts @ mask.astype(np.float64)).ravel() / totals
                for name, mask in (("vocabulary", self.exact), ("neighbour", neighbour),
                                   ("unmatched", self.rows == 0))}


def _kmer_matrix(sequences: Sequence[str], k: int = KMER) -> sp.csr_matrix:
    """``(n, 4**k)`` 0/1: which k-mers (of A, C, G, T only) each sequence holds."""
    code = np.full(256, 255, dtype=np.uint8)
    for i, char in enumerate("ACGT"):
        code[ord(char)] = code[ord(char.lower())] = i
    weights = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for n, sequence in enumerate(sequences):
        raw = code[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]
        if len(raw) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(raw, k)
        kmers = np.unique(windows[(windows != 255).all(axis=1)].astype(np.int64) @ weights)
        rows.append(np.full(len(kmers), n))
        cols.append(kmers)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                         shape=(len(sequences), 4 ** k))


def _candidates(queries: sp.csr_matrix, references: sp.csr_matrix, n: int) -> np.ndarray:
    """``(q, n)`` indices of the references sharing the most k-mers with each query,
    counting only k-mers that few references hold (all of them for a query that shares
    none of those), best first; -1 where fewer than ``n`` references share any."""
    held = np.asarray(references.sum(axis=0)).ravel()
    rare = (held > 0) & (held <= max(1.0, COMMON_KMER_SHARE * references.shape[0]))
    scores = (queries @ sp.diags(rare.astype(np.float32)) @ references.T).toarray()
    blank = np.flatnonzero(scores.max(axis=1, initial=0) <= 0)
    if len(blank):
        scores[blank] = (queries[blank] @ references.T).toarray()
    n = min(n, references.shape[0])
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    top[np.take_along_axis(scores, top, 1) <= 0] = -1
    return top


def alignment_identity(query, target: str) -> tuple[float, float]:
    """``(identity, coverage)`` of the sequence behind ``query`` (an ``skbio``
    ``StripedSmithWaterman`` of it) against ``target``: see the module's docstring."""
    result = query(target)
    aligned_q, aligned_t = result.aligned_query_sequence, result.aligned_target_sequence
    if not aligned_q:
        return 0.0, 0.0
    q_seq, q_len, t_len = result.query_sequence, len(result.query_sequence), len(target)
    q = np.frombuffer(aligned_q.encode(), dtype=np.uint8)
    t = np.frombuffer(aligned_t.encode(), dtype=np.uint8)
    matches = int(((q == t) & (q != ord("-"))).sum())
    # The local alignment extended along its diagonal to the nearer end of either sequence
    # (what it clipped is compared letter by letter; beyond is overhang).
    qb, tb = result.query_begin, result.target_begin
    qe, te = result.query_end + 1, result.target_end_optimal + 1
    before = min(qb, tb)
    after = min(q_len - qe, t_len - te)
    for q_part, t_part in ((q_seq[qb - before:qb], target[tb - before:tb]),
                           (q_seq[qe:qe + after], target[te:te + after])):
        matches += sum(a == b for a, b in zip(q_part, t_part))
    overlap = len(q) + before + after
    covered = qe - qb + before + after
    return matches / overlap, covered / q_len


def nearest(queries: Sequence[str], references: Sequence[str],
            min_identity: float = DEFAULT_MATCH_IDENTITY, *,
            prevalence: Sequence[int] | None = None, candidates: int = CANDIDATES,
            log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query, ``(row, identity)`` of its nearest reference: ``row`` is the
    reference's index + 1 (0: none at ``min_identity`` covering ``MATCH_COVERAGE`` of the
    query), ``identity`` the alignment identity (0 with no match). Ties go to the
    reference of higher ``prevalence``, then to the first."""
    from skbio.alignment import StripedSmithWaterman
    rows = np.zeros(len(queries), dtype=np.int64)
    best = np.zeros(len(queries))
    if not len(queries) or not len(references):
        return rows, best
    references = [r.upper() for r in references]
    reference_kmers = _kmer_matrix(references)
    rank = np.zeros(len(references)) if prevalence is None else np.asarray(prevalence, float)
    size = max(256, _SCORES // len(references))
    ticker = Ticker(log)
    for start in range(0, len(queries), size):
        chunk = [q.upper() for q in queries[start:start + size]]
        ticker(f"Matching new ASVs to the vocabulary: {start} of {len(queries)} done.")
        top = _candidates(_kmer_matrix(chunk), reference_kmers, candidates)
        for i, sequence in enumerate(chunk):
            if not sequence:
                continue
            aligner = StripedSmithWaterman(sequence)
            accepted = []
            for j in top[i][top[i] >= 0]:
                identity, coverage = alignment_identity(aligner, references[j])
                if identity >= min_identity and coverage >= MATCH_COVERAGE:
                    accepted.append((identity, rank[j], -j))
            if accepted:
                identity, _, j = max(accepted)
                rows[start + i], best[start + i] = 1 - j, identity
    return rows, best
