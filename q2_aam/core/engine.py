"""The one training loop, shared by pretraining and training.

Plain PyTorch with a few Accelerate calls: ``prepare``, ``accumulate``,
``backward``, ``clip_grad_norm_``, ``gather_for_metrics`` and the TensorBoard
tracker; checkpoints are written by ``checkpoint`` (safetensors and JSON only).
It runs the same in one process and in each process of a distributed run
(``launch.run_workers``, ``torchrun`` or ``accelerate launch``). Everything a
task does differently lives in :class:`Objective`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checkpoint import Checkpoints
from .data import BatchCollator
from .layers import set_checkpointing
from .losses import (classification_loss, mask_nucleotides, masked_nucleotide_loss,
                     pairwise_unifrac_loss, RegressionLoss)
from .model import AAMModel
from .unifrac import MatrixDistances

DEVICES = ("auto", "cpu", "cuda")


MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """How to train (not what the model is: see ``ModelConfig``).

    ``batch_size`` is the *global* batch: the samples behind one optimizer
    step, over all processes and accumulation steps. Each process reads
    ``batch_size / (num_processes * gradient_accumulation_steps)`` samples per
    forward pass, so the same settings give the same schedule (and, on the
    CPU, the same model up to float rounding) with 1 or many processes.
    """

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    patience: int = 10
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_processes: int = 1
    distributed: str = "ddp"
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    activation_checkpointing: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch_size", "num_processes", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
        for name, allowed in (("device", DEVICES), ("mixed_precision", MIXED_PRECISION),
                              ("distributed", DISTRIBUTED)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}.")
        # Device settings are checked here, when the config is made: before any data work.
        cuda = torch.cuda.is_available()
        if self.device == "cuda" and not cuda:
            raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; "
                             "use device 'auto' or 'cpu'.")
        on_gpu = self.device == "cuda" or (self.device == "auto" and cuda)
        if self.mixed_precision == "fp16" and not on_gpu:
            raise ValueError("mixed precision 'fp16' needs a GPU; on the CPU use 'bf16' or "
                             "'no'.")
        if on_gpu and self.num_processes > torch.cuda.device_count():
            raise ValueError(f"{self.num_processes} processes were asked for, but torch sees "
                             f"{torch.cuda.device_count()} GPU(s); on a GPU machine each "
                             "process trains on its own GPU.")
        shards = self.num_processes * self.gradient_accumulation_steps
        if self.batch_size % shards:
            raise ValueError(
                f"The batch size ({self.batch_size}) is the number of samples per optimizer "
                f"step, split over {self.num_processes} process(es) x "
                f"{self.gradient_accumulation_steps} accumulation step(s); it must be a "
                f"multiple of {shards}, e.g. {shards * max(1, round(self.batch_size / shards))}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Objective:
    """What the loss is made of, and its weights.

    Pretraining: ``target_weight=0`` with UniFrac and masked nucleotides.
    Training: the target, optionally with both as auxiliary losses.
    """

    task: str
    target_weight: float = 1.0
    unifrac_weight: float = 0.0
    mlm_weight: float = 0.0
    regression_loss: RegressionLoss = RegressionLoss()
    class_weights: torch.Tensor | None = None  # (n_classes,) for cross-entropy
    mask_rate: float = 0.15
    # MatrixDistances or TreeDistances (core.unifrac): pairs by batch["sample_index"]
    distances: object | None = None

    def __post_init__(self):
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate}.")
        if isinstance(self.distances, (torch.Tensor, np.ndarray)):
            self.distances = MatrixDistances(self.distances)
        if self.unifrac_weight > 0 and self.distances is None:
            raise ValueError("A UniFrac loss weight was given but no distances: supply a "
                             "phylogeny or a distance matrix, or set the weight to 0.")

    @property
    def monitors_target(self) -> bool:
        return self.task != "encoder" and self.target_weight > 0

    def losses(self, model, batch, *, encoded=None, generator=None,
               reduction="mean") -> tuple[dict, dict]:
        """Return (loss components, model outputs) for one batch.

        ``encoded``: the frozen encoder's outputs for the batch (see
        :class:`FrozenEncoderCache`).
        """
        mlm_tokens = labels = None
        if self.mlm_weight > 0 and encoded is None:
            mlm_tokens, labels = mask_nucleotides(batch["asv_tokens"], self.mask_rate,
                                                  generator)
        out = model(batch, mlm_tokens=mlm_tokens, encoded=encoded)
        parts = {}
        if self.monitors_target:
            if self.task == "regression":
                parts["target"] = self.regression_loss(out["prediction"], batch["target"],
                                                       reduction)
            else:
                parts["target"] = classification_loss(out["prediction"], batch["target"],
                                                      reduction, self.class_weights)
        if self.unifrac_weight > 0:
            # Over all pairs of the global batch: every process's embeddings, with gradient.
            embedding, idx = global_batch(out["unifrac_embedding"], batch["sample_index"])
            dist = self.distances.between(idx).to(embedding.device)
            parts["unifrac"] = pairwise_unifrac_loss(embedding, dist)
        if labels is not None:
            parts["mlm"] = masked_nucleotide_loss(out["mlm_logits"], labels)
        return parts, out

    def total(self, parts: dict) -> torch.Tensor:
        weights = {"target": self.target_weight, "unifrac": self.unifrac_weight,
                   "mlm": self.mlm_weight}
        return sum(weights[k] * v.mean() for k, v in parts.items())


def lr_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the run, then cosine decay to 10%.

    Relative to the run's own length, so warm-up always ends.
    """
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    # Modules that declare no_weight_decay (FiLM, output scaling) are exempt as a whole.
    exempt_prefixes = tuple(f"{name}." for name, module in model.named_modules()
                            if getattr(module, "no_weight_decay", False))
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            exempt = (name.endswith("bias") or full.startswith(exempt_prefixes)
                      or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding))
                      or name in ("null", "columns", "latents"))
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def global_batch(embedding: torch.Tensor, index: torch.Tensor):
    """Every process's ``(b, D)`` embeddings (with gradient) and sample indices, in rank order.

    A plain ``gather`` carries no gradient; ``torch.distributed.nn``'s
    ``all_gather`` sums each slice's gradient over the processes in backward,
    which DDP's averaging then turns into the gradient of the loss over the
    global batch. The identity in a single process.
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embedding, index
    from torch.distributed.nn.functional import all_gather
    indices = [torch.empty_like(index) for _ in range(dist.get_world_size())]
    dist.all_gather(indices, index.contiguous())
    return torch.cat(all_gather(embedding.contiguous())), torch.cat(indices)


def resolved_device(device: str) -> str:
    """The device a run with ``device`` ('auto', 'cpu', 'cuda') trains on."""
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) \
        else "cpu"


def make_accelerator(device: str, mixed_precision: str = "no",
                     gradient_accumulation_steps: int = 1, tensorboard_dir: str | None = None):
    from accelerate import Accelerator
    if tensorboard_dir:
        try:
            import tensorboard  # noqa: F401  (optional: only logging needs it)
        except ImportError:
            raise ValueError("--p-tensorboard-dir needs the tensorboard package, which is "
                             "not installed: pip install 'q2-aam[tensorboard]' (or conda "
                             "install tensorboard), or leave the option out.") from None
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; "
                         "use device 'auto' or 'cpu'.")
    from accelerate.state import AcceleratorState, GradientState
    # Each run sets its own precision and accumulation; the process (and its process
    # group, PartialState) stays, but the previous run's settings must not carry over.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                       gradient_accumulation_steps=gradient_accumulation_steps,
                       log_with="tensorboard" if tensorboard_dir else None,
                       project_dir=tensorboard_dir)


def shard(model: AAMModel) -> AAMModel:
    """FSDP (FSDP2 ``fully_shard``) over all processes: each keeps 1/N of every parameter.

    The encoders, the target branch's parts and the whole model are sharding
    units, so calling an encoder alone (prediction, frozen-encoder caching)
    gathers just its parameters.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for name in ("nucleotide_encoder", "sample_encoder", "target_encoder", "perceiver"):
        module = getattr(model, name, None)
        if module is not None:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict:
    """A copy of every weight, whole on every process (gathered when sharded; collective)."""
    from torch.distributed.tensor import DTensor
    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        return {k: v.detach().clone() for k, v in get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True)).items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _freeze_unused(model: AAMModel, objective: Objective, freeze_encoder: bool) -> None:
    """No gradient for what no loss reaches: DDP requires every trainable parameter to
    get one in every step."""
    if freeze_encoder:
        model.nucleotide_encoder.requires_grad_(False)
        model.sample_encoder.requires_grad_(False)
    if objective.mlm_weight == 0 or freeze_encoder:
        model.nucleotide_encoder.mlm_head.requires_grad_(False)
    if objective.unifrac_weight == 0:  # the pooled sample embedding feeds only UniFrac
        model.unifrac_head.requires_grad_(False)
        model.sample_encoder.pool.requires_grad_(False)
        if not objective.monitors_target:  # masked nucleotides only
            model.sample_encoder.requires_grad_(False)


