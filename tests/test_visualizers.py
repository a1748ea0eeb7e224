"""The visualizers (issue 6) on small models trained on real ECAM samples.

Each view is rendered through QIIME 2's Python API and exported; the TSVs are
checked against numbers computed here, independently, from the model's own
returned weights (``api.model_outputs``), and every page is opened in headless
Chromium.
"""
import os
import shutil
import subprocess
from pathlib import Path

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import torch

from q2_aam import _inputs
from q2_aam._visualizers import _taxon_name
from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.targets import TargetTransform
from conftest import SMALL_ACTION

SMALL = dict(SMALL_ACTION, epochs=2)
COLUMNS = ["delivery", "diet"]
OUTPUT = Path(os.environ.get("AAM_TEST_OUTPUT", Path(__file__).parent.parent / "test-output"))


@pytest.fixture(scope="module")
def models(aam, ecam_subset):
    """A regressor per fusion with gates or attention, plus a classifier and a concat model."""
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    age = md.get_column("age_days")
    out = {}
    for fusion in ("gmu", "cross-attention", "perceiver", "concat"):
        # Without the linear readout, whose network head starts at zero, two epochs give
        # cross-attention a response in days far above the float32 rounding of a
        # prediction (the hand-computed check below compares the two).
        out[fusion], = aam.actions.train(
            table=a["table"], sequences=a["sequences"], metadata=age, sample_metadata=md,
            categorical_columns=COLUMNS, categorical_fusion=fusion, cross_attn_heads=2,
            perceiver_num_latents=4, perceiver_num_layers=1,
            linear_readout=fusion != "cross-attention", **SMALL)
    out["classifier"], = aam.actions.train(table=a["table"], sequences=a["sequences"],
                                           metadata=md.get_column("delivery"),
                                           task="classification", **SMALL)
    out["classifier-cross-attention"], = aam.actions.train(
        table=a["table"], sequences=a["sequences"], metadata=md.get_column("diet"),
        task="classification", sample_metadata=md, categorical_columns=["delivery"],
        categorical_fusion="cross-attention", cross_attn_heads=2, **SMALL)
    return out


@pytest.fixture(scope="module")
def taxonomy(ecam_subset):
    """The real DADA2 taxonomy the example data ships (as the demo passes it), for all but
    three features of the table: those stay unlabelled, to show the fallback."""
    from q2_aam.example_data import load_dataset
    features = list(ecam_subset["artifacts"]["full_table"].view(pd.DataFrame).columns)
    frame = load_dataset("ecam", build_tree=False).taxonomy.loc[features[3:]]
    return qiime2.Artifact.import_data("FeatureData[Taxonomy]", frame)


def exported(visualization, name) -> Path:
    """Export a visualization into the test output folder (kept for inspection)."""
    target = OUTPUT / "visualizers" / name
    shutil.rmtree(target, ignore_errors=True)
    visualization.export_data(str(target))
    return target


#: Every figure the views drew while ``pages`` rendered them: (file, [axes' labels]).
DRAWN: list = []


def _recording_save(save):
    """``_visualizers._save`` that first records each drawn axes' title and labels."""
    def recorded(fig, output_dir, name):
        DRAWN.append((name, [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
                             for ax in fig.axes if ax.get_visible()
                             and ax.get_label() != "<colorbar>"]))
        return save(fig, output_dir, name)
    return recorded


@pytest.fixture(scope="module")
def pages(aam, models, ecam_subset, taxonomy):
    """Every view, rendered and exported: ``{name: folder}``."""
    from q2_aam import _visualizers
    patch = pytest.MonkeyPatch()
    patch.setattr(_visualizers, "_save", _recording_save(_visualizers._save))
    try:
        return _pages(aam, models, ecam_subset, taxonomy)
    finally:
        patch.undo()


