"""Score AAM predictions on a held-out split next to the random forest.

    python -m q2_aam.example_data.compare --predictions predictions.qza \\
        --dataset ecam --split 0 [--target age_days]

Prints MAE and R² of the AAM predictions on the split's test subjects and of
q2-sample-classifier's random forest (its defaults, ``random_state=0``)
trained on the split's train subjects, plus the predict-the-mean floor.
"""
import argparse
import sys

import numpy as np
from sklearn import metrics


def score(predictions, truth) -> dict:
    return {"mae": float(metrics.mean_absolute_error(truth, predictions)),
            "r2": float(metrics.r2_score(truth, predictions))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m q2_aam.example_data.compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, action="append",
                        help="SampleData[RegressorPredictions] from 'qiime aam predict' "
                             "(repeat to compare several models)")
    parser.add_argument("--label", action="append", default=[],
                        help="name of each --predictions in the table, in order")
    parser.add_argument("--dataset", default="ecam", choices=["ecam", "karelia"])
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--target", default="age_days")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    import pandas as pd
    import qiime2
    from .baseline import random_forest
    from .mitre import load_dataset
    from .splits import split_samples

    if len(args.label) > len(args.predictions):
        parser.error("more --label than --predictions")
    labels = args.label + ["AAM (qiime aam)"] * (len(args.predictions) - len(args.label))
    dataset = load_dataset(args.dataset, cache_dir=args.cache_dir, build_tree=False)
    train_ids, test_ids = split_samples(dataset.metadata, args.split)
    truth = dataset.metadata.loc[test_ids, args.target].astype(float)
    rows = []
    for path, label in zip(args.predictions, labels):
        predicted = qiime2.Artifact.load(path).view(pd.Series).astype(float)
        missing = sorted(set(test_ids) - set(predicted.index))
        if missing:
            print(f"{path} lacks {len(missing)} test sample(s) of split {args.split} "
                  f"(e.g. {missing[:3]}); predict on the split's test table.", file=sys.stderr)
            return 2
        rows.append((label, score(predicted.loc[test_ids].to_numpy(), truth.to_numpy())))
    print(f"Fitting q2-sample-classifier's random forest on split {args.split}'s "
          f"{len(train_ids)} training samples...", file=sys.stderr, flush=True)
    forest = random_forest(dataset, train_ids, test_ids, target=args.target)
    train_mean = dataset.metadata.loc[train_ids, args.target].astype(float).mean()
    floor = score(np.full(len(truth), train_mean), truth.to_numpy())
    print(f"\n{args.dataset}, split {args.split}: {len(test_ids)} held-out samples of "
          f"{dataset.metadata.loc[test_ids, 'subject'].nunique()} subjects never seen in "
          f"training; target {args.target}")
    width = max(34, *(len(label) + 2 for label, _ in rows))
    print(f"{'model':<{width}}{'MAE':>10}{'R2':>9}")
    for name, s in rows + [("random forest (sample-classifier)", forest),
                           ("predict the training mean", floor)]:
        print(f"{name:<{width}}{s['mae']:>10.1f}{s['r2']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