class FrozenEncoderCache:
    """The frozen encoder's outputs for every sample of a collator, computed once.

    With ``freeze_encoder`` both encoders are fixed (and in eval mode), so each
    ASV's embedding and each sample's encoder outputs are the same in every
    epoch: only the target branch runs per step.
    """

    @torch.no_grad()
    def __init__(self, model: AAMModel, collator: BatchCollator, device, batch_size: int = 64):
        asv = embed_features(model, collator.tokens, np.unique(collator.samples.indices), device)
        n = len(collator.samples)
        width = int(np.diff(collator.samples.indptr).max())
        d = model.config.embedding_dim
        self.tokens = torch.zeros(n, width, d, device=device)  # (N, S_max, D)
        self.pooled = torch.zeros(n, d, device=device)  # (N, D)
        was_training = model.training
        model.eval()
        for start in range(0, n, batch_size):
            batch = collator(range(start, min(start + batch_size, n)))
            batch = {k: v.to(device) for k, v in batch.items()}
            tokens_out, pooled = model.sample_encoder(asv[batch["asv_feature"]],
                                                      batch["asv_index"], batch["asv_mask"],
                                                      batch["abundance"])
            self.tokens[batch["row"], : tokens_out.shape[1]] = tokens_out
            self.pooled[batch["row"]] = pooled
        model.train(was_training)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows, width = batch["row"], batch["asv_mask"].shape[1]
        return self.tokens[rows, :width], self.pooled[rows]