def _pages(aam, models, ecam_subset, taxonomy):
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    new = dict(table=a["new_table"], sequences=a["sequences"], sample_metadata=md)
    views = {
        "history": aam.visualizers.training_history(model=models["cross-attention"]),
        "history-encoder": aam.visualizers.training_history(
            model=aam.actions.pretrain(table=a["full_table"], sequences=a["sequences"],
                                       phylogeny=a["tree"], epochs=1, token_limit=32,
                                       embedding_dim=16, attention_heads=2,
                                       nucleotide_layers=1, sample_layers=1,
                                       batch_size=8).model),
        "accuracy-regressor": aam.visualizers.accuracy(
            model=models["cross-attention"], metadata=md.get_column("age_days"), **new),
        "accuracy-classifier": aam.visualizers.accuracy(
            model=models["classifier"], table=a["new_table"], sequences=a["sequences"],
            metadata=md.get_column("delivery")),
        "gmu": aam.visualizers.explain_conditioning(model=models["gmu"], **new),
        "cross-attention": aam.visualizers.explain_conditioning(
            model=models["cross-attention"], taxonomy=taxonomy, top_n=10, min_samples=2,
            **new),
        "perceiver": aam.visualizers.explain_conditioning(model=models["perceiver"],
                                                          top_n=10, **new),
        "cross-attention-classifier": aam.visualizers.explain_conditioning(
            model=models["classifier-cross-attention"], top_n=10, min_samples=2, **new),
    }
    return {name: exported(result.visualization, name) for name, result in views.items()}


def outputs_of(model, ecam_subset):
    """The model's own outputs on the held-out samples, and those samples."""
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    bundle = model.view(ModelBundle)
    samples = _inputs.amplicon_samples(a["new_table"].view(biom.Table),
                                        a["sequences"].view(pd.Series),
                                        bundle.training["token_limit"])
    categorical = _inputs.categorical_columns(md, COLUMNS, samples.sample_ids)
    return bundle, samples, categorical, api.model_outputs(bundle, samples,
                                                           categorical=categorical,
                                                           log=lambda m: None)


def _top_asv_on(bundle, sample, own, other):
    """The model's raw output for one sample when its most abundant ASV (slot 0) alone
    takes its cross-attention output from a pass with the ``other`` metadata: done with
    forward hooks on the plain model, independently of ``conditioning_response``."""
    from q2_aam.core.data import BatchCollator, encode_categories
    from q2_aam.core.vocabulary import Vocabulary
    from q2_aam.core.tokenizer import tokenize
    model = bundle.build_model()
    tokens = tokenize(sample.sequences, max_length=model.config.max_sequence_length).tokens
    vocabularies = bundle.target["categorical"]["vocabularies"]
    asv_rows = Vocabulary.from_target(bundle.target).exact_rows(sample.sequences)

    def run(categorical):
        batch = BatchCollator(sample, tokens, categories=encode_categories(
            categorical, vocabularies), vocabulary=asv_rows)(range(len(sample)))
        return model(batch, asv_embeddings=model.encode_asvs(batch["asv_tokens"]))
    captured = {}
    with torch.no_grad():
        hook = model.cross_attention.register_forward_hook(
            lambda m, a, o: captured.update(alt=o[0]))
        run(other)
        hook.remove()

        def patch(m, a, o):
            fused = o[0].clone()
            fused[:, 0] = captured["alt"][:, 0]
            return fused, o[1]
        hook = model.cross_attention.register_forward_hook(patch)
        out = run(own)["prediction"]
        hook.remove()
    return out


def read(folder, name, **kwargs):
    return pd.read_csv(folder / name, sep="\t", **kwargs)


#: History columns and other internal names a page must not show (history.tsv keeps them).
RAW_KEYS = ("grad_norm", "train_target", "val_target", "train_loss", "val_loss", "val_mae",
            "val_r2", "samples_per_second", "lr")


def _visible_text(html: str) -> str:
    """The text a reader sees on a page: tags, scripts and styles left out."""
    import re
    html = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", html)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_every_plot_labels_both_axes_and_pages_show_no_nan_or_raw_keys(pages):
    """Issue 27: a scientist reads each view without the source: every axis of every plot
    has a label (with the target's name where it has units), and no page shows 'NaN' or a
    history column's internal name."""
    assert DRAWN, "no figure was recorded"
    for name, axes in DRAWN:
        for title, xlabel, ylabel in axes:
            assert xlabel.strip() and ylabel.strip(), (name, title, xlabel, ylabel)
    for folder in pages.values():
        text = _visible_text((folder / "index.html").read_text())
        assert "NaN" not in text and " nan " not in f" {text} ", folder.name
        for key in RAW_KEYS:
            assert f" {key} " not in f" {text} ", (folder.name, key)
    history = _visible_text((pages["history"] / "index.html").read_text())
    assert "keeps the weights of epoch" in history or "starting point" in history
    assert "validation: MAE (units of 'age_days')" in history
    accuracy = _visible_text((pages["accuracy-regressor"] / "index.html").read_text())
    assert "Pearson r²" in accuracy and "coefficient of determination" in accuracy
    assert "mean absolute error (units of 'age_days')" in accuracy
    classifier = _visible_text((pages["accuracy-classifier"] / "index.html").read_text())
    assert "always the most common class" in classifier


