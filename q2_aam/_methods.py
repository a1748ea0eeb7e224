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

from ._inputs import (amplicon_samples, distances_if_used, log, prediction_inputs,
                      predictions, settings, subject_groups, target_samples, token_limit_of,
                      train_arguments)
from .core.bundle import ModelBundle
from .core.progress import Steps
from .core.options import (ARCHITECTURE, DEFAULT_CLASS_WEIGHTS, DEFAULT_DEVICE, DEFAULT_FUSION,
                           DEFAULT_LOSS, DEFAULT_MATCH_IDENTITY, DEFAULT_MISSING_SAMPLES,
                           DEFAULT_OUTPUT_CONSTRAINT, DEFAULT_PENALTY, DEFAULT_QUANTILES,
                           DEFAULT_TASK, DEFAULT_TOKEN_LIMIT, DEFAULT_UNIFRAC_METRIC,
                           FUSION_SIZES, MASK_RATE, PREDICT_BATCH_SIZE, PRETRAIN_RECIPE,
                           TRAIN_RECIPE, TRAINING)


def pretrain(table: biom.Table, sequences: pd.Series = None,
             phylogeny: skbio.TreeNode = None, distance_matrix: skbio.DistanceMatrix = None,
             subjects: qiime2.CategoricalMetadataColumn = None,
             unifrac_metric: str = DEFAULT_UNIFRAC_METRIC, token_limit: int = DEFAULT_TOKEN_LIMIT,
             embedding_dim: int = ARCHITECTURE["embedding_dim"],
             attention_heads: int = ARCHITECTURE["attention_heads"],
             nucleotide_layers: int = ARCHITECTURE["nucleotide_layers"],
             sample_layers: int = ARCHITECTURE["sample_layers"],
             patch_size: int = ARCHITECTURE["patch_size"],
             dropout: float = ARCHITECTURE["dropout"],
             nucleotide_dropout: float = ARCHITECTURE["nucleotide_dropout"],
             epochs: int = PRETRAIN_RECIPE["epochs"], batch_size: int = TRAINING["batch_size"],
             learning_rate: float = TRAINING["learning_rate"],
             weight_decay: float = TRAINING["weight_decay"],
             warmup_fraction: float = TRAINING["warmup_fraction"],
             patience: int = TRAINING["patience"],
             validation_fraction: float = PRETRAIN_RECIPE["validation_fraction"],
             unifrac_weight: float = PRETRAIN_RECIPE["unifrac_weight"],
             mlm_weight: float = PRETRAIN_RECIPE["mlm_weight"], mask_rate: float = MASK_RATE,
             random_state: int = TRAINING["seed"], device: str = DEFAULT_DEVICE,
             num_processes: int = TRAINING["num_processes"],
             distributed: str = TRAINING["distributed"],
             mixed_precision: str = TRAINING["mixed_precision"],
             gradient_accumulation_steps: int = TRAINING["gradient_accumulation_steps"],
             activation_checkpointing: bool = TRAINING["activation_checkpointing"],
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


def train(table: biom.Table, metadata: qiime2.MetadataColumn, task: str = DEFAULT_TASK,
          sequences: pd.Series = None,
          pretrained: ModelBundle = None, phylogeny: skbio.TreeNode = None,
          distance_matrix: skbio.DistanceMatrix = None,
          subjects: qiime2.CategoricalMetadataColumn = None,
          sample_metadata: qiime2.Metadata = None,
          missing_samples: str = DEFAULT_MISSING_SAMPLES,
          freeze_encoder: bool = TRAIN_RECIPE["freeze_encoder"],
          linear_readout: bool = TRAIN_RECIPE["linear_readout"],
          asv_min_samples: int = TRAIN_RECIPE["asv_min_samples"],
          target_transform: str = TRAIN_RECIPE["target_transform"],
          normalize_by: list = None, output_constraint: str = DEFAULT_OUTPUT_CONSTRAINT,
          loss: str = DEFAULT_LOSS, quantiles: list = list(DEFAULT_QUANTILES),
          over_penalty: float = DEFAULT_PENALTY, under_penalty: float = DEFAULT_PENALTY,
          class_weights: str = DEFAULT_CLASS_WEIGHTS, categorical_columns: list = None,
          categorical_fusion: str = DEFAULT_FUSION,
          cross_attn_heads: int = FUSION_SIZES["cross_attn_heads"],
          perceiver_num_latents: int = FUSION_SIZES["perceiver_num_latents"],
          perceiver_num_layers: int = FUSION_SIZES["perceiver_num_layers"],
          film_conditioning: bool = False, conditional_output_scaling: bool = False,
          unifrac_metric: str = DEFAULT_UNIFRAC_METRIC,
          unifrac_weight: float = TRAIN_RECIPE["unifrac_weight"],
          mlm_weight: float = TRAIN_RECIPE["mlm_weight"], mask_rate: float = MASK_RATE,
          token_limit: int = None, embedding_dim: int = None, attention_heads: int = None,
          nucleotide_layers: int = None, sample_layers: int = None, patch_size: int = None,
          target_layers: int = ARCHITECTURE["target_layers"], dropout: float = None,
          nucleotide_dropout: float = None, epochs: int = TRAIN_RECIPE["epochs"],
          batch_size: int = TRAINING["batch_size"],
          learning_rate: float = TRAINING["learning_rate"],
          weight_decay: float = TRAINING["weight_decay"],
          warmup_fraction: float = TRAINING["warmup_fraction"],
          patience: int = TRAIN_RECIPE["patience"],
          validation_fraction: float = TRAIN_RECIPE["validation_fraction"],
          random_state: int = TRAINING["seed"], device: str = DEFAULT_DEVICE,
          num_processes: int = TRAINING["num_processes"],
          distributed: str = TRAINING["distributed"],
          mixed_precision: str = TRAINING["mixed_precision"],
          gradient_accumulation_steps: int = TRAINING["gradient_accumulation_steps"],
          activation_checkpointing: bool = TRAINING["activation_checkpointing"],
          checkpoint_dir: str = None, tensorboard_dir: str = None) -> ModelBundle:
    from .core import api
    if task != "classification" and isinstance(metadata, qiime2.CategoricalMetadataColumn):
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
        samples = amplicon_samples(table, sequences, token_limit_of(pretrained, token_limit),
                                   sample_ids=values.index)
    targets, arguments = train_arguments(locals(), samples, values)
    return api.train(samples, targets, **arguments, steps=steps, log=log)


def predict(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
            sample_metadata: qiime2.Metadata = None, batch_size: int = PREDICT_BATCH_SIZE,
            device: str = DEFAULT_DEVICE, match_identity: float = DEFAULT_MATCH_IDENTITY
            ) -> pd.Series:
    return predictions(model, table, sequences, sample_metadata, batch_size, device,
                       match_identity=match_identity)


def predict_classification(model: ModelBundle, table: biom.Table, sequences: pd.Series = None,
                           sample_metadata: qiime2.Metadata = None,
                           batch_size: int = PREDICT_BATCH_SIZE, device: str = DEFAULT_DEVICE,
                           match_identity: float = DEFAULT_MATCH_IDENTITY
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
