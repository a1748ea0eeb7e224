"""Bad and odd input, case by case: what a user sees (issue 14).

Each case runs the plugin's actions (``qiime2.plugins.aam``; the CLI shows the
same messages) or the Python API on a real ECAM subset with something wrong,
and checks the key words of the error or warning. ``docs/bad-input.md`` is
generated from these cases (case, then the message); the last test fails when
it is stale. Regenerate it with::

    AAM_WRITE_BAD_INPUT_DOC=1 .venv/bin/python -m pytest tests/test_bad_input.py

Faults that need a child process (a kill, SIGTERM, a full disk) are tested in
``test_training_run.py``; their messages are listed here too where one runs in
process. After the catalogue come the bad-input tests that give their own input or
check more than a Case does (that the refusal comes before any work, that a warning
is said once, which samples are left out, a refusal by type).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio
from conftest import SMALL_ACTION, exported_data
from qiime2.plugin import ValidationError

from q2_aam.core.bundle import ModelBundle

DOC = Path(__file__).parent.parent / "docs" / "bad-input.md"
SMALL = SMALL_ACTION
SEEN: dict[str, str] = {}


@dataclass
class Case:
    name: str  # what is wrong, as a user would say it
    expect: str  # regex of the key words of the message
    run: Callable  # run(c): does the wrong thing
    warns: bool = False  # a warning (training goes on) rather than a refusal


def train_age(aam, ecam_subset, **kwargs):
    """``train`` on the ECAM subset's training table and sequences, predicting age (each
    keyword given replaces or adds to these)."""
    a = ecam_subset["artifacts"]
    args = dict(table=a["table"], sequences=a["sequences"],
                metadata=ecam_subset["metadata"].get_column("age_days"))
    return aam.actions.train(**{**args, **kwargs})


class Context:
    """What the cases need: the plugin, the ECAM subset, a scratch folder."""

    def __init__(self, aam, subset, tmp_path, trained):
        self.aam, self.subset, self.tmp = aam, subset, tmp_path
        self.a, self.md = subset["artifacts"], subset["metadata"]
        self.trained = trained

    @property
    def age(self):
        return self.md.get_column("age_days")

    @property
    def table(self) -> biom.Table:
        return self.a["table"].view(biom.Table)

    def table_artifact(self, table: biom.Table):
        return qiime2.Artifact.import_data("FeatureTable[Frequency]", table)

    def metadata(self, frame: pd.DataFrame) -> qiime2.Metadata:
        frame = frame.copy()
        frame.index.name = "sample-id"
        return qiime2.Metadata(frame)

    def train(self, **kwargs):
        return train_age(self.aam, self.subset, **{"epochs": 1, **SMALL, **kwargs})

    def pretrain(self, **kwargs):
        args = dict(table=self.a["full_table"], sequences=self.a["sequences"], epochs=1,
                    **SMALL)
        args.update(kwargs)
        return self.aam.actions.pretrain(**args)

    def predict(self, model, **kwargs):
        return self.aam.actions.predict(model=model, table=self.a["new_table"],
                                        sequences=self.a["sequences"], **kwargs)

    def column(self, values: dict, name="target", numeric=True):
        frame = pd.DataFrame({name: pd.Series(values)})
        md = self.metadata(frame)
        return md.get_column(name)

    def ids(self):
        return [str(i) for i in self.table.ids()]

    def exported(self, model) -> Path:
        return exported_data(model, self.tmp)


# -- helpers that make bad input -------------------------------------------------------------

def _subset_table(c, ids):
    return c.table_artifact(c.table.filter(ids, inplace=False))


def _renamed_features(c):
    t = c.table.copy()
    t.update_ids({f: f"asv{i}" for i, f in enumerate(t.ids(axis="observation"))},
                 axis="observation", inplace=True)
    return c.table_artifact(t)


def _sequences(c, change: Callable):
    series = c.a["sequences"].view(pd.Series)
    series = change(series.copy())
    return qiime2.Artifact.import_data("FeatureData[Sequence]", series)


def _ages(c, change: Callable, name="target"):
    ids = c.ids()
    values = {i: float(v) for i, v in zip(ids, c.age.to_series().loc[ids])}
    change(values)
    return c.column(values, name)


def _classes(c, labels):
    ids = c.ids()
    frame = pd.DataFrame({"group": [labels(i, k) for k, i in enumerate(ids)]}, index=ids)
    return c.metadata(frame).get_column("group")


def _model_folder_edit(c, edit):
    """Export the trained regressor, damage it with ``edit(folder)``, import it again."""
    d = c.exported(c.trained[1])
    edit(d)
    return qiime2.Artifact.import_data("AAMModel[AAMRegressor]", str(d))


def _config_edit(change):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        change(config)
        (d / "config.json").write_text(json.dumps(config))
    return edit


def _distance_matrix(c, ids):
    n = len(ids)
    values = np.ones((n, n)) - np.eye(n)
    return qiime2.Artifact.import_data("DistanceMatrix", skbio.DistanceMatrix(values, ids))


def _api_train(c, **kwargs):
    """The core API (for what the plugin's types already rule out)."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import random_samples
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    samples = random_samples(n_samples=20, token_limit=8)
    config = {"epochs": 1, "batch_size": 4, "device": "cpu", **kwargs.pop("config", {})}
    target = kwargs.pop("y", np.linspace(0, 10, 20))
    return api.train(samples, target, task=kwargs.pop("task", "regression"),
                     architecture=dict(embedding_dim=16, attention_heads=2,
                                       nucleotide_layers=1, sample_layers=1,
                                       max_sequence_length=40),
                     config=TrainConfig(**config), log=lambda m: None, **kwargs)


def _checkpointed(c, damage):
    """A 1-epoch run with a checkpoint, the checkpoint damaged, then the same run again."""
    folder = c.tmp / "ck"
    _api_train(c, checkpoint_dir=str(folder), validation_fraction=0.2)
    damage(folder)
    _api_train(c, checkpoint_dir=str(folder), validation_fraction=0.2)


def _payload(folder):
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(folder / "payload-ran"), "w"))
    (folder / "epoch-1" / "run.json").write_bytes(pickle.dumps(Payload()))