def test_every_view_writes_its_page_plots_and_tables(pages):
    expected = {
        "history": ["history.svg", "history.tsv"],
        "history-encoder": ["history.svg", "history.tsv"],
        "accuracy-regressor": ["accuracy.svg", "predictions.tsv"],
        "accuracy-classifier": ["accuracy.svg", "predictions.tsv", "confusion.tsv"],
        "gmu": ["gates.svg", "gate-distribution.svg", "gates.tsv", "gate-units.tsv"],
        "cross-attention": ["cross-attention-mean.svg", "cross-attention-head1.svg",
                            "cross-attention-head2.svg", "cross-attention.tsv", "top-asvs.tsv",
                            "response.svg", "response.tsv"],
        "perceiver": ["perceiver-mean.svg", "perceiver-head1.svg", "perceiver-attention.tsv",
                      "perceiver-metadata-share.svg", "perceiver-metadata-share.tsv"],
    }
    for name, files in expected.items():
        page = (pages[name] / "index.html").read_text()
        for file in files:
            assert (pages[name] / file).stat().st_size > 20, (name, file)
            assert file in page, (name, file)
        assert "cdn" not in page.lower() and "https://" not in page.replace(
            "http://qiime2.org/", ""), name


def test_history_table_is_the_models_history(pages, models):
    history = pd.DataFrame(models["cross-attention"].view(ModelBundle).training["history"])
    table = read(pages["history"], "history.tsv", index_col="epoch")
    assert list(table.index) == list(history["epoch"])
    np.testing.assert_allclose(table["val_mae"], history["val_mae"])
    np.testing.assert_allclose(table["train_loss"], history["train_loss"])
    encoder = read(pages["history-encoder"], "history.tsv")
    assert {"train_unifrac", "train_mlm", "val_unifrac"} <= set(encoder.columns)


def test_regression_accuracy_matches_predict(pages, models, ecam_subset, aam):
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    predicted, = aam.actions.predict(model=models["cross-attention"], table=a["new_table"],
                                     sequences=a["sequences"], sample_metadata=md)
    table = read(pages["accuracy-regressor"], "predictions.tsv", index_col="sample_id")
    predicted = predicted.view(pd.Series)
    np.testing.assert_allclose(table["predicted"], predicted.loc[table.index], rtol=1e-5)
    observed = md.get_column("age_days").to_series().loc[table.index]
    mae = float(np.abs(observed - table["predicted"]).mean())
    assert f"MAE {mae:.4g}" in (pages["accuracy-regressor"] / "accuracy.svg").read_text()


def test_confusion_matrix_counts_every_sample(pages, ecam_subset):
    matrix = read(pages["accuracy-classifier"], "confusion.tsv", index_col="observed")
    predictions = read(pages["accuracy-classifier"], "predictions.tsv", index_col="sample_id")
    assert matrix.to_numpy().sum() == len(predictions) == len(ecam_subset["new_ids"])
    for observed in matrix.index:
        for predicted in matrix.columns:
            count = ((predictions["observed"] == observed)
                     & (predictions["predicted"] == predicted)).sum()
            assert matrix.loc[observed, predicted] == count


def test_gate_tables_are_the_models_gates(pages, models, ecam_subset):
    bundle, samples, categorical, outputs = outputs_of(models["gmu"], ecam_subset)
    gates = outputs["gmu_gate"]
    table = read(pages["gmu"], "gates.tsv", index_col="sample_id").loc[samples.sample_ids]
    np.testing.assert_allclose(table["gate_mean"], gates.mean(axis=1), rtol=1e-5)
    assert list(table["delivery"]) == categorical["delivery"]
    units = read(pages["gmu"], "gate-units.tsv", index_col="sample_id").loc[samples.sample_ids]
    np.testing.assert_allclose(units.to_numpy(), gates, rtol=1e-5)
    assert "residual" in (pages["gmu"] / "index.html").read_text()


