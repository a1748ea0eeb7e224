"""The ridge candidate: cross-validated over block weights and penalties in kernel form
(cheap in columns), fitted exactly on dense blocks and by conjugate gradients on sparse
ones, its penalty checked again on every sample of a large study."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .folds import cv_folds, in_threads

#: Ridge penalties tried (on features in [0, 1], a z-scored target).
ALPHAS = np.logspace(-2, 5, 36)


#: For a ridge, the weight of each block relative to the log levels (0: left out).
BLOCK_WEIGHTS = {"presence": (0.0, 0.3, 1.0), "clade": (0.0, 0.1, 0.3, 1.0),
                 "conditional": (0.0, 0.3, 1.0)}


#: Above ``CV_SAMPLES``, a chosen ridge's penalty is checked again on every sample: the same
#: folds' cross-validation over these multiples of it, each fit by conjugate gradients on the
#: sparse blocks (linear in samples). On synthetic studies of 5,000 samples the subsample
#: alone chose a penalty 4 times the full cross-validation's.
REFINE_MULTIPLES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def stack(blocks: dict, weights: dict) -> np.ndarray:
    return np.hstack([weights.get(name, 1.0) * x for name, x in blocks.items()
                      if weights.get(name, 1.0)])


def _ridge_fold(blocks: dict, y: np.ndarray, train, test, choices: list,
                tick=None) -> np.ndarray:
    """``(choices, ALPHAS)`` mean squared errors on ``test`` of the ridge fitted on ``train``
    for each block weighting in ``choices`` and each penalty (see :func:`ridge_cv`);
    ``tick()`` after each weighting."""
    per_block = {}
    for name, x in blocks.items():
        mean = x[train].mean(axis=0)
        xt, xv = x[train] - mean, x[test] - mean
        per_block[name] = (xt @ xt.T, xv @ xt.T)
    centre = y[train].mean()
    errors = np.zeros((len(choices), len(ALPHAS)))
    for c, weights in enumerate(choices):
        inner = sum(weights.get(name, 1.0) ** 2 * k[0] for name, k in per_block.items())
        cross = sum(weights.get(name, 1.0) ** 2 * k[1] for name, k in per_block.items())
        values, vectors = np.linalg.eigh(inner)
        projected = vectors.T @ (y[train] - centre)
        kernel = cross @ vectors
        for i, alpha in enumerate(ALPHAS):
            predicted = kernel @ (projected / (values + alpha)) + centre
            errors[c, i] = np.mean((predicted - y[test]) ** 2)
        if tick is not None:
            tick()
    return errors


def ridge_cv(blocks: dict, y: np.ndarray, folds: list, ticker=None):
    """Cross-validated mean squared error of the best ridge, its block weights and penalty.

    A ridge's predictions depend on its columns only through the kernel ``X Xᵀ``, and the
    kernel of blocks scaled by weights ``w`` is ``Σ w² X_b X_bᵀ``; so each block's
    (centred) kernels are computed once per fold, and each weight combination costs a sum
    and an eigendecomposition of a samples x samples matrix, whatever the number of
    columns. Every penalty then costs a matrix product. Folds run in parallel threads;
    ``ticker`` (a :class:`~..progress.Ticker`) hears how many fits are done."""
    import itertools
    names = [name for name in blocks if name in BLOCK_WEIGHTS]
    choices = [dict(zip(names, choice))
               for choice in itertools.product(*(BLOCK_WEIGHTS[name] for name in names))]
    done, total = [], len(choices) * len(folds)

    def tick():
        done.append(1)
        if ticker is not None:
            ticker(f"Readout: ridge, {len(done)} of {total} weightings x folds fitted.")
    per_fold = in_threads(_ridge_fold, [(blocks, y, train, test, choices, tick)
                                         for train, test in folds])
    errors = np.zeros((len(choices), len(ALPHAS)))
    for fold_errors in per_fold:  # in fold order, as the sum was always taken
        errors += fold_errors / len(folds)
    best = (np.inf, {}, ALPHAS[0])
    for c, weights in enumerate(choices):
        if errors[c].min() < best[0]:
            best = (float(errors[c].min()), weights, float(ALPHAS[errors[c].argmin()]))
    return best


def weighted_stack(blocks: dict, weights: dict) -> sp.csr_matrix:
    """The sparse ``blocks`` scaled by their ``weights`` and stacked (weight 0: left out)."""
    return sp.hstack([weights.get(name, 1.0) * b for name, b in blocks.items()
                      if weights.get(name, 1.0)], format="csr")


def _sparse_ridge(alpha: float):
    """An unfitted ridge solved by conjugate gradients (for sparse columns)."""
    from sklearn.linear_model import Ridge
    return Ridge(alpha=alpha, solver="sparse_cg", tol=1e-8)


def refined_ridge_alpha(x: sp.csr_matrix, y: np.ndarray, alpha: float, groups,
                         ticker=None) -> float:
    """The penalty among ``REFINE_MULTIPLES`` of ``alpha`` with the lowest cross-validated
    error on every sample of ``x`` (the weighted blocks stacked: :func:`weighted_stack`;
    folds by ``groups``, as the subsample's; folds in both cores);
    while the best is at an end of the multiples, they go on by factors of 2 (up to
    ``REFINE_MULTIPLES[-1]`` times further)."""
    from sklearn.base import clone
    ridge = _sparse_ridge(alpha)
    folds = cv_folds(len(y), groups)
    done = []

    def fold_errors(train, test, multiples):
        errors = []
        for multiple in multiples:
            fit = clone(ridge).set_params(alpha=alpha * multiple, tol=1e-6)
            fit.fit(x[train], y[train])
            errors.append(np.mean((fit.predict(x[test]) - y[test]) ** 2))
            done.append(1)
            if ticker is not None:
                ticker(f"Readout: the ridge's penalty on all {len(y):,} samples, "
                       f"{len(done)} fits of {len(folds)} folds.")
        return errors

    def mean_errors(multiples):
        per_fold = in_threads(fold_errors, [(train, test, multiples) for train, test in folds])
        return dict(zip(multiples, np.mean(per_fold, axis=0)))
    errors = mean_errors(list(REFINE_MULTIPLES))
    for _ in range(int(np.log2(REFINE_MULTIPLES[-1]))):  # at most 8 times further
        best = min(errors, key=errors.get)
        if best not in (min(errors), max(errors)):
            break
        errors.update(mean_errors([best / 2 if best == min(errors) else best * 2]))
    return float(alpha * min(errors, key=errors.get))


def fit_ridge(blocks: dict, y: np.ndarray, weights: dict, alpha: float,
               stacked: sp.csr_matrix | None = None) -> tuple[np.ndarray, float, str]:
    """The chosen ridge fitted on the weighted ``blocks``: exactly when they are dense, by
    conjugate gradients when they are sparse (a cost linear in their nonzeros; ``stacked``:
    their weighted stack, when the caller has it already)."""
    from sklearn.linear_model import Ridge
    if any(sp.issparse(b) for b in blocks.values()):
        x = weighted_stack(blocks, weights) if stacked is None else stacked
        ridge = _sparse_ridge(alpha).fit(x, y)
    else:
        ridge = Ridge(alpha=alpha).fit(stack(blocks, weights), y)
    coef, start = [], 0
    for name, x in blocks.items():
        weight = weights.get(name, 1.0)
        if weight:
            coef.append(weight * ridge.coef_[start:start + x.shape[1]])
            start += x.shape[1]
        else:
            coef.append(np.zeros(x.shape[1]))
    shown = ", ".join(f"{name} weight {w:g}" for name, w in weights.items())
    how = f"ridge regression (penalty {alpha:.3g}, {shown}; ERRORS)"
    return np.concatenate(coef), float(ridge.intercept_), how
