"""Conditioning on categorical metadata (country, delivery mode, season, ...).

Each categorical column's value is an index into that column's vocabulary;
index 0 is *unknown* (missing in the metadata, or a value not seen in
training) and has its own learned embedding. Shapes: ``B`` samples, ``S`` ASV
slots, ``C`` categorical columns, ``K = C + 1`` metadata tokens (one per
column plus a learned null token), ``D`` the embedding dimension.

Where each mode acts (see ``options.FUSION_MODES``):

* ``concat`` / ``add``: the sample's categorical vector broadcast to every ASV
  slot before the target encoder (position-agnostic).
* ``cross-attention``: every ASV slot attends to the metadata tokens before
  the target encoder (position-specific).
* ``gmu``: a gated multimodal unit after pooling, before the head.
* ``perceiver``: learned latents attend to ASV slots and metadata tokens,
  replacing the target encoder and pooling.

``FiLM`` (head hidden layer) and ``ConditionalOutputScaling`` (the output)
combine with any mode.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import transformer

from .options import (DEFAULT_FUSION, FUSION_GUIDANCE, GMU_VARIANTS, VECTOR_FUSIONS,
                      check_choice)


class CategoricalEmbedding(nn.Module):
    """Metadata tokens and a pooled categorical vector from category indices.

    A column's token is its value embedding plus a column embedding, so the
    same value index in two columns gives different tokens. A learned null
    token is appended, so attention over metadata tokens always has a choice
    (with a single key, every attention weight would be 1).
    """

    no_weight_decay = ("columns", "null")  # learned tokens (engine.parameter_groups)

    def __init__(self, cardinalities: list[int], dim: int, *, tokens: bool = True,
                 vector: bool = True):
        super().__init__()
        self.values = nn.ModuleList(nn.Embedding(n, dim) for n in cardinalities)
        # Only what the chosen modes use is built: no parameter without a gradient.
        self.has_tokens, self.has_vector = tokens, vector
        if tokens:
            self.columns = nn.Parameter(torch.randn(len(cardinalities), dim) * 0.02)
            self.null = nn.Parameter(torch.randn(1, dim) * 0.02)
        if vector:
            self.pool = nn.Linear(len(cardinalities) * dim, dim)

    def tokens(self, categories: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` indices -> ``(B, K, D)`` tokens, the null token last."""
        per_column = [emb(categories[:, c]) for c, emb in enumerate(self.values)]  # C x (B, D)
        tokens = torch.stack(per_column, dim=1) + self.columns  # (B, C, D)
        null = self.null.expand(categories.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([tokens, null], dim=1)  # (B, K, D)

    def vector(self, categories: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` indices -> ``(B, D)``: all columns' embeddings, projected."""
        per_column = [emb(categories[:, c]) for c, emb in enumerate(self.values)]
        return self.pool(torch.cat(per_column, dim=-1))


class ConcatFusion(nn.Module):
    """``W [x ; c]``: the categorical vector concatenated to every ASV slot."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c[:, None, :].expand(-1, x.shape[1], -1)  # (B, S, D)
        return self.project(torch.cat([x, c], dim=-1))  # (B, S, D)


class AddFusion(nn.Module):
    """``x + W c``: the categorical vector added to every ASV slot."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.project(c)[:, None, :]


class GatedMultimodalUnit(nn.Module):
    """Gated multimodal unit on the pooled representation (Arevalo et al. 2017).

    ``canonical``: ``z * tanh(W_s h) + (1 - z) * tanh(W_c c)`` with
    ``z = sigmoid(W_z [h ; c])``: z near 1 means the prediction rests on the
    sequences, near 0 on the metadata. ``residual``:
    ``h + z * tanh(W_c c)``: z says how much metadata is added to an
    unchanged sequence representation. ``forward`` returns the gate values
    too, for visualisation.
    """

    def __init__(self, dim: int, variant: str = "canonical"):
        super().__init__()
        check_choice("GMU variant", variant, GMU_VARIANTS)
        self.variant = variant
        # The residual form leaves h unchanged: no sequence branch, no parameter without a gradient.
        self.sequence = nn.Linear(dim, dim) if variant == "canonical" else None
        self.metadata = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.sigmoid(self.gate(torch.cat([h, c], dim=-1)))  # (B, D)
        meta = torch.tanh(self.metadata(c))  # (B, D)
        if self.variant == "residual":
            return h + z * meta, z
        return z * torch.tanh(self.sequence(h)) + (1 - z) * meta, z


class CrossAttentionFusion(nn.Module):
    """ASV slots (queries) attend to metadata tokens (keys/values).

    ``LayerNorm(x + MHA(x, m, m))``: each ASV gets its own mix of the
    metadata, so taxa can respond to different conditions. Returns the
    per-head attention weights ``(B, heads, S, K)``; rows of padded ASV slots
    are computed but ignored downstream (every key is valid, so no NaN).
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention heads ({heads}) must divide the embedding "
                             f"dimension ({dim}); choose e.g. "
                             f"{[h for h in (1, 2, 4, 8, 16) if dim % h == 0]}.")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor):
        out, weights = self.attention(x, tokens, tokens, need_weights=True,
                                      average_attn_weights=False)  # (B,S,D), (B,h,S,K)
        return self.norm(x + out), weights


class PerceiverFusion(nn.Module):
    """Learned latents read the ASV slots and metadata tokens, then refine themselves.

    Cross-attention from ``num_latents`` latents to ``[ASV slots ; metadata
    tokens]`` (padded ASV slots masked out), ``num_layers`` self-attention
    layers on the latents, mean over latents -> ``(B, D)``. Cost is linear in
    the number of ASVs. Returns the cross-attention weights
    ``(B, heads, latents, S + K)``.
    """

    no_weight_decay = ("latents",)  # learned tokens (engine.parameter_groups)

    def __init__(self, dim: int, heads: int, num_latents: int, num_layers: int,
                 dropout: float):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                          nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        layers = transformer(dim, heads, num_layers, dropout)  # draws its first layer even
        self.layers = layers if num_layers else None           # for 0 (seeded weights kept)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | None):
        inputs, valid = x, mask
        if tokens is not None:
            inputs = torch.cat([x, tokens], dim=1)  # (B, S + K, D)
            valid = torch.cat([mask, torch.ones(tokens.shape[:2], dtype=torch.bool,
                                                device=mask.device)], dim=1)
        latents = self.latents.expand(x.shape[0], -1, -1)  # (B, L, D)
        out, weights = self.cross(latents, inputs, inputs, key_padding_mask=~valid,
                                  need_weights=True, average_attn_weights=False)
        latents = self.cross_norm(latents + out)
        latents = latents + self.feed_forward(latents)
        if self.layers is not None:
            latents = self.layers(latents)
        return self.norm(latents.mean(dim=1)), weights  # (B, D), (B, h, L, S + K)


class FiLM(nn.Module):
    """``(1 + gamma(c)) * h + beta(c)`` on the head's hidden layer.

    The gamma/beta layer starts at zero, so FiLM starts as the identity; its
    parameters are kept out of weight decay (``no_weight_decay``).
    """

    no_weight_decay = True

    def __init__(self, dim: int):
        super().__init__()
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(c).chunk(2, dim=-1)
        return (1 + gamma) * h + beta


class ConditionalOutputScaling(nn.Module):
    """``y * (1 + sum_c s_c[v_c]) + sum_c b_c[v_c]``: a scale and shift per category value.

    Zero-initialised (identity at the start), one table per column.
    """

    no_weight_decay = True

    def __init__(self, cardinalities: list[int], n_outputs: int):
        super().__init__()
        self.scale = nn.ModuleList(nn.Embedding(n, n_outputs) for n in cardinalities)
        self.shift = nn.ModuleList(nn.Embedding(n, n_outputs) for n in cardinalities)
        for table in (*self.scale, *self.shift):
            nn.init.zeros_(table.weight)

    def forward(self, y: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        scale = sum(t(categories[:, c]) for c, t in enumerate(self.scale))
        shift = sum(t(categories[:, c]) for c, t in enumerate(self.shift))
        return y * (1 + scale) + shift


CONDITIONING = ("categorical_fusion", "film_conditioning", "conditional_output_scaling")


def resolve_conditioning(architecture: dict | None, columns, *, transform: str | None = None,
                         normalize_by=None, log=print) -> dict:
    """The architecture's conditioning settings for these categorical ``columns``: decided
    here, once, for every caller.

    Without columns there is nothing to condition on: fusion 'none', FiLM and output
    scaling off (said when they were asked for). With columns, the fusion mode defaults to
    ``DEFAULT_FUSION``, columns that nothing would use are refused, and redundant
    combinations are pointed out.
    """
    settings = dict(architecture or {})
    fusion = settings.get("categorical_fusion") or DEFAULT_FUSION
    film = bool(settings.get("film_conditioning"))
    scaling = bool(settings.get("conditional_output_scaling"))
    if not columns:
        asked = [x for x in (fusion if fusion not in ("none", DEFAULT_FUSION) else None,
                             "FiLM" if film else None, "output scaling" if scaling else None)
                 if x]
        if asked:
            log("No --p-categorical-columns were given, so categorical conditioning "
                f"({', '.join(asked)}) is a no-op.")
        return {**settings, "categorical_fusion": "none", "film_conditioning": False,
                "conditional_output_scaling": False}
    if fusion == "none" and not film and not scaling:
        raise ValueError(f"--p-categorical-columns {' '.join(columns)} would not be used: "
                         "--p-categorical-fusion is 'none' and neither FiLM nor conditional "
                         f"output scaling is on. {FUSION_GUIDANCE}")
    if film and fusion in VECTOR_FUSIONS:
        log(f"Warning: --p-film-conditioning and --p-categorical-fusion {fusion} both inject "
            "the same categorical vector; FiLM alone (--p-categorical-fusion none) or the "
            "fusion alone is usually enough.")
    shared = sorted(set(normalize_by or ()) & set(columns))
    if scaling and transform == "zscore-category" and shared:
        log("Warning: --p-conditional-output-scaling learns a scale and shift per category, "
            f"but the target is already z-scored within {shared}; use one of the two.")
    return {**settings, "categorical_fusion": fusion, "film_conditioning": film,
            "conditional_output_scaling": scaling}
