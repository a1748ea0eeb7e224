"""The core's entry points (``core/api.py``) end to end: pretrain, then train on the
pretrained encoder."""
import numpy as np
import torch

from q2_aam.core import api
from q2_aam.core.engine import TrainConfig

from conftest import SMALL_ARCHITECTURE

SMALL = SMALL_ARCHITECTURE


def test_pretrain_then_train_frozen_classifier(samples):
    d = np.random.default_rng(0).random((len(samples), len(samples)))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    config = TrainConfig(epochs=1, batch_size=4, device="cpu")
    enc = api.pretrain(samples, d, architecture=dict(SMALL), config=config, log=lambda m: None)
    assert enc.kind == "encoder" and enc.training["history"]
    labels = np.array(["a", "b"] * (len(samples) // 2))
    clf = api.train(samples, labels, task="classification", pretrained=enc,
                    freeze_encoder=True, config=config, log=lambda m: None)
    # Frozen: encoder weights unchanged.
    for k, v in enc.state_dict.items():
        if k.startswith("nucleotide_encoder."):
            torch.testing.assert_close(clf.state_dict[k], v, rtol=0, atol=0)
    assert set(api.predict(clf, samples, log=lambda m: None)) <= {"a", "b"}
