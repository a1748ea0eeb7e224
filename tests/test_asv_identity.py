"""ASV identity embeddings and the linear readout: the pieces that let the target branch
single out specific ASVs and read how much of each a sample holds."""
import hashlib

import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.data import AmpliconSamples, BatchCollator
from q2_aam.core.engine import TrainConfig
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize
from q2_aam.core.vocabulary import Vocabulary, sequence_key

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = SMALL_ARCHITECTURE


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


def test_collated_slots_carry_their_asvs_vocabulary_row(samples):
    rows = Vocabulary.of_samples(samples, 2).exact_rows(samples.sequences)
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens,
                          vocabulary=rows)([0, 1, 2, 3])
    for b, r in enumerate([0, 1, 2, 3]):
        features, _ = samples.sample(r)
        assert batch["asv_vocab"][b, : len(features)].tolist() == rows[features].tolist()
        assert (batch["asv_vocab"][b, len(features):] == 0).all()


@pytest.mark.parametrize("linear_readout", [False, True])
def test_identity_separates_asvs_with_the_same_sequence(linear_readout):
    """Two features with one sequence differ only by their identity rows."""
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=2,
                                 linear_readout=linear_readout, **SMALL)).eval()
    for p in model.parameters():  # away from the zero starts (head output, linear readout)
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.3)
    counts = np.array([[10, 0, 5], [0, 10, 5]])
    samples = AmpliconSamples.from_counts(counts, ["s0", "s1"], ["f0", "f1", "f2"],
                                          ["ACGTACGT", "ACGTACGT", "TTTTGGGG"], 3)
    tokens = tokenize(samples.sequences).tokens
    same_row = BatchCollator(samples, tokens, vocabulary=np.array([1, 1, 0]))([0, 1])
    own_rows = BatchCollator(samples, tokens, vocabulary=np.array([1, 2, 0]))([0, 1])
    with torch.no_grad():
        same = model(same_row)["prediction"]
        own = model(own_rows)["prediction"]
    torch.testing.assert_close(same[0], same[1])
    assert not torch.allclose(own[0], own[1])


def test_trained_model_stores_its_vocabulary_and_predicts_after_reloading(tmp_path):
    samples = random_samples(n_samples=16, seed=1)
    y = np.array([float(samples.sample(i)[1][0]) for i in range(len(samples))])
    bundle = api.train(samples, y, task="regression", architecture=dict(SMALL),
                       config=TrainConfig(epochs=2, batch_size=4, device="cpu"),
                       validation_fraction=0.25, asv_min_samples=2, log=lambda m: None)
    vocab = bundle.target["asv_vocabulary"]
    assert vocab and bundle.model_config["asv_vocabulary_size"] == len(vocab)
    before = api.predict(bundle, samples, log=lambda m: None)
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    np.testing.assert_array_equal(api.predict(loaded, samples, log=lambda m: None), before)
    # The vocabulary is keyed by sequence, not feature ID or column order.
    order = np.arange(len(samples.feature_ids))[::-1]
    renamed = AmpliconSamples.from_counts(
        samples.kept_counts()[:, order], samples.sample_ids,
        [f"other{i}" for i in order], [samples.sequences[i] for i in order], 16)
    # (float sums in another order: equal to float precision, not bit for bit)
    np.testing.assert_allclose(api.predict(loaded, renamed, log=lambda m: None), before,
                               rtol=1e-4)


