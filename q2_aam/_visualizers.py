"""The visualizers: what a trained model learned, as self-contained ``.qzv`` pages.

Every plot is an SVG drawn by matplotlib and every plot's numbers are also a
TSV next to it; the page uses only q2templates' bundled assets (no CDN), so
it opens from ``file://`` and in QIIME 2 View. The attribution tables come
from ``core.explain``, the history and accuracy tables from here; this module
draws them all.
"""

import hashlib
import os
import shutil

import biom
import numpy as np
import pandas as pd
import qiime2

from . import _inputs as inputs
from .core.bundle import ModelBundle
from .core.options import (CONDITIONING_VIEW, DEFAULT_DEVICE, DEFAULT_MATCH_IDENTITY,
                           DEFAULT_TOKEN_LIMIT, PREDICT_BATCH_SIZE)

ASSETS = os.path.join(os.path.dirname(__file__), "assets")

#: The response table marks ASVs held by fewer samples than this.
FEW_SAMPLES = 10
VIEWS_BY_FUSION = {
    "gmu": "the gated multimodal unit's gate values per category value",
    "cross-attention": "each ASV's response to each column and the cross-attention "
                       "heatmap of ASVs x metadata tokens",
    "perceiver": "the Perceiver latents' attention over ASVs and metadata tokens",
}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt


def _save(fig, output_dir: str, name: str) -> str:
    fig.savefig(os.path.join(output_dir, name), format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    return name


def _tsv(frame: pd.DataFrame, output_dir: str, name: str, index: bool = True) -> str:
    frame.to_csv(os.path.join(output_dir, name), sep="\t", index=index)
    return name


def _render(output_dir: str, title: str, intro: list, sections: list) -> None:
    """Write ``index.html``: sections of text, figures (one shown at a time when a
    section offers a choice) and download links."""
    import q2templates
    q2templates.render(os.path.join(ASSETS, "index.html"), output_dir,
                       context={"title": title, "intro": intro, "sections": sections})
    shutil.copy(os.path.join(ASSETS, "views.js"), output_dir)


def _figure(src: str, label: str = "") -> dict:
    """A plot of a section; ``label`` names it in the section's selector."""
    return {"src": src, "label": label}


def _section(title: str, text: list, figures: list, downloads: list,
             table: pd.DataFrame | None = None, choice: str = "", index: bool = True) -> dict:
    if table is not None and index and any(n is not None for n in table.index.names):
        table, index = table.reset_index(), False  # the index's name in the header row
    return {"title": title, "text": text, "figures": figures, "downloads": downloads,
            "table": None if table is None else
            table.to_html(classes="table table-condensed table-striped", border=0,
                          float_format=lambda v: f"{v:.4g}", index=index, na_rep="–"),
            "choice": choice}


# --- training history ------------------------------------------------------------------

HISTORY_PANELS = (("loss", "total loss"), ("target", "target loss"), ("unifrac", "UniFrac loss"),
                  ("mlm", "masked-nucleotide loss"))
#: What the history's columns mean, for the page (history.tsv keeps the short names).
HISTORY_ROWS = {"lr": "learning rate (end of epoch)", "seconds": "seconds per epoch",
                "samples_per_second": "training samples per second",
                "grad_norm": "gradient norm (mean over steps, before clipping)"}


def _loss_units(model: ModelBundle) -> dict:
    """The y-axis label of each loss panel: what the loss measures, on which scale."""
    target = "cross-entropy of the class (nats)"
    if model.kind == "regressor":
        loss = model.target.get("loss", {}).get("kind", "huber")
        transform = model.target.get("transform", {}).get("kind", "zscore")
        target = f"{loss} loss on the target scaled by {transform}"
    return {"loss": "sum of the weighted losses", "target": target,
            "unifrac": "squared error of embedding vs UniFrac distance",
            "mlm": "cross-entropy per masked nucleotide (nats)"}


def _metric_labels(target: str) -> dict:
    return {"mae": f"MAE (units of {target!r})", "r2": "R² (1: perfect; 0: the mean)",
            "accuracy": "accuracy (share of samples)"}


def _history_row_name(column: str, target: str) -> str:
    split, _, key = column.partition("_")
    if split in ("train", "val"):
        names = {**dict(HISTORY_PANELS), **_metric_labels(target)}
        return f"{'training' if split == 'train' else 'validation'}: {names.get(key, key)}"
    return HISTORY_ROWS.get(column, column.replace("_", " "))


def _kept_epoch_words(model: ModelBundle, history: pd.DataFrame, kept: int) -> str:
    last = int(history.index.max())
    if model.training.get("n_validation", 0) == 0:
        return (f"No samples were held out for validation, so the model is the last epoch's "
                f"({last}).")
    if kept == 0:
        return ("No epoch improved the validation loss on the starting point (the linear "
                "readout fitted before training, with the network's head at zero), so the "
                "model is that starting point: the network added nothing these samples could "
                "confirm. Read the readout's choice in the log; more samples, or a smaller "
                "learning rate, may let the network help.")
    if kept == last:
        return (f"The model keeps the weights of the last epoch, {kept} (dotted line): its "
                "validation loss was the lowest.")
    return (f"The model keeps the weights of epoch {kept} (dotted line), the epoch with the "
            f"lowest validation loss; the {last - kept} later epoch(s) did not improve on it"
            + (", and training stopped after 'patience' epochs without a new best."
               if last < model.training.get("config", {}).get("epochs", last) else "."))


def _architecture_words(model: ModelBundle) -> str:
    """The architecture in effect (QIIME 2's provenance shows the parameters as given: an
    architecture inherited from a pretrained encoder appears there as not set)."""
    c = model.model_config
    inherited = (" (taken from the pretrained encoder)"
                 if model.training.get("pretrained") else "")
    return (f"Architecture in effect{inherited}: embedding {c.get('embedding_dim')}, "
            f"{c.get('attention_heads')} attention heads, {c.get('nucleotide_layers')} "
            f"nucleotide + {c.get('sample_layers')} sample layers, patch "
            f"{c.get('patch_size')} nt, token limit {model.training.get('token_limit')}"
            f", fusion {c.get('categorical_fusion', 'none')}.")


def _history_frame(model: ModelBundle) -> pd.DataFrame:
    """The model's per-epoch training history as a table indexed by epoch."""
    history = model.training.get("history", [])
    if not history:
        raise ValueError("This model has no training history (it was saved without one). "
                         "Retrain it with this version of q2-aam.")
    return pd.DataFrame(history).set_index("epoch").sort_index()


def _history_figure(output_dir: str, model: ModelBundle, history: pd.DataFrame, kept: int,
                    target: str) -> str:
    """A panel per loss, per validation metric and the learning rate, per epoch."""
    plt = _pyplot()
    panels = [(f"{key}", label) for key, label in HISTORY_PANELS
              if f"train_{key}" in history or f"val_{key}" in history]
    metrics = [c for c in ("val_mae", "val_r2", "val_accuracy") if c in history]
    n = len(panels) + len(metrics) + 1
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3 * ((n + 2) // 3)),
                             squeeze=False)
    axes = axes.ravel()
    units = _loss_units(model)
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", "-"), ("val", "--")):
            if f"{split}_{key}" in history:
                ax.plot(history.index, history[f"{split}_{key}"], style, marker=".",
                        label="training" if split == "train" else "validation")
        ax.set_title(label)
        ax.set_ylabel(units[key], fontsize=7)
        ax.legend()
    labels = _metric_labels(target)
    for ax, metric in zip(axes[len(panels):], metrics):
        ax.plot(history.index, history[metric], marker=".", color="C2")
        ax.set_title(f"validation {labels[metric[4:]].split(' (')[0]}")
        ax.set_ylabel(labels[metric[4:]], fontsize=7)
    ax = axes[len(panels) + len(metrics)]
    ax.plot(history.index, history["lr"], marker=".", color="C3")
    ax.set_title("learning rate")
    ax.set_ylabel("AdamW learning rate", fontsize=7)
    from matplotlib.ticker import MaxNLocator
    for ax in axes[:n]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kept in history.index:
            ax.axvline(kept, color="grey", lw=0.8, ls=":")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, output_dir, "history.svg")


