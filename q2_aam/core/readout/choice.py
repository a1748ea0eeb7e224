"""The regressor's readout: which of the ridge, the elastic net and the relaxed lasso has
the lowest cross-validated error on the training samples (on a subsample of whole
subjects above ``CV_SAMPLES``), then that one fitted on every sample."""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from ..progress import Ticker
from .folds import cv_folds, cv_rows, dense_rows, subsample_words
from .lasso import fit_l1, l1_cv
from .ridge import fit_ridge, refined_ridge_alpha, ridge_cv, stack, weighted_stack

def fit_regression(blocks: dict, target: np.ndarray, groups=None,
                   log=None) -> tuple[np.ndarray, float, str]:
    """Coefficients (over the blocks' columns, in order), intercept, and what was chosen in
    words, of the penalised linear regression of ``target`` on :func:`~.blocks.readout_blocks`
    ``blocks`` (dense or sparse) with the lowest cross-validated error: a ridge, an
    elastic net or a relaxed lasso; chosen on at most ``CV_SAMPLES`` samples and fitted
    on all. ``log`` hears each candidate's cross-validation as it ends, with its time."""
    say = log or (lambda message: None)
    y = np.asarray(target, dtype=np.float64)
    rows = cv_rows(len(y), groups)
    chosen_on = y if rows is None else y[rows]
    cv_blocks = {name: dense_rows(x, rows) for name, x in blocks.items()}
    folds = cv_folds(len(chosen_on), groups if groups is None or rows is None
                   else np.asarray(groups)[rows])
    size = f"{len(chosen_on)} samples x {sum(x.shape[1] for x in blocks.values())} columns"
    subsample = "" if rows is None else subsample_words(len(y), groups)
    say(f"Readout: cross-validating a ridge, an elastic net and a relaxed lasso "
        f"({len(folds)} folds, {size}{subsample}).")
    ticker = Ticker(log)
    started = time.perf_counter()
    ridge_error, weights, alpha = ridge_cv(cv_blocks, chosen_on, folds, ticker)
    say(f"Readout: ridge cross-validated in {time.perf_counter() - started:.1f} s.")
    started = time.perf_counter()
    dense = stack(cv_blocks, {})
    l1 = l1_cv(dense, chosen_on, folds, ticker)
    say(f"Readout: elastic net, lasso and relaxed lasso cross-validated in "
        f"{time.perf_counter() - started:.1f} s.")
    errors = (f"cross-validated MSE: ridge {ridge_error:.3g}, elastic net {l1['error']:.3g}, "
              f"relaxed lasso {l1['relaxed_error']:.3g}")
    if rows is not None:  # the final fit reads the sparse blocks of every sample
        errors += f", on {len(rows):,} of the {len(y):,} samples"
        cv_blocks, dense = blocks, None
    started = time.perf_counter()
    if min(l1["error"], l1["relaxed_error"]) < ridge_error:
        if rows is not None:  # stacked only when the elastic net is the one fitted
            dense = sp.hstack(list(blocks.values()), format="csc")
        coef, intercept, how = fit_l1(dense, y, l1,
                                       1.0 if rows is None else len(rows) / len(y), ticker)
    else:
        stacked = None
        if rows is not None:
            chosen = alpha
            stacked = weighted_stack(blocks, weights)
            alpha = refined_ridge_alpha(stacked, y, alpha, groups, ticker)
            errors += (f"; the penalty {chosen:.3g} of the subsample was checked on all "
                       f"samples, {alpha / chosen:g} times it was best")
        coef, intercept, how = fit_ridge(cv_blocks, y, weights, alpha, stacked)
    if rows is not None:
        say(f"Readout: the {how.split(' (')[0]} checked and fitted on all {len(y):,} samples in "
            f"{time.perf_counter() - started:.1f} s.")
    return coef, intercept, how.replace("ERRORS", errors)
