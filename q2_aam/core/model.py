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

from .data import N_ABUNDANCE_FEATURES
from .layers import transformer
from .readout.module import LinearReadout, ReadoutConfig
from .fusion import (AddFusion, CategoricalEmbedding, ConcatFusion,
                     ConditionalOutputScaling, CrossAttentionFusion, FiLM, GatedMultimodalUnit,
                     PerceiverFusion)
from .tokenizer import NUCLEOTIDE_CLASSES, PAD, VOCAB_SIZE

from .options import (ARCHITECTURE, DEFAULT_GMU_VARIANT, DEFAULT_OUTPUT_CONSTRAINT, FUSION_MODES,
                      FUSION_SIZES, GMU_VARIANTS, MODEL_TASKS, OUTPUT_CONSTRAINTS,
                      TOKEN_FUSIONS, VECTOR_FUSIONS, check_choice)


@dataclass
class ModelConfig:
    """Everything that defines the architecture; saved into every model.

    The feed-forward width of every transformer layer is ``4 * embedding_dim``.
    """

    embedding_dim: int = ARCHITECTURE["embedding_dim"]
    attention_heads: int = ARCHITECTURE["attention_heads"]
    nucleotide_layers: int = ARCHITECTURE["nucleotide_layers"]
    sample_layers: int = ARCHITECTURE["sample_layers"]
    target_layers: int = ARCHITECTURE["target_layers"]
    patch_size: int = ARCHITECTURE["patch_size"]
    max_sequence_length: int = 256  # build_config sets it to the longest sequence's patches
    dropout: float = ARCHITECTURE["dropout"]
    # The nucleotide encoder's own rate (why 0: options.ARCHITECTURE).
    nucleotide_dropout: float = ARCHITECTURE["nucleotide_dropout"]
    task: str = "encoder"
    n_outputs: int = 0
    output_constraint: str = DEFAULT_OUTPUT_CONSTRAINT
    output_bounds: list | None = None
    categorical_cardinalities: list = field(default_factory=list)  # per column, incl. unknown
    categorical_fusion: str = "none"
    cross_attn_heads: int = FUSION_SIZES["cross_attn_heads"]
    perceiver_num_latents: int = FUSION_SIZES["perceiver_num_latents"]
    perceiver_num_layers: int = FUSION_SIZES["perceiver_num_layers"]
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


