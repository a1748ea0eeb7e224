"""The signal suite (issue 12): oracle, forests and q2-aam on planted ASV-level signals.

    .venv/bin/python benchmarks/suite.py [--kinds abundance interaction ...]
        [--seeds 0 1 2] [--variant NAME '{"linear_readout": false}']

Each target plants one kind of signal in 600 real ECAM samples (see
``q2_aam/example_data/signals.py``; 480 train / 120 test, seeded). On the same
split it scores:

* the oracle: the noise-free function (R²) or the class it implies (accuracy);
* q2-sample-classifier's default forest (100 trees, all features, counts;
  the categorical columns one-hot for ``interaction``);
* extra-trees, 500 trees, ``max_features=0.33``, on log10(relative abundance
  + 1e-5) of every ASV (+ the one-hot columns);
* q2-aam: the encoder pretrained once on all 897 ECAM samples' tables and
  UniFrac (no labels; ``common.pretrained_encoder``), then ``api.train`` with
  ``qiime aam train``'s defaults (``common.train_defaults``) and the ECAM
  phylogeny (``--i-phylogeny``: the readout's clades) on the training samples, or those defaults changed by ``--variant`` (an ablation). ``interaction`` is trained
  once per fusion (none, concat, cross-attention) with ``season`` and
  ``site``; for cross-attention it also ranks the planted ASVs by their
  per-ASV response to ``season`` on the test samples (among ASVs held by 5
  or more of them).

Rows go to ``results/suite.tsv`` as they finish (a rerun skips them) and the
table to ``results/suite.md``.
"""
import argparse
import time

import numpy as np

import json

from common import (RESULTS, ResultTable, add_variant_option, log, pretrained_encoder,
                    readout_alone, train_defaults, variant_of)

#: The interaction target is trained once per conditioning: each fusion mode, and FiLM.
FUSIONS = ("none", "concat", "add", "gmu", "cross-attention", "perceiver", "film")
COLUMNS = ["kind", "seed", "model", "metric", "score", "rank_planted", "seconds"]


def forests(target):
    """Scores of the default random forest and the tuned extra-trees."""
    from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor,
                                  RandomForestClassifier, RandomForestRegressor)
    counts = target.counts.astype(float)
    log_rel = np.log10(counts / counts.sum(1, keepdims=True) + 1e-5)
    if target.categorical:
        one_hot = np.stack([np.asarray(v) == "a" for v in target.categorical.values()], 1)
        counts, log_rel = np.hstack([counts, one_hot]), np.hstack([log_rel, one_hot])
    tr, te = target.train, target.test
    if target.classification:
        rf = RandomForestClassifier(100, random_state=0, n_jobs=1)
        et = ExtraTreesClassifier(500, max_features=0.33, random_state=0, n_jobs=1)
    else:
        rf = RandomForestRegressor(100, random_state=0, n_jobs=1)
        et = ExtraTreesRegressor(500, max_features=0.33, random_state=0, n_jobs=1)
    return {"random forest (default)": score(target, rf.fit(counts[tr], target.y[tr])
                                             .predict(counts[te])),
            "extra-trees (tuned)": score(target, et.fit(log_rel[tr], target.y[tr])
                                         .predict(log_rel[te]))}


