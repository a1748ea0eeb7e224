"""The readout in the model: a torch module that holds the fitted coefficients, adds the
readout's term to the network's prediction, and loads a fit made by :mod:`.choice` or
:mod:`.logistic` on :func:`~.blocks.readout_blocks`' columns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import log_level
from .blocks import BLOCK_ORDER


@dataclass(frozen=True)
class ReadoutConfig:
    """The readout's settings: ``vocabulary_size`` ASVs with a coefficient of their own
    (rows 1..n; row 0, every other ASV, has none) per output, on their log level and (with
    ``presence``) their presence; ``clades`` clades of ``clade_memberships`` (ASV, clade)
    pairs; with ``cardinalities`` (one per categorical column, unknown included), a
    coefficient per ASV, output and category value.

    A model's ``config.json`` keeps these as the flat ``ModelConfig`` fields it always had
    (``asv_vocabulary_size``, ``linear_presence``, ``linear_clades``, ...):
    :meth:`of` reads them."""

    vocabulary_size: int
    n_outputs: int
    presence: bool = False
    clades: int = 0
    clade_memberships: int = 0
    cardinalities: tuple = ()

    @classmethod
    def of(cls, config) -> "ReadoutConfig | None":
        """The readout of a ``ModelConfig``; ``None`` for a model without one."""
        if not (config.linear_readout and config.asv_vocabulary_size):
            return None
        conditional = config.linear_conditional and config.categorical_cardinalities
        return cls(config.asv_vocabulary_size, config.n_outputs,
                   presence=bool(config.linear_presence), clades=config.linear_clades,
                   clade_memberships=config.linear_clade_memberships,
                   cardinalities=tuple(config.categorical_cardinalities) if conditional else ())


class LinearReadout(nn.Module):
    """``(B, n_outputs)``: the linear model of the sample's vocabulary ASVs, fitted in closed
    form before training (:meth:`load_fit`) and kept fixed; the network's head adds to it.

    Its tensors are saved under the names models have always had (:data:`SAVED_NAMES`;
    ``bundle`` maps them), so models are the same files as before it had a module."""

    #: This module's tensor names -> the names in a saved model (relative to the model).
    SAVED_NAMES = {"level.weight": "linear.weight", "presence.weight": "linear_presence.weight",
                   "bias": "linear_bias", "clade": "linear_clade", "clade_rows": "clade_rows",
                   "clade_ids": "clade_ids", "conditional.weight": "linear_conditional.weight"}

    def __init__(self, config: ReadoutConfig):
        super().__init__()
        self.config = config
        rows, n_outputs = config.vocabulary_size + 1, config.n_outputs
        # Built as embeddings (which draw their initial weights) and then zeroed: the draws
        # keep a seed giving the rest of the model the weights it always had.
        self.level = nn.Embedding(rows, n_outputs)
        self.presence = nn.Embedding(rows, n_outputs) if config.presence else None
        nn.init.zeros_(self.level.weight)
        self.bias = nn.Parameter(torch.zeros(n_outputs))
        if self.presence is not None:
            nn.init.zeros_(self.presence.weight)
        self.clade = None
        if config.clades:
            self.clade = nn.Parameter(torch.zeros(config.clades, n_outputs))
            for name in ("clade_rows", "clade_ids"):  # vocabulary row k is in clade ids[k]
                self.register_buffer(name, torch.zeros(config.clade_memberships,
                                                       dtype=torch.long))
        self.conditional = None
        if config.cardinalities:
            shape = (rows, sum(config.cardinalities) * n_outputs)
            self.conditional = nn.Embedding(*shape, _weight=torch.zeros(shape))  # no draw

    def forward(self, batch: dict) -> torch.Tensor:
        """``(B, n_outputs)``: each vocabulary row's coefficient x its log-abundance level,
        plus its presence coefficient, plus each clade's coefficient x its level, plus each
        row's coefficient for the sample's category values x its level.

        Abundances are summed per row first: at prediction two slots may read one row (a
        new ASV matched to a vocabulary neighbour, ``vocabulary``), and the readout was
        fitted on each row's total, as closed-reference picking would count it."""
        dtype = self.level.weight.dtype
        rel = batch["abundance"][..., 1].to(dtype) * batch["asv_mask"]  # (B, S)
        per_row = rel.new_zeros(len(rel), self.config.vocabulary_size + 1)
        per_row.scatter_add_(1, batch["asv_vocab"], rel)  # (B, V + 1); row 0: no row
        level = log_level(per_row[:, 1:])  # (B, V)
        out = level @ self.level.weight[1:] + self.bias
        if self.presence is not None:
            out = out + (per_row[:, 1:] > 0).to(dtype) @ self.presence.weight[1:]
        if self.clade is not None:
            clade = rel.new_zeros(len(rel), len(self.clade)).index_add_(
                1, self.clade_ids, per_row[:, self.clade_rows])
            out = out + log_level(clade) @ self.clade
        if self.conditional is not None:
            n_outputs = self.config.n_outputs
            per_value = (level @ self.conditional.weight[1:]).unflatten(
                -1, (sum(self.config.cardinalities), n_outputs))  # (B, values, O)
            index = self._value_index(batch["categories"])[..., None].expand(-1, -1, n_outputs)
            out = out + per_value.gather(1, index).sum(1)  # the sample's values, (B, O)
        return out

    def _value_index(self, categories: torch.Tensor) -> torch.Tensor:
        """Category indices ``(B, C)`` as indices into every column's values together."""
        offsets = torch.as_tensor(np.cumsum((0,) + self.config.cardinalities[:-1]),
                                  device=categories.device)
        return categories + offsets

    def conditional_terms(self, level: torch.Tensor, vocab: torch.Tensor,
                          categories: torch.Tensor) -> torch.Tensor:
        """``(B, S, n_outputs)``: each slot's conditional term, for slots' levels ``level``
        and vocabulary rows ``vocab`` ``(B, S)`` and categories ``(B, C)`` (indices; 0,
        unknown, has no coefficient)."""
        n_outputs = self.config.n_outputs
        weights = self.conditional(vocab).unflatten(
            -1, (sum(self.config.cardinalities), n_outputs))
        index = self._value_index(categories)[:, None, :, None].expand(
            -1, weights.shape[1], -1, n_outputs)  # (B, S, C, O)
        return level[..., None] * weights.gather(2, index).sum(2)

    @torch.no_grad()
    def load_fit(self, coef: np.ndarray, intercept: np.ndarray, widths: dict) -> None:
        """Set the coefficients of a fit over the stacked column blocks (``coef`` ``(columns,
        n_outputs)``, ``widths`` each block's columns, in ``BLOCK_ORDER``) and keep them
        fixed. A block this readout has no coefficients for is left out (a model saved
        before presences had none)."""
        if tuple(widths) != tuple(name for name in BLOCK_ORDER if name in widths):
            raise ValueError(f"Readout blocks {list(widths)} are not in {BLOCK_ORDER}.")
        coef = torch.as_tensor(coef, dtype=self.level.weight.dtype)
        parts = dict(zip(widths, torch.split(coef, list(widths.values()))))
        self.level.weight[1:] = parts["level"]
        if self.presence is not None:
            self.presence.weight[1:] = parts["presence"]
        if self.clade is not None:
            self.clade[:] = parts["clade"]
        if self.conditional is not None:  # (values x ASVs, O) -> (ASVs, values x O)
            values = parts["conditional"].reshape(sum(self.config.cardinalities),
                                                  self.config.vocabulary_size, -1)
            self.conditional.weight[1:] = values.transpose(0, 1).reshape(
                self.config.vocabulary_size, -1)
        self.bias[:] = torch.as_tensor(intercept, dtype=self.bias.dtype)
        self.requires_grad_(False)
