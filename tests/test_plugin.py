"""The plugin through QIIME 2's Python API, on a small real ECAM subset. Input that is
refused or warned about is tested in ``test_bad_input.py``."""
import subprocess
import sys

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
from qiime2.plugin.testing import TestPluginBase

from q2_aam._formats import AAMModelDirectoryFormat
from q2_aam._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor
from q2_aam.core.bundle import ModelBundle
from conftest import SMALL_ACTION, exported_data

SMALL = SMALL_ACTION


@pytest.fixture(scope="module")
def trained(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    encoder, = aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                                    phylogeny=a["tree"], epochs=1, **SMALL)
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], pretrained=encoder,
                               metadata=ecam_subset["metadata"].get_column("age_days"),
                               epochs=2, batch_size=8)
    return encoder, model


class TestRegistration(TestPluginBase):
    package = "q2_aam"

    def test_types_are_registered_to_the_format(self):
        for sub in (AAMEncoder, AAMRegressor, AAMClassifier):
            self.assertRegisteredSemanticType(sub)
            self.assertSemanticTypeRegisteredToFormat(AAMModel[sub], AAMModelDirectoryFormat)

    def test_actions(self):
        self.assertEqual(set(self.plugin.actions), {"pretrain", "train", "predict",
                                                    "predict_classification",
                                                    "training_history", "accuracy",
                                                    "explain_conditioning",
                                                    "train_and_evaluate"})

    def test_usage_examples_run(self):
        """The examples --help shows: their factories train a tiny model and they run."""
        self.assertTrue(all(self.plugin.actions[name].examples for name in self.plugin.actions))
        self.assertEqual(len(self.plugin.actions["train"].examples), 2)
        self.execute_examples()

    def test_no_name_clash_with_sample_classifier(self):
        pm = qiime2.sdk.PluginManager()
        self.assertIn("sample-classifier", pm.plugins)
        self.assertIn("aam", pm.plugins)


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, qiime2.sdk; qiime2.sdk.PluginManager(); "
            "import q2_aam.plugin_setup; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pretrain_train_predict_round_trip(aam, ecam_subset, trained, tmp_path):
    encoder, model = trained
    assert str(encoder.type) == "AAMModel[AAMEncoder]"
    assert str(model.type) == "AAMModel[AAMRegressor]"
    a = ecam_subset["artifacts"]
    preds, = aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"])
    assert str(preds.type) == "SampleData[RegressorPredictions]"
    series = preds.view(pd.Series)
    assert sorted(series.index) == sorted(ecam_subset["new_ids"])
    # Original units: days, not z-scores.
    ages = ecam_subset["metadata"].get_column("age_days").to_series()
    assert series.mean() > 20 and series.max() < 3 * ages.max()
    # A model saved to disk and loaded predicts the same numbers.
    loaded = qiime2.Artifact.load(str(model.save(str(tmp_path / "model"))))
    again, = aam.actions.predict(model=loaded, table=a["new_table"], sequences=a["sequences"])
    pd.testing.assert_series_equal(series, again.view(pd.Series))
    # q2-sample-classifier's visualizer understands the predictions.
    from qiime2.plugins import sample_classifier
    viz, = sample_classifier.actions.scatterplot(
        predictions=preds, truth=ecam_subset["metadata"].get_column("age_days"))
    assert viz is not None