def score(target, predicted) -> float:
    truth = target.y[target.test]
    if target.classification:
        return float(np.mean(np.asarray(predicted) == truth))
    truth = truth.astype(float)
    return 1 - float(((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def aam(target, encoder, fusion: str | None, overrides: dict, tree=None):
    """q2-aam's score (and, for cross-attention, the planted ASVs' response ranks); ``tree``
    is given to ``train`` as a user with a phylogeny would (the readout's clades)."""
    from q2_aam.core import api, explain
    from q2_aam.core.data import AmpliconSamples
    samples = AmpliconSamples.from_counts(target.counts, target.sample_ids, target.sequences,
                                          target.sequences, token_limit=256)
    tr, te = target.train, target.test
    cats = None
    overrides = json.loads(json.dumps(overrides))  # a copy
    if fusion is not None:
        cats = target.categorical
        overrides.setdefault("architecture", {})["categorical_fusion"] = \
            "none" if fusion == "film" else fusion
        if fusion == "film":
            overrides["architecture"]["film_conditioning"] = True
    kwargs = train_defaults(**overrides)
    def rows(values, r):
        return None if values is None else {c: [v[i] for i in r] for c, v in values.items()}
    bundle = api.train(samples.subset(tr), target.y[tr],
                       task="classification" if target.classification else "regression",
                       pretrained=encoder, categorical=rows(cats, tr) if fusion != "none"
                       else None, phylogeny=tree, log=lambda m: None, **kwargs)
    test = samples.subset(te)
    categorical = rows(cats, te) if fusion not in (None, "none") else None
    predicted = api.predict(bundle, test, categorical=categorical, log=lambda m: None)
    alone = (score(target, api.predict(readout_alone(bundle), test, categorical=categorical,
                                       log=lambda m: None))
             if bundle.model_config.get("linear_readout") else None)
    ranks = ""
    if fusion == "cross-attention":
        response = api.conditioning_response(bundle, test, categorical=categorical,
                                             log=lambda m: None)
        table = explain.asv_response(response, test, list(cats))
        table = table[table["n_samples"] >= 5].sort_values("season", ascending=False)
        order = list(table.index)
        ranks = " ".join(str(order.index(target.sequences[j]) + 1) for j in target.planted)
    return score(target, predicted), alone, ranks


def main():
    from q2_aam.example_data import load_dataset
    from q2_aam.example_data.signals import KINDS, make_target
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_variant_option(parser)
    args = parser.parse_args()
    name, overrides = variant_of(args)
    data = load_dataset("ecam")
    from common import load
    _, all_samples, _ = load("ecam")
    encoder = pretrained_encoder("ecam", data, all_samples)
    table = ResultTable(RESULTS / "suite.tsv", COLUMNS)
    for kind in args.kinds:
        for seed in args.seeds:
            target = make_target(data, kind, seed=seed)
            metric = "accuracy" if target.classification else "r2"
            if not table.has(kind=kind, seed=seed, model="oracle"):
                truth = target.y[target.test]
                oracle = (float(np.mean(target.oracle[target.test] == truth))
                          if target.classification else score(target, target.oracle[target.test]))
                started = time.perf_counter()
                scores = forests(target)
                seconds = round(time.perf_counter() - started)
                for model, value in [("oracle", oracle), *scores.items()]:
                    table.add({"kind": kind, "seed": seed, "model": model, "metric": metric,
                               "score": round(value, 4), "rank_planted": "",
                               "seconds": seconds})
            fusions = FUSIONS if target.categorical else (None,)
            for fusion in fusions:
                model = f"q2-aam {name}" + (f" {fusion}" if fusion else "")
                if table.has(kind=kind, seed=seed, model=model):
                    continue
                started = time.perf_counter()
                value, alone, ranks = aam(target, encoder, fusion, overrides, data.tree)
                seconds = round(time.perf_counter() - started)
                table.add({"kind": kind, "seed": seed, "model": model, "metric": metric,
                           "score": round(value, 4), "rank_planted": ranks,
                           "seconds": seconds})
                if alone is not None:
                    table.add({"kind": kind, "seed": seed, "model": f"{model} readout alone",
                               "metric": metric, "score": round(alone, 4), "rank_planted": "",
                               "seconds": seconds})
                log(f"{kind} seed {seed} {model}: {metric} {value:.3f} (readout alone "
                    f"{alone}) {ranks}")
    (RESULTS / "suite.md").write_text(markdown(table.rows))
    print(markdown(table.rows))


def markdown(rows) -> str:
    values = {}
    for r in rows:
        values.setdefault((r["kind"], r["model"]), []).append(r)
    lines = ["# The signal suite: held-out score (R², or accuracy for classes), mean ± sd "
             "over seeds", "",
             "Made by `benchmarks/suite.py` (`make bench`); targets from "
             "`q2_aam/example_data/signals.py`. For cross-attention, `planted ranks` are the "
             "planted ASVs' ranks by their response to `season` (seed by seed).", "",
             "| target | model | seeds | score | planted ranks |", "|---|---|---|---|---|"]
    for (kind, model), rs in sorted(values.items()):
        x = np.array([float(r["score"]) for r in rs])
        ranks = "; ".join(r["rank_planted"] for r in rs if r["rank_planted"])
        lines.append(f"| {kind} | {model} | {len(rs)} | {x.mean():.3f} ± "
                     f"{x.std(ddof=1) if len(x) > 1 else 0:.3f} | {ranks} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
