"""The L1 candidates: the elastic net / lasso along warm-started paths on strong-rule
working sets of columns, and the relaxed lasso (the lasso's support refitted)."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .folds import dense_rows, in_threads

#: Elastic-net mixing (1: lasso) tried for the L1 candidate.
L1_RATIOS = (0.5, 1.0)


#: How much of the lasso the relaxed lasso keeps (0: the refit on its support alone).
RELAXED_MIX = (0.0, 0.5)


#: The (near-)unpenalised refit of the relaxed lasso.
REFIT_ALPHA = 1e-2


#: Penalties per elastic-net path, from the largest (no coefficient) down by ``PATH_EPS``.
N_PATH_ALPHAS = 30


PATH_EPS = 1e-3


#: A path stops early once the folds' mean held-out error has stayed above its lowest
#: for ``PATH_PATIENCE`` penalties and ends ``PATH_MARGIN`` above it: past the best
#: penalty, smaller penalties overfit more and more, and they are the slow ones (on
#: karelia the last 6 of 30 took 90 % of a path's time).
PATH_PATIENCE = 3


PATH_MARGIN = 0.05


def _refit(x: np.ndarray, y: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients (all columns) and intercept of the near-unpenalised fit on ``support``."""
    from sklearn.linear_model import Ridge
    coef = np.zeros(x.shape[1])
    if not len(support):
        return coef, float(y.mean())
    ridge = Ridge(alpha=REFIT_ALPHA).fit(dense_rows(x[:, support], None), y)
    coef[support] = ridge.coef_
    return coef, float(ridge.intercept_)


def _path_alphas(x: np.ndarray, y: np.ndarray, l1_ratio: float) -> np.ndarray:
    """The elastic net's penalties for ``x``, ``y``: from the smallest that keeps every
    coefficient at 0 down to ``PATH_EPS`` times it, log-spaced (as scikit-learn's
    ``ElasticNetCV`` chooses them)."""
    top = np.abs((x - x.mean(axis=0)).T @ (y - y.mean())).max() / (len(y) * l1_ratio)
    if top <= np.finfo(float).resolution:
        return np.full(N_PATH_ALPHAS, np.finfo(float).resolution)
    return np.logspace(np.log10(top * PATH_EPS), np.log10(top), N_PATH_ALPHAS)[::-1]


