"""The classifier's readout: penalised logistic regressions (L2 on the log levels, or for
two classes L1 on levels and presences), the one with the lower cross-validated log-loss."""
from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp

from .folds import cv_folds, cv_rows, dense_rows, subsample_words

#: Inverse penalties tried for the logistic regressions.
CS = np.logspace(-3, 3, 13)


def fit_classification(features: sp.csr_matrix, classes: np.ndarray, n_classes: int,
                       groups=None, class_weight: str | None = None, log=None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(n_features, n_classes)`` coefficients, ``(n_classes,)`` intercepts (logits) and
    what was chosen in words, of the penalised logistic regression with the lower
    cross-validated log-loss: L2 on the log levels, or (two classes only) L1 on log levels
    and presences.
    Classes absent from ``classes`` keep logits of 0 plus a large negative intercept.
    ``log`` hears each candidate's cross-validation as it starts and ends.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    rows = cv_rows(len(classes), groups)  # see CV_SAMPLES; C carries over as it is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" in a fold
        candidates = _candidates(features, classes, rows, groups, class_weight, log)
        name = max(candidates, key=lambda k: candidates[k][0])
        score, columns, settings, model = candidates[name]
        C = float(np.ravel(model.C_)[0])
        if rows is not None:  # the chosen penalty, fitted on every sample's sparse columns
            started = time.perf_counter()
            model = LogisticRegression(C=C, class_weight=class_weight,
                                       **{"max_iter": 2000, **settings}
                                       ).fit(features.tocsr()[:, columns], classes)
            if log is not None:
                log(f"Readout: the {name} logistic regression fitted on all "
                    f"{len(classes):,} samples in {time.perf_counter() - started:.1f} s.")
    fitted, intercept = _logits(model, columns, features.shape[1], n_classes)
    other = "L1" if name == "L2" else "L2"
    if np.isnan(score):
        how = ("L2 logistic regression (C 1: too few samples per class for "
               "cross-validation)")
    else:
        versus = (f" vs {other} {-candidates[other][0]:.3g}" if other in candidates else "")
        on = "" if rows is None else f", on {len(rows):,} of the {len(classes):,} samples"
        how = (f"{name} logistic regression (C {C:.3g}; cross-validated log-loss "
               f"{-score:.3g}{versus}{on})")
    return fitted, intercept, how


def _candidates(features: sp.csr_matrix, classes: np.ndarray, rows, groups, class_weight,
                log) -> dict:
    """Each logistic regression cross-validated on ``rows`` (``None``: all samples), by
    name: ``(mean held-out log-likelihood, columns, solver settings, fitted model)``; an L2
    fit with C 1 (score NaN) when no fold holds every class."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    dense = dense_rows(features, rows)
    chosen_on = classes if rows is None else classes[rows]
    n_vocabulary = dense.shape[1] // 2
    folds = cv_folds(len(chosen_on), groups if groups is None or rows is None
                     else np.asarray(groups)[rows], chosen_on)
    # L1 only for two classes (liblinear): the multinomial L1 solver (saga) took over 9
    # minutes on karelia's country, so more classes get the L2 fit alone.
    options = [("L2", slice(0, n_vocabulary), dict(max_iter=2000))]
    if len(np.unique(classes)) == 2:
        options.append(("L1", slice(None), dict(penalty="l1", solver="liblinear")))
    subsample = "" if rows is None else subsample_words(len(classes), groups)
    candidates = {}
    for name, columns, settings in options:
        started = time.perf_counter()
        if log is not None:
            log(f"Readout: cross-validating an {name} logistic regression ({len(folds)} "
                f"folds, {len(chosen_on)} samples x {dense[:, columns].shape[1]} "
                f"columns{subsample}).")
        try:
            model = LogisticRegressionCV(Cs=CS, cv=folds, scoring="neg_log_loss",
                                         class_weight=class_weight,
                                         **{"max_iter": 2000, **settings}
                                         ).fit(dense[:, columns], chosen_on)
        except ValueError:  # a fold lacks a class (many classes of a few samples each)
            continue
        score = float(np.mean(list(model.scores_.values())[0], axis=0).max())
        candidates[name] = (score, columns, settings, model)
        if log is not None:
            log(f"Readout: {name} logistic regression cross-validated in "
                f"{time.perf_counter() - started:.1f} s.")
    if not candidates:
        model = LogisticRegression(C=1.0, max_iter=2000, class_weight=class_weight)
        model.C_ = [1.0]
        candidates["L2"] = (np.nan, slice(0, n_vocabulary), {},
                            model.fit(dense[:, :n_vocabulary], chosen_on))
    return candidates


def _logits(model, columns, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted scikit-learn logistic regression's coefficients on ``columns`` of
    ``n_features``, as ``(n_features, n_classes)`` logit coefficients and intercepts."""
    present = model.classes_
    fitted = np.zeros((n_features, n_classes))
    intercept = np.full(n_classes, -10.0)
    coef = np.zeros((n_features, model.coef_.shape[0]))
    coef[columns] = model.coef_.T
    if len(present) == 2:  # sklearn keeps one row: the logit of the second class
        fitted[:, present[1]] = coef[:, 0]
        intercept[present] = [0.0, model.intercept_[0]]
    else:
        fitted[:, present] = coef
        intercept[present] = model.intercept_
    return fitted, intercept
