"""The vocabulary (``core/vocabulary.py``): which training ASVs it holds, keyed by
sequence; new ASVs: matching a sequence the model never saw to its nearest vocabulary
sequence, and the tables that stand for another denoising run or trimming."""
import hashlib

import numpy as np
import pytest
import torch

from q2_aam.core.data import AmpliconSamples, BatchCollator
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize
from q2_aam.core.vocabulary import Vocabulary, alignment_identity, nearest, sequence_key
from q2_aam.example_data.variants import redenoise, relabel, retrim, substitute
from conftest import SMALL_ARCHITECTURE

SMALL = SMALL_ARCHITECTURE


def _random_sequences(n, length, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]


def test_sequence_key_is_the_md5_of_the_upper_case_sequence():
    assert sequence_key("acgt") == hashlib.md5(b"ACGT").hexdigest()


def test_vocabulary_holds_asvs_of_enough_samples():
    counts = np.array([[5, 1, 0, 0], [3, 0, 2, 0], [1, 0, 0, 7]])
    seqs = ["AAAA", "CCCC", "GGGG", "TTTT"]
    samples = AmpliconSamples.from_counts(counts, ["a", "b", "c"], list("wxyz"), seqs, 4)
    assert Vocabulary.of_samples(samples, 1).keys == sorted(sequence_key(s) for s in seqs)
    common = Vocabulary.of_samples(samples, 2)
    assert (common.keys, common.sequences, common.prevalence) == (
        [sequence_key("AAAA")], ["AAAA"], [3])
    assert Vocabulary.of_samples(samples, 4).keys == []


def test_vocabulary_index_maps_by_sequence_and_unknown_to_zero():
    vocab = sorted(sequence_key(s) for s in ["AAAA", "CCCC"])
    rows = Vocabulary(vocab).exact_rows(["cccc", "GGGG", "AAAA"])
    assert rows[1] == 0
    assert rows[0] == vocab.index(sequence_key("CCCC")) + 1
    assert rows[2] == vocab.index(sequence_key("AAAA")) + 1


def test_substitution_variants_and_other_trimmings_find_their_origin():
    references = _random_sequences(200, 150)
    rng = np.random.default_rng(1)
    origin = rng.choice(200, 60, replace=False)
    queries = ([substitute(references[i], 1, rng) for i in origin[:20]]
               + [substitute(references[i], 3, rng) for i in origin[20:40]]
               + [references[i][10:] for i in origin[40:50]]
               + [references[i][:-20].lower() for i in origin[50:]])
    rows, identity = nearest(queries, references)
    assert (rows == origin + 1).all()
    assert np.allclose(identity[:20], 149 / 150)
    assert (identity[20:40] >= 147 / 150 - 1e-9).all()
    assert (identity[40:] == 1).all()


def test_a_sequence_below_the_identity_or_coverage_has_no_match():
    reference = _random_sequences(1, 100, seed=2)[0]
    rng = np.random.default_rng(3)
    far = substitute(reference, 5, rng)  # 95 % identity
    rows, identity = nearest([far, reference[:80] + _random_sequences(1, 40, seed=4)[0]],
                             [reference])
    assert rows.tolist() == [0, 0] and identity.tolist() == [0, 0]
    assert nearest([far], [reference], min_identity=0.95)[0].tolist() == [1]


def test_identity_counts_mismatches_gaps_and_clipped_ends_but_not_overhangs():
    from skbio.alignment import StripedSmithWaterman
    reference = _random_sequences(1, 100, seed=5)[0]
    assert alignment_identity(StripedSmithWaterman(reference[5:]), reference) == (1.0, 1.0)
    gapped = reference[:50] + reference[51:]
    identity, coverage = alignment_identity(StripedSmithWaterman(gapped), reference)
    assert identity == pytest.approx(99 / 100) and coverage == 1.0
    # A mismatch at the first position: the local alignment clips it, identity still counts it.
    first = ("A" if reference[0] != "A" else "C") + reference[1:]
    identity, coverage = alignment_identity(StripedSmithWaterman(first), reference)
    assert identity == pytest.approx(99 / 100) and coverage == 1.0


def test_ties_go_to_the_vocabulary_asv_more_training_samples_held():
    base = _random_sequences(1, 120, seed=6)[0]
    a, b = base + "AAAAA", base + "CCCCC"
    assert nearest([base], [a, b], prevalence=[3, 9])[0].tolist() == [2]
    assert nearest([base], [a, b], prevalence=[9, 3])[0].tolist() == [1]


def test_the_match_keeps_exact_rows_and_finds_new_ones():
    references = _random_sequences(5, 80, seed=7)
    vocabulary = Vocabulary([sequence_key(s) for s in references], references, [1] * 5)
    rng = np.random.default_rng(8)
    query = [references[2], substitute(references[4], 1, rng), _random_sequences(1, 80, 9)[0]]
    match = vocabulary.match(query)
    assert match.rows.tolist() == [3, 5, 0]
    assert match.exact.tolist() == [True, False, False]
    assert vocabulary.match(query, min_identity=1.0).rows.tolist() == [3, 0, 0]
    # A model saved without its vocabulary's sequences matches exactly only.
    assert Vocabulary(vocabulary.keys).match(query).rows.tolist() == [3, 0, 0]
    counts = np.array([[10, 30, 60], [0, 5, 0]])
    shares = match.read_shares(counts)
    assert shares["vocabulary"].tolist() == [0.1, 0.0]
    assert shares["neighbour"].tolist() == [0.3, 1.0]
    assert shares["unmatched"].tolist() == [0.6, 0.0]


