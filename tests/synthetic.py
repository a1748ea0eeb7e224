"""Synthetic data where the target depends on an interaction between specific ASVs and a category.

``position_specific(...)``: each sample holds a random subset of ASVs; its
season is 'summer' or 'winter'. The target is the summed log-abundance of
the *planted* ASVs, counted only in summer, plus the log-abundance of a
'background' ASV in every season, plus noise. A model can only predict it
well if it treats the planted ASVs differently by season.
"""
import numpy as np


def position_specific(n_samples=300, n_features=30, planted=(0, 1, 2), background=3,
                      length=32, seed=0):
    from q2_aam.core.data import AmpliconSamples
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n_features)]
    present = rng.random((n_samples, n_features)) < 0.5
    present[:, list(planted) + [background]] = rng.random((n_samples, len(planted) + 1)) < 0.7
    counts = np.where(present, rng.integers(1, 200, (n_samples, n_features)), 0)
    counts[counts.sum(1) == 0, -1] = 1
    season = rng.choice(["summer", "winter"], n_samples)
    log_counts = np.log1p(counts)
    y = (log_counts[:, list(planted)].sum(1) * (season == "summer")
         + 0.5 * log_counts[:, background] + rng.normal(0, 0.3, n_samples))
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n_samples)],
                                          [f"asv{i}" for i in range(n_features)], seqs,
                                          token_limit=n_features)
    return samples, y, season
