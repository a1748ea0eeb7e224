"""QIIME 2 views -> the torch core's inputs, for the methods and visualizers alike.

Each function checks its input and names the QIIME 2 option it came from; the
core (and torch with it) is imported inside the functions, when an action runs,
never when the plugin is loaded.
"""

import functools
import sys

import biom
import numpy as np
import pandas as pd
import qiime2
import skbio

from .core.bundle import ModelBundle
from .core.options import DEFAULT_MATCH_IDENTITY, DEFAULT_TOKEN_LIMIT


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def examples(ids, n: int = 3) -> str:
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def feature_sequences(table: biom.Table, sequences: pd.Series | None) -> list[str]:
    """The DNA sequence of each table feature, from ``sequences`` or the feature IDs."""
    from .core.api import is_dna
    ids = [str(i) for i in table.ids(axis="observation")]
    if sequences is None:
        bad = [i for i in ids if not is_dna(i)]
        if bad:
            raise ValueError(
                f"No sequences were given (--i-sequences) and {len(bad)} of {len(ids)} feature "
                f"IDs are not DNA sequences ({examples(bad)}). Pass the representative "
                "sequences as FeatureData[Sequence].")
        return [i.upper() for i in ids]
    lookup = {str(k): str(v) for k, v in sequences.items()}
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} of the table's {len(ids)} features have no sequence in "
                         f"--i-sequences ({examples(missing)}). Pass the sequences that belong "
                         "to this table (e.g. from the same DADA2/Deblur run).")
    return [lookup[i] for i in ids]


def amplicon_samples(table: biom.Table, sequences: pd.Series | None, token_limit: int,
                     sample_ids=None):
    """The table (optionally only ``sample_ids``, in that order) as core samples."""
    from .core.api import AmpliconSamples
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
        log(f"The feature table holds {len(fractional)} non-integer value(s) (e.g. "
            f"{counts.data[fractional[0]]:g} in sample {str(table.ids()[row])!r}), so it is "
            "not a table of read counts: each sample is read as relative abundances (values "
            "/ the sample's total), and the model's log-count input no longer reflects read "
            "depth. Give a table of read counts (FeatureTable[Frequency] from DADA2 or "
            "Deblur) if you have one.")
    return AmpliconSamples.from_counts(
        counts, [str(i) for i in table.ids()], [str(i) for i in table.ids(axis="observation")],
        feature_sequences(table, sequences), token_limit)


def check_tips(samples, phylogeny: skbio.TreeNode) -> None:
    """Refuse a phylogeny that lacks a feature the model sees."""
    from .core.unifrac import held_features, missing_tips
    missing = missing_tips(held_features(samples)[2], phylogeny)
    if missing:
        raise ValueError(f"{len(missing)} feature(s) are not tips of the phylogeny "
                         f"({examples(missing)}). Use a tree built from these sequences "
                         "(e.g. qiime phylogeny align-to-tree-mafft-fasttree).")


def matrix_distances(samples, distance_matrix: skbio.DistanceMatrix):
    """The ``(n, n)`` distances between ``samples``, in their order, from the given matrix."""
    ids = samples.sample_ids
    known = set(distance_matrix.ids)  # (a tuple: a lookup in it is a scan)
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) of the table are not in the distance "
                         f"matrix ({examples(missing)}). Use a matrix computed on the "
                         "same samples.")
    return distance_matrix.filter(ids).data


def distances_if_used(samples, phylogeny, distance_matrix, metric, weight,
                      clades: bool = False):
    """UniFrac distances when the UniFrac loss is on: the given matrix's, or a function that
    computes them from the phylogeny (``core.unifrac.unifrac_distances``); refuse inputs that
    would go unused (``clades``: the phylogeny is used by the linear readout's clades)."""
    if weight > 0:
        if phylogeny is not None and distance_matrix is not None:
            raise ValueError("Give either a phylogeny (--i-phylogeny) or a distance matrix "
                             "(--i-distance-matrix) for UniFrac, not both.")
        if distance_matrix is not None:
            return matrix_distances(samples, distance_matrix)
        if phylogeny is None:  # the core's Objective says what to give
            return None
        from .core.unifrac import unifrac_distances
        # The tree is checked now; UniFrac itself (the slow part) is computed by the core
        # once it has checked every other input.
        check_tips(samples, phylogeny)
        return functools.partial(unifrac_distances, samples, phylogeny, metric, log=log)
    if distance_matrix is not None:
        raise ValueError("A distance matrix was given, but --p-unifrac-weight is 0, so it "
                         "would not be used. Set --p-unifrac-weight (e.g. 0.1) to use "
                         "UniFrac, or leave the input out.")
    if phylogeny is not None and clades:
        check_tips(samples, phylogeny)
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