def _many_classes(c):
    """Numbers as classes: 26 values, 2 samples each, over the 52 samples of the table."""
    ids = [str(i) for i in c.a["full_table"].view(biom.Table).ids()]
    frame = pd.DataFrame({"score": [str(k // 2) for k in range(len(ids))]}, index=ids)
    return c.metadata(frame).get_column("score")


CASES = [
    # -- the feature table
    Case("a table with no samples", r"feature table has no samples.*0 samples",
         lambda c: c.train(table=_subset_table(c, []))),
    Case("a table whose samples are all missing from the metadata",
         r"40 sample\(s\) of the table are not in the metadata.*--p-missing-samples ignore",
         lambda c: c.train(metadata=c.column({"x1": 1.0, "x2": 2.0}))),
    Case("table samples missing from the metadata, --p-missing-samples ignore",
         r"Leaving out 2 sample\(s\) that are not in the metadata",
         lambda c: c.train(metadata=_ages(c, lambda v: [v.pop(k) for k in list(v)[:2]]),
                           missing_samples="ignore"), warns=True),
    Case("a sample with no reads", r"1 sample\(s\) have no reads.*filter-samples",
         lambda c: c.train(table=c.table_artifact(_zero_sample(c)))),
    Case("non-integer counts", r"non-integer value\(s\).*read as relative abundances",
         lambda c: c.train(table=c.table_artifact(c.table.norm(inplace=False))), warns=True),
    Case("feature IDs that are not DNA, no --i-sequences", r"are not DNA sequences.*"
         r"FeatureData\[Sequence\]", lambda c: c.train(table=_renamed_features(c),
                                                      sequences=None)),
    Case("--i-sequences lacking some of the table's features",
         r"features have no sequence in --i-sequences",
         lambda c: c.train(sequences=_sequences(c, lambda s: s.iloc[5:]))),
    Case("a sequence longer than 2,000 nt (a new model)",
         r"longer than the 2000 nt a model reads.*\(2400 nt\)",
         lambda c: c.train(sequences=_sequences(c, lambda s: _lengthen(s)))),
    Case("--p-patch-size longer than every sequence", r"patch size.*--p-patch-size.*longer",
         lambda c: c.train(patch_size=512)),
    # -- the target
    Case("a categorical target with --p-task regression",
         r"is categorical, but --p-task is 'regression'.*--p-task classification",
         lambda c: c.train(metadata=c.md.get_column("delivery"))),
    Case("no sample of the table has a target value", r"No sample of the table has a value",
         lambda c: c.train(metadata=_ages(c, lambda v: v.update({k: np.nan for k in v})))),
    Case("some targets missing", r"Leaving out 3 sample\(s\) whose 'target' is missing",
         lambda c: c.train(metadata=_ages(c, lambda v: v.update(
             {k: np.nan for k in list(v)[:3]}))), warns=True),
    Case("a class with a single sample", r"Each class needs at least 2 samples.*'lonely' \(1\)",
         lambda c: c.train(task="classification", metadata=_classes(
             c, lambda i, k: "lonely" if k == 0 else ("a" if k % 2 else "b")))),
    Case("a numeric column with more than 20 distinct values as classes",
         r"looks continuous.*26 distinct numbers from 0 to 25, 0 of them.*--p-task regression",
         lambda c: c.train(task="classification", table=c.a["full_table"],
                           metadata=_many_classes(c))),
    Case("a continuous column (age in days) as classes",
         r"looks continuous, not like classes: \d+ distinct numbers.*held by a single sample"
         r".*--p-task regression \(the default\)",
         lambda c: c.train(task="classification", metadata=c.age)),
    Case("a 0/1 column with the default task (regression)",
         r"only two values \(0 and 1\).*--p-task classification",
         lambda c: c.train(metadata=_ages(c, lambda v: v.update(
             {k: float(i % 2) for i, k in enumerate(v)})))),
    Case("imbalanced classes without class weights",
         r"classes are imbalanced: 'rare' is \d+% of the training samples.*right \d+% of the "
         r"time.*--p-class-weights balanced", lambda c: c.train(
             task="classification", metadata=_classes(
                 c, lambda i, k: "rare" if k % 10 == 0 else "common")), warns=True),
    Case("an extreme target value (1e6 among ages of 0-800 days)",
         r"extremely far from the others.*median absolute deviations",
         lambda c: c.train(metadata=_ages(c, lambda v: v.update({c.ids()[0]: 1e6}))),
         warns=True),
    Case("a target whose scaling overflows (1e300)", r"from 0 to 1e\+300\) overflow",
         lambda c: c.train(metadata=_ages(c, lambda v: v.update({c.ids()[0]: 1e300})))),
    Case("--p-validation-fraction 0.99", r"validation fraction 0.99 leave 0 for training.*"
         r"--p-validation-fraction",
         lambda c: c.train(validation_fraction=0.99)),
    Case("a single training sample",
         r"leave 1 for training and 0 for validation; training needs at least 2",
         lambda c: c.train(table=_subset_table(c, c.ids()[:1]))),
    Case("--p-output-constraint nonnegative with --p-target-transform zscore",
         r"centres the target at 0", lambda c: c.train(target_transform="zscore",
                                                       output_constraint="nonnegative")),
    Case("regression settings for a classifier", r"--p-loss.*apply to numeric targets",
         lambda c: c.train(task="classification", metadata=c.md.get_column("delivery"),
                           loss="mae")),
    Case("--p-class-weights for a regression", r"--p-class-weights applies to --p-task "
         r"classification only", lambda c: c.train(class_weights="balanced")),
    Case("the asymmetric loss without penalties", r"asymmetric loss needs --p-over-penalty",
         lambda c: c.train(loss="asymmetric")),
    Case("--p-quantiles with another loss", r"--p-quantiles were given, but --p-loss is "
         r"'huber'", lambda c: c.train(quantiles=[0.25, 0.75])),
    Case("--p-normalize-by without --m-sample-metadata-file",
         r"--p-normalize-by delivery needs the metadata.*--m-sample-metadata-file",
         lambda c: c.train(normalize_by=["delivery"], target_transform="zscore-category")),
    # -- UniFrac, phylogeny, distances
    Case("pretrain without a phylogeny or distance matrix",
         r"UniFrac needs a rooted phylogeny.*or a distance", lambda c: c.pretrain()),
    Case("both a phylogeny and a distance matrix",
         r"either a phylogeny \(--i-phylogeny\) or a distance matrix "
         r"\(--i-distance-matrix\) for UniFrac, not both",
         lambda c: c.pretrain(phylogeny=c.a["tree"],
                              distance_matrix=_distance_matrix(c, c.ids()))),
    Case("a distance matrix lacking some samples",
         r"sample\(s\) of the table are not in the distance",
         lambda c: c.pretrain(distance_matrix=_distance_matrix(c, c.ids()[:10]))),
    Case("a phylogeny lacking some features", r"feature\(s\) are not tips of the phylogeny",
         lambda c: c.pretrain(phylogeny=_small_tree(c))),
    Case("a phylogeny given to train without --p-unifrac-weight or the linear readout",
         r"phylogeny was given, but it would not be used.*--p-linear-readout",
         lambda c: c.train(phylogeny=c.a["tree"], linear_readout=False)),
    Case("a distance matrix given to train without --p-unifrac-weight",
         r"distance matrix was given, but --p-unifrac-weight is 0",
         lambda c: c.train(distance_matrix=_distance_matrix(c, c.ids()))),
    Case("a phylogeny and a distance matrix given to train without --p-unifrac-weight",
         r"distance matrix was given, but --p-unifrac-weight is 0",
         lambda c: c.train(phylogeny=c.a["tree"],
                           distance_matrix=_distance_matrix(c, c.ids()))),
    Case("a phylogeny lacking some features, given to train for the readout's clades",
         r"feature\(s\) are not tips of the phylogeny",
         lambda c: c.train(phylogeny=_small_tree(c))),
    Case("a phylogeny lacking some features, given to train for UniFrac",
         r"feature\(s\) are not tips of the phylogeny",
         lambda c: c.train(phylogeny=_small_tree(c), unifrac_weight=0.5)),
    Case("a distance matrix lacking some samples, given to train",
         r"sample\(s\) of the table are not in the distance",
         lambda c: c.train(distance_matrix=_distance_matrix(c, c.ids()[:10]),
                           unifrac_weight=0.5)),
    Case("a phylogeny given to train-and-evaluate for a classifier without pretraining",
         r"phylogeny was given, but it would not be used.*--p-pretrain-epochs is 0",
         lambda c: c.aam.actions.train_and_evaluate(
             table=c.a["table"], sequences=c.a["sequences"], phylogeny=c.a["tree"],
             metadata=c.md.get_column("delivery"), task="classification", epochs=1)),
    Case("--p-mlm-weight with the (default) frozen pretrained encoder",
         r"--p-no-freeze-encoder", lambda c: c.train(pretrained=c.trained[0], mlm_weight=0.5)),
    # -- subjects and metadata columns
    Case("a subjects column with missing values",
         r"sample\(s\) have no value in the subjects column",
         lambda c: c.train(subjects=_subjects(c, missing=3))),
    Case("--p-categorical-columns without --m-sample-metadata-file",
         r"--p-categorical-columns delivery needs the metadata",
         lambda c: c.train(categorical_columns=["delivery"])),
    Case("a categorical column the metadata lacks", r"names \['nonesuch'\], which the sample "
         r"metadata does not have \(it has \[.*'delivery'",
         lambda c: c.train(categorical_columns=["nonesuch"],
                                                      sample_metadata=c.md)),
    Case("a numeric column as a categorical column", r"columns must be categorical.*"
         r"\['age_days'\] are numeric", lambda c: c.train(categorical_columns=["age_days"],
                                                         sample_metadata=c.md)),
    Case("sample metadata lacking some samples", r"sample\(s\) are not in the sample metadata",
         lambda c: c.train(categorical_columns=["delivery"],
                           sample_metadata=c.md.filter_ids(c.ids()[:10]))),
    Case("columns with --p-categorical-fusion none", r"would not be used.*'gmu'",
         lambda c: c.train(categorical_columns=["delivery"], sample_metadata=c.md,
                           categorical_fusion="none")),
    Case("a fusion mode without columns", r"No --p-categorical-columns were given.*no-op",
         lambda c: c.train(categorical_fusion="concat"), warns=True),
    Case("FiLM together with a fusion mode", r"--p-film-conditioning and "
         r"--p-categorical-fusion concat both", lambda c: c.train(
             categorical_columns=["delivery"], sample_metadata=c.md, categorical_fusion="concat",
             film_conditioning=True), warns=True),
    Case("explain-conditioning on a model trained without categorical columns",
         r"trained without --p-categorical-columns: it reads no metadata",
         lambda c: c.aam.visualizers.explain_conditioning(
             model=c.trained[1], table=c.a["new_table"], sequences=c.a["sequences"],
             sample_metadata=c.md)),
    Case("sample metadata that nothing uses", r"was given but nothing uses it",
         lambda c: c.train(sample_metadata=c.md)),
    # -- models
    Case("predict with an encoder", r"AAMModel\[AAMEncoder\] was passed",
         lambda c: c.predict(c.trained[0])),
    Case("predict on a table whose ASVs are all new (sequences cut 10 nt later)",
         r"Warning: 100% of the reads are in ASVs this model did not learn",
         lambda c: c.aam.actions.predict(
             model=c.trained[1], table=_retrimmed(c)), warns=True),
    Case("--p-match-identity below 0.5", r"match_identity.*incompatible",
         lambda c: c.predict(c.trained[1], match_identity=0.3)),
    Case("a pretrained encoder with another --p-embedding-dim",
         r"embedding_dim=32 \(pretrained: 16\)",
         lambda c: c.train(pretrained=c.trained[0], embedding_dim=32)),
    Case("a model whose weights were changed", r"sha256",
         lambda c: _model_folder_edit(c, _flip_byte)),
    Case("a model whose config.json is not JSON", r"not valid JSON|Not an AAM model config",
         lambda c: _model_folder_edit(c, lambda d: (d / "config.json").write_text("{oops"))),
    Case("a model whose config.json lacks its keys", r"lacks",
         lambda c: _model_folder_edit(c, lambda d: (d / "config.json").write_text(
             json.dumps({"kind": "regressor"})))),
    Case("a model without its weights file", r"model\.safetensors",
         lambda c: _model_folder_edit(c, lambda d: (d / "model.safetensors").unlink())),
    Case("a model written by a newer q2-aam (format_version)", r"format_version",
         lambda c: _model_folder_edit(c, _config_edit(
             lambda v: v.update(format_version=99)))),
    Case("a model whose config.json was edited (embedding_dim 16 -> 32)",
         r"do not match its config\.json.*Check .*embedding_dim",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(embedding_dim=32))))),
    Case("a model config with a setting of the wrong type (perceiver_num_latents {})",
         r"Model setting 'perceiver_num_latents' must be a whole number.*got \{\}",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(perceiver_num_latents={}))))),
    Case("a model config with NaN (n_outputs)",
         r"Model setting 'n_outputs' must be a whole number.*got nan",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(n_outputs=float("nan")))))),
    Case("a model config with a huge size (max_sequence_length 1e308)",
         r"Model setting 'max_sequence_length' must be a whole number from 0 to 100,000",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(max_sequence_length=1e308))))),
    Case("a model config with a switch set to a number (linear_presence -0.5)",
         r"Model setting 'linear_presence' must be true or false, got -0.5",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(linear_presence=-0.5))))),
    Case("a model config with an unknown setting", r"Unknown model config keys.*newer q2-aam",
         lambda c: c.predict(_model_folder_edit(c, _config_edit(
             lambda v: v["model"].update(future_setting=1))))),
    # -- how to train
    Case("--p-mixed-precision fp16 on a machine without a GPU", r"'fp16' needs a GPU",
         lambda c: c.train(mixed_precision="fp16")),
    Case("a batch size that does not split over the processes",
         r"batch size \(9\).*must be a multiple of 2", lambda c: c.train(
             batch_size=9, num_processes=2, **{k: v for k, v in SMALL.items()
                                               if k != "batch_size"})),
    Case("a checkpoint folder that is a file", r"checkpoint directory .* is a file",
         lambda c: c.train(checkpoint_dir=str(_a_file(c)))),
    Case("a TensorBoard folder that is a file", r"TensorBoard directory .* is a file",
         lambda c: c.train(tensorboard_dir=str(_a_file(c)))),
    Case("a checkpoint folder that cannot be written", r"cannot be written",
         lambda c: c.train(checkpoint_dir="/proc/q2-aam-checkpoints")),
    Case("resuming with other settings", r"other settings: config\.learning_rate",
         lambda c: (_api_train(c, checkpoint_dir=str(c.tmp / "ck")),
                    _api_train(c, checkpoint_dir=str(c.tmp / "ck"),
                               config={"learning_rate": 0.01}))),
    Case("resuming on other data", r"other settings: training_data",
         lambda c: (_api_train(c, checkpoint_dir=str(c.tmp / "ck")),
                    _api_train(c, checkpoint_dir=str(c.tmp / "ck"),
                               y=np.linspace(10, 0, 20)))),
    Case("a checkpoint whose 'latest' names a missing epoch", r"latest names 'epoch-7', "
         r"which is missing", lambda c: _checkpointed(
             c, lambda f: (f / "latest").write_text("epoch-7"))),
    Case("a checkpoint file replaced by a pickle (it is never unpickled)",
         r"run\.json cannot be read", lambda c: _checkpointed(c, _payload)),
    Case("a damaged checkpoint weights file", r"weights-0\.safetensors cannot be read",
         lambda c: _checkpointed(c, lambda f: (f / "epoch-1" / "weights-0.safetensors")
                                 .write_bytes(b"\x00" * 10))),
    Case("a checkpoint of a 2-process run resumed in 1 process", r"processes: checkpoint 2, "
         r"now 1", lambda c: _checkpointed(
             c, lambda f: _edit_json(f / "epoch-1" / "run.json",
                                     lambda v: v["signature"].update(processes=2)))),
    Case("a full disk while checkpointing", r"Could not write the checkpoint .*No space left",
         lambda c: _full_disk(c)),
    Case("a numeric target given as text in the metadata file",
         r"is categorical, but --p-task is 'regression'",
         lambda c: c.train(metadata=c.md.get_column("subject"))),
    Case("classification with only one class",
         r"Classification needs at least 2 classes; the target has \['only'\]",
         lambda c: c.train(task="classification",
                           metadata=_classes(c, lambda i, k: "only"))),
    Case("a token limit of 0 (core API)", r"token_limit must be at least 1",
         lambda c: _bad_samples(token_limit=0)),
    Case("negative counts (core API)", r"negative or non-finite counts",
         lambda c: _bad_samples(counts=-1)),
    Case("NaN counts (core API)", r"negative or non-finite counts",
         lambda c: _bad_samples(counts=np.nan)),
    Case("sample IDs that do not fit the count matrix (core API)",
         r"Count matrix is 2 samples x 2 features, but got 3 sample IDs",
         lambda c: _bad_samples(ids=3)),
    Case("an unknown task (core API)",
         r"task must be one of \('regression', 'classification'\), got 'clustering'",
         lambda c: _api_train(c, task="clustering")),
    Case("--p-validation-fraction 1 (core API)", r"validation fraction must be in \[0, 1\)",
         lambda c: _api_train(c, validation_fraction=1.0)),
]


