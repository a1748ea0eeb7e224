"""The readout above ``CV_SAMPLES`` samples (issue 26): its hyperparameters are chosen on a
subsample of whole subjects and the chosen fit is made on every sample's sparse columns.
The final fits must equal the exact dense fits with the same hyperparameters, and the
choice must read only the subsample."""
import numpy as np
import pytest
import scipy.sparse as sp

from q2_aam.core.readout import choice, lasso, logistic, ridge
from q2_aam.core.readout import folds as cv


def test_the_subsample_holds_whole_subjects_and_at_most_the_limit():
    groups = np.repeat([f"subject {i}" for i in range(300)], np.arange(300) % 7 + 1)
    assert cv.cv_rows(len(groups), groups, limit=len(groups)) is None
    rows = cv.cv_rows(len(groups), groups, limit=400)
    assert 400 - 7 < len(rows) <= 400
    kept = set(groups[rows])
    assert sum(np.isin(groups, list(kept))) == len(rows)  # every sample of a kept subject
    np.testing.assert_array_equal(rows, cv.cv_rows(len(groups), groups, limit=400))
    plain = cv.cv_rows(1000, None, limit=250)
    assert len(plain) == 250 and len(set(plain)) == 250


def _design(n, p, seed):
    rng = np.random.default_rng(seed)
    present = rng.random((n, p)) < 0.3
    level = np.where(present, rng.uniform(0.3, 0.9, (n, p)), 0.0)
    return ({"level": sp.csr_matrix(level), "presence": sp.csr_matrix(present * 1.0)},
            level, present, rng)


def _chosen(monkeypatch, blocks, y, groups, limit):
    monkeypatch.setattr(cv, "CV_SAMPLES", limit)
    said = []
    coef, intercept, how = choice.fit_regression(blocks, y, groups, log=said.append)
    return coef, intercept, how, said


def test_a_ridge_chosen_on_a_subsample_is_fitted_on_all_samples(monkeypatch):
    from sklearn.linear_model import Ridge
    blocks, level, present, rng = _design(600, 80, 0)
    y = level @ rng.normal(0, 1, 80) + rng.normal(0, 0.5, 600)
    groups = np.repeat(np.arange(120), 5)
    coef, intercept, how, said = _chosen(monkeypatch, blocks, y, groups, 200)
    assert how.startswith("ridge") and "on 200 of the 600 samples" in how, how
    assert any("a subsample of whole subjects of the 600 samples" in m for m in said), said
    assert any(m.startswith("Readout: the ridge regression checked and fitted on all 600") for m in said)
    # The choice read the subsample alone (as fitting the subsample itself chooses), then
    # its penalty was checked on all samples over REFINE_MULTIPLES of it, by the same folds.
    rows = cv.cv_rows(600, groups, 200)
    alone = choice.fit_regression({k: v[rows] for k, v in blocks.items()}, y[rows],
                                  groups[rows])[2]
    chosen = float(alone.split("penalty ")[1].split(",")[0])
    weight = float(how.split("presence weight ")[1].split(";")[0])
    assert alone.split("penalty")[0] == how.split("penalty")[0]  # the same candidate
    assert f"presence weight {weight:g};" in alone, (alone, how)
    assert f"the penalty {chosen:.3g} of the subsample was checked on all samples" in how
    x = np.hstack([level] + [weight * present] * (weight > 0))
    errors = []
    for multiple in ridge.REFINE_MULTIPLES:
        folds = cv.cv_folds(600, groups)
        errors.append(np.mean([np.mean((Ridge(alpha=chosen * multiple).fit(x[tr], y[tr])
                                        .predict(x[te]) - y[te]) ** 2) for tr, te in folds]))
    assert 0 < int(np.argmin(errors)) < len(errors) - 1  # (else the search goes on)
    best = ridge.REFINE_MULTIPLES[int(np.argmin(errors))]
    assert f"{best:g} times it was best" in how, (how, errors)
    # From a penalty far too strong, the check goes on past the smallest multiple.
    far = ridge.refined_ridge_alpha(ridge.weighted_stack(blocks, {"presence": weight}), y,
                                      chosen * 1000, groups)
    assert far < chosen * 1000 * min(ridge.REFINE_MULTIPLES), far
    alpha = float(how.split("penalty ")[1].split(",")[0])
    for weight in {weight, 1.0}:  # the chosen weight, and one that keeps the presences
        exact = Ridge(alpha=alpha).fit(np.hstack([level] + [weight * present] * (weight > 0)),
                                       y)
        expected = np.concatenate([exact.coef_[:80], weight * exact.coef_[80:]
                                   if weight else np.zeros(80)])
        # (how prints 3 significant digits of the penalty: both fits take those)
        mine = ridge.fit_ridge(blocks, y, {"presence": weight}, alpha)
        np.testing.assert_allclose(mine[0], expected, atol=1e-5)
        assert mine[1] == pytest.approx(exact.intercept_, abs=1e-5)
    mine = ridge.fit_ridge(blocks, y, {"presence": float(how.split("presence weight ")[1]
                                                            .split(";")[0])}, alpha)
    assert np.corrcoef(coef, mine[0])[0, 1] > 0.999