def settings(params: dict):
    """The core's ``TrainConfig`` and architecture overrides from an action's parameters.

    Also checks the output folders now, before the (slow) UniFrac computation.
    """
    from .core.api import TrainConfig, writable_directory
    for name, what in (("checkpoint_dir", "checkpoint"), ("tensorboard_dir", "TensorBoard")):
        if params.get(name):
            writable_directory(params[name], what)
    config = TrainConfig(**{k: params[k] for k in OPTIMISATION}, seed=params["random_state"],
                         device=params["device"])
    return config, {k: params[k] for k in ARCHITECTURE if k in params}


def token_limit_of(pretrained: ModelBundle | None, token_limit: int | None) -> int:
    """``token_limit``, else the pretrained encoder's, else the default."""
    if token_limit is not None:
        return token_limit
    return (pretrained.training.get("token_limit", DEFAULT_TOKEN_LIMIT) if pretrained
            else DEFAULT_TOKEN_LIMIT)


#: ``train``'s conditioning parameters, which the architecture takes as they are.
CONDITIONING = ("categorical_fusion", "cross_attn_heads", "perceiver_num_latents",
                "perceiver_num_layers", "film_conditioning", "conditional_output_scaling")


def train_arguments(params: dict, samples, values: pd.Series):
    """``api.train``'s targets and keyword arguments (but its steps and log) from ``train``'s
    parameters (``params``), its ``samples`` and their target ``values``."""
    classification = params["task"] == "classification"
    config, architecture = settings(params)
    readout_tree = params["linear_readout"] and not classification
    architecture.update({k: params[k] for k in CONDITIONING})
    if classification and not isinstance(params["metadata"], qiime2.CategoricalMetadataColumn):
        values = class_names(values)
    ids, sample_metadata = samples.sample_ids, params["sample_metadata"]
    phylogeny, pretrained = params["phylogeny"], params["pretrained"]
    loss = {"kind": params["loss"], "quantiles": params["quantiles"],
            "over_penalty": params["over_penalty"], "under_penalty": params["under_penalty"]}
    return values.to_numpy(), dict(
        task=params["task"], target_name=str(params["metadata"].name),
        architecture=architecture, config=config, pretrained=pretrained,
        freeze_encoder=params["freeze_encoder"] and pretrained is not None,
        loss=loss, normalize_groups=category_groups(sample_metadata, params["normalize_by"], ids),
        distances=distances_if_used(samples, phylogeny, params["distance_matrix"],
                                    params["unifrac_metric"], params["unifrac_weight"],
                                    clades=readout_tree),
        categorical=categorical_columns(sample_metadata, params["categorical_columns"], ids),
        phylogeny=phylogeny if readout_tree else None,
        groups=subject_groups(params["subjects"], ids),
        **{k: params[k] for k in ("linear_readout", "asv_min_samples", "target_transform",
                                  "output_constraint", "normalize_by", "class_weights",
                                  "unifrac_weight", "mlm_weight", "mask_rate",
                                  "validation_fraction", "checkpoint_dir", "tensorboard_dir")})


def subject_groups(subjects: qiime2.Metadata | None, sample_ids):
    if subjects is None:
        return None
    series = subjects.to_series()
    missing = [i for i in sample_ids if i not in series.index or pd.isna(series.get(i))]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) have no value in the subjects column "
                         f"{series.name!r} ({examples(missing)}).")
    return series.loc[list(sample_ids)].astype(str).to_numpy()