def _zero_sample(c):
    t = c.table
    first = t.ids()[0]
    frame = t.to_dataframe(dense=True)
    frame[first] = 0
    return biom.Table(frame.values, frame.index, frame.columns)


def _lengthen(series):
    series.iloc[0] = skbio.DNA("ACGT" * 600)
    return series


def _small_tree(c):
    tree = c.a["tree"].view(skbio.TreeNode)
    tips = [t.name for t in tree.tips()][: len(list(tree.tips())) // 2]
    small = tree.shear(tips)
    return qiime2.Artifact.import_data("Phylogeny[Rooted]", small)


def _subjects(c, missing):
    ids = c.ids()
    series = c.md.get_column("subject").to_series().loc[ids].astype(object)
    series.iloc[:missing] = np.nan
    frame = pd.DataFrame({"subject": series})
    return c.metadata(frame).get_column("subject")


def _flip_byte(d):
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (d / "model.safetensors").write_bytes(bytes(raw))


def _retrimmed(c):
    from q2_aam.example_data.variants import retrim
    return qiime2.Artifact.import_data("FeatureTable[Frequency]",
                                       retrim(c.a["new_table"].view(biom.Table), 10))


def _a_file(c):
    path = c.tmp / "taken"
    path.write_text("not a folder")
    return path


def _edit_json(path, change):
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))


