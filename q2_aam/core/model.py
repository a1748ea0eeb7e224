"""The AAM model: nucleotide encoder -> sample encoder -> heads.

Shapes use ``U`` distinct ASVs in a batch, ``L`` nucleotides, ``P`` patches
of ``patch_size`` nucleotides, ``B`` samples, ``S`` ASV slots per sample and
``D`` the embedding dimension.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
import torch.nn.functional as F

from .data import N_ABUNDANCE_FEATURES
from .tokenizer import NUCLEOTIDE_CLASSES, PAD, VOCAB_SIZE

TASKS = ("encoder", "regression", "classification")
OUTPUT_CONSTRAINTS = ("none", "bounded", "nonnegative", "nonnegative-learnable")


@dataclass
class ModelConfig:
    """Everything that defines the architecture; saved into every model.

    The feed-forward width of every transformer layer is ``4 * embedding_dim``.
    """

    embedding_dim: int = 64
    attention_heads: int = 4
    nucleotide_layers: int = 2
    sample_layers: int = 2
    target_layers: int = 1
    patch_size: int = 4
    max_sequence_length: int = 256
    dropout: float = 0.1
    task: str = "encoder"
    n_outputs: int = 0
    output_constraint: str = "none"
    output_bounds: list | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.output_constraint not in OUTPUT_CONSTRAINTS:
            raise ValueError(f"output_constraint must be one of {OUTPUT_CONSTRAINTS}, got "
                             f"{self.output_constraint!r}.")
        if self.output_constraint != "none" and self.task != "regression":
            raise ValueError("An output constraint applies to regression only.")
        if self.output_constraint == "bounded":
            if not (self.output_bounds and len(self.output_bounds) == 2
                    and self.output_bounds[0] < self.output_bounds[1]):
                raise ValueError(f"'bounded' needs output_bounds [low, high] with low < high, "
                                 f"got {self.output_bounds!r}.")
            self.output_bounds = [float(b) for b in self.output_bounds]
        if self.embedding_dim % self.attention_heads:
            raise ValueError(
                f"embedding_dim ({self.embedding_dim}) must be divisible by attention_heads "
                f"({self.attention_heads}); choose e.g. {self.attention_heads * 16}.")
        for name in ("embedding_dim", "attention_heads", "nucleotide_layers", "sample_layers",
                     "patch_size", "max_sequence_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.task != "encoder" and self.n_outputs < 1:
            raise ValueError(f"A {self.task} model needs n_outputs >= 1, got {self.n_outputs}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown model config keys {sorted(unknown)}; the model was "
                             "written by a newer q2-aam.")
        return cls(**values)


def masked_fill_value(dtype: torch.dtype) -> float:
    """Most negative finite value of ``dtype``: safe for masking under fp16/bf16."""
    return torch.finfo(dtype).min


class AttentionPooling(nn.Module):
    """Pool ``(N, T, D)`` to ``(N, D)`` with a learned score per position.

    Padding positions (``mask`` False) get zero weight; adding padding never
    changes the result.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1)  # (N, T)
        scores = scores.masked_fill(~mask, masked_fill_value(scores.dtype))
        weights = torch.softmax(scores, dim=-1) * mask  # exact zeros on padding
        return self.norm(torch.einsum("nt,ntd->nd", weights, x))


def transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class NucleotideEncoder(nn.Module):
    """One embedding per ASV from its nucleotides.

    Nucleotides are embedded, grouped into patches of ``patch_size`` (a
    strided linear map, which shortens the sequence the transformer attends
    over by that factor), given learned positional embeddings (positions in
    an amplicon are meaningful), passed through a transformer and pooled.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, p = config.embedding_dim, config.patch_size
        self.patch_size = p
        self.max_patches = math.ceil(config.max_sequence_length / p)
        self.embed = nn.Embedding(VOCAB_SIZE, d, padding_idx=PAD)
        self.patch = nn.Linear(p * d, d)
        self.position = nn.Embedding(self.max_patches, d)
        self.encoder = transformer(d, config.attention_heads, config.nucleotide_layers,
                                   config.dropout)
        self.norm = nn.LayerNorm(d)
        self.pool = AttentionPooling(d)
        self.mlm_head = nn.Linear(d, p * NUCLEOTIDE_CLASSES)

    def forward(self, tokens: torch.Tensor, with_mlm: bool = False):
        """Encode ``tokens`` ``(U, L)``; return ``(U, D)`` and, if asked, MLM logits ``(U, L, 5)``."""
        n, length = tokens.shape
        p = self.patch_size
        n_patches = math.ceil(length / p)
        if n_patches > self.max_patches:
            raise ValueError(f"Sequences of {length} nt exceed the model's maximum of "
                             f"{self.max_patches * p} nt.")
        tokens = F.pad(tokens, (0, n_patches * p - length), value=PAD)
        patch_mask = (tokens.view(n, n_patches, p) != PAD).any(-1)  # (U, P)
        x = self.embed(tokens).view(n, n_patches, -1)  # (U, P, p*D)
        x = self.patch(x) + self.position.weight[:n_patches]  # (U, P, D)
        x = self.norm(self.encoder(x, src_key_padding_mask=~patch_mask))
        embedding = self.pool(x, patch_mask)  # (U, D)
        if not with_mlm:
            return embedding, None
        logits = self.mlm_head(x).view(n, n_patches * p, NUCLEOTIDE_CLASSES)[:, :length]
        return embedding, logits  # (U, D), (U, L, 5)


class SampleEncoder(nn.Module):
    """Reads a sample as a bag of ASV embeddings with abundances.

    No positional embedding: slot order carries no meaning; abundance is an
    explicit input added to each ASV's embedding.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.embedding_dim
        self.abundance = nn.Sequential(nn.Linear(N_ABUNDANCE_FEATURES, d), nn.GELU(),
                                       nn.Linear(d, d))
        self.input_norm = nn.LayerNorm(d)
        self.encoder = transformer(d, config.attention_heads, config.sample_layers,
                                   config.dropout)
        self.norm = nn.LayerNorm(d)
        self.pool = AttentionPooling(d)

    def forward(self, asv_embeddings, asv_index, asv_mask, abundance):
        """Return per-slot outputs ``(B, S, D)`` and the pooled sample embedding ``(B, D)``."""
        x = asv_embeddings[asv_index]  # (B, S, D)
        x = self.input_norm(x + self.abundance(abundance))
        x = self.norm(self.encoder(x, src_key_padding_mask=~asv_mask))
        return x, self.pool(x, asv_mask)


