"""The linear readout: each vocabulary ASV's coefficients on its log abundance and on its
presence, fitted in closed form.

A linear model on log abundances and presences, with its penalty chosen by
cross-validation, is what microbiome signals carried by a few ASVs need, and
what stochastic training of the same linear layer does not reach on a few
hundred samples: with Adam and early stopping it stays well below the
closed-form fit (see benchmarks/results/ablation.md). So the model's linear
readout is fitted once, before training, on the training samples, and kept
fixed; the network then learns what the linear model leaves (interactions,
conditioning, community-level structure).

Two penalties compete, and cross-validation on the training samples picks
one: a ridge (L2) penalty, best when many ASVs each carry a little of the
signal (as for age), and a lasso / elastic-net (L1) penalty, best when a few
ASVs carry it (a biomarker, a presence, a balance of two taxa). For a ridge
the presence columns get their own weight (0, 0.3 or 1 relative to the
abundance columns; also chosen by cross-validation), so that thousands of
presence columns cannot dilute the abundance ones.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .data import AmpliconSamples, abundance_features

#: Ridge penalties tried (on features in [0, 1], a z-scored target).
ALPHAS = np.logspace(-2, 5, 36)
#: Weights of the presence columns relative to the log-abundance ones, for a ridge.
PRESENCE_WEIGHTS = (0.0, 0.3, 1.0)
#: Elastic-net mixing (1: lasso) tried for the L1 candidate.
L1_RATIOS = (0.5, 1.0)
#: Inverse penalties tried for the logistic regressions.
CS = np.logspace(-3, 3, 13)


def readout_matrix(samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                   n_vocabulary: int) -> sp.csr_matrix:
    """``(n_samples, 2 * n_vocabulary)``: each vocabulary ASV's log-abundance level in each
    sample (the model's third abundance feature; 0 when absent), then its presence (0/1)."""
    data, cols, indptr = [], [], [0]
    for i in range(len(samples)):
        features, counts = samples.sample(i)
        rows = vocabulary_rows[features]
        level = abundance_features(counts, samples.totals[i])[:, 2]
        held = rows > 0
        data += [level[held], np.ones(int(held.sum()))]
        cols += [rows[held] - 1, rows[held] - 1 + n_vocabulary]
        indptr.append(indptr[-1] + 2 * int(held.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                          np.concatenate(cols) if cols else np.zeros(0, np.int64), indptr),
                         shape=(len(samples), 2 * n_vocabulary))


def _folds(n: int, groups=None, classes=None) -> list:
    """5 cross-validation folds: by group (e.g. subject) when there are 3 or more groups,
    so that repeated samples of one subject never judge each other; else stratified by
    class, or shuffled."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
    index = np.zeros((n, 1))
    if groups is not None and len(set(groups)) >= 3:
        return list(GroupKFold(n_splits=min(5, len(set(groups)))).split(index, None, groups))
    if classes is not None:
        folds = max(2, min(5, int(np.bincount(classes)[np.unique(classes)].min())))
        return list(StratifiedKFold(folds, shuffle=True, random_state=0).split(index, classes))
    return list(KFold(min(5, n), shuffle=True, random_state=0).split(index))


def _ridge_cv(level: np.ndarray, presence: np.ndarray, y: np.ndarray, folds: list):
    """Cross-validated mean squared error of the best ridge, its presence weight and penalty.

    Each fold's kernel is eigendecomposed once, so every penalty costs a matrix product."""
    best = (np.inf, 0.0, ALPHAS[0])
    for weight in PRESENCE_WEIGHTS:
        x = np.hstack([level, weight * presence]) if weight else level
        errors = np.zeros(len(ALPHAS))
        for train, test in folds:
            mean = x[train].mean(axis=0)
            xt, xv = x[train] - mean, x[test] - mean
            values, vectors = np.linalg.eigh(xt @ xt.T)
            projected = vectors.T @ (y[train] - y[train].mean())
            kernel = xv @ xt.T @ vectors
            for i, alpha in enumerate(ALPHAS):
                predicted = kernel @ (projected / (values + alpha)) + y[train].mean()
                errors[i] += np.mean((predicted - y[test]) ** 2) / len(folds)
        if errors.min() < best[0]:
            best = (float(errors.min()), weight, float(ALPHAS[errors.argmin()]))
    return best


def fit_regression(features: sp.csr_matrix, target: np.ndarray,
                   groups=None) -> tuple[np.ndarray, float, str]:
    """Coefficients (log levels, then presences), intercept, and what was chosen in words,
    of the penalised linear regression of ``target`` on :func:`readout_matrix` ``features``
    with the lower cross-validated error: a ridge or an elastic net."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNetCV, Ridge
    dense = features.toarray()
    y = np.asarray(target, dtype=np.float64)
    n_vocabulary = dense.shape[1] // 2
    level, presence = dense[:, :n_vocabulary], dense[:, n_vocabulary:]
    folds = _folds(len(y), groups)
    ridge_error, weight, alpha = _ridge_cv(level, presence, y, folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        net = ElasticNetCV(l1_ratio=list(L1_RATIOS), n_alphas=30, cv=folds, max_iter=5000,
                           tol=1e-3).fit(dense, y)
    net_error = float(net.mse_path_.mean(axis=-1).min())
    if net_error < ridge_error:
        kept = int(np.count_nonzero(net.coef_))
        how = (f"{'lasso' if net.l1_ratio_ == 1 else 'elastic net'} (penalty "
               f"{net.alpha_:.3g}, {kept} nonzero coefficients; cross-validated MSE "
               f"{net_error:.3g} vs ridge {ridge_error:.3g})")
        return np.asarray(net.coef_, dtype=np.float64), float(net.intercept_), how
    x = np.hstack([level, weight * presence])
    ridge = Ridge(alpha=alpha).fit(x, y)
    coef = ridge.coef_.copy()
    coef[n_vocabulary:] *= weight
    how = (f"ridge regression (penalty {alpha:.3g}, presence weight {weight:g}; "
           f"cross-validated MSE {ridge_error:.3g} vs elastic net {net_error:.3g})")
    return np.asarray(coef, dtype=np.float64), float(ridge.intercept_), how


def fit_classification(features: sp.csr_matrix, classes: np.ndarray, n_classes: int,
                       groups=None, class_weight: str | None = None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(n_features, n_classes)`` coefficients, ``(n_classes,)`` intercepts (logits) and
    what was chosen in words, of the penalised logistic regression with the lower
    cross-validated log-loss: L2 on the log levels, or (two classes only) L1 on log levels
    and presences.
    Classes absent from ``classes`` keep logits of 0 plus a large negative intercept.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    dense = features.toarray()
    n_vocabulary = dense.shape[1] // 2
    present = np.unique(classes)
    folds = _folds(len(classes), groups, classes)
    # L1 only for two classes (liblinear): the multinomial L1 solver (saga) took over 9
    # minutes on karelia's country, so more classes get the L2 fit alone.
    options = [("L2", slice(0, n_vocabulary), dict(max_iter=2000))]
    if len(present) == 2:
        options.append(("L1", slice(None), dict(penalty="l1", solver="liblinear")))
    candidates = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" in a fold
        for name, columns, settings in options:
            try:
                model = LogisticRegressionCV(Cs=CS, cv=folds, scoring="neg_log_loss",
                                             class_weight=class_weight,
                                             **{"max_iter": 2000, **settings}
                                             ).fit(dense[:, columns], classes)
            except ValueError:  # a fold lacks a class (many classes of a few samples each)
                continue
            score = float(np.mean(list(model.scores_.values())[0], axis=0).max())
            candidates[name] = (score, columns, model)
        if not candidates:
            from sklearn.linear_model import LogisticRegression
            model = LogisticRegression(C=1.0, max_iter=2000, class_weight=class_weight)
            model.C_ = [1.0]
            candidates["L2"] = (np.nan, slice(0, n_vocabulary),
                                model.fit(dense[:, :n_vocabulary], classes))
    name = max(candidates, key=lambda k: candidates[k][0])
    score, columns, model = candidates[name]
    fitted = np.zeros((dense.shape[1], n_classes))
    intercept = np.full(n_classes, -10.0)
    coef = np.zeros((dense.shape[1], model.coef_.shape[0]))
    coef[columns] = model.coef_.T
    if len(present) == 2:  # sklearn keeps one row: the logit of the second class
        fitted[:, present[1]] = coef[:, 0]
        intercept[present] = [0.0, model.intercept_[0]]
    else:
        fitted[:, present] = coef
        intercept[present] = model.intercept_
    other = "L1" if name == "L2" else "L2"
    if np.isnan(score):
        how = ("L2 logistic regression (C 1: too few samples per class for "
               "cross-validation)")
    else:
        versus = (f" vs {other} {-candidates[other][0]:.3g}" if other in candidates else "")
        how = (f"{name} logistic regression (C {model.C_[0]:.3g}; cross-validated log-loss "
               f"{-score:.3g}{versus})")
    return fitted, intercept, how


def fit_readout(model, samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                target: np.ndarray, task: str, groups=None, class_weights: str = "none") -> str:
    """Fit ``model``'s linear readout on ``samples`` (targets on the scale the model learns,
    or class indices), set it and keep it fixed; return what was fitted, in words."""
    n_vocabulary = model.config.asv_vocabulary_size
    features = readout_matrix(samples, vocabulary_rows, n_vocabulary)
    if task == "regression":
        coef, intercept, how = fit_regression(features, target, groups)
        coef = coef[:, None]
    else:
        coef, intercept, how = fit_classification(
            features, target, model.config.n_outputs, groups,
            "balanced" if class_weights == "balanced" else None)
    coef = torch.as_tensor(coef, dtype=model.linear.weight.dtype)
    with torch.no_grad():
        model.linear.weight[1:] = coef[:n_vocabulary]
        if model.linear_presence is not None:
            model.linear_presence.weight[1:] = coef[n_vocabulary:]
        model.linear_bias[:] = torch.as_tensor(intercept, dtype=model.linear_bias.dtype)
    for part in (model.linear, model.linear_presence):
        if part is not None:
            part.requires_grad_(False)
    model.linear_bias.requires_grad_(False)
    return (f"{how} on the log abundances and presences of {n_vocabulary} ASVs, chosen by "
            f"cross-validation{' by subject' if groups is not None else ''} on "
            f"{len(samples)} samples")
