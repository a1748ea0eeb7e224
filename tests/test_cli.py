"""`qiime aam ...` through q2cli, as a user runs it (the venv's `qiime` command)."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import qiime2
from conftest import SMALL_ACTION

QIIME = Path(sys.executable).parent / "qiime"
pytestmark = pytest.mark.skipif(not QIIME.exists(),
                                reason="the venv's qiime wrapper is made by `make install`")
SMALL = [item for name, value in SMALL_ACTION.items()
         for item in (f"--p-{name.replace('_', '-')}", str(value))]


def qiime(*args, ok=True):
    env = {k: v for k, v in os.environ.items() if k != "QIIMETEST"}
    result = subprocess.run([str(QIIME), *map(str, args)], capture_output=True, text=True,
                            env=env)
    if ok and result.returncode != 0:
        raise AssertionError(f"qiime {' '.join(map(str, args))} failed:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def test_help_lists_the_actions():
    out = qiime("aam", "--help").stdout
    for action in ("pretrain", "train", "predict"):
        assert action in out


def test_train_help_explains_parameters():
    out = qiime("aam", "train", "--help").stdout
    assert "--m-metadata-column" in out and "--p-task" in out
    assert "most abundant" in out


ACTIONS = ("pretrain", "train", "predict", "predict-classification", "training-history",
           "accuracy", "explain-conditioning", "train-and-evaluate")


def test_help_fits_a_screen_and_points_at_pages_a_user_has():
    """q2cli prints the whole --help above a usage error: train's stays within 200 lines
    (it was 356), no help names a README section (a conda user has no README), and no
    default is stated twice."""
    assert len(qiime("aam", "train", "--help").stdout.splitlines()) <= 200
    for action in ACTIONS:
        out = qiime("aam", action, "--help").stdout
        assert "README" not in out, action
        assert "Default:" not in out and "(default)" not in out, action


def test_train_citations_list_what_it_uses():
    assert "using QIIME 2" in qiime("aam", "--citations").stdout.replace("{", "").replace(
        "}", "")
    out = qiime("aam", "train", "--citations").stdout
    entries = [line for line in out.splitlines() if line.startswith("@")]
    assert len(entries) >= 8, out
    # (q2cli renames the keys, so the titles are checked)
    for title in ("github.com/jbk708/aam", "PyTorch: An Imperative",
                  "Accelerate: Training", "Striped UniFrac", "Gated Multimodal Units",
                  "FiLM: Visual Reasoning", "Perceiver: General Perception", "Scikit-learn"):
        assert title.replace("{", "").replace("}", "") in out.replace("{", "").replace(
            "}", ""), title


def test_pretrain_train_predict_from_the_command_line(ecam_subset, tmp_path):
    p = ecam_subset["paths"]
    qiime("aam", "pretrain", "--i-table", p["full_table"], "--i-sequences", p["sequences"],
          "--i-phylogeny", p["tree"], "--p-epochs", "1", *SMALL,
          "--o-model", tmp_path / "encoder.qza")
    qiime("aam", "train", "--i-table", p["table"], "--i-sequences", p["sequences"],
          "--i-pretrained", tmp_path / "encoder.qza", "--m-metadata-file", p["metadata"],
          "--m-metadata-column", "age_days", "--m-subjects-file", p["metadata"],
          "--m-subjects-column", "subject", "--p-epochs", "2", "--o-model",
          tmp_path / "model.qza")
    qiime("aam", "predict", "--i-model", tmp_path / "model.qza", "--i-table", p["new_table"],
          "--i-sequences", p["sequences"], "--o-predictions", tmp_path / "pred.qza")
    preds = qiime2.Artifact.load(str(tmp_path / "pred.qza"))
    assert str(preds.type) == "SampleData[RegressorPredictions]"
    assert sorted(preds.view(pd.Series).index) == sorted(ecam_subset["new_ids"])
    qiime("sample-classifier", "scatterplot", "--i-predictions", tmp_path / "pred.qza",
          "--m-truth-file", p["metadata"], "--m-truth-column", "age_days",
          "--o-visualization", tmp_path / "scatter.qzv")
    assert (tmp_path / "scatter.qzv").exists()


def test_invalid_choice_is_refused_before_running(ecam_subset, tmp_path):
    p = ecam_subset["paths"]
    result = qiime("aam", "train", "--i-table", p["table"], "--m-metadata-file", p["metadata"],
                   "--m-metadata-column", "age_days", "--p-target-transform", "cube-root",
                   "--o-model", tmp_path / "m.qza", ok=False)
    assert result.returncode != 0
    assert "cube-root" in result.stderr
    assert not (tmp_path / "m.qza").exists()


def test_bad_input_gives_a_clear_error_and_no_output(ecam_subset, tmp_path):
    p = ecam_subset["paths"]
    result = qiime("aam", "train", "--i-table", p["table"], "--i-sequences", p["sequences"],
                   "--m-metadata-file", p["metadata"], "--m-metadata-column", "delivery",
                   "--o-model", tmp_path / "m.qza", ok=False)
    assert result.returncode != 0
    assert "--p-task classification" in result.stderr
    assert not (tmp_path / "m.qza").exists()