def _full_disk(c):
    import safetensors.torch
    from safetensors import SafetensorError
    original = safetensors.torch.save_file

    def full(tensors, filename, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")
    safetensors.torch.save_file = full
    try:
        _api_train(c, checkpoint_dir=str(c.tmp / "ck"))
    finally:
        safetensors.torch.save_file = original


def _bad_samples(token_limit=4, counts=1.0, ids=2):
    from q2_aam.core.data import AmpliconSamples
    matrix = np.array([[counts, 2.0], [3.0, 4.0]])
    AmpliconSamples.from_counts(matrix, [f"s{i}" for i in range(ids)], ["a", "b"],
                                ["ACGT", "CCGT"], token_limit)


@pytest.fixture(scope="module")
def trained(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    encoder, = aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                                    phylogeny=a["tree"], epochs=1, **SMALL)
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               metadata=ecam_subset["metadata"].get_column("age_days"),
                               epochs=1, **SMALL)
    return encoder, model


def _normalised(message: str, tmp: Path) -> str:
    """The message with this run's scratch paths replaced, so that the doc is stable."""
    import tempfile
    message = message.replace(str(tmp), "<folder>")
    for root in {"/tmp", tempfile.gettempdir()}:
        message = re.sub(re.escape(root) + r"/\S*?(?=[\s,;:)'\"]|$)", "<temporary folder>",
                         message)
    message = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", message)  # differ with the weights
    return " ".join(message.split())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, aam, ecam_subset, trained, tmp_path, capfd):
    c = Context(aam, ecam_subset, tmp_path, trained)
    capfd.readouterr()
    if case.warns:
        case.run(c)
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if re.search(case.expect, line)]
        assert lines, f"no warning matching {case.expect!r} in:\n{err[-2000:]}"
        message = lines[0]
    else:
        with pytest.raises(Exception) as error:
            case.run(c)
        message = str(error.value)
        assert re.search(case.expect, message, re.S), message
        assert "Traceback" not in message
    assert not (tmp_path / "ck" / "payload-ran").exists()
    SEEN[case.name] = _normalised(message, tmp_path)


