"""The one training loop, shared by pretraining and training.

Plain PyTorch with a few Accelerate calls: ``prepare``, ``accumulate``,
``backward``, ``clip_grad_norm_``, ``gather_for_metrics`` and the TensorBoard
tracker; checkpoints are written by ``checkpoints`` (safetensors and JSON only).
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
from torch.utils.data import DataLoader

from .checkpoints import Checkpoints, LoopState, run_signature, writable_directory
from .data import BatchCollator
from .layers import set_checkpointing
from .losses import (classification_loss, mask_nucleotides, masked_nucleotide_loss,
                     pairwise_unifrac_loss, RegressionLoss)
from .model import AAMModel
from .options import (DEVICES, DISTRIBUTED, MASK_RATE, MIXED_PRECISION, PREDICT_BATCH_SIZE,
                      TRAINING, check_choice)
from .parallel import (full_state_dict, global_batch, local_numel, make_accelerator,
                       micro_batch, resolved_device, shard)
from .explain import mean_attention
from .predict import embed_features
from .progress import Ticker
from .unifrac import MatrixDistances


@dataclass
class TrainConfig:
    """How to train (not what the model is: see ``ModelConfig``).

    ``batch_size`` is the *global* batch: the samples behind one optimizer
    step, over all processes and accumulation steps. Each process reads
    ``batch_size / (num_processes * gradient_accumulation_steps)`` samples per
    forward pass, so the same settings give the same schedule (and, on the
    CPU, the same model up to float rounding) with 1 or many processes.
    """

    epochs: int = TRAINING["epochs"]
    batch_size: int = TRAINING["batch_size"]
    learning_rate: float = TRAINING["learning_rate"]
    weight_decay: float = TRAINING["weight_decay"]
    warmup_fraction: float = TRAINING["warmup_fraction"]
    patience: int = TRAINING["patience"]
    max_grad_norm: float = TRAINING["max_grad_norm"]
    seed: int = TRAINING["seed"]
    device: str = TRAINING["device"]
    num_processes: int = TRAINING["num_processes"]
    distributed: str = TRAINING["distributed"]
    mixed_precision: str = TRAINING["mixed_precision"]
    gradient_accumulation_steps: int = TRAINING["gradient_accumulation_steps"]
    activation_checkpointing: bool = TRAINING["activation_checkpointing"]

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
            check_choice(name, getattr(self, name), allowed)
        # Device settings are checked here, when the config is made: before any data work.
        on_gpu = resolved_device(self.device) == "cuda"
        if self.mixed_precision == "fp16" and not on_gpu:
            raise ValueError("mixed precision 'fp16' needs a GPU; on the CPU use 'bf16' or "
                             "'no'.")
        if on_gpu and self.num_processes > torch.cuda.device_count():
            raise ValueError(f"{self.num_processes} processes were asked for, but torch sees "
                             f"{torch.cuda.device_count()} GPU(s); on a GPU machine each "
                             "process trains on its own GPU.")
        micro_batch(self.batch_size, self.num_processes, self.gradient_accumulation_steps)

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
    mask_rate: float = MASK_RATE
    # MatrixDistances or TreeDistances (core.unifrac): pairs by batch["sample_index"]
    distances: object | None = None

    def __post_init__(self):
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate}.")
        if isinstance(self.distances, (torch.Tensor, np.ndarray)):
            self.distances = MatrixDistances(self.distances)
        if self.unifrac_weight > 0 and self.distances is None:
            raise ValueError("UniFrac needs a rooted phylogeny (--i-phylogeny) or a distance "
                             "matrix (--i-distance-matrix) when its loss weight "
                             "(--p-unifrac-weight) is above 0: give one, or set the weight "
                             "to 0.")

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


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                warmup_fraction: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler of :func:`lr_factor`, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_fraction))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices (``p.dim() >= 2``), except lookup tables.

    Biases, norms and scalars are vectors, so they do not decay. Lookup tables
    do not either: ``nn.Embedding`` weights, and what a module declares in
    ``no_weight_decay``: ``True`` for the module and everything in it (FiLM,
    conditional output scaling: zero-initialised identities), or a tuple of
    its own parameters' names (learned tokens such as the Perceiver's latents).
    """
    decay, no_decay = [], []
    exempt_prefixes = tuple(f"{name}." for name, module in model.named_modules()
                            if getattr(module, "no_weight_decay", False) is True)
    for module_name, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", ())
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            table = (isinstance(module, torch.nn.Embedding) or full.startswith(exempt_prefixes)
                     or (isinstance(declared, tuple) and name in declared))
            (decay if param.dim() >= 2 and not table else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


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
    def __init__(self, model: AAMModel, collator: BatchCollator, device,
                 batch_size: int = PREDICT_BATCH_SIZE, tick=None):
        asv = embed_features(model, collator.tokens, np.unique(collator.samples.indices), device,
                             tick=tick)
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
            if tick is not None:
                tick(f"Frozen encoder: {min(start + batch_size, n)} of {n} samples encoded.")
        model.train(was_training)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows, width = batch["row"], batch["asv_mask"].shape[1]
        return self.tokens[rows, :width], self.pooled[rows]


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
    with the same arguments continues from it (other arguments are refused;
    see ``checkpoints``). ``tensorboard_dir``: TensorBoard event files.
    ``progress``: a progress bar on the main process (``None``: only when
    stderr is a terminal).
    """
    if not (objective.monitors_target or objective.unifrac_weight > 0
            or objective.mlm_weight > 0):
        raise ValueError("Every loss weight is 0: nothing to train.")
    run = _Run(model, train_collator, val_collator, objective, config, freeze_encoder,
               metrics, log, tensorboard_dir)
    if checkpoint_dir:
        run.resume_from(checkpoint_dir)
    run.start(progress)
    for epoch in range(run.state.epoch + 1, 0 if run.state.stopped else config.epochs + 1):
        row = run.train_epoch(epoch)
        if run.end_epoch(row):
            run.say(f"Stopping early: validation loss did not improve for {run.state.stale} "
                    "epochs.")
            break
    run.finish()
    return run.state.history


class _Run:
    """One call of :func:`fit`: the accelerator, loaders, optimizer, scheduler, caches and
    loop state it builds, and the steps of an epoch."""

    def __init__(self, model: AAMModel, train_collator: BatchCollator,
                 val_collator: BatchCollator | None, objective: Objective,
                 config: TrainConfig, freeze_encoder: bool, metrics, log,
                 tensorboard_dir: str | None):
        from accelerate.utils import set_seed
        self.objective, self.config, self.metrics = objective, config, metrics
        self.freeze_encoder, self.train_collator = freeze_encoder, train_collator
        set_seed(config.seed)
        # Same seed, same model: e.g. the backward of gathering ASV embeddings into sample
        # slots (index_put with accumulation) is otherwise thread-order dependent on the CPU.
        torch.use_deterministic_algorithms(True, warn_only=True)
        accelerator = make_accelerator(config.device, config.mixed_precision,
                                       config.gradient_accumulation_steps, tensorboard_dir)
        self.accelerator = accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if tensorboard_dir:
            writable_directory(tensorboard_dir, "TensorBoard", rank)
        micro = micro_batch(config.batch_size, world, config.gradient_accumulation_steps)
        self.say = log if accelerator.is_main_process else (lambda message: None)
        self.say(f"Device: {resolved_device(config.device)} (--p-device {config.device}), "
                 f"{world} process(es), mixed precision {config.mixed_precision}.")
        self.fsdp = config.distributed == "fsdp" and world > 1
        _freeze_unused(model, objective, freeze_encoder)
        set_checkpointing(model, config.activation_checkpointing)
        loader_rng = torch.Generator().manual_seed(config.seed)
        self.mask_rng = torch.Generator().manual_seed(config.seed + 1 + 7919 * rank)
        train_loader = DataLoader(range(len(train_collator.samples)), batch_size=micro,
                                  shuffle=True, generator=loader_rng, collate_fn=train_collator)
        self.has_val = val_collator is not None and len(val_collator.samples) > 0
        self.val_collator = val_collator if self.has_val else None
        val_loader = (DataLoader(range(len(val_collator.samples)), batch_size=micro,
                                 collate_fn=val_collator) if self.has_val else None)
        self._prepare(model, train_loader, val_loader)
        if objective.distances is not None:
            objective.distances = objective.distances.to(accelerator.device)
        self.cache_train = self.cache_val = None
        self.ticker = Ticker(self.say)
        if freeze_encoder:
            started = time.perf_counter()
            self.say("Frozen encoder: encoding each ASV and sample once, for every epoch.")
            self.cache_train = FrozenEncoderCache(self.core, train_collator, accelerator.device,
                                                  tick=self.ticker)
            if self.has_val:
                self.cache_val = FrozenEncoderCache(self.core, val_collator, accelerator.device,
                                                    tick=self.ticker)
            self.say(f"Frozen encoder: done in {time.perf_counter() - started:.1f} s.")
        self.state = LoopState(loader_rng, self.mask_rng)
        self.checkpoints = None
        self.tracker = _Tracker(accelerator, config, tensorboard_dir)

    def _prepare(self, model: AAMModel, train_loader, val_loader) -> None:
        """The module that trains (a sharded copy under FSDP), its optimizer and scheduler,
        wrapped by the accelerator."""
        accelerator, config = self.accelerator, self.config
        world = accelerator.num_processes
        self.core = model  # the caller's module: it receives the trained weights at the end
        if self.fsdp:  # a sharded copy trains; accelerate's FSDP plugin does not shard on CPU
            model.to(accelerator.device)
            model = shard(copy.deepcopy(self.core))
            self.say(f"FSDP: each of the {world} processes holds 1/{world} of the weights "
                     f"({local_numel(model):,} of {local_numel(self.core):,} on the first).")
        self.net = model  # the module itself, sharded or not (DDP wraps it below)
        optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay),
                                      lr=config.learning_rate)
        if self.fsdp:
            optimizer, train_loader = accelerator.prepare(optimizer, train_loader)
        else:
            model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.scheduler = lr_schedule(getattr(optimizer, "optimizer", optimizer),
                                     self.total_steps, config.warmup_fraction)

    def resume_from(self, directory: str) -> None:
        """Checkpoints in ``directory``: resume from the newest, and write one every epoch."""
        signature = run_signature(self.config, self.objective, self.core.config.to_dict(),
                                  self.freeze_encoder, self.train_collator, self.val_collator,
                                  self.accelerator.num_processes)
        writable_directory(directory, "checkpoint", self.accelerator.process_index)
        self.checkpoints = Checkpoints(directory, self.accelerator, self.net,
                                       getattr(self.optimizer, "optimizer", self.optimizer),
                                       self.scheduler, self.state, signature,
                                       sharded=self.fsdp)
        if self.checkpoints.resume(self.say):
            self.model.train()

    def start(self, progress: bool | None) -> None:
        """The progress bar, and the starting point's validation loss (a candidate too: a
        model that starts from a fitted linear readout keeps it unless training improves
        on it)."""
        self.bar = _progress_bar(self.accelerator, self.total_steps, progress,
                                 initial=self.state.epoch * self.steps_per_epoch)
        if self.has_val and self.objective.monitors_target and self.state.epoch == 0 \
                and self.state.best_state is None:
            start, _ = evaluate(self.model, self.val_loader, self.objective, self.config,
                                self.accelerator, cache=self.cache_val, metrics=self.metrics)
            self.state.best, self.state.best_state = start["target"], full_state_dict(self.net)
            self.say(f"before training: val_target={start['target']:.4g}")

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training samples; the epoch's row of the history."""
        accelerator, objective, config = self.accelerator, self.objective, self.config
        self.model.train()
        if self.freeze_encoder:
            self.net.nucleotide_encoder.eval()
            self.net.sample_encoder.eval()
        started = time.perf_counter()
        # Running sums stay on the device: no host synchronisation per batch.
        sums = torch.zeros(5, device=accelerator.device)  # loss, target, unifrac, mlm, samples
        norms, gates = [], []
        for batch in self.train_loader:
            with accelerator.accumulate(self.model):
                encoded = self.cache_train(batch) if self.cache_train is not None else None
                with accelerator.autocast():  # (a prepared model autocasts by itself)
                    parts, out = objective.losses(self.model, batch, encoded=encoded,
                                                  generator=self.mask_rng)
                loss = objective.total(parts)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(self.model.parameters(),
                                                       config.max_grad_norm)
                    norms.append((norm.full_tensor() if hasattr(norm, "full_tensor")
                                  else norm).detach())
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            n = len(batch["sample_index"])
            zero = sums.new_zeros(())
            sums += torch.stack([(loss if k == "loss" else parts.get(k, zero)).detach().float()
                                 .mean() * n for k in ("loss", "target", "unifrac", "mlm")]
                                + [sums.new_tensor(float(n))])
            if "gmu_gate" in out:
                gates.append(out["gmu_gate"].detach().float().mean())
            if accelerator.sync_gradients:
                self._step_done(epoch, loss, norms, gates)
        totals = accelerator.reduce(sums, reduction="sum").double().cpu()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
               "seconds": round(seconds, 2),
               "samples_per_second": round(float(totals[4]) / seconds, 1)}
        if norms:
            row["grad_norm"] = float(torch.stack(norms).float().mean())
        row.update({f"train_{k}": float(totals[i] / totals[4])
                    for i, k in enumerate(("loss", "target", "unifrac", "mlm"))
                    if k == "loss" or k in parts})
        return row

    def _step_done(self, epoch: int, loss: torch.Tensor, norms: list, gates: list) -> None:
        """After an optimizer step: the scheduler, TensorBoard and the progress bar."""
        self.scheduler.step()
        self.state.step += 1
        self.tracker.step(self.state.step, loss, self.scheduler, norms, gates)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=f"{epoch}/{self.config.epochs}",
                                 loss=f"{float(loss.detach()):.4g}")
        else:  # no bar (stderr is not a terminal): a line at most every progress.EVERY s
            done = self.state.step - (epoch - 1) * self.steps_per_epoch
            self.ticker(lambda: f"epoch {epoch}/{self.config.epochs}: step {done} of "
                                f"{self.steps_per_epoch}, loss {float(loss.detach()):.4g}")

    def end_epoch(self, row: dict) -> bool:
        """Validate, keep the best weights, log and checkpoint; whether to stop early."""
        monitor = None
        if self.has_val:
            val, attention = evaluate(self.model, self.val_loader, self.objective, self.config,
                                      self.accelerator, cache=self.cache_val,
                                      metrics=self.metrics,
                                      attention=self.tracker.writer is not None)
            row.update({f"val_{k}": v for k, v in val.items()})
            monitor = val["target"] if self.objective.monitors_target else val["loss"]
            self.tracker.attention(attention, row["epoch"])
        state = self.state
        state.history.append(row)
        self.tracker.epoch(row, row["epoch"])
        self.say(_describe(row, self.config.epochs))
        stop = False
        if monitor is not None:
            if monitor < state.best - 1e-6:
                state.best, state.stale = monitor, 0
                state.best_state = full_state_dict(self.net)
                row["best"] = True
            else:
                state.stale += 1
                stop = bool(self.config.patience and state.stale >= self.config.patience)
        state.epoch, state.stopped = row["epoch"], stop
        if self.checkpoints is not None:
            self.checkpoints.save()
        return stop

    def finish(self) -> None:
        """The best (or last) weights back into the caller's module, ready for inference."""
        if self.bar is not None:
            self.bar.close()
        self.tracker.close()
        state, core = self.state, self.core
        if state.best_state is not None:
            core.load_state_dict(state.best_state)
            kept = [r["epoch"] for r in state.history if r.get("best")]
            self.say(f"Restored the weights of the best epoch (validation loss "
                     f"{state.best:.4f})." if kept else f"No epoch improved on the starting "
                     f"point (validation loss {state.best:.4f}); kept it.")
        elif self.fsdp:  # no validation: the last epoch's weights, gathered into the caller's
            core.load_state_dict(full_state_dict(self.net))
        core.requires_grad_(True)
        set_checkpointing(core, False)
        core.eval()


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
    return result, mean_attention(maps)


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


def _describe(row: dict, epochs: int) -> str:
    keys = [k for k in row if k.startswith(("train_", "val_")) and isinstance(row[k], float)]
    parts = " ".join(f"{k}={row[k]:.4g}" for k in keys)
    return f"epoch {row['epoch']}/{epochs} ({row['seconds']:.1f}s) {parts}"
