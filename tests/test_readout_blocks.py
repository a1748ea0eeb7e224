"""The linear readout's columns (``core/readout/blocks.py``) and its module in the model
(``core/readout/module.py``): each ASV's level and presence coefficients, the clade and
conditional blocks fitted in numpy are what the model computes in torch, the response
includes the readout's share, and a planted clade or ASV x category interaction is found
by ``api.train``. The fits themselves are in ``test_readout_fits.py``."""
import io

import numpy as np
import pytest
import scipy.sparse as sp
import skbio
import torch

from q2_aam.core import api, explain
from q2_aam.core.data import AmpliconSamples, BatchCollator, encode_categories, fit_vocabularies
from q2_aam.core.engine import TrainConfig
from q2_aam.core.readout import clades, readout_blocks, relative_matrix
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize
from conftest import SMALL_ARCHITECTURE

SMALL = SMALL_ARCHITECTURE
SEQUENCES = ["AAAACCCC", "CCCCGGGG", "GGGGTTTT", "TTTTAAAA", "ACGTACGT"]
TREE = "(((a:1,b:1)ab:1,c:1)abc:1,(d:1,e:1)de:1)root;"


def _samples(counts):
    return AmpliconSamples.from_counts(np.asarray(counts), [f"s{i}" for i in range(len(counts))],
                                       list("abcde"), SEQUENCES, 5)


def test_clades_are_internal_nodes_with_two_or_more_vocabulary_asvs_and_in_range():
    samples = _samples([[5, 1, 0, 0, 3], [0, 2, 0, 4, 1], [1, 0, 6, 0, 0], [0, 0, 0, 3, 2]])
    vocabulary_rows = np.array([1, 2, 3, 4, 0])  # e has no row: it joins no clade
    relative = relative_matrix(samples, vocabulary_rows, 4)
    tree = skbio.TreeNode.read(io.StringIO(TREE))
    rows, ids = clades(tree, {"a": 0, "b": 1, "c": 2, "d": 3}, relative)
    members = sorted(tuple(sorted(rows[ids == k])) for k in np.unique(ids))
    # ab, abc, root (a-d) qualify by members; de has only d; root is held by every sample
    # (over 98 %), so it is left out.
    assert members == [(1, 2), (1, 2, 3)]


def test_linear_readout_is_the_sum_of_coefficient_times_log_abundance():
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=3,
                                 linear_readout=True, **SMALL)).eval()
    with torch.no_grad():
        model.readout.level.weight[:] = torch.tensor([[0.0], [1.0], [-2.0], [0.5]])
        model.readout.bias.fill_(3.0)
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
        model.readout.level.weight[:] = torch.tensor([[0.0], [1.0], [-2.0], [0.5]])
        model.readout.presence.weight[:] = torch.tensor([[0.0], [0.25], [4.0], [-1.0]])
        model.readout.bias.fill_(3.0)
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


def _model(cards=(3,), clades_=((1, 2), (1, 2, 3))):
    rows = np.concatenate([np.asarray(c) for c in clades_])
    ids = np.repeat(np.arange(len(clades_)), [len(c) for c in clades_])
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, asv_vocabulary_size=4,
                                 linear_readout=True, linear_presence=True,
                                 linear_clades=len(clades_), linear_clade_memberships=len(rows),
                                 linear_conditional=True, categorical_cardinalities=list(cards),
                                 categorical_fusion="cross-attention", cross_attn_heads=2,
                                 **SMALL)).eval()
    model.readout.clade_rows.copy_(torch.as_tensor(rows))
    model.readout.clade_ids.copy_(torch.as_tensor(ids))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for part in model.readout_parameters():
            part.copy_(torch.as_tensor(rng.normal(0, 1, part.shape), dtype=part.dtype))
        model.readout.level.weight[0] = model.readout.presence.weight[0] = 0
        model.readout.conditional.weight[0] = 0
        model.readout.conditional.weight[:, 0] = 0  # the unknown value has no coefficient
    return model, rows, ids


