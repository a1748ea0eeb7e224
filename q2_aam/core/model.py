"""The AAM model: nucleotide encoder -> sample encoder -> heads.

Shapes use ``U`` distinct ASVs in a batch, ``L`` nucleotides, ``P`` patches
of ``patch_size`` nucleotides, ``B`` samples, ``S`` ASV slots per sample and
``D`` the embedding dimension.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .data import N_ABUNDANCE_FEATURES, log_level
from .layers import transformer
from .fusion import (AddFusion, CategoricalEmbedding, ConcatFusion,
                     ConditionalOutputScaling, CrossAttentionFusion, FiLM, GatedMultimodalUnit,
                     PerceiverFusion)
from .tokenizer import NUCLEOTIDE_CLASSES, PAD, VOCAB_SIZE

from .options import (DEFAULT_GMU_VARIANT, FUSION_MODES, GMU_VARIANTS, MODEL_TASKS,
                      OUTPUT_CONSTRAINTS, TOKEN_FUSIONS, VECTOR_FUSIONS, check_choice)


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
    # The nucleotide encoder's own rate. Its activations are (distinct ASVs x patches x width):
    # drawing a dropout mask over them took a quarter of a CPU pretraining step, and the masks
    # keep attention off its fused kernel; a step took 4.27 s with dropout 0.1, 2.26 s with 0
    # (profile at embedding 128; docs/scale.md).
    nucleotide_dropout: float = 0.0
    task: str = "encoder"
    n_outputs: int = 0
    output_constraint: str = "none"
    output_bounds: list | None = None
    categorical_cardinalities: list = field(default_factory=list)  # per column, incl. unknown
    categorical_fusion: str = "none"
    cross_attn_heads: int = 8
    perceiver_num_latents: int = 16
    perceiver_num_layers: int = 2
    # Saved models keep the variant they were built with (see options.DEFAULT_GMU_VARIANT).
    gmu_variant: str = DEFAULT_GMU_VARIANT
    film_conditioning: bool = False
    conditional_output_scaling: bool = False
    # ASVs with an identity embedding and a linear-readout coefficient of their own (rows
    # 1..n; row 0: every other ASV); the vocabulary itself is saved with the model's target.
    asv_vocabulary_size: int = 0
    linear_readout: bool = False
    # The readout also has a coefficient per ASV on its presence (models saved before it
    # existed have none).
    linear_presence: bool = False
    # Clades in the readout (fitted with a phylogeny): how many, and how many (ASV, clade)
    # memberships; the memberships are buffers of the model (``clade_rows``, ``clade_ids``).
    linear_clades: int = 0
    linear_clade_memberships: int = 0
    # The readout has a coefficient per ASV and value of each categorical column (an ASV x
    # category interaction in closed form; by default with cross-attention).
    linear_conditional: bool = False

    def __post_init__(self):
        _check_field_types(self)
        for name, allowed in (("task", MODEL_TASKS), ("output_constraint", OUTPUT_CONSTRAINTS),
                              ("categorical_fusion", FUSION_MODES),
                              ("gmu_variant", GMU_VARIANTS)):
            check_choice(name, getattr(self, name), allowed)
        if any(n < 2 for n in self.categorical_cardinalities):
            raise ValueError("Each categorical column needs its unknown index and at least "
                             f"one value, got cardinalities {self.categorical_cardinalities}.")
        conditioned = (self.categorical_fusion != "none" or self.film_conditioning
                       or self.conditional_output_scaling)
        if conditioned and self.task == "encoder":
            raise ValueError("Categorical conditioning applies to regressors and classifiers.")
        if self.categorical_fusion == "cross-attention" and \
                self.embedding_dim % self.cross_attn_heads:
            raise ValueError(
                f"cross_attn_heads ({self.cross_attn_heads}) must divide embedding_dim "
                f"({self.embedding_dim}); choose one of "
                f"{[h for h in range(1, 17) if self.embedding_dim % h == 0]}.")
        if self.asv_vocabulary_size < 0:
            raise ValueError(f"asv_vocabulary_size must be >= 0, got {self.asv_vocabulary_size}.")
        if self.perceiver_num_latents < 1 or self.perceiver_num_layers < 0:
            raise ValueError("perceiver_num_latents must be >= 1 and perceiver_num_layers >= 0.")
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
        for name in ("dropout", "nucleotide_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
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
        if "nucleotide_dropout" not in values and "dropout" in values:
            # Saved before the encoder had a rate of its own: it used the model's.
            values = dict(values, nucleotide_dropout=values["dropout"])
        return cls(**values)


#: The largest value of each whole-number setting: a config edited by hand must not make
#: the model allocate the machine (e.g. max_sequence_length 1e308).
SIZE_LIMITS = {"embedding_dim": 65_536, "attention_heads": 1_024, "nucleotide_layers": 256,
               "sample_layers": 256, "target_layers": 256, "patch_size": 4_096,
               "max_sequence_length": 100_000, "n_outputs": 1_000_000,
               "cross_attn_heads": 1_024, "perceiver_num_latents": 65_536,
               "perceiver_num_layers": 256}
#: For the others (vocabulary, clades, memberships).
COUNT_LIMIT = 10 ** 10


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _finite(value) -> bool:
    return _whole(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def _check_field_types(config: "ModelConfig") -> None:
    """Refuse a field of the wrong type, NaN or out of range, naming it (a model's
    config.json can be edited by hand; the checks that follow assume the types)."""
    for spec in fields(config):
        value, kind = getattr(config, spec.name), str(spec.type)
        if kind == "int":
            limit = SIZE_LIMITS.get(spec.name, COUNT_LIMIT)
            ok, want = _whole(value) and 0 <= value <= limit, \
                f"a whole number from 0 to {limit:,}"
        elif kind == "float":
            ok, want = _finite(value), "a finite number"
        elif kind == "bool":
            ok, want = isinstance(value, bool), "true or false"
        elif kind == "str":
            ok, want = isinstance(value, str), "a string"
        elif kind == "list":
            ok, want = (isinstance(value, list) and all(_whole(v) and 0 <= v <= COUNT_LIMIT
                                                        for v in value),
                        "a list of whole numbers")
        else:  # output_bounds: list | None
            ok, want = (value is None or isinstance(value, list)
                        and all(_finite(v) for v in value)), "null or a list of finite numbers"
        if not ok:
            raise ValueError(f"Model setting {spec.name!r} must be {want}, got {value!r}; "
                             "the model's config.json was changed or damaged. Use the model "
                             "as it was saved, or train it again.")


#: Settings of the pretrained encoder that a model started from it must share.
ENCODER_SETTINGS = ("embedding_dim", "attention_heads", "nucleotide_layers", "sample_layers",
                    "patch_size", "max_sequence_length")
#: The pretrained weights a model started from an encoder takes.
ENCODER_PREFIXES = ("nucleotide_encoder.", "sample_encoder.", "unifrac_head.")


def build_config(overrides: dict | None, pretrained: dict | None, *, task: str,
                 n_outputs: int, max_length: int, **head) -> ModelConfig:
    """A new model's config: the pretrained encoder's settings (``pretrained``: its model
    config) or defaults, then ``overrides`` (``None`` values ignored) and the ``head``.

    ``max_length``: the longest sequence the model must read.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if pretrained is not None:
        base = {k: v for k, v in pretrained.items() if k in ENCODER_SETTINGS}
        base["dropout"] = pretrained["dropout"]
        base["nucleotide_dropout"] = ModelConfig.from_dict(pretrained).nucleotide_dropout
        conflicts = {k: (v, base[k]) for k, v in overrides.items()
                     if k in ENCODER_SETTINGS and base[k] != v}
        if conflicts:
            detail = ", ".join(f"{k}={v!r} (pretrained: {b!r})" for k, (v, b) in conflicts.items())
            raise ValueError(f"The pretrained encoder's architecture differs from the given "
                             f"{detail}. Leave these parameters unset to use the encoder's.")
        if max_length > base["max_sequence_length"]:
            raise ValueError(
                f"The longest sequence is {max_length} nt, but the pretrained encoder reads at "
                f"most {base['max_sequence_length']} nt. Trim the sequences to the amplicon "
                "used in pretraining.")
        base.update({k: v for k, v in overrides.items() if k not in ENCODER_SETTINGS})
    else:
        base = dict(overrides)
        patch = base.get("patch_size", ModelConfig.patch_size)
        if patch > max_length:
            raise ValueError(
                f"The patch size ({patch} nt, --p-patch-size) is longer than the longest "
                f"sequence ({max_length} nt), so every sequence would be one padded patch. "
                f"Use a patch size of at most {max_length}.")
        base["max_sequence_length"] = int(math.ceil(max_length / patch) * patch)
    base.update(task=task, n_outputs=n_outputs, **head)
    return ModelConfig(**base)


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
                                   config.nucleotide_dropout)
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

    @torch.no_grad()
    def inverse(self, y: np.ndarray, margin: float = 1e-3) -> np.ndarray:
        """The raw output that this constraint (as initialised) maps to ``y``, with ``y``
        first moved ``margin`` (a fraction of the range, or an absolute floor) inside the
        allowed range, so that boundary targets get finite raw values. Used to fit the
        linear readout on the scale it is added at."""
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "bounded":
            low, high = self.bounds
            p = np.clip((y - low) / (high - low), margin, 1 - margin)
            return np.log(p / (1 - p))
        if self.kind.startswith("nonnegative"):
            if self.kind == "nonnegative-learnable":
                y = (y - float(F.softplus(self.raw_offset))) / float(self.log_scale.exp())
            y = np.maximum(y, margin)
            return y + np.log(-np.expm1(-y))  # softplus^-1(y) = log(exp(y) - 1)
        return y