def test_cross_attention_table_is_the_models_attention(pages, models, ecam_subset):
    bundle, samples, categorical, outputs = outputs_of(models["cross-attention"], ecam_subset)
    weights = outputs["cross_attention"]  # (n, heads, S, K)
    table = read(pages["cross-attention"], "cross-attention.tsv", dtype={"head": str})
    tokens = COLUMNS + ["(null)"]
    checked = 0
    for feature in samples.feature_ids[:40]:
        f = samples.feature_ids.index(feature)
        for column in COLUMNS:
            for value in sorted(set(categorical[column])):
                picked = []
                for i in range(len(samples)):
                    held = samples.indices[samples.indptr[i]:samples.indptr[i + 1]]
                    if categorical[column][i] == value and f in held:
                        picked.append(weights[i, :, list(held).index(f), :])  # (heads, K)
                rows = table[(table["feature_id"] == feature) & (table["column"] == column)
                             & (table["value"] == value)]
                if not picked:
                    assert rows.empty
                    continue
                expected = np.mean(picked, axis=0)
                for head, per_head in [("mean", expected.mean(0))] + [
                        (str(h + 1), expected[h]) for h in range(len(expected))]:
                    got, = rows[rows["head"] == head][tokens].to_numpy()
                    np.testing.assert_allclose(got, per_head, rtol=1e-5, atol=1e-7)
                    assert (rows["n_samples"] == len(picked)).all()
                    checked += 1
    assert checked > 50
    np.testing.assert_allclose(table[tokens].sum(axis=1), 1, rtol=1e-5)


def test_response_table_is_each_asvs_mean_change_in_days(pages, models, ecam_subset):
    bundle, samples, categorical, outputs = outputs_of(models["cross-attention"], ecam_subset)
    table = read(pages["cross-attention"], "response.tsv").set_index("feature_id")
    response = api.conditioning_response(bundle, samples, categorical=categorical,
                                         log=lambda m: None)  # (n, S, C)
    assert np.isfinite(table[COLUMNS].to_numpy()).all() and (table[COLUMNS] >= 0).all().all()
    assert table[COLUMNS].max(axis=1).is_monotonic_decreasing
    for f, feature in enumerate(samples.feature_ids[:40]):
        held = [(i, list(samples.indices[samples.indptr[i]:samples.indptr[i + 1]]).index(f))
                for i in range(len(samples))
                if f in samples.indices[samples.indptr[i]:samples.indptr[i + 1]]]
        if not held:
            assert feature not in table.index
            continue
        expected = np.mean([response[i, j] for i, j in held], axis=0)
        np.testing.assert_allclose(table.loc[feature, COLUMNS].to_numpy(dtype=float), expected,
                                   rtol=1e-5)
        assert table.loc[feature, "n_samples"] == len(held)
    # One entry by hand, in days: sample 0's most abundant ASV alone on each other delivery
    # value.
    transform = TargetTransform.from_dict(bundle.target["transform"])
    first = samples.subset([0])
    own = {c: v[:1] for c, v in categorical.items()}
    plain = transform.inverse(api.predict_raw(bundle, first, categorical=own,
                                              log=lambda m: None)[:, 0])[0]
    changes = []
    for value in bundle.target["categorical"]["vocabularies"]["delivery"]:
        if value == own["delivery"][0]:
            continue
        patched = _top_asv_on(bundle, first, own, dict(own, delivery=[value]))
        changes.append(abs(transform.inverse(patched[:, 0].numpy())[0] - plain))
    assert changes
    np.testing.assert_allclose(response[0, 0, COLUMNS.index("delivery")], np.mean(changes),
                               rtol=1e-4)


