"""The linear readout: a linear model of each vocabulary ASV's log abundance and presence
(and, when given, of clades and of ASV x category interactions), fitted in closed form.

A linear model on log abundances and presences, with its penalty chosen by
cross-validation, is what microbiome signals carried by a few ASVs need, and
what stochastic training of the same linear layer does not reach on a few
hundred samples: with Adam and early stopping it stays well below the
closed-form fit (see benchmarks/results/ablation.md). So the model's linear
readout is fitted once, before training, on the training samples, and kept
fixed; the network then learns what the linear model leaves.

Its columns come in blocks, each a ``(samples, n)`` matrix:

* ``level``: each vocabulary ASV's log-abundance level (``1 + log10(rel) / 6``, 0 when
  absent), the model's third abundance feature;
* ``presence``: 1 where the ASV is present;
* ``clade`` (with a phylogeny): the level of each clade's summed relative abundance, for
  the clades (internal nodes) whose vocabulary ASVs are held by 2-98 % of the training
  samples; a clade that responds together is one column instead of many small ones;
* ``conditional`` (with categorical columns, for cross-attention): each ASV's level again,
  once per value of each column, 0 in the samples with another value; so an ASV's
  coefficient can depend on the category (an ASV x category interaction).

Three fits compete, and the lowest cross-validated error on the training samples wins:

* a ridge (L2) penalty, best when many ASVs each carry a little of the signal (as for
  age), with each block after ``level`` scaled by its own weight (0 drops it), also chosen
  by cross-validation, so that thousands of extra columns cannot dilute the ASV levels;
* an elastic net / lasso (L1), best when a few ASVs carry the signal (a biomarker, a
  presence, a balance of two taxa);
* the relaxed lasso: the lasso's support refitted with (almost) no penalty and mixed with
  the lasso, which undoes the lasso's shrinkage of the few coefficients it keeps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .data import AmpliconSamples, abundance_features, log_level
from .progress import Ticker
from .vocabulary import Vocabulary

#: Ridge penalties tried (on features in [0, 1], a z-scored target).
ALPHAS = np.logspace(-2, 5, 36)
#: For a ridge, the weight of each block relative to the log levels (0: left out).
BLOCK_WEIGHTS = {"presence": (0.0, 0.3, 1.0), "clade": (0.0, 0.1, 0.3, 1.0),
                 "conditional": (0.0, 0.3, 1.0)}
#: Elastic-net mixing (1: lasso) tried for the L1 candidate.
L1_RATIOS = (0.5, 1.0)
#: How much of the lasso the relaxed lasso keeps (0: the refit on its support alone).
RELAXED_MIX = (0.0, 0.5)
#: The (near-)unpenalised refit of the relaxed lasso.
REFIT_ALPHA = 1e-2
#: Inverse penalties tried for the logistic regressions.
CS = np.logspace(-3, 3, 13)
#: A clade enters the readout when held by this share of the training samples.
CLADE_PREVALENCE = (0.02, 0.98)


def relative_matrix(samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                    n_vocabulary: int) -> sp.csr_matrix:
    """``(n_samples, n_vocabulary)``: each vocabulary ASV's relative abundance."""
    data, cols, indptr = [], [], [0]
    for i in range(len(samples)):
        features, counts = samples.sample(i)
        rows = vocabulary_rows[features]
        held = rows > 0
        data.append(abundance_features(counts, samples.totals[i])[held, 1].astype(np.float64))
        cols.append(rows[held] - 1)
        indptr.append(indptr[-1] + int(held.sum()))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0),
                          np.concatenate(cols) if cols else np.zeros(0, np.int64), indptr),
                         shape=(len(samples), n_vocabulary))


