import os

import numpy as np
import pytest

# The real plugin must load, not QIIME 2's test dummies.
os.environ.pop("QIIMETEST", None)


def random_samples(n_samples=12, n_features=30, length=40, token_limit=16, seed=0):
    """Small synthetic samples for unit tests of the core (shapes, masks, determinism)."""
    from q2_aam.core.data import AmpliconSamples
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), rng.integers(length // 2, length + 1)))
            for _ in range(n_features)]
    counts = rng.poisson(0.7, (n_samples, n_features)) * rng.integers(1, 30, (n_samples, n_features))
    counts[:, 0] += 1
    return AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n_samples)],
                                       [f"f{i}" for i in range(n_features)], seqs, token_limit)


@pytest.fixture
def samples():
    return random_samples()
