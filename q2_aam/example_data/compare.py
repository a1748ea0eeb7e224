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
    parser.add_argument("--predictions", required=True,
                        help="SampleData[RegressorPredictions] from 'qiime aam predict'")
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

    predicted = qiime2.Artifact.load(args.predictions).view(pd.Series).astype(float)
    dataset = load_dataset(args.dataset, cache_dir=args.cache_dir, build_tree=False)
    train_ids, test_ids = split_samples(dataset.metadata, args.split)
    missing = sorted(set(test_ids) - set(predicted.index))
    if missing:
        print(f"The predictions lack {len(missing)} test sample(s) of split {args.split} "
              f"(e.g. {missing[:3]}); predict on the split's test table.", file=sys.stderr)
        return 2
    truth = dataset.metadata.loc[test_ids, args.target].astype(float)
    aam = score(predicted.loc[test_ids].to_numpy(), truth.to_numpy())
    print(f"Fitting q2-sample-classifier's random forest on split {args.split}'s "
          f"{len(train_ids)} training samples...", file=sys.stderr, flush=True)
    forest = random_forest(dataset, train_ids, test_ids, target=args.target)
    train_mean = dataset.metadata.loc[train_ids, args.target].astype(float).mean()
    floor = score(np.full(len(truth), train_mean), truth.to_numpy())
    print(f"\n{args.dataset}, split {args.split}: {len(test_ids)} held-out samples of "
          f"{dataset.metadata.loc[test_ids, 'subject'].nunique()} subjects never seen in "
          f"training; target {args.target}")
    print(f"{'model':<34}{'MAE':>10}{'R2':>9}")
    for name, s in [("AAM (qiime aam)", aam),
                    ("random forest (sample-classifier)", forest),
                    ("predict the training mean", floor)]:
        print(f"{name:<34}{s['mae']:>10.1f}{s['r2']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