def test_predict_on_new_asvs_says_how_much_it_extrapolates(aam, ecam_subset, trained,
                                                           capfd, tmp_path):
    """Every ASV of the table is new (its sequences cut 10 nt later, as another primer
    would): predict says so, warns, reads them as their nearest training ASVs (so the
    predictions stay those of the original table), and the accuracy view gives each
    sample's shares."""
    from q2_aam.example_data.variants import retrim
    _, model = trained
    a = ecam_subset["artifacts"]
    own, = aam.actions.predict(model=model, table=a["new_table"])
    shifted = qiime2.Artifact.import_data(
        "FeatureTable[Frequency]", retrim(a["new_table"].view(biom.Table), 10))
    capfd.readouterr()
    preds, = aam.actions.predict(model=model, table=shifted)
    err = capfd.readouterr().err
    assert "New ASVs: 100.0% of the reads" in err
    assert "Warning: 100% of the reads are in ASVs this model did not learn" in err
    changes = (preds.view(pd.Series) - own.view(pd.Series)).abs()
    spread = own.view(pd.Series).std()
    assert changes.mean() < 0.2 * spread
    exact, = aam.actions.predict(model=model, table=shifted, match_identity=1.0)
    assert "with matching off (match identity 1), all 100.0% are read by the sequence " \
        "network alone" in capfd.readouterr().err
    assert (exact.view(pd.Series) - own.view(pd.Series)).abs().mean() > changes.mean()
    viz, = aam.visualizers.accuracy(model=model, table=shifted,
                                    metadata=ecam_subset["metadata"].get_column("age_days"))
    viz.export_data(str(tmp_path / "viz"))
    table = pd.read_csv(tmp_path / "viz" / "predictions.tsv", sep="\t", index_col=0)
    assert (table["reads_in_vocabulary"] == 0).all()
    np.testing.assert_allclose(table[["reads_in_vocabulary", "reads_neighbour",
                                      "reads_unmatched"]].sum(axis=1), 1, atol=1e-3)
    assert table["reads_neighbour"].mean() > 0.5
    assert "Reads in ASVs outside the model's training vocabulary: median 100.0%" in \
        (tmp_path / "viz" / "index.html").read_text()


def test_train_says_its_progress_and_keeps_each_steps_time(aam, ecam_subset, capfd,
                                                            monkeypatch, tmp_path):
    """Every long step of train says where it is (here with lines allowed at any time, as
    they would be every 10 s of a long step), and the training record and
    training-history keep the time of each step."""
    from q2_aam.core import progress
    monkeypatch.setattr(progress, "EVERY", 0.0)
    a = ecam_subset["artifacts"]
    capfd.readouterr()
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], phylogeny=a["tree"],
                               metadata=ecam_subset["metadata"].get_column("age_days"),
                               epochs=1, **SMALL)
    err = capfd.readouterr().err
    for line in ("Readout: cross-validating a ridge, an elastic net and a relaxed lasso",
                 "Readout: ridge, 1 of 60 weightings x folds fitted.",
                 "Readout: elastic-net paths, penalty 1 of at most 30.",
                 "epoch 1/1: step 1 of "):
        assert line in err, (line, err[-3000:])
    steps = model.view(ModelBundle).training["steps"]
    assert [name for name, _ in steps] == ["reading the table", "the vocabulary and clades",
                                           "the linear readout", "training the network"]
    assert all(seconds >= 0 for _, seconds in steps)
    viz, = aam.visualizers.training_history(model=model)
    viz.export_data(str(tmp_path / "viz"))
    assert "Time per step: reading the table" in (tmp_path / "viz" / "index.html").read_text()


def test_model_artifact_holds_what_predict_needs(trained):
    _, model = trained
    bundle = model.view(ModelBundle)
    assert bundle.kind == "regressor"
    assert bundle.target["name"] == "age_days"
    assert bundle.target["transform"]["kind"] == "zscore"  # the measured default
    assert bundle.training["token_limit"] == 32  # inherited from the encoder
    assert bundle.model_config["embedding_dim"] == 16
    assert len(bundle.training["history"]) >= 1
    assert "torch" in bundle.versions


