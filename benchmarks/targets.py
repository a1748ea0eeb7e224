"""Benchmark of target transforms (issue 3): age MAE/R² on held-out subjects.

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

from common import RESULTS, run_grid, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=["ecam", "karelia"])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--transforms", nargs="+",
                        default=["none", "zscore", "log-zscore", "minmax"])
    parser.add_argument("--mode", choices=["frozen", "finetune"], default="frozen")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    rows = run_grid(args.dataset, args.splits,
                    {t: {"target_transform": t} for t in args.transforms},
                    results="targets", mode=args.mode, epochs=args.epochs,
                    variant_column="transform")
    table = summary(rows, "transform")
    (RESULTS / "targets.md").write_text(
        "# Target transforms, age on held-out subjects (mean ± sd over splits)\n\n"
        f"Made by `benchmarks/targets.py --dataset ecam` and `--dataset karelia`; mode "
        f"{args.mode}, {args.epochs} epochs, default loss (huber).\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
