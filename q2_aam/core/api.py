"""Pretrain, train and predict with plain Python inputs (no QIIME 2): the core's entry points.

These are what the plugin actions call, and what a script launched with
``torchrun``/``accelerate launch`` can call directly. Each entry point checks
its inputs, then hands the work to the module that owns it: ``data``
(samples, tokens, the validation split), ``targets`` (transforms, classes),
``fusion`` (conditioning), ``linear`` (the readout), ``model``, ``engine``
(the training loop), ``launch`` (several processes) and ``bundle``.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import ModelBundle, library_versions
from .data import (AmpliconSamples, BatchCollator, encode_categories, fit_categories,
                   sample_tokens, validation_split)
from .engine import Objective, TrainConfig, embed_features, fit
from .explain import conditioning_change
from .fusion import resolve_conditioning
from .launch import distributable, stderr as _stderr
from .losses import RegressionLoss
from .model import AAMModel, build_config
from .options import (DEFAULT_LOSS, DEFAULT_MATCH_IDENTITY, DEFAULT_OUTPUT_CONSTRAINT,
                      DEFAULT_PENALTY, DEFAULT_QUANTILES, DEFAULT_TARGET_TRANSFORM, TASKS,
                      check_choice)
from .parallel import make_accelerator, resolved_device
from .progress import Steps
from .targets import (PreparedTarget, TargetTransform, check_target_settings,
                      prepare_classification, prepare_regression)
from .unifrac import pair_distances
from .vocabulary import Vocabulary

# What the plugin layer uses besides the entry points (it imports nothing else of the core
# but ``bundle``, for the artifact format).
from .checkpoints import writable_directory
from .explain import (MISSING, asv_attention, asv_response, category_groups,
                      confusion, gate_table, heatmap_matrix, history_frame, latent_attention,
                      metadata_share, rank_by_variance, regression_accuracy, token_names)
from .model import ModelConfig
from .targets import group_labels
from .tokenizer import is_dna
from .unifrac import TreeDistances

__all__ = ["pretrain", "train", "predict", "predict_raw", "model_outputs",
           "conditioning_response", "ModelBundle", "TrainConfig", "AmpliconSamples",
           "ModelConfig", "TreeDistances", "writable_directory", "is_dna", "group_labels",
           "MISSING", "asv_attention", "asv_response", "category_groups", "confusion",
           "gate_table", "heatmap_matrix", "history_frame", "latent_attention",
           "metadata_share", "rank_by_variance", "regression_accuracy", "token_names"]


@distributable
def pretrain(samples: AmpliconSamples, distances, *,
             architecture: dict | None = None, config: TrainConfig = TrainConfig(),
             unifrac_weight: float = 1.0, mlm_weight: float = 1.0, mask_rate: float = 0.15,
             validation_fraction: float = 0.1, groups: Sequence | None = None,
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


@distributable
def train(samples: AmpliconSamples, targets: Sequence, *, task: str, target_name: str = "target",
          architecture: dict | None = None, config: TrainConfig = TrainConfig(),
          pretrained: ModelBundle | None = None, freeze_encoder: bool = False,
          target_transform: str = DEFAULT_TARGET_TRANSFORM,
          loss: RegressionLoss | str | dict = DEFAULT_LOSS,
          output_constraint: str = DEFAULT_OUTPUT_CONSTRAINT,
          normalize_groups: Sequence | None = None, normalize_by: Sequence[str] | None = None,
          class_weights: str = "none", categorical: dict | None = None, distances=None,
          unifrac_weight: float = 0.0, mlm_weight: float = 0.0, mask_rate: float = 0.15,
          validation_fraction: float = 0.2, groups: Sequence | None = None,
          asv_min_samples: int = 2, linear_readout: bool = True, phylogeny=None,
          checkpoint_dir: str | None = None, tensorboard_dir: str | None = None,
          progress: bool | None = None, steps: Steps | None = None,
          log: Callable[[str], None] = _stderr) -> ModelBundle:
    """Train a regressor (numeric ``targets``, aligned with ``samples``) or classifier.

    ``pretrained``/``freeze_encoder``: start from (and keep) an encoder's weights.
    ``target_transform``, ``output_constraint``, ``loss`` (a name, a ``RegressionLoss``
    or ``RegressionLoss.from_settings``' keywords), ``normalize_by``/``normalize_groups``,
    ``class_weights``: see ``targets`` and ``losses``. ``categorical``: ``{column:
    per-sample values}``, fused as ``architecture`` says (``fusion.resolve_conditioning``).
    ``asv_min_samples``, ``linear_readout``, ``phylogeny``: ``linear.plan_readout``.
    ``distances``, ``config``, ``checkpoint_dir``, ``tensorboard_dir``, ``progress``:
    as in :func:`pretrain`. ``steps``: the action's step times so far (e.g. reading the
    table); the model's training record keeps them with this function's steps.
    """
    steps = steps if steps is not None else Steps(log)
    _check_train_inputs(samples, targets, task, pretrained, freeze_encoder, mlm_weight, {
        "target_transform": target_transform != DEFAULT_TARGET_TRANSFORM,
        "normalize_by": bool(normalize_by),
        "output_constraint": output_constraint != DEFAULT_OUTPUT_CONSTRAINT,
        **_loss_changes(loss)}, class_weights)
    loss = _as_loss(loss)
    if task == "regression":
        check_target_settings(target_transform, output_constraint, normalize_by)
    architecture = resolve_conditioning(architecture, list(categorical or ()),
                                        transform=target_transform, normalize_by=normalize_by,
                                        log=log)
    tokens = sample_tokens(samples, max_length=pretrained.model_config["max_sequence_length"]
                           if pretrained else None, log=log)
    train_rows, val_rows = validation_split(len(samples), validation_fraction, config.seed,
                                            groups)
    target = (prepare_regression(targets, train_rows, transform=target_transform,
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
    model, vocabulary_rows = _new_model(
        samples, tokens, train_rows, target, task, architecture, pretrained,
        output_constraint=output_constraint, cats=cats, groups=groups,
        readout={"asv_min_samples": asv_min_samples, "linear_readout": linear_readout},
        phylogeny=phylogeny, seed=config.seed, steps=steps, log=log)
    objective = Objective(task=task, target_weight=1.0, unifrac_weight=unifrac_weight,
                          mlm_weight=mlm_weight, mask_rate=mask_rate, regression_loss=loss,
                          class_weights=None if target.class_weights is None else
                          torch.as_tensor(target.class_weights, dtype=torch.float32),
                          distances=pair_distances(distances, len(samples))
                          if unifrac_weight > 0 else None)
    log(f"Training a {task} model for {target_name!r} on {len(train_rows)} samples "
        f"({len(val_rows)} for validation), {len(samples.feature_ids)} ASVs, "
        f"token limit {samples.token_limit}"
        + (", from a pretrained encoder" + (" (frozen)" if freeze_encoder else "")
           if pretrained else "") + ".")
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
    from .linear import fit_readout, plan_readout
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
        asv_vocabulary_size=len(plan.vocabulary), linear_readout=plan.readout,
        linear_presence=plan.readout, linear_clades=plan.n_clades,
        linear_clade_memberships=plan.n_memberships,
        linear_conditional=bool(plan.readout and conditional and cats is not None
                                and task == "regression"))
    torch.manual_seed(seed)
    model = AAMModel(model_config)
    if model.linear_clade is not None:
        model.clade_rows.copy_(torch.as_tensor(plan.clade_rows))
        model.clade_ids.copy_(torch.as_tensor(plan.clade_ids))
    if pretrained is not None:
        pretrained.load_encoder_into(model)
    if model.linear is not None:
        y = target.encoded[train_rows]
        with steps("the linear readout", say=False):
            how = fit_readout(
                model, samples.subset(train_rows), plan.rows,
                model.output_constraint.inverse(y) if task == "regression" else y, task,
                None if groups is None else np.asarray([str(g) for g in groups])[train_rows],
                target.info.get("class_weights", "none"),
                None if cats is None else cats[train_rows], log=log)
        log(f"Linear readout ({steps.seconds['the linear readout']:.1f} s): {how}.")
    return model, plan.rows


@torch.no_grad()
def predict_raw(bundle: ModelBundle, samples: AmpliconSamples, *, batch_size: int = 64,
                device: str = "auto", categorical: dict | None = None,
                match_identity: float = DEFAULT_MATCH_IDENTITY,
                log: Callable[[str], None] = _stderr) -> np.ndarray:
    """The model's raw outputs ``(n, n_outputs)`` (transformed scale / logits).

    Each distinct ASV is encoded once for the whole table. ``categorical``:
    ``{column: per-sample values}`` for a model conditioned on metadata.
    ``match_identity``: a sequence outside the training vocabulary reads the identity and
    readout coefficients of its nearest vocabulary sequence at this alignment identity or
    more (1: exact sequences only; see ``vocabulary``).
    """
    outputs = model_outputs(bundle, samples, batch_size=batch_size, device=device,
                            categorical=categorical, match_identity=match_identity, log=log,
                            keys=("prediction",))
    return outputs["prediction"]


def vocabulary_match(bundle: ModelBundle, samples: AmpliconSamples,
                     match_identity: float = DEFAULT_MATCH_IDENTITY, log=None):
    """Where the samples' features sit in the model's training vocabulary (a
    ``vocabulary.VocabularyMatch``; ``None`` for a model without one)."""
    if not 0 < match_identity <= 1:
        raise ValueError(f"match_identity must be in (0, 1], got {match_identity}; 1 reads "
                         "only the vocabulary's own sequences as known.")
    vocabulary = Vocabulary.from_target(bundle.target)
    if vocabulary is None:
        return None
    if vocabulary.sequences is None and match_identity < 1 and log is not None:
        log("This model was saved by an earlier q2-aam without its vocabulary's "
            "sequences, so ASVs it never saw are not matched to similar ones; train it "
            "again to have them matched.")
    return vocabulary.match(samples.sequences, match_identity, log=log)


def read_shares(bundle: ModelBundle, samples: AmpliconSamples,
                match_identity: float = DEFAULT_MATCH_IDENTITY) -> dict | None:
    """Per sample, the shares of the reads the model reads (``samples``' kept ASVs) in the
    training vocabulary, in new ASVs read as a vocabulary neighbour and in new ASVs with
    none (``VocabularyMatch.read_shares``); ``None`` for a model without a vocabulary."""
    match = vocabulary_match(bundle, samples, match_identity)
    return None if match is None else match.read_shares(samples.kept_counts())


def _batches(bundle: ModelBundle, samples: AmpliconSamples, batch_size: int, device: str,
             categorical: dict | None, match_identity: float, log: Callable[[str], None]):
    """``(model, batch, asv_embeddings, rows)`` for batches of ``samples`` (``rows``: which
    samples, by position), each distinct ASV encoded once; the metadata encoded with the
    model's vocabularies; new ASVs matched to the training vocabulary, and how much of
    the table that concerns said.

    Batches hold samples of similar length (samples ordered by their number of ASVs), so
    that padding slots cost almost nothing: in random batches of 8 to 16 ECAM or karelia
    samples, about half of all slots were padding. The outputs of a sample do not depend
    on its batch (padding is masked out), so callers put them back in place by ``rows``.
    """
    match = vocabulary_match(bundle, samples, match_identity, log=log)
    if match is not None:
        report_new_asvs(match, samples, log)
    accelerator = make_accelerator(device)
    model = bundle.build_model().to(accelerator.device)
    tokens = sample_tokens(samples, max_length=model.config.max_sequence_length, log=log)
    table = embed_features(model, tokens, np.unique(samples.indices), accelerator.device)
    cats = None
    vocabularies = bundle.target.get("categorical", {}).get("vocabularies")
    if vocabularies:
        if categorical is None:
            raise ValueError(f"This model is conditioned on the metadata column(s) "
                             f"{list(vocabularies)}; pass the sample metadata holding them.")
        cats = encode_categories(categorical, vocabularies, warn=log)
    collator = BatchCollator(samples, tokens, categories=cats,
                             vocabulary=None if match is None else match.rows)
    order = np.argsort(np.diff(samples.indptr), kind="stable")
    for start in range(0, len(samples), batch_size):
        rows = order[start:start + batch_size]
        batch = collator(rows)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        yield model, batch, table[batch["asv_feature"]], rows


#: ``predict`` warns when more than this share of the reads is in ASVs outside the
#: training vocabulary.
NEW_READS_WARNING = 0.25


def report_new_asvs(match, samples: AmpliconSamples, log: Callable[[str], None]) -> None:
    """Say how much of the reads the model reads are in ASVs outside its training
    vocabulary and how they are read; warn above ``NEW_READS_WARNING``."""
    counts = samples.kept_counts()
    per_sample = match.read_shares(counts)
    reads = np.asarray(counts.sum(axis=1)).ravel()
    overall = {name: float(share @ reads) / max(float(reads.sum()), 1e-300)
               for name, share in per_sample.items()}
    new = per_sample["neighbour"] + per_sample["unmatched"]
    share = overall["neighbour"] + overall["unmatched"]
    how = (f"{overall['neighbour']:.1%} are read as their nearest vocabulary ASV (alignment "
           f"identity {match.min_identity:.0%} or more) and {overall['unmatched']:.1%}"
           if match.min_identity < 1 else
           f"with matching off (match identity 1), all {overall['unmatched']:.1%} are read")
    log(f"New ASVs: {share:.1%} of the reads (per sample: median {np.median(new):.1%}, "
        f"max {new.max():.1%}) are in ASVs outside the model's training vocabulary; "
        f"{how} by the sequence network alone.")
    if share > NEW_READS_WARNING:
        log(f"Warning: {share:.0%} of the reads are in ASVs this model did not learn "
            "(another denoising run, trimming, primer pair or study?), so its predictions "
            "extrapolate. Check them on samples with known values (qiime aam accuracy "
            "lists each sample's share), or train on data processed like these samples.")


def conditioning_response(bundle: ModelBundle, samples: AmpliconSamples, *,
                          categorical: dict, normalize_groups: Sequence | None = None,
                          batch_size: int = 16, device: str = "auto",
                          match_identity: float = DEFAULT_MATCH_IDENTITY,
                          log: Callable[[str], None] = _stderr) -> np.ndarray:
    """How much each ASV's conditioning moves each sample's prediction, per column.

    ``(n_samples, token_limit, C)``: for sample ``i``, ASV slot ``j`` and
    conditioning column ``c``, the change in the prediction when that ASV alone
    is conditioned on another value of ``c`` (every other ASV, and the rest of
    the model, keep the sample's metadata), averaged over the column's other
    values seen in training. Regressors: the absolute change in the target's
    units; classifiers: the total variation between the class probabilities
    (0 to 1). NaN for empty slots. Only for cross-attention models (see
    ``AAMModel.conditioning_response``).
    """
    if bundle.model_config.get("categorical_fusion") != "cross-attention" or not \
            bundle.target.get("categorical", {}).get("columns"):
        raise ValueError("The per-ASV response to metadata needs a model trained with "
                         "--p-categorical-columns and --p-categorical-fusion cross-attention.")
    transform = _transform(bundle, normalize_groups)
    if transform is not None and transform.uses_groups:  # unseen groups: said once, here
        transform.inverse(np.zeros(len(samples)), normalize_groups, warn=log)
    point = bundle.target.get("point_output", 0)
    result = np.full((len(samples), samples.token_limit,
                      len(bundle.target["categorical"]["columns"])), np.nan)
    for model, batch, embeddings, rows in _batches(bundle, samples, batch_size, device,
                                                   categorical, match_identity, log):
        plain, patched = (t.double().cpu() for t in model.conditioning_response(batch,
                                                                              embeddings))
        if transform is None:  # classifiers: class probabilities
            plain, patched = plain.softmax(-1), patched.softmax(-1)
        groups = (None if transform is None or not transform.uses_groups else
                  np.asarray(normalize_groups, dtype=object)[rows])
        change = conditioning_change(plain.numpy(), patched.numpy(), transform, groups, point)
        with warnings.catch_warnings():  # a slot or column with no other value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            result[rows, :patched.shape[1]] = np.nanmean(change, axis=-1)  # over other values
    return result


def _transform(bundle: ModelBundle, normalize_groups) -> TargetTransform | None:
    """A regressor's target transform (``None`` for a classifier), refusing a missing
    ``normalize_groups`` where the transform needs them."""
    if bundle.kind != "regressor":
        return None
    transform = TargetTransform.from_dict(bundle.target["transform"])
    if transform.uses_groups and normalize_groups is None:
        raise ValueError(f"This model z-scores its target within groups of "
                         f"{bundle.target.get('normalize_by')}; pass each sample's values "
                         "of these columns.")
    return transform


@torch.no_grad()
def model_outputs(bundle: ModelBundle, samples: AmpliconSamples, *, batch_size: int = 64,
                  device: str = "auto", categorical: dict | None = None,
                  match_identity: float = DEFAULT_MATCH_IDENTITY,
                  log: Callable[[str], None] = _stderr, keys: Sequence | None = None) -> dict:
    """Every per-sample output of the model (or those named in ``keys``): ``prediction``,
    ``sample_embedding``, and, by fusion mode, ``gmu_gate`` ``(n, D)``,
    ``cross_attention`` ``(n, heads, S, K)`` or ``perceiver_attention``
    ``(n, heads, latents, S + K)`` (ASV slots padded to the token limit; slot ``j`` of
    sample ``i`` is its ``j``-th most abundant ASV). Only these are kept from batch to
    batch, so memory beyond the table grows with the samples by the outputs' size."""
    if bundle.kind == "encoder":
        raise ValueError("This model is a pretrained encoder; it predicts nothing. Train a "
                         "regressor or classifier from it with 'train'.")
    per_batch: dict = {}
    order = []
    width = samples.token_limit
    for model, batch, embeddings, rows in _batches(bundle, samples, batch_size, device,
                                                   categorical, match_identity, log):
        order.append(rows)
        out = model(batch, asv_embeddings=embeddings)
        for key in keys or ("prediction", "sample_embedding", "gmu_gate", "cross_attention",
                            "perceiver_attention"):
            if key not in out:
                continue
            value = out[key].float().cpu()
            if key == "cross_attention":  # pad the ASV axis to the token limit
                value = F.pad(value, (0, 0, 0, width - value.shape[2]))
            elif key == "perceiver_attention":  # keys: S slots then K metadata tokens
                s_slots = batch["asv_mask"].shape[1]
                value = torch.cat([F.pad(value[..., :s_slots], (0, width - s_slots)),
                                   value[..., s_slots:]], dim=-1)
            per_batch.setdefault(key, []).append(value)
    place = np.argsort(np.concatenate(order))  # batch order -> sample order
    return {k: torch.cat(v).numpy()[place] for k, v in per_batch.items()}


def predict(bundle: ModelBundle, samples: AmpliconSamples, *,
            normalize_groups: Sequence | None = None, **kwargs) -> np.ndarray:
    """Predictions in the target's original units (regression) or class names.

    ``kwargs``: ``batch_size``, ``device``, ``categorical``, ``match_identity``, ``log`` (see
    :func:`predict_raw`).

    ``normalize_groups``: each sample's group label, for a model trained with
    the ``zscore-category`` transform (groups unseen in training use the
    global statistics, with a warning naming them).
    """
    transform = _transform(bundle, normalize_groups)
    raw = predict_raw(bundle, samples, **kwargs)
    if transform is not None:
        point = bundle.target.get("point_output", 0)
        return transform.inverse(raw[:, point], normalize_groups if transform.uses_groups
                                 else None, warn=kwargs.get("log", _stderr))
    classes = np.asarray(bundle.target["classes"], dtype=object)
    return classes[raw.argmax(axis=1)]
