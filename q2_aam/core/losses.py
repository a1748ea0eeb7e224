"""Losses: pairwise UniFrac, masked nucleotides, and the target."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .options import (DEFAULT_LOSS, DEFAULT_PENALTY, DEFAULT_QUANTILES, REGRESSION_LOSSES,
                      check_choice)
from .tokenizer import MASK, PAD

IGNORE = -100


def pairwise_unifrac_loss(embedding: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Mean squared error between embedding distances and UniFrac over all pairs.

    Args:
        embedding: ``(B, D)`` sample embeddings of the (global) batch.
        distances: ``(B, B)`` UniFrac distances between the same samples.
    """
    b = embedding.shape[0]
    if b < 2:
        return embedding.sum() * 0.0
    predicted = torch.cdist(embedding.float(), embedding.float())  # (B, B)
    i, j = torch.triu_indices(b, b, offset=1, device=embedding.device)
    return F.mse_loss(predicted[i, j], distances[i, j].to(predicted.dtype))


def mask_nucleotides(tokens: torch.Tensor, rate: float, generator: torch.Generator):
    """Mask a fraction ``rate`` of the real nucleotides.

    Returns:
        ``(masked_tokens, labels)``: tokens with chosen positions set to
        ``MASK``; labels ``(U, L)`` holding the class (0..4 for A, C, G, T, N)
        at masked positions and ``IGNORE`` elsewhere.
    """
    real = tokens != PAD
    draw = torch.rand(tokens.shape, generator=generator, device="cpu").to(tokens.device)
    chosen = real & (draw < rate)
    labels = torch.where(chosen, tokens - 1, torch.full_like(tokens, IGNORE))
    return tokens.masked_fill(chosen, MASK), labels


def masked_nucleotide_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions (``logits`` ``(U, L, 5)``)."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE)


@dataclass(frozen=True)
class RegressionLoss:
    """The loss of a numeric target, on the transformed scale.

    ``huber`` (delta 1), ``mse``, ``mae``; ``quantile``: the pinball loss
    averaged over ``quantiles`` (one model output each; the point prediction
    is the output of the quantile nearest 0.5); ``asymmetric``: an absolute
    error weighted ``over_penalty`` where the prediction is too high and
    ``under_penalty`` where it is too low.
    """

    kind: str = DEFAULT_LOSS
    quantiles: tuple = ()
    over_penalty: float = DEFAULT_PENALTY
    under_penalty: float = DEFAULT_PENALTY

    @classmethod
    def from_settings(cls, kind: str, quantiles=DEFAULT_QUANTILES,
                      over_penalty: float = DEFAULT_PENALTY,
                      under_penalty: float = DEFAULT_PENALTY) -> "RegressionLoss":
        """The loss from settings that always carry their defaults (as an action's do):
        ``quantiles`` count only for the quantile loss, where they differ from the default
        elsewhere they are refused, and the asymmetric loss needs a penalty other than 1."""
        if kind != "quantile" and list(quantiles) != list(DEFAULT_QUANTILES):
            raise ValueError(f"--p-quantiles were given, but --p-loss is {kind!r}; they are "
                             "used only by --p-loss quantile.")
        if kind == "asymmetric" and over_penalty == under_penalty == DEFAULT_PENALTY:
            raise ValueError("The asymmetric loss needs --p-over-penalty and/or "
                             "--p-under-penalty (otherwise it is the 'mae' loss).")
        return cls(kind=kind, quantiles=tuple(quantiles) if kind == "quantile" else (),
                   over_penalty=over_penalty, under_penalty=under_penalty)

    def __post_init__(self):
        check_choice("loss", self.kind, REGRESSION_LOSSES)
        if self.kind == "quantile":
            q = list(self.quantiles)
            if not q:
                raise ValueError("The quantile loss needs at least one quantile.")
            if any(not 0 < x < 1 for x in q):
                raise ValueError(f"Quantiles must lie strictly between 0 and 1, got {q}.")
            if q != sorted(set(q)):
                raise ValueError(f"Quantiles must be sorted and unique, got {q}.")
        elif self.quantiles:
            raise ValueError(f"Quantiles were given, but the loss is {self.kind!r}; they are "
                             "used only by the 'quantile' loss.")
        if self.over_penalty <= 0 or self.under_penalty <= 0:
            raise ValueError("Asymmetric penalties must be positive, got "
                             f"over={self.over_penalty}, under={self.under_penalty}.")
        if self.kind != "asymmetric" and (self.over_penalty, self.under_penalty) != (1.0, 1.0):
            raise ValueError(f"Over/under penalties were given, but the loss is {self.kind!r}; "
                             "they are used only by the 'asymmetric' loss.")

    @property
    def n_outputs(self) -> int:
        return len(self.quantiles) if self.kind == "quantile" else 1

    @property
    def point_output(self) -> int:
        """Which output is the point prediction."""
        if self.kind != "quantile":
            return 0
        return int(np.argmin([abs(q - 0.5) for q in self.quantiles]))

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
        """Loss of ``prediction`` ``(B, n_outputs)`` against ``target`` ``(B,)``."""
        prediction, target = prediction.float(), target.float()
        if self.kind == "quantile":
            q = torch.tensor(self.quantiles, device=prediction.device)  # (K,)
            error = target[:, None] - prediction  # (B, K)
            per_sample = torch.maximum(q * error, (q - 1) * error).mean(-1)
        else:
            p = prediction[:, 0]
            if self.kind == "huber":
                per_sample = F.huber_loss(p, target, delta=1.0, reduction="none")
            elif self.kind == "mse":
                per_sample = (p - target) ** 2
            elif self.kind == "mae":
                per_sample = (p - target).abs()
            else:
                per_sample = (self.over_penalty * F.relu(p - target)
                              + self.under_penalty * F.relu(target - p))
        return per_sample.mean() if reduction == "mean" else per_sample

    def to_dict(self) -> dict:
        return {"kind": self.kind, "quantiles": list(self.quantiles),
                "over_penalty": self.over_penalty, "under_penalty": self.under_penalty}

    @classmethod
    def from_dict(cls, values: dict) -> "RegressionLoss":
        return cls(kind=values["kind"], quantiles=tuple(values.get("quantiles", ())),
                   over_penalty=values.get("over_penalty", 1.0),
                   under_penalty=values.get("under_penalty", 1.0))


def classification_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, optionally with per-class weights (``(n_classes,)``)."""
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=torch.float32)
    per_sample = F.cross_entropy(logits.float(), target.long(), reduction="none", weight=weight)
    if reduction != "mean":
        return per_sample
    if weight is None:
        return per_sample.mean()
    return per_sample.sum() / weight[target.long()].sum()