def test_model_readout_equals_the_fitted_blocks_times_their_coefficients():
    model, rows, ids = _model()
    samples = _samples([[5, 1, 0, 0, 3], [0, 2, 0, 4, 1], [1, 0, 6, 0, 0], [0, 0, 2, 3, 9]])
    vocabulary_rows = np.array([1, 2, 3, 4, 0])
    categories = encode_categories({"season": ["x", "y", None, "y"]},
                                   fit_vocabularies({"season": ["x", "y", None, "y"]},
                                                    np.arange(4)))
    blocks = readout_blocks(samples, vocabulary_rows, 4, rows, ids, categories, [3])
    conditional = model.readout.conditional.weight[1:].detach().reshape(4, 3).T.reshape(-1)
    coef = np.concatenate([model.readout.level.weight[1:, 0].detach().numpy(),
                           model.readout.presence.weight[1:, 0].detach().numpy(),
                           model.readout.clade[:, 0].detach().numpy(), conditional.numpy()])
    bias = float(model.readout.bias.detach())
    expected = sp.hstack(list(blocks.values())).toarray() @ coef + bias
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens, categories=categories,
                          vocabulary=vocabulary_rows)([0, 1, 2, 3])
    with torch.no_grad():
        got = model(batch)["prediction"][:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The conditional block moves the prediction: without it, it differs.
    assert np.abs(expected - (sp.hstack(list(blocks.values())[:3]).toarray() @ coef[:len(coef) - 12]
                              + float(model.readout.bias.detach()))).max() > 0.1


def test_a_fit_is_loaded_block_by_block_in_block_order():
    """``load_fit`` puts each block's columns where the model reads them (the stacked fit in
    BLOCK_ORDER), so the model computes the stacked columns times the fit, and it refuses
    blocks in another order."""
    model, rows, ids = _model()
    samples = _samples([[5, 1, 0, 0, 3], [0, 2, 0, 4, 1], [1, 0, 6, 0, 0], [0, 0, 2, 3, 9]])
    vocabulary_rows = np.array([1, 2, 3, 4, 0])
    categories = np.array([[1], [2], [0], [2]])
    blocks = readout_blocks(samples, vocabulary_rows, 4, rows, ids, categories, [3])
    widths = {name: x.shape[1] for name, x in blocks.items()}
    coef = np.random.default_rng(4).normal(size=(sum(widths.values()), 1))
    # The unknown value's columns are 0 in every sample, so a fit gives them 0 (the model
    # reads its coefficients for a sample of unknown value).
    unknown = widths["level"] + widths["presence"] + widths["clade"]
    coef[unknown:unknown + 4] = 0
    model.readout.load_fit(coef, np.array([0.5]), widths)
    assert not any(p.requires_grad for p in model.readout.parameters())
    expected = sp.hstack(list(blocks.values())).toarray() @ coef[:, 0] + 0.5
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens, categories=categories,
                          vocabulary=vocabulary_rows)([0, 1, 2, 3])
    with torch.no_grad():
        got = model.readout(batch)[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not in"):
        model.readout.load_fit(coef, np.array([0.5]), dict(reversed(list(widths.items()))))


def test_response_includes_the_readouts_change_of_coefficient_for_that_asv():
    """With the network's head at zero (as trained models start), the response of slot j to
    value v is exactly level_j x (coefficient for v - coefficient for the sample's value)."""
    model, _, _ = _model()
    samples = _samples([[5, 1, 0, 0, 3], [0, 2, 0, 4, 1]])
    vocabulary_rows = np.array([1, 2, 3, 4, 0])
    categories = np.array([[1], [2]])
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens, categories=categories,
                          vocabulary=vocabulary_rows)([0, 1])
    with torch.no_grad():
        embeddings = model.encode_asvs(batch["asv_tokens"])
        plain, patched = explain.slot_responses(model, batch, embeddings)
    weights = model.readout.conditional.weight.detach().numpy()  # (V + 1, 3 values)
    level = batch["abundance"][..., 2].numpy()
    for b, other in ((0, 2), (1, 1)):
        for j in np.flatnonzero(batch["asv_mask"][b].numpy()):
            row = int(batch["asv_vocab"][b, j])
            change = level[b, j] * (weights[row, other] - weights[row, categories[b, 0]])
            np.testing.assert_allclose(float(patched[b, j, 0, other, 0] - plain[b, 0]),
                                       change, atol=1e-5)


