"""The actions: QIIME 2 views -> the torch core -> artifacts.

(No ``from __future__ import annotations`` here: QIIME 2 reads the view types
from the annotations at run time.)

No model math here: this module checks and converts inputs, calls
``q2_aam.core.api`` and returns what QIIME 2 wraps.
"""

import os
import sys
import tempfile

import biom
import numpy as np
import pandas as pd
import qiime2
import skbio

from .core.bundle import ModelBundle
from .core.targets import DEFAULT_QUANTILES, DEFAULT_TARGET_TRANSFORM

UNIFRAC_METRICS = ("unweighted", "weighted-normalized")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _examples(ids, n: int = 3) -> str:
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def feature_sequences(table: biom.Table, sequences: pd.Series | None) -> list[str]:
    """The DNA sequence of each table feature, from ``sequences`` or the feature IDs."""
    from .core.tokenizer import is_dna
    ids = [str(i) for i in table.ids(axis="observation")]
    if sequences is None:
        bad = [i for i in ids if not is_dna(i)]
        if bad:
            raise ValueError(
                f"No sequences were given (--i-sequences) and {len(bad)} of {len(ids)} feature "
                f"IDs are not DNA sequences ({_examples(bad)}). Pass the representative "
                "sequences as FeatureData[Sequence].")
        return [i.upper() for i in ids]
    lookup = {str(k): str(v) for k, v in sequences.items()}
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} of the table's {len(ids)} features have no sequence in "
                         f"--i-sequences ({_examples(missing)}). Pass the sequences that belong "
                         "to this table (e.g. from the same DADA2/Deblur run).")
    return [lookup[i] for i in ids]


def amplicon_samples(table: biom.Table, sequences: pd.Series | None, token_limit: int,
                     sample_ids=None):
    """The table (optionally only ``sample_ids``, in that order) as core samples."""
    from .core.data import AmpliconSamples
    if table.is_empty():
        raise ValueError(f"The feature table is empty ({table.shape[0]} features x "
                         f"{table.shape[1]} samples, no counts). Check the filtering that made "
                         "it, e.g. with 'qiime feature-table summarize'.")
    if sample_ids is not None:
        table = table.filter(list(sample_ids), axis="sample", inplace=False)
        table = table.sort_order(list(sample_ids), axis="sample")
    counts = table.matrix_data.T.tocsr()  # (samples, features)
    fractional = np.flatnonzero(np.mod(counts.data, 1) != 0) if counts.nnz else []
    if len(fractional):
        row = int(np.searchsorted(counts.indptr, fractional[0], side="right") - 1)
        _log(f"The feature table holds {len(fractional)} non-integer value(s) (e.g. "
             f"{counts.data[fractional[0]]:g} in sample {str(table.ids()[row])!r}), so it is "
             "not a table of read counts: each sample is read as relative abundances (values "
             "/ the sample's total), and the model's log-count input no longer reflects read "
             "depth. Give a table of read counts (FeatureTable[Frequency] from DADA2 or "
             "Deblur) if you have one.")
    return AmpliconSamples.from_counts(
        counts, [str(i) for i in table.ids()], [str(i) for i in table.ids(axis="observation")],
        feature_sequences(table, sequences), token_limit)


#: Up to this many samples, UniFrac is computed once as a full matrix (fastest); past it,
#: per batch from the tree (core.unifrac.TreeDistances), since n x n doubles outgrow memory
#: (5,000 samples: 200 MB; 100,000: 80 GB).
UNIFRAC_MATRIX_MAX_SAMPLES = 5000


def _check_tips(samples, phylogeny: skbio.TreeNode):
    """The kept counts ``(features, samples)``, the features the model sees and their IDs;
    refuses a phylogeny that lacks any of them."""
    kept = samples.kept_counts().T.tocsr()  # (features, samples)
    used = np.flatnonzero(np.asarray(kept.sum(axis=1)).ravel() > 0)
    feature_ids = [samples.feature_ids[i] for i in used]
    tips = {t.name for t in phylogeny.tips()}
    missing = [f for f in feature_ids if f not in tips]
    if missing:
        raise ValueError(f"{len(missing)} feature(s) are not tips of the phylogeny "
                         f"({_examples(missing)}). Use a tree built from these sequences "
                         "(e.g. qiime phylogeny align-to-tree-mafft-fasttree).")
    return kept, used, feature_ids