@pytest.mark.parametrize("inputs", ["tree", "matrix"])
def test_bad_distance_inputs_are_refused_before_any_work(inputs, aam, ecam_subset, capfd):
    """UniFrac is computed late (after every setting is checked), but its inputs are
    checked at once: the error comes before the samples are read into the model (no
    readout fitted, no training started)."""
    c = Context(aam, ecam_subset, None, None)
    capfd.readouterr()
    bad = ({"phylogeny": _small_tree(c)} if inputs == "tree" else
           {"distance_matrix": _distance_matrix(c, c.ids()[:10])})
    with pytest.raises(ValueError, match="not tips of the phylogeny|not in the distance"):
        c.train(unifrac_weight=0.5, **bad)
    err = capfd.readouterr().err
    assert "Linear readout" not in err and "Training a regression" not in err, err[-2000:]


# -- beyond the catalogue ---------------------------------------------------------------------
# Bad input tested on its own: with its own input or settings, or with more than a Case
# checks (that the refusal comes before any work, that a warning is said once, which
# samples are left out and trained on, a refusal by type).

# the feature table and the sequences

def test_a_table_without_samples_is_named_as_such(aam, ecam_subset):
    import biom
    a = ecam_subset["artifacts"]
    full = a["table"].view(biom.Table)
    empty = full.filter([], axis="sample", inplace=False)
    art = qiime2.Artifact.import_data("FeatureTable[Frequency]", empty)
    with pytest.raises(ValueError, match="The feature table has no samples"):
        aam.actions.train(table=art, sequences=a["sequences"],
                          metadata=ecam_subset["metadata"].get_column("age_days"), epochs=1,
                          **SMALL)


