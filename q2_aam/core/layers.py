"""Transformer layers of every encoder: batch first, attention through
``scaled_dot_product_attention``.

Replaces ``nn.TransformerEncoder`` (same parameter names, initialisation and arithmetic, so
models saved with it load unchanged): torch's layer runs attention sequence-first and
transposes and copies the batch around it. Measured on a pretraining step of issue 13's
size (benchmarks/results/speed.md), this layer took 2.26-2.42 s where torch's took
2.67-2.83 s, and predicted 206-242 samples/s where torch's fast path gave 182-191.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``, batch first.

    Parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), their initialisation
    and its order are ``nn.MultiheadAttention``'s, so models saved with torch's layers load
    unchanged and a seed draws the same weights. Unlike it, the batch never leaves the
    batch-first layout (no transposes and copies to sequence-first and back).
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(N, T, D)``; ``padding`` ``(N, T)`` True where a key is padding."""
        n, t, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias) \
            .view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if padding is None else ~padding[:, None, None, :]  # True: attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (attention, then a GELU feed-forward of width ``4 * dim``),
    with ``nn.TransformerEncoderLayer``'s parameter names and initialisation."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        x = x + F.dropout(self.self_attn(self.norm1(x), padding), p, self.training)
        hidden = F.dropout(F.gelu(self.linear1(self.norm2(x))), p, self.training)
        return x + F.dropout(self.linear2(hidden), p, self.training)


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer`; like ``nn.TransformerEncoder``, every layer starts
    as a copy of the first.

    With ``checkpointing`` set (``TrainConfig.activation_checkpointing``), a layer keeps
    only its input for the backward pass and recomputes the rest there (the same dropout
    masks: torch restores the random state), which trades a second forward pass for the
    memory of its activations.
    """

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        first = EncoderLayer(dim, heads, dropout)
        self.layers = nn.ModuleList([copy.deepcopy(first) for _ in range(layers)])
        self.checkpointing = False

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None):
        recompute = self.checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, src_key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, src_key_padding_mask)
        return x


def set_checkpointing(module: nn.Module, on: bool) -> None:
    """Turn activation checkpointing of every :class:`Encoder` in ``module`` on or off."""
    for child in module.modules():
        if isinstance(child, Encoder):
            child.checkpointing = on


def transformer(dim: int, heads: int, layers: int, dropout: float) -> Encoder:
    return Encoder(dim, heads, layers, dropout)
