"""Categorical conditioning on real data (issue 25): age, with metadata columns given
through each fusion mode, on held-out subjects.

    .venv/bin/python benchmarks/fusion.py --dataset ecam [--splits 0 1 2 3 4]
        [--modes none concat add gmu cross-attention perceiver film]

Protocol as in ``accuracy.py``: data.md's five subject-grouped splits; q2-aam with
``qiime aam train``'s defaults, the dataset's phylogeny and the encoder pretrained once
per dataset on all samples without labels. Conditioning columns (``COLUMNS``): ECAM
delivery mode and diet, karelia country. ``none`` is the same model without the columns;
``film`` is ``--p-film-conditioning`` with fusion ``none``. Each trained model is scored
whole and as its linear readout alone (``common.readout_alone``; with cross-attention the
readout has a coefficient per ASV and category value).

Rows go to ``results/fusion.tsv`` (a rerun skips them), the table to
``results/fusion.md``. The table measured before the ASV identities and the linear
readout existed is ``results/fusion-before-readout.md``.
"""
import argparse
import time

import numpy as np

from common import (RESULTS, ResultTable, load, log, pretrained_encoder, readout_alone,
                    regression_scores, train_defaults)

COLUMNS = {"ecam": ["delivery", "diet"], "karelia": ["country"]}
MODES = ("none", "concat", "add", "gmu", "cross-attention", "perceiver", "film")
TSV_COLUMNS = ["dataset", "split", "fusion", "model", "mae", "r2", "best_epoch", "seconds"]


def architecture(mode: str) -> dict:
    if mode == "film":
        return {"categorical_fusion": "none", "film_conditioning": True}
    return {"categorical_fusion": mode}


def main():
    from q2_aam.core import api
    from q2_aam.example_data import split_samples
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(COLUMNS))
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    table = ResultTable(RESULTS / "fusion.tsv", TSV_COLUMNS)
    data, samples, metadata = load(args.dataset)
    encoder = pretrained_encoder(args.dataset, data, samples)
    y = metadata["age_days"].astype(float).to_numpy()
    subjects = metadata["subject"].astype(str).to_numpy()
    columns = {c: [None if v != v else str(v) for v in metadata[c]]
               for c in COLUMNS[args.dataset]}
    position = {s: i for i, s in enumerate(samples.sample_ids)}
    for k in args.splits:
        train_ids, test_ids = split_samples(metadata, k)
        train = np.array([position[s] for s in train_ids])
        test = np.array([position[s] for s in test_ids])
        for mode in args.modes:
            key = dict(dataset=args.dataset, split=k, fusion=mode)
            if table.has(**key, model="q2-aam"):
                continue
            started = time.perf_counter()
            given = mode != "none"
            bundle = api.train(
                samples.subset(train), y[train], task="regression", target_name="age_days",
                pretrained=encoder, groups=subjects[train], log=lambda m: None,
                categorical={c: [v[i] for i in train] for c, v in columns.items()}
                if given else None,
                **train_defaults(phylogeny=data.tree, architecture=architecture(mode)))
            seconds = round(time.perf_counter() - started)
            best = max((r["epoch"] for r in bundle.training["history"] if r.get("best")),
                       default=0)
            test_columns = ({c: [v[i] for i in test] for c, v in columns.items()}
                            if given else None)
            for model, b in (("q2-aam", bundle), ("q2-aam readout alone",
                                                  readout_alone(bundle))):
                predicted = api.predict(b, samples.subset(test), categorical=test_columns,
                                        log=lambda m: None)
                scores = regression_scores(predicted, y[test])
                table.add({**key, "model": model, "mae": round(scores["mae"], 2),
                           "r2": round(scores["r2"], 4), "best_epoch": best,
                           "seconds": seconds})
                log(f"{args.dataset} split {k} {mode} {model}: MAE {scores['mae']:.1f}")
    text = markdown(table.rows)
    (RESULTS / "fusion.md").write_text(text)
    print(text)


def markdown(rows) -> str:
    lines = ["# Categorical conditioning: age on held-out subjects, every fusion mode", "",
             "Made by `benchmarks/fusion.py --dataset ecam` and `--dataset karelia` (rows in "
             "`fusion.tsv`): `train`'s defaults with the phylogeny, columns "
             + "; ".join(f"{d} {', '.join(c)}" for d, c in COLUMNS.items())
             + ". MAE in days, mean ± sd over data.md's splits; `readout alone` is the same "
             "model without its network's term. `best epoch`: how many of the splits kept "
             "the weights before any training epoch (epoch 0: the readout alone).", ""]
    for dataset in COLUMNS:
        rs = [r for r in rows if r["dataset"] == dataset]
        if not rs:
            continue
        lines += [f"## {dataset} ({', '.join(COLUMNS[dataset])})", "",
                  "| fusion | splits | q2-aam MAE | readout alone MAE | q2-aam R² | "
                  "splits kept at epoch 0 |", "|---|---|---|---|---|---|"]
        for mode in MODES:
            whole = [r for r in rs if r["fusion"] == mode and r["model"] == "q2-aam"]
            alone = [r for r in rs if r["fusion"] == mode and r["model"] != "q2-aam"]
            if not whole:
                continue

            def cell(group, metric, digits):
                x = np.array([float(r[metric]) for r in group])
                return f"{x.mean():.{digits}f} ± {x.std(ddof=1) if len(x) > 1 else 0:.{digits}f}"
            zero = sum(r["best_epoch"] == "0" for r in whole)
            lines.append(f"| {mode} | {len(whole)} | {cell(whole, 'mae', 1)} | "
                         f"{cell(alone, 'mae', 1)} | {cell(whole, 'r2', 3)} | {zero} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
