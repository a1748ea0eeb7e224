"""ASV identity embeddings: each training ASV's row of the vocabulary reaches the model with
its slots, lets the target branch single out ASVs that share a sequence, and is saved with
the model. The vocabulary itself is tested in ``test_vocabulary.py``, the linear readout
that reads these rows in ``test_readout_blocks.py`` and ``test_readout_fits.py``."""
import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.data import AmpliconSamples, BatchCollator
from q2_aam.core.engine import TrainConfig
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize
from q2_aam.core.vocabulary import Vocabulary

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = SMALL_ARCHITECTURE


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
