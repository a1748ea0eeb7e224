"""The actions: QIIME 2 views -> the torch core -> artifacts.

(No ``from __future__ import annotations`` here: QIIME 2 reads the view types
from the annotations at run time.)

No model math and no rule of the core here: each action converts its inputs
(``_inputs``), calls ``q2_aam.core.api``, which checks every setting once, and
returns what QIIME 2 wraps.
"""

import biom
import numpy as np
import pandas as pd
import qiime2
import skbio

# (train's parameter ``categorical_columns`` would shadow the function of that name)
from ._inputs import (amplicon_samples, categorical_columns as conditioning_columns,
                      category_groups, class_names, distances_if_used, log, prediction_inputs,
                      predictions, settings, subject_groups, target_samples)
from .core.bundle import ModelBundle
from .core.progress import Steps
from .core.options import (DEFAULT_CLASS_WEIGHTS, DEFAULT_FUSION, DEFAULT_LOSS,
                           DEFAULT_OUTPUT_CONSTRAINT, DEFAULT_PENALTY, DEFAULT_QUANTILES,
                           DEFAULT_MATCH_IDENTITY, DEFAULT_PATIENCE, DEFAULT_TARGET_TRANSFORM,
                           DEFAULT_TOKEN_LIMIT, DEFAULT_UNIFRAC_METRIC, TRAIN_PATIENCE)


def pretrain(table: biom.Table, sequences: pd.Series = None,
             phylogeny: skbio.TreeNode = None, distance_matrix: skbio.DistanceMatrix = None,
             subjects: qiime2.CategoricalMetadataColumn = None,
             unifrac_metric: str = DEFAULT_UNIFRAC_METRIC, token_limit: int = DEFAULT_TOKEN_LIMIT,
             embedding_dim: int = 64, attention_heads: int = 4, nucleotide_layers: int = 2,
             sample_layers: int = 2, patch_size: int = 4, dropout: float = 0.1,
             nucleotide_dropout: float = 0.0, epochs: int = 10, batch_size: int = 16,
             learning_rate: float = 1e-3,
             weight_decay: float = 0.01, warmup_fraction: float = 0.05, patience: int = DEFAULT_PATIENCE,
             validation_fraction: float = 0.1, unifrac_weight: float = 1.0,
             mlm_weight: float = 1.0, mask_rate: float = 0.15, random_state: int = 0,
             device: str = "auto", num_processes: int = 1, distributed: str = "ddp",
             mixed_precision: str = "no",
             gradient_accumulation_steps: int = 1, activation_checkpointing: bool = False,
             checkpoint_dir: str = None, tensorboard_dir: str = None) -> ModelBundle:
    from .core import api
    config, architecture = settings(locals())
    samples = amplicon_samples(table, sequences, token_limit)
    distances = distances_if_used(samples, phylogeny, distance_matrix, unifrac_metric,
                                  unifrac_weight)
    return api.pretrain(samples, distances, architecture=architecture, config=config,
                        unifrac_weight=unifrac_weight, mlm_weight=mlm_weight,
                        mask_rate=mask_rate, validation_fraction=validation_fraction,
                        groups=subject_groups(subjects, samples.sample_ids),
                        checkpoint_dir=checkpoint_dir, tensorboard_dir=tensorboard_dir,
                        log=log)