def _screened_steps(x: np.ndarray, y: np.ndarray, train, test, alphas: np.ndarray,
                    l1_ratio: float):
    """Yields, penalty by penalty along ``alphas``, the elastic net's coefficients fitted on
    the rows ``train`` (centred there) and their mean squared error on the rows ``test``
    (NaN for none). ``x`` is dense, or sparse CSC.

    scikit-learn's coordinate descent (``enet_path``, warm-started from the last penalty)
    runs on a working set of columns, the sequential strong rule's (Tibshirani et al.
    2012: columns whose correlation with the last residual passes
    ``l1_ratio * (2 alpha - previous alpha)``, and every column ever nonzero); columns
    outside it that break the optimality condition ``|x_jᵀ r| / n <= l1_ratio * alpha``
    join it and the penalty is solved again. The same solution as coordinate descent over
    every column (within its tolerance), at the cost of the columns that matter: most of
    a readout's thousands never do. Only the working set is ever copied out of ``x``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import enet_path
    n, p = len(train), x.shape[1]
    rows = np.zeros(x.shape[0])
    rows[train] = 1.0 / n
    mean, centre = rows @ x, float(y[train].mean())
    centred = y[train] - centre
    residual = np.zeros(x.shape[0])  # on the train rows; 0 elsewhere, so x.T @ it is theirs
    residual[train] = centred
    coef = np.zeros(p)
    correlation = x.T @ residual / n
    keep = np.zeros(p, dtype=bool)
    previous = alphas[0]
    for alpha in alphas:
        keep |= np.abs(correlation) >= l1_ratio * (2 * alpha - previous)
        while True:
            columns = np.flatnonzero(keep)
            if len(columns):
                part = (x[:, columns][train].toarray() if sp.issparse(x)
                        else x[np.ix_(train, columns)])
                working = np.asfortranarray(part - mean[columns])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    _, sub, _ = enet_path(working, centred, alphas=[alpha],
                                          l1_ratio=l1_ratio, coef_init=coef[columns],
                                          max_iter=5000, tol=1e-3)
                coef[:] = 0
                coef[columns] = sub[:, 0]
                residual[train] = centred - working @ sub[:, 0]
            correlation = x.T @ residual / n
            broken = ~keep & (np.abs(correlation) > l1_ratio * alpha * (1 + 1e-9))
            if not broken.any():
                break
            keep |= broken
        keep |= coef != 0
        predicted = x[test] @ coef - mean @ coef + centre
        yield coef.copy(), (float(np.mean((predicted - y[test]) ** 2)) if len(test)
                            else float("nan"))
        previous = alpha


def _past_its_best(errors: np.ndarray) -> bool:
    """Whether a path whose mean held-out errors so far are ``errors`` can stop: see
    ``PATH_PATIENCE``."""
    best = int(np.argmin(errors))
    return (len(errors) - 1 - best >= PATH_PATIENCE
            and errors[-1] > errors[best] * (1 + PATH_MARGIN))


def _l1_paths(x: np.ndarray, y: np.ndarray, folds: list, alphas: dict,
              ticker=None) -> dict:
    """For each ``L1_RATIOS`` ratio: each fold's coefficient path ``(p, k)`` and the held-out
    errors ``(folds, k)`` along its first ``k`` penalties. The folds (and ratios) advance
    together, penalty by penalty, in parallel threads, until their mean error is past its
    best (:func:`_past_its_best`), which is where each path would be the slowest.
    ``ticker`` hears the penalties done."""
    steps = {ratio: [_screened_steps(x, y, train, test, alphas[ratio], ratio)
                     for train, test in folds] for ratio in L1_RATIOS}
    paths = {ratio: [[] for _ in folds] for ratio in L1_RATIOS}
    errors = {ratio: [] for ratio in L1_RATIOS}
    going = list(L1_RATIOS)
    for k in range(N_PATH_ALPHAS):
        if ticker is not None:
            ticker(f"Readout: elastic-net paths, penalty {k + 1} of at most {N_PATH_ALPHAS}.")
        results = in_threads(next, [(step,) for ratio in going for step in steps[ratio]])
        for i, ratio in enumerate(going):
            fold_results = results[i * len(folds):(i + 1) * len(folds)]
            for path, (coef, _) in zip(paths[ratio], fold_results):
                path.append(coef)
            errors[ratio].append([error for _, error in fold_results])
        going = [r for r in going if not _past_its_best(np.mean(errors[r], axis=1))]
        if not going:
            break
    return {ratio: ([np.column_stack(path) for path in paths[ratio]],
                    np.array(errors[ratio]).T) for ratio in L1_RATIOS}


def _relaxed_fold(x: np.ndarray, y: np.ndarray, train, test, path: np.ndarray) -> np.ndarray:
    """``(penalties, mixes)`` squared errors on ``test`` of the relaxed lasso along ``path``
    (fitted on ``train``): its support refitted, mixed with the lasso by ``RELAXED_MIX``."""
    from sklearn.linear_model import Ridge
    rows = np.zeros(x.shape[0])
    rows[train] = 1.0 / len(train)
    mean, centre = rows @ x, y[train].mean()
    errors = np.zeros((path.shape[1], len(RELAXED_MIX)))
    for k in range(path.shape[1]):
        support = np.flatnonzero(path[:, k])
        if len(support) > len(train) // 2:  # no longer a sparse fit to relax
            errors[k] = np.inf
            continue
        lasso = x[test] @ path[:, k] - mean @ path[:, k] + centre
        refit = np.full(len(test), centre)
        if len(support):
            ridge = Ridge(alpha=REFIT_ALPHA).fit(x[np.ix_(train, support)], y[train])
            refit = x[np.ix_(test, support)] @ ridge.coef_ + ridge.intercept_
        for m, mix in enumerate(RELAXED_MIX):
            errors[k, m] = np.mean((mix * lasso + (1 - mix) * refit - y[test]) ** 2)
    return errors


def l1_cv(x: np.ndarray, y: np.ndarray, folds: list, ticker=None) -> dict:
    """Cross-validation of the L1 candidates on the same paths: for each ``L1_RATIOS``, the
    elastic net's path on each fold (as ``ElasticNetCV`` computes them, once each, on a
    working set of columns, stopped past the best penalty: :func:`_l1_paths`), then the
    relaxed lasso along the paths of the ratio with the lower error. Folds run in parallel
    threads."""
    alphas = {ratio: _path_alphas(x, y, ratio) for ratio in L1_RATIOS}
    runs = _l1_paths(x, y, folds, alphas, ticker)
    mean = {ratio: errors.mean(axis=0) for ratio, (_, errors) in runs.items()}
    best = {ratio: int(np.argmin(m)) for ratio, m in mean.items()}
    ratio = min(L1_RATIOS, key=lambda r: (mean[r][best[r]], L1_RATIOS.index(r)))
    relaxed = np.mean(in_threads(_relaxed_fold, [
        (x, y, train, test, path) for (train, test), path in zip(folds, runs[ratio][0])]),
        axis=0)
    k, m = np.unravel_index(np.argmin(relaxed), relaxed.shape)
    return {"l1_ratio": ratio, "error": float(mean[ratio][best[ratio]]),
            "alpha": float(alphas[ratio][best[ratio]]), "relaxed_error": float(relaxed[k, m]),
            "relaxed_alpha": float(alphas[ratio][k]), "mix": RELAXED_MIX[m]}


def fit_l1(x, y: np.ndarray, l1: dict, scale: float,
            ticker=None) -> tuple[np.ndarray, float, str]:
    """The chosen elastic net (or relaxed lasso) of :func:`l1_cv` fitted on ``x``, its
    penalty times ``scale`` (see ``CV_SAMPLES``): dense, by scikit-learn's ``ElasticNet``;
    sparse CSC (every sample of a large study), along a path from the penalty that keeps
    every coefficient at 0 down to it, 10 penalties a decade, each on its strong-rule
    working set (:func:`_screened_steps`; ``ticker`` hears each): one ``ElasticNet`` fit
    from zero took 36 s at 20,000 samples, and longer at smaller penalties."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet
    kind = "lasso" if l1["l1_ratio"] == 1 else "elastic net"
    relaxed = l1["relaxed_error"] < l1["error"]
    alpha = l1["relaxed_alpha" if relaxed else "alpha"] * scale
    if sp.issparse(x):
        net = _sparse_l1_fit(x, y, alpha, l1["l1_ratio"], kind, ticker)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            net = ElasticNet(alpha=alpha, l1_ratio=l1["l1_ratio"], max_iter=5000,
                             tol=1e-3).fit(x, y)
    if not relaxed:
        how = (f"{kind} (penalty {alpha:.3g}, {np.count_nonzero(net.coef_)} "
               f"nonzero coefficients; ERRORS)")
        return np.asarray(net.coef_, dtype=np.float64), float(net.intercept_), how
    mix = l1["mix"]
    coef, intercept = _refit(x, y, np.flatnonzero(net.coef_))
    coef = mix * net.coef_ + (1 - mix) * coef
    intercept = mix * float(net.intercept_) + (1 - mix) * intercept
    how = (f"relaxed {kind} (penalty {alpha:.3g}, {np.count_nonzero(coef)} nonzero "
           f"coefficients, lasso share {mix:g}; ERRORS)")
    return coef, intercept, how


def _sparse_l1_fit(x: sp.csc_matrix, y: np.ndarray, alpha: float, l1_ratio: float,
                   kind: str, ticker=None):
    """The elastic net at ``alpha`` on every row of sparse ``x``, as ``(coef_,
    intercept_)`` in a namespace (see :func:`fit_l1`)."""
    from types import SimpleNamespace
    every = np.arange(x.shape[0])
    top = np.abs(x.T @ (y - y.mean())).max() / (len(y) * l1_ratio)
    steps = max(1, int(np.ceil(10 * np.log10(max(top / alpha, 1.0))))) + 1
    path = np.geomspace(max(top, alpha), alpha, steps)
    for step, (coef, _) in enumerate(_screened_steps(x, y, every, every[:0], path,
                                                     l1_ratio), 1):
        if ticker is not None:
            ticker(f"Readout: the {kind} on all {len(y):,} samples, penalty {step} of "
                   f"{steps}.")
    mean = np.asarray(x.mean(axis=0)).ravel()
    return SimpleNamespace(coef_=coef, intercept_=float(y.mean() - mean @ coef))
