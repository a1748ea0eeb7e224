"""Speed changes must not change what the model computes (issue 13).

A model at issue 13's size (embedding 128, 4 heads, 2 + 2 layers, patch 4), with
weights drawn from a fixed seed, reads the first 32 ECAM samples (token limit
256) through ``api.model_outputs``, the path ``predict`` takes. Its predictions
and sample embeddings must match ``data/forward_golden.json``, written at commit
time by the code before the speed work, within 1e-4 relative.

Regenerate the file only for a change meant to alter the model's arithmetic:
``AAM_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_forward_golden.py``.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).parent / "data" / "forward_golden.json"
CONFIG = dict(embedding_dim=128, attention_heads=4, nucleotide_layers=2, sample_layers=2,
              target_layers=1, patch_size=4, max_sequence_length=256, dropout=0.1,
              task="regression", n_outputs=1)


def outputs(batch_size=8):
    from q2_aam._inputs import amplicon_samples
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.model import AAMModel, ModelConfig
    from q2_aam.example_data import load_dataset

    data = load_dataset("ecam")
    ids = list(data.metadata.index)[:32]
    samples = amplicon_samples(data.table, None, 256, sample_ids=ids)
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(**CONFIG))
    bundle = ModelBundle(kind="regressor", model_config=model.config.to_dict(),
                         state_dict=model.state_dict())
    out = api.model_outputs(bundle, samples, batch_size=batch_size, device="cpu",
                            log=lambda m: None)
    return out["prediction"][:, 0], out["sample_embedding"][:4]


def test_forward_matches_golden():
    prediction, embedding = outputs()
    if os.environ.get("AAM_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"prediction": prediction.tolist(),
                                      "sample_embedding": embedding.tolist()}) + "\n")
    golden = json.loads(GOLDEN.read_text())
    # Outputs of a random model are O(1); the floor keeps near-zero entries from asking
    # for more than float32 rounding can give.
    for name, value in (("prediction", prediction), ("sample_embedding", embedding)):
        expected = np.asarray(golden[name], dtype=np.float64)
        error = np.abs(value - expected) / np.maximum(np.abs(expected), 1e-2)
        assert error.max() < 1e-4, f"{name} moved by {error.max():.2e} relative"
    # The test can fail: a different model gives different outputs.
    assert not np.allclose(prediction, np.asarray(golden["prediction"]) + 1e-2, rtol=1e-4)


def test_outputs_do_not_depend_on_the_batches():
    """Prediction batches group samples of similar length; each sample's outputs must be
    the same alone (batch 1) as in any batch, and come back in the table's order."""
    alone, embedding_alone = outputs(batch_size=1)
    batched, embedding_batched = outputs(batch_size=32)
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding_batched, embedding_alone, rtol=1e-5, atol=1e-6)
