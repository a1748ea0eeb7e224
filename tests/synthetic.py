"""Synthetic data where the target depends on interactions between specific ASVs and categories.

``position_specific(...)``: each sample holds a random subset of ``n_features``
random 32-nt ASVs and one value ('a' or 'b') in each categorical column. Each
*planted* ASV ``j`` has a rule: it counts towards the target (by its
log-abundance) only when column ``j % C`` has value ``'ab'[(j // C) % 2]``.
So ASV 0 matters only when season is 'a', ASV 4 only when season is 'b', ASV 1
only when site is 'a', ... Every other ASV is noise, except one 'background' ASV
whose log-abundance counts in every sample. A model predicts the target well
only if it treats each planted ASV differently by the value of *its* column.
"""
import numpy as np

COLUMNS = ("season", "site", "diet", "sex")


def position_specific(n_samples=600, n_features=30, n_planted=8, columns=COLUMNS,
                      length=32, noise=0.3, seed=0):
    """Return ``(samples, y, categorical, rules)``; ``rules[j] = (column, value)``."""
    from q2_aam.core.data import AmpliconSamples
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n_features)]
    present = rng.random((n_samples, n_features)) < 0.5
    counts = np.where(present, rng.integers(1, 200, (n_samples, n_features)), 0)
    counts[counts.sum(1) == 0, -1] = 1
    categorical = {c: rng.choice(["a", "b"], n_samples).tolist() for c in columns}
    log_counts = np.log1p(counts)
    background = n_planted
    y = 0.5 * log_counts[:, background] + rng.normal(0, noise, n_samples)
    rules = {}
    for j in range(n_planted):
        column, value = columns[j % len(columns)], "ab"[(j // len(columns)) % 2]
        rules[j] = (column, value)
        y = y + log_counts[:, j] * (np.array(categorical[column]) == value)
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n_samples)],
                                          [f"asv{i}" for i in range(n_features)], seqs,
                                          token_limit=n_features)
    return samples, y, categorical, rules
