"""DNA tokenizer: A/C/G/T, an explicit token for IUPAC ambiguity codes.

Token ids (``VOCAB``)::

    0 pad   1 A   2 C   3 G   4 T   5 N (any IUPAC ambiguity code)   6 mask

Ambiguity codes (N, R, Y, S, W, K, M, B, D, H, V) are *not* padding: they
become the ``N`` token, which the encoders read like any other nucleotide,
and they are counted so callers can report them.  Anything else (gaps, ``U``,
digits, ...) is an error naming the sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD, A, C, G, T, N, MASK = range(7)
VOCAB_SIZE = 7
#: Number of classes the masked-nucleotide head predicts (A, C, G, T, N).
NUCLEOTIDE_CLASSES = 5

AMBIGUITY_CODES = frozenset("NRYSWKMBDHV")
_LOOKUP = np.full(256, 255, dtype=np.uint8)
for _char, _token in zip("ACGT", (A, C, G, T)):
    _LOOKUP[ord(_char)] = _token
    _LOOKUP[ord(_char.lower())] = _token
for _char in AMBIGUITY_CODES:
    _LOOKUP[ord(_char)] = N
    _LOOKUP[ord(_char.lower())] = N


def is_dna(text: str) -> bool:
    """True when ``text`` is non-empty and made only of IUPAC DNA letters."""
    if not text:
        return False
    raw = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)
    return bool((_LOOKUP[raw] != 255).all())


@dataclass(frozen=True)
class TokenizedSequences:
    """Sequences as a padded token matrix.

    Attributes:
        tokens: ``(n_sequences, max_length)`` uint8 token ids, ``PAD`` after
            each sequence's end.
        lengths: ``(n_sequences,)`` sequence lengths.
        n_ambiguous: how many sequences held at least one ambiguity code.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    n_ambiguous: int


def tokenize(sequences: Sequence[str], *, names: Sequence[str] | None = None,
             max_length: int | None = None) -> TokenizedSequences:
    """Turn DNA strings into a padded token matrix.

    Args:
        sequences: DNA sequences (any case).
        names: optional names used in error messages (e.g. feature IDs).
        max_length: refuse sequences longer than this (the positional
            embedding of a trained model has a fixed size).

    Raises:
        ValueError: a sequence is empty, too long, or holds a character that
            is not an IUPAC DNA code.
    """
    names = list(names) if names is not None else [f"#{i}" for i in range(len(sequences))]
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if len(sequences) else 0
    tokens = np.zeros((len(sequences), width), dtype=np.uint8)
    n_ambiguous = 0
    for i, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"Sequence of feature {names[i]!r} is empty; remove the feature "
                             "or supply its sequence.")
        if max_length is not None and len(seq) > max_length:
            raise ValueError(
                f"Sequence of feature {names[i]!r} is {len(seq)} nt long, but the model reads at "
                f"most {max_length} nt. Trim the sequences to the amplicon the model was trained "
                "on, or train a model with a larger max sequence length.")
        raw = np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)
        ids = _LOOKUP[raw]
        if (ids == 255).any():
            bad = sorted({seq[j] for j in np.flatnonzero(ids == 255)})
            raise ValueError(
                f"Sequence of feature {names[i]!r} holds {bad}, which are not DNA nucleotides or "
                "IUPAC ambiguity codes. Remove gaps/alignment characters and use DNA (T, not U).")
        if (ids == N).any():
            n_ambiguous += 1
        tokens[i, : len(seq)] = ids
    return TokenizedSequences(tokens=tokens, lengths=lengths, n_ambiguous=n_ambiguous)
