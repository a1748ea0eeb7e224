"""Transfer between studies (issue 25): trained on one study, predicting the other's ages.

    .venv/bin/python benchmarks/transfer.py [--directions karelia:ecam ecam:karelia]
        [--models ...] [--variant NAME JSON]

Data: ECAM and karelia cut to the 16S region both cover (karelia's positions 2-138 are
ECAM's 137 nt), in one table with one tree (``example_data.variants.common_region``);
features the cut makes identical are merged. A direction ``A:B`` trains on every sample
of study A and scores the samples of study B whose age lies within A's range of ages
(a model is not asked for ages it never saw).

Models: as in ``new_asvs.py``. q2-aam's encoder is pretrained on every sample of both
studies (their tables and UniFrac on the joint tree, no labels), then ``train`` runs with
its defaults and the joint tree, with early stopping on study A's subjects only.

Rows go to ``results/transfer.tsv`` (a rerun skips them), the table to
``results/transfer.md``. ``bias``: mean of predicted minus observed, in days.
"""
import argparse
import time

import numpy as np

from anchors import ANCHORS, counts_of, fit_anchor, project
from common import (OUTPUT, RESULTS, ResultTable, add_variant_option, log,
                    pretrained_encoder, readout_alone, regression_scores, train_defaults,
                    variant_of)

DIRECTIONS = ("karelia:ecam", "ecam:karelia")
Q2_AAM = ("q2-aam", "q2-aam exact IDs", "q2-aam readout alone", "q2-aam network alone")
COLUMNS = ["direction", "model", "n_train", "n_test", "mae", "r2", "bias", "new_reads",
           "seconds"]


def joint():
    """The joint dataset, its samples as the core reads them, and its metadata."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.example_data.variants import common_region
    data = common_region()
    samples = amplicon_samples(data.table, None, 256, sample_ids=list(data.metadata.index))
    return data, samples, data.metadata.loc[samples.sample_ids]


def main():
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS),
                        choices=list(DIRECTIONS))
    parser.add_argument("--models", nargs="+", default=[*Q2_AAM, *ANCHORS],
                        choices=[*Q2_AAM, *ANCHORS])
    add_variant_option(parser)
    args = parser.parse_args()
    variant, overrides = variant_of(args)
    label = {m: m if variant == "default" else m.replace("q2-aam", f"q2-aam {variant}", 1)
             for m in Q2_AAM}
    table = ResultTable(RESULTS / "transfer.tsv", COLUMNS)
    data, samples, metadata = joint()
    y = metadata["age_days"].astype(float).to_numpy()
    study = metadata["study"].to_numpy()
    subjects = metadata["subject"].astype(str).to_numpy()
    for direction in args.directions:
        source, target = direction.split(":")
        train = np.flatnonzero(study == source)
        low, high = y[train].min(), y[train].max()
        test = np.flatnonzero((study == target) & (y >= low) & (y <= high))
        train_ids = [samples.sample_ids[i] for i in train]
        test_ids = [samples.sample_ids[i] for i in test]
        train_counts, train_features = counts_of(data.table, train_ids)
        test_counts, test_features = counts_of(data.table, test_ids)
        known = set(train_features)
        new = np.array([f not in known for f in test_features])
        new_reads = float(test_counts[:, new].sum() / test_counts.sum())
        bundles = {}
        for model in args.models:
            key = dict(direction=direction, model=label.get(model, model))
            if table.has(**key):
                continue
            started = time.perf_counter()
            if model in Q2_AAM:
                kind = "network" if model == "q2-aam network alone" else "whole"
                if kind not in bundles:
                    path = OUTPUT / "transfer" / f"{source}-{variant}-{kind}"
                    if (path / "config.json").exists():
                        bundles[kind] = ModelBundle.load(path)
                    else:
                        encoder = pretrained_encoder("ecam+karelia", data, samples)
                        plan = (dict(linear_readout=False, asv_min_samples=0)
                                if kind == "network" else dict(phylogeny=data.tree))
                        bundles[kind] = api.train(
                            samples.subset(train), y[train], task="regression",
                            target_name="age_days", pretrained=encoder,
                            groups=subjects[train], log=log,
                            **train_defaults(**plan, **overrides))
                        bundles[kind].save(path)
                bundle = bundles[kind]
                if model == "q2-aam readout alone":
                    bundle = readout_alone(bundle)
                predicted = api.predict(bundle, samples.subset(test), log=log,
                                        **({"match_identity": 1.0}
                                           if model == "q2-aam exact IDs" else {}))
            else:
                fitted = fit_anchor(model.replace(" + nearest", ""), train_counts,
                                    train_features, y[train])
                counts = test_counts
                if model != "extra-trees on k-mers":
                    counts, _ = project(test_counts, test_features, train_features,
                                        nearest=model.endswith("+ nearest"))
                predicted = fitted(counts, test_features,
                                   np.asarray(test_counts.sum(axis=1)).ravel())
            predicted = np.asarray(predicted, dtype=float)
            scores = regression_scores(predicted, y[test])
            table.add({**key, "n_train": len(train), "n_test": len(test),
                       "mae": round(scores["mae"], 2), "r2": round(scores["r2"], 4),
                       "bias": round(float(np.mean(predicted - y[test])), 1),
                       "new_reads": round(new_reads, 4),
                       "seconds": round(time.perf_counter() - started)})
            log(f"{direction} {key['model']}: MAE {scores['mae']:.1f} R2 {scores['r2']:.3f}")
    text = markdown(table.rows)
    (RESULTS / "transfer.md").write_text(text)
    print(text)


def markdown(rows) -> str:
    lines = ["# Transfer between studies: trained on one, predicting the other's ages", "",
             "Made by `benchmarks/transfer.py` (`make bench`); rows in `transfer.tsv`. Both "
             "studies cut to the region they share, one tree; the test samples are the "
             "other study's within the training study's range of ages. MAE and bias "
             "(mean predicted - observed) in days.", ""]
    for direction in DIRECTIONS:
        rs = [r for r in rows if r["direction"] == direction]
        if not rs:
            continue
        source, target = direction.split(":")
        lines += [f"## {source} → {target} ({rs[0]['n_train']} training samples, "
                  f"{rs[0]['n_test']} test samples, {float(rs[0]['new_reads']):.1%} of the "
                  "test reads in features the training samples lack)", "",
                  "| model | MAE | R² | bias |", "|---|---|---|---|"]
        for r in sorted(rs, key=lambda r: (not r["model"].startswith("q2"), r["model"])):
            lines.append(f"| {r['model']} | {float(r['mae']):.1f} | {float(r['r2']):.3f} | "
                         f"{float(r['bias']):+.0f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