def test_two_slots_reading_one_row_give_the_readout_of_their_summed_abundance():
    """A new ASV matched to a vocabulary ASV that the sample also holds counts as one ASV
    with both abundances, as the readout was fitted (and as closed-reference picking
    counts it), not as two."""
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=3,
                                 linear_readout=True, linear_presence=True, **SMALL)).eval()
    with torch.no_grad():
        model.readout.level.weight[1:] = torch.tensor([[2.0], [-1.0], [0.5]])
        model.readout.presence.weight[1:] = torch.tensor([[0.3], [0.2], [-0.4]])
        model.readout.bias[:] = 0.1
    sequences = _random_sequences(3, 40, seed=10)
    split = AmpliconSamples.from_counts(np.array([[300, 100, 600]]), ["s"], list("abc"),
                                        sequences, 8)
    merged = AmpliconSamples.from_counts(np.array([[400, 600]]), ["s"], list("ac"),
                                         [sequences[0], sequences[2]], 8)
    out = []
    for samples, rows in ((split, np.array([1, 1, 3])), (merged, np.array([1, 3]))):
        batch = BatchCollator(samples, tokenize(samples.sequences).tokens,
                              vocabulary=rows)([0])
        with torch.no_grad():
            out.append(model.readout(batch))
    level = lambda rel: 1 + np.log10(rel) / 6  # noqa: E731
    expected = 2.0 * level(0.4) + 0.3 + 0.5 * level(0.6) - 0.4 + 0.1
    torch.testing.assert_close(out[0], out[1])
    assert float(out[0]) == pytest.approx(expected, abs=1e-5)


def test_redenoise_replaces_a_share_of_the_features_and_merges_coinciding_ones():
    import biom
    sequences = _random_sequences(40, 60, seed=11)
    counts = np.random.default_rng(12).integers(0, 5, (40, 6))
    table = biom.Table(counts, observation_ids=sequences, sample_ids=list("abcdef"))
    new, replaced = redenoise(table, 0.5, 1, seed=0)
    held = int((counts.sum(1) > 0).sum())
    assert replaced == round(0.5 * held)
    changed = set(new.ids(axis="observation")) - set(sequences)
    assert len(changed) == replaced
    assert new.sum() == table.sum()
    again, _ = redenoise(table, 0.5, 1, seed=0)
    assert list(again.ids(axis="observation")) == list(new.ids(axis="observation"))
    # Trimming that makes two sequences one merges them.
    twin = biom.Table(np.array([[1, 2], [3, 4]]), observation_ids=["GGACGT", "TTACGT"],
                      sample_ids=["x", "y"])
    trimmed = retrim(twin, 2)
    assert list(trimmed.ids(axis="observation")) == ["ACGT"]
    assert trimmed.matrix_data.toarray().tolist() == [[4, 6]]
    assert list(relabel(twin, ["b", "a"]).ids(axis="observation")) == ["b", "a"]


def test_predictions_hold_when_half_the_asvs_are_one_substitution_variants():
    """Real ECAM samples: a small model trained on 24 subjects predicts 6 others, then the
    same samples as another denoising run would call them (half of their features one
    substitution away). Read by nearest vocabulary sequence, the predictions barely move;
    read by exact sequence (what q2-aam did before), they move several times more.

    Measured (seed 0): mean change 0.9 days matched vs 90.7 exact; MAE 99.8 clean."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    from q2_aam.example_data import load_dataset
    data = load_dataset("ecam", build_tree=False)
    md = data.metadata
    subjects = sorted(md["subject"].unique(), key=lambda s: (len(s), s))
    train_ids = list(md.index[md["subject"].isin(subjects[:24])][::2])
    test_ids = list(md.index[md["subject"].isin(subjects[24:30])])
    samples = amplicon_samples(data.table, None, 64, sample_ids=train_ids)
    bundle = api.train(samples, md.loc[train_ids, "age_days"].to_numpy(), task="regression",
                       architecture=SMALL, config=TrainConfig(epochs=3, seed=0),
                       groups=md.loc[train_ids, "subject"].to_numpy(), log=lambda m: None)
    clean = data.table.filter(test_ids, inplace=False).remove_empty(axis="observation",
                                                                    inplace=False)
    variant, replaced = redenoise(clean, 0.5, 1, seed=0)
    assert replaced > 100

    def predict(table, **kwargs):
        return api.predict(bundle, amplicon_samples(table, None, 64, sample_ids=test_ids),
                           log=lambda m: None, **kwargs)
    before = predict(clean)
    matched = np.abs(predict(variant) - before).mean()
    exact = np.abs(predict(variant, match_identity=1.0) - before).mean()
    mae = np.abs(before - md.loc[test_ids, "age_days"].to_numpy()).mean()
    assert mae < 130
    assert matched < 3.0 and exact > 10 * matched, (matched, exact)