def _interaction_data(n=240, seed=0):
    """ASV 0's abundance raises the target in season 'x' only; ASV 1 lowers it always."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 50, (n, 12)) * (rng.random((n, 12)) < 0.6)
    counts[:, :2] = rng.integers(1, 400, (n, 2))
    rel = counts / counts.sum(1, keepdims=True)
    season = rng.choice(["x", "y"], n)
    y = (3 * np.log10(rel[:, 0]) * (season == "x") - 2 * np.log10(rel[:, 1])
         + rng.normal(0, 0.1, n))
    seqs = ["".join(rng.choice(list("ACGT"), 24)) for _ in range(12)]
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n)],
                                          [f"f{i}" for i in range(12)], seqs, 12)
    return samples, y, season


def test_cross_attention_readout_fits_an_asv_by_category_interaction():
    samples, y, season = _interaction_data()
    train, test = np.arange(180), np.arange(180, 240)
    scores = {}
    for fusion in ("concat", "cross-attention"):
        bundle = api.train(samples.subset(train), y[train], task="regression",
                           categorical={"season": season[train].tolist()},
                           architecture={**SMALL, "categorical_fusion": fusion,
                                         "cross_attn_heads": 2},
                           config=TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu"),
                           log=lambda m: None)
        predicted = api.predict(bundle, samples.subset(test),
                                categorical={"season": season[test].tolist()},
                                log=lambda m: None)
        truth = y[test]
        scores[fusion] = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    # Measured: cross-attention 0.90, concat 0.33 (its readout has one coefficient per ASV).
    assert scores["cross-attention"] > 0.8, scores
    assert scores["cross-attention"] > scores["concat"] + 0.3, scores


def test_phylogeny_gives_the_readout_clades_and_they_are_saved(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    counts = rng.integers(0, 30, (n, 5)) * (rng.random((n, 5)) < 0.7)
    counts[:, 4] += 5
    rel = counts / counts.sum(1, keepdims=True)
    clade = rel[:, 0] + rel[:, 1]  # a and b respond together
    y = np.log10(np.maximum(clade, 1e-3)) + rng.normal(0, 0.05, n)
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n)], list("abcde"),
                                          SEQUENCES, 5)
    bundle = api.train(samples, y, task="regression", architecture=SMALL,
                       phylogeny=skbio.TreeNode.read(io.StringIO(TREE)),
                       config=TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu"),
                       log=lambda m: None)
    assert bundle.model_config["linear_clades"] >= 1
    bundle.save(tmp_path / "m")
    from q2_aam.core.bundle import ModelBundle
    again = ModelBundle.load(tmp_path / "m")
    np.testing.assert_allclose(api.predict(again, samples), api.predict(bundle, samples),
                               rtol=1e-6)
    # The readout's tensors keep the names models were always saved under (so a model file
    # is the file it was before the readout had a module, and older models load).
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as saved:
        names = set(saved.keys())
    assert {"linear.weight", "linear_presence.weight", "linear_bias", "linear_clade",
            "clade_rows", "clade_ids"} <= names
    assert not [name for name in names if name.startswith("readout.")]
    for name, value in bundle.state_dict.items():
        torch.testing.assert_close(again.state_dict[name], value, rtol=0, atol=0)