def clades(tree, tip_columns: dict, relative: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The clades the readout uses, as ``(rows, ids)``: vocabulary row ``rows[k]`` (1-based)
    belongs to clade ``ids[k]``. A clade is an internal node of ``tree`` (a
    ``skbio.TreeNode``; ``tip_columns`` maps a tip's name to its ASV's vocabulary column)
    with 2 or more vocabulary ASVs, held (any member present) by ``CLADE_PREVALENCE`` of
    the samples of ``relative`` (:func:`relative_matrix` of the training samples); nodes
    with the same members count once."""
    members: dict = {}
    for node in tree.postorder(include_self=True):
        if node.is_tip():
            members[id(node)] = ({tip_columns[node.name]} if node.name in tip_columns
                                 else set())
        else:
            members[id(node)] = set().union(*(members[id(child)] for child in node.children))
    unique = sorted({tuple(sorted(m)) for m in members.values() if len(m) >= 2})
    if not unique:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate([np.asarray(m) for m in unique])
    ids = np.repeat(np.arange(len(unique)), [len(m) for m in unique])
    membership = sp.csr_matrix((np.ones(len(rows)), (rows, ids)),
                               shape=(relative.shape[1], len(unique)))
    held = np.asarray(((relative > 0).astype(np.float64) @ membership > 0).mean(axis=0)).ravel()
    kept = np.flatnonzero((held >= CLADE_PREVALENCE[0]) & (held <= CLADE_PREVALENCE[1]))
    renumber = np.full(len(unique), -1)
    renumber[kept] = np.arange(len(kept))
    keep = renumber[ids] >= 0
    return rows[keep] + 1, renumber[ids[keep]]


def readout_blocks(samples: AmpliconSamples, vocabulary_rows: np.ndarray, n_vocabulary: int,
                   clade_rows: np.ndarray | None = None, clade_ids: np.ndarray | None = None,
                   categories: np.ndarray | None = None,
                   cardinalities: list | None = None) -> dict:
    """The readout's column blocks (see the module's docstring), sparse ``(n_samples, .)``
    CSR matrices (a table's ASVs are mostly absent: memory follows its nonzero counts) in
    the order the model stores their coefficients: ``level``, ``presence``, then
    ``clade`` when ``clade_ids`` is given (non-empty), then ``conditional`` when
    ``categories`` ``(n_samples, C)`` (indices, 0 unknown) and ``cardinalities`` are: for
    each column, for each index ``0 .. cardinality - 1``, every ASV's level (index 0, the
    unknown value, is never set, so its columns are all 0)."""
    relative = relative_matrix(samples, vocabulary_rows, n_vocabulary)
    relative.eliminate_zeros()
    level = _with_data(relative, log_level(relative.data))
    blocks = {"level": level, "presence": _with_data(relative, np.ones(relative.nnz))}
    if clade_ids is not None and len(clade_ids):
        membership = sp.csr_matrix((np.ones(len(clade_rows)), (clade_rows - 1, clade_ids)),
                                   shape=(n_vocabulary, int(clade_ids.max()) + 1))
        summed = (relative @ membership).tocsr()
        summed.eliminate_zeros()
        blocks["clade"] = _with_data(summed, log_level(summed.data))
    if categories is not None and cardinalities:
        parts = []
        for c, card in enumerate(cardinalities):
            for v in range(card):
                parts.append(sp.diags((categories[:, c] == v) * 1.0) @ level if v else
                             sp.csr_matrix(level.shape))
        blocks["conditional"] = sp.hstack(parts, format="csr")
    return blocks


def _with_data(matrix: sp.csr_matrix, data: np.ndarray) -> sp.csr_matrix:
    """``matrix``'s pattern with the values ``data``."""
    return sp.csr_matrix((data, matrix.indices.copy(), matrix.indptr.copy()),
                         shape=matrix.shape)


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


def _stack(blocks: dict, weights: dict) -> np.ndarray:
    return np.hstack([weights.get(name, 1.0) * x for name, x in blocks.items()
                      if weights.get(name, 1.0)])


