"""The benchmark's subject-grouped train/test splits (design/data.md).

For split ``k``: sort the distinct subject IDs by the hex digest of
``sha256("split<k>:<subject>")``; the first ``round(0.2 * n_subjects)`` are the
test side.  No random-number library is involved, so the splits are the same
everywhere.
"""

import hashlib

N_SPLITS = 5
TEST_FRACTION = 0.2


def _digest(k, subject):
    return hashlib.sha256(f"split{k}:{subject}".encode("utf-8")).hexdigest()


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"split index must be a non-negative int, got {k!r}")


def subject_order(subjects, k):
    """Distinct subjects in the order that defines split ``k``."""
    _check_k(k)
    distinct = set()
    for subject in subjects:
        if not isinstance(subject, str):
            raise TypeError(f"subject IDs must be str, got {subject!r} "
                            f"({type(subject).__name__})")
        distinct.add(subject)
    return sorted(distinct, key=lambda s: (_digest(k, s), s))


def subject_split(subjects, k):
    """(train_subjects, test_subjects) of split ``k``, each sorted by ID."""
    order = subject_order(subjects, k)
    n_test = round(TEST_FRACTION * len(order))
    return sorted(order[n_test:]), sorted(order[:n_test])


def split_samples(metadata, k, subject_column="subject"):
    """(train sample IDs, test sample IDs) of split ``k``, in index order.

    ``metadata`` is a DataFrame indexed by sample ID with a subject column
    (every sample must have a subject).
    """
    subjects = metadata[subject_column]
    if subjects.isna().any():
        raise ValueError("samples without a subject cannot be split")
    _train, test = subject_split(subjects, k)
    is_test = subjects.isin(set(test))
    ids = metadata.index.astype(str)
    return list(ids[~is_test.to_numpy()]), list(ids[is_test.to_numpy()])
