"""Pretrain, train and predict with plain Python inputs (no QIIME 2).

These are what the plugin actions call, and what a script launched with
``torchrun``/``accelerate launch`` can call directly.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import ModelBundle, check_weights, library_versions
from .data import (AmpliconSamples, BatchCollator, asv_vocabulary, encode_categories,
                   fit_vocabularies, vocabulary_index)
from .engine import (Objective, TrainConfig, embed_features, fit, make_accelerator,
                     resolved_device)
from .explain import regression_accuracy
from .launch import Interrupted, in_distributed_run, run_workers
from .losses import RegressionLoss
from .model import AAMModel, ModelConfig
from .unifrac import MatrixDistances, TreeDistances
from .targets import (CENTRED_TRANSFORMS, DEFAULT_TARGET_TRANSFORM, TargetTransform,
                      balanced_class_weights, encode_classes, scale_warning)
from .tokenizer import tokenize

ENCODER_PREFIXES = ("nucleotide_encoder.", "sample_encoder.", "unifrac_head.")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: Fewest samples an epoch may train on.
MIN_TRAINING_SAMPLES = 2
#: Above this many classes, training warns that the column may be a number.
MANY_CLASSES = 20
#: Target values further than this many median absolute deviations from the median are
#: reported (real ages, weights, indices sit within a few tens).
OUTLIER_SCALES = 1000.0


def extreme_values(y: np.ndarray) -> np.ndarray:
    """Indices of values more than ``OUTLIER_SCALES`` robust scales from the median (the
    median absolute deviation, or the mean one when over half the values are equal)."""
    centre = np.median(y)
    deviation = np.abs(y - centre)
    scale = np.median(deviation) or deviation.mean()
    if not np.isfinite(scale) or scale == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(deviation > OUTLIER_SCALES * scale)


def _check_split(n: int, train_rows: np.ndarray, val_rows: np.ndarray, fraction: float) -> None:
    """Refuse a split that leaves too few samples to train on, naming the counts."""
    if len(train_rows) < MIN_TRAINING_SAMPLES:
        raise ValueError(
            f"{n} sample(s) with validation fraction {fraction:g} leave {len(train_rows)} for "
            f"training and {len(val_rows)} for validation; training needs at least "
            f"{MIN_TRAINING_SAMPLES}. Give more samples or a smaller validation fraction "
            "(--p-validation-fraction).")


def validation_split(n: int, fraction: float, seed: int,
                     groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and for validation (early stopping).

    With ``groups`` (e.g. subject IDs), whole groups go to one side, so no
    subject is on both. ``fraction=0`` gives no validation rows.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}.")
    rows = np.arange(n)
    if fraction == 0 or n < 2:
        return rows, rows[:0]
    rng = np.random.default_rng(seed)
    if groups is None:
        shuffled = rng.permutation(n)
        n_val = max(1, round(fraction * n))
        return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])
    groups = np.asarray([str(g) for g in groups], dtype=object)
    unique = np.array(sorted(set(groups)), dtype=object)
    if len(unique) < 2:
        raise ValueError("Validation by group needs at least 2 groups; got "
                         f"{len(unique)}. Pass more subjects or no groups.")
    chosen, count = [], 0
    for g in rng.permutation(unique):
        if count >= fraction * n:
            break
        chosen.append(g)
        count += int((groups == g).sum())
    val = np.isin(groups, chosen)
    if val.all():
        val[groups == chosen[0]] = False
    return rows[~val], rows[val]


def _distributable(action):
    """Let ``action(samples, data, ..., config=..., log=...)`` run in several processes.

    With ``config.num_processes > 1`` outside a distributed run, the call is
    repeated in that many worker processes (:func:`run_in_workers`) and rank
    0's model returned; inside a run (ours, torchrun's or accelerate's), only
    the first process logs. ``checkpoint_dir``, ``tensorboard_dir`` and
    ``progress`` go to ``engine.fit``.
    """
    import functools
    import inspect
    signature = inspect.signature(action)

    @functools.wraps(action)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = bound.arguments["config"]
        if config.num_processes > 1 and not in_distributed_run():
            return run_in_workers(action.__name__, bound.args, bound.kwargs, config)
        bound.arguments["log"] = _main_process_only(bound.arguments["log"])
        if in_distributed_run():
            return action(*bound.args, **bound.kwargs)
        with _sigterm_raises():
            return action(*bound.args, **bound.kwargs)
    return run


@contextlib.contextmanager
def _sigterm_raises():
    """In one process, SIGTERM (what ``kill`` and schedulers send) stops training like
    Ctrl-C: with an error (``launch.Interrupted``) that unwinds cleanly, instead of
    ending the process on the spot."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted("SIGTERM")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_in_workers(action: str, args: tuple, keywords: dict,
                   config: TrainConfig) -> ModelBundle:
    """Run ``pretrain`` or ``train`` in ``config.num_processes`` processes; return the model.

    Each worker runs the same action on the same inputs inside one process
    group; the training loop shards every batch over them (DDP). Rank 0
    writes the trained model to a temporary folder, which is read back here
    and removed. A worker's error is raised here (``launch.WorkerFailed``).
    Messages go to standard error (a function given as ``log`` stays here).
    """
    import tempfile
    keywords = {**keywords, "log": _stderr}
    with tempfile.TemporaryDirectory(prefix="q2-aam-model-") as folder:
        run_workers(_worker, (action, args, keywords, folder), config.num_processes)
        return ModelBundle.load(os.path.join(folder, "model"))