class PredictionHead(nn.Module):
    """``Linear -> GELU -> [FiLM] -> Dropout -> Linear``, the output of the target branch."""

    def __init__(self, dim: int, n_outputs: int, dropout: float, film: bool):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.film = FiLM(dim) if film else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, n_outputs)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = F.gelu(self.hidden(x))
        if self.film is not None and c is not None:
            h = self.film(h, c)
        return self.out(self.dropout(h))


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
            self._build_target_branch(config)

    def _build_target_branch(self, config: ModelConfig) -> None:
        d, cards = config.embedding_dim, config.categorical_cardinalities
        # Conditioning modules exist only for columns the model has (the settings are
        # decided by fusion.resolve_conditioning; a model without columns has none).
        fusion = config.categorical_fusion if cards else "none"
        # Pooling: the Perceiver's latents, or a transformer and attention pooling. Every
        # model has all three attributes (None where unused).
        self.perceiver = self.target_encoder = self.target_pool = None
        if config.categorical_fusion == "perceiver":
            self.perceiver = PerceiverFusion(d, config.attention_heads,
                                             config.perceiver_num_latents,
                                             config.perceiver_num_layers, config.dropout)
        else:
            self.target_encoder = (transformer(d, config.attention_heads, config.target_layers,
                                               config.dropout)
                                   if config.target_layers else None)
            self.target_pool = AttentionPooling(d)
        # Per vocabulary ASV and output, a coefficient on its log abundance and one on its
        # presence (fitted in closed form before training, then fixed); row 0 stays 0.
        self.linear = (nn.Embedding(config.asv_vocabulary_size + 1, config.n_outputs)
                       if config.linear_readout and config.asv_vocabulary_size else None)
        self.linear_presence = (nn.Embedding(config.asv_vocabulary_size + 1, config.n_outputs)
                                if self.linear is not None and config.linear_presence else None)
        self.linear_bias = None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            self.linear_bias = nn.Parameter(torch.zeros(config.n_outputs))
        if self.linear_presence is not None:
            nn.init.zeros_(self.linear_presence.weight)
        self.linear_clade = self.linear_conditional = None
        if self.linear is not None and config.linear_clades:
            self.linear_clade = nn.Parameter(torch.zeros(config.linear_clades, config.n_outputs))
            self.register_buffer("clade_rows", torch.zeros(config.linear_clade_memberships,
                                                           dtype=torch.long))
            self.register_buffer("clade_ids", torch.zeros(config.linear_clade_memberships,
                                                          dtype=torch.long))
        if self.linear is not None and config.linear_conditional and cards:
            shape = (config.asv_vocabulary_size + 1, sum(cards) * config.n_outputs)
            # Built from zeros (no random draw), so the seed gives the rest of the model the
            # same weights as without it.
            self.linear_conditional = nn.Embedding(*shape, _weight=torch.zeros(shape))
        # One learned vector per ASV seen in training (row 0: every other ASV), added to the
        # encoder's slot outputs: sequence embeddings of near-identical 16S sequences are
        # near-identical, so without it the branch cannot single out one ASV.
        self.asv_identity = (nn.Embedding(config.asv_vocabulary_size + 1, d)
                             if config.asv_vocabulary_size else None)
        if self.asv_identity is not None:
            nn.init.normal_(self.asv_identity.weight, std=0.02)
        film = config.film_conditioning and bool(cards)
        needs_tokens = fusion in TOKEN_FUSIONS
        needs_vector = fusion in VECTOR_FUSIONS or film
        self.categories = (CategoricalEmbedding(cards, d, tokens=needs_tokens,
                                                vector=needs_vector)
                           if needs_tokens or needs_vector else None)
        self.fusion = {"concat": ConcatFusion, "add": AddFusion}.get(fusion, lambda d: None)(d)
        self.cross_attention = (CrossAttentionFusion(d, config.cross_attn_heads, config.dropout)
                                if fusion == "cross-attention" else None)
        self.gmu = GatedMultimodalUnit(d, config.gmu_variant) if fusion == "gmu" else None
        self.target_head = PredictionHead(d, config.n_outputs, config.dropout, film=film)
        if config.linear_readout:  # the network starts by adding nothing to the linear readout
            nn.init.zeros_(self.target_head.out.weight)
            nn.init.zeros_(self.target_head.out.bias)
        self.output_scaling = (ConditionalOutputScaling(cards, config.n_outputs)
                               if config.conditional_output_scaling and cards else None)
        self.output_constraint = OutputConstraint(config.output_constraint,
                                                  config.output_bounds)

    def sharding_units(self) -> list[nn.Module]:
        """The parts FSDP shards on their own (``parallel.shard``), so that each runs with
        only its own parameters gathered."""
        parts = [self.nucleotide_encoder, self.sample_encoder]
        if self.config.task != "encoder":
            parts += [self.target_encoder, self.perceiver]
        return [p for p in parts if p is not None]

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
            out.update(self._target_branch(tokens_out, batch))
        return out

    def _categorical_inputs(self, categories: torch.Tensor | None):
        """The pooled categorical vector ``(B, D)`` and metadata tokens ``(B, K, D)`` the
        model's modes use (``None`` where unused)."""
        c_vec = c_tokens = None
        n_columns = len(self.config.categorical_cardinalities)
        if (self.categories is not None or self.output_scaling is not None) and (
                categories is None or categories.shape[1] != n_columns):
            raise ValueError(f"This model is conditioned on {n_columns} categorical "
                             "column(s); the batch has none or another number.")
        if self.categories is not None:
            if self.categories.has_vector:
                c_vec = self.categories.vector(categories)  # (B, D)
            if self.categories.has_tokens:
                c_tokens = self.categories.tokens(categories)  # (B, K, D)
        return c_vec, c_tokens

    def _slots(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """The target branch's view of each slot: encoder output plus the ASV's identity."""
        if self.asv_identity is None:
            return x
        if "asv_vocab" not in batch:
            raise ValueError("This model has ASV identity embeddings; the batch needs "
                             "'asv_vocab' (BatchCollator's vocabulary argument).")
        return x + self.asv_identity(batch["asv_vocab"])  # (B, S, D)

    def _target_branch(self, x: torch.Tensor, batch: dict) -> dict:
        """Fusion, target encoder, pooling and head on the sample encoder's ``(B, S, D)``."""
        out = {}
        mask, categories = batch["asv_mask"], batch.get("categories")
        c_vec, c_tokens = self._categorical_inputs(categories)
        x = self._slots(x, batch)
        if self.fusion is not None:
            x = self.fusion(x, c_vec)
        if self.cross_attention is not None:
            x, out["cross_attention"] = self.cross_attention(x, c_tokens)  # (B, h, S, K)
        out.update(self._readout(x, mask, c_vec, c_tokens, categories,
                                 self._linear_term(batch)))
        return out

    def readout_parameters(self) -> list:
        """The linear readout's parameters (fitted in closed form, then kept fixed)."""
        parts = [self.linear, self.linear_presence, self.linear_conditional]
        return ([p for part in parts if part is not None for p in part.parameters()]
                + [p for p in (self.linear_clade, self.linear_bias) if p is not None])

    def _linear_term(self, batch: dict) -> torch.Tensor | None:
        """``(B, n_outputs)``: the linear readout on the sample's vocabulary rows (see
        ``linear``): each row's coefficient x its log-abundance level, plus its presence
        coefficient, plus each clade's coefficient x its level, plus each row's coefficient
        for the sample's category values x its level.

        Abundances are summed per row first: at prediction two slots may read one row (a
        new ASV matched to a vocabulary neighbour, ``vocabulary``), and the readout was
        fitted on each row's total, as closed-reference picking would count it."""
        if self.linear is None:
            return None
        dtype = self.linear.weight.dtype
        rel = batch["abundance"][..., 1].to(dtype) * batch["asv_mask"]  # (B, S)
        per_row = rel.new_zeros(len(rel), self.config.asv_vocabulary_size + 1)
        per_row.scatter_add_(1, batch["asv_vocab"], rel)  # (B, V + 1); row 0: no row
        level = log_level(per_row[:, 1:])  # (B, V)
        out = level @ self.linear.weight[1:] + self.linear_bias
        if self.linear_presence is not None:
            out = out + (per_row[:, 1:] > 0).to(dtype) @ self.linear_presence.weight[1:]
        if self.linear_clade is not None:
            clade = rel.new_zeros(len(rel), len(self.linear_clade)).index_add_(
                1, self.clade_ids, per_row[:, self.clade_rows])
            out = out + log_level(clade) @ self.linear_clade
        if self.linear_conditional is not None:
            cards, n_outputs = self.config.categorical_cardinalities, self.config.n_outputs
            per_value = (level @ self.linear_conditional.weight[1:]).unflatten(
                -1, (sum(cards), n_outputs))  # (B, values, O)
            offsets = torch.as_tensor(np.cumsum([0] + cards[:-1]),
                                      device=per_value.device)
            index = (batch["categories"] + offsets)[..., None].expand(-1, -1, n_outputs)
            out = out + per_value.gather(1, index).sum(1)  # the sample's values, (B, O)
        return out

    def _conditional_terms(self, level: torch.Tensor, vocab: torch.Tensor,
                           categories: torch.Tensor) -> torch.Tensor:
        """``(B, S, n_outputs)``: each slot's conditional readout term for the categories
        ``(B, C)`` (indices; 0, unknown, has no coefficient)."""
        cards, n_outputs = self.config.categorical_cardinalities, self.config.n_outputs
        weights = self.linear_conditional(vocab).unflatten(-1, (sum(cards), n_outputs))
        offsets = torch.as_tensor(np.cumsum([0] + cards[:-1]), device=categories.device)
        index = (categories + offsets)[:, None, :, None].expand(
            -1, weights.shape[1], -1, n_outputs)  # (B, S, C, O)
        return level[..., None] * weights.gather(2, index).sum(2)

    def _readout(self, x: torch.Tensor, mask: torch.Tensor, c_vec, c_tokens, categories,
                 offset: torch.Tensor | None = None) -> dict:
        """Everything after the per-ASV fusion: ``(B, S, D)`` slots -> prediction
        (``offset`` ``(B, n_outputs)``: the linear readout, added to the head's output)."""
        out = {}
        if self.perceiver is not None:
            pooled, out["perceiver_attention"] = self.perceiver(x, mask, c_tokens)
        else:
            if self.target_encoder is not None:
                x = self.target_encoder(x, src_key_padding_mask=~mask)
            pooled = self.target_pool(x, mask)  # (B, D)
        if self.gmu is not None:
            pooled, out["gmu_gate"] = self.gmu(pooled, c_vec)  # (B, D), (B, D)
        y = self.target_head(pooled, c_vec)  # (B, n_outputs)
        if offset is not None:
            y = y + offset
        if self.output_scaling is not None:
            y = self.output_scaling(y, categories)
        out["prediction"] = self.output_constraint(y)
        return out

    @torch.no_grad()
    def conditioning_response(self, batch: dict, asv_embeddings: torch.Tensor,
                              max_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions with one ASV slot alone conditioned on another value of a column.

        For every slot ``s``, column ``c`` and known value ``v`` (index 1 and up;
        0 is *unknown*), the cross-attention output of slot ``s`` is taken from a
        pass in which column ``c`` is ``v``; every other slot, and everything
        after the fusion (FiLM, output scaling), keeps the sample's own metadata.
        So the change from the plain prediction is what conditioning *that* ASV
        on ``v`` does to the output: an attribution, unlike the attention
        weights, which also move for ASVs the prediction does not read.

        Returns the plain outputs ``(B, n_outputs)`` and the patched ones
        ``(B, S, C, V, n_outputs)`` (``V`` the largest cardinality), NaN for
        padded slots, for ``v`` equal to the sample's own value and past a
        column's cardinality.
        """
        if self.cross_attention is None:
            raise ValueError("conditioning_response needs a model trained with "
                             "categorical_fusion='cross-attention'.")
        mask, categories = batch["asv_mask"], batch.get("categories")
        c_vec, c_tokens = self._categorical_inputs(categories)
        x, _ = self.sample_encoder(asv_embeddings, batch["asv_index"], mask, batch["abundance"])
        x = self._slots(x, batch)
        fused, _ = self.cross_attention(x, c_tokens)
        offset = self._linear_term(batch)
        plain = self._readout(fused, mask, c_vec, c_tokens, categories, offset)["prediction"]
        if self.linear_conditional is not None:  # the readout's share of the response
            level = batch["abundance"][..., 2].to(offset.dtype) * mask
            own = self._conditional_terms(level, batch["asv_vocab"], categories)  # (B, S, O)
        (n, width, _), cards = fused.shape, self.config.categorical_cardinalities
        patched = plain.new_full((n, width, len(cards), max(cards), plain.shape[1]), float("nan"))
        pairs = mask.nonzero()  # (P, 2): the (sample, slot) pairs that hold an ASV
        for c, card in enumerate(cards):
            for v in range(1, card):
                other = categories.clone()
                other[:, c] = v
                alt, _ = self.cross_attention(x, self.categories.tokens(other))
                todo = pairs[categories[pairs[:, 0], c] != v]  # the sample's own value: NaN
                for start in range(0, len(todo), max_rows):
                    b, j = todo[start:start + max_rows].unbind(1)
                    # Held slots come first, so the chunk's samples need only their longest
                    # length, not the batch's: no work on padding.
                    w = int(mask[b].sum(1).max())
                    rows = fused[b, :w]  # (k, w, D): the sample's slots, slot j from alt
                    rows[torch.arange(len(b)), j] = alt[b, j]
                    shifted = None if offset is None else offset[b]
                    if self.linear_conditional is not None:  # slot j's term under value v
                        swapped = self._conditional_terms(
                            level[b, j][:, None], batch["asv_vocab"][b, j][:, None],
                            other[b])[:, 0]
                        shifted = shifted - own[b, j] + swapped
                    patched[b, j, c, v] = self._readout(
                        rows, mask[b, :w], None if c_vec is None else c_vec[b], None,
                        categories[b], shifted)["prediction"]
        patched[~mask] = float("nan")
        return plain, patched