def unifrac_distances(samples, phylogeny: skbio.TreeNode | None,
                      distance_matrix: skbio.DistanceMatrix | None, metric: str):
    """``(n, n)`` distances between ``samples``, in their order, or, past
    ``UNIFRAC_MATRIX_MAX_SAMPLES`` samples with a phylogeny, a ``TreeDistances`` that computes
    each batch's pairs.

    From the given matrix, or UniFrac computed on the counts the model sees
    (each sample's ``token_limit`` most abundant ASVs).
    """
    if phylogeny is not None and distance_matrix is not None:
        raise ValueError("Give either a phylogeny or a distance matrix, not both.")
    ids = samples.sample_ids
    if distance_matrix is not None:
        missing = [i for i in ids if i not in distance_matrix.ids]
        if missing:
            raise ValueError(f"{len(missing)} sample(s) of the table are not in the distance "
                             f"matrix ({_examples(missing)}). Use a matrix computed on the "
                             "same samples.")
        return distance_matrix.filter(ids).data
    if phylogeny is None:
        raise ValueError("UniFrac needs a rooted phylogeny (--i-phylogeny) or a distance "
                         "matrix (--i-distance-matrix).")
    import unifrac
    if metric not in UNIFRAC_METRICS:
        raise ValueError(f"UniFrac metric must be one of {UNIFRAC_METRICS}, got {metric!r}.")
    kept, used, feature_ids = _check_tips(samples, phylogeny)
    if len(ids) > UNIFRAC_MATRIX_MAX_SAMPLES:
        from .core.unifrac import TreeDistances
        _log(f"{len(ids)} samples: {metric} UniFrac is computed for each batch's pairs as "
             f"training needs them (past {UNIFRAC_MATRIX_MAX_SAMPLES} samples the full matrix "
             "is not held in memory).")
        return TreeDistances(samples, phylogeny, metric)
    table = biom.Table(kept[used], feature_ids, ids)
    _log(f"Computing {metric} UniFrac for {len(ids)} samples on the ASVs the model sees.")
    if metric == "unweighted":
        result = unifrac.unweighted(table, phylogeny)
    else:
        # unifrac 1.2 reads weighted UniFrac's inputs from files only (it passes str(table)
        # on), so they go through a BIOM HDF5 file and a Newick file.
        with tempfile.TemporaryDirectory(prefix="q2-aam-unifrac-") as folder:
            table_path, tree_path = os.path.join(folder, "table.biom"), \
                os.path.join(folder, "tree.nwk")
            with biom.util.biom_open(table_path, "w") as handle:
                table.to_hdf5(handle, "q2-aam")
            phylogeny.write(tree_path, format="newick")
            result = unifrac.weighted_normalized(table_path, tree_path)
    return result.filter(ids).data


def _distances_if_used(samples, phylogeny, distance_matrix, metric, weight,
                       clades: bool = False):
    """UniFrac distances when the UniFrac loss is on; refuse inputs that would go unused
    (``clades``: the phylogeny is used by the linear readout's clades)."""
    if weight > 0:
        return unifrac_distances(samples, phylogeny, distance_matrix, metric)
    if distance_matrix is not None:
        raise ValueError("A distance matrix was given, but --p-unifrac-weight is 0, so it "
                         "would not be used. Set --p-unifrac-weight (e.g. 0.1) to use "
                         "UniFrac, or leave the input out.")
    if phylogeny is not None and clades:
        _check_tips(samples, phylogeny)
        return None
    if phylogeny is not None:
        raise ValueError("A phylogeny was given, but it would not be used: --p-unifrac-weight "
                         "is 0, and the linear readout's clades need --p-task regression "
                         "with --p-linear-readout. Set --p-unifrac-weight (e.g. 0.1) to use "
                         "UniFrac, or leave the input out.")
    return None


