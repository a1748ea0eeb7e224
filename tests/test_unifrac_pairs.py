"""UniFrac per batch from the tree (issue 13): the same numbers as the unifrac library, and
the same pretraining as with the full matrix."""
import numpy as np
import pytest
import torch

from q2_aam import _inputs
from q2_aam.core import api, unifrac
from q2_aam.core.engine import TrainConfig
from q2_aam.core.unifrac import MatrixDistances, TreeDistances


@pytest.fixture(scope="module")
def ecam60():
    from q2_aam.example_data import load_dataset
    data = load_dataset("ecam")
    ids = list(data.metadata.index)[::15][:60]
    samples = _inputs.amplicon_samples(data.table, None, 64, sample_ids=ids)
    return samples, data.tree


@pytest.mark.parametrize("metric", ["unweighted", "weighted-normalized"])
def test_tree_distances_match_the_library(ecam60, metric):
    samples, tree = ecam60
    full = unifrac.unifrac_distances(samples, tree, metric)  # the unifrac library
    pairs = TreeDistances(samples, tree, metric)
    index = torch.tensor([3, 0, 17, 42, 8, 59, 23, 11])
    got = pairs.between(index).numpy()
    expected = full[np.ix_(index.numpy(), index.numpy())]
    assert np.abs(got - expected).max() < 1e-5
    assert got[1, 2] > 0.05  # real distances, not zeros
    assert np.abs(pairs.between(torch.arange(60)).numpy() - full).max() < 1e-5


def test_large_studies_get_tree_distances(ecam60, monkeypatch):
    samples, tree = ecam60
    monkeypatch.setattr(unifrac, "UNIFRAC_MATRIX_MAX_SAMPLES", 50)
    assert isinstance(unifrac.unifrac_distances(samples, tree, "unweighted"), TreeDistances)
    monkeypatch.setattr(unifrac, "UNIFRAC_MATRIX_MAX_SAMPLES", 60)
    assert isinstance(unifrac.unifrac_distances(samples, tree, "unweighted"), np.ndarray)


def test_pretraining_is_the_same_with_either(ecam60, monkeypatch):
    """Batch pairs from the tree train the same model as the matrix (validation included,
    in blocks smaller than the validation set)."""
    from q2_aam.core import engine
    samples, tree = ecam60
    monkeypatch.setattr(engine, "VALIDATION_PAIR_BLOCK", 5)
    architecture = dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1,
                        sample_layers=1, dropout=0.0)
    config = TrainConfig(epochs=2, batch_size=8, seed=0, device="cpu")
    runs = [api.pretrain(samples, distances, architecture=architecture, config=config,
                         validation_fraction=0.2, log=lambda m: None).training["history"]
            for distances in (unifrac.unifrac_distances(samples, tree, "unweighted"),
                              TreeDistances(samples, tree, "unweighted"))]
    for matrix_epoch, tree_epoch in zip(*runs):
        assert tree_epoch["train_loss"] == pytest.approx(matrix_epoch["train_loss"], rel=1e-4)
        assert tree_epoch["val_loss"] == pytest.approx(matrix_epoch["val_loss"], rel=1e-4)


def test_distances_must_cover_the_samples(ecam60):
    samples, _ = ecam60
    with pytest.raises(ValueError, match="cover 10 samples, but there are 60"):
        api.pretrain(samples, np.zeros((10, 10)), config=TrainConfig(epochs=1),
                     log=lambda m: None)
    with pytest.raises(ValueError, match="must be square"):
        MatrixDistances(np.zeros((3, 4)))
