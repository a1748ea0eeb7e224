"""Losses: pairwise UniFrac, masked nucleotides, and the target."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


REGRESSION_LOSSES = ("huber", "mse", "mae")


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str,
                    reduction: str = "mean") -> torch.Tensor:
    """Loss of ``prediction`` ``(B, 1)`` against ``target`` ``(B,)`` (transformed scale)."""
    prediction = prediction.squeeze(-1).float()
    target = target.float()
    if kind == "huber":
        return F.huber_loss(prediction, target, delta=1.0, reduction=reduction)
    if kind == "mse":
        return F.mse_loss(prediction, target, reduction=reduction)
    if kind == "mae":
        return F.l1_loss(prediction, target, reduction=reduction)
    raise ValueError(f"loss must be one of {REGRESSION_LOSSES}, got {kind!r}.")


def classification_loss(logits: torch.Tensor, target: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long(), reduction=reduction)