OPTIMISATION = ("epochs", "batch_size", "learning_rate", "weight_decay", "warmup_fraction",
                "patience", "num_processes", "distributed", "mixed_precision",
                "gradient_accumulation_steps", "activation_checkpointing")
ARCHITECTURE = ("embedding_dim", "attention_heads", "nucleotide_layers", "sample_layers",
                "patch_size", "target_layers", "dropout", "nucleotide_dropout")


def _settings(params: dict):
    """The core's ``TrainConfig`` and architecture overrides from an action's parameters.

    Also checks the output folders now, before the (slow) UniFrac computation.
    """
    from .core.engine import TrainConfig, writable_directory
    for name, what in (("checkpoint_dir", "checkpoint"), ("tensorboard_dir", "TensorBoard")):
        if params.get(name):
            writable_directory(params[name], what)
    config = TrainConfig(**{k: params[k] for k in OPTIMISATION}, seed=params["random_seed"],
                         device=params["device"])
    return config, {k: params[k] for k in ARCHITECTURE if k in params}


def _groups(subjects: qiime2.Metadata | None, sample_ids):
    if subjects is None:
        return None
    series = subjects.to_series()
    missing = [i for i in sample_ids if i not in series.index or pd.isna(series.get(i))]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) have no value in the subjects column "
                         f"{series.name!r} ({_examples(missing)}).")
    return series.loc[list(sample_ids)].astype(str).to_numpy()


def pretrain(table: biom.Table, sequences: pd.Series = None,
             phylogeny: skbio.TreeNode = None, distance_matrix: skbio.DistanceMatrix = None,
             subjects: qiime2.CategoricalMetadataColumn = None,
             unifrac_metric: str = "unweighted", token_limit: int = 256,
             embedding_dim: int = 64, attention_heads: int = 4, nucleotide_layers: int = 2,
             sample_layers: int = 2, patch_size: int = 4, dropout: float = 0.1,
             nucleotide_dropout: float = 0.0, epochs: int = 10, batch_size: int = 16, learning_rate: float = 1e-3,
             weight_decay: float = 0.01, warmup_fraction: float = 0.05, patience: int = 10,
             validation_fraction: float = 0.1, unifrac_weight: float = 1.0,
             mlm_weight: float = 1.0, mask_rate: float = 0.15, random_seed: int = 0,
             device: str = "auto", num_processes: int = 1, distributed: str = "ddp",
             mixed_precision: str = "no",
             gradient_accumulation_steps: int = 1, activation_checkpointing: bool = False,
             checkpoint_dir: str = None, tensorboard_dir: str = None) -> ModelBundle:
    from .core import api
    config, architecture = _settings(locals())
    samples = amplicon_samples(table, sequences, token_limit)
    distances = _distances_if_used(samples, phylogeny, distance_matrix, unifrac_metric,
                                   unifrac_weight)
    return api.pretrain(samples, distances, architecture=architecture, config=config,
                        unifrac_weight=unifrac_weight, mlm_weight=mlm_weight,
                        mask_rate=mask_rate, validation_fraction=validation_fraction,
                        groups=_groups(subjects, samples.sample_ids),
                        checkpoint_dir=checkpoint_dir, tensorboard_dir=tensorboard_dir,
                        log=_log)


#: Default of train's regression loss (the transform's is in core.targets, chosen by
#: benchmarks/targets.py).
DEFAULT_LOSS = "huber"