def train(table: biom.Table, metadata: qiime2.MetadataColumn, task: str = "regression",
          sequences: pd.Series = None,
          pretrained: ModelBundle = None, phylogeny: skbio.TreeNode = None,
          distance_matrix: skbio.DistanceMatrix = None,
          subjects: qiime2.CategoricalMetadataColumn = None,
          sample_metadata: qiime2.Metadata = None, missing_samples: str = "error",
          freeze_encoder: bool = True, linear_readout: bool = True, asv_min_samples: int = 2,
          target_transform: str = DEFAULT_TARGET_TRANSFORM,
          normalize_by: list = None, output_constraint: str = DEFAULT_OUTPUT_CONSTRAINT,
          loss: str = DEFAULT_LOSS, quantiles: list = list(DEFAULT_QUANTILES),
          over_penalty: float = DEFAULT_PENALTY, under_penalty: float = DEFAULT_PENALTY,
          class_weights: str = DEFAULT_CLASS_WEIGHTS, categorical_columns: list = None,
          categorical_fusion: str = DEFAULT_FUSION, cross_attn_heads: int = 8,
          perceiver_num_latents: int = 16, perceiver_num_layers: int = 2,
          film_conditioning: bool = False, conditional_output_scaling: bool = False,
          unifrac_metric: str = DEFAULT_UNIFRAC_METRIC, unifrac_weight: float = 0.0,
          mlm_weight: float = 0.0, mask_rate: float = 0.15, token_limit: int = None,
          embedding_dim: int = None, attention_heads: int = None,
          nucleotide_layers: int = None, sample_layers: int = None, patch_size: int = None,
          target_layers: int = 1, dropout: float = None, nucleotide_dropout: float = None,
          epochs: int = 40, batch_size: int = 16,
          learning_rate: float = 1e-3, weight_decay: float = 0.01,
          warmup_fraction: float = 0.05, patience: int = TRAIN_PATIENCE, validation_fraction: float = 0.2,
          random_state: int = 0, device: str = "auto", num_processes: int = 1,
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
    if sample_metadata is not None and not normalize_by and not categorical_columns:
        raise ValueError("--m-sample-metadata-file was given but nothing uses it; it is read "
                         "for --p-categorical-columns and --p-normalize-by.")
    steps = Steps(log)
    with steps("reading the table"):
        values = target_samples(table, metadata, missing_samples)
        if token_limit is None:
            token_limit = (pretrained.training.get("token_limit", DEFAULT_TOKEN_LIMIT)
                           if pretrained else DEFAULT_TOKEN_LIMIT)
        samples = amplicon_samples(table, sequences, token_limit, sample_ids=values.index)
    config, architecture = settings(locals())
    readout_tree = linear_readout and not classification
    architecture.update(categorical_fusion=categorical_fusion, cross_attn_heads=cross_attn_heads,
                        perceiver_num_latents=perceiver_num_latents,
                        perceiver_num_layers=perceiver_num_layers,
                        film_conditioning=film_conditioning,
                        conditional_output_scaling=conditional_output_scaling)
    if classification and not isinstance(metadata, qiime2.CategoricalMetadataColumn):
        values = class_names(values)
    return api.train(
        samples, values.to_numpy(), task=task, target_name=str(metadata.name),
        architecture=architecture, config=config, pretrained=pretrained,
        freeze_encoder=freeze_encoder and pretrained is not None,
        linear_readout=linear_readout, asv_min_samples=asv_min_samples,
        target_transform=target_transform,
        loss={"kind": loss, "quantiles": quantiles, "over_penalty": over_penalty,
              "under_penalty": under_penalty},
        output_constraint=output_constraint, normalize_by=normalize_by,
        normalize_groups=category_groups(sample_metadata, normalize_by, samples.sample_ids),
        class_weights=class_weights,
        distances=distances_if_used(samples, phylogeny, distance_matrix, unifrac_metric,
                                    unifrac_weight, clades=readout_tree),
        categorical=conditioning_columns(sample_metadata, categorical_columns,
                                        samples.sample_ids),
        unifrac_weight=unifrac_weight, mlm_weight=mlm_weight, mask_rate=mask_rate,
        validation_fraction=validation_fraction,
        phylogeny=phylogeny if readout_tree else None,
        groups=subject_groups(subjects, samples.sample_ids), checkpoint_dir=checkpoint_dir,
        tensorboard_dir=tensorboard_dir, steps=steps, log=log)


def predict(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
            sample_metadata: qiime2.Metadata = None, batch_size: int = 64,
            device: str = "auto", match_identity: float = DEFAULT_MATCH_IDENTITY) -> pd.Series:
    return predictions(model, table, sequences, sample_metadata, batch_size, device,
                       match_identity=match_identity)


def predict_classification(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
                           sample_metadata: qiime2.Metadata = None, batch_size: int = 64,
                           device: str = "auto", match_identity: float = DEFAULT_MATCH_IDENTITY
                           ) -> (pd.Series, pd.DataFrame):
    """A classifier's predicted classes and class probabilities (softmax of its outputs)."""
    from .core import api
    if model.kind != "classifier":
        raise ValueError(f"predict-classification needs a classifier; this model is a "
                         f"{model.kind}. Use 'predict' for it.")
    samples, _, categorical = prediction_inputs(model, table, sequences, sample_metadata)
    logits = api.predict_raw(model, samples, batch_size=batch_size, device=device,
                             categorical=categorical, match_identity=match_identity, log=log)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    index = pd.Index(samples.sample_ids, name="SampleID")
    classes = [str(c) for c in model.target["classes"]]
    predicted = pd.Series(np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)],
                          index=index, name="prediction")
    return predicted, pd.DataFrame(probabilities, index=index, columns=classes)