def _ridge_fold(blocks: dict, y: np.ndarray, train, test, choices: list,
                tick=None) -> np.ndarray:
    """``(choices, ALPHAS)`` mean squared errors on ``test`` of the ridge fitted on ``train``
    for each block weighting in ``choices`` and each penalty (see :func:`_ridge_cv`);
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


def _ridge_cv(blocks: dict, y: np.ndarray, folds: list, ticker=None):
    """Cross-validated mean squared error of the best ridge, its block weights and penalty.

    A ridge's predictions depend on its columns only through the kernel ``X Xᵀ``, and the
    kernel of blocks scaled by weights ``w`` is ``Σ w² X_b X_bᵀ``; so each block's
    (centred) kernels are computed once per fold, and each weight combination costs a sum
    and an eigendecomposition of a samples x samples matrix, whatever the number of
    columns. Every penalty then costs a matrix product. Folds run in parallel threads;
    ``ticker`` (a :class:`~.progress.Ticker`) hears how many fits are done."""
    import itertools
    names = [name for name in blocks if name in BLOCK_WEIGHTS]
    choices = [dict(zip(names, choice))
               for choice in itertools.product(*(BLOCK_WEIGHTS[name] for name in names))]
    done, total = [], len(choices) * len(folds)

    def tick():
        done.append(1)
        if ticker is not None:
            ticker(f"Readout: ridge, {len(done)} of {total} weightings x folds fitted.")
    per_fold = _in_threads(_ridge_fold, [(blocks, y, train, test, choices, tick)
                                         for train, test in folds])
    errors = np.zeros((len(choices), len(ALPHAS)))
    for fold_errors in per_fold:  # in fold order, as the sum was always taken
        errors += fold_errors / len(folds)
    best = (np.inf, {}, ALPHAS[0])
    for c, weights in enumerate(choices):
        if errors[c].min() < best[0]:
            best = (float(errors[c].min()), weights, float(ALPHAS[errors[c].argmin()]))
    return best


def _in_threads(function, calls: list) -> list:
    """``[function(*args) for args in calls]``, in joblib's threads, one per core: the heavy
    parts (LAPACK, BLAS, scikit-learn's coordinate descent) release the GIL. BLAS and
    LAPACK run on one thread each meanwhile (a process-wide setting, set here around the
    jobs, not in them), so that the jobs use the cores instead."""
    from joblib import Parallel, delayed, effective_n_jobs
    from threadpoolctl import threadpool_limits
    n_jobs = max(1, min(effective_n_jobs(-1), len(calls)))
    if n_jobs == 1:
        return [function(*args) for args in calls]
    with threadpool_limits(1):
        return Parallel(n_jobs=n_jobs, prefer="threads")(delayed(function)(*args)
                                                         for args in calls)


def _refit(x: np.ndarray, y: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients (all columns) and intercept of the near-unpenalised fit on ``support``."""
    from sklearn.linear_model import Ridge
    coef = np.zeros(x.shape[1])
    if not len(support):
        return coef, float(y.mean())
    ridge = Ridge(alpha=REFIT_ALPHA).fit(_dense_rows(x[:, support], None), y)
    coef[support] = ridge.coef_
    return coef, float(ridge.intercept_)


#: Penalties per elastic-net path, from the largest (no coefficient) down by ``PATH_EPS``.
N_PATH_ALPHAS = 30
PATH_EPS = 1e-3
#: A path stops early once the folds' mean held-out error has stayed above its lowest
#: for ``PATH_PATIENCE`` penalties and ends ``PATH_MARGIN`` above it: past the best
#: penalty, smaller penalties overfit more and more, and they are the slow ones (on
#: karelia the last 6 of 30 took 90 % of a path's time).
PATH_PATIENCE = 3
PATH_MARGIN = 0.05


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
        results = _in_threads(next, [(step,) for ratio in going for step in steps[ratio]])
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


def _l1_cv(x: np.ndarray, y: np.ndarray, folds: list, ticker=None) -> dict:
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
    relaxed = np.mean(_in_threads(_relaxed_fold, [
        (x, y, train, test, path) for (train, test), path in zip(folds, runs[ratio][0])]),
        axis=0)
    k, m = np.unravel_index(np.argmin(relaxed), relaxed.shape)
    return {"l1_ratio": ratio, "error": float(mean[ratio][best[ratio]]),
            "alpha": float(alphas[ratio][best[ratio]]), "relaxed_error": float(relaxed[k, m]),
            "relaxed_alpha": float(alphas[ratio][k]), "mix": RELAXED_MIX[m]}


#: The most samples the readout's candidates and penalties are chosen on. Above it, the
#: cross-validation runs on a subsample of whole subjects (seeded) of about this size,
#: and the chosen fit is made on every sample, on sparse matrices, by iterative solvers.
#: So the choice costs the same at any size and the final fit grows with the table's
#: nonzero counts, linearly in samples, where the ridge's kernel form costs the cube of
#: the samples (221 s at 5,000 samples x 3,000 ASVs, beyond reach at 20,000:
#: benchmarks/results/scale.md). The penalties carry over in their unnormalised form
#: (a penalty per coefficient against a sum of squared errors over the samples), which
#: is a prior's variance against the noise's and does not depend on the number of
#: samples: scikit-learn's ridge penalty as it is, its elastic net's (which divides the
#: errors by the number of samples) times subsample / all samples.
CV_SAMPLES = 2000
#: Above ``CV_SAMPLES``, a chosen ridge's penalty is checked again on every sample: the same
#: folds' cross-validation over these multiples of it, each fit by conjugate gradients on the
#: sparse blocks (linear in samples). On synthetic studies of 5,000 samples the subsample
#: alone chose a penalty 4 times the full cross-validation's.
REFINE_MULTIPLES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _cv_rows(n: int, groups=None, limit: int | None = None) -> np.ndarray | None:
    """The rows the readout's hyperparameters are chosen on: ``None`` (all) for ``limit``
    samples or fewer, else a seeded random subsample of whole ``groups`` (subjects; one
    group at least) holding at most ``limit`` (default ``CV_SAMPLES``) samples, or
    ``limit`` random samples."""
    limit = CV_SAMPLES if limit is None else limit
    if n <= limit:
        return None
    rng = np.random.default_rng(0)
    if groups is None:
        return np.sort(rng.choice(n, limit, replace=False))
    _, index, sizes = np.unique(np.asarray(groups).astype(str), return_inverse=True,
                                return_counts=True)
    order = rng.permutation(len(sizes))
    kept = order[:max(1, int(np.searchsorted(np.cumsum(sizes[order]), limit, "right")))]
    return np.flatnonzero(np.isin(index, kept))


def _subsample_words(n: int, groups) -> str:
    return (f", a subsample{' of whole subjects' if groups is not None else ''} of the "
            f"{n:,} samples; the chosen fit is then made on all of them")


def _dense_rows(x, rows) -> np.ndarray:
    """``x`` (dense or sparse) at ``rows`` (``None``: all), as a dense float64 array."""
    part = x if rows is None else x[rows]
    return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)


