"""Tests of q2_aam.example_data: the real benchmark data (mitre 1.0b1).

The sdist is downloaded once into the real cache ($Q2_AAM_CACHE or
~/.cache/q2-aam) and reused.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from q2_aam.example_data import mitre, splits, tree as tree_mod
from q2_aam.example_data.mitre import (ChecksumError, EXPECTED_SHAPES,
                                       load_dataset)
from q2_aam.example_data.splits import split_samples, subject_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ecam():
    return load_dataset("ecam")


@pytest.fixture(scope="module")
def karelia():
    return load_dataset("karelia")


# ---------------------------------------------------------------- loading


def _check_common(ds, name):
    n_samples, n_features = EXPECTED_SHAPES[name]
    assert ds.table.shape == (n_features, n_samples)
    samples = list(ds.table.ids(axis="sample"))
    assert all(isinstance(s, str) for s in samples)
    assert list(ds.metadata.index) == samples
    assert ds.metadata.index.name == "sample-id"
    assert list(ds.metadata.columns) == (
        ["age_days", "subject"] + mitre.CATEGORICAL_COLUMNS[name])
    assert ds.metadata["age_days"].dtype == np.float64
    assert ds.metadata["age_days"].notna().all()
    assert all(isinstance(s, str) for s in ds.metadata["subject"])
    # protocol: >= 1,000 reads per sample, no absent feature
    assert ds.table.sum(axis="sample").min() >= mitre.MIN_READS
    assert ds.table.sum(axis="observation").min() > 0
    features = list(ds.table.ids(axis="observation"))
    assert len(set(features)) == len(features)
    assert all(set(f) <= set("ACGT") for f in features)


def test_ecam_counts(ecam):
    _check_common(ecam, "ecam")
    assert ecam.metadata["subject"].nunique() == 43
    assert ecam.info["raw_samples"] == 1216
    assert ecam.info["raw_features"] == 4780
    # the metadata leaves out exactly the .r replicates and .M maternal
    # samples of the table
    assert ecam.info["excluded_replicates"] == 23
    assert ecam.info["excluded_maternal"] == 296
    assert not any(s.endswith(".r") or ".M" in s for s in ecam.sample_ids)
    assert ecam.info["dropped_low_depth"] == 0
    assert {len(f) for f in ecam.feature_ids} == {137}
    ages = ecam.metadata["age_days"]
    assert ages.min() == 0 and ages.max() == 1038
    # ecam subjects look numeric but stay strings
    assert "1" in set(ecam.metadata["subject"])


def test_karelia_counts(karelia):
    _check_common(karelia, "karelia")
    assert karelia.info["raw_samples"] == 1866
    assert karelia.info["dropped_low_depth"] == 105
    assert karelia.info["dropped_absent_features"] == 4
    assert karelia.metadata["subject"].nunique() == 221
    assert set(karelia.metadata["country"]) == {"FIN", "EST", "RUS"}
    lengths = {len(f) for f in karelia.feature_ids}
    assert min(lengths) == 155 and max(lengths) == 249


# ----------------------------------------------------------------- splits


def test_split_sizes(ecam, karelia):
    for ds, n_subjects, n_test in ((ecam, 43, 9), (karelia, 221, 44)):
        for k in range(splits.N_SPLITS):
            train, test = subject_split(ds.metadata["subject"], k)
            assert len(test) == n_test
            assert len(train) + len(test) == n_subjects
            assert not set(train) & set(test)


def test_split_known_values(ecam):
    # Pins the protocol: sha256("split<k>:<subject>") order, first 20 %.
    _train, test = subject_split(ecam.metadata["subject"], 0)
    assert test == ["10", "17", "24", "27", "33", "41", "42", "55", "9"]
    train_ids, test_ids = split_samples(ecam.metadata, 0)
    assert (len(train_ids), len(test_ids)) == (707, 190)


def test_split_deterministic_and_disjoint(karelia):
    md = karelia.metadata
    subjects = list(md["subject"])
    shuffled = subjects[:]
    random.Random(1).shuffle(shuffled)
    tests = []
    for k in range(splits.N_SPLITS):
        first = subject_split(subjects, k)
        assert subject_split(shuffled, k) == first
        assert subject_split(subjects, k) == first
        tests.append(tuple(first[1]))
        train_ids, test_ids = split_samples(md, k)
        assert set(train_ids).isdisjoint(test_ids)
        assert sorted(train_ids + test_ids) == sorted(md.index)
        assert set(md.loc[train_ids, "subject"]).isdisjoint(
            md.loc[test_ids, "subject"])
    assert len(set(tests)) == splits.N_SPLITS


def test_split_rejects_non_str_subjects():
    with pytest.raises(TypeError):
        subject_split([1, 2, 3], 0)
    with pytest.raises(ValueError):
        subject_split(["a"], -1)


# ------------------------------------------------------------------- tree


@pytest.mark.parametrize("name", ["ecam", "karelia"])
def test_tree_tips_are_features(name, ecam, karelia):
    ds = {"ecam": ecam, "karelia": karelia}[name]
    tips = [t.name for t in ds.tree.tips()]
    assert len(tips) == len(set(tips))
    assert set(tips) == set(ds.feature_ids)
    assert len(ds.tree.children) == 2
    for node in ds.tree.preorder(include_self=False):
        assert node.length is not None and node.length >= 0
    assert ds.info["tree"]["unplaced"] == 0
    assert ds.info["tree"]["placed"] == len(tips)


def test_unifrac_from_tree(ecam, tmp_path):
    unifrac = pytest.importorskip("unifrac")
    from biom.util import biom_open

    with biom_open(str(tmp_path / "t.biom"), "w") as fh:
        ecam.table.to_hdf5(fh, "test")
    ecam.tree.write(str(tmp_path / "t.nwk"))
    dm = unifrac.unweighted(str(tmp_path / "t.biom"), str(tmp_path / "t.nwk"))
    data = dm.data
    assert data.shape == (897, 897)
    assert not np.isnan(data).any()
    assert data.min() >= 0 and data.max() <= 1
    assert np.allclose(data, data.T) and np.allclose(np.diag(data), 0)
    off = data[np.triu_indices_from(data, 1)]
    assert 0.3 < off.mean() < 0.9


def test_graft_toy(tmp_path):
    # ((A:1{0},B:2{1}):0.5{2},C:1{3}){4};
    jplace = {
        "version": 3,
        "fields": ["edge_num", "likelihood", "like_weight_ratio",
                   "distal_length", "pendant_length"],
        "tree": "((A:1{0},B:2{1})0.9:0.5{2},C:1{3}){4};",
        "placements": [
            # X: best on edge 0 (the second row has the higher lwr)
            {"p": [[3, -10.0, 0.2, 0.5, 0.3], [0, -9.0, 0.8, 0.25, 0.1]],
             "nm": [["x", 1]]},
            # Y: same edge, farther from A
            {"p": [[0, -9.0, 1.0, 0.75, 0.2]], "n": ["y"]},
            # Z: on edge 2, at the top end
            {"p": [[2, -9.0, 1.0, 0.5, 0.05]], "nm": [["z", 1]]},
        ],
    }
    path = tmp_path / "toy.jplace"
    path.write_text(json.dumps(jplace))
    names = {"x": "X", "y": "Y", "z": "Z"}
    root, info = tree_mod.placement_tree(path, names, ["X", "Y", "Z", "W"])
    assert info["placed"] == 3 and info["unplaced"] == 1
    assert {t.name for t in root.tips()} == {"X", "Y", "Z", "W"}
    assert len(root.children) == 2
    dist = lambda a, b: root.find(a).distance(root.find(b))  # noqa: E731
    # X sits 0.25 above A, Y 0.75 above A: X-Y = 0.1 + 0.5 + 0.2
    assert dist("X", "Y") == pytest.approx(0.8)
    # Y to the top of edge 2 (the old root): 1 - 0.75 + 0.5; Z's pendant
    # hangs from that point.
    assert dist("Y", "Z") == pytest.approx(0.2 + 0.25 + 0.5 + 0.05)
    # W: unplaced, attached to the root on the mean depth of the others
    depth = info["unplaced_branch_length"]
    assert root.find("W").length == pytest.approx(depth)
    assert depth > 0


# ------------------------------------------------------- download checks


def test_verify_sha256_refuses_wrong_file(tmp_path):
    fake = tmp_path / mitre.SDIST_NAME
    fake.write_bytes(b"not the mitre sdist")
    with pytest.raises(ChecksumError) as err:
        mitre.verify_sha256(fake)
    message = str(err.value)
    assert mitre.SDIST_SHA256 in message
    assert mitre.sha256_of(fake) in message


def test_fetch_refuses_corrupted_download(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / mitre.SDIST_NAME).write_bytes(b"stale, corrupted file")

    def corrupted(tmp):
        out = Path(tmp) / mitre.SDIST_NAME
        out.write_bytes(b"corrupted download")
        return out

    with pytest.raises(ChecksumError):
        mitre.fetch_mitre(cache, downloader=corrupted)
    # nothing half-written was left in the cache
    leftovers = sorted(p.name for p in cache.iterdir())
    assert leftovers == [mitre.SDIST_NAME]
    assert (cache / mitre.SDIST_NAME).read_bytes() == b"stale, corrupted file"


def test_fetch_replaces_corrupted_cache(tmp_path):
    real = mitre.fetch_sdist()  # the real cache
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / mitre.SDIST_NAME).write_bytes(b"stale, corrupted file")

    def from_real_cache(tmp):
        out = Path(tmp) / mitre.SDIST_NAME
        shutil.copyfile(real, out)
        return out

    example = mitre.fetch_mitre(cache, downloader=from_real_cache)
    assert mitre.sha256_of(cache / mitre.SDIST_NAME) == mitre.SDIST_SHA256
    assert sorted(p.name for p in example.iterdir()) == ["bokulich",
                                                         "karelia"]
    assert (example / "karelia" / "placement.jplace").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


# -------------------------------------------------------------------- CLI


def test_cli_ecam(tmp_path):
    import qiime2

    from q2_aam.example_data import __main__ as cli

    out = tmp_path / "ecam"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, "-m", "q2_aam.example_data", "ecam",
         "--output-dir", str(out), "--split", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "897 samples" in proc.stdout and "3155 features" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        cli.OUTPUTS + (cli.STAMP,))

    table = qiime2.Artifact.load(str(out / "table.qza"))
    assert str(table.type) == "FeatureTable[Frequency]"
    import biom
    bt = table.view(biom.Table)
    assert bt.shape == (3155, 897)
    features = set(bt.ids(axis="observation"))

    seqs = qiime2.Artifact.load(str(out / "rep-seqs.qza"))
    assert str(seqs.type) == "FeatureData[Sequence]"
    import pandas as pd
    series = seqs.view(pd.Series)
    assert set(series.index) == features
    assert all(str(v) == k for k, v in series.items())

    tree = qiime2.Artifact.load(str(out / "tree.qza"))
    assert str(tree.type) == "Phylogeny[Rooted]"
    import skbio
    assert {t.name for t in tree.view(skbio.TreeNode).tips()} == features

    taxonomy = qiime2.Artifact.load(str(out / "taxonomy.qza"))
    assert str(taxonomy.type) == "FeatureData[Taxonomy]"
    taxa = taxonomy.view(pd.DataFrame)["Taxon"]
    assert set(taxa.index) == features
    assert taxa.str.startswith("k__Bacteria").mean() > 0.9
    assert taxa.str.contains("g__Bifidobacterium").sum() > 10  # infant gut

    md = qiime2.Metadata.load(str(out / "metadata.tsv"))
    assert md.id_count == 897
    types = {name: col.type for name, col in md.columns.items()}
    assert types["age_days"] == "numeric"
    assert types["subject"] == "categorical"
    assert all(t == "categorical" for c, t in types.items()
               if c != "age_days")

    train = qiime2.Artifact.load(str(out / "train-table.qza"))
    test = qiime2.Artifact.load(str(out / "test-table.qza"))
    assert str(train.type) == str(test.type) == "FeatureTable[Frequency]"
    train_ids = set(train.view(biom.Table).ids())
    test_ids = set(test.view(biom.Table).ids())
    assert (len(train_ids), len(test_ids)) == (707, 190)
    assert train_ids.isdisjoint(test_ids)

    # idempotent: a second run sees the outputs and skips
    assert cli.is_complete(out, "ecam", 0)
    assert not cli.is_complete(out, "ecam", 1)
    assert not cli.is_complete(out, "karelia", 0)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(["ecam", "--output-dir", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# --------------------------------------------------------------- baseline


def test_random_forest_ecam_split0(ecam):
    from q2_aam.example_data import baseline

    train_ids, test_ids = split_samples(ecam.metadata, 0)
    result = baseline.random_forest(ecam, train_ids, test_ids, n_jobs=2)
    assert result["n_train"] == 707 and result["n_test"] == 190
    assert list(result["predictions"].index) == test_ids
    # data.md: MAE 94.2 +- 11.1 over five splits; split 0 gives 104.85 here
    assert 70 < result["mae"] < 130
    assert result["r2"] > 0.5
    floor = baseline.mean_predictor(ecam, train_ids, test_ids)
    assert floor["mae"] > result["mae"] + 50

    clf = baseline.classify(ecam, train_ids, test_ids, "delivery", n_jobs=2)
    assert 0 <= clf["balanced_accuracy"] <= 1 and clf["accuracy"] > 0.5
