import os

import numpy as np
import pandas as pd
import pytest
import skbio

# The real plugin must load, not QIIME 2's test dummies.
os.environ.pop("QIIMETEST", None)

#: The small architecture of the core's unit tests (``api.train(architecture=...)``,
#: ``ModelConfig``): seconds per model on a CPU.
SMALL_ARCHITECTURE = dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1,
                          sample_layers=1, patch_size=4, max_sequence_length=64, dropout=0.0)
#: The same size through the plugin's actions (their parameters).
SMALL_ACTION = dict(token_limit=32, embedding_dim=16, attention_heads=2, nucleotide_layers=1,
                    sample_layers=1, batch_size=8)


def random_samples(n_samples=12, n_features=30, length=40, token_limit=16, seed=0):
    """Small synthetic samples for unit tests of the core (shapes, masks, determinism)."""
    from q2_aam.core.data import AmpliconSamples
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), rng.integers(length // 2, length + 1)))
            for _ in range(n_features)]
    counts = rng.poisson(0.7, (n_samples, n_features)) * rng.integers(1, 30, (n_samples, n_features))
    counts[:, 0] += 1
    return AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n_samples)],
                                       [f"f{i}" for i in range(n_features)], seqs, token_limit)


@pytest.fixture
def samples():
    return random_samples()


def small_model(task="regression", n_outputs=1, seed=0):
    """An ``AAMModel`` of ``SMALL_ARCHITECTURE``, seeded, in eval mode."""
    import torch
    from q2_aam.core.model import AAMModel, ModelConfig
    torch.manual_seed(seed)
    return AAMModel(ModelConfig(task=task, n_outputs=n_outputs, **SMALL_ARCHITECTURE)).eval()


def batch_of(samples, rows, targets=None):
    """The collated batch of ``samples``' ``rows`` (their features tokenized)."""
    from q2_aam.core.data import BatchCollator
    from q2_aam.core.tokenizer import tokenize
    tokens = tokenize(samples.sequences).tokens
    return BatchCollator(samples, tokens, targets)(rows)


def tiny_train(samples, seed=0, **kwargs):
    """``api.train`` of a small regressor for 2 epochs (target: each sample's first count);
    returns ``(bundle, y)``."""
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    y = np.array([float(samples.sample(i)[1][0]) for i in range(len(samples))])
    return api.train(samples, y, task="regression", architecture=dict(SMALL_ARCHITECTURE),
                     config=TrainConfig(epochs=2, batch_size=4, seed=seed, device="cpu"),
                     log=lambda m: None, **kwargs), y


def exported_data(artifact, folder):
    """``artifact``'s data exported into ``folder / "exported"``; returns that folder."""
    d = folder / "exported"
    artifact.export_data(str(d))
    return d


@pytest.fixture(scope="session")
def aam():
    """The plugin's actions, as the QIIME 2 Python API gives them."""
    from qiime2.plugins import aam
    return aam


@pytest.fixture(scope="session")
def ecam_subset(tmp_path_factory):
    """A small real fixture: ECAM samples of 6 subjects, as QIIME 2 artifacts.

    ``train`` holds 40 samples of 4 subjects, ``new`` 12 samples of 2 other
    subjects (with ASVs the training samples lack). Downloaded once and cached
    (see q2_aam.example_data).
    """
    import qiime2
    from q2_aam.example_data import load_dataset

    out = tmp_path_factory.mktemp("ecam-subset")
    data = load_dataset("ecam")
    md = data.metadata
    subjects = sorted(md["subject"].unique(), key=lambda s: (len(s), s))
    chosen = {}
    for role, subs, per in (("train", subjects[:4], 10), ("new", subjects[4:6], 6)):
        ids = []
        for s in subs:
            rows = md[md["subject"] == s].sort_values("age_days")
            ids += list(rows.index[:: max(1, len(rows) // per)][:per])
        chosen[role] = ids
    all_ids = chosen["train"] + chosen["new"]
    table = data.table.filter(all_ids, axis="sample", inplace=False)
    table = table.filter(lambda v, i, m: v.sum() > 0, axis="observation", inplace=False)
    features = list(table.ids(axis="observation"))
    tree = data.tree.shear(features)
    tree.prune()
    seqs = pd.Series([skbio.DNA(f) for f in features], index=features)
    arts = {
        "table": qiime2.Artifact.import_data(
            "FeatureTable[Frequency]", table.filter(chosen["train"], inplace=False)),
        "new_table": qiime2.Artifact.import_data(
            "FeatureTable[Frequency]", table.filter(chosen["new"], inplace=False)),
        "full_table": qiime2.Artifact.import_data("FeatureTable[Frequency]", table),
        "sequences": qiime2.Artifact.import_data("FeatureData[Sequence]", seqs),
        "tree": qiime2.Artifact.import_data("Phylogeny[Rooted]", tree),
    }
    paths = {}
    for name, art in arts.items():
        paths[name] = str(art.save(str(out / name)))
    md_sub = md.loc[all_ids].copy()
    md_sub.index.name = "sample-id"
    metadata = qiime2.Metadata(md_sub.astype({c: str for c in md_sub.columns if c != "age_days"}))
    metadata.save(str(out / "metadata.tsv"))
    paths["metadata"] = str(out / "metadata.tsv")
    return {"dir": out, "paths": paths, "artifacts": arts, "metadata": metadata,
            "train_ids": chosen["train"], "new_ids": chosen["new"]}