def fit_regression(blocks: dict, target: np.ndarray, groups=None,
                   log=None) -> tuple[np.ndarray, float, str]:
    """Coefficients (over the blocks' columns, in order), intercept, and what was chosen in
    words, of the penalised linear regression of ``target`` on :func:`readout_blocks`
    ``blocks`` (dense or sparse) with the lowest cross-validated error: a ridge, an
    elastic net or a relaxed lasso; chosen on at most ``CV_SAMPLES`` samples and fitted
    on all. ``log`` hears each candidate's cross-validation as it ends, with its time."""
    import time
    say = log or (lambda message: None)
    y = np.asarray(target, dtype=np.float64)
    rows = _cv_rows(len(y), groups)
    chosen_on = y if rows is None else y[rows]
    cv_blocks = {name: _dense_rows(x, rows) for name, x in blocks.items()}
    folds = _folds(len(chosen_on), groups if groups is None or rows is None
                   else np.asarray(groups)[rows])
    size = f"{len(chosen_on)} samples x {sum(x.shape[1] for x in blocks.values())} columns"
    subsample = "" if rows is None else _subsample_words(len(y), groups)
    say(f"Readout: cross-validating a ridge, an elastic net and a relaxed lasso "
        f"({len(folds)} folds, {size}{subsample}).")
    ticker = Ticker(log)
    started = time.perf_counter()
    ridge_error, weights, alpha = _ridge_cv(cv_blocks, chosen_on, folds, ticker)
    say(f"Readout: ridge cross-validated in {time.perf_counter() - started:.1f} s.")
    started = time.perf_counter()
    dense = _stack(cv_blocks, {})
    l1 = _l1_cv(dense, chosen_on, folds, ticker)
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
        coef, intercept, how = _fit_l1(dense, y, l1,
                                       1.0 if rows is None else len(rows) / len(y), ticker)
    else:
        stacked = None
        if rows is not None:
            chosen = alpha
            stacked = _weighted_stack(blocks, weights)
            alpha = _refined_ridge_alpha(stacked, y, alpha, groups, ticker)
            errors += (f"; the penalty {chosen:.3g} of the subsample was checked on all "
                       f"samples, {alpha / chosen:g} times it was best")
        coef, intercept, how = _fit_ridge(cv_blocks, y, weights, alpha, stacked)
    if rows is not None:
        say(f"Readout: the {how.split(' (')[0]} checked and fitted on all {len(y):,} samples in "
            f"{time.perf_counter() - started:.1f} s.")
    return coef, intercept, how.replace("ERRORS", errors)


def _weighted_stack(blocks: dict, weights: dict) -> sp.csr_matrix:
    """The sparse ``blocks`` scaled by their ``weights`` and stacked (weight 0: left out)."""
    return sp.hstack([weights.get(name, 1.0) * b for name, b in blocks.items()
                      if weights.get(name, 1.0)], format="csr")


def _sparse_ridge(alpha: float):
    """An unfitted ridge solved by conjugate gradients (for sparse columns)."""
    from sklearn.linear_model import Ridge
    return Ridge(alpha=alpha, solver="sparse_cg", tol=1e-8)