def _main_process_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """In a multi-process run, only the first process speaks."""
    return log if int(os.environ.get("RANK", "0")) == 0 else (lambda message: None)


def _worker(action: str, args: tuple, keywords: dict, folder: str) -> None:
    bundle = {"pretrain": pretrain, "train": train}[action](*args, **keywords)
    if int(os.environ.get("RANK", "0")) == 0:
        bundle.save(os.path.join(folder, "model"))


#: Settings of the pretrained encoder that a model started from it must share.
ENCODER_SETTINGS = ("embedding_dim", "attention_heads", "nucleotide_layers", "sample_layers",
                    "patch_size", "max_sequence_length")


def _architecture(overrides: dict | None, pretrained: ModelBundle | None, *, task: str,
                  n_outputs: int, max_length: int, **head) -> ModelConfig:
    """The model's config: the pretrained encoder's (or defaults), target-branch overrides."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if pretrained is not None:
        base = {k: v for k, v in pretrained.model_config.items() if k in ENCODER_SETTINGS}
        base["dropout"] = pretrained.model_config["dropout"]
        base["nucleotide_dropout"] = ModelConfig.from_dict(
            pretrained.model_config).nucleotide_dropout
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


#: The longest sequence a new model accepts: past a full-length 16S gene (about 1,550 nt),
#: a sequence is almost surely not an amplicon, and attention over it costs minutes an epoch.
NEW_MODEL_MAX_LENGTH = 2000


def _tokens(samples: AmpliconSamples, max_length: int | None = None, log=_stderr) -> np.ndarray:
    if max_length is None:
        lengths = np.fromiter(map(len, samples.sequences), dtype=np.int64,
                              count=len(samples.sequences))
        long = np.flatnonzero(lengths > NEW_MODEL_MAX_LENGTH)
        if len(long):
            raise ValueError(
                f"{len(long)} feature sequence(s) are longer than the {NEW_MODEL_MAX_LENGTH} nt "
                "a model reads (a full-length 16S gene is about 1,550 nt): " + ", ".join(
                    f"{samples.feature_ids[i]!r} ({lengths[i]} nt)" for i in long[:3])
                + ". Trim the sequences to the amplicon (e.g. 'qiime feature-classifier "
                "extract-reads' or cutadapt) or filter these features from the table.")
    tokenized = tokenize(samples.sequences, names=samples.feature_ids, max_length=max_length)
    if tokenized.n_ambiguous:
        log(f"{tokenized.n_ambiguous} feature sequence(s) hold IUPAC ambiguity codes; each such "
            "nucleotide is read as 'N'.")
    return tokenized.tokens


def pair_distances(distances, n: int) -> MatrixDistances | TreeDistances | None:
    """``distances`` (an ``(n, n)`` array, or a :class:`TreeDistances`) as the loss reads
    them, checked to cover the ``n`` samples."""
    if distances is None:
        return None
    if not isinstance(distances, (MatrixDistances, TreeDistances)):
        distances = MatrixDistances(distances)
    if len(distances) != n:
        raise ValueError(f"The distances cover {len(distances)} samples, but there are {n} "
                         "samples; they must hold exactly the same samples.")
    return distances


@_distributable
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
        distances: ``(n, n)`` UniFrac distances between ``samples``, same order, or a
            :class:`~q2_aam.core.unifrac.TreeDistances` that computes each batch's pairs
            (``None`` only with ``unifrac_weight=0``).
        config, checkpoint_dir, tensorboard_dir, progress: see :func:`_distributable`.
    """
    if unifrac_weight > 0 and distances is None:
        raise ValueError("unifrac_weight > 0 needs UniFrac distances (a phylogeny or a "
                         "distance matrix).")
    distances = pair_distances(distances, len(samples))
    tokens = _tokens(samples, log=log)
    model_config = _architecture(architecture, None, task="encoder", n_outputs=0,
                                 max_length=tokens.shape[1])
    torch.manual_seed(config.seed)
    model = AAMModel(model_config)
    train_rows, val_rows = validation_split(len(samples), validation_fraction, config.seed, groups)
    _check_split(len(samples), train_rows, val_rows, validation_fraction)
    objective = Objective(task="encoder", target_weight=0.0, unifrac_weight=unifrac_weight,
                          mlm_weight=mlm_weight, mask_rate=mask_rate,
                          distances=distances)
    log(f"Pretraining on {len(train_rows)} samples ({len(val_rows)} for validation), "
        f"{len(samples.feature_ids)} ASVs, token limit {samples.token_limit}.")
    history = fit(model, BatchCollator(samples.subset(train_rows), tokens, global_index=train_rows),
                  BatchCollator(samples.subset(val_rows), tokens, global_index=val_rows)
                  if len(val_rows) else None, objective, config, log=log,
                  checkpoint_dir=checkpoint_dir, tensorboard_dir=tensorboard_dir,
                  progress=progress)
    return ModelBundle(
        kind="encoder", model_config=model_config.to_dict(),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        training={"action": "pretrain", "config": config.to_dict(),
                  "device": resolved_device(config.device),
                  "objective": {"unifrac_weight": unifrac_weight, "mlm_weight": mlm_weight,
                                "mask_rate": mask_rate},
                  "token_limit": samples.token_limit, "n_samples": len(samples),
                  "n_train": len(train_rows), "n_validation": len(val_rows),
                  "history": history},
        versions=library_versions())


