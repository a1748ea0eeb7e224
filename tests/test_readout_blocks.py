"""The linear readout's clade and conditional blocks: what is fitted in numpy (``linear``)
is what the model computes in torch, the response includes the readout's share, and a
planted clade or ASV x category interaction is found by ``api.train``."""
import io

import numpy as np
import scipy.sparse as sp
import pytest
import skbio
import torch

from q2_aam.core import api
from q2_aam.core.data import AmpliconSamples, BatchCollator, encode_categories, fit_vocabularies
from q2_aam.core.engine import TrainConfig
from q2_aam.core.linear import clades, readout_blocks, relative_matrix
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
    model.clade_rows.copy_(torch.as_tensor(rows))
    model.clade_ids.copy_(torch.as_tensor(ids))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for part in model.readout_parameters():
            part.copy_(torch.as_tensor(rng.normal(0, 1, part.shape), dtype=part.dtype))
        model.linear.weight[0] = model.linear_presence.weight[0] = 0
        model.linear_conditional.weight[0] = 0
        model.linear_conditional.weight[:, 0] = 0  # the unknown value has no coefficient
    return model, rows, ids


def test_model_readout_equals_the_fitted_blocks_times_their_coefficients():
    model, rows, ids = _model()
    samples = _samples([[5, 1, 0, 0, 3], [0, 2, 0, 4, 1], [1, 0, 6, 0, 0], [0, 0, 2, 3, 9]])
    vocabulary_rows = np.array([1, 2, 3, 4, 0])
    categories = encode_categories({"season": ["x", "y", None, "y"]},
                                   fit_vocabularies({"season": ["x", "y", None, "y"]},
                                                    np.arange(4)))
    blocks = readout_blocks(samples, vocabulary_rows, 4, rows, ids, categories, [3])
    conditional = model.linear_conditional.weight[1:].detach().reshape(4, 3).T.reshape(-1)
    coef = np.concatenate([model.linear.weight[1:, 0].detach().numpy(),
                           model.linear_presence.weight[1:, 0].detach().numpy(),
                           model.linear_clade[:, 0].detach().numpy(), conditional.numpy()])
    expected = sp.hstack(list(blocks.values())).toarray() @ coef + float(model.linear_bias.detach())
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens, categories=categories,
                          vocabulary=vocabulary_rows)([0, 1, 2, 3])
    with torch.no_grad():
        got = model(batch)["prediction"][:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The conditional block moves the prediction: without it, it differs.
    assert np.abs(expected - (sp.hstack(list(blocks.values())[:3]).toarray() @ coef[:len(coef) - 12]
                              + float(model.linear_bias.detach()))).max() > 0.1


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
        plain, patched = model.conditioning_response(batch, embeddings)
    weights = model.linear_conditional.weight.detach().numpy()  # (V + 1, 3 values)
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


def _reference_l1(x, y, folds):
    """The L1 candidates as q2-aam computed them before issue 26: scikit-learn's
    ``ElasticNetCV``, then a second elastic-net path per fold for the relaxed lasso."""
    from sklearn.linear_model import ElasticNetCV, Ridge, enet_path
    from q2_aam.core.linear import L1_RATIOS, REFIT_ALPHA, RELAXED_MIX
    net = ElasticNetCV(l1_ratio=list(L1_RATIOS), n_alphas=30, cv=folds, max_iter=5000,
                       tol=1e-3).fit(x, y)
    alphas = np.asarray(net.alphas_)[list(L1_RATIOS).index(net.l1_ratio_)]
    errors = np.zeros((len(alphas), len(RELAXED_MIX)))
    for train, test in folds:
        mean, centre = x[train].mean(axis=0), y[train].mean()
        _, path, _ = enet_path(x[train] - mean, y[train] - centre, alphas=alphas,
                               l1_ratio=net.l1_ratio_, max_iter=5000, tol=1e-3)
        for k in range(len(alphas)):
            support = np.flatnonzero(path[:, k])
            if len(support) > len(train) // 2:
                errors[k] = np.inf
                continue
            lasso = (x[test] - mean) @ path[:, k] + centre
            if len(support):
                ridge = Ridge(alpha=REFIT_ALPHA).fit(x[train][:, support], y[train])
                refit = x[test][:, support] @ ridge.coef_ + ridge.intercept_
            else:
                refit = y[train].mean()
            for m, mix in enumerate(RELAXED_MIX):
                errors[k, m] += np.mean((mix * lasso + (1 - mix) * refit - y[test]) ** 2) \
                    / len(folds)
    k, m = np.unravel_index(np.argmin(errors), errors.shape)
    return {"l1_ratio": net.l1_ratio_, "error": float(net.mse_path_.mean(axis=-1).min()),
            "alpha": float(net.alpha_), "relaxed_error": float(errors[k, m]),
            "relaxed_alpha": float(alphas[k]), "mix": RELAXED_MIX[m], "coef": net.coef_}


@pytest.mark.parametrize("signal", ["sparse", "dense"])
def test_the_l1_cross_validation_chooses_as_scikit_learns_elastic_net_cv(signal):
    """The readout's own pass over the folds (each elastic-net path computed once, on a
    working set of columns, folds in parallel) gives the choice, penalties and errors of
    scikit-learn's ElasticNetCV plus the relaxed lasso's second pass, which it replaced."""
    from sklearn.linear_model import ElasticNet
    from q2_aam.core.linear import _folds, _l1_cv
    rng = np.random.default_rng(0 if signal == "sparse" else 1)
    x = np.where(rng.random((150, 120)) < 0.4, rng.random((150, 120)), 0.0)
    beta = np.zeros(120)
    beta[:4 if signal == "sparse" else 120] = rng.normal(size=4 if signal == "sparse" else 120)
    y = x @ beta + 0.3 * rng.normal(size=150)
    folds = _folds(150, np.repeat(np.arange(30), 5))
    ours, reference = _l1_cv(x, y, folds), _reference_l1(x, y, folds)
    assert ours["l1_ratio"] == reference["l1_ratio"] and ours["mix"] == reference["mix"]
    for key in ("alpha", "relaxed_alpha"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-12), key
    # The same optimum, reached on a working set of columns: equal within the coordinate
    # descent's own tolerance.
    for key in ("error", "relaxed_error"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-5), key
    net = ElasticNet(alpha=ours["alpha"], l1_ratio=ours["l1_ratio"], max_iter=5000,
                     tol=1e-3).fit(x, y)
    np.testing.assert_allclose(net.coef_, reference["coef"], atol=1e-12)


def test_the_ridge_cross_validation_equals_fitting_every_weighting_and_penalty():
    """The kernel form (each block's kernel once per fold, folds in parallel) chooses the
    block weights and penalty that fitting scikit-learn's Ridge on the weighted columns for
    every weighting, penalty and fold chooses, with the same error."""
    import itertools
    from sklearn.linear_model import Ridge
    from q2_aam.core.linear import ALPHAS, BLOCK_WEIGHTS, _folds, _ridge_cv
    rng = np.random.default_rng(3)
    blocks = {name: np.where(rng.random((90, n)) < 0.5, rng.random((90, n)), 0.0)
              for name, n in (("level", 30), ("presence", 30), ("clade", 10))}
    y = blocks["level"][:, :5].sum(1) + blocks["clade"][:, 0] + 0.2 * rng.normal(size=90)
    folds = _folds(90, np.repeat(np.arange(18), 5))
    best = (np.inf, None, None)
    for choice in itertools.product(BLOCK_WEIGHTS["presence"], BLOCK_WEIGHTS["clade"]):
        weights = {"presence": choice[0], "clade": choice[1]}
        x = np.hstack([weights.get(k, 1.0) * v for k, v in blocks.items()])
        errors = np.zeros(len(ALPHAS))
        for train, test in folds:
            for i, alpha in enumerate(ALPHAS):
                fit = Ridge(alpha=alpha).fit(x[train], y[train])
                errors[i] += np.mean((fit.predict(x[test]) - y[test]) ** 2) / len(folds)
        if errors.min() < best[0]:
            best = (errors.min(), weights, ALPHAS[errors.argmin()])
    error, weights, alpha = _ridge_cv(blocks, y, folds)
    assert (weights, alpha) == (best[1], best[2])
    assert error == pytest.approx(best[0], rel=1e-8)


def _whole_path_errors(x, y, train, test, ratio, alphas):
    """Held-out errors along every penalty of the path, never stopping."""
    from q2_aam.core.linear import _screened_steps
    return np.array([error for _, error in _screened_steps(x, y, train, test, alphas, ratio)])


def test_the_paths_stop_past_their_best_and_choose_as_the_whole_path():
    """The elastic-net paths stop a few penalties past the folds' best mean error (the
    slow end of a path) and choose the penalty the whole path would have chosen."""
    from q2_aam.core import linear
    rng = np.random.default_rng(2)
    x = np.where(rng.random((150, 200)) < 0.4, rng.random((150, 200)), 0.0)
    y = x[:, :4] @ np.array([3.0, -2.0, 2.0, 1.5]) + 0.3 * rng.normal(size=150)
    folds = linear._folds(150, np.repeat(np.arange(30), 5))
    alphas = {r: linear._path_alphas(x, y, r) for r in linear.L1_RATIOS}
    stopped = linear._l1_paths(x, y, folds, alphas)
    for ratio, (paths, errors) in stopped.items():
        assert errors.shape[1] < linear.N_PATH_ALPHAS, ratio  # it did stop early
        whole = np.mean([_whole_path_errors(x, y, train, test, ratio, alphas[ratio])
                         for train, test in folds], axis=0)
        assert int(np.argmin(errors.mean(axis=0))) == int(np.argmin(whole))
        np.testing.assert_allclose(errors.mean(axis=0), whole[:errors.shape[1]], rtol=1e-9)