def _refined_ridge_alpha(x: sp.csr_matrix, y: np.ndarray, alpha: float, groups,
                         ticker=None) -> float:
    """The penalty among ``REFINE_MULTIPLES`` of ``alpha`` with the lowest cross-validated
    error on every sample of ``x`` (the weighted blocks stacked: :func:`_weighted_stack`;
    folds by ``groups``, as the subsample's; folds in both cores);
    while the best is at an end of the multiples, they go on by factors of 2 (up to
    ``REFINE_MULTIPLES[-1]`` times further)."""
    from sklearn.base import clone
    ridge = _sparse_ridge(alpha)
    folds = _folds(len(y), groups)
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
        per_fold = _in_threads(fold_errors, [(train, test, multiples) for train, test in folds])
        return dict(zip(multiples, np.mean(per_fold, axis=0)))
    errors = mean_errors(list(REFINE_MULTIPLES))
    for _ in range(int(np.log2(REFINE_MULTIPLES[-1]))):  # at most 8 times further
        best = min(errors, key=errors.get)
        if best not in (min(errors), max(errors)):
            break
        errors.update(mean_errors([best / 2 if best == min(errors) else best * 2]))
    return float(alpha * min(errors, key=errors.get))


def _fit_l1(x, y: np.ndarray, l1: dict, scale: float,
            ticker=None) -> tuple[np.ndarray, float, str]:
    """The chosen elastic net (or relaxed lasso) of :func:`_l1_cv` fitted on ``x``, its
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
    intercept_)`` in a namespace (see :func:`_fit_l1`)."""
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


def _fit_ridge(blocks: dict, y: np.ndarray, weights: dict, alpha: float,
               stacked: sp.csr_matrix | None = None) -> tuple[np.ndarray, float, str]:
    """The chosen ridge fitted on the weighted ``blocks``: exactly when they are dense, by
    conjugate gradients when they are sparse (a cost linear in their nonzeros; ``stacked``:
    their weighted stack, when the caller has it already)."""
    from sklearn.linear_model import Ridge
    if any(sp.issparse(b) for b in blocks.values()):
        x = _weighted_stack(blocks, weights) if stacked is None else stacked
        ridge = _sparse_ridge(alpha).fit(x, y)
    else:
        ridge = Ridge(alpha=alpha).fit(_stack(blocks, weights), y)
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
    import time
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    rows = _cv_rows(len(classes), groups)  # see CV_SAMPLES; C carries over as it is
    dense = _dense_rows(features, rows)
    chosen_on = classes if rows is None else classes[rows]
    n_vocabulary = dense.shape[1] // 2
    folds = _folds(len(chosen_on), groups if groups is None or rows is None
                   else np.asarray(groups)[rows], chosen_on)
    # L1 only for two classes (liblinear): the multinomial L1 solver (saga) took over 9
    # minutes on karelia's country, so more classes get the L2 fit alone.
    options = [("L2", slice(0, n_vocabulary), dict(max_iter=2000))]
    if len(np.unique(classes)) == 2:
        options.append(("L1", slice(None), dict(penalty="l1", solver="liblinear")))
    subsample = "" if rows is None else _subsample_words(len(classes), groups)
    candidates = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" in a fold
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
        name = max(candidates, key=lambda k: candidates[k][0])
        score, columns, settings, model = candidates[name]
        C = float(np.ravel(model.C_)[0])
        if rows is not None:  # the chosen penalty, fitted on every sample's sparse columns
            del dense
            started = time.perf_counter()
            model = LogisticRegression(C=C, class_weight=class_weight,
                                       **{"max_iter": 2000, **settings}
                                       ).fit(features.tocsr()[:, columns], classes)
            if log is not None:
                log(f"Readout: the {name} logistic regression fitted on all "
                    f"{len(classes):,} samples in {time.perf_counter() - started:.1f} s.")
    present = model.classes_
    fitted = np.zeros((features.shape[1], n_classes))
    intercept = np.full(n_classes, -10.0)
    coef = np.zeros((features.shape[1], model.coef_.shape[0]))
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
        on = "" if rows is None else f", on {len(rows):,} of the {len(classes):,} samples"
        how = (f"{name} logistic regression (C {C:.3g}; cross-validated log-loss "
               f"{-score:.3g}{versus}{on})")
    return fitted, intercept, how