def _history_intro(model: ModelBundle, history: pd.DataFrame, kept: int, target: str) -> list:
    """How the model was trained, its architecture, which epoch it keeps, each step's time."""
    config = model.training.get("config", {})
    what = (f"A {model.kind} of {target!r}" if model.kind != "encoder" else "An encoder")
    intro = [f"{what} trained by '{model.training.get('action', '?')}' "
             f"for {len(history)} epoch(s) on {model.training.get('n_train', '?')} samples "
             f"(validation: {model.training.get('n_validation', '?')}); batch size "
             f"{config.get('batch_size', '?')}, learning rate {config.get('learning_rate', '?')}"
             f"; device {model.training.get('device', config.get('device', '?'))}, "
             f"{config.get('num_processes', 1)} process(es).",
             _architecture_words(model), _kept_epoch_words(model, history, kept)]
    steps = model.training.get("steps")
    if steps:
        intro.append("Time per step: " + "; ".join(
            f"{name} {seconds:.1f} s" for name, seconds in steps) + ".")
    return intro


def _history_summary(history: pd.DataFrame, kept: int, target: str) -> pd.DataFrame:
    """The kept epoch's and the last epoch's numbers, a row per history column."""
    shown = history.drop(columns=[c for c in ("best",) if c in history])
    columns = {f"last epoch ({history.index.max()})": shown.loc[history.index.max()]}
    if kept in shown.index and kept != history.index.max():
        columns = {f"kept epoch ({kept})": shown.loc[kept], **columns}
    summary = pd.DataFrame(columns).rename(index=lambda c: _history_row_name(c, target))
    summary = summary.dropna(how="all").applymap(
        lambda v: "not measured" if pd.isna(v) else f"{v:.4g}")
    return summary.rename_axis("").reset_index()


