"""Inference (``core/predict.py``) on samples the model never saw."""
import numpy as np

from q2_aam.core import api

from conftest import random_samples, tiny_train


def test_predict_reads_unseen_asvs(samples):
    bundle, _ = tiny_train(samples)
    other = random_samples(n_samples=4, seed=9)  # different sequences
    assert np.isfinite(api.predict(bundle, other, log=lambda m: None)).all()
