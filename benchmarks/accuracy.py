"""Real-data accuracy (issue 12): q2-aam against classical models, same splits, one command.

    .venv/bin/python benchmarks/accuracy.py [--tasks ecam:age karelia:age karelia:country]
        [--splits 0 1 2 3 4] [--models ...] [--variant NAME JSON]

Protocol: ``../shared/design/data.md`` (its filtering and its five
subject-grouped splits; ``example_data.split_samples``). Every model is fitted
on the split's training subjects only and scored on its test subjects:

* ``random forest (default)``: q2-sample-classifier's default forest (100
  trees, all features, read counts, ``random_state=0``);
* ``extra-trees (tuned)``: 500 trees, ``max_features=0.33``, on
  log10(relative abundance + 1e-5) of the ASVs held by >= 2 % of the samples;
* ``random forest (500)``: 500 trees, ``max_features=0.33``, relative
  abundance of the same ASVs;
* ``gradient boosting``: HistGradientBoosting, 500 iterations, learning rate
  0.05, on the same log10 relative abundances;
* ``q2-aam <variant>``: the encoder pretrained once per dataset on all of its
  samples' tables and UniFrac, no labels (``common.pretrained_encoder``), then
  ``api.train`` with ``qiime aam train``'s defaults (``common.train_defaults``),
  or those changed by ``--variant``, and the dataset's phylogeny
  (``--i-phylogeny``: the readout's clades, for regression); early stopping on
  training subjects only;
* ``q2-aam <variant> readout alone``: the same trained model without its network's term
  (the closed-form linear readout by itself; ``common.readout_alone``).

Rows go to ``results/accuracy.tsv`` as they finish (a rerun skips them) and the
table (mean ± sd over splits) to ``results/accuracy.md``.
"""
import argparse
import time

import numpy as np

from common import (RESULTS, ResultTable, add_variant_option, load, log, pretrained_encoder,
                    readout_alone, train_defaults, variant_of)

TASKS = {"ecam:age": ("ecam", "age_days"), "karelia:age": ("karelia", "age_days"),
         "karelia:country": ("karelia", "country")}
CLASSICAL = ("random forest (default)", "extra-trees (tuned)", "random forest (500)",
             "gradient boosting")
COLUMNS = ["dataset", "target", "split", "model", "mae", "r2", "accuracy",
           "balanced_accuracy", "seconds"]


def features(data, samples, rows):
    """Read counts ``(n, n_asvs)`` of every ASV of the whole table (not only the ASVs q2-aam
    reads per sample), samples in ``samples``' order, and the ASVs held by >= 2 % of
    ``rows``."""
    ids = list(samples.sample_ids)
    table = data.table.filter(ids, axis="sample", inplace=False).sort_order(ids, axis="sample")
    counts = table.matrix_data.T.toarray()
    counts = counts[:, counts.sum(0) > 0]
    kept = (counts[rows] > 0).mean(0) >= 0.02
    return counts, kept


def classical(name: str, classification: bool, counts, kept, train, test, y):
    from sklearn import ensemble
    rel = counts / counts.sum(1, keepdims=True)
    log_rel = np.log10(rel[:, kept] + 1e-5)
    kind = "Classifier" if classification else "Regressor"
    model, x = {
        "random forest (default)": (lambda: getattr(ensemble, f"RandomForest{kind}")(
            100, random_state=0, n_jobs=1), counts),
        "extra-trees (tuned)": (lambda: getattr(ensemble, f"ExtraTrees{kind}")(
            500, max_features=0.33, random_state=0, n_jobs=1), log_rel),
        "random forest (500)": (lambda: getattr(ensemble, f"RandomForest{kind}")(
            500, max_features=0.33, random_state=0, n_jobs=1), rel[:, kept]),
        "gradient boosting": (lambda: getattr(ensemble, f"HistGradientBoosting{kind}")(
            max_iter=500, learning_rate=0.05, random_state=0), log_rel),
    }[name]
    return model().fit(x[train], y[train]).predict(x[test])