def test_missing_samples_error_or_ignore(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"].to_dataframe()
    partial = qiime2.Metadata(md.drop(index=ecam_subset["train_ids"][:3]))
    col = partial.get_column("age_days")
    with pytest.raises(ValueError, match="3 sample.*not in the metadata.*missing-samples"):
        aam.actions.train(table=a["table"], sequences=a["sequences"], metadata=col, epochs=1,
                          **SMALL)
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], metadata=col,
                               missing_samples="ignore", epochs=1, **SMALL)
    assert model.view(ModelBundle).training["n_samples"] == 37


def test_non_integer_counts_are_named_and_read_as_relative_abundances(aam, ecam_subset,
                                                                        capfd):
    a = ecam_subset["artifacts"]
    table = a["table"].view(biom.Table).norm(axis="sample", inplace=False)
    given = qiime2.Artifact.import_data("FeatureTable[Frequency]", table)
    capfd.readouterr()
    aam.actions.train(table=given, sequences=a["sequences"], epochs=1,
                      metadata=ecam_subset["metadata"].get_column("age_days"), **SMALL)
    err = capfd.readouterr().err
    assert "non-integer value(s) (e.g. 0." in err and "relative abundances" in err, err[-500:]


def test_feature_ids_that_are_not_dna_need_sequences(aam, ecam_subset):
    import biom
    table = biom.load_table("/usr/lib/python3/dist-packages/q2_diversity_lib/tests/data/"
                            "crawford.biom")
    art = qiime2.Artifact.import_data("FeatureTable[Frequency]", table)
    md = qiime2.Metadata(pd.DataFrame({"y": np.arange(table.shape[1], dtype=float)},
                                      index=pd.Index(table.ids(), name="id")))
    with pytest.raises(ValueError, match=r"--i-sequences.*not DNA sequences"):
        aam.actions.train(table=art, metadata=md.get_column("y"), epochs=1)