@dataclass
class BranchContext:
    """What the target branch's steps read besides the slots (:meth:`AAMModel.context`): the
    slots' ``mask`` ``(B, S)``, the ``categories`` ``(B, C)`` (indices), the slots'
    vocabulary rows ``vocab`` ``(B, S)``, the categories' pooled ``vector`` ``(B, D)`` and
    metadata ``tokens`` ``(B, K, D)``, and the linear readout's term ``offset``
    ``(B, n_outputs)``; ``None`` where the model has no use for one."""

    mask: torch.Tensor
    categories: torch.Tensor | None = None
    vocab: torch.Tensor | None = None
    vector: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    def rows(self, index: torch.Tensor, width: int, offset: torch.Tensor | None):
        """The context of the samples ``index`` (repeats allowed) on their first ``width``
        slots, with another readout term ``offset`` and no metadata tokens (the steps after
        the slots' do not read them)."""
        pick = (lambda t: None if t is None else t[index])
        return BranchContext(self.mask[index, :width], pick(self.categories),
                             None if self.vocab is None else self.vocab[index, :width],
                             pick(self.vector), None, offset)


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
        # The linear readout (fitted in closed form before training, then fixed): built here,
        # in the place it always had, so that a seed draws the same weights after it.
        readout = ReadoutConfig.of(config)
        self.readout = LinearReadout(readout) if readout is not None else None
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
        # The steps of the target branch this model has, in order (decided once, here, so
        # that the forward path runs them without asking which parts exist): on each ASV
        # slot, pooling, on the pooled vector, and on the head's output.
        self._slot_steps = [step for step, held in (
            (self._add_identity, self.asv_identity is not None),
            (self._fuse_vector, self.fusion is not None),
            (self._cross_attend, self.cross_attention is not None)) if held]
        self._pool = (self._perceive if self.perceiver is not None else
                      self._attention_pool if self.target_encoder is None else
                      self._encode_and_pool)
        self._pooled_steps = [self._gate] if self.gmu is not None else []
        self._output_steps = [step for step, held in (
            (self._add_readout, self.readout is not None),
            (self._scale, self.output_scaling is not None)) if held]

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

    def context(self, batch: dict) -> "BranchContext":
        """What the target branch's steps read besides the slots (``BranchContext``): the
        categories' pooled vector and metadata tokens the model's modes use, and the
        linear readout's term."""
        categories = batch.get("categories")
        n_columns = len(self.config.categorical_cardinalities)
        if (self.categories is not None or self.output_scaling is not None) and (
                categories is None or categories.shape[1] != n_columns):
            raise ValueError(f"This model is conditioned on {n_columns} categorical "
                             "column(s); the batch has none or another number.")
        if (self.asv_identity is not None or self.readout is not None) and \
                "asv_vocab" not in batch:
            raise ValueError("This model has ASV identity embeddings; the batch needs "
                             "'asv_vocab' (BatchCollator's vocabulary argument).")
        context = BranchContext(batch["asv_mask"], categories, batch.get("asv_vocab"))
        if self.categories is not None:
            if self.categories.has_vector:
                context.vector = self.categories.vector(categories)  # (B, D)
            if self.categories.has_tokens:
                context.tokens = self.categories.tokens(categories)  # (B, K, D)
        if self.readout is not None:
            context.offset = self.readout(batch)  # (B, n_outputs)
        return context

    def _target_branch(self, x: torch.Tensor, batch: dict) -> dict:
        """The target branch on the sample encoder's slots ``(B, S, D)``: the model's steps
        on the slots (``_slot_steps``), then :meth:`head_output`."""
        out = {}
        context = self.context(batch)
        for step in self._slot_steps:
            x = step(x, context, out)
        out.update(self.head_output(x, context))
        return out

    def head_output(self, x: torch.Tensor, context: "BranchContext") -> dict:
        """Everything after the steps on the slots: ``(B, S, D)`` slots -> pooling, the
        steps on the pooled vector, the head, the steps on its output (the linear readout's
        term added, the output scaling) and the output constraint: ``prediction`` and the
        attention or gate of the steps that have one."""
        out = {}
        pooled = self._pool(x, context, out)  # (B, D)
        for step in self._pooled_steps:
            pooled = step(pooled, context, out)
        y = self.target_head(pooled, context.vector)  # (B, n_outputs)
        for step in self._output_steps:
            y = step(y, context, out)
        out["prediction"] = self.output_constraint(y)
        return out

    # The steps (each ``(value, context, out) -> value``; ``out`` collects what a step shows).

    def _add_identity(self, x: torch.Tensor, context, out) -> torch.Tensor:
        """Each slot plus its ASV's identity embedding."""
        return x + self.asv_identity(context.vocab)  # (B, S, D)

    def _fuse_vector(self, x: torch.Tensor, context, out) -> torch.Tensor:
        return self.fusion(x, context.vector)

    def _cross_attend(self, x: torch.Tensor, context, out) -> torch.Tensor:
        x, out["cross_attention"] = self.cross_attention(x, context.tokens)  # (B, h, S, K)
        return x

    def _perceive(self, x: torch.Tensor, context, out) -> torch.Tensor:
        pooled, out["perceiver_attention"] = self.perceiver(x, context.mask, context.tokens)
        return pooled

    def _attention_pool(self, x: torch.Tensor, context, out) -> torch.Tensor:
        return self.target_pool(x, context.mask)

    def _encode_and_pool(self, x: torch.Tensor, context, out) -> torch.Tensor:
        x = self.target_encoder(x, src_key_padding_mask=~context.mask)
        return self.target_pool(x, context.mask)

    def _gate(self, pooled: torch.Tensor, context, out) -> torch.Tensor:
        pooled, out["gmu_gate"] = self.gmu(pooled, context.vector)  # (B, D), (B, D)
        return pooled

    def _add_readout(self, y: torch.Tensor, context, out) -> torch.Tensor:
        return y + context.offset

    def _scale(self, y: torch.Tensor, context, out) -> torch.Tensor:
        return self.output_scaling(y, context.categories)

    def slots(self, x: torch.Tensor, context: "BranchContext") -> torch.Tensor:
        """The slots as the per-ASV conditioning reads them: the steps on the slots before
        cross-attention (the ASV's identity)."""
        for step in self._slot_steps:
            if step != self._cross_attend:
                x = step(x, context, {})
        return x

    def readout_parameters(self) -> list:
        """The linear readout's parameters (fitted in closed form, then kept fixed)."""
        return [] if self.readout is None else list(self.readout.parameters())
