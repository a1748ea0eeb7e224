"""Samples, their tokens and batches (``core/data.py``): the token limit, refused tables
and sequences, each distinct ASV once per batch, the validation split by group."""
import numpy as np
import pytest

from q2_aam.core import api
from q2_aam.core.data import AmpliconSamples
from q2_aam.core.engine import TrainConfig

from conftest import batch_of, random_samples


def test_token_limit_keeps_most_abundant_ties_by_sequence():
    counts = np.array([[5, 9, 5, 1]])
    seqs = ["GGGG", "AAAA", "CCCC", "TTTT"]
    s = AmpliconSamples.from_counts(counts, ["s"], list("abcd"), seqs, token_limit=3)
    idx, cnt = s.sample(0)
    assert cnt.tolist() == [9, 5, 5]
    assert [seqs[i] for i in idx] == ["AAAA", "CCCC", "GGGG"]  # tie broken by sequence
    # Column order does not change which ASVs are kept.
    perm = [3, 2, 1, 0]
    s2 = AmpliconSamples.from_counts(counts[:, perm], ["s"], list("dcba"),
                                     [seqs[i] for i in perm], token_limit=3)
    assert [s2.sequences[i] for i in s2.sample(0)[0]] == ["AAAA", "CCCC", "GGGG"]
    assert s.totals[0] == 20  # relative abundance uses all reads


def test_empty_sample_is_refused_by_name():
    with pytest.raises(ValueError, match="no reads.*'b'"):
        AmpliconSamples.from_counts(np.array([[1, 0], [0, 0]]), ["a", "b"], ["x", "y"],
                                    ["AC", "GT"], 4)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        AmpliconSamples.from_counts(np.array([[1, -1]]), ["a"], ["x", "y"], ["AC", "GT"], 4)


def test_a_sequence_longer_than_any_amplicon_is_refused_with_its_length():
    samples = random_samples(n_samples=8)
    sequences = list(samples.sequences)
    sequences[3] = "ACGT" * 3000  # 12,000 nt
    counts = np.ones((8, len(sequences)), dtype=int)
    long = AmpliconSamples.from_counts(counts, samples.sample_ids, list(samples.feature_ids),
                                       sequences, 16)
    with pytest.raises(ValueError, match=r"1 feature sequence\(s\) are longer than the 2000 nt"
                                         r".*'f3' \(12000 nt\).*Trim"):
        api.train(long, np.arange(8.0), task="regression", config=TrainConfig(epochs=1),
                  log=lambda m: None)


def test_batch_holds_each_distinct_asv_once(samples):
    batch = batch_of(samples, [0, 1, 2, 3])
    features = batch["asv_feature"].tolist()
    assert len(features) == len(set(features))
    # Every real slot points at the right feature.
    for b, r in enumerate([0, 1, 2, 3]):
        idx, _ = samples.sample(r)
        got = batch["asv_feature"][batch["asv_index"][b, : len(idx)]].tolist()
        assert got == idx.tolist()
        assert batch["asv_mask"][b].sum() == len(idx)


def test_validation_split_by_group_keeps_groups_whole():
    from q2_aam.core.data import validation_split
    groups = np.repeat(list("abcdefghij"), 5)
    train, val = validation_split(len(groups), 0.2, 0, groups)
    assert not set(groups[train]) & set(groups[val])
    assert len(val) == 10