@torch.no_grad()
def embed_features(model: AAMModel, tokens: np.ndarray, features: np.ndarray,
                   device, chunk: int = 512) -> torch.Tensor:
    """``(n_features, D)`` embeddings of the given feature rows of ``tokens``, computed once."""
    was_training = model.training
    model.eval()
    table = torch.zeros(tokens.shape[0], model.config.embedding_dim, device=device)
    lengths = (tokens != 0).sum(axis=1)
    order = features[np.argsort(lengths[features], kind="stable")]  # similar lengths together
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        width = int(lengths[rows].max())
        batch = torch.as_tensor(tokens[rows, :width].astype(np.int64), device=device)
        table[torch.as_tensor(rows, device=device)] = model.encode_asvs(batch)
    model.train(was_training)
    return table


def fit(model: AAMModel, train_collator: BatchCollator, val_collator: BatchCollator | None,
        objective: Objective, config: TrainConfig, *, freeze_encoder: bool = False,
        metrics: Callable[[np.ndarray, np.ndarray, np.ndarray], dict] | None = None,
        log: Callable[[str], None] = print, checkpoint_dir: str | None = None,
        tensorboard_dir: str | None = None, progress: bool | None = None) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    The one loop behind pretraining and training, in one process or in each
    process of a distributed run (DDP; see ``launch``): batches are sharded
    over the processes, gradients accumulated over
    ``config.gradient_accumulation_steps``, the scheduler steps once per
    optimizer step, and validation gathers every sample once
    (``gather_for_metrics``), so every process takes the same early-stopping
    decision.

    ``metrics(prediction, target, sample_index)`` adds validation metrics
    (e.g. in original units). With a validation set, the weights of the epoch
    with the lowest validation loss (the target loss when there is a target)
    are restored at the end, and training stops after ``patience`` epochs
    without improvement (``patience=0``: never stop early).

    ``checkpoint_dir``: state written after every epoch; a run started again
    with the same arguments continues from it (other arguments are refused).
    ``tensorboard_dir``: TensorBoard event files. ``progress``: a progress
    bar on the main process (``None``: only when stderr is a terminal).
    """
    from accelerate.utils import set_seed

    if not (objective.monitors_target or objective.unifrac_weight > 0
            or objective.mlm_weight > 0):
        raise ValueError("Every loss weight is 0: nothing to train.")
    if freeze_encoder and objective.mlm_weight > 0:
        raise ValueError("The masked-nucleotide loss trains the nucleotide encoder, which "
                         "is frozen; set its weight to 0 or do not freeze the encoder.")
    set_seed(config.seed)
    # Same seed, same model: e.g. the backward of gathering ASV embeddings into sample slots
    # (index_put with accumulation) is otherwise thread-order dependent on the CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)
    accelerator = make_accelerator(config.device, config.mixed_precision,
                                   config.gradient_accumulation_steps, tensorboard_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    if tensorboard_dir:
        writable_directory(tensorboard_dir, "TensorBoard", rank)
    if config.batch_size % (world * config.gradient_accumulation_steps):
        raise ValueError(f"The batch size ({config.batch_size}) must be a multiple of the "
                         f"{world} process(es) x {config.gradient_accumulation_steps} "
                         "accumulation step(s).")
    micro = config.batch_size // (world * config.gradient_accumulation_steps)
    say = log if accelerator.is_main_process else (lambda message: None)
    say(f"Device: {resolved_device(config.device)} (--p-device {config.device}), {world} "
        f"process(es), mixed precision {config.mixed_precision}.")
    fsdp = config.distributed == "fsdp" and world > 1
    _freeze_unused(model, objective, freeze_encoder)
    set_checkpointing(model, config.activation_checkpointing)
    loader_rng = torch.Generator().manual_seed(config.seed)
    mask_rng = torch.Generator().manual_seed(config.seed + 1 + 7919 * rank)
    train_loader = DataLoader(range(len(train_collator.samples)), batch_size=micro,
                              shuffle=True, generator=loader_rng, collate_fn=train_collator)
    has_val = val_collator is not None and len(val_collator.samples) > 0
    val_loader = (DataLoader(range(len(val_collator.samples)), batch_size=micro,
                             collate_fn=val_collator) if has_val else None)
    core = model  # the caller's module: it receives the trained weights at the end
    if fsdp:  # a sharded copy trains; accelerate's FSDP plugin does not shard on the CPU
        core.to(accelerator.device)
        model = shard(copy.deepcopy(core))
        say(f"FSDP: each of the {world} processes holds 1/{world} of the weights "
            f"({sum(p.to_local().numel() for p in model.parameters()):,} of "
            f"{sum(p.numel() for p in core.parameters()):,} on the first).")
    net = model  # the module itself, sharded or not (DDP wraps it below)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay),
                                  lr=config.learning_rate)
    if fsdp:
        optimizer, train_loader = accelerator.prepare(optimizer, train_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        lambda step: lr_factor(step, total_steps, config.warmup_fraction))
    if objective.distances is not None:
        objective.distances = objective.distances.to(accelerator.device)

    cache_train = cache_val = None
    if freeze_encoder:
        cache_train = FrozenEncoderCache(core, train_collator, accelerator.device)
        if has_val:
            cache_val = FrozenEncoderCache(core, val_collator, accelerator.device)

    state = _LoopState(loader_rng, mask_rng)
    checkpoints = None
    if checkpoint_dir:
        # Neither the device nor activation checkpointing changes what is computed.
        signature = {"config": {k: v for k, v in config.to_dict().items()
                                if k not in ("device", "activation_checkpointing")},
                     "objective": {"target_weight": objective.target_weight,
                                   "unifrac_weight": objective.unifrac_weight,
                                   "mlm_weight": objective.mlm_weight,
                                   "mask_rate": objective.mask_rate},
                     "model": core.config.to_dict(), "freeze_encoder": freeze_encoder,
                     "training_data": _fingerprint(train_collator),
                     "validation_data": _fingerprint(val_collator) if has_val else None,
                     "processes": world}
        writable_directory(checkpoint_dir, "checkpoint", rank)
        checkpoints = Checkpoints(checkpoint_dir, accelerator, net,
                                  getattr(optimizer, "optimizer", optimizer), scheduler, state,
                                  signature, sharded=fsdp)
        if checkpoints.resume(say, _differences):
            model.train()
    tracker = _Tracker(accelerator, config, tensorboard_dir)
    bar = _progress_bar(accelerator, total_steps, progress, initial=state.epoch * steps_per_epoch)
    if has_val and objective.monitors_target and state.epoch == 0 and state.best_state is None:
        # The starting point is a candidate too: a model that starts from a fitted linear
        # readout keeps it unless training improves on it.
        start, _ = evaluate(model, val_loader, objective, config, accelerator, cache=cache_val,
                            metrics=metrics)
        state.best, state.best_state = start["target"], full_state_dict(net)
        say(f"before training: val_target={start['target']:.4g}")

    for epoch in range(state.epoch + 1, 0 if state.stopped else config.epochs + 1):
        model.train()
        if freeze_encoder:
            net.nucleotide_encoder.eval()
            net.sample_encoder.eval()
        started = time.perf_counter()
        # Running sums stay on the device: no host synchronisation per batch.
        sums = torch.zeros(5, device=accelerator.device)  # loss, target, unifrac, mlm, samples
        norms, gates = [], []
        for batch in train_loader:
            with accelerator.accumulate(model):
                encoded = cache_train(batch) if cache_train is not None else None
                with accelerator.autocast():  # (a prepared model autocasts by itself)
                    parts, out = objective.losses(model, batch, encoded=encoded,
                                                  generator=mask_rng)
                loss = objective.total(parts)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    norms.append((norm.full_tensor() if hasattr(norm, "full_tensor")
                                  else norm).detach())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n = len(batch["sample_index"])
            zero = sums.new_zeros(())
            sums += torch.stack([(loss if k == "loss" else parts.get(k, zero)).detach().float()
                                 .mean() * n for k in ("loss", "target", "unifrac", "mlm")]
                                + [sums.new_tensor(float(n))])
            if "gmu_gate" in out:
                gates.append(out["gmu_gate"].detach().float().mean())
            if accelerator.sync_gradients:
                scheduler.step()
                state.step += 1
                tracker.step(state.step, loss, scheduler, norms, gates)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch}/{config.epochs}",
                                    loss=f"{float(loss.detach()):.4g}")
        totals = accelerator.reduce(sums, reduction="sum").double().cpu()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 2),
               "samples_per_second": round(float(totals[4]) / seconds, 1)}
        if norms:
            row["grad_norm"] = float(torch.stack(norms).float().mean())
        row.update({f"train_{k}": float(totals[i] / totals[4])
                    for i, k in enumerate(("loss", "target", "unifrac", "mlm"))
                    if k == "loss" or k in parts})
        monitor = None
        if has_val:
            val, attention = evaluate(model, val_loader, objective, config, accelerator,
                                      cache=cache_val, metrics=metrics,
                                      attention=tracker.writer is not None)
            row.update({f"val_{k}": v for k, v in val.items()})
            monitor = val["target"] if objective.monitors_target else val["loss"]
            tracker.attention(attention, epoch)
        state.history.append(row)
        tracker.epoch(row, epoch)
        say(_describe(row, config.epochs))
        stop = False
        if monitor is not None:
            if monitor < state.best - 1e-6:
                state.best, state.stale = monitor, 0
                state.best_state = full_state_dict(net)
                row["best"] = True
            else:
                state.stale += 1
                stop = bool(config.patience and state.stale >= config.patience)
        state.epoch, state.stopped = epoch, stop
        if checkpoints is not None:
            checkpoints.save()
        if stop:
            say(f"Stopping early: validation loss did not improve for {state.stale} epochs.")
            break
    if bar is not None:
        bar.close()
    tracker.close()
    if state.best_state is not None:
        core.load_state_dict(state.best_state)
        kept = [r["epoch"] for r in state.history if r.get("best")]
        say(f"Restored the weights of the best epoch (validation loss {state.best:.4f})."
            if kept else f"No epoch improved on the starting point (validation loss "
            f"{state.best:.4f}); kept it.")
    elif fsdp:  # no validation: the last epoch's weights, gathered back into the caller's
        core.load_state_dict(full_state_dict(net))
    core.requires_grad_(True)
    set_checkpointing(core, False)
    core.eval()
    return state.history


class _LoopState:
    """What the loop carries from epoch to epoch; saved in checkpoints."""

    def __init__(self, loader_rng: torch.Generator, mask_rng: torch.Generator):
        self.loader_rng, self.mask_rng = loader_rng, mask_rng
        self.epoch, self.step, self.best, self.stale = 0, 0, math.inf, 0
        self.stopped = False  # stopped early: a resumed run has nothing left to do
        self.history: list[dict] = []
        self.best_state: dict | None = None

    # The random generators are saved per process (see ``rng_state``), not here:
    # Accelerate writes registered objects from the main process only, so every worker
    # would resume with rank 0's dropout and masking streams.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best,
                "stale": self.stale, "stopped": self.stopped, "history": self.history}

    def load_state_dict(self, values: dict) -> None:
        self.epoch, self.step = values["epoch"], values["step"]
        self.best, self.stale, self.history = values["best"], values["stale"], values["history"]
        self.stopped = values["stopped"]

    # The global torch RNG (dropout) is among them, saved per process by ``checkpoint``.
    def rng_state(self) -> dict:
        """This process's random generators: shuffling, masking, dropout."""
        return {"loader_rng": self.loader_rng.get_state(), "mask_rng": self.mask_rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def set_rng_state(self, values: dict) -> None:
        self.loader_rng.set_state(values["loader_rng"])
        self.mask_rng.set_state(values["mask_rng"])
        torch.set_rng_state(values["torch_rng"])
        if values["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(values["cuda_rng"])


def writable_directory(path: str, what: str, rank: int = 0) -> None:
    """Create the folder ``path`` (for ``what``: checkpoints, TensorBoard) or say why not."""
    from pathlib import Path
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"The {what} directory {folder} is a file; give a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".writable-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"The {what} directory {folder} cannot be written ({error.strerror}); "
                         "give a folder you can write to.") from None


def _fingerprint(collator: BatchCollator) -> str:
    """Which samples, with which ASV counts, targets and categories: a resumed run must
    continue on the same data, not just the same number of samples."""
    import hashlib
    digest = hashlib.sha256()
    samples = collator.samples
    digest.update("\n".join(samples.sample_ids).encode())
    for array in (samples.indptr, samples.indices, samples.counts, collator.targets,
                  collator.categories):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return f"{len(samples)} samples, sha256 {digest.hexdigest()[:16]}"


def _differences(saved, current, prefix=""):
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def run_name(directory: str) -> str:
    """A new subfolder name for this run's TensorBoard logs (``aam-YYYYmmdd-HHMMSS``, with
    ``-2``, ``-3``, ... if taken), so that runs logged into one folder stay apart."""
    from pathlib import Path
    base = time.strftime("aam-%Y%m%d-%H%M%S")
    name, k = base, 1
    while (Path(directory) / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


class _Tracker:
    """TensorBoard scalars and images on the main process (nothing without a directory)."""

    def __init__(self, accelerator, config: TrainConfig, directory: str | None):
        self.accelerator, self.writer = accelerator, None
        if directory and accelerator.is_main_process:
            flat = {k: v for k, v in config.to_dict().items()
                    if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(run_name(directory), config=flat)
            self.writer = accelerator.get_tracker("tensorboard", unwrap=True)

    def step(self, step, loss, scheduler, norms, gates):
        if self.writer is None:
            return
        self.writer.add_scalar("train/step_loss", float(loss.detach()), step)
        self.writer.add_scalar("train/lr", float(scheduler.get_last_lr()[0]), step)
        if norms:
            self.writer.add_scalar("train/grad_norm", float(norms[-1]), step)
        if gates:
            self.writer.add_scalar("gmu/gate_mean", float(gates[-1]), step)

    def epoch(self, row: dict, epoch: int):
        if self.writer is None:
            return
        for key, value in row.items():
            if key.startswith(("train_", "val_")) and isinstance(value, (int, float)):
                split, name = key.split("_", 1)
                self.writer.add_scalar(f"{split}/{name}", float(value), epoch)
        self.writer.add_scalar("train/samples_per_second", row["samples_per_second"], epoch)

    def attention(self, attention: dict, epoch: int):
        if self.writer is None:
            return
        for name, matrix in attention.items():  # (rows, cols), weights in [0, 1]
            image = matrix / max(float(matrix.max()), 1e-12)
            self.writer.add_image(f"attention/{name}", image[None], epoch, dataformats="CHW")

    def close(self):
        # Not accelerator.end_training(): it also destroys the process group, which the
        # end of fit (gathering sharded weights) and the caller's next run still need.
        for tracker in self.accelerator.trackers:
            tracker.finish()


def _progress_bar(accelerator, total: int, progress: bool | None, initial: int = 0):
    import sys
    if not accelerator.is_main_process or progress is False:
        return None
    if progress is None and not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc="training", leave=False)


@torch.no_grad()
def evaluate(model, loader, objective: Objective, config: TrainConfig, accelerator, *,
             cache=None, metrics=None, attention: bool = False) -> tuple[dict, dict]:
    """Validation losses over every sample once, whatever the number of processes.

    Per-sample values are gathered from every process (``gather_for_metrics``
    drops the duplicates that pad the last batch), so each process computes
    the same numbers. The UniFrac loss is taken over all pairs of the
    validation set at once, so it does not depend on the batch size; nucleotide
    masks use a fixed seed. With ``attention``, also returns the mean attention maps
    (cross-attention: ASV slot x metadata token; Perceiver: latent x input) for TensorBoard.
    """
    model.eval()
    rng = torch.Generator().manual_seed(config.seed + 2 + 7919 * accelerator.process_index)
    # UniFrac is taken once over all validation pairs below, not per batch.
    per_batch = dataclasses.replace(objective, unifrac_weight=0.0, distances=None)
    gathered: dict[str, list] = {}
    maps: dict[str, list] = {}
    for batch in loader:
        encoded = cache(batch) if cache is not None else None
        with accelerator.autocast():
            parts, out = per_batch.losses(model, batch, encoded=encoded, generator=rng,
                                          reduction="none")
        n = len(batch["sample_index"])
        values = {"index": batch["sample_index"], "embedding": out["unifrac_embedding"].float()}
        if "target" in parts:
            values.update(target_loss=parts["target"].float(),
                          prediction=out["prediction"].float(), target=batch["target"])
        if "mlm" in parts:
            values["mlm"] = parts["mlm"].float().expand(n)
        for key, value in accelerator.gather_for_metrics(values).items():
            gathered.setdefault(key, []).append(value)
        if not attention:
            continue
        mask = batch["asv_mask"].float()  # (b, S)
        if "cross_attention" in out:  # (b, h, S, K) -> sum over samples of valid slots
            weights = out["cross_attention"].float().mean(1) * mask[..., None]
            maps.setdefault("cross_attention", []).append(
                (weights.sum(0).cpu(), mask.sum(0).cpu()))
        if "perceiver_attention" in out:  # (b, h, L, S + K): slots, then metadata tokens
            weights = out["perceiver_attention"].float().mean(1).sum(0).cpu()  # (L, S + K)
            slots = mask.shape[1]
            maps.setdefault("perceiver", []).append(
                (weights[:, :slots], weights[:, slots:], n))
    values = {k: torch.cat(v) for k, v in gathered.items()}
    result = {}
    if "target_loss" in values:
        result["target"] = float(values["target_loss"].mean())
    if objective.unifrac_weight > 0:
        result["unifrac"] = validation_unifrac(values["embedding"], values["index"],
                                               objective.distances)
    if "mlm" in values:
        result["mlm"] = float(values["mlm"].mean())
    weights = {"target": objective.target_weight, "unifrac": objective.unifrac_weight,
               "mlm": objective.mlm_weight}
    result["loss"] = sum(weights[k] * v for k, v in result.items())
    if metrics is not None and "prediction" in values:
        result.update(metrics(values["prediction"].cpu().numpy(),
                              values["target"].cpu().numpy(), values["index"].cpu().numpy()))
    return result, _mean_attention(maps)


#: Validation samples over which the UniFrac loss takes all pairs at once; a larger
#: validation set is taken in consecutive blocks of this many (memory stays bounded).
VALIDATION_PAIR_BLOCK = 2048


def validation_unifrac(embedding: torch.Tensor, index: torch.Tensor, distances) -> float:
    """The UniFrac loss over all pairs of the validation set, or, past
    ``VALIDATION_PAIR_BLOCK`` samples, over all pairs within consecutive blocks (each
    block weighted by its number of pairs)."""
    total = pairs = 0.0
    for start in range(0, len(index), VALIDATION_PAIR_BLOCK):
        block = slice(start, start + VALIDATION_PAIR_BLOCK)
        n = len(index[block])
        if n < 2:
            continue
        dist = distances.between(index[block]).to(embedding.device)
        total += float(pairwise_unifrac_loss(embedding[block], dist)) * n * (n - 1) / 2
        pairs += n * (n - 1) / 2
    return total / pairs if pairs else float("nan")


def _mean_attention(attention: dict) -> dict:
    """Average the per-batch attention sums into one matrix per kind."""
    out = {}
    if "cross_attention" in attention:  # slots differ in width between batches
        width = max(w.shape[0] for w, _ in attention["cross_attention"])
        total = torch.zeros(width, attention["cross_attention"][0][0].shape[1])
        count = torch.zeros(width)
        for w, c in attention["cross_attention"]:
            total[: w.shape[0]] += w
            count[: c.shape[0]] += c
        out["cross_attention"] = (total / count.clamp(min=1)[:, None]).numpy()
    if "perceiver" in attention:  # latents x [ASV slots (padded to the widest) ; tokens]
        width = max(s.shape[1] for s, _, _ in attention["perceiver"])
        total = sum(torch.cat([F.pad(s, (0, width - s.shape[1])), m], dim=1)
                    for s, m, _ in attention["perceiver"])
        out["perceiver"] = (total / sum(n for _, _, n in attention["perceiver"])).numpy()
    return out


def _describe(row: dict, epochs: int) -> str:
    keys = [k for k in row if k.startswith(("train_", "val_")) and isinstance(row[k], float)]
    parts = " ".join(f"{k}={row[k]:.4g}" for k in keys)
    return f"epoch {row['epoch']}/{epochs} ({row['seconds']:.1f}s) {parts}"