def _any_regressor(aam, ecam_subset):
    m, = train_age(aam, ecam_subset, epochs=1, **SMALL)
    return m


def test_sequences_missing_for_features(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    seqs = a["sequences"].view(pd.Series).iloc[5:]
    short = qiime2.Artifact.import_data("FeatureData[Sequence]", seqs)
    with pytest.raises(ValueError, match="5 of the table's .* features have no sequence"):
        aam.actions.predict(model=_any_regressor(aam, ecam_subset), table=a["table"],
                            sequences=short)


def test_a_patch_longer_than_every_sequence_is_refused(aam, ecam_subset):
    with pytest.raises(ValueError, match=r"patch size \(512 nt, --p-patch-size\) is longer "
                                         r"than the longest sequence"):
        train_age(aam, ecam_subset, epochs=1, **{**SMALL, "patch_size": 512})


# the target

def test_categorical_target_needs_classification_task(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="categorical.*--p-task classification"):
        aam.actions.train(table=a["table"], sequences=a["sequences"],
                          metadata=ecam_subset["metadata"].get_column("delivery"), epochs=1)


def test_empty_targets_are_dropped_and_counted(aam, ecam_subset, capfd):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"].to_dataframe()
    md.loc[ecam_subset["train_ids"][:2], "age_days"] = np.nan
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               metadata=qiime2.Metadata(md).get_column("age_days"), epochs=1,
                               **SMALL)
    assert model.view(ModelBundle).training["n_samples"] == 38
    assert "Leaving out 2 sample(s) whose 'age_days' is missing" in capfd.readouterr().err


def test_a_validation_fraction_that_leaves_too_few_to_train_names_the_counts(aam,
                                                                          ecam_subset):
    with pytest.raises(ValueError, match=r"40 sample\(s\) with validation fraction 0.99 leave "
                                         r"0 for training and 40 for validation.*"
                                         r"--p-validation-fraction"):
        train_age(aam, ecam_subset, validation_fraction=0.99, epochs=1, **SMALL)


def test_nonnegative_with_zscore_is_refused_before_training(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="centres the target at 0"):
        aam.actions.train(table=a["table"], sequences=a["sequences"],
                          metadata=ecam_subset["metadata"].get_column("age_days"),
                          target_transform="zscore", output_constraint="nonnegative",
                          epochs=1, **SMALL)


def test_regression_settings_with_a_classifier_are_refused(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="--p-loss, --p-quantiles apply to numeric targets"):
        aam.actions.train(table=a["table"], sequences=a["sequences"], task="classification",
                          metadata=ecam_subset["metadata"].get_column("delivery"),
                          loss="quantile", quantiles=[0.2, 0.8], epochs=1, **SMALL)


def test_train_and_evaluate_needs_enough_subjects_to_hold_some_out(aam, ecam_subset):
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    few = md.filter_ids(ecam_subset["train_ids"][:25])  # samples of at most 3 subjects
    with pytest.raises(ValueError, match=r"too few to hold some out"):
        aam.actions.train_and_evaluate(table=a["table"], sequences=a["sequences"],
                                       metadata=few.get_column("age_days"),
                                       subjects=few.get_column("subject"), epochs=1,
                                       missing_samples="ignore")
    # As in 'train', table samples the metadata lacks are named unless ignored.
    with pytest.raises(ValueError, match=r"15 sample\(s\) of the table are not in the "
                                         r"metadata.*--p-missing-samples ignore"):
        aam.actions.train_and_evaluate(table=a["table"], sequences=a["sequences"],
                                       metadata=few.get_column("age_days"), epochs=1)


# UniFrac and pretraining

def test_pretrain_needs_a_tree_or_distances(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="rooted phylogeny.*or a distance"):
        aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"], epochs=1)


def test_masked_nucleotide_loss_on_the_default_frozen_encoder_says_how_to_unfreeze(
        aam, ecam_subset, trained):
    encoder, _ = trained
    with pytest.raises(ValueError, match="--p-no-freeze-encoder"):
        train_age(aam, ecam_subset, pretrained=encoder, mlm_weight=0.5, epochs=1)


# metadata columns

