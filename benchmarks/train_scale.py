"""`train` and `predict` at the size of real studies (issue 26): each step's time and the
peak memory on synthetic studies, the current code and an earlier commit's readout side
by side.

    .venv/bin/python benchmarks/train_scale.py [--sizes 1000x3000 5000x3000 ...]
        [--before 25a231c] [--limit 1800] [--tables-only]

Synthetic studies from real ECAM profiles, kept sparse: each sample is a real sample's
ASVs with Poisson-resampled counts, and its target the real sample's age plus noise. To
reach ``V`` ASVs, each real ASV gets ``ceil(V / n_real)`` sequence variants (1-3
substitutions, seeded) and each sample draws one of them for each of its ASVs, so the
variants share their source's pattern. ``train`` runs the plugin's recipe without a
phylogeny (the readout's ridge, elastic net and relaxed lasso on ASV levels and
presences; clades need a tree of the variants) and one epoch of a small network
(embedding 16, 1 + 1 layers, token limit 64, batch 32), then ``predict`` reads the same
table. Each (size, version) runs in its own process under a wall-clock ``--limit``;
``before`` swaps in ``q2_aam.core.linear.fit_regression`` of commit ``--before`` (the code
the issue timed). Seconds per step come from the model's training record; peak RSS is
the process's. Results: ``results/train-scale.json`` and ``.md`` (a rerun skips the rows
it has; delete the json to start again).
"""
import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, log  # noqa: E402

ARCHITECTURE = dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1, sample_layers=1,
                    patch_size=8)
TOKEN_LIMIT = 64
SIZES = ["1000x3000", "2000x3000", "5000x3000", "5000x10000", "20000x10000", "20000x30000"]
JSON = RESULTS / "train-scale.json"


def synthetic(n: int, n_asvs: int, seed: int = 0):
    """``n`` samples with about ``n_asvs`` ASVs made from ECAM's (see the module's text):
    ``(AmpliconSamples, ages)``."""
    import numpy as np
    import scipy.sparse as sp
    from common import load
    from q2_aam.core.data import AmpliconSamples
    from q2_aam.example_data.variants import substitute
    _, real, metadata = load("ecam", token_limit=TOKEN_LIMIT)
    rng = np.random.default_rng(seed)
    counts = real.kept_counts().tocsr()
    n_real = counts.shape[1]
    copies = max(1, math.ceil(n_asvs / n_real))
    sequences = [s if k == 0 else substitute(s, 1 + (k - 1) % 3, rng)
                 for k in range(copies) for s in real.sequences]
    rows = rng.integers(0, counts.shape[0], n)
    picked = counts[rows].tocoo()
    columns = picked.col + n_real * rng.integers(0, copies, len(picked.col))
    values = rng.poisson(picked.data).astype(np.float64) + 1.0  # every ASV keeps a read
    matrix = sp.csr_matrix((values, (picked.row, columns)), shape=(n, n_real * copies))
    used = np.flatnonzero(np.asarray(matrix.getnnz(axis=0)) > 0)
    matrix = matrix[:, used]
    ids = [f"v{j}" for j in used]
    samples = AmpliconSamples.from_counts(matrix, [f"s{i}" for i in range(n)], ids,
                                          [sequences[j] for j in used], TOKEN_LIMIT)
    ages = metadata["age_days"].to_numpy(float)[rows] + rng.normal(0, 30, n)
    return samples, ages