def _categorical_frame(sample_metadata, columns, sample_ids, parameter, required=True):
    """The categorical ``columns`` of the sample metadata, one row per sample (in order).

    ``parameter`` names the option that asked for them, for error messages.
    """
    if sample_metadata is None:
        raise ValueError(f"{parameter} {' '.join(columns)} needs the metadata that holds "
                         "these columns: pass --m-sample-metadata-file.")
    frame = sample_metadata.to_dataframe()
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ValueError(f"{parameter} names {absent}, which the sample metadata does not "
                         f"have (it has {list(frame.columns)}).")
    numeric = [c for c in columns if sample_metadata.columns[c].type == "numeric"]
    if numeric:
        raise ValueError(f"{parameter} columns must be categorical; {numeric} are numeric "
                         "(declare them with '#q2:types categorical').")
    missing = [i for i in sample_ids if i not in frame.index]
    if missing and required:
        raise ValueError(f"{len(missing)} sample(s) are not in the sample metadata "
                         f"({_examples(missing)}); {parameter} needs every sample.")
    return frame.reindex(list(sample_ids))[list(columns)]


def _category_groups(sample_metadata, columns, sample_ids, required=True):
    """Each sample's group label from the categorical ``columns`` ("FIN|vaginal")."""
    if not columns:
        return None
    from .core.targets import group_labels
    frame = _categorical_frame(sample_metadata, columns, sample_ids, "--p-normalize-by",
                               required)
    return group_labels([frame[c].tolist() for c in columns])


#: Fusion when columns are given without --p-categorical-fusion: the residual GMU, the only
#: mode not worse than no conditioning on average on either benchmark dataset
#: (benchmarks/results/fusion.md: ECAM -3.7, karelia -0.5 days MAE against none).
DEFAULT_FUSION = "gmu"

FUSION_GUIDANCE = (
    "Which conditioning to use: 'gmu' (the default) to let each sample gate the metadata "
    "in or out, the safe choice when it is unclear whether the columns help; 'concat' for a "
    "few simple columns; "
    "'add' + --p-conditional-output-scaling for a per-category shift of the target; "
    "'cross-attention' when different taxa should respond to different conditions (its "
    "linear readout also gives each ASV a coefficient per category value); "
    "'perceiver' for many ASVs or many, often missing, columns; --p-film-conditioning "
    "(with fusion 'none') to modulate the prediction head's features.")


def _check_conditioning(columns, fusion, film, scaling, normalize_by, transform) -> str:
    """The fusion mode to use; warn about redundant combinations, refuse unused columns.

    Without columns, conditioning is a no-op: said once here, and the model
    records no conditioning.
    """
    if not columns:
        if fusion not in ("none", DEFAULT_FUSION) or film or scaling:
            asked = [x for x in (fusion if fusion not in ("none", DEFAULT_FUSION) else None,
                                 "FiLM" if film else None, "output scaling" if scaling else None)
                     if x]
            _log("No --p-categorical-columns were given, so categorical conditioning "
                 f"({', '.join(asked)}) is a no-op.")
        return "none"
    if fusion == "none" and not film and not scaling:
        raise ValueError(f"--p-categorical-columns {' '.join(columns)} would not be used: "
                         "--p-categorical-fusion is 'none' and neither FiLM nor conditional "
                         f"output scaling is on. {FUSION_GUIDANCE}")
    if film and fusion in ("concat", "add", "gmu"):
        _log(f"Warning: --p-film-conditioning and --p-categorical-fusion {fusion} both inject "
             "the same categorical vector; FiLM alone (--p-categorical-fusion none) or the "
             "fusion alone is usually enough.")
    if scaling and transform == "zscore-category" and set(normalize_by or ()) & set(columns):
        _log("Warning: --p-conditional-output-scaling learns a scale and shift per category, "
             f"but the target is already z-scored within {sorted(set(normalize_by) & set(columns))};"
             " use one of the two.")
    return fusion


#: How errors name the conditioning columns when the model, not a parameter, asks for them.
MODEL_COLUMNS = "The model's categorical conditioning"


def _categorical(sample_metadata, columns, sample_ids, required=True,
                 parameter="--p-categorical-columns"):
    """``{column: per-sample values}`` of the categorical conditioning columns."""
    if not columns:
        return None
    frame = _categorical_frame(sample_metadata, columns, sample_ids, parameter, required)
    return {c: [None if pd.isna(v) else str(v) for v in frame[c]] for c in columns}