def categorical_frame(sample_metadata, columns, sample_ids, parameter, required=True):
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
                         f"({examples(missing)}); {parameter} needs every sample.")
    return frame.reindex(list(sample_ids))[list(columns)]


def category_groups(sample_metadata, columns, sample_ids, required=True):
    """Each sample's group label from the categorical ``columns`` ("FIN|vaginal")."""
    if not columns:
        return None
    from .core.api import group_labels
    frame = categorical_frame(sample_metadata, columns, sample_ids, "--p-normalize-by",
                              required)
    return group_labels([frame[c].tolist() for c in columns])


#: How errors name the conditioning columns when the model, not a parameter, asks for them.
MODEL_COLUMNS = "The model's categorical conditioning"


def categorical_columns(sample_metadata, columns, sample_ids, required=True,
                        parameter="--p-categorical-columns"):
    """``{column: per-sample values}`` of the categorical conditioning columns."""
    if not columns:
        return None
    frame = categorical_frame(sample_metadata, columns, sample_ids, parameter, required)
    return {c: [None if pd.isna(v) else str(v) for v in frame[c]] for c in columns}


def target_samples(table: biom.Table, metadata: qiime2.MetadataColumn,
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
                f"{len(absent)} sample(s) of the table are not in the metadata "
                f"({examples(absent)}). Add them to the metadata, filter them from the "
                "table, or pass --p-missing-samples ignore to leave them out.")
        log(f"Leaving out {len(absent)} sample(s) that are not in the metadata "
            f"({examples(absent)}).")
    values = series.reindex([i for i in table_ids if i in series.index])
    empty = values.index[values.isna()]
    if len(empty):
        log(f"Leaving out {len(empty)} sample(s) whose {series.name!r} is missing "
            f"({examples(empty)}).")
        values = values.dropna()
    if values.empty:
        raise ValueError(f"No sample of the table has a value in the metadata column "
                         f"{series.name!r}.")
    return values


def prediction_inputs(model: ModelBundle, table: biom.Table, sequences: pd.Series | None,
                      sample_metadata: qiime2.Metadata | None, sample_ids=None):
    """The table's samples as the model reads them, with the metadata it needs: ``(samples,
    normalize groups, categorical columns)``."""
    samples = amplicon_samples(table, sequences, token_limit_of(model, None),
                               sample_ids=sample_ids)
    columns = model.target.get("normalize_by") or None
    if columns and sample_metadata is None:
        raise ValueError(f"This model z-scores its target within groups of {columns}; pass "
                         "--m-sample-metadata-file with these columns.")
    groups = category_groups(sample_metadata, columns, samples.sample_ids, required=False)
    conditioned = model.target.get("categorical", {}).get("columns")
    if conditioned and sample_metadata is None:
        raise ValueError(f"This model is conditioned on the metadata column(s) {conditioned}; "
                         "pass --m-sample-metadata-file with them.")
    categorical = categorical_columns(sample_metadata, conditioned, samples.sample_ids,
                                      required=False, parameter=MODEL_COLUMNS)
    return samples, groups, categorical


def class_names(values: pd.Series) -> pd.Series:
    """Class labels as strings; numeric class codes are named "1", not "1.0"."""
    return values.map(lambda v: str(int(v)) if float(v).is_integer() else str(v))


def predictions(model: ModelBundle, table: biom.Table, sequences: pd.Series | None,
                sample_metadata: qiime2.Metadata | None, batch_size: int, device: str,
                sample_ids=None, match_identity: float = DEFAULT_MATCH_IDENTITY) -> pd.Series:
    """The model's predictions for the table's samples (only ``sample_ids``, in that order,
    when given): original units or class names, indexed by sample ID."""
    from .core import api
    samples, groups, categorical = prediction_inputs(model, table, sequences,
                                                      sample_metadata, sample_ids)
    values = api.predict(model, samples, normalize_groups=groups, batch_size=batch_size,
                         device=device, categorical=categorical,
                         match_identity=match_identity, log=log)
    series = pd.Series(values, index=pd.Index(samples.sample_ids, name="SampleID"),
                       name="prediction")
    return series.astype(float) if model.kind == "regressor" else series.astype(str)
