"""Real multi-process training on the CPU (2 processes over gloo) against one process.

The workers are started by ``q2_aam.core.launch.run_workers`` (torch's
elastic launcher, as ``torchrun``), each with its own Accelerator. The tests of
``core/launch.py`` (a failing worker, work done once in the parent) are here too.
"""
import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.data import BatchCollator
from q2_aam.core.engine import Objective, TrainConfig
from q2_aam.core.parallel import make_accelerator
from q2_aam.core.launch import WorkerFailed, run_workers
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = dict(SMALL_ARCHITECTURE, max_sequence_length=40)
N = 16  # samples in the global batch


def distances_for(n, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.random((n, 3))
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).astype(np.float32)


def loss_and_gradients(rows_per_rank):
    """UniFrac + target loss on this rank's rows of the global batch; DDP-averaged grads.

    Returns (global UniFrac loss, {name: gradient}) as numpy, from rank 0.
    """
    accelerator = make_accelerator("cpu")
    rank = accelerator.process_index
    samples = random_samples(n_samples=N, token_limit=8)
    tokens = tokenize(samples.sequences).tokens
    targets = np.linspace(-1, 1, N).astype(np.float32)
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, **SMALL))
    model.nucleotide_encoder.mlm_head.requires_grad_(False)
    objective = Objective(task="regression", unifrac_weight=1.0,
                          distances=torch.as_tensor(distances_for(N)))
    model = accelerator.prepare(model)
    batch = BatchCollator(samples, tokens, targets)(rows_per_rank[rank])
    parts, _ = objective.losses(model, batch)
    accelerator.backward(objective.total(parts))
    core = accelerator.unwrap_model(model)
    grads = {k: p.grad.numpy().copy() for k, p in core.named_parameters() if p.grad is not None}
    return float(parts["unifrac"].detach()), float(parts["target"].detach()), grads