def test_provenance_records_every_setting_a_train_run_used(trained):
    """No parameter that had an effect is recorded as null: only the architecture, inherited
    from --i-pretrained, and what was not given (folders, columns) stay unset."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_multi_constructor("!", lambda loader, tag, node: tag)  # e.g. !metadata
    _, model = trained
    action = yaml.load((model._archiver.provenance_dir / "action" / "action.yaml").read_text(),
                       Loader=Loader)["action"]
    parameters = {k: v for item in action["parameters"] for k, v in item.items()}
    unset = {k for k, v in parameters.items() if v is None}
    inherited = {"token_limit", "embedding_dim", "attention_heads", "nucleotide_layers",
                 "sample_layers", "patch_size", "dropout", "nucleotide_dropout"}
    unused = {"normalize_by", "categorical_columns", "checkpoint_dir",
              "tensorboard_dir", "subjects", "sample_metadata"}
    assert unset <= inherited | unused, unset - inherited - unused
    assert parameters["target_transform"] == "zscore" and parameters["loss"] == "huber"
    assert parameters["output_constraint"] == "none" and parameters["class_weights"] == "none"
    assert parameters["categorical_fusion"] == "gmu" and parameters["over_penalty"] == 1.0
    assert parameters["quantiles"] == [0.1, 0.5, 0.9]  # used only by --p-loss quantile


def test_train_and_evaluate_scores_held_out_subjects_only(aam, ecam_subset, tmp_path):
    """The pipeline pretrains, trains on whole subjects and predicts and scores the others;
    provenance holds each step as its own action."""
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    model, predictions, accuracy = aam.actions.train_and_evaluate(
        table=a["full_table"], sequences=a["sequences"], phylogeny=a["tree"],
        metadata=md.get_column("age_days"), subjects=md.get_column("subject"),
        test_size=0.34, pretrain_epochs=1, epochs=2)
    assert str(model.type) == "AAMModel[AAMRegressor]"
    assert str(predictions.type) == "SampleData[RegressorPredictions]"
    subject = md.get_column("subject").to_series()
    tested = set(predictions.view(pd.Series).index)
    held = set(subject[list(tested)])
    assert 1 <= len(held) < 6  # some subjects tested, the others trained on
    assert tested == set(subject.index[subject.isin(held)])  # whole subjects only
    bundle = model.view(ModelBundle)
    assert bundle.training["n_samples"] == len(subject) - len(tested)
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_multi_constructor("!", lambda loader, tag, node: tag)
    own = yaml.load((model._archiver.provenance_dir / "action" / "action.yaml").read_text(),
                    Loader=Loader)["action"]
    steps = {yaml.load(p.read_text(), Loader=Loader)["action"].get("action") for p in
             (model._archiver.provenance_dir / "artifacts").rglob("action.yaml")}
    assert own["type"] == "pipeline" and own["action"] == "train_and_evaluate"
    assert {"filter_samples", "pretrain"} <= steps, steps  # each step an action of its own
    assert accuracy.save(str(tmp_path / "accuracy")).endswith(".qzv")


def test_train_and_evaluate_takes_trains_inputs(aam, ecam_subset, trained):
    """Issue 27: train-and-evaluate starts from a given encoder and conditions on
    categorical columns, as 'train' does, and names its outputs as regress-samples does."""
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    result = aam.actions.train_and_evaluate(
        table=a["full_table"], sequences=a["sequences"], pretrained=trained[0],
        metadata=md.get_column("age_days"), subjects=md.get_column("subject"),
        sample_metadata=md, categorical_columns=["delivery"],
        categorical_fusion="cross-attention", test_size=0.34, epochs=1, random_state=3)
    bundle = result.model.view(ModelBundle)
    assert bundle.target["categorical"]["columns"] == ["delivery"]
    assert bundle.model_config["categorical_fusion"] == "cross-attention"
    assert bundle.model_config["embedding_dim"] == 16  # the given encoder's
    assert str(result.accuracy_results.type) == "Visualization"
    with pytest.raises(ValueError, match="Both --i-pretrained and --p-pretrain-epochs"):
        aam.actions.train_and_evaluate(table=a["full_table"], sequences=a["sequences"],
                                       pretrained=trained[0], pretrain_epochs=1,
                                       metadata=md.get_column("age_days"))


def test_train_and_evaluate_split_keeps_subjects_whole_and_names_missing_ones():
    from q2_aam._pipelines import split_ids
    ids = [f"s{i}" for i in range(20)]
    truth = pd.Series(np.arange(20.0), index=ids, name="age")
    truth["s19"] = np.nan  # no value: in neither side
    subjects = pd.Series([f"p{i // 4}" for i in range(20)], index=ids, name="subject")
    train, test = split_ids(ids, truth, subjects, 0.2, 0)
    assert "s19" not in train + test and sorted(train + test) == sorted(ids[:19])
    assert not set(subjects[train]) & set(subjects[test]) and test
    subjects["s3"] = np.nan
    with pytest.raises(ValueError, match=r"1 sample\(s\) have no subject in the column "
                                         r"'subject' \(e.g. 's3'\)"):
        split_ids(ids, truth, subjects, 0.2, 0)


def test_same_seed_same_predictions(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    col = ecam_subset["metadata"].get_column("age_days")
    runs = []
    for _ in range(2):
        m, = aam.actions.train(table=a["table"], sequences=a["sequences"], metadata=col,
                               epochs=1, random_state=7, **SMALL)
        p, = aam.actions.predict(model=m, table=a["new_table"], sequences=a["sequences"])
        runs.append(p.view(pd.Series))
    pd.testing.assert_series_equal(runs[0], runs[1])


def test_classifier_end_to_end(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    col = ecam_subset["metadata"].get_column("delivery")
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], metadata=col,
                               task="classification", epochs=1, **SMALL)
    assert str(model.type) == "AAMModel[AAMClassifier]"
    preds, = aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"])
    assert str(preds.type) == "SampleData[ClassifierPredictions]"
    assert set(preds.view(pd.Series)) <= {"Vaginal", "Cesarean"}
    from qiime2.plugins import sample_classifier
    sample_classifier.actions.confusion_matrix(predictions=preds, truth=col)


def test_frozen_encoder_keeps_its_weights(aam, ecam_subset, trained):
    encoder, _ = trained
    a = ecam_subset["artifacts"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], pretrained=encoder,
                               metadata=ecam_subset["metadata"].get_column("age_days"),
                               freeze_encoder=True, epochs=2)
    before, after = encoder.view(ModelBundle).state_dict, model.view(ModelBundle).state_dict
    enc_keys = [k for k in before if k.startswith(("nucleotide_encoder.", "sample_encoder."))]
    assert enc_keys and all(np.array_equal(before[k], after[k]) for k in enc_keys)
    changed = [k for k in after if k.startswith("target_head.")]
    assert changed


def test_auxiliary_unifrac_loss_in_train(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], phylogeny=a["tree"],
                               metadata=ecam_subset["metadata"].get_column("age_days"),
                               unifrac_weight=0.5, mlm_weight=0.5, epochs=1, **SMALL)
    history = model.view(ModelBundle).training["history"]
    assert {"train_unifrac", "train_mlm", "train_target"} <= set(history[0])


def test_train_in_two_processes_with_tensorboard_and_checkpoints(aam, ecam_subset, tmp_path):
    """Real ECAM subset, UniFrac over the global batch, 2 CPU worker processes."""
    a = ecam_subset["artifacts"]
    kwargs = dict(table=a["table"], sequences=a["sequences"], phylogeny=a["tree"],
                  metadata=ecam_subset["metadata"].get_column("age_days"), unifrac_weight=0.5,
                  epochs=2, checkpoint_dir=str(tmp_path / "ck"), **SMALL)
    model, = aam.actions.train(num_processes=2, tensorboard_dir=str(tmp_path / "tb"), **kwargs)
    bundle = model.view(ModelBundle)
    assert bundle.training["config"]["num_processes"] == 2
    assert len(bundle.training["history"]) == 2
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    # The same command again finds the finished run and returns its model.
    again, = aam.actions.train(num_processes=2, **kwargs)
    for key, value in bundle.state_dict.items():
        np.testing.assert_array_equal(again.view(ModelBundle).state_dict[key].numpy(),
                                      value.numpy())
    # Other settings on the same checkpoints are refused, naming the difference.
    with pytest.raises(ValueError, match="config.num_processes: checkpoint 2, now 1"):
        aam.actions.train(num_processes=1, **kwargs)


def test_phylogeny_at_train_feeds_the_readouts_clades_or_is_refused(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    age = ecam_subset["metadata"].get_column("age_days")
    with pytest.raises(ValueError, match="unifrac-weight"):
        aam.actions.train(table=a["table"], sequences=a["sequences"], phylogeny=a["tree"],
                          metadata=age, linear_readout=False, epochs=1, **SMALL)
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               phylogeny=a["tree"], metadata=age, epochs=1, **SMALL)
    config = model.view(ModelBundle).model_config
    assert config["linear_clades"] > 0 and config["linear_clade_memberships"] > 0


# --- the format ------------------------------------------------------------------------

def test_format_imports_a_valid_model(trained, tmp_path):
    _, model = trained
    d = exported_data(model, tmp_path)
    art = qiime2.Artifact.import_data("AAMModel[AAMRegressor]", str(d))
    assert art.view(ModelBundle).kind == "regressor"


def test_pretrain_from_a_distance_matrix(aam, ecam_subset):
    from qiime2.plugins import diversity_lib
    a = ecam_subset["artifacts"]
    dm, = diversity_lib.actions.unweighted_unifrac(table=a["full_table"], phylogeny=a["tree"])
    encoder, = aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                                    distance_matrix=dm, epochs=1, **SMALL)
    assert encoder.view(ModelBundle).training["history"][0]["train_unifrac"] > 0
    with pytest.raises(ValueError, match=r"either a phylogeny \(--i-phylogeny\) or a distance matrix"):
        aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                             distance_matrix=dm, phylogeny=a["tree"], epochs=1, **SMALL)


def test_pretrain_masked_nucleotides_only_needs_no_tree(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    encoder, = aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                                    unifrac_weight=0.0, epochs=1, **SMALL)
    assert "train_unifrac" not in encoder.view(ModelBundle).training["history"][0]


# --- targets and outputs (issue 3) -----------------------------------------------------


def test_zscore_category_end_to_end(aam, ecam_subset, capfd):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               metadata=md.get_column("age_days"), sample_metadata=md,
                               target_transform="zscore-category", normalize_by=["delivery"],
                               output_constraint="bounded", epochs=1, **SMALL)
    stats = model.view(ModelBundle).target["transform"]["stats"]
    assert set(stats["groups"]) <= {"Vaginal", "Cesarean"} and stats["columns"] == ["delivery"]
    with pytest.raises(ValueError, match="--m-sample-metadata-file"):
        aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"])
    # A delivery mode never seen in training falls back to the global statistics, with a warning.
    frame = md.to_dataframe()
    frame.loc[ecam_subset["new_ids"][:2], "delivery"] = "Unplanned"
    capfd.readouterr()
    preds, = aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"],
                                 sample_metadata=qiime2.Metadata(frame))
    assert np.isfinite(preds.view(pd.Series)).all()
    assert "['Unplanned']" in capfd.readouterr().err


def test_balanced_class_weights(aam, ecam_subset):
    a = ecam_subset["artifacts"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"], task="classification",
                               metadata=ecam_subset["metadata"].get_column("delivery"),
                               class_weights="balanced", epochs=1, **SMALL)
    assert model.view(ModelBundle).target["class_weights"] == "balanced"
    with pytest.raises(ValueError, match="classification only"):
        aam.actions.train(table=a["table"], sequences=a["sequences"],
                          metadata=ecam_subset["metadata"].get_column("age_days"),
                          class_weights="balanced", epochs=1, **SMALL)


# --- categorical conditioning (issue 4) ------------------------------------------------

@pytest.mark.parametrize("fusion", ["cross-attention", "gmu", "perceiver"])
def test_conditioned_model_end_to_end(aam, ecam_subset, fusion, capfd, tmp_path):
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               metadata=md.get_column("age_days"), sample_metadata=md,
                               categorical_columns=["delivery", "diet"],
                               categorical_fusion=fusion, cross_attn_heads=4, epochs=1,
                               **SMALL)
    bundle = model.view(ModelBundle)
    assert bundle.model_config["categorical_fusion"] == fusion
    assert bundle.target["categorical"]["columns"] == ["delivery", "diet"]
    with pytest.raises(ValueError, match="conditioned on the metadata column"):
        aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"])
    frame = md.to_dataframe()
    frame.loc[ecam_subset["new_ids"][:1], "diet"] = "chocolate"
    frame.loc[ecam_subset["new_ids"][1:3], "delivery"] = np.nan
    capfd.readouterr()
    preds, = aam.actions.predict(model=model, table=a["new_table"], sequences=a["sequences"],
                                 sample_metadata=qiime2.Metadata(frame))
    assert np.isfinite(preds.view(pd.Series)).all()
    err = capfd.readouterr().err
    assert "'diet'" in err and "chocolate" in err
    # Saved and loaded, the conditioned model predicts the same.
    loaded = qiime2.Artifact.load(str(model.save(str(tmp_path / "m"))))
    again, = aam.actions.predict(model=loaded, table=a["new_table"], sequences=a["sequences"],
                                 sample_metadata=qiime2.Metadata(frame))
    pd.testing.assert_series_equal(preds.view(pd.Series), again.view(pd.Series))


def test_columns_without_a_fusion_use_the_residual_gmu(aam, ecam_subset):
    """The default fusion is chosen by benchmarks/results/fusion.md (see DEFAULT_FUSION)."""
    a = ecam_subset["artifacts"]
    md = ecam_subset["metadata"]
    model, = aam.actions.train(table=a["table"], sequences=a["sequences"],
                               metadata=md.get_column("age_days"), sample_metadata=md,
                               categorical_columns=["delivery"], epochs=1, **SMALL)
    config = model.view(ModelBundle).model_config
    assert (config["categorical_fusion"], config["gmu_variant"]) == ("gmu", "residual")
