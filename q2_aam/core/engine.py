"""The one training loop, shared by pretraining and training.

Plain PyTorch with a few Accelerate calls: ``prepare``, ``backward``,
``clip_grad_norm_`` and ``gather_for_metrics``.  Everything a task does
differently lives in :class:`Objective`.
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

from .data import BatchCollator
from .losses import (classification_loss, mask_nucleotides, masked_nucleotide_loss,
                     pairwise_unifrac_loss, RegressionLoss)
from .model import AAMModel

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """How to train (not what the model is: see ``ModelConfig``)."""

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    patience: int = 10
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}.")

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
    distances: torch.Tensor | None = None  # (N, N), indexed by batch["sample_index"]

    def __post_init__(self):
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"mask_rate must be in (0, 1), got {self.mask_rate}.")
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
            idx = batch["sample_index"].to(self.distances.device)
            dist = self.distances[idx][:, idx].to(out["unifrac_embedding"].device)
            parts["unifrac"] = pairwise_unifrac_loss(out["unifrac_embedding"], dist)
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


def make_accelerator(device: str):
    from accelerate import Accelerator
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; "
                         "use device 'auto' or 'cpu'.")
    return Accelerator(cpu=cpu)


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
        log: Callable[[str], None] = print) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    ``metrics(prediction, target, sample_index)`` adds validation metrics
    (e.g. in original units). With a validation set, the weights of the epoch with the lowest
    validation loss (the target loss when there is a target) are restored at
    the end, and training stops after ``patience`` epochs without improvement
    (``patience=0``: never stop early).
    """
    from accelerate.utils import set_seed

    if not (objective.monitors_target or objective.unifrac_weight > 0
            or objective.mlm_weight > 0):
        raise ValueError("Every loss weight is 0: nothing to train.")
    set_seed(config.seed)
    # Same seed, same model: e.g. the backward of gathering ASV embeddings into sample slots
    # (index_put with accumulation) is otherwise thread-order dependent on the CPU.
    torch.use_deterministic_algorithms(True, warn_only=True)
    accelerator = make_accelerator(config.device)
    if freeze_encoder:
        if objective.mlm_weight > 0:
            raise ValueError("The masked-nucleotide loss trains the nucleotide encoder, which "
                             "is frozen; set its weight to 0 or do not freeze the encoder.")
        for module in (model.nucleotide_encoder, model.sample_encoder):
            module.requires_grad_(False)
    loader_rng = torch.Generator().manual_seed(config.seed)
    mask_rng = torch.Generator().manual_seed(config.seed + 1)
    n_train = len(train_collator.samples)
    train_loader = DataLoader(range(n_train), batch_size=config.batch_size, shuffle=True,
                              generator=loader_rng, collate_fn=train_collator)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay),
                                  lr=config.learning_rate)
    total_steps = config.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config.warmup_fraction))
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    if objective.distances is not None:
        objective.distances = objective.distances.to(accelerator.device)

    cache_train = cache_val = None
    if freeze_encoder:
        cache_train = FrozenEncoderCache(core, train_collator, accelerator.device)
        if val_collator is not None and len(val_collator.samples):
            cache_val = FrozenEncoderCache(core, val_collator, accelerator.device)

    history, best, best_state, stale = [], math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        if freeze_encoder:
            core.nucleotide_encoder.eval()
            core.sample_encoder.eval()
        started, sums, seen = time.perf_counter(), {}, 0
        for batch in train_loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            encoded = cache_train(batch) if cache_train is not None else None
            parts, _ = objective.losses(model, batch, encoded=encoded, generator=mask_rng)
            loss = objective.total(parts)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            n = len(batch["sample_index"])
            seen += n
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        row = {"epoch": epoch, "lr": scheduler.get_last_lr()[0],
               "seconds": round(time.perf_counter() - started, 2)}
        row.update({f"train_{k}": v / seen for k, v in sums.items()})
        monitor = None
        if val_collator is not None and len(val_collator.samples):
            val = evaluate(core, val_collator, objective, config, accelerator.device,
                           cache=cache_val, metrics=metrics)
            row.update({f"val_{k}": v for k, v in val.items()})
            monitor = val["target"] if objective.monitors_target else val["loss"]
        history.append(row)
        log(_describe(row, config.epochs))
        if monitor is not None:
            if monitor < best - 1e-6:
                best, stale = monitor, 0
                best_state = copy.deepcopy(core.state_dict())
                row["best"] = True
            else:
                stale += 1
                if config.patience and stale >= config.patience:
                    log(f"Stopping early: validation loss did not improve for {stale} epochs.")
                    break
    if best_state is not None:
        core.load_state_dict(best_state)
        log(f"Restored the weights of the best epoch (validation loss {best:.4f}).")
    core.requires_grad_(True)
    core.eval()
    return history


@torch.no_grad()
def evaluate(model: AAMModel, collator: BatchCollator, objective: Objective,
             config: TrainConfig, device, *, cache=None, metrics=None) -> dict:
    """Validation losses over every sample (no sample dropped or repeated).

    The UniFrac loss is taken over all pairs of the validation set at once, so
    it does not depend on the batch size; nucleotide masks use a fixed seed.
    """
    model.eval()
    rng = torch.Generator().manual_seed(config.seed + 2)
    loader = DataLoader(range(len(collator.samples)), batch_size=config.batch_size,
                        collate_fn=collator)
    target_losses, predictions, targets, embeddings, indices, mlm = [], [], [], [], [], []
    indices_t = []
    # UniFrac is taken once over all validation pairs below, not per batch.
    per_batch = dataclasses.replace(objective, unifrac_weight=0.0, distances=None)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        encoded = cache(batch) if cache is not None else None
        parts, out = per_batch.losses(model, batch, encoded=encoded, generator=rng,
                                  reduction="none")
        if "target" in parts:
            target_losses.append(parts["target"])
            predictions.append(out["prediction"])
            targets.append(batch["target"])
            indices_t.append(batch["sample_index"])
        if "mlm" in parts:
            mlm.append(parts["mlm"] * len(batch["sample_index"]))
        embeddings.append(out["unifrac_embedding"])
        indices.append(batch["sample_index"])
    result = {}
    n = len(collator.samples)
    if target_losses:
        result["target"] = float(torch.cat(target_losses).mean())
    if objective.unifrac_weight > 0:
        idx = torch.cat(indices).to(objective.distances.device)
        dist = objective.distances[idx][:, idx]
        result["unifrac"] = float(pairwise_unifrac_loss(torch.cat(embeddings), dist.to(device)))
    if mlm:
        result["mlm"] = float(sum(mlm)) / n
    weights = {"target": objective.target_weight, "unifrac": objective.unifrac_weight,
               "mlm": objective.mlm_weight}
    result["loss"] = sum(weights[k] * v for k, v in result.items())
    if metrics is not None and predictions:
        result.update(metrics(torch.cat(predictions).float().cpu().numpy(),
                              torch.cat(targets).cpu().numpy(),
                              torch.cat(indices_t).cpu().numpy()))
    return result


def _describe(row: dict, epochs: int) -> str:
    keys = [k for k in row if k.startswith(("train_", "val_"))]
    parts = " ".join(f"{k}={row[k]:.4g}" for k in keys)
    return f"epoch {row['epoch']}/{epochs} ({row['seconds']:.1f}s) {parts}"