def regression_metrics(transform: TargetTransform, point: int, groups: np.ndarray | None):
    """Validation MAE and R² in the target's original units."""
    def metrics(prediction: np.ndarray, target: np.ndarray, rows: np.ndarray) -> dict:
        g = None if groups is None else groups[rows]
        y_hat = transform.inverse(prediction[:, point], g)
        y = transform.inverse(target.reshape(-1), g)
        scores = regression_accuracy(y, y_hat)
        return {"mae": scores["mae"], "r2": scores["r2"]}
    return metrics


def classification_metrics(prediction: np.ndarray, target: np.ndarray, rows=None) -> dict:
    return {"accuracy": float((prediction.argmax(-1) == target).mean())}


def check_regression_settings(y_train: np.ndarray, transform: TargetTransform,
                              output_constraint: str,
                              normalize_by: Sequence[str] | None) -> list | None:
    """Refuse contradictory target settings before training; return the output bounds.

    ``y_train`` is on the scale the model learns (after the transform) when
    the bounds are wanted. Nothing is switched on implicitly: a transform
    never changes the output constraint, and each conflict is an error that
    says why.
    """
    if normalize_by and transform.kind != "zscore-category":
        raise ValueError(f"normalize-by ({', '.join(normalize_by)}) is used only by the "
                         f"'zscore-category' target transform, not {transform.kind!r}. Choose "
                         "--p-target-transform zscore-category or leave --p-normalize-by out.")
    if transform.kind == "zscore-category" and not normalize_by:
        raise ValueError("The 'zscore-category' transform z-scores the target within groups; "
                         "name the categorical column(s) with --p-normalize-by.")
    if output_constraint.startswith("nonnegative"):
        if transform.kind in CENTRED_TRANSFORMS:
            raise ValueError(
                f"--p-output-constraint {output_constraint} keeps outputs >= 0, but the "
                f"{transform.kind!r} transform centres the target at 0, so about half of the "
                "training targets are negative on the scale the model learns. Use 'bounded', "
                "or a 'none', 'minmax' or 'log-minmax' transform.")
        if (y_train < 0).any() and transform.kind == "none":
            raise ValueError(
                f"--p-output-constraint {output_constraint} keeps outputs >= 0, but "
                f"{int((y_train < 0).sum())} training target(s) are negative (smallest "
                f"{y_train.min():g}). Use 'none' or 'bounded'.")
    if output_constraint == "bounded":
        low, high = float(y_train.min()), float(y_train.max())
        if not low < high:
            raise ValueError("'bounded' needs training targets that are not all equal.")
        return [low, high]
    return None