def training_history(output_dir: str, model: ModelBundle) -> None:
    from .core.api import kept_epoch
    history = _history_frame(model)
    target = model.target.get("name", "the target")
    kept = model.training.get("kept_epoch", kept_epoch(
        model.training.get("history", []), model.training.get("n_validation", 0) > 0))
    figure = _history_figure(output_dir, model, history, kept, target)
    download = _tsv(history, output_dir, "history.tsv")
    intro = _history_intro(model, history, kept, target)
    _render(output_dir, "Training history", intro, [_section(
        "Loss components and metrics per epoch",
        ["Training losses are averages over the epoch's batches; validation losses and metrics "
         "are computed on the held-out validation samples after each epoch. The losses are "
         "on the scale the model learns; MAE and R² are in the target's own units."],
        [_figure(figure)], [download], table=_history_summary(history, kept, target),
        index=False)])


# --- accuracy ----------------------------------------------------------------------------

def _scored_ids(table: biom.Table, truth: pd.Series) -> list:
    """The table's samples with an observed value (the others are left out, with a word)."""
    table_ids = [str(i) for i in table.ids()]
    ids = [i for i in table_ids if i in truth.index and not pd.isna(truth[i])]
    if not ids:
        raise ValueError(f"No sample of the table has a value in the metadata column "
                         f"{truth.name!r}; pass the column holding the observed values.")
    if len(ids) < len(table_ids):
        left = [i for i in table_ids if i not in ids]
        inputs.log(f"Scoring {len(ids)} sample(s); leaving out {len(left)} without a value "
                   f"in {truth.name!r} ({inputs.examples(left)}).")
    return ids


def _confusion(observed, predicted, classes) -> pd.DataFrame:
    """Counts of (observed class, predicted class); rows observed, columns predicted.

    Observed labels that the model does not know get their own rows.
    """
    observed = pd.Categorical(np.asarray(observed, dtype=str),
                              categories=list(classes) + sorted(set(map(str, observed))
                                                                - set(classes)))
    predicted = pd.Categorical(np.asarray(predicted, dtype=str), categories=list(classes))
    table = pd.crosstab(observed, predicted, dropna=False)
    table.index.name, table.columns.name = "observed", "predicted"
    return table


def _regression_section(output_dir: str, frame: pd.DataFrame, target: str, downloads: list,
                        notes: list) -> dict:
    """Predicted against observed values: a scatter plot, MAE, RMSE, R² and Pearson r²."""
    from .core.api import regression_accuracy
    plt = _pyplot()
    scores = regression_accuracy(frame["observed"], frame["predicted"])
    pearson = (float(np.corrcoef(frame["observed"], frame["predicted"])[0, 1] ** 2)
               if scores["n"] > 1 and frame["observed"].std() > 0
               and frame["predicted"].std() > 0 else float("nan"))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(frame["observed"], frame["predicted"], s=12, alpha=0.6)
    low = float(min(frame[["observed", "predicted"]].min()))
    high = float(max(frame[["observed", "predicted"]].max()))
    ax.plot([low, high], [low, high], color="grey", lw=1, label="predicted = observed")
    ax.set_xlabel(f"observed {target} (its units)")
    ax.set_ylabel(f"predicted {target} (its units)")
    ax.set_title(f"MAE {scores['mae']:.4g}   R² {_shown(scores['r2'], '.3f')}   "
                 f"Pearson r² {_shown(pearson, '.3f')}   n {scores['n']}")
    ax.legend(loc="upper left")
    figure = _save(fig, output_dir, "accuracy.svg")
    summary = pd.DataFrame({
        "measure": [f"mean absolute error (units of {target!r})",
                    f"root mean squared error (units of {target!r})",
                    "R², coefficient of determination: 1 - (squared errors) / (squared "
                    "deviations from the mean); 0 for predicting the mean",
                    "Pearson r², squared correlation of predicted and observed (what "
                    "q2-sample-classifier's scatterplot shows as r-squared)",
                    "samples"],
        "value": [f"{scores['mae']:.4g}", f"{scores['rmse']:.4g}",
                  _shown(scores["r2"], ".3f"), _shown(pearson, ".3f"), str(scores["n"])]})
    text = [f"Predicted against observed {target!r} for {scores['n']} samples; the line is "
            "a perfect prediction. R² counts every error, bias included; Pearson r² only "
            "how well the predictions line up (an offset or a scale does not lower it), "
            "so r² is never below R². "
            "Score samples the model did not train on for an honest estimate."]
    return _section("Predicted vs observed", text + notes, [_figure(figure)], downloads,
                    table=summary, index=False)


