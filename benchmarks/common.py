"""Shared pieces of the benchmarks: data per data.md's protocol, a cached encoder, scores.

Run from the repository root with the venv's Python, e.g.
``.venv/bin/python benchmarks/targets.py --dataset ecam``.
"""
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
OUTPUT = ROOT / "output"    # models and logs (not committed)
RESULTS = ROOT / "results"  # TSV and Markdown tables (committed)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load(name: str, token_limit: int = 256):
    """The dataset, all its samples as core samples, and the metadata (same order)."""
    from q2_aam._methods import amplicon_samples
    from q2_aam.example_data import load_dataset
    data = load_dataset(name)
    ids = list(data.metadata.index)
    samples = amplicon_samples(data.table, None, token_limit, sample_ids=ids)
    return data, samples, data.metadata.loc[samples.sample_ids]


def pretrained_encoder(name: str, data, samples, epochs: int = 5, seed: int = 0):
    """Pretrain on all samples' tables and UniFrac (no labels), once; cached on disk."""
    from q2_aam._methods import unifrac_distances
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.engine import TrainConfig
    path = OUTPUT / f"encoder-{name}-e{epochs}-s{seed}"
    if (path / "config.json").exists():
        log(f"reusing {path}")
        return ModelBundle.load(path)
    distances = unifrac_distances(samples, data.tree, None, "unweighted")
    bundle = api.pretrain(samples, distances, config=TrainConfig(epochs=epochs, seed=seed),
                          groups=data.metadata.loc[samples.sample_ids, "subject"].to_numpy(),
                          log=log)
    bundle.save(path)
    return bundle


def regression_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    return {"mae": float(np.abs(predicted - truth).mean()),
            "r2": 1 - float(((truth - predicted) ** 2).sum()) / ss_tot}


class ResultTable:
    """Rows appended to a TSV as they are measured, so a stopped run resumes."""

    def __init__(self, path: Path, columns: list):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = []
        if path.exists():
            with open(path) as fh:
                self.rows = list(csv.DictReader(fh, delimiter="\t"))

    def has(self, **key) -> bool:
        return any(all(str(r[k]) == str(v) for k, v in key.items()) for r in self.rows)

    def add(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns, delimiter="\t")
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.rows.append({k: str(v) for k, v in row.items()})


def summary(rows: list, group: str, metrics=("mae", "r2")) -> str:
    """Markdown table: mean ± sd over splits for each value of ``group``."""
    values = {}
    for r in rows:
        values.setdefault((r["dataset"], r[group]), []).append(r)
    lines = [f"| dataset | {group} | splits | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for (dataset, key), rs in sorted(values.items()):
        cells = []
        for m in metrics:
            x = np.array([float(r[m]) for r in rs])
            cells.append(f"{x.mean():.3g} ± {x.std(ddof=1) if len(x) > 1 else 0:.2g}")
        lines.append(f"| {dataset} | {key} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