def test_a_lasso_chosen_on_a_subsample_keeps_its_unnormalised_penalty(monkeypatch):
    from sklearn.linear_model import ElasticNet
    blocks, level, present, rng = _design(600, 120, 1)
    y = 4 * present[:, 3] - 4 * present[:, 7] + 3 * level[:, 11] + rng.normal(0, 0.3, 600)
    coef, intercept, how, said = _chosen(monkeypatch, blocks, y, None, 300)
    assert how.startswith(("lasso", "elastic net", "relaxed")), how
    assert set(np.argsort(-np.abs(coef))[:3]) == {120 + 3, 120 + 7, 11}, how
    # The penalty chosen on 300 samples, times 300 / 600 (scikit-learn divides the
    # squared errors by the number of samples): the L1 candidate's of the subsample.
    rows = cv.cv_rows(600, None, 300)
    folds = cv.cv_folds(300)
    l1 = lasso.l1_cv(np.hstack([level[rows], present[rows] * 1.0]), y[rows], folds)
    key = "relaxed_alpha" if how.startswith("relaxed") else "alpha"
    printed = float(how.split("penalty ")[1].split(",")[0])
    assert printed == pytest.approx(l1[key] * 300 / 600, rel=2e-3), (printed, l1)
    if not how.startswith("relaxed"):
        exact = ElasticNet(alpha=l1[key] / 2, l1_ratio=l1["l1_ratio"], max_iter=5000,
                           tol=1e-3).fit(np.hstack([level, present * 1.0]), y)
        np.testing.assert_allclose(coef, exact.coef_, atol=1e-3)


def test_a_classifier_chosen_on_a_subsample_is_fitted_on_all_samples(monkeypatch):
    from sklearn.linear_model import LogisticRegression
    blocks, level, present, rng = _design(500, 60, 2)
    classes = (level[:, 0] - level[:, 1] + rng.normal(0, 0.2, 500) > 0).astype(int)
    features = sp.hstack([blocks["level"], blocks["presence"]], format="csr")
    monkeypatch.setattr(cv, "CV_SAMPLES", 200)
    said = []
    coef, intercept, how = logistic.fit_classification(features, classes, 2, log=said.append)
    assert "on 200 of the 500 samples" in how, how
    assert any("fitted on all 500 samples" in m for m in said), said
    C = float(how.split("(C ")[1].split(";")[0])
    columns = slice(0, 60) if how.startswith("L2") else slice(None)
    settings = {} if how.startswith("L2") else dict(penalty="l1", solver="liblinear")
    exact = LogisticRegression(C=C, max_iter=2000, **settings).fit(
        features.toarray()[:, columns], classes)
    np.testing.assert_allclose(coef[columns, 1], exact.coef_[0], rtol=0.05, atol=0.05)