def scores(predicted, truth, classification: bool) -> dict:
    if classification:
        from sklearn.metrics import balanced_accuracy_score
        return {"accuracy": round(float(np.mean(predicted == truth)), 4),
                "balanced_accuracy": round(float(balanced_accuracy_score(truth, predicted)), 4)}
    ss = float(((truth - truth.mean()) ** 2).sum())
    return {"mae": round(float(np.abs(predicted - truth).mean()), 2),
            "r2": round(1 - float(((truth - predicted) ** 2).sum()) / ss, 4)}


def main():
    from q2_aam.core import api
    from q2_aam.example_data import split_samples
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", default=[*CLASSICAL, "q2-aam"],
                        choices=[*CLASSICAL, "q2-aam"])
    add_variant_option(parser)
    args = parser.parse_args()
    variant, overrides = variant_of(args)
    table = ResultTable(RESULTS / "accuracy.tsv", COLUMNS)
    for task in args.tasks:
        dataset, column = TASKS[task]
        data, samples, metadata = load(dataset)
        classification = column == "country"
        y = metadata[column].to_numpy()
        y = y.astype(str) if classification else y.astype(float)
        position = {s: i for i, s in enumerate(samples.sample_ids)}
        subjects = metadata["subject"].astype(str).to_numpy()
        for k in args.splits:
            train_ids, test_ids = split_samples(metadata, k)
            train = np.array([position[s] for s in train_ids])
            test = np.array([position[s] for s in test_ids])
            counts = kept = None
            for model in args.models:
                name = f"q2-aam {variant}" if model == "q2-aam" else model
                key = {"dataset": dataset, "target": column, "split": k, "model": name}
                if table.has(**key):
                    continue
                started = time.perf_counter()
                if model == "q2-aam":
                    encoder = pretrained_encoder(dataset, data, samples)
                    bundle = api.train(
                        samples.subset(train), y[train],
                        task="classification" if classification else "regression",
                        target_name=column, pretrained=encoder, groups=subjects[train],
                        log=lambda m: None,
                        **train_defaults(**{"phylogeny": data.tree, **overrides}))
                    predicted = api.predict(bundle, samples.subset(test), log=lambda m: None)
                    if bundle.model_config.get("linear_readout"):
                        alone = api.predict(readout_alone(bundle), samples.subset(test),
                                            log=lambda m: None)
                        table.add({**key, "model": f"{name} readout alone",
                                   **scores(np.asarray(alone), y[test], classification),
                                   "seconds": round(time.perf_counter() - started)})
                else:
                    if counts is None:
                        counts, kept = features(data, samples, train)
                    predicted = classical(model, classification, counts, kept, train, test, y)
                row = {**key, **scores(np.asarray(predicted), y[test], classification),
                       "seconds": round(time.perf_counter() - started)}
                table.add(row)
                log(f"{task} split {k} {name}: " + ", ".join(
                    f"{m} {row[m]}" for m in ("mae", "r2", "accuracy", "balanced_accuracy")
                    if m in row))
    text = markdown(table.rows)
    (RESULTS / "accuracy.md").write_text(text)
    print(text)


def markdown(rows) -> str:
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["target"]), {}).setdefault(r["model"], []).append(r)
    lines = ["# Real data: held-out subjects, mean ± sd over data.md's five splits", "",
             "Made by `benchmarks/accuracy.py` (`make bench`); rows in `accuracy.tsv`. "
             "`splits` says how many splits a mean covers.", ""]
    for (dataset, target), models in sorted(groups.items()):
        metrics = (("accuracy", "balanced_accuracy") if target == "country"
                   else ("mae", "r2"))
        lines += [f"## {dataset} {target}", "",
                  "| model | splits | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for model, rs in sorted(models.items(), key=lambda kv: (kv[0].startswith("q2"), kv[0])):
            cells = []
            for m in metrics:
                x = np.array([float(r[m]) for r in rs])
                sd = x.std(ddof=1) if len(x) > 1 else 0
                digits = 1 if m == "mae" else 3
                cells.append(f"{x.mean():.{digits}f} ± {sd:.{digits}f}")
            lines.append(f"| {model} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