def _classification_section(output_dir: str, frame: pd.DataFrame, target: str, classes,
                            downloads: list, notes: list) -> dict:
    """Observed against predicted classes: a confusion matrix and the accuracy, next to
    always calling the most common class."""
    plt = _pyplot()
    matrix = _confusion(frame["observed"], frame["predicted"], classes)
    downloads = downloads + [_tsv(matrix, output_dir, "confusion.tsv")]
    correct = float((frame["observed"].astype(str) == frame["predicted"].astype(str)).mean())
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * matrix.shape[1],
                                    1.2 + 0.5 * matrix.shape[0]))
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    ax.set_xlabel(f"predicted {target} (class)")
    ax.set_ylabel(f"observed {target} (class)")
    ax.set_title(f"accuracy {correct:.3f}   n {len(frame)}")
    figure = _save(fig, output_dir, "accuracy.svg")
    share = frame["observed"].astype(str).value_counts(normalize=True)
    summary = pd.DataFrame({
        "measure": ["accuracy (share of samples whose class is right)",
                    f"always the most common class ({share.index[0]!r})", "samples"],
        "value": [f"{correct:.3f}", f"{share.iloc[0]:.3f}", str(len(frame))]})
    text = [f"Observed (rows) against predicted (columns) classes of {target!r}. "
            f"Calling every sample {share.index[0]!r} would be right {share.iloc[0]:.1%} "
            "of the time: a useful classifier beats that."]
    return _section("Predicted vs observed", text + notes, [_figure(figure)], downloads,
                    table=summary, index=False)


def _new_asv_words(new_asvs: pd.DataFrame, match_identity: float) -> str:
    """How much of the samples' reads lie outside the model's training vocabulary."""
    share = new_asvs.drop(columns="reads_in_vocabulary").sum(axis=1)
    return (f"Reads in ASVs outside the model's training vocabulary: median {share.median():.1%}"
            f" of a sample's reads (max {share.max():.1%}); predictions.tsv gives each "
            "sample's share read as the nearest vocabulary ASV (at least "
            f"{match_identity:.0%} identity) and unmatched. Where it is high, the model "
            "extrapolates.")


def accuracy(output_dir: str, model: ModelBundle, table: biom.Table,
             metadata: qiime2.MetadataColumn, sequences: pd.Series = None,
             sample_metadata: qiime2.Metadata = None, batch_size: int = PREDICT_BATCH_SIZE,
             device: str = DEFAULT_DEVICE, match_identity: float = DEFAULT_MATCH_IDENTITY) -> None:
    truth = metadata.to_series()
    ids = _scored_ids(table, truth)
    regression = model.kind == "regressor"
    if regression and isinstance(metadata, qiime2.CategoricalMetadataColumn):
        raise ValueError(f"This model is a regressor, but the column {truth.name!r} is "
                         "categorical; pass the numeric column it predicts.")
    predicted = inputs.predictions(model, table, sequences, sample_metadata, batch_size, device,
                                   sample_ids=ids, match_identity=match_identity).to_numpy()
    observed = truth.loc[ids]
    if not regression and not isinstance(metadata, qiime2.CategoricalMetadataColumn):
        observed = inputs.class_names(observed)  # as 'train' names numeric class codes
    target = model.target.get("name", "target")
    frame = pd.DataFrame({"observed": observed.to_numpy(), "predicted": predicted},
                         index=pd.Index(ids, name="sample_id"))
    new_asvs = _new_asv_shares(model, table, sequences, ids, match_identity)
    if new_asvs is not None:
        frame = frame.join(new_asvs)
    downloads = [_tsv(frame, output_dir, "predictions.tsv")]
    notes = [] if new_asvs is None else [_new_asv_words(new_asvs, match_identity)]
    if regression:
        section = _regression_section(output_dir, frame, target, downloads, notes)
    else:
        section = _classification_section(output_dir, frame, target, model.target["classes"],
                                          downloads, notes)
    _render(output_dir, "Accuracy", [f"Model: {model.kind} of {target!r}."], [section])


def _shown(value: float, spec: str) -> str:
    """``value`` formatted, or why there is none (a constant column has no R²)."""
    return "undefined (constant values)" if np.isnan(value) else format(value, spec)


def _new_asv_shares(model, table, sequences, ids, match_identity) -> pd.DataFrame | None:
    """Per sample of ``ids``, the shares of the reads the model reads in its training
    vocabulary, in new ASVs read as a vocabulary neighbour and in unmatched new ASVs
    (``None`` for a model without a vocabulary)."""
    from .core import api
    limit = model.training.get("token_limit", DEFAULT_TOKEN_LIMIT)
    samples = inputs.amplicon_samples(table, sequences, limit, sample_ids=ids)
    shares = api.read_shares(model, samples, match_identity)
    if shares is None:
        return None
    return pd.DataFrame({f"reads_{'in_' if k == 'vocabulary' else ''}{k}": v.round(4)
                         for k, v in shares.items()},
                        index=pd.Index(samples.sample_ids, name="sample_id"))


# --- conditioning: GMU gates, cross-attention, Perceiver ------------------------------

def _short_id(feature: str) -> str:
    """A short, distinct name: the MD5 prefix for a feature ID that is a sequence (as
    DADA2/Deblur hash them), else the ID's first 16 characters."""
    from .core.api import is_dna
    if len(feature) > 20 and is_dna(feature):
        return hashlib.md5(feature.upper().encode()).hexdigest()[:10]
    return feature[:16]