def _target_samples(table: biom.Table, metadata: qiime2.MetadataColumn,
                    missing_samples: str) -> pd.Series:
    """The target of each table sample that has one, in table order."""
    series = metadata.to_series()
    table_ids = [str(i) for i in table.ids()]
    if not table_ids:
        raise ValueError("The feature table has no samples (shape "
                         f"{table.shape[0]} features x 0 samples). Check the filtering that "
                         "made it, e.g. with 'qiime feature-table summarize'.")
    absent = [i for i in table_ids if i not in series.index]
    if absent:
        if missing_samples == "error":
            raise ValueError(
                f"{len(absent)} sample(s) of the table are not in the metadata ({_examples(absent)}). "
                "Add them to the metadata, filter them from the table, or pass "
                "--p-missing-samples ignore to leave them out.")
        _log(f"Leaving out {len(absent)} sample(s) that are not in the metadata "
             f"({_examples(absent)}).")
    values = series.reindex([i for i in table_ids if i in series.index])
    empty = values.index[values.isna()]
    if len(empty):
        _log(f"Leaving out {len(empty)} sample(s) whose {series.name!r} is missing "
             f"({_examples(empty)}).")
        values = values.dropna()
    if values.empty:
        raise ValueError(f"No sample of the table has a value in the metadata column "
                         f"{series.name!r}.")
    return values


