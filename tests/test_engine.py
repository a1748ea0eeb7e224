"""The training loop (``core/engine.py``): the learning-rate schedule, weight decay, the
frozen encoder's cache, and one seed giving one model."""
import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.data import BatchCollator
from q2_aam.core.engine import Objective, TrainConfig, lr_factor, parameter_groups
from q2_aam.core.tokenizer import tokenize

from conftest import small_model, tiny_train


def test_schedule_warms_up_then_decays_within_the_run():
    total = 100
    f = [lr_factor(s, total, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=0.01)


def test_scheduler_steps_once_per_optimizer_step(samples):
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, warmup_fraction=0.5,
                         device="cpu")
    model = small_model()
    tokens = tokenize(samples.sequences).tokens
    y = np.linspace(0, 1, len(samples)).astype(np.float32)
    from q2_aam.core.engine import fit
    history = fit(model, BatchCollator(samples, tokens, y), None,
                  Objective(task="regression"), config, log=lambda m: None)
    steps = 2 * int(np.ceil(len(samples) / 4))
    assert history[-1]["lr"] == pytest.approx(1e-2 * lr_factor(steps, steps, 0.5))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = small_model()
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") for p in decay["params"])
    assert any("embed" in names[id(p)] for p in no_decay["params"])


def test_frozen_encoder_cache_equals_running_the_encoder(samples):
    from q2_aam.core.engine import FrozenEncoderCache
    model = small_model()
    collator = BatchCollator(samples, tokenize(samples.sequences).tokens)
    cache = FrozenEncoderCache(model, collator, "cpu", batch_size=5)
    batch = collator([3, 7, 1])
    direct = model(batch)["prediction"]
    cached = model(batch, encoded=cache(batch))["prediction"]
    torch.testing.assert_close(direct, cached, atol=1e-5, rtol=1e-5)


def test_same_seed_same_model(samples):
    a, _ = tiny_train(samples, seed=3)
    b, _ = tiny_train(samples, seed=3)
    c, _ = tiny_train(samples, seed=4)
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=0, atol=0)
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_same_seed_same_model_on_real_data():
    """At real scale (200 ECAM samples sharing ASVs, default architecture), not only on tiny
    synthetic batches: without deterministic algorithms this differed by ~1e-3."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.example_data import load_dataset
    data = load_dataset("ecam", build_tree=False)
    real = amplicon_samples(data.table, None, 256, sample_ids=list(data.metadata.index[:200]))
    d = np.random.default_rng(0).random((200, 200))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    runs = [api.pretrain(real, d, config=TrainConfig(epochs=1, seed=0, device="cpu"),
                         log=lambda m: None) for _ in range(2)]
    for k in runs[0].state_dict:
        torch.testing.assert_close(runs[0].state_dict[k], runs[1].state_dict[k], rtol=0, atol=0)