def run_one(size: str, version: str, before: str) -> dict:
    from q2_aam.core import api, linear
    from q2_aam.core.engine import TrainConfig
    n, n_asvs = (int(v) for v in size.split("x"))
    if version == "before":
        from readout_speed import module_at
        linear.fit_regression = module_at(before).fit_regression
    started = time.perf_counter()
    samples, ages = synthetic(n, n_asvs)
    made = time.perf_counter() - started
    said = []
    bundle = api.train(samples, ages, task="regression", architecture=dict(ARCHITECTURE),
                       config=TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu"),
                       groups=[f"s{i}" for i in range(n)], log=said.append, progress=False)
    started = time.perf_counter()
    api.predict(bundle, samples, log=lambda m: None)
    predict_s = time.perf_counter() - started
    return {"size": size, "version": version, "n": n, "asvs": len(samples.feature_ids),
            "vocabulary": int(bundle.model_config["asv_vocabulary_size"]),
            "make_s": round(made, 1),
            "steps": bundle.training["steps"], "predict_s": round(predict_s, 1),
            "readout": next((m for m in said if m.startswith("Linear readout")), ""),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                 / 1024 ** 2, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="SAMPLESxASVS")
    parser.add_argument("--versions", nargs="+", default=["now", "before"])
    parser.add_argument("--before", default="25a231c")
    parser.add_argument("--limit", type=int, default=1800, help="seconds per run")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: SIZE VERSION
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.before)))
        return
    rows = json.loads(JSON.read_text()) if JSON.exists() else []
    if not args.tables_only:
        for size in args.sizes:
            for version in args.versions:
                if any(r["size"] == size and r["version"] == version for r in rows):
                    continue
                log(f"{size} {version}")
                started = time.perf_counter()
                try:
                    done = subprocess.run([sys.executable, __file__, "--one", size, version,
                                           "--before", args.before], capture_output=True,
                                          text=True, timeout=args.limit)
                    row = (json.loads(done.stdout.strip().splitlines()[-1])
                           if done.returncode == 0 else
                           {"size": size, "version": version,
                            "failed": done.stderr.strip().splitlines()[-1][:200]})
                except subprocess.TimeoutExpired:
                    row = {"size": size, "version": version,
                           "failed": f"not done in {args.limit} s"}
                row["wall_s"] = round(time.perf_counter() - started, 1)
                log(f"  {row}")
                rows.append(row)
                JSON.write_text(json.dumps(rows, indent=1))
    write(rows)


def write(rows: list) -> None:
    order = {s: i for i, s in enumerate(SIZES)}
    rows = sorted(rows, key=lambda r: (order.get(r["size"], 99), r["size"], r["version"] != "now"))
    base = {}
    lines = ["| samples x ASVs | code | vocabulary | making the table s | vocabulary s | readout s "
             "| 1 epoch s | predict s | train s per 1k samples (ratio) | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, v = (int(x) for x in r["size"].split("x"))
        label = f"{n:,} x {v:,}"
        if "failed" in r:
            lines.append(f"| {label} | {r['version']} | | | | {r['failed']} | | | | |")
            continue
        steps = dict(r["steps"])
        total = sum(steps.values())
        per = total / n * 1000
        base.setdefault(r["version"], per)
        lines.append(
            f"| {label} | {r['version']} | {r['vocabulary']:,} | "
            f"{r['make_s']:.1f} | "
            f"{steps.get('the vocabulary and clades', 0):.1f} | "
            f"{steps.get('the linear readout', 0):.1f} | "
            f"{steps.get('training the network', 0):.1f} | {r['predict_s']:.1f} | "
            f"{per:.1f} ({per / base[r['version']]:.2f}) | {r['peak_rss_gb']:.2f} |")
    text = ("# `train` and `predict` at scale (issue 26)\n\n"
            "Made by `benchmarks/train_scale.py` (`make bench-speed`) on this machine's 2 "
            "CPU cores, one process per row: synthetic studies from ECAM profiles (see the "
            "script; making one is not part of `train`), the readout without a phylogeny, 1 epoch of a small network (embedding "
            f"16, 1 + 1 layers, token limit {TOKEN_LIMIT}, batch 32), `predict` on the same "
            "table. 'now' is this commit; 'before' the readout of the commit the issue timed. "
            "Ratio: train seconds per 1,000 samples over the smallest size's (1.00 = linear "
            "growth in samples).\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "train-scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
