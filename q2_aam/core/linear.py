"""The linear readout: each vocabulary ASV's coefficient on its log abundance, in closed form.

A linear model on log abundances, fitted by ridge regression with its
penalty chosen by leave-one-out (generalised) cross-validation, is what
microbiome signals carried by a few ASVs need, and what stochastic training
of the same linear layer does not reach on a few hundred samples: with Adam
and early stopping it stays well below the closed-form fit (see
benchmarks/results/ablation.md). So the model's linear readout is fitted
once, before training, on the training samples, and kept fixed; the network
then learns what the linear model leaves (interactions, conditioning,
community-level structure).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .data import AmpliconSamples, abundance_features

#: Penalties tried (on features in [0, 1], a z-scored target).
ALPHAS = np.logspace(-2, 5, 36)


def log_abundance_matrix(samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                         n_vocabulary: int) -> sp.csr_matrix:
    """``(n_samples, n_vocabulary)``: each vocabulary ASV's log-abundance level in each
    sample (the model's third abundance feature; 0 when absent)."""
    data, cols, indptr = [], [], [0]
    for i in range(len(samples)):
        features, counts = samples.sample(i)
        rows = vocabulary_rows[features]
        level = abundance_features(counts, samples.totals[i])[:, 2]
        held = rows > 0
        data.append(level[held])
        cols.append(rows[held] - 1)
        indptr.append(indptr[-1] + int(held.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                          np.concatenate(cols) if cols else np.zeros(0, np.int64), indptr),
                         shape=(len(samples), n_vocabulary))


def fit_ridge(features: sp.csr_matrix, target: np.ndarray,
              groups=None) -> tuple[np.ndarray, float, float]:
    """Coefficients, intercept and the chosen penalty of a ridge regression of ``target``
    on ``features``.

    The penalty is chosen by cross-validation: with ``groups`` (e.g. subjects,
    3 or more), 5-fold by group, so that repeated samples of one subject never
    judge each other; otherwise by efficient leave-one-out.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    dense = features.toarray()
    cv = None
    if groups is not None and len(set(groups)) >= 3:
        cv = list(GroupKFold(n_splits=min(5, len(set(groups)))).split(dense, target, groups))
    ridge = RidgeCV(alphas=ALPHAS, cv=cv).fit(dense, target)
    return np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_), float(ridge.alpha_)


def fit_logistic(features: sp.csr_matrix, classes: np.ndarray, n_classes: int, groups=None,
                 class_weight: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(n_features, n_classes)`` coefficients, ``(n_classes,)`` intercepts (logits) and the
    chosen inverse penalty ``C`` of an L2-penalised multinomial logistic regression.

    ``C`` is chosen by cross-validated log-loss, by group as in :func:`fit_ridge`.
    Classes absent from ``classes`` keep logits of 0 plus a large negative intercept.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold, StratifiedKFold
    dense = features.toarray()
    present = np.unique(classes)
    if groups is not None and len(set(groups)) >= 3:
        cv = list(GroupKFold(n_splits=min(5, len(set(groups)))).split(dense, classes, groups))
    else:
        folds = max(2, min(5, int(np.bincount(classes)[present].min())))
        cv = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(dense, classes))
    model = LogisticRegressionCV(Cs=np.logspace(-3, 3, 13), cv=cv, scoring="neg_log_loss",
                                 max_iter=2000, class_weight=class_weight).fit(dense, classes)
    coef = np.zeros((dense.shape[1], n_classes))
    intercept = np.full(n_classes, -10.0)
    if len(present) == 2:  # sklearn keeps one row: the logit of the second class
        coef[:, present[1]] = model.coef_[0]
        intercept[present] = [0.0, model.intercept_[0]]
    else:
        coef[:, present] = model.coef_.T
        intercept[present] = model.intercept_
    return coef, intercept, float(model.C_[0])


def fit_readout(model, samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                target: np.ndarray, task: str, groups=None, class_weights: str = "none") -> str:
    """Fit ``model``'s linear readout on ``samples`` (targets on the scale the model learns,
    or class indices), set it and keep it fixed; return what was fitted, in words."""
    n_vocabulary = model.config.asv_vocabulary_size
    features = log_abundance_matrix(samples, vocabulary_rows, n_vocabulary)
    if task == "regression":
        coef, intercept, alpha = fit_ridge(features, target, groups)
        coef, how = coef[:, None], f"ridge regression (penalty {alpha:.3g})"
    else:
        coef, intercept, c = fit_logistic(features, target, model.config.n_outputs, groups,
                                          "balanced" if class_weights == "balanced" else None)
        how = f"L2 logistic regression (C {c:.3g})"
    with torch.no_grad():
        model.linear.weight[1:] = torch.as_tensor(coef, dtype=model.linear.weight.dtype)
        model.linear_bias[:] = torch.as_tensor(intercept, dtype=model.linear_bias.dtype)
    model.linear.requires_grad_(False)
    model.linear_bias.requires_grad_(False)
    return (f"{how} on the log abundances of {n_vocabulary} ASVs, the penalty chosen by "
            f"cross-validation{' by subject' if groups is not None else ''} on "
            f"{len(samples)} samples")