#: Longest taxon name in a label; the full lineage stays in the TSVs.
LABEL_NAME_LENGTH = 40


def _taxon_name(taxon: str) -> str:
    """The deepest named rank of a QIIME 2 taxon string. A species epithet alone
    ('g__Clostridium; s__perfringens', Greengenes style) is given its genus; names past
    ``LABEL_NAME_LENGTH`` characters are cut with an ellipsis."""
    ranks = [part.strip().split("__", 1) for part in taxon.split(";")]
    named = [(r[0] if len(r) == 2 else "", r[-1].strip()) for r in ranks if r[-1].strip()]
    if not named:
        return ""
    rank, name = named[-1]
    genus = next((n for r, n in reversed(named) if r == "g"), None)
    if rank == "s" and genus and not name.replace("_", " ").startswith(genus):
        name = f"{genus} {name}"
    if len(name) > LABEL_NAME_LENGTH:
        name = name[:LABEL_NAME_LENGTH - 1].rstrip() + "\u2026"
    return name


def _taxon_labels(feature_ids, taxonomy: pd.DataFrame | None) -> dict:
    """``{feature: (full taxon, short label)}``; the label is the taxon's deepest named rank
    (see ``_taxon_name``) and a short feature ID."""
    labels = {}
    for feature in feature_ids:
        taxon = ""
        if taxonomy is not None and feature in taxonomy.index:
            taxon = str(taxonomy.loc[feature, "Taxon"])
        name, short = _taxon_name(taxon), _short_id(feature)
        labels[feature] = (taxon, f"{name} ({short})" if name else short)
    return labels