def train(table: biom.Table, metadata: qiime2.MetadataColumn, task: str = "regression",
          sequences: pd.Series = None,
          pretrained: ModelBundle = None, phylogeny: skbio.TreeNode = None,
          distance_matrix: skbio.DistanceMatrix = None,
          subjects: qiime2.CategoricalMetadataColumn = None,
          sample_metadata: qiime2.Metadata = None, missing_samples: str = "error",
          freeze_encoder: bool = True, linear_readout: bool = True, asv_min_samples: int = 2,
          target_transform: str = DEFAULT_TARGET_TRANSFORM,
          normalize_by: list = None, output_constraint: str = "none", loss: str = DEFAULT_LOSS,
          quantiles: list = list(DEFAULT_QUANTILES), over_penalty: float = 1.0,
          under_penalty: float = 1.0,
          class_weights: str = "none", categorical_columns: list = None,
          categorical_fusion: str = DEFAULT_FUSION, cross_attn_heads: int = 8,
          perceiver_num_latents: int = 16, perceiver_num_layers: int = 2,
          film_conditioning: bool = False, conditional_output_scaling: bool = False,
          unifrac_metric: str = "unweighted", unifrac_weight: float = 0.0,
          mlm_weight: float = 0.0, mask_rate: float = 0.15, token_limit: int = None,
          embedding_dim: int = None, attention_heads: int = None,
          nucleotide_layers: int = None, sample_layers: int = None, patch_size: int = None,
          target_layers: int = 1, dropout: float = None, nucleotide_dropout: float = None,
          epochs: int = 40, batch_size: int = 16,
          learning_rate: float = 1e-3, weight_decay: float = 0.01,
          warmup_fraction: float = 0.05, patience: int = 15, validation_fraction: float = 0.2,
          random_seed: int = 0, device: str = "auto", num_processes: int = 1,
          distributed: str = "ddp", mixed_precision: str = "no",
          gradient_accumulation_steps: int = 1, activation_checkpointing: bool = False,
          checkpoint_dir: str = None, tensorboard_dir: str = None) -> ModelBundle:
    from .core import api
    classification = task == "classification"
    if not classification and isinstance(metadata, qiime2.CategoricalMetadataColumn):
        raise ValueError(
            f"The metadata column {metadata.name!r} is categorical, but --p-task is "
            "'regression'. Pass --p-task classification to predict its classes, or give a "
            "numeric column (declare it with '#q2:types numeric' in the metadata file).")
    # Settings of the other task are refused when set away from their defaults (the
    # defaults are in the signature, so that provenance records the values used).
    regression_only = {"target-transform": target_transform != DEFAULT_TARGET_TRANSFORM,
                       "normalize-by": bool(normalize_by),
                       "output-constraint": output_constraint != "none",
                       "loss": loss != DEFAULT_LOSS,
                       "quantiles": list(quantiles) != list(DEFAULT_QUANTILES),
                       "over-penalty": over_penalty != 1.0,
                       "under-penalty": under_penalty != 1.0}
    if classification:
        given = [f"--p-{k}" for k, changed in regression_only.items() if changed]
        if given:
            raise ValueError(f"{', '.join(given)} apply to numeric targets; a class is learned "
                             "with cross-entropy (see --p-class-weights). Leave them out.")
    elif class_weights != "none":
        raise ValueError("--p-class-weights applies to --p-task classification only.")
    if sample_metadata is not None and not normalize_by and not categorical_columns:
        raise ValueError("--m-sample-metadata-file was given but nothing uses it; it is read "
                         "for --p-categorical-columns and --p-normalize-by.")
    fusion = _check_conditioning(categorical_columns, categorical_fusion, film_conditioning,
                                 conditional_output_scaling, normalize_by, target_transform)
    from .core.losses import RegressionLoss
    regression_loss = RegressionLoss(
        kind=loss, quantiles=tuple(quantiles) if loss == "quantile" else (),
        over_penalty=over_penalty, under_penalty=under_penalty)
    if loss != "quantile" and list(quantiles) != list(DEFAULT_QUANTILES):
        raise ValueError(f"--p-quantiles were given, but --p-loss is {loss!r}; they are used "
                         "only by --p-loss quantile.")
    if loss == "asymmetric" and over_penalty == under_penalty == 1.0:
        raise ValueError("The asymmetric loss needs --p-over-penalty and/or "
                         "--p-under-penalty (otherwise it is the 'mae' loss).")
    if mlm_weight > 0 and freeze_encoder and pretrained is not None:
        raise ValueError("--p-mlm-weight > 0 trains the encoder on masked nucleotides, but "
                         "with --i-pretrained the encoder is frozen by default. Add "
                         "--p-no-freeze-encoder to fine-tune it, or leave --p-mlm-weight at 0.")
    values = _target_samples(table, metadata, missing_samples)
    if token_limit is None:
        token_limit = pretrained.training.get("token_limit", 256) if pretrained else 256
    samples = amplicon_samples(table, sequences, token_limit, sample_ids=values.index)
    # Every input is checked before the (slow) UniFrac computation and training.
    if not classification:
        from .core.targets import TargetTransform
        api.check_regression_settings(values.to_numpy(dtype=float),
                                      TargetTransform(target_transform),
                                      output_constraint, normalize_by)
    normalize_groups = _category_groups(sample_metadata, normalize_by, samples.sample_ids)
    categorical = _categorical(sample_metadata, categorical_columns, samples.sample_ids)
    config, architecture = _settings(locals())
    distances = _distances_if_used(samples, phylogeny, distance_matrix, unifrac_metric,
                                   unifrac_weight,
                                   clades=linear_readout and not classification)
    conditioned = bool(categorical_columns)
    architecture.update(categorical_fusion=fusion, cross_attn_heads=cross_attn_heads,
                        perceiver_num_latents=perceiver_num_latents,
                        perceiver_num_layers=perceiver_num_layers,
                        film_conditioning=film_conditioning and conditioned,
                        conditional_output_scaling=conditional_output_scaling and conditioned)
    if classification and not isinstance(metadata, qiime2.CategoricalMetadataColumn):
        values = class_names(values)
    return api.train(
        samples, values.to_numpy(), task="classification" if classification else "regression",
        target_name=str(metadata.name), architecture=architecture, config=config,
        pretrained=pretrained, freeze_encoder=freeze_encoder and pretrained is not None,
        linear_readout=linear_readout, asv_min_samples=asv_min_samples,
        target_transform=target_transform,
        loss=regression_loss, output_constraint=output_constraint,
        normalize_by=normalize_by,
        normalize_groups=normalize_groups,
        class_weights=class_weights, distances=distances,
        categorical=categorical,
        unifrac_weight=unifrac_weight, mlm_weight=mlm_weight, mask_rate=mask_rate,
        validation_fraction=validation_fraction,
        phylogeny=phylogeny if linear_readout and not classification else None,
        groups=_groups(subjects, samples.sample_ids), checkpoint_dir=checkpoint_dir,
        tensorboard_dir=tensorboard_dir, log=_log)