def test_linear_readout_is_the_sum_of_coefficient_times_log_abundance():
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=3,
                                 linear_readout=True, **SMALL)).eval()
    with torch.no_grad():
        model.linear.weight[:] = torch.tensor([[0.0], [1.0], [-2.0], [0.5]])
        model.linear_bias.fill_(3.0)
    counts = np.array([[10, 30, 0, 60], [5, 0, 5, 0]])
    samples = AmpliconSamples.from_counts(counts, ["s0", "s1"], list("abcd"),
                                          ["AAAA", "CCCC", "GGGG", "TTTT"], 4)
    vocabulary = np.array([1, 2, 3, 0])  # d has no row of its own: no coefficient
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens,
                          vocabulary=vocabulary)([0, 1])
    level = lambda rel: 1 + np.log10(rel) / 6  # the third abundance feature
    expected = [3 + 1.0 * level(0.1) - 2.0 * level(0.3),
                3 + 1.0 * level(0.5) + 0.5 * level(0.5)]
    # The head starts at zero, so the prediction is the linear readout alone.
    with torch.no_grad():
        got = model(batch)["prediction"][:, 0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_linear_readout_adds_the_presence_coefficient_of_each_asv_present():
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=3,
                                 linear_readout=True, linear_presence=True, **SMALL)).eval()
    with torch.no_grad():
        model.linear.weight[:] = torch.tensor([[0.0], [1.0], [-2.0], [0.5]])
        model.linear_presence.weight[:] = torch.tensor([[0.0], [0.25], [4.0], [-1.0]])
        model.linear_bias.fill_(3.0)
    counts = np.array([[10, 30, 0, 60], [5, 0, 5, 0]])
    samples = AmpliconSamples.from_counts(counts, ["s0", "s1"], list("abcd"),
                                          ["AAAA", "CCCC", "GGGG", "TTTT"], 4)
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens,
                          vocabulary=np.array([1, 2, 3, 0]))([0, 1])
    level = lambda rel: 1 + np.log10(rel) / 6
    expected = [3 + 1.0 * level(0.1) + 0.25 - 2.0 * level(0.3) + 4.0,
                3 + 1.0 * level(0.5) + 0.25 + 0.5 * level(0.5) - 1.0]
    with torch.no_grad():
        got = model(batch)["prediction"][:, 0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def _sparse_design(n=300, p=120, seed=0):
    """Readout blocks (log levels, presences) of ``p`` ASVs, each in half the samples."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, p)) < 0.5
    level = np.where(present, rng.uniform(0.3, 0.9, (n, p)), 0.0)
    return {"level": level, "presence": present * 1.0}, level, present, rng


def test_readout_chooses_lasso_when_a_few_asvs_carry_the_signal():
    from q2_aam.core.linear import fit_regression
    x, level, present, rng = _sparse_design()
    y = 4 * present[:, 3] - 4 * present[:, 7] + 3 * level[:, 11] + rng.normal(0, 0.3, 300)
    coef, _, how = fit_regression(x, y)
    assert how.startswith(("lasso", "elastic net", "relaxed")), how
    top = set(np.argsort(-np.abs(coef))[:3])
    assert top == {120 + 3, 120 + 7, 11}, (top, how)


def test_readout_chooses_ridge_when_many_asvs_each_carry_a_little():
    from q2_aam.core.linear import fit_regression
    x, level, present, rng = _sparse_design()
    y = level @ rng.normal(0, 1, 120) + rng.normal(0, 0.5, 300)
    _, _, how = fit_regression(x, y)
    assert how.startswith("ridge"), how


def _planted(n=160, seed=0):
    """Counts over 40 ASVs; the target is linear in two ASVs' log abundances."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, (n, 40)) * (rng.random((n, 40)) < 0.5)
    counts[:, 0] += 1
    seqs = ["".join(rng.choice(list("ACGT"), 24)) for _ in range(40)]
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n)],
                                          [f"f{i}" for i in range(40)], seqs, 40)
    rel = counts / counts.sum(1, keepdims=True)
    level = np.where(counts > 0, 1 + np.log10(np.maximum(rel, 1e-12)) / 6, 0)
    return samples, 3 * level[:, 5] - 2 * level[:, 9] + rng.normal(0, 0.05, n)


def test_linear_readout_is_fitted_before_training_and_kept():
    samples, y = _planted()
    bundle = api.train(samples, y, task="regression", architecture=dict(SMALL),
                       config=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                       target_transform="zscore", log=lambda m: None)
    vocab = bundle.target["asv_vocabulary"]
    weights = bundle.state_dict["linear.weight"][1:, 0].numpy()
    row = {key: i for i, key in enumerate(vocab)}
    planted = [weights[row[sequence_key(samples.sequences[j])]] for j in (5, 9)]
    others = np.delete(weights, [row[sequence_key(samples.sequences[j])] for j in (5, 9)])
    assert planted[0] > 0 > planted[1]
    assert min(abs(planted[0]), abs(planted[1])) > 5 * np.abs(others).max()
    predicted = api.predict(bundle, samples, log=lambda m: None)
    assert np.corrcoef(predicted, y)[0, 1] > 0.95


def test_classifier_gets_a_logistic_linear_readout():
    samples, y = _planted()
    labels = np.where(y > np.median(y), "high", "low")
    bundle = api.train(samples, labels, task="classification", architecture=dict(SMALL),
                       config=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                       log=lambda m: None)
    assert bundle.state_dict["linear.weight"].shape == (len(bundle.target["asv_vocabulary"])
                                                        + 1, 2)
    assert (api.predict(bundle, samples, log=lambda m: None) == labels).mean() > 0.9