def test_two_processes_give_the_gradients_of_one_process_on_the_global_batch():
    rows = list(range(N))
    single_unifrac, single_target, single = loss_and_gradients([rows])
    unifrac, target, double = run_workers(loss_and_gradients, ([rows[:N // 2], rows[N // 2:]],), 2)
    assert unifrac == pytest.approx(single_unifrac, rel=1e-5)  # all pairs of the global batch
    assert set(double) == set(single)
    for name, grad in single.items():
        np.testing.assert_allclose(double[name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(np.abs(g).max() > 0 for g in single.values())


def embeddings_of(bundle, samples):
    model = bundle.build_model().eval()
    batch = BatchCollator(samples, tokenize(samples.sequences).tokens)(range(len(samples)))
    with torch.no_grad():
        return model(batch)["unifrac_embedding"].numpy()


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_pretrain_in_two_processes_matches_one(distributed):
    """Same global batch (8), 16 training and 8 validation samples: the same run.

    Weights are compared through what they compute: parameters whose true
    gradient is (nearly) zero, e.g. a softmax's shift such as an attention-pooling
    score bias, get Adam steps of size ~lr (1e-3) from float noise, differently
    in each run: outputs agree to about that size, losses to 1e-5.
    """
    samples = random_samples(n_samples=24, token_limit=8)
    runs = {n: api.pretrain(samples, distances_for(24), architecture=SMALL, mlm_weight=0.0,
                            config=TrainConfig(epochs=2, batch_size=8, seed=0, device="cpu",
                                               num_processes=n, distributed=distributed),
                            validation_fraction=1 / 3, log=lambda m: None)
            for n in (1, 2)}
    assert runs[2].training["config"]["num_processes"] == 2
    for a, b in zip(runs[1].training["history"], runs[2].training["history"]):
        for key in ("train_unifrac", "val_unifrac", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    np.testing.assert_allclose(embeddings_of(runs[2], samples), embeddings_of(runs[1], samples),
                               atol=1e-3)


def test_train_in_two_processes_predicts_like_one():
    samples = random_samples(n_samples=24, token_limit=8)
    y = np.linspace(0, 100, 24)
    bundles = [api.train(samples, y, task="regression", architecture=SMALL,
                         config=TrainConfig(epochs=2, batch_size=8, device="cpu",
                                            num_processes=n),
                         validation_fraction=0.0, log=lambda m: None) for n in (1, 2)]
    p1, p2 = (api.predict(b, samples, log=lambda m: None) for b in bundles)
    np.testing.assert_allclose(p2, p1, rtol=1e-3, atol=1e-2)


def shard_sizes():
    """Each process's share of the parameters after sharding, and the total."""
    from q2_aam.core.parallel import shard
    accelerator = make_accelerator("cpu")
    torch.manual_seed(0)
    model = AAMModel(ModelConfig(task="regression", n_outputs=1, **SMALL))
    total = sum(p.numel() for p in model.parameters())
    shard(model)
    local = sum(p.to_local().numel() for p in model.parameters())
    return total, accelerator.gather(torch.tensor([local])).tolist()


def test_fsdp_each_process_holds_only_its_shard():
    total, local = run_workers(shard_sizes, (), 2)
    assert len(local) == 2
    assert all(n <= 0.55 * total for n in local), (total, local)
    assert total <= sum(local) <= total + 2 * 1000  # every weight kept once (+ padding)


@pytest.mark.parametrize("frozen", [False, True], ids=["whole", "frozen-encoder"])
def test_train_with_fsdp_predicts_like_ddp(frozen, capfd):
    """No validation split: both models are the last epoch's, trained in sharded / whole form."""
    samples = random_samples(n_samples=24, token_limit=8)
    encoder = api.pretrain(samples, distances_for(24), architecture=SMALL, mlm_weight=0.0,
                           config=TrainConfig(epochs=1, batch_size=8, device="cpu"),
                           log=lambda m: None) if frozen else None
    y = np.linspace(0, 100, 24)
    predictions = {}
    for mode in ("ddp", "fsdp"):
        bundle = api.train(samples, y, task="regression",
                           architecture=None if frozen else SMALL, pretrained=encoder,
                           freeze_encoder=frozen,
                           config=TrainConfig(epochs=2, batch_size=8, device="cpu",
                                              num_processes=2, distributed=mode),
                           validation_fraction=0.0, log=lambda m: None)
        assert bundle.training["config"]["distributed"] == mode
        predictions[mode] = api.predict(bundle, samples, log=lambda m: None)
        assert ("FSDP: each of the 2 processes holds 1/2" in capfd.readouterr().err) == \
            (mode == "fsdp")
    np.testing.assert_allclose(predictions["fsdp"], predictions["ddp"], rtol=1e-3, atol=1e-2)


def _balanced_tree(names):
    import io
    import skbio

    def newick(part):
        if len(part) == 1:
            return part[0]
        half = len(part) // 2
        return f"({newick(part[:half])}:1,{newick(part[half:])}:1)"
    return skbio.TreeNode.read(io.StringIO(newick(list(names)) + ";"))


def test_readout_clades_train_alike_with_ddp_and_fsdp():
    """The readout's clade memberships are integer buffers: FSDP must carry them unsharded."""
    samples = random_samples(n_samples=24, token_limit=8)
    tree = _balanced_tree(samples.feature_ids)
    y = np.linspace(0, 100, 24)
    predictions = {}
    for mode in ("ddp", "fsdp"):
        bundle = api.train(samples, y, task="regression", architecture=SMALL, phylogeny=tree,
                           config=TrainConfig(epochs=2, batch_size=8, device="cpu",
                                              num_processes=2, distributed=mode),
                           validation_fraction=0.0, log=lambda m: None)
        assert bundle.model_config["linear_clades"] > 0
        predictions[mode] = api.predict(bundle, samples, log=lambda m: None)
    np.testing.assert_allclose(predictions["fsdp"], predictions["ddp"], rtol=1e-3, atol=1e-2)


def test_fsdp_with_gradient_accumulation_is_the_same_global_batch():
    """FSDP2 modules have no ``no_sync``: each micro-batch's gradients are reduce-scattered
    and summed into the shards, which must give the step of the whole batch."""
    samples = random_samples(n_samples=24, token_limit=8)
    y = np.linspace(0, 100, 24)
    predictions = []
    for steps in (1, 2):
        bundle = api.train(samples, y, task="regression", architecture=SMALL,
                           config=TrainConfig(epochs=2, batch_size=8, device="cpu",
                                              num_processes=2, distributed="fsdp",
                                              gradient_accumulation_steps=steps),
                           validation_fraction=0.0, log=lambda m: None)
        predictions.append(api.predict(bundle, samples, log=lambda m: None))
    np.testing.assert_allclose(predictions[1], predictions[0], rtol=1e-4, atol=1e-3)
    assert np.ptp(predictions[0]) > 0


def _fails_on_rank_one():
    import os
    if os.environ["RANK"] == "1":
        raise ValueError("sample s3 has no reads")
    make_accelerator("cpu").wait_for_everyone()


def test_a_failing_worker_fails_the_run_with_its_error():
    with pytest.raises(WorkerFailed, match="worker 1: ValueError: sample s3 has no reads"):
        run_workers(_fails_on_rank_one, (), 2)


def _fails_on_every_rank():
    make_accelerator("cpu")
    raise ValueError("the target holds missing values")


def test_the_same_error_in_every_worker_is_reported_once():
    with pytest.raises(WorkerFailed) as raised:
        run_workers(_fails_on_every_rank, (), 2)
    assert str(raised.value) == ("A training worker failed. workers 0, 1: ValueError: the "
                                 "target holds missing values")


def test_batch_size_must_split_over_processes_and_accumulation():
    with pytest.raises(ValueError, match="multiple of 4"):
        TrainConfig(batch_size=6, num_processes=2, gradient_accumulation_steps=2)
    TrainConfig(batch_size=8, num_processes=2, gradient_accumulation_steps=2)  # a multiple


def test_deferred_distances_are_computed_once_before_workers_start(monkeypatch):
    """With several processes, a function given as ``distances`` is called once in the
    parent and its matrix handed to the workers (not computed again in each)."""
    from q2_aam.core import launch
    calls, handed = [], {}

    def distances():
        calls.append(1)
        return np.zeros((3, 3))

    def fake_workers(action, args, keywords, num_processes):
        handed.update(action=action, processes=num_processes, distances=args[1])
        return "model"
    monkeypatch.setattr(launch, "run_in_workers", fake_workers)
    assert api.pretrain("samples", distances, config=TrainConfig(num_processes=2)) == "model"
    assert calls == [1]
    assert handed["action"] is api.pretrain and handed["processes"] == 2
    assert isinstance(handed["distances"], np.ndarray)