def _boxes(plt, frame: pd.DataFrame, value: str, columns, ylabel: str, title: str):
    """One panel per column: ``value`` per sample, a box and the points per category value."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, column in zip(axes[0], columns):
        values = sorted(frame[column].unique())
        data = [frame.loc[frame[column] == v, value].to_numpy() for v in values]
        ax.boxplot(data, showfliers=False)
        for i, points in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(points)), points, s=6, alpha=0.4)
        ax.set_xticks(range(1, len(values) + 1), [f"{v}\n(n={len(d)})" for v, d in
                                                   zip(values, data)])
        ax.set_title(column)
        ax.set_xlabel(f"{column} (the sample's value)")
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _gmu_view(output_dir, model, outputs, samples, categorical, columns):
    from .core.api import gate_table
    plt = _pyplot()
    from .core.api import ModelConfig
    variant = ModelConfig.from_dict(model.model_config).gmu_variant  # as the model is built
    meaning = ("z scales how much of the metadata vector is added to the unchanged sequence "
               "representation (h + z·tanh(W c)): near 0 the metadata is ignored, near 1 it is "
               "added in full." if variant == "residual" else
               "z weighs the sequence representation against the metadata "
               "(z·tanh(W h) + (1 − z)·tanh(W c)): near 1 the prediction rests on the "
               "sequences, near 0 on the metadata.")
    gates = outputs["gmu_gate"]
    frame = gate_table(gates, samples.sample_ids, categorical)
    box = _save(_boxes(plt, frame, "gate_mean", columns, "mean gate z of the sample",
                       "Per-sample mean gate by category value"), output_dir, "gates.svg")
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, column in zip(axes[0], columns):
        for value in sorted(frame[column].unique()):
            ax.hist(gates[(frame[column] == value).to_numpy()].ravel(), bins=bins, density=True,
                    histtype="step", label=value)
        ax.set_title(column)
        ax.set_xlabel("gate value z (every unit of every sample)")
        ax.set_ylabel("density (area 1 per value)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    hist = _save(fig, output_dir, "gate-distribution.svg")
    units = pd.DataFrame(gates, index=frame.index,
                         columns=[f"unit_{i + 1}" for i in range(gates.shape[1])])
    summary = pd.concat({c: frame.groupby(c)["gate_mean"].describe() for c in columns})
    summary.index.names = ["column", "value"]
    return [_section(
        f"GMU gates ({variant} form)",
        [meaning, "Each sample has one gate value per embedding unit; the boxes show each "
         "sample's mean over units, the histograms every unit's value."],
        [_figure(box), _figure(hist)],
        [_tsv(frame, output_dir, "gates.tsv"), _tsv(units, output_dir, "gate-units.tsv")],
        table=summary)]


def _heatmap(plt, matrix, row_labels, groups, tokens, title, cbar_label):
    n_rows, n_cols = matrix.shape
    fig, ax = plt.subplots(figsize=(2.5 + 0.32 * n_cols, 1.6 + 0.26 * n_rows))
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="viridis", vmin=0,
                      vmax=max(float(np.nanmax(matrix)) if np.isfinite(matrix).any() else 1,
                               1e-6))
    ax.set_yticks(range(n_rows), row_labels, fontsize=7)
    ax.set_xticks(range(n_cols), [t for _ in groups for t in tokens], rotation=90, fontsize=7)
    for g in range(1, len(groups)):
        ax.axvline(g * len(tokens) - 0.5, color="white", lw=2)
    top = ax.secondary_xaxis("top")
    top.set_xticks([g * len(tokens) + (len(tokens) - 1) / 2 for g in range(len(groups))],
                   [f"{c} = {v}" for c, v in groups], rotation=45, ha="left", fontsize=7)
    ax.set_title(title, pad=8 + 3.2 * max(len(f"{c} = {v}") for c, v in groups))
    ax.set_xlabel("metadata token, in groups of samples with one value (above)")
    ax.set_ylabel("ASV (rank. taxon, short feature ID)")
    fig.colorbar(image, ax=ax, label=cbar_label, shrink=0.6)
    return fig


def _response_section(plt, output_dir, model, response, samples, columns, labels, top_n,
                      min_samples):
    """Which ASVs' conditioning moves the prediction, per column (an attribution)."""
    from .core.api import asv_response
    frame = asv_response(response, samples, columns)
    ranked = frame[frame["n_samples"] >= min_samples]
    top = list(ranked.index[:top_n])
    target = model.target.get("name", "target")
    unit = (f"mean |change| in predicted {target}" if model.kind == "regressor" else
            "mean change in class probabilities (total variation)")
    matrix = ranked.loc[top, list(columns)].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(3.5 + 0.5 * len(columns), 1.6 + 0.26 * len(top)))
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="magma", vmin=0)
    ax.set_yticks(range(len(top)), [f"{r}. {labels[f][1]}" for r, f in enumerate(top, 1)],
                  fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_title("How much each ASV's conditioning moves the prediction")
    ax.set_xlabel("metadata column")
    ax.set_ylabel("ASV (rank. taxon, short feature ID)")
    fig.colorbar(image, ax=ax, label=unit, shrink=0.6)
    table = frame.reset_index()
    table.insert(1, "taxon", table["feature_id"].map(lambda f: labels[f][0]))
    shown = ranked.loc[top].set_axis([f"{r}. {labels[f][1]}" for r, f in enumerate(top, 1)])
    shown.index.name = "ASV"
    few = shown["n_samples"] < FEW_SAMPLES
    shown = shown.rename(columns={"n_samples": "samples holding it"})
    shown["caution"] = np.where(few, f"fewer than {FEW_SAMPLES} samples", "")
    return _section(
        "Response: which ASVs' conditioning moves the prediction",
        [f"For each sample and each ASV it holds, the model is run again with that ASV alone "
         f"conditioned on another value of a column (each other value seen in training, "
         f"averaged); every other ASV and the rest of the model keep the sample's own "
         f"metadata. A cell is the {unit}, averaged over the samples holding the ASV. This is "
         f"an attribution: it is near zero for an ASV whose metadata attention changes but "
         f"whose output the prediction does not read. Shown: the {len(top)} ASVs (of "
         f"{len(ranked)} held by at least {min_samples} samples) with the largest response "
         f"to any column; response.tsv has every ASV.",
         f"An ASV held by few samples can top this list on one sample's quirk: rows resting "
         f"on fewer than {FEW_SAMPLES} samples are marked ({int(few.sum())} here). Raise "
         f"--p-min-samples (now {min_samples}) to leave them out."],
        [_figure(_save(fig, output_dir, "response.svg"))],
        [_tsv(table, output_dir, "response.tsv", index=False)], table=shown)


def _conditioning_response(model, samples, categorical, sample_metadata, batch_size, device,
                           match_identity):
    """``api.conditioning_response`` for the visualizer, with the groups a group-normalised
    target needs, and a word first on how long it takes."""
    from .core import api
    groups = inputs.category_groups(sample_metadata, model.target.get("normalize_by") or None,
                              samples.sample_ids, required=False)
    vocabularies = model.target["categorical"]["vocabularies"]
    passes = len(samples.indices) * sum(max(len(v) - 1, 1) for v in vocabularies.values())
    inputs.log(f"Measuring each ASV's response to {', '.join(vocabularies)}: about {passes} "
               f"passes of the layers after the fusion ({len(samples.indices)} held ASVs x "
               f"other values); the demo's 190 samples take about 7 s on 2 CPU cores.")
    return api.conditioning_response(model, samples, categorical=categorical,
                                     normalize_groups=groups, batch_size=batch_size,
                                     device=device, match_identity=match_identity,
                                     log=inputs.log)


def _top_asv_table(samples, ranking: pd.Series, top: list, labels: dict) -> pd.DataFrame:
    """The ``top`` ASVs of ``ranking`` by rank: label, ID, taxon, score, how many samples
    hold each and its sequence."""
    sequence = dict(zip(samples.feature_ids, samples.sequences))
    held = np.bincount(samples.indices, minlength=len(samples.feature_ids))
    index = {f: i for i, f in enumerate(samples.feature_ids)}
    return pd.DataFrame({
        "rank": range(1, len(top) + 1), "label": [labels[f][1] for f in top],
        "feature_id": top,
        "taxon": [labels[f][0] for f in top],
        "attention_variance": ranking.loc[top].to_numpy(),
        "n_samples": [int(held[index[f]]) for f in top],
        "sequence": [sequence[f] for f in top]}).set_index("rank")


def _attention_heatmaps(plt, output_dir, table, top, labels, groups, tokens, n_heads) -> list:
    """A heatmap of the ``top`` ASVs' attention to each token per group, for the heads
    averaged and for each head."""
    from .core.api import heatmap_matrix
    heads = ["mean"] + [str(h + 1) for h in range(n_heads)]
    figures = []
    for head in heads:
        matrix = heatmap_matrix(table, top, head, groups, tokens)
        title = "heads averaged" if head == "mean" else f"head {head}"
        fig = _heatmap(plt, matrix, [f"{r}. {labels[f][1]}" for r, f in enumerate(top, 1)],
                       groups, tokens,
                       f"Mean attention of each ASV to each metadata token ({title})",
                       "attention weight")
        name = "cross-attention-mean.svg" if head == "mean" else f"cross-attention-head{head}.svg"
        figures.append(_figure(_save(fig, output_dir, name), label=title))
    return figures


def _cross_attention_view(output_dir, model, outputs, samples, categorical, columns, taxonomy,
                          top_n, min_samples, response):
    """``response``: a function returning the per-ASV response, called once the attention
    ranking has shown there is something to rank (it is the slow part)."""
    from .core.api import asv_attention, category_groups, rank_by_variance, token_names
    plt = _pyplot()
    weights = outputs["cross_attention"]
    table = asv_attention(weights, samples, categorical, columns)
    tokens = token_names(columns)
    ranking = rank_by_variance(table, tokens, min_samples)
    if ranking.empty:
        raise ValueError(f"No ASV is held by {min_samples} or more samples in two values of a "
                         f"column, so none can be ranked; lower --p-min-samples (now "
                         f"{min_samples}) or pass more samples.")
    top = list(ranking.index[:top_n])
    labels = _taxon_labels(samples.feature_ids, taxonomy)
    top_table = _top_asv_table(samples, ranking, top, labels)
    groups = [(c, v) for c, v, _ in category_groups(categorical)]
    figures = _attention_heatmaps(plt, output_dir, table, top, labels, groups, tokens,
                                  weights.shape[1])
    table.insert(1, "taxon", table["feature_id"].map(lambda f: labels[f][0]))
    downloads = [_tsv(top_table, output_dir, "top-asvs.tsv"),
                 _tsv(table, output_dir, "cross-attention.tsv", index=False)]
    shown = top_table.drop(columns="feature_id").assign(
        sequence=top_table["sequence"].str.slice(0, 30) + "…")
    respond = _response_section(plt, output_dir, model, response(), samples, columns, labels,
                                top_n, min_samples)
    return [respond, _section(
        "Cross-attention: which ASVs attend to which metadata",
        [f"Each ASV (row) attends to one token per metadata column and a null token (columns, "
         f"grouped by the samples' value of each column). A cell is the ASV's attention weight "
         f"to that token, averaged over the samples in the group that hold the ASV; each ASV's "
         f"weights over the {len(tokens)} tokens of a group sum to 1. Shown: the {len(top)} "
         f"ASVs (of {len(ranking)} ranked) whose attention varies most between a column's "
         f"values, among ASVs held by at least {min_samples} samples of a value. A blank cell: "
         f"no sample with that value holds the ASV. Rows are numbered by rank and named by "
         f"{'taxon and ' if taxonomy is not None else ''}feature ID (the MD5 of a sequence "
         f"ID); top-asvs.tsv has the full IDs and sequences, cross-attention.tsv every "
         f"ASV's weights.",
         "This list ranks ASVs by how much their attention varies between values; the "
         "response list above, by how much the prediction moves. The two need not share "
         "taxa: attention that the layers after it do not use moves nothing.",
         "Read it as where attention goes, not as proof that a taxon responds to a condition: "
         "on synthetic data with planted ASV x category rules, the planted ASVs' weights moved "
         "little more than others', while their response (above) was 4 to 12 times the "
         "others' (docs/views.md)."],
        figures, downloads, table=shown, choice="head")]


def _perceiver_view(output_dir, model, outputs, samples, categorical, columns, taxonomy,
                    top_n):
    from .core.api import latent_attention, metadata_share, token_names
    plt = _pyplot()
    weights = outputs["perceiver_attention"]
    table = latent_attention(weights, samples, columns)
    labels = _taxon_labels(samples.feature_ids, taxonomy)
    asv_mean = table[(table["head"] == "mean") & (table["key_type"] == "ASV")]
    ranking = asv_mean.groupby("key")["attention"].sum().sort_values(ascending=False,
                                                                      kind="stable")
    top = list(ranking.index[:top_n])
    keys = token_names(columns) + top
    key_labels = token_names(columns) + [labels[f][1] for f in top]
    heads = ["mean"] + [str(h + 1) for h in range(weights.shape[1])]
    figures = []
    for head in heads:
        part = table[table["head"] == head].pivot_table(index="latent", columns="key",
                                                        values="attention")
        matrix = part.reindex(columns=keys).to_numpy()
        fig, ax = plt.subplots(figsize=(2.5 + 0.26 * len(keys), 1.5 + 0.3 * matrix.shape[0]))
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0)
        ax.set_xticks(range(len(keys)), key_labels, rotation=90, fontsize=7)
        ax.set_yticks(range(matrix.shape[0]), [f"latent {i}" for i in part.index], fontsize=7)
        ax.axvline(len(columns) + 0.5, color="white", lw=2)
        title = "heads averaged" if head == "mean" else f"head {head}"
        ax.set_title(f"Latents' attention to metadata tokens and the top ASVs ({title})")
        ax.set_xlabel("metadata tokens, then ASVs (taxon, short feature ID)")
        ax.set_ylabel("Perceiver latent")
        fig.colorbar(image, ax=ax, label="attention weight", shrink=0.6)
        name = "perceiver-mean.svg" if head == "mean" else f"perceiver-head{head}.svg"
        figures.append(_figure(_save(fig, output_dir, name), label=title))
    share = metadata_share(weights, samples.sample_ids, categorical)
    box = _save(_boxes(plt, share, "metadata_share", columns, "share of attention",
                       "Share of the latents' attention that goes to metadata tokens"),
                output_dir, "perceiver-metadata-share.svg")
    table = table.assign(taxon=table["key"].map(lambda k: labels.get(k, ("", ""))[0]))
    return [_section(
        "Perceiver: what the latents read",
        ["Each latent attends over the sample's ASVs and the metadata tokens (one per column, "
         "then the null token) together; its weights sum to 1 over them. ASV cells are means "
         f"over the samples that hold the ASV; shown are the {len(top)} ASVs with the most "
         "attention summed over latents (heads averaged)."],
        figures, [_tsv(table, output_dir, "perceiver-attention.tsv", index=False)],
        choice="head"),
        _section("Metadata share per category value",
                 ["Per sample, the fraction of attention (latents and heads averaged) given "
                  "to metadata tokens rather than ASVs."],
                 [_figure(box)], [_tsv(share, output_dir, "perceiver-metadata-share.tsv")])]


