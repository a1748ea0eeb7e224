"""Cross-validation for the readout's fits: the folds, the subsample its choice is made on
above :data:`CV_SAMPLES` samples, and the threads folds run in."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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


def cv_folds(n: int, groups=None, classes=None) -> list:
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


def cv_rows(n: int, groups=None, limit: int | None = None) -> np.ndarray | None:
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


def subsample_words(n: int, groups) -> str:
    return (f", a subsample{' of whole subjects' if groups is not None else ''} of the "
            f"{n:,} samples; the chosen fit is then made on all of them")


def dense_rows(x, rows) -> np.ndarray:
    """``x`` (dense or sparse) at ``rows`` (``None``: all), as a dense float64 array."""
    part = x if rows is None else x[rows]
    return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)


def in_threads(function, calls: list) -> list:
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