@_distributable
def train(samples: AmpliconSamples, targets: Sequence, *, task: str, target_name: str = "target",
          architecture: dict | None = None, config: TrainConfig = TrainConfig(),
          pretrained: ModelBundle | None = None, freeze_encoder: bool = False,
          target_transform: str = DEFAULT_TARGET_TRANSFORM,
          loss: RegressionLoss | str = "huber",
          output_constraint: str = "none", normalize_groups: Sequence | None = None,
          normalize_by: Sequence[str] | None = None, class_weights: str = "none",
          categorical: dict | None = None,
          distances=None, unifrac_weight: float = 0.0,
          mlm_weight: float = 0.0, mask_rate: float = 0.15,
          validation_fraction: float = 0.2, groups: Sequence | None = None,
          asv_min_samples: int = 2, linear_readout: bool = True, phylogeny=None,
          checkpoint_dir: str | None = None, tensorboard_dir: str | None = None,
          progress: bool | None = None,
          log: Callable[[str], None] = _stderr) -> ModelBundle:
    """Train a regressor (numeric ``targets``) or classifier (labels).

    Args:
        samples: training samples, aligned with ``targets`` (no missing values).
        task: ``regression`` or ``classification``.
        pretrained: start the encoder from this model's weights.
        freeze_encoder: keep the pretrained encoder fixed (its ASV embeddings
            are then computed once and cached).
        distances: optional UniFrac distances between ``samples`` for the
            auxiliary UniFrac loss (``unifrac_weight`` > 0).
        target_transform, output_constraint, loss: see ``targets``,
            ``model.OutputConstraint`` and ``losses.RegressionLoss``.
        normalize_groups: each sample's group label (``zscore-category``),
            from the columns named ``normalize_by``.
        class_weights: ``none`` or ``balanced`` (classification).
        categorical: ``{column: per-sample values}`` to condition on, with
            the fusion settings (``categorical_fusion``, ...) in
            ``architecture``. Missing values and values not seen in the
            training rows map to the 'unknown' embedding.
        asv_min_samples: ASVs held by this many training samples or more get
            an identity embedding of their own (0: none; see ``data.asv_vocabulary``).
        linear_readout: add a linear model of these ASVs' log abundances and presences,
            fitted in closed form before training (ridge, elastic net or relaxed lasso,
            whichever cross-validates best; see ``linear``); the network learns the rest.
            With cross-attention its coefficients also depend on the category values
            (``architecture['linear_conditional']`` overrides this choice).
        phylogeny: a ``skbio.TreeNode`` whose tips include the ASVs: the readout (for
            regression) then also has the log abundance of each clade.
        config, checkpoint_dir, tensorboard_dir, progress: see :func:`_distributable`.
    """
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}.")
    if len(targets) != len(samples):
        raise ValueError(f"{len(targets)} targets for {len(samples)} samples.")
    if freeze_encoder and pretrained is None:
        raise ValueError("freeze_encoder needs a pretrained encoder to freeze; pass one or "
                         "do not freeze.")
    tokens = _tokens(samples, max_length=pretrained.model_config["max_sequence_length"]
                     if pretrained else None, log=log)
    train_rows, val_rows = validation_split(len(samples), validation_fraction, config.seed, groups)
    _check_split(len(samples), train_rows, val_rows, validation_fraction)
    target_info: dict = {"name": target_name}
    loss = RegressionLoss(kind=loss) if isinstance(loss, str) else loss
    weights = bounds = None
    if task == "regression":
        if class_weights != "none":
            raise ValueError("Class weights apply to classification only.")
        y = np.asarray(targets, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("The target holds missing or non-finite values; drop those "
                             "samples first.")
        transform = TargetTransform(target_transform)
        check_regression_settings(y[train_rows], transform, "none", normalize_by)
        if output_constraint.startswith("nonnegative"):
            check_regression_settings(y[train_rows], transform, output_constraint, normalize_by)
        groups_all = None
        if transform.uses_groups:
            if normalize_groups is None or len(normalize_groups) != len(samples):
                raise ValueError("zscore-category needs one group label per sample.")
            groups_all = np.asarray([str(g) for g in normalize_groups], dtype=object)
        warning = scale_warning(y[train_rows], transform.kind)
        if warning:
            log(f"Warning: {warning}")
        outliers = extreme_values(y)
        if len(outliers):
            log(f"Warning: {len(outliers)} target value(s) lie extremely far from the others "
                f"(over {OUTLIER_SCALES:g} median absolute deviations from the median "
                f"{np.median(y):g}): " + ", ".join(
                    f"{samples.sample_ids[i]} = {y[i]:g}" for i in outliers[:5])
                + ". Check them for unit or entry errors; the model will try to fit them.")
        with np.errstate(over="ignore", invalid="ignore"):
            transform.fit(y[train_rows], None if groups_all is None else groups_all[train_rows])
        if transform.uses_groups:
            transform.stats["columns"] = list(normalize_by)
        with np.errstate(over="ignore", invalid="ignore"):
            encoded = transform.transform(y, groups_all).astype(np.float32)
        if not np.isfinite(encoded).all() or not all(
                np.isfinite(v).all() for v in transform.stats.values()
                if isinstance(v, (int, float, np.ndarray))):
            raise ValueError(
                f"The target cannot be scaled with {transform.kind!r}: its values (from "
                f"{y.min():g} to {y.max():g}) overflow. Check the largest for unit or entry "
                "errors.")
        bounds = check_regression_settings(encoded[train_rows].astype(np.float64), transform,
                                           output_constraint, normalize_by)
        n_outputs = loss.n_outputs
        metrics = regression_metrics(transform, loss.point_output, groups_all)
        target_info.update(transform=transform.to_dict(), loss=loss.to_dict(),
                           point_output=loss.point_output,
                           normalize_by=list(normalize_by or []))
    else:
        if output_constraint != "none" or target_transform != DEFAULT_TARGET_TRANSFORM \
                or loss.kind != "huber" \
                or normalize_by:
            raise ValueError("Target transforms, output constraints, regression losses and "
                             "normalize-by apply to numeric targets only; a class is learned "
                             "with cross-entropy.")
        classes, encoded = encode_classes(targets)
        if len(classes) < 2:
            raise ValueError(f"Classification needs at least 2 classes; the target has "
                             f"{classes}.")
        sizes = np.bincount(encoded, minlength=len(classes))
        rare = [f"{classes[k]!r} ({sizes[k]})" for k in np.flatnonzero(sizes < 2)]
        if rare:
            raise ValueError(f"Each class needs at least 2 samples; {len(rare)} class(es) have "
                             f"fewer: {', '.join(rare[:5])}. Drop or merge rare classes first.")
        if len(classes) > MANY_CLASSES:
            log(f"Warning: the target has {len(classes)} classes (at most "
                f"{sizes.min()} samples in the rarest). If it is a numeric column, "
                "--p-task regression predicts it as a number.")
        if class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {class_weights!r}.")
        if class_weights == "balanced":
            weights = torch.as_tensor(balanced_class_weights(encoded[train_rows], len(classes)),
                                      dtype=torch.float32)
        n_outputs, metrics = len(classes), classification_metrics
        target_info.update(classes=classes, class_weights=class_weights)
    cats, cardinalities = None, []
    if categorical:
        vocabularies = fit_vocabularies(categorical, train_rows)
        empty = [c for c, v in vocabularies.items() if not v]
        if empty:
            raise ValueError(f"The categorical column(s) {empty} have no values in the "
                             "training samples.")
        cats = encode_categories(categorical, vocabularies, warn=log)
        cardinalities = [len(v) + 1 for v in vocabularies.values()]
        target_info["categorical"] = {"columns": list(vocabularies),
                                      "vocabularies": vocabularies}
    else:
        wanted = {k: (architecture or {}).get(k) for k in
                  ("categorical_fusion", "film_conditioning", "conditional_output_scaling")}
        if wanted["categorical_fusion"] not in (None, "none") or wanted["film_conditioning"] \
                or wanted["conditional_output_scaling"]:
            log("No categorical columns were given, so categorical conditioning is a no-op.")
    vocabulary = (asv_vocabulary(samples.subset(train_rows), asv_min_samples)
                  if asv_min_samples > 0 else [])
    target_info["asv_vocabulary"] = vocabulary
    if linear_readout and not vocabulary:
        log(f"No ASV is held by {asv_min_samples} or more training samples, so the model has "
            "no linear readout.")
    rows_in_vocabulary = vocabulary_index(samples.sequences, vocabulary) if vocabulary else None
    readout = linear_readout and bool(vocabulary)
    clade_rows = clade_ids = None
    if readout and phylogeny is not None and task == "regression":
        from .linear import clades, relative_matrix
        tip_columns = {name: int(row) - 1 for name, row in
                       zip(samples.feature_ids, rows_in_vocabulary) if row}
        clade_rows, clade_ids = clades(phylogeny, tip_columns, relative_matrix(
            samples.subset(train_rows), rows_in_vocabulary, len(vocabulary)))
    fusion = (architecture or {}).get("categorical_fusion") if cardinalities else None
    conditional = (architecture or {}).get("linear_conditional")
    if conditional is None:
        conditional = fusion == "cross-attention"
    model_config = _architecture(
        {k: v for k, v in (architecture or {}).items() if k != "linear_conditional"},
        pretrained, task=task, n_outputs=n_outputs,
        max_length=tokens.shape[1], output_constraint=output_constraint,
        output_bounds=bounds, categorical_cardinalities=cardinalities,
        asv_vocabulary_size=len(vocabulary), linear_readout=readout, linear_presence=readout,
        linear_clades=0 if clade_ids is None or not len(clade_ids) else int(clade_ids.max()) + 1,
        linear_clade_memberships=0 if clade_ids is None else len(clade_ids),
        linear_conditional=bool(readout and conditional and cardinalities
                                and task == "regression"))
    torch.manual_seed(config.seed)
    model = AAMModel(model_config)
    if model.linear_clade is not None:
        model.clade_rows.copy_(torch.as_tensor(clade_rows))
        model.clade_ids.copy_(torch.as_tensor(clade_ids))
    if pretrained is not None:
        encoder_state = {k: v for k, v in pretrained.state_dict.items()
                         if k.startswith(ENCODER_PREFIXES)}
        check_weights(model, encoder_state, pretrained.model_config, pretrained.source,
                      prefixes=ENCODER_PREFIXES)
        missing, _ = model.load_state_dict(encoder_state, strict=False)
        absent = [k for k in missing if k.startswith(ENCODER_PREFIXES)]
        if absent:
            raise ValueError(f"The pretrained model lacks encoder weights {absent[:3]}.")
    if model.linear is not None:
        from .linear import fit_readout
        log("Linear readout: " + fit_readout(
            model, samples.subset(train_rows), rows_in_vocabulary,
            model.output_constraint.inverse(encoded[train_rows]) if task == "regression"
            else encoded[train_rows], task,
            None if groups is None else np.asarray([str(g) for g in groups])[train_rows],
            class_weights, None if cats is None else cats[train_rows]) + ".")
    dist = None
    if unifrac_weight > 0:
        if distances is None:
            raise ValueError("unifrac_weight > 0 needs UniFrac distances (a phylogeny or a "
                             "distance matrix).")
        dist = pair_distances(distances, len(samples))
    objective = Objective(task=task, target_weight=1.0, unifrac_weight=unifrac_weight,
                          mlm_weight=mlm_weight, mask_rate=mask_rate, regression_loss=loss,
                          class_weights=weights, distances=dist)
    log(f"Training a {task} model for {target_name!r} on {len(train_rows)} samples "
        f"({len(val_rows)} for validation), {len(samples.feature_ids)} ASVs, "
        f"token limit {samples.token_limit}"
        + (", from a pretrained encoder" + (" (frozen)" if freeze_encoder else "")
           if pretrained else "") + ".")
    def rows_of(array, rows):
        return None if array is None else array[rows]
    train_c = BatchCollator(samples.subset(train_rows), tokens, encoded[train_rows],
                            global_index=train_rows, categories=rows_of(cats, train_rows),
                            vocabulary=rows_in_vocabulary)
    val_c = (BatchCollator(samples.subset(val_rows), tokens, encoded[val_rows],
                           global_index=val_rows, categories=rows_of(cats, val_rows),
                           vocabulary=rows_in_vocabulary)
             if len(val_rows) else None)
    history = fit(model, train_c, val_c, objective, config, freeze_encoder=freeze_encoder,
                  metrics=metrics, log=log, checkpoint_dir=checkpoint_dir,
                  tensorboard_dir=tensorboard_dir, progress=progress)
    return ModelBundle(
        kind="regressor" if task == "regression" else "classifier",
        model_config=model_config.to_dict(),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        target=target_info,
        training={"action": "train", "config": config.to_dict(),
                  "device": resolved_device(config.device),
                  "objective": {"unifrac_weight": unifrac_weight, "mlm_weight": mlm_weight,
                                "mask_rate": mask_rate},
                  "pretrained": pretrained is not None, "freeze_encoder": freeze_encoder,
                  "token_limit": samples.token_limit, "n_samples": len(samples),
                  "n_train": len(train_rows), "n_validation": len(val_rows),
                  "history": history},
        versions=library_versions())


@torch.no_grad()
def predict_raw(bundle: ModelBundle, samples: AmpliconSamples, *, batch_size: int = 64,
                device: str = "auto", categorical: dict | None = None,
                log: Callable[[str], None] = _stderr) -> np.ndarray:
    """The model's raw outputs ``(n, n_outputs)`` (transformed scale / logits).

    Each distinct ASV is encoded once for the whole table. ``categorical``:
    ``{column: per-sample values}`` for a model conditioned on metadata.
    """
    outputs = model_outputs(bundle, samples, batch_size=batch_size, device=device,
                            categorical=categorical, log=log)
    return outputs["prediction"]


def _batches(bundle: ModelBundle, samples: AmpliconSamples, batch_size: int, device: str,
             categorical: dict | None, log: Callable[[str], None]):
    """``(model, batch, asv_embeddings, rows)`` for batches of ``samples`` (``rows``: which
    samples, by position), each distinct ASV encoded once; the metadata encoded with the
    model's vocabularies.

    Batches hold samples of similar length (samples ordered by their number of ASVs), so
    that padding slots cost almost nothing: in random batches of 8 to 16 ECAM or karelia
    samples, about half of all slots were padding. The outputs of a sample do not depend
    on its batch (padding is masked out), so callers put them back in place by ``rows``.
    """
    accelerator = make_accelerator(device)
    model = bundle.build_model().to(accelerator.device)
    tokens = _tokens(samples, max_length=model.config.max_sequence_length, log=log)
    table = embed_features(model, tokens, np.unique(samples.indices), accelerator.device)
    cats = None
    vocabularies = bundle.target.get("categorical", {}).get("vocabularies")
    if vocabularies:
        if categorical is None:
            raise ValueError(f"This model is conditioned on the metadata column(s) "
                             f"{list(vocabularies)}; pass the sample metadata holding them.")
        cats = encode_categories(categorical, vocabularies, warn=log)
    vocabulary = bundle.target.get("asv_vocabulary")
    collator = BatchCollator(samples, tokens, categories=cats,
                             vocabulary=vocabulary_index(samples.sequences, vocabulary)
                             if vocabulary else None)
    order = np.argsort(np.diff(samples.indptr), kind="stable")
    for start in range(0, len(samples), batch_size):
        rows = order[start:start + batch_size]
        batch = collator(rows)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        yield model, batch, table[batch["asv_feature"]], rows


def conditioning_response(bundle: ModelBundle, samples: AmpliconSamples, *,
                          categorical: dict, normalize_groups: Sequence | None = None,
                          batch_size: int = 16, device: str = "auto",
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
    transform = None
    if bundle.kind == "regressor":
        transform = TargetTransform.from_dict(bundle.target["transform"])
        if transform.uses_groups and normalize_groups is None:
            raise ValueError(f"This model z-scores its target within groups of "
                             f"{bundle.target.get('normalize_by')}; pass each sample's values "
                             "of these columns.")
        if transform.uses_groups:  # groups unseen in training: said once, here
            transform.inverse(np.zeros(len(samples)), normalize_groups, warn=log)
    point = bundle.target.get("point_output", 0)
    result = np.full((len(samples), samples.token_limit,
                      len(bundle.target["categorical"]["columns"])), np.nan)
    for model, batch, embeddings, rows in _batches(bundle, samples, batch_size, device,
                                                   categorical, log):
        plain, patched = (t.double().cpu() for t in model.conditioning_response(batch,
                                                                              embeddings))
        n, width = patched.shape[:2]
        if transform is None:  # total variation between class-probability vectors (NaN stays)
            change = 0.5 * (patched.softmax(-1) - plain.softmax(-1)[:, None, None, None]
                            ).abs().sum(-1).numpy()
        else:
            plain, patched = plain.numpy(), patched.numpy()
            groups = (None if not transform.uses_groups else
                      np.asarray(normalize_groups, dtype=object)[rows])
            flat = patched[..., point].reshape(n, -1)
            per_value = np.repeat(groups, flat.shape[1]) if groups is not None else None
            values = transform.inverse(flat.ravel(), per_value).reshape(patched.shape[:-1])
            change = np.abs(values - transform.inverse(plain[:, point],
                                                       groups)[:, None, None, None])
        with warnings.catch_warnings():  # a slot or column with no other value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            result[rows, :width] = np.nanmean(change, axis=-1)  # over other values
    return result


@torch.no_grad()
def model_outputs(bundle: ModelBundle, samples: AmpliconSamples, *, batch_size: int = 64,
                  device: str = "auto", categorical: dict | None = None,
                  log: Callable[[str], None] = _stderr) -> dict:
    """Every per-sample output of the model: ``prediction``, ``sample_embedding``, and,
    by fusion mode, ``gmu_gate`` ``(n, D)``, ``cross_attention`` ``(n, heads, S, K)`` or
    ``perceiver_attention`` ``(n, heads, latents, S + K)`` (ASV slots padded to the
    token limit; slot ``j`` of sample ``i`` is its ``j``-th most abundant ASV)."""
    if bundle.kind == "encoder":
        raise ValueError("This model is a pretrained encoder; it predicts nothing. Train a "
                         "regressor or classifier from it with 'train'.")
    per_batch: dict = {}
    order = []
    width = samples.token_limit
    for model, batch, embeddings, rows in _batches(bundle, samples, batch_size, device,
                                                   categorical, log):
        order.append(rows)
        out = model(batch, asv_embeddings=embeddings)
        for key in ("prediction", "sample_embedding", "gmu_gate", "cross_attention",
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
    # kwargs: batch_size, device, categorical, log (see predict_raw)
    """Predictions in the target's original units (regression) or class names.

    ``normalize_groups``: each sample's group label, for a model trained with
    the ``zscore-category`` transform (groups unseen in training use the
    global statistics, with a warning naming them).
    """
    raw = predict_raw(bundle, samples, **kwargs)
    if bundle.kind == "regressor":
        transform = TargetTransform.from_dict(bundle.target["transform"])
        if transform.uses_groups and normalize_groups is None:
            raise ValueError(
                f"This model z-scores its target within groups of "
                f"{bundle.target.get('normalize_by')}; pass each sample's values of "
                "these columns.")
        point = bundle.target.get("point_output", 0)
        return transform.inverse(raw[:, point], normalize_groups if transform.uses_groups
                                 else None, warn=kwargs.get("log", _stderr))
    classes = np.asarray(bundle.target["classes"], dtype=object)
    return classes[raw.argmax(axis=1)]
