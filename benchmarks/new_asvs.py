"""Predictions on ASVs the model never saw (issue 25): q2-aam against classical anchors.

    .venv/bin/python benchmarks/new_asvs.py [--datasets ecam karelia] [--splits 0 1 2 3 4]
        [--models ...] [--variant NAME JSON]

Every model is fitted on a split's training subjects (data.md's protocol and splits) and
scored on its test subjects, whose table is given as it is (``clean``) and as another
denoising run or trimming would give it (``q2_aam.example_data.variants``, seeded by
dataset, split and condition):

* ``1 substitution`` / ``3 substitutions``: half of the test table's features replaced by
  a variant of their sequence with that many random substitutions;
* ``5' end -10 nt``: every test sequence without its first 10 nucleotides (a shifted
  primer): every test ASV is new;
* ``3' end -20 nt``: every test sequence without its last 20 (shorter reads).

Models (``anchors`` for the classical ones):

* ``q2-aam``: the README's recipe: the encoder pretrained on every sample's (clean) table
  and UniFrac, no labels (``common.pretrained_encoder``), then ``train`` with its defaults
  and the dataset's phylogeny; ``predict`` matches each new ASV to its nearest vocabulary
  sequence (``vocabulary``);
* ``q2-aam exact IDs``: the same model, new ASVs read by the network alone
  (``match_identity=1``: what q2-aam did before);
* ``q2-aam readout alone``: the same model without its network's term: the closed-form
  linear readout by itself (with the matching);
* ``q2-aam network alone``: ``--p-no-linear-readout --p-asv-min-samples 0`` (nothing keyed
  by the training vocabulary);
* the anchors: default forest and tuned extra-trees on IDs, the same after mapping new
  features to their nearest training sequence, and extra-trees on k-mer profiles.

``new reads``: the share of the test reads in features the training table lacks. Rows go
to ``results/new-asvs.tsv`` as they finish (a rerun skips them; trained q2-aam models are
kept under ``output/new-asvs/``) and the tables to ``results/new-asvs.md``.
"""
import argparse
import time
import zlib

import numpy as np

from anchors import ANCHORS, counts_of, fit_anchor, project
from common import (OUTPUT, RESULTS, ResultTable, add_variant_option, load, log,
                    pretrained_encoder, readout_alone, regression_scores, train_defaults,
                    variant_of)

CONDITIONS = {"clean": None, "1 substitution": ("redenoise", 1),
              "3 substitutions": ("redenoise", 3), "5' end -10 nt": ("retrim", 10, None),
              "3' end -20 nt": ("retrim", 0, -20)}
Q2_AAM = ("q2-aam", "q2-aam exact IDs", "q2-aam readout alone", "q2-aam network alone")
COLUMNS = ["dataset", "split", "condition", "model", "mae", "r2", "new_reads", "seconds"]
SHARE = 0.5


def test_tables(table, test_ids, dataset: str, k: int) -> dict:
    """The test samples' table in every condition."""
    from q2_aam.example_data.variants import redenoise, retrim
    clean = table.filter(test_ids, axis="sample", inplace=False).remove_empty(
        axis="observation", inplace=False)
    tables = {}
    for name, how in CONDITIONS.items():
        if how is None:
            tables[name] = clean
        elif how[0] == "redenoise":
            seed = zlib.crc32(f"{dataset}:{k}:{name}".encode())
            tables[name] = redenoise(clean, SHARE, how[1], seed)[0]
        else:
            tables[name] = retrim(clean, *how[1:])
    return tables


def q2_aam_bundles(dataset, data, samples, metadata, train_rows, k, variant, overrides,
                   wanted):
    """The q2-aam models of split ``k`` (trained once, kept on disk): ``{"whole": ...,
    "network": ...}`` for those ``wanted`` needs."""
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    y = metadata["age_days"].astype(float).to_numpy()
    subjects = metadata["subject"].astype(str).to_numpy()
    plans = {"whole": dict(phylogeny=data.tree, **overrides),
             "network": dict(linear_readout=False, asv_min_samples=0, **overrides)}
    needed = {"whole"} if any(m != "q2-aam network alone" for m in wanted) else set()
    if "q2-aam network alone" in wanted:
        needed.add("network")
    bundles = {}
    for name in sorted(needed):
        path = OUTPUT / "new-asvs" / f"{dataset}-{variant}-{name}-split{k}"
        if (path / "config.json").exists():
            bundles[name] = ModelBundle.load(path)
            continue
        encoder = pretrained_encoder(dataset, data, samples)
        started = time.perf_counter()
        bundle = api.train(samples.subset(train_rows), y[train_rows], task="regression",
                           target_name="age_days", pretrained=encoder,
                           groups=subjects[train_rows], log=lambda m: None,
                           **train_defaults(**plans[name]))
        bundle.training["benchmark_seconds"] = round(time.perf_counter() - started)
        bundle.save(path)
        bundles[name] = bundle
    return bundles


def q2_aam_predict(model: str, bundles: dict, table, ids, token_limit: int) -> np.ndarray:
    from q2_aam._inputs import amplicon_samples
    from q2_aam.core import api
    samples = amplicon_samples(table, None, token_limit, sample_ids=ids)
    quiet = dict(log=lambda m: None)
    if model == "q2-aam network alone":
        return api.predict(bundles["network"], samples, **quiet)
    if model == "q2-aam readout alone":
        return api.predict(readout_alone(bundles["whole"]), samples, **quiet)
    if model == "q2-aam exact IDs":
        return api.predict(bundles["whole"], samples, match_identity=1.0, **quiet)
    return api.predict(bundles["whole"], samples, **quiet)


