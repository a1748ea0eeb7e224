"""Development folds: choices made on a split's training subjects only (issue 25).

    .venv/bin/python benchmarks/devfolds.py --variant NAME JSON [--dataset ecam]
        [--split 0] [--folds 0 1 2] [--match-identity 0.97]

A design choice must not see the test subjects it is scored on. So choices are made on
the training subjects of data.md's split ``--split``: ordered by the hex digest of
``sha256("inner:<subject>")``, every third subject (offset by the fold) is held out.
q2-aam (``train``'s defaults, the dataset's phylogeny, the pretrained encoder of
``common.pretrained_encoder``, changed by ``--variant``) is trained on the rest and
scored on the held-out subjects' table as it is and as another denoising run gives it
(half of the features at 1 and at 3 substitutions; ``new_asvs.test_tables``), as the
whole model and as its linear readout alone.

With ``--by-country`` (karelia), the folds are its three countries instead, each held out
in turn (split ``-1`` in the rows): another population, as a stand-in for another study
that looks at no label of the other study.

Rows go to ``results/devfolds.tsv``; a rerun skips those it has.
"""
import argparse
import hashlib
import time

import numpy as np

from common import (RESULTS, ResultTable, load, log, pretrained_encoder, readout_alone,
                    regression_scores, train_defaults)

CONDITIONS = ("clean", "1 substitution", "3 substitutions")
COUNTRIES = ("FIN", "EST", "RUS")
COLUMNS = ["dataset", "split", "fold", "variant", "match_identity", "condition", "model",
           "mae", "r2", "bias", "seconds"]


def inner_folds(subjects, k: int, fold: int) -> np.ndarray:
    """Whether each sample (by its subject) is held out in development fold ``fold`` of
    split ``k``'s training subjects (the caller passes only those)."""
    order = sorted(set(subjects), key=lambda s: hashlib.sha256(f"inner:{s}".encode())
                   .hexdigest())
    held = set(order[fold::3])
    return np.array([s in held for s in subjects])


def main():
    from q2_aam._inputs import amplicon_samples
    from q2_aam.core import api
    from q2_aam.example_data import split_samples
    from new_asvs import test_tables
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ecam")
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", nargs=2, metavar=("NAME", "JSON"),
                        default=["default", "{}"])
    parser.add_argument("--match-identity", type=float, nargs="+", default=[0.97, 1.0])
    parser.add_argument("--by-country", action="store_true",
                        help="karelia: hold out each country in turn (folds 0-2: FIN, EST, "
                             "RUS), training on the other two and all of their samples; a "
                             "stand-in for another study that sees no ECAM label")
    args = parser.parse_args()
    import json
    name, overrides = args.variant[0], json.loads(args.variant[1])
    table = ResultTable(RESULTS / "devfolds.tsv", COLUMNS)
    data, samples, metadata = load(args.dataset)
    encoder = pretrained_encoder(args.dataset, data, samples)
    train_ids, _ = split_samples(metadata, args.split)
    if args.by_country:
        train_ids, args.split = list(metadata.index), -1
    subjects = metadata.loc[train_ids, "subject"].astype(str).to_numpy()
    y = metadata["age_days"].astype(float)
    position = {s: i for i, s in enumerate(samples.sample_ids)}
    for fold in args.folds:
        held = (metadata.loc[train_ids, "country"].to_numpy() == COUNTRIES[fold]
                if args.by_country else inner_folds(subjects, args.split, fold))
        fit_ids = [s for s, h in zip(train_ids, held) if not h]
        dev_ids = [s for s, h in zip(train_ids, held) if h]
        key = dict(dataset=args.dataset, split=args.split, fold=fold, variant=name)
        if all(table.has(**key, match_identity=m, condition=c, model=model)
               for m in args.match_identity for c in CONDITIONS
               for model in ("q2-aam", "q2-aam readout alone")):
            continue
        started = time.perf_counter()
        rows = np.array([position[s] for s in fit_ids])
        bundle = api.train(samples.subset(rows), y.loc[fit_ids].to_numpy(), task="regression",
                           target_name="age_days", pretrained=encoder,
                           groups=subjects[~held], log=lambda m: None,
                           **train_defaults(**{"phylogeny": data.tree, **overrides}))
        seconds = round(time.perf_counter() - started)
        tables = test_tables(data.table, dev_ids, f"dev:{args.dataset}", 100 * args.split + fold)
        for condition in CONDITIONS:
            dev = amplicon_samples(tables[condition], None, samples.token_limit,
                                   sample_ids=dev_ids)
            models = [("q2-aam", bundle)]
            if bundle.model_config.get("linear_readout"):
                models.append(("q2-aam readout alone", readout_alone(bundle)))
            for model, b in models:
                for m in args.match_identity:
                    if table.has(**key, match_identity=m, condition=condition, model=model):
                        continue
                    scores = regression_scores(
                        api.predict(b, dev, match_identity=m, log=lambda m: None),
                        y.loc[dev_ids].to_numpy())
                    table.add({**key, "match_identity": m, "condition": condition,
                               "model": model, "mae": round(scores["mae"], 2),
                               "r2": round(scores["r2"], 4), "bias": round(scores["bias"], 1),
                               "seconds": seconds})
                    log(f"fold {fold} {name} {condition} {model} identity {m}: "
                        f"MAE {scores['mae']:.1f}")
    summary = {}
    for r in table.rows:
        if r["dataset"] == args.dataset and r["split"] == str(args.split):
            summary.setdefault((r["variant"], r["model"], r["match_identity"], r["condition"]),
                               []).append(float(r["mae"]))
    for k, v in sorted(summary.items()):
        print(" | ".join(k), f"| {np.mean(v):.1f} ({len(v)} folds: "
              + ", ".join(f"{x:.1f}" for x in v) + ")")


if __name__ == "__main__":
    main()