def test_a_classifiers_response_is_the_change_in_class_probabilities(pages, models,
                                                                    ecam_subset):
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    bundle = models["classifier-cross-attention"].view(ModelBundle)
    samples = _inputs.amplicon_samples(a["new_table"].view(biom.Table),
                                        a["sequences"].view(pd.Series),
                                        bundle.training["token_limit"])
    own = _inputs.categorical_columns(md, ["delivery"], samples.sample_ids)
    response = api.conditioning_response(bundle, samples, categorical=own,
                                         log=lambda m: None)  # (n, S, 1)
    table = read(pages["cross-attention-classifier"], "response.tsv")
    assert ((table["delivery"] >= 0) & (table["delivery"] <= 1)).all() and table["delivery"].max() > 0
    assert "class probabilities" in (pages["cross-attention-classifier"]
                                     / "index.html").read_text()
    # Sample 0's most abundant ASV alone on each other delivery value, by hand.
    first = samples.subset([0])
    mine = {"delivery": own["delivery"][:1]}
    plain = torch.softmax(torch.as_tensor(api.predict_raw(bundle, first, categorical=mine,
                                                          log=lambda m: None)), -1)
    changes = []
    for value in bundle.target["categorical"]["vocabularies"]["delivery"]:
        if value == mine["delivery"][0]:
            continue
        patched = torch.softmax(_top_asv_on(bundle, first, mine, {"delivery": [value]}).double(),
                                -1)
        changes.append(0.5 * float((patched - plain).abs().sum()))
    assert changes
    np.testing.assert_allclose(response[0, 0, 0], np.mean(changes), rtol=1e-4, atol=1e-7)


def test_cross_attention_heatmap_ranks_and_labels_asvs(pages, taxonomy):
    top = read(pages["cross-attention"], "top-asvs.tsv", index_col="rank")
    assert len(top) == 10
    assert top["attention_variance"].is_monotonic_decreasing
    labelled = taxonomy.view(pd.DataFrame)
    page = (pages["cross-attention"] / "index.html").read_text()
    svg = (pages["cross-attention"] / "cross-attention-mean.svg").read_text()
    for rank, feature, label in zip(top.index, top["feature_id"], top["label"]):
        assert label in page and f"{rank}. {label}" in svg
        if feature in labelled.index:  # the deepest named rank, then a short ID
            taxon = labelled.loc[feature, "Taxon"]
            assert label.startswith(_taxon_name(taxon) + " (")
            assert top.set_index("feature_id").loc[feature, "taxon"] == taxon
        else:
            assert "(" not in label  # the short ID alone
    full = read(pages["cross-attention"], "cross-attention.tsv")
    labelled_rows = full[full["feature_id"].isin(labelled.index)]
    assert labelled_rows["taxon"].str.startswith("k__").all()
    assert (full[~full["feature_id"].isin(labelled.index)]["taxon"].fillna("") == "").all()


@pytest.mark.parametrize("taxon, name", [
    ("k__Bacteria; g__Clostridium; s__perfringens/thermophilus",
     "Clostridium perfringens/thermophilus"),  # Greengenes-style epithet: genus added
    ("k__Bacteria; g__Escherichia; s__Escherichia_coli", "Escherichia_coli"),  # SILVA style
    ("k__Bacteria; p__Firmicutes; c__; o__", "Firmicutes"),  # empty ranks skipped
    ("D_0__Bacteria;D_5__Escherichia", "Escherichia"),
    ("k__B; g__Enterococcus; s__azikeevi/caccae/canintestini/canis/casseliflavus/dispar",
     "Enterococcus azikeevi/caccae/canintesti\u2026"),  # cut at 40 characters
    ("", "")])
def test_taxon_names_in_labels(taxon, name):
    assert _taxon_name(taxon) == name


def test_perceiver_table_is_the_models_attention(pages, models, ecam_subset):
    bundle, samples, categorical, outputs = outputs_of(models["perceiver"], ecam_subset)
    weights = outputs["perceiver_attention"]  # (n, heads, L, S + K)
    table = read(pages["perceiver"], "perceiver-attention.tsv", dtype={"head": str})
    tokens = table[(table["key_type"] == "metadata token") & (table["head"] == "mean")]
    expected = weights[..., -len(COLUMNS) - 1:].mean(axis=(0, 1))  # (L, K)
    got = tokens.pivot(index="latent", columns="key", values="attention")
    np.testing.assert_allclose(got[COLUMNS + ["(null)"]].to_numpy(), expected, rtol=1e-5)
    feature = samples.indices[0]  # the first sample's most abundant ASV
    slots = [(i, list(samples.indices[samples.indptr[i]:samples.indptr[i + 1]]).index(feature))
             for i in range(len(samples))
             if feature in samples.indices[samples.indptr[i]:samples.indptr[i + 1]]]
    per_head = np.mean([weights[i, :, :, s] for i, s in slots], axis=0)  # (heads, L)
    rows = table[(table["key"] == samples.feature_ids[feature]) & (table["head"] == "1")]
    np.testing.assert_allclose(rows.sort_values("latent")["attention"], per_head[0], rtol=1e-5)
    share = read(pages["perceiver"], "perceiver-metadata-share.tsv", index_col="sample_id")
    np.testing.assert_allclose(share.loc[samples.sample_ids, "metadata_share"],
                               weights[..., -len(COLUMNS) - 1:].sum(-1).mean(axis=(1, 2)),
                               rtol=1e-5)


