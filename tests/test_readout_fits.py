"""The linear readout's fits (``core/readout/``: ridge, lasso, choice, logistic, plan):
the regressor's choice between a lasso and a ridge, the cross-validation passes equal to
the scikit-learn fits they replaced, and the readout fitted before training and kept. The
fits above ``CV_SAMPLES`` samples are in ``test_readout_scale.py``; the readout's columns
and its module in the model in ``test_readout_blocks.py``."""
import numpy as np
import pytest

from q2_aam.core import api
from q2_aam.core.data import AmpliconSamples
from q2_aam.core.engine import TrainConfig
from q2_aam.core.vocabulary import sequence_key
from conftest import SMALL_ARCHITECTURE

SMALL = SMALL_ARCHITECTURE


def _sparse_design(n=300, p=120, seed=0):
    """Readout blocks (log levels, presences) of ``p`` ASVs, each in half the samples."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, p)) < 0.5
    level = np.where(present, rng.uniform(0.3, 0.9, (n, p)), 0.0)
    return {"level": level, "presence": present * 1.0}, level, present, rng


def test_readout_chooses_lasso_when_a_few_asvs_carry_the_signal():
    from q2_aam.core.readout import fit_regression
    x, level, present, rng = _sparse_design()
    y = 4 * present[:, 3] - 4 * present[:, 7] + 3 * level[:, 11] + rng.normal(0, 0.3, 300)
    coef, _, how = fit_regression(x, y)
    assert how.startswith(("lasso", "elastic net", "relaxed")), how
    top = set(np.argsort(-np.abs(coef))[:3])
    assert top == {120 + 3, 120 + 7, 11}, (top, how)


def test_readout_chooses_ridge_when_many_asvs_each_carry_a_little():
    from q2_aam.core.readout import fit_regression
    x, level, present, rng = _sparse_design()
    y = level @ rng.normal(0, 1, 120) + rng.normal(0, 0.5, 300)
    _, _, how = fit_regression(x, y)
    assert how.startswith("ridge"), how


def _reference_l1(x, y, folds):
    """The L1 candidates as q2-aam computed them before issue 26: scikit-learn's
    ``ElasticNetCV``, then a second elastic-net path per fold for the relaxed lasso."""
    from sklearn.linear_model import ElasticNetCV, Ridge, enet_path
    from q2_aam.core.readout.lasso import L1_RATIOS, REFIT_ALPHA, RELAXED_MIX
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
    from q2_aam.core.readout.folds import cv_folds
    from q2_aam.core.readout.lasso import l1_cv
    rng = np.random.default_rng(0 if signal == "sparse" else 1)
    x = np.where(rng.random((150, 120)) < 0.4, rng.random((150, 120)), 0.0)
    beta = np.zeros(120)
    beta[:4 if signal == "sparse" else 120] = rng.normal(size=4 if signal == "sparse" else 120)
    y = x @ beta + 0.3 * rng.normal(size=150)
    folds = cv_folds(150, np.repeat(np.arange(30), 5))
    ours, reference = l1_cv(x, y, folds), _reference_l1(x, y, folds)
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
    from q2_aam.core.readout.folds import cv_folds
    from q2_aam.core.readout.ridge import ALPHAS, BLOCK_WEIGHTS, ridge_cv
    rng = np.random.default_rng(3)
    blocks = {name: np.where(rng.random((90, n)) < 0.5, rng.random((90, n)), 0.0)
              for name, n in (("level", 30), ("presence", 30), ("clade", 10))}
    y = blocks["level"][:, :5].sum(1) + blocks["clade"][:, 0] + 0.2 * rng.normal(size=90)
    folds = cv_folds(90, np.repeat(np.arange(18), 5))
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
    error, weights, alpha = ridge_cv(blocks, y, folds)
    assert (weights, alpha) == (best[1], best[2])
    assert error == pytest.approx(best[0], rel=1e-8)


def _whole_path_errors(x, y, train, test, ratio, alphas):
    """Held-out errors along every penalty of the path, never stopping."""
    from q2_aam.core.readout.lasso import _screened_steps
    return np.array([error for _, error in _screened_steps(x, y, train, test, alphas, ratio)])


def test_the_paths_stop_past_their_best_and_choose_as_the_whole_path():
    """The elastic-net paths stop a few penalties past the folds' best mean error (the
    slow end of a path) and choose the penalty the whole path would have chosen."""
    from q2_aam.core.readout import lasso
    from q2_aam.core.readout.folds import cv_folds
    rng = np.random.default_rng(2)
    x = np.where(rng.random((150, 200)) < 0.4, rng.random((150, 200)), 0.0)
    y = x[:, :4] @ np.array([3.0, -2.0, 2.0, 1.5]) + 0.3 * rng.normal(size=150)
    folds = cv_folds(150, np.repeat(np.arange(30), 5))
    alphas = {r: lasso._path_alphas(x, y, r) for r in lasso.L1_RATIOS}
    stopped = lasso._l1_paths(x, y, folds, alphas)
    for ratio, (paths, errors) in stopped.items():
        assert errors.shape[1] < lasso.N_PATH_ALPHAS, ratio  # it did stop early
        whole = np.mean([_whole_path_errors(x, y, train, test, ratio, alphas[ratio])
                         for train, test in folds], axis=0)
        assert int(np.argmin(errors.mean(axis=0))) == int(np.argmin(whole))
        np.testing.assert_allclose(errors.mean(axis=0), whole[:errors.shape[1]], rtol=1e-9)


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
    weights = bundle.state_dict["readout.level.weight"][1:, 0].numpy()
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
    assert bundle.state_dict["readout.level.weight"].shape == (len(bundle.target["asv_vocabulary"])
                                                        + 1, 2)
    assert (api.predict(bundle, samples, log=lambda m: None) == labels).mean() > 0.9
