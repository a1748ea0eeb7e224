"""Time and memory per sample against the number of ASVs a sample holds (issue 13, goal 4).

    .venv/bin/python benchmarks/token_limits.py [--limits 64 256 1024 4096]

Deep samples hold thousands of ASVs, more than ECAM's 3,155 distinct ones, so the
samples here are synthetic: each holds exactly ``limit`` distinct sequences drawn from
ECAM's ASVs and point-mutated copies of them (1-3 substitutions, so they are new ASVs of
the same length), with log-normal counts. For each limit, in its own process (its own
peak memory), the default architecture (embedding 64, 2 + 2 layers, patch 4) runs
fine-tuning steps (forward + backward through both encoders and the target branch) and
prediction. Batches hold about 1,024 ASVs (``max(1, 1024 // limit)`` samples), so the
rows compare the cost per sample, not the batch size. Results go to
``results/token-limits.md`` and a plot ``token-limits.svg``.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, log  # noqa: E402

N_SAMPLES = 32


def synthetic(limit: int, n: int = N_SAMPLES, seed: int = 0):
    import numpy as np
    from common import load
    from q2_aam.core.data import AmpliconSamples
    _, real, _ = load("ecam")
    rng = np.random.default_rng(seed)
    pool = list(dict.fromkeys(real.sequences))
    seen = set(pool)
    while len(pool) < 2 * limit:
        base = list(pool[int(rng.integers(len(real.sequences)))])
        for position in rng.choice(len(base), int(rng.integers(1, 4)), replace=False):
            old = base[position] if base[position] in "ACGT" else "A"
            base[position] = "ACGT"[("ACGT".index(old) + int(rng.integers(1, 4))) % 4]
        sequence = "".join(base)
        if sequence not in seen:
            seen.add(sequence)
            pool.append(sequence)
    rows, cols, vals = [], [], []
    for i in range(n):
        chosen = rng.choice(len(pool), limit, replace=False)
        rows += [i] * limit
        cols += list(chosen)
        vals += list(np.maximum(1, np.round(rng.lognormal(2.0, 1.5, limit))))
    import scipy.sparse as sp
    counts = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(pool)))
    ids = [f"f{j}" for j in range(len(pool))]
    return AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n)], ids, pool, limit)


def run_one(limit: int) -> dict:
    import numpy as np
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    samples = synthetic(limit)
    batch = max(1, 1024 // limit)
    y = np.arange(len(samples), dtype=float)
    started = time.perf_counter()
    bundle = api.train(samples, y, task="regression", linear_readout=False,
                       config=TrainConfig(epochs=2, batch_size=batch, seed=0, device="cpu",
                                          patience=2),
                       validation_fraction=0.0, log=lambda m: None, progress=False)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    last = bundle.training["history"][-1]
    api.predict(bundle, samples.subset(np.arange(2)), batch_size=batch, log=lambda m: None)
    started = time.perf_counter()
    api.predict(bundle, samples, batch_size=batch, log=lambda m: None)
    predict_s = (time.perf_counter() - started) / len(samples)
    return {"limit": limit, "batch": batch, "train_ms_per_sample": 1e3 / last["samples_per_second"],
            "predict_ms_per_sample": 1e3 * predict_s, "train_peak_rss_gb": train_rss,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    rows = []
    for limit in args.limits:
        log(f"{limit} ASVs per sample")
        done = subprocess.run([sys.executable, __file__, "--one", str(limit)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"limit {limit} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"  {rows[-1]}")
    lines = ["| ASVs per sample | batch | fine-tuning ms/sample | predicting ms/sample | "
             "peak RSS GB (training) |", "|---|---|---|---|---|"]
    lines += [f"| {r['limit']} | {r['batch']} | {r['train_ms_per_sample']:.0f} | "
              f"{r['predict_ms_per_sample']:.1f} | {r['train_peak_rss_gb']:.2f} |" for r in rows]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    limits = [r["limit"] for r in rows]
    axes[0].loglog(limits, [r["train_ms_per_sample"] for r in rows], "o-", label="fine-tuning")
    axes[0].loglog(limits, [r["predict_ms_per_sample"] for r in rows], "s-", label="predicting")
    axes[0].set(xlabel="ASVs per sample", ylabel="ms per sample")
    axes[0].legend()
    axes[1].semilogx(limits, [r["train_peak_rss_gb"] for r in rows], "o-")
    axes[1].set(xlabel="ASVs per sample", ylabel="peak RSS in training (GB)")
    figure.tight_layout()
    figure.savefig(RESULTS / "token-limits.svg")
    text = ("# Cost per sample against ASVs per sample\n\n"
            "Made by `benchmarks/token_limits.py` (`make bench-speed`) in one run on this "
            "machine's CPU (2 threads): default architecture (embedding 64, 2 + 2 layers, "
            f"patch 4), {N_SAMPLES} synthetic samples holding exactly that many distinct "
            "ASVs (ECAM sequences and point-mutated copies), batches of about 1,024 ASVs, "
            "fine-tuning the whole model (last of 2 epochs) and predicting. Plot: "
            "`token-limits.svg`.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "token-limits.md").write_text(text)
    (RESULTS / "token-limits.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
