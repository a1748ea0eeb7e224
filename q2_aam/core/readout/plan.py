"""A new model's readout: which ASVs and clades it covers (:func:`plan_readout`, before
the model is built) and its fit on the training samples (:func:`fit_readout`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..data import AmpliconSamples
from ..options import DEFAULT_CLASS_WEIGHTS
from ..vocabulary import Vocabulary
from .blocks import clades, readout_blocks, relative_matrix
from .choice import fit_regression
from .folds import CV_SAMPLES
from .logistic import fit_classification
from .module import LinearReadout


@dataclass
class ReadoutPlan:
    """What a new model's ASV identities and linear readout cover: the ``vocabulary``, each
    feature's row in it (``rows``, 0: none), whether there is a readout, and the clades'
    memberships (``clade_rows``, ``clade_ids``)."""

    vocabulary: Vocabulary
    rows: np.ndarray | None
    readout: bool
    clade_rows: np.ndarray | None = None
    clade_ids: np.ndarray | None = None

    @property
    def n_clades(self) -> int:
        return 0 if self.clade_ids is None or not len(self.clade_ids) \
            else int(self.clade_ids.max()) + 1

    @property
    def n_memberships(self) -> int:
        return 0 if self.clade_ids is None else len(self.clade_ids)

    def model_settings(self, conditional: bool) -> dict:
        """The ``ModelConfig`` fields of a model with this vocabulary and readout
        (``conditional``: with the ASV x category block, when it has categorical columns;
        see :class:`~.module.ReadoutConfig`)."""
        return dict(asv_vocabulary_size=len(self.vocabulary), linear_readout=self.readout,
                    linear_presence=self.readout, linear_clades=self.n_clades,
                    linear_clade_memberships=self.n_memberships,
                    linear_conditional=bool(self.readout and conditional))

    def set_clades(self, readout: LinearReadout) -> None:
        """Write the clades' memberships into the model's ``readout`` (a buffer of it)."""
        if readout.clade is not None:
            readout.clade_rows.copy_(torch.as_tensor(self.clade_rows))
            readout.clade_ids.copy_(torch.as_tensor(self.clade_ids))


def plan_readout(train_samples: AmpliconSamples, sequences, feature_ids, *,
                 asv_min_samples: int, linear_readout: bool, phylogeny=None,
                 log=print) -> ReadoutPlan:
    """The vocabulary of ASVs held by ``asv_min_samples`` training samples or more, each
    feature's row (exact; a feature no training sample holds, i.e. a validation sample's
    new ASV, reads its nearest vocabulary sequence's, as prediction will), and with a
    ``phylogeny`` (regression), the clades of the readout."""
    vocabulary = (Vocabulary.of_samples(train_samples, asv_min_samples)
                  if asv_min_samples > 0 else Vocabulary([], [], [], []))
    if linear_readout and not len(vocabulary):
        log(f"No ASV is held by {asv_min_samples} or more training samples, so the model has "
            "no linear readout.")
    rows = vocabulary.match(sequences, log=log).rows if len(vocabulary) else None
    plan = ReadoutPlan(vocabulary, rows, linear_readout and bool(len(vocabulary)))
    if plan.readout and phylogeny is not None:
        exact = vocabulary.exact_rows(sequences)
        tip_columns = {name: int(row) - 1 for name, row in zip(feature_ids, exact) if row}
        plan.clade_rows, plan.clade_ids = clades(phylogeny, tip_columns, relative_matrix(
            train_samples, rows, len(vocabulary)))
    return plan


def fit_readout(readout: LinearReadout, samples: AmpliconSamples, vocabulary_rows: np.ndarray,
                target: np.ndarray, task: str, groups=None,
                class_weights: str = DEFAULT_CLASS_WEIGHTS,
                categories: np.ndarray | None = None, log=None) -> str:
    """Fit a model's ``readout`` on ``samples`` (targets on the scale the model learns, or
    class indices; ``categories`` their category indices when the readout is conditional),
    load it and keep it fixed; return what was fitted, in words (``log`` hears the steps
    as they end).

    A classifier's readout uses the ``level`` and ``presence`` blocks only."""
    config = readout.config
    n_vocabulary = config.vocabulary_size
    cards = list(config.cardinalities) or None
    blocks = readout_blocks(
        samples, vocabulary_rows, n_vocabulary,
        *((readout.clade_rows.numpy(), readout.clade_ids.numpy()) if config.clades
          else (None, None)),
        categories=categories if cards else None, cardinalities=cards)
    if task == "regression":
        coef, intercept, how = fit_regression(blocks, target, groups, log=log)
        coef = coef[:, None]
    else:
        blocks = {name: blocks[name] for name in ("level", "presence")}
        features = sp.hstack(list(blocks.values()), format="csr")
        coef, intercept, how = fit_classification(
            features, target, config.n_outputs, groups,
            "balanced" if class_weights == "balanced" else None, log=log)
    readout.load_fit(coef, intercept, {name: x.shape[1] for name, x in blocks.items()})
    extra = "".join(f", {config.clades} clades" if name == "clade" else
                    ", their levels per category value" for name in blocks
                    if name in ("clade", "conditional"))
    return (f"{how} on the log abundances and presences of {n_vocabulary} ASVs{extra}, "
            f"chosen by cross-validation{' by subject' if groups is not None else ''}"
            f"{'' if len(samples) <= CV_SAMPLES else ' on a subsample'}, fitted on "
            f"{len(samples)} samples")