def _prediction_inputs(model: ModelBundle, table: biom.Table, sequences: pd.Series | None,
                       sample_metadata: qiime2.Metadata | None, sample_ids=None):
    """The table's samples as the model reads them, with the metadata it needs: ``(samples,
    normalize groups, categorical columns)``."""
    samples = amplicon_samples(table, sequences, model.training.get("token_limit", 256),
                               sample_ids=sample_ids)
    columns = model.target.get("normalize_by") or None
    if columns and sample_metadata is None:
        raise ValueError(f"This model z-scores its target within groups of {columns}; pass "
                         "--m-sample-metadata-file with these columns.")
    groups = _category_groups(sample_metadata, columns, samples.sample_ids, required=False)
    conditioned = model.target.get("categorical", {}).get("columns")
    if conditioned and sample_metadata is None:
        raise ValueError(f"This model is conditioned on the metadata column(s) {conditioned}; "
                         "pass --m-sample-metadata-file with them.")
    categorical = _categorical(sample_metadata, conditioned, samples.sample_ids, required=False,
                               parameter=MODEL_COLUMNS)
    return samples, groups, categorical


def predictions(model: ModelBundle, table: biom.Table, sequences: pd.Series | None,
                sample_metadata: qiime2.Metadata | None, batch_size: int, device: str,
                sample_ids=None) -> pd.Series:
    """The model's predictions for the table's samples (only ``sample_ids``, in that order,
    when given): original units or class names, indexed by sample ID."""
    from .core import api
    samples, groups, categorical = _prediction_inputs(model, table, sequences,
                                                      sample_metadata, sample_ids)
    values = api.predict(model, samples, normalize_groups=groups, batch_size=batch_size,
                         device=device, categorical=categorical, log=_log)
    series = pd.Series(values, index=pd.Index(samples.sample_ids, name="SampleID"),
                       name="prediction")
    return series.astype(float) if model.kind == "regressor" else series.astype(str)


def class_names(values: pd.Series) -> pd.Series:
    """Class labels as strings; numeric class codes are named "1", not "1.0"."""
    return values.map(lambda v: str(int(v)) if float(v).is_integer() else str(v))


def predict(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
            sample_metadata: qiime2.Metadata = None, batch_size: int = 64,
            device: str = "auto") -> pd.Series:
    return predictions(model, table, sequences, sample_metadata, batch_size, device)


def predict_classification(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
                           sample_metadata: qiime2.Metadata = None, batch_size: int = 64,
                           device: str = "auto") -> (pd.Series, pd.DataFrame):
    """A classifier's predicted classes and class probabilities (softmax of its outputs)."""
    from .core import api
    if model.kind != "classifier":
        raise ValueError(f"predict-classification needs a classifier; this model is a "
                         f"{model.kind}. Use 'predict' for it.")
    samples, _, categorical = _prediction_inputs(model, table, sequences, sample_metadata)
    logits = api.predict_raw(model, samples, batch_size=batch_size, device=device,
                             categorical=categorical, log=_log)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    index = pd.Index(samples.sample_ids, name="SampleID")
    classes = [str(c) for c in model.target["classes"]]
    predicted = pd.Series(np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)],
                          index=index, name="prediction")
    return predicted, pd.DataFrame(probabilities, index=index, columns=classes)