def test_unused_sample_metadata_is_refused(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="nothing uses it"):
        aam.actions.train(table=a["table"], sequences=a["sequences"],
                          metadata=ecam_subset["metadata"].get_column("age_days"),
                          sample_metadata=ecam_subset["metadata"], epochs=1, **SMALL)


@pytest.mark.parametrize("settings,message", [
    ({"normalize_by": ["delivery"]}, "only by the 'zscore-category'"),
    ({"categorical_columns": ["delivery"], "categorical_fusion": "none"}, "would not be used"),
])
def test_metadata_settings_that_do_not_fit_are_refused(aam, ecam_subset, settings, message):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"]
    with pytest.raises(ValueError, match=message):
        aam.actions.train(table=a["table"], sequences=a["sequences"],
                          metadata=md.get_column("age_days"), sample_metadata=md,
                          epochs=1, **settings, **SMALL)


def test_fusion_without_columns_is_a_noop_said_once(aam, ecam_subset, capfd):
    a = ecam_subset["artifacts"]
    capfd.readouterr()
    aam.actions.train(table=a["table"], sequences=a["sequences"],
                      metadata=ecam_subset["metadata"].get_column("age_days"),
                      categorical_fusion="concat", epochs=1, **SMALL)
    assert capfd.readouterr().err.count("is a no-op") == 1


def test_film_with_concat_warns(aam, ecam_subset, capfd):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"]
    capfd.readouterr()
    aam.actions.train(table=a["table"], sequences=a["sequences"],
                      metadata=md.get_column("age_days"), sample_metadata=md,
                      categorical_columns=["delivery"], categorical_fusion="concat",
                      film_conditioning=True, epochs=1, **SMALL)
    assert "both inject the same categorical vector" in capfd.readouterr().err


# models

def test_encoder_cannot_predict(aam, ecam_subset, trained):
    encoder, _ = trained
    a = ecam_subset["artifacts"]
    with pytest.raises(TypeError):
        aam.actions.predict(model=encoder, table=a["table"], sequences=a["sequences"])


def test_architecture_differing_from_the_pretrained_encoder_is_refused(aam, ecam_subset,
                                                                        trained):
    encoder, _ = trained
    with pytest.raises(ValueError, match="embedding_dim=32 \\(pretrained: 16\\)"):
        train_age(aam, ecam_subset, pretrained=encoder, embedding_dim=32, epochs=1)


@pytest.mark.parametrize("damage,message", [
    ("weights", "sha256"),
    ("config-json", "not valid JSON|Not an AAM model config"),
    ("config-keys", "lacks"),
    ("missing-weights", "model.safetensors"),
])
def test_format_refuses_damaged_models(trained, tmp_path, damage, message):
    import json
    _, model = trained
    d = exported_data(model, tmp_path)
    if damage == "weights":
        raw = bytearray((d / "model.safetensors").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (d / "model.safetensors").write_bytes(bytes(raw))
    elif damage == "config-json":
        (d / "config.json").write_text("{oops")
    elif damage == "config-keys":
        (d / "config.json").write_text(json.dumps({"kind": "regressor"}))
    else:
        (d / "model.safetensors").unlink()
    with pytest.raises((ValidationError, ValueError), match=message):
        qiime2.Artifact.import_data("AAMModel[AAMRegressor]", str(d))


# how to train

def test_unwritable_checkpoint_folder_is_refused_before_unifrac(aam, ecam_subset, tmp_path,
                                                                 capfd):
    a = ecam_subset["artifacts"]
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ValueError, match="checkpoint directory .* is a file"):
        aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                             phylogeny=a["tree"], checkpoint_dir=str(taken), **SMALL)
    assert "UniFrac" not in capfd.readouterr().err


def test_fp16_on_a_cpu_machine_is_refused_before_any_work(aam, ecam_subset, capfd):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    a = ecam_subset["artifacts"]
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                             phylogeny=a["tree"], mixed_precision="fp16", **SMALL)
    assert "UniFrac" not in capfd.readouterr().err


def test_bad_input_doc_is_current():
    """docs/bad-input.md lists every case with the message it gave in this run."""
    if len(SEEN) < len(CASES):
        pytest.skip("only some cases ran")
    lines = ["# Bad input: what q2-aam says", "",
             "Generated by `tests/test_bad_input.py` from its cases (each run on a real "
             "ECAM subset through the plugin's actions, or the core API where noted); a test "
             "fails when this file is stale. Regenerate with "
             "`AAM_WRITE_BAD_INPUT_DOC=1 .venv/bin/python -m pytest tests/test_bad_input.py`.",
             "", f"{len(CASES)} cases; *warning* marks input that is accepted with a message.",
             ""]
    for case in CASES:
        kind = " *(warning)*" if case.warns else ""
        lines += [f"## {case.name}{kind}", "", "```", SEEN[case.name], "```", ""]
    text = "\n".join(lines)
    if os.environ.get("AAM_WRITE_BAD_INPUT_DOC"):
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, (
        "docs/bad-input.md is stale; regenerate it with AAM_WRITE_BAD_INPUT_DOC=1 (see the "
        "module docstring)")