def main():
    from q2_aam.example_data import split_samples
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ecam", "karelia"])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", default=[*Q2_AAM, *ANCHORS],
                        choices=[*Q2_AAM, *ANCHORS])
    add_variant_option(parser)
    args = parser.parse_args()
    variant, overrides = variant_of(args)
    label = {m: m if variant == "default" else m.replace("q2-aam", f"q2-aam {variant}", 1)
             for m in Q2_AAM}
    table = ResultTable(RESULTS / "new-asvs.tsv", COLUMNS)
    for dataset in args.datasets:
        data, samples, metadata = load(dataset)
        y = metadata["age_days"].astype(float)
        position = {s: i for i, s in enumerate(samples.sample_ids)}
        for k in args.splits:
            train_ids, test_ids = split_samples(metadata, k)
            train_rows = np.array([position[s] for s in train_ids])
            todo = [m for m in args.models
                    if not all(table.has(dataset=dataset, split=k, condition=c,
                                         model=label.get(m, m)) for c in CONDITIONS)]
            if not todo:
                continue
            tables = test_tables(data.table, test_ids, dataset, k)
            train_counts, train_features = counts_of(data.table, train_ids)
            known = set(train_features)
            tests = {}
            for name, t in tables.items():
                counts, ids = counts_of(t, test_ids)
                new = np.array([i not in known for i in ids])
                tests[name] = (counts, ids, float(counts[:, new].sum() / counts.sum()))
            q2 = [m for m in todo if m in Q2_AAM]
            bundles = (q2_aam_bundles(dataset, data, samples, metadata, train_rows, k, variant,
                                      overrides, q2) if q2 else {})
            for model in todo:
                started = time.perf_counter()
                if model in Q2_AAM:
                    predict = (lambda c, m=model: q2_aam_predict(m, bundles, tables[c],
                                                               test_ids, samples.token_limit))
                else:
                    base = model.replace(" + nearest", "")
                    fitted = fit_anchor(base, train_counts, train_features,
                                        y.loc[train_ids].to_numpy())

                    def predict(c, model=model, fitted=fitted):
                        counts, ids, _ = tests[c]
                        totals = np.asarray(counts.sum(axis=1)).ravel()
                        if model != "extra-trees on k-mers":
                            counts, _ = project(counts, ids, train_features,
                                                nearest=model.endswith("+ nearest"))
                        return fitted(counts, ids, totals)
                for condition in CONDITIONS:
                    key = dict(dataset=dataset, split=k, condition=condition,
                               model=label.get(model, model))
                    if table.has(**key):
                        continue
                    scores = regression_scores(np.asarray(predict(condition), float),
                                               y.loc[test_ids].to_numpy())
                    table.add({**key, "mae": round(scores["mae"], 2),
                               "r2": round(scores["r2"], 4),
                               "new_reads": round(tests[condition][2], 4),
                               "seconds": round(time.perf_counter() - started)})
                    log(f"{dataset} split {k} {condition} {key['model']}: "
                        f"MAE {scores['mae']:.1f} R2 {scores['r2']:.3f}")
    text = markdown(table.rows)
    (RESULTS / "new-asvs.md").write_text(text)
    print(text)


def markdown(rows) -> str:
    """Per dataset: MAE mean ± sd over splits per model and condition, with the change
    from the same model's clean MAE."""
    lines = ["# New ASVs: held-out subjects whose table another denoising run or trimming "
             "made", "",
             "Made by `benchmarks/new_asvs.py` (`make bench`); rows in `new-asvs.tsv`. MAE "
             "in days, mean ± sd over data.md's splits (the `splits` column), and in "
             "brackets the change from the same model's clean MAE. `new reads`: the share "
             "of the test reads in features the training table lacks.", ""]
    by_dataset: dict = {}
    for r in rows:
        by_dataset.setdefault(r["dataset"], []).append(r)
    for dataset, rs in sorted(by_dataset.items()):
        cell: dict = {}
        for r in rs:
            cell.setdefault((r["model"], r["condition"]), {})[r["split"]] = r
        models = sorted({m for m, _ in cell}, key=lambda m: (not m.startswith("q2"), m))
        shares = {c: np.mean([float(r["new_reads"]) for r in rs if r["condition"] == c])
                  for c in CONDITIONS}
        lines += [f"## {dataset}", "",
                  "| model | splits | " + " | ".join(CONDITIONS) + " |",
                  "|---|---|" + "---|" * len(CONDITIONS),
                  "| *new reads* | | " + " | ".join(f"*{shares[c]:.0%}*" for c in CONDITIONS)
                  + " |"]
        for model in models:
            clean = cell.get((model, "clean"), {})
            cells, n = [], 0
            for condition in CONDITIONS:
                got = cell.get((model, condition), {})
                if not got:
                    cells.append("")
                    continue
                n = max(n, len(got))
                x = np.array([float(r["mae"]) for r in got.values()])
                text = f"{x.mean():.1f} ± {x.std(ddof=1) if len(x) > 1 else 0:.1f}"
                paired = [s for s in got if s in clean]
                if condition != "clean" and paired:
                    base = np.mean([float(clean[s]["mae"]) for s in paired])
                    now = np.mean([float(got[s]["mae"]) for s in paired])
                    text += f" ({(now / base - 1) * 100:+.0f} %)"
                cells.append(text)
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