class OutputConstraint(nn.Module):
    """Keeps a regression output in range (on the transformed target scale).

    ``none``: as is. ``bounded``: ``low + (high - low) * sigmoid(x)``, with
    the range of the transformed training targets. ``nonnegative``:
    ``softplus(x)``. ``nonnegative-learnable``: ``s * softplus(x) + b`` with a
    learnable scale ``s > 0`` and offset ``b >= 0`` (both start near 1 and 0).
    """

    def __init__(self, kind: str, bounds: list | None = None):
        super().__init__()
        self.kind = kind
        self.bounds = bounds
        if kind == "nonnegative-learnable":
            self.log_scale = nn.Parameter(torch.zeros(1))
            self.raw_offset = nn.Parameter(torch.full((1,), -4.0))  # softplus(-4) ~ 0.018

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "bounded":
            low, high = self.bounds
            return low + (high - low) * torch.sigmoid(x)
        if self.kind == "nonnegative":
            return F.softplus(x)
        if self.kind == "nonnegative-learnable":
            return self.log_scale.exp() * F.softplus(x) + F.softplus(self.raw_offset)
        return x


class AAMModel(nn.Module):
    """Nucleotide encoder, sample encoder, UniFrac head and (for train) a target branch.

    The target branch is a further transformer over the sample encoder's
    per-ASV outputs, attention pooling and an MLP head.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.nucleotide_encoder = NucleotideEncoder(config)
        self.sample_encoder = SampleEncoder(config)
        self.unifrac_head = nn.Linear(d, d)
        if config.task != "encoder":
            self.target_encoder = (transformer(d, config.attention_heads, config.target_layers,
                                               config.dropout)
                                   if config.target_layers else None)
            self.target_pool = AttentionPooling(d)
            self.target_head = nn.Sequential(nn.Linear(d, d), nn.GELU(),
                                             nn.Dropout(config.dropout),
                                             nn.Linear(d, config.n_outputs))
            self.output_constraint = OutputConstraint(config.output_constraint,
                                                      config.output_bounds)

    def encode_asvs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(U, D)`` embeddings of ASVs given as tokens ``(U, L)``."""
        return self.nucleotide_encoder(tokens)[0]

    def forward(self, batch: dict, *, asv_embeddings: torch.Tensor | None = None,
                mlm_tokens: torch.Tensor | None = None,
                encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Run the model on a collated batch.

        Args:
            batch: from :class:`~q2_aam.core.data.BatchCollator`.
            asv_embeddings: precomputed ``(U, D)`` embeddings of the batch's
                unique ASVs (frozen encoder / prediction); skips the
                nucleotide encoder.
            mlm_tokens: ``(U, L)`` tokens with some nucleotides masked; when
                given, the encoder reads these and returns ``mlm_logits``.
            encoded: precomputed sample-encoder outputs ``((B, S, D), (B, D))``
                of a frozen encoder; skips both encoders.

        Returns:
            dict with ``sample_embedding`` ``(B, D)``, ``unifrac_embedding``
            ``(B, D)``, ``prediction`` ``(B, n_outputs)`` (not for encoders) and
            ``mlm_logits`` ``(U, L, 5)`` when ``mlm_tokens`` was given.
        """
        out = {}
        mask = batch["asv_mask"]
        if encoded is not None:
            tokens_out, pooled = encoded
        else:
            if asv_embeddings is None:
                tokens = batch["asv_tokens"] if mlm_tokens is None else mlm_tokens
                asv_embeddings, mlm_logits = self.nucleotide_encoder(
                    tokens, with_mlm=mlm_tokens is not None)
                if mlm_logits is not None:
                    out["mlm_logits"] = mlm_logits
            tokens_out, pooled = self.sample_encoder(asv_embeddings, batch["asv_index"], mask,
                                                     batch["abundance"])
        out["sample_embedding"] = pooled
        out["unifrac_embedding"] = self.unifrac_head(pooled)
        if self.config.task != "encoder":
            x = tokens_out
            if self.target_encoder is not None:
                x = self.target_encoder(x, src_key_padding_mask=~mask)
            out["prediction"] = self.output_constraint(
                self.target_head(self.target_pool(x, mask)))  # (B, n_outputs)
        return out
