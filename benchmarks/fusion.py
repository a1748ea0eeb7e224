"""Benchmark of categorical conditioning (issue 4): age MAE/R² on held-out subjects.

    .venv/bin/python benchmarks/fusion.py --dataset karelia [--splits 0 1 2 3 4]
        [--modes none concat add film gmu cross-attention perceiver] [--mode frozen]

Protocol as in benchmarks/targets.py (data.md's splits, encoder pretrained
once per dataset on all samples without labels). Conditioning columns:
karelia country, delivery, gender, abx_first_year; ecam delivery, diet, sex.
'none' is the same model without conditioning.
"""
import argparse

from common import RESULTS, run_grid, summary

COLUMNS = {"karelia": ["country", "delivery", "gender", "abx_first_year"],
           "ecam": ["delivery", "diet", "sex"]}
MODES = {
    "none": {"conditioned": False},  # the same columns, not given to the model
    "concat": {"architecture": {"categorical_fusion": "concat"}},
    "add": {"architecture": {"categorical_fusion": "add"}},
    "film": {"architecture": {"categorical_fusion": "none", "film_conditioning": True}},
    "gmu": {"architecture": {"categorical_fusion": "gmu", "gmu_variant": "canonical"}},
    "gmu-residual": {"architecture": {"categorical_fusion": "gmu", "gmu_variant": "residual"}},
    "cross-attention": {"architecture": {"categorical_fusion": "cross-attention",
                                         "cross_attn_heads": 8}},
    "perceiver": {"architecture": {"categorical_fusion": "perceiver"}},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(COLUMNS))
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--mode", choices=["frozen", "finetune"], default="frozen")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--target-transform", default="none",
                        help="the same for every mode (default: none, the best in "
                             "results/targets.md)")
    args = parser.parse_args()
    rows = run_grid(args.dataset, args.splits, {m: MODES[m] for m in args.modes},
                    results="fusion", mode=args.mode, epochs=args.epochs,
                    variant_column="fusion", categorical_columns=COLUMNS[args.dataset],
                    common={"target_transform": args.target_transform})
    table = summary(rows, "fusion")
    (RESULTS / "fusion.md").write_text(
        "# Categorical conditioning, age on held-out subjects (mean ± sd over splits)\n\n"
        "Made by `benchmarks/fusion.py --dataset ecam` and `--dataset karelia` (rows in "
        f"`fusion.tsv`); mode {args.mode}, {args.epochs} epochs, target transform "
        f"{args.target_transform}, default loss (huber). Conditioning columns: ecam delivery, "
        "diet, sex; karelia country, delivery, gender, abx_first_year. 'gmu' is the canonical "
        "unit, 'gmu-residual' the residual one (the default). The 'splits' column says how "
        "many splits each mean covers; rerun a command to resume an incomplete dataset.\n\n"
        + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
