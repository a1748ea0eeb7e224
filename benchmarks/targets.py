"""Benchmark of target transforms (issue 3): MAE/R² on held-out subjects.

    .venv/bin/python benchmarks/targets.py --dataset ecam [--splits 0 1 2 3 4]
        [--transforms none zscore log-zscore minmax] [--mode frozen|finetune]

Protocol (../shared/design/data.md): data.md's filtering; split k holds out
the subjects first in the order of sha256("split<k>:<subject>"). The encoder
is pretrained once per dataset on all samples' tables and UniFrac (no
labels). Each transform is then trained on the split's training subjects
(10% of them held out, by subject, for early stopping) with the default loss
and scored on the test subjects in days. Rows go to
benchmarks/results/targets.tsv as they finish; a rerun skips finished rows.
"""
import argparse
import time

import numpy as np

from common import RESULTS, ResultTable, load, log, pretrained_encoder, regression_scores, summary

COLUMNS = ["dataset", "split", "transform", "mode", "epochs", "mae", "r2", "best_epoch",
           "seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=["ecam", "karelia"])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--transforms", nargs="+",
                        default=["none", "zscore", "log-zscore", "minmax"])
    parser.add_argument("--mode", choices=["frozen", "finetune"], default="frozen")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()

    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    from q2_aam.example_data import split_samples

    data, samples, metadata = load(args.dataset)
    encoder = pretrained_encoder(args.dataset, data, samples)
    table = ResultTable(RESULTS / "targets.tsv", COLUMNS)
    y_all = metadata["age_days"].astype(float).to_numpy()
    for k in args.splits:
        train_ids, test_ids = split_samples(metadata, k)
        position = {s: i for i, s in enumerate(samples.sample_ids)}
        train_rows = np.array([position[s] for s in train_ids])
        test_rows = np.array([position[s] for s in test_ids])
        for transform in args.transforms:
            key = dict(dataset=args.dataset, split=k, transform=transform, mode=args.mode,
                       epochs=args.epochs)
            if table.has(**key):
                continue
            started = time.perf_counter()
            frozen = args.mode == "frozen"
            bundle = api.train(
                samples.subset(train_rows), y_all[train_rows], task="regression",
                target_name="age_days", pretrained=encoder, freeze_encoder=frozen,
                target_transform=transform,
                config=TrainConfig(epochs=args.epochs, learning_rate=1e-3 if frozen else 5e-4,
                                   patience=15, seed=0),
                groups=metadata["subject"].to_numpy()[train_rows], log=lambda m: None)
            predicted = api.predict(bundle, samples.subset(test_rows), log=lambda m: None)
            scores = regression_scores(predicted, y_all[test_rows])
            best = max((r["epoch"] for r in bundle.training["history"] if r.get("best")),
                       default=len(bundle.training["history"]))
            table.add({**key, "mae": round(scores["mae"], 2), "r2": round(scores["r2"], 4),
                       "best_epoch": best, "seconds": round(time.perf_counter() - started)})
            log(f"{args.dataset} split {k} {transform}: MAE {scores['mae']:.1f} "
                f"R2 {scores['r2']:.3f}")
    rows = [r for r in table.rows if r["mode"] == args.mode]
    (RESULTS / "targets.md").write_text(
        "# Target transforms on held-out subjects (mean ± sd over splits)\n\n"
        f"Made by `benchmarks/targets.py`; mode {args.mode}.\n\n"
        + summary(rows, "transform") + "\n")
    print(summary(rows, "transform"))


if __name__ == "__main__":
    main()