def explain_conditioning(output_dir: str, model: ModelBundle, table: biom.Table,
                         sample_metadata: qiime2.Metadata, sequences: pd.Series = None,
                         taxonomy: pd.DataFrame = None, top_n: int = CONDITIONING_VIEW["top_n"],
                         min_samples: int = CONDITIONING_VIEW["min_samples"],
                         batch_size: int = PREDICT_BATCH_SIZE, device: str = DEFAULT_DEVICE,
                         match_identity: float = DEFAULT_MATCH_IDENTITY) -> None:
    from .core import api
    from .core.api import MISSING
    fusion = model.model_config.get("categorical_fusion", "none")
    columns = model.target.get("categorical", {}).get("columns") or []
    if fusion not in VIEWS_BY_FUSION or not columns:
        modes = "; ".join(f"'{k}' shows {v}" for k, v in VIEWS_BY_FUSION.items())
        how = (f"with --p-categorical-fusion {fusion}, which has no gates or attention "
               "weights" if columns else "without --p-categorical-columns: it reads no "
               "metadata, so it has no conditioning")
        raise ValueError(
            f"This model was trained {how} to show. explain-conditioning needs a model "
            f"trained with --p-categorical-columns and one of these fusions: {modes}.")
    samples = inputs.amplicon_samples(table, sequences,
                                      model.training.get("token_limit", DEFAULT_TOKEN_LIMIT))
    categorical = inputs.categorical_columns(sample_metadata, columns, samples.sample_ids,
                                             required=False, parameter=inputs.MODEL_COLUMNS)
    known = set(sample_metadata.ids)
    absent = [i for i in samples.sample_ids if i not in known]
    if absent:
        inputs.log(f"{len(absent)} sample(s) are not in the sample metadata "
                   f"({inputs.examples(absent)}); the model reads their columns as unknown, "
                   f"and they are shown as {MISSING!r}.")
    outputs = api.model_outputs(model, samples, batch_size=batch_size, device=device,
                                categorical=categorical, match_identity=match_identity,
                                log=inputs.log)
    if fusion == "gmu":
        sections = _gmu_view(output_dir, model, outputs, samples, categorical, columns)
    elif fusion == "cross-attention":
        sections = _cross_attention_view(
            output_dir, model, outputs, samples, categorical, columns, taxonomy, top_n,
            min_samples, lambda: _conditioning_response(model, samples, categorical,
                                                        sample_metadata, batch_size, device,
                                                        match_identity))
    else:
        sections = _perceiver_view(output_dir, model, outputs, samples, categorical, columns,
                                   taxonomy, top_n)
    target = model.target.get("name", "target")
    _render(output_dir, f"What the {fusion} conditioning learned",
            [f"A {model.kind} of {target!r} conditioned on {', '.join(columns)} "
             f"(--p-categorical-fusion {fusion}), explained on {len(samples)} samples. "
             "Missing values and values the model did not see in training use its 'unknown' "
             "embedding and appear here as their own value."],
            sections)
