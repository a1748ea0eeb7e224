"""Pretrain, train and predict with plain Python inputs (no QIIME 2): the core's entry points.

These are what the plugin actions call, and what a script launched with
``torchrun``/``accelerate launch`` can call directly. Each entry point checks
its inputs, then hands the work to the module that owns it: ``data``
(samples, tokens, the validation split), ``targets`` (transforms, classes),
``fusion`` (conditioning), ``readout`` (the closed-form linear readout), ``model``,
``engine`` (the training loop), ``predict`` (inference), ``explain`` (attribution),
``launch`` (several processes) and ``bundle``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from .bundle import ModelBundle, library_versions
from .data import (AmpliconSamples, BatchCollator, fit_categories,
                   sample_tokens, validation_split)
from .engine import Objective, TrainConfig, fit
from .fusion import resolve_conditioning
from .launch import distributable
from .losses import RegressionLoss
from .model import AAMModel, build_config
from .options import (DEFAULT_CLASS_WEIGHTS, DEFAULT_LOSS, DEFAULT_OUTPUT_CONSTRAINT,
                      DEFAULT_PENALTY, DEFAULT_QUANTILES, DEFAULT_TARGET_TRANSFORM, MASK_RATE,
                      PRETRAIN_RECIPE, TASKS, TRAIN_RECIPE, check_choice)
from .parallel import resolved_device
from .progress import Steps, stderr as _stderr
from .targets import (PreparedTarget, check_target_settings,
                      prepare_classification, prepare_regression)
from .unifrac import pair_distances

# Inference and attribution (their own modules), and what the plugin layer uses besides the
# entry points (it imports nothing else of the core but ``bundle``, for the artifact format).
from .predict import model_outputs, predict, predict_raw, read_shares
from .checkpoints import writable_directory
from .explain import (MISSING, asv_attention, asv_response, category_groups,
                      conditioning_response, gate_table, heatmap_matrix, latent_attention,
                      metadata_share, rank_by_variance, token_names)
from .model import ModelConfig
from .targets import group_labels, regression_accuracy
from .tokenizer import is_dna
from .unifrac import TreeDistances

__all__ = ["pretrain", "train", "predict", "predict_raw", "model_outputs",
           "conditioning_response", "ModelBundle", "TrainConfig", "AmpliconSamples",
           "ModelConfig", "TreeDistances", "writable_directory", "is_dna", "group_labels",
           "MISSING", "asv_attention", "asv_response", "category_groups", "gate_table",
           "heatmap_matrix", "latent_attention", "metadata_share", "rank_by_variance",
           "token_names", "regression_accuracy", "read_shares"]


@distributable
def pretrain(samples: AmpliconSamples, distances, *,
             architecture: dict | None = None, config: TrainConfig = TrainConfig(),
             unifrac_weight: float = PRETRAIN_RECIPE["unifrac_weight"],
             mlm_weight: float = PRETRAIN_RECIPE["mlm_weight"], mask_rate: float = MASK_RATE,
             validation_fraction: float = PRETRAIN_RECIPE["validation_fraction"],
             groups: Sequence | None = None,
             checkpoint_dir: str | None = None, tensorboard_dir: str | None = None,
             progress: bool | None = None,
             log: Callable[[str], None] = _stderr) -> ModelBundle:
    """Self-supervised pretraining: pairwise UniFrac and masked nucleotides.

    Args:
        samples: the samples (all are used; no labels needed).
        distances: ``(n, n)`` UniFrac distances between ``samples``, same order, a
            :class:`~q2_aam.core.unifrac.TreeDistances` that computes each batch's pairs,
            or a function returning either (called once every other input is checked, or,
            with several processes, once before the workers start; ``None`` only with
            ``unifrac_weight=0``).
        config: how to train, on how many processes (``launch.distributable``).
        checkpoint_dir, tensorboard_dir, progress: see ``engine.fit``.
    """
    tokens = sample_tokens(samples, log=log)
    model_config = build_config(architecture, None, task="encoder", n_outputs=0,
                                max_length=tokens.shape[1])
    train_rows, val_rows = validation_split(len(samples), validation_fraction, config.seed,
                                            groups)
    objective = Objective(task="encoder", target_weight=0.0, unifrac_weight=unifrac_weight,
                          mlm_weight=mlm_weight, mask_rate=mask_rate,
                          distances=pair_distances(distances, len(samples)))
    torch.manual_seed(config.seed)
    model = AAMModel(model_config)
    log(f"Pretraining on {len(train_rows)} samples ({len(val_rows)} for validation), "
        f"{len(samples.feature_ids)} ASVs, token limit {samples.token_limit}.")
    history = fit(model, BatchCollator(samples.subset(train_rows), tokens, global_index=train_rows),
                  BatchCollator(samples.subset(val_rows), tokens, global_index=val_rows)
                  if len(val_rows) else None, objective, config, log=log,
                  checkpoint_dir=checkpoint_dir, tensorboard_dir=tensorboard_dir,
                  progress=progress)
    return _bundle("encoder", model, {}, "pretrain", config, objective, samples,
                   train_rows, val_rows, history)


def _bundle(kind: str, model: AAMModel, target: dict, action: str, config: TrainConfig,
            objective: Objective, samples: AmpliconSamples, train_rows, val_rows,
            history: list, **training) -> ModelBundle:
    """The trained model with its self-description."""
    return ModelBundle(
        kind=kind, model_config=model.config.to_dict(),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        target=target,
        training={"action": action, "config": config.to_dict(),
                  "device": resolved_device(config.device),
                  "objective": {"unifrac_weight": objective.unifrac_weight,
                                "mlm_weight": objective.mlm_weight,
                                "mask_rate": objective.mask_rate},
                  **training, "token_limit": samples.token_limit, "n_samples": len(samples),
                  "n_train": len(train_rows), "n_validation": len(val_rows),
                  "kept_epoch": kept_epoch(history, len(val_rows) > 0),
                  "history": history},
        versions=library_versions())


def kept_epoch(history: list, validated: bool) -> int:
    """The epoch whose weights a run kept: the last that improved the validation loss; 0
    (the starting point: the fitted readout, the network's head at zero) when validation
    ran and no epoch improved on it; without validation, the last epoch."""
    improved = [row["epoch"] for row in history if row.get("best")]
    if improved:
        return int(improved[-1])
    if validated:
        return 0
    return int(history[-1]["epoch"]) if history else 0


def _check_train_inputs(samples, targets, task, pretrained, freeze_encoder, mlm_weight,
                        regression_settings: dict, class_weights: str) -> None:
    """Refuse what contradicts itself before any work: the task's settings."""
    check_choice("task", task, TASKS)
    if len(targets) != len(samples):
        raise ValueError(f"{len(targets)} targets for {len(samples)} samples.")
    if freeze_encoder and pretrained is None:
        raise ValueError("freeze_encoder needs a pretrained encoder to freeze; pass one or "
                         "do not freeze.")
    if freeze_encoder and mlm_weight > 0:
        raise ValueError("--p-mlm-weight > 0 trains the encoder on masked nucleotides, but "
                         "the pretrained encoder is frozen (with --i-pretrained it is by "
                         "default). Add --p-no-freeze-encoder to fine-tune it, or leave "
                         "--p-mlm-weight at 0.")
    if task == "classification":
        changed = [f"--p-{k.replace('_', '-')}" for k, v in regression_settings.items() if v]
        if changed:
            raise ValueError(f"{', '.join(changed)} apply to numeric targets; a class is "
                             "learned with cross-entropy (see --p-class-weights). Leave "
                             "them out.")
    elif class_weights != "none":
        raise ValueError("--p-class-weights applies to --p-task classification only.")


def _loss_changes(loss) -> dict:
    """Which loss settings differ from their defaults (``loss``: as :func:`train` takes it)."""
    if isinstance(loss, str):
        return {"loss": loss != DEFAULT_LOSS}
    values = loss if isinstance(loss, dict) else loss.to_dict()
    quantiles = list(values.get("quantiles", DEFAULT_QUANTILES))
    return {"loss": values["kind"] != DEFAULT_LOSS,
            "quantiles": bool(quantiles) and quantiles != list(DEFAULT_QUANTILES),
            "over_penalty": values.get("over_penalty", DEFAULT_PENALTY) != DEFAULT_PENALTY,
            "under_penalty": values.get("under_penalty", DEFAULT_PENALTY) != DEFAULT_PENALTY}


def _as_loss(loss) -> RegressionLoss:
    if isinstance(loss, RegressionLoss):
        return loss
    return RegressionLoss.from_settings(**loss) if isinstance(loss, dict) \
        else RegressionLoss(kind=loss)


def _checked_settings(samples, targets, task, pretrained, freeze_encoder, mlm_weight,
                      class_weights, loss, architecture, categorical, *, transform,
                      output_constraint, normalize_by, log) -> tuple[RegressionLoss, dict]:
    """``train``'s settings checked together: its loss and its architecture with the
    conditioning resolved (``fusion.resolve_conditioning``)."""
    _check_train_inputs(samples, targets, task, pretrained, freeze_encoder, mlm_weight, {
        "target_transform": transform != DEFAULT_TARGET_TRANSFORM,
        "normalize_by": bool(normalize_by),
        "output_constraint": output_constraint != DEFAULT_OUTPUT_CONSTRAINT,
        **_loss_changes(loss)}, class_weights)
    loss = _as_loss(loss)
    if task == "regression":
        check_target_settings(transform, output_constraint, normalize_by)
    architecture = resolve_conditioning(architecture, list(categorical or ()),
                                        transform=transform, normalize_by=normalize_by,
                                        log=log)
    return loss, architecture


def _prepare_target(targets, train_rows, task: str, target_name: str, samples, architecture,
                    categorical, *, transform, output_constraint, normalize_by,
                    normalize_groups, loss, class_weights, log) -> tuple[PreparedTarget, object]:
    """The target on the scale the model learns (its statistics from ``train_rows``) and
    the categorical columns' indices (``None`` without any), their vocabularies recorded
    in the target's information and their cardinalities in ``architecture``."""
    target = (prepare_regression(targets, train_rows, transform=transform,
                                 output_constraint=output_constraint, normalize_by=normalize_by,
                                 normalize_groups=normalize_groups, loss=loss,
                                 sample_ids=samples.sample_ids, log=log)
              if task == "regression" else
              prepare_classification(targets, train_rows, class_weights=class_weights, log=log))
    target.info = {"name": target_name, **target.info}
    cats = None
    if categorical:
        cats, cardinalities, target.info["categorical"] = fit_categories(categorical,
                                                                          train_rows, warn=log)
        architecture["categorical_cardinalities"] = cardinalities
    return target, cats


def _table_words(samples: AmpliconSamples, pretrained, freeze_encoder: bool) -> str:
    return (f"{len(samples.feature_ids)} ASVs, token limit {samples.token_limit}"
            + (", from a pretrained encoder" + (" (frozen)" if freeze_encoder else "")
               if pretrained else ""))


@distributable
def train(samples: AmpliconSamples, targets: Sequence, *, task: str, target_name: str = "target",
          architecture: dict | None = None, config: TrainConfig = TrainConfig(),
          pretrained: ModelBundle | None = None, freeze_encoder: bool = False,
          target_transform: str = DEFAULT_TARGET_TRANSFORM, loss=DEFAULT_LOSS,
          output_constraint: str = DEFAULT_OUTPUT_CONSTRAINT,
          normalize_groups=None, normalize_by: Sequence[str] | None = None,
          class_weights: str = DEFAULT_CLASS_WEIGHTS, categorical: dict | None = None,
          distances=None, unifrac_weight: float = TRAIN_RECIPE["unifrac_weight"],
          mlm_weight: float = TRAIN_RECIPE["mlm_weight"], mask_rate: float = MASK_RATE,
          validation_fraction: float = TRAIN_RECIPE["validation_fraction"], groups=None,
          asv_min_samples: int = TRAIN_RECIPE["asv_min_samples"],
          linear_readout: bool = TRAIN_RECIPE["linear_readout"], phylogeny=None,
          checkpoint_dir: str | None = None, tensorboard_dir: str | None = None,
          progress: bool | None = None, steps: Steps | None = None,
          log: Callable[[str], None] = _stderr) -> ModelBundle:
    """Train a regressor (numeric ``targets``, aligned with ``samples``) or classifier.

    ``pretrained``/``freeze_encoder``: start from (and keep) an encoder's weights.
    ``target_transform``, ``output_constraint``, ``loss`` (a name, a ``RegressionLoss`` or
    its ``from_settings``' keywords), ``normalize_by``/``normalize_groups``, ``class_weights``:
    see ``targets`` and ``losses``. ``categorical``: ``{column: per-sample values}``, fused
    as ``architecture`` says (``fusion.resolve_conditioning``). ``asv_min_samples``,
    ``linear_readout``, ``phylogeny``: ``readout.plan_readout``. ``distances``, ``config``,
    ``checkpoint_dir``, ``tensorboard_dir``, ``progress``: as in :func:`pretrain`.
    ``steps``: the action's step times so far (e.g. reading the table)."""
    steps = steps if steps is not None else Steps(log)
    loss, architecture = _checked_settings(
        samples, targets, task, pretrained, freeze_encoder, mlm_weight, class_weights, loss,
        architecture, categorical, transform=target_transform,
        output_constraint=output_constraint, normalize_by=normalize_by, log=log)
    tokens = sample_tokens(samples, max_length=pretrained.model_config["max_sequence_length"]
                           if pretrained else None, log=log)
    train_rows, val_rows = validation_split(len(samples), validation_fraction, config.seed, groups)
    target, cats = _prepare_target(
        targets, train_rows, task, target_name, samples, architecture, categorical,
        transform=target_transform, output_constraint=output_constraint,
        normalize_by=normalize_by, normalize_groups=normalize_groups, loss=loss,
        class_weights=class_weights, log=log)
    model, vocabulary_rows = _new_model(
        samples, tokens, train_rows, target, task, architecture, pretrained,
        output_constraint=output_constraint, cats=cats, groups=groups,
        readout={"asv_min_samples": asv_min_samples, "linear_readout": linear_readout},
        phylogeny=phylogeny, seed=config.seed, steps=steps, log=log)
    objective = Objective(task=task, target_weight=1.0, unifrac_weight=unifrac_weight,
                          mlm_weight=mlm_weight, mask_rate=mask_rate, regression_loss=loss,
                          class_weights=target.loss_weights(),
                          distances=pair_distances(distances, len(samples))
                          if unifrac_weight > 0 else None)
    log(f"Training a {task} model for {target_name!r} on {len(train_rows)} samples "
        f"({len(val_rows)} for validation), {_table_words(samples, pretrained, freeze_encoder)}.")
    collators = [_collator(samples, tokens, target.encoded, rows, cats, vocabulary_rows)
                 if len(rows) else None for rows in (train_rows, val_rows)]
    with steps("training the network"):
        history = fit(model, *collators, objective, config, freeze_encoder=freeze_encoder,
                      metrics=target.metrics, log=log, checkpoint_dir=checkpoint_dir,
                      tensorboard_dir=tensorboard_dir, progress=progress)
    return _bundle("regressor" if task == "regression" else "classifier", model, target.info,
                   "train", config, objective, samples, train_rows, val_rows, history,
                   pretrained=pretrained is not None, freeze_encoder=freeze_encoder,
                   steps=[[name, seconds] for name, seconds in steps.seconds.items()])


def _collator(samples, tokens, encoded, rows, cats, vocabulary_rows) -> BatchCollator:
    return BatchCollator(samples.subset(rows), tokens, encoded[rows], global_index=rows,
                         categories=None if cats is None else cats[rows],
                         vocabulary=vocabulary_rows)


def _new_model(samples: AmpliconSamples, tokens: np.ndarray, train_rows: np.ndarray,
               target: PreparedTarget, task: str, architecture: dict,
               pretrained: ModelBundle | None, *, output_constraint: str, cats, groups,
               readout: dict, phylogeny, seed: int, steps: Steps,
               log) -> tuple[AAMModel, np.ndarray | None]:
    """The model to train: seeded weights, the pretrained encoder's, and the linear readout
    (``readout``: ``plan_readout``'s settings) fitted in closed form on the training rows;
    and each feature's row in its vocabulary."""
    from .readout import fit_readout, plan_readout
    with steps("the vocabulary and clades"):
        plan = plan_readout(samples.subset(train_rows), samples.sequences,
                            samples.feature_ids, log=log, **readout,
                            phylogeny=phylogeny if task == "regression" else None)
    target.info.update(plan.vocabulary.to_target())
    conditional = architecture.pop("linear_conditional", None)
    if conditional is None:
        conditional = architecture["categorical_fusion"] == "cross-attention"
    model_config = build_config(
        architecture, pretrained.model_config if pretrained else None, task=task,
        n_outputs=target.n_outputs, max_length=tokens.shape[1],
        output_constraint=output_constraint, output_bounds=target.bounds,
        **plan.model_settings(conditional=bool(conditional and cats is not None
                                               and task == "regression")))
    torch.manual_seed(seed)
    model = AAMModel(model_config)
    if pretrained is not None:
        pretrained.load_encoder_into(model)
    if model.readout is not None:
        plan.set_clades(model.readout)
        y = target.encoded[train_rows]
        with steps("the linear readout", say=False):
            how = fit_readout(
                model.readout, samples.subset(train_rows), plan.rows,
                model.output_constraint.inverse(y) if task == "regression" else y, task,
                None if groups is None else np.asarray([str(g) for g in groups])[train_rows],
                target.info.get("class_weights", "none"),
                None if cats is None else cats[train_rows], log=log)
        log(f"Linear readout ({steps.seconds['the linear readout']:.1f} s): {how}.")
    return model, plan.rows