@dataclass
class ReadoutPlan:
    """What a new model's ASV identities and linear readout cover: the ``vocabulary``, each
    feature's row in it (``rows``, 0: none), whether there is a readout, and the clades'
    memberships (``clade_rows``, ``clade_ids``)."""

    vocabulary: Vocabulary
    rows: np.ndarray | None
    readout: bool
    clade_rows: np.ndarray | None = None
    clade_ids: np.ndarray | None = None

    @property
    def n_clades(self) -> int:
        return 0 if self.clade_ids is None or not len(self.clade_ids) \
            else int(self.clade_ids.max()) + 1

    @property
    def n_memberships(self) -> int:
        return 0 if self.clade_ids is None else len(self.clade_ids)


def plan_readout(train_samples: AmpliconSamples, sequences, feature_ids, *,
                 asv_min_samples: int, linear_readout: bool, phylogeny=None,
                 log=print) -> ReadoutPlan:
    """The vocabulary of ASVs held by ``asv_min_samples`` training samples or more, each
    feature's row (exact; a feature no training sample holds, i.e. a validation sample's
    new ASV, reads its nearest vocabulary sequence's, as prediction will), and with a
    ``phylogeny`` (regression), the clades of the readout."""
    vocabulary = (Vocabulary.of_samples(train_samples, asv_min_samples)
                  if asv_min_samples > 0 else Vocabulary([], [], [], []))
    if linear_readout and not len(vocabulary):
        log(f"No ASV is held by {asv_min_samples} or more training samples, so the model has "
            "no linear readout.")
    rows = vocabulary.match(sequences, log=log).rows if len(vocabulary) else None
    plan = ReadoutPlan(vocabulary, rows, linear_readout and bool(len(vocabulary)))
    if plan.readout and phylogeny is not None:
        exact = vocabulary.exact_rows(sequences)
        tip_columns = {name: int(row) - 1 for name, row in zip(feature_ids, exact) if row}
        plan.clade_rows, plan.clade_ids = clades(phylogeny, tip_columns, relative_matrix(
            train_samples, rows, len(vocabulary)))
    return plan


def fit_readout(model, samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                target: np.ndarray, task: str, groups=None, class_weights: str = "none",
                categories: np.ndarray | None = None, log=None) -> str:
    """Fit ``model``'s linear readout on ``samples`` (targets on the scale the model learns,
    or class indices; ``categories`` their category indices when the model's readout is
    conditional), set it and keep it fixed; return what was fitted, in words (``log``
    hears the steps as they end).

    A classifier's readout uses the ``level`` and ``presence`` blocks only."""
    config = model.config
    n_vocabulary, n_outputs = config.asv_vocabulary_size, config.n_outputs
    cards = config.categorical_cardinalities if config.linear_conditional else None
    blocks = readout_blocks(
        samples, vocabulary_rows, n_vocabulary,
        *((model.clade_rows.numpy(), model.clade_ids.numpy()) if config.linear_clades
          else (None, None)),
        categories=categories if cards else None, cardinalities=cards)
    if task == "regression":
        coef, intercept, how = fit_regression(blocks, target, groups, log=log)
        coef = coef[:, None]
    else:
        features = sp.hstack([blocks["level"], blocks["presence"]], format="csr")
        coef, intercept, how = fit_classification(
            features, target, n_outputs, groups,
            "balanced" if class_weights == "balanced" else None, log=log)
    coef = torch.as_tensor(coef, dtype=model.linear.weight.dtype)
    parts = dict(zip(blocks, torch.split(coef, [x.shape[1] for x in blocks.values()])))
    with torch.no_grad():
        model.linear.weight[1:] = parts["level"]
        if model.linear_presence is not None:
            model.linear_presence.weight[1:] = parts["presence"]
        if "clade" in parts:
            model.linear_clade[:] = parts["clade"]
        if "conditional" in parts:  # (values x ASVs, O) -> (ASVs, values x O)
            values = parts["conditional"].reshape(sum(cards), n_vocabulary, n_outputs)
            model.linear_conditional.weight[1:] = values.transpose(0, 1).reshape(
                n_vocabulary, -1)
        model.linear_bias[:] = torch.as_tensor(intercept, dtype=model.linear_bias.dtype)
    for part in model.readout_parameters():
        part.requires_grad_(False)
    extra = "".join(f", {len(model.linear_clade)} clades" if name == "clade" else
                    ", their levels per category value" for name in parts
                    if name in ("clade", "conditional"))
    return (f"{how} on the log abundances and presences of {n_vocabulary} ASVs{extra}, "
            f"chosen by cross-validation{' by subject' if groups is not None else ''}"
            f"{'' if len(samples) <= CV_SAMPLES else ' on a subsample'}, fitted on "
            f"{len(samples)} samples")