def test_model_without_gates_or_attention_gets_a_clear_error(aam, models, ecam_subset):
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    with pytest.raises(ValueError, match="concat, which has no gates or attention.*"
                                         "cross-attention"):
        aam.visualizers.explain_conditioning(model=models["concat"], table=a["new_table"],
                                             sequences=a["sequences"], sample_metadata=md)
    with pytest.raises(ValueError, match="conditioned on the metadata column"):
        aam.visualizers.accuracy(model=models["gmu"], table=a["new_table"],
                                 sequences=a["sequences"], metadata=md.get_column("age_days"))
    with pytest.raises(ValueError, match="is a regressor, but the column 'delivery'"):
        aam.visualizers.accuracy(model=models["gmu"], table=a["new_table"],
                                 sequences=a["sequences"], sample_metadata=md,
                                 metadata=md.get_column("delivery"))


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("No Chromium found; 'make test' installs Debian's chromium "
                         "(scripts/setup-env.sh). Install it with: apt-get install chromium")


@pytest.mark.parametrize("name", ["history", "history-encoder", "accuracy-regressor",
                                  "accuracy-classifier", "gmu", "cross-attention",
                                  "perceiver", "cross-attention-classifier"])
def test_page_opens_in_headless_chromium(pages, name):
    """No script errors, every plot loaded (non-empty image), and a screenshot saved."""
    url = (pages[name] / "index.html").resolve().as_uri()
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000", f"--user-data-dir={OUTPUT / 'chromium-profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = dom.stdout[dom.stdout.index("<body"):].split(">", 1)[0]
    assert 'data-js-errors=""' in body, body
    loaded = int(body.split('data-plots-loaded="')[1].split('"')[0])
    total = int(body.split('data-plots-total="')[1].split('"')[0])
    assert total > 0 and loaded == total, body
    shot = OUTPUT / "screenshots" / f"{name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    taken = subprocess.run(flags + ["--window-size=1400,1600", f"--screenshot={shot}", url],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    if name == "cross-attention":  # the rendered page names taxa (the real taxonomy)
        top = read(pages[name], "top-asvs.tsv", index_col="rank")
        named = [label for label in top["label"] if "(" in label]
        assert named and all(label.split(" (")[0] in dom.stdout for label in named)


def test_metadata_problems_are_named_or_shown(aam, models, ecam_subset):
    """A conditioning column absent from the metadata is an error naming it; samples absent
    from the metadata are explained as '(missing)' (the model reads them as unknown)."""
    a, md = ecam_subset["artifacts"], ecam_subset["metadata"]
    frame = md.to_dataframe()
    without_diet = qiime2.Metadata(frame.drop(columns=["diet"]))
    with pytest.raises(ValueError, match=r"categorical conditioning names \['diet'\]"):
        aam.visualizers.explain_conditioning(model=models["cross-attention"],
                                             table=a["new_table"], sequences=a["sequences"],
                                             sample_metadata=without_diet)
    with pytest.raises(ValueError, match="lower --p-min-samples"):
        aam.visualizers.explain_conditioning(model=models["cross-attention"],
                                             table=a["new_table"], sequences=a["sequences"],
                                             sample_metadata=md, min_samples=1000)
    partial = qiime2.Metadata(frame.loc[ecam_subset["new_ids"][:6]])
    result, = aam.visualizers.explain_conditioning(
        model=models["cross-attention"], table=a["new_table"], sequences=a["sequences"],
        sample_metadata=partial, min_samples=1)
    table = read(exported(result, "cross-attention-partial"), "cross-attention.tsv")
    assert {"(missing)"} < set(table["value"])
