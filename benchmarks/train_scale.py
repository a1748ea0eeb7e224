"""`train` and `predict` at the size of real studies (issue 26): each step's time and the
peak memory on synthetic studies, the current code and earlier commits' readouts side by
side.

    .venv/bin/python benchmarks/train_scale.py [--sizes 1000x3000 5000x3000 ...]
        [--versions now 25a231c 0106b76] [--predict-sizes 20000 100000]
        [--limit 1800] [--tables-only]

Synthetic studies from real ECAM profiles, kept sparse: each sample is a real sample's
ASVs with Poisson-resampled counts, and its target the real sample's age plus noise. To
reach ``V`` ASVs, each real ASV gets ``ceil(V / n_real)`` sequence variants (1-3
substitutions, seeded) and each sample draws one of them for each of its ASVs, so the
variants share their source's pattern. ``train`` runs the plugin's recipe without a
phylogeny (the readout's ridge, elastic net and relaxed lasso on ASV levels and
presences; clades need a tree of the variants) and one epoch of a small network
(embedding 16, 1 + 1 layers, token limit 64, batch 32), then ``predict`` reads the same
table. Each (size, version) runs in its own process under a wall-clock ``--limit``; a
version other than ``now`` is a commit whose ``q2_aam.core.linear.fit_regression`` is
swapped in (for the readout's fit in ``q2_aam.core.readout.plan``). Seconds per step come from the model's training record; peak RSS is the
process's. ``--predict-sizes``: a model trained on 2,000 x 10,000 predicts tables of that
many samples (same ASVs), each in a fresh process that loads the saved model, with the
process's memory before and at the peak of ``predict``. Results:
``results/train-scale.json`` and a section of ``results/scale.md`` (a rerun skips the rows it has; delete
the json to start again).
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
import numpy as np  # noqa: E402
from common import OUTPUT, RESULTS, log, write_section  # noqa: E402

ARCHITECTURE = dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1, sample_layers=1,
                    patch_size=8)
TOKEN_LIMIT = 64
SIZES = ["1000x3000", "2000x3000", "5000x3000", "5000x10000", "20000x10000", "20000x30000"]
JSON = RESULTS / "train-scale.json"
#: The commits whose readout runs as 'before': the code the issue timed, and the last
#: before the readout was chosen on a subsample (the ridge in kernel form).
BEFORE = ["25a231c", "0106b76"]


def synthetic(n: int, n_asvs: int, seed: int = 0):
    """``n`` samples with about ``n_asvs`` ASVs made from ECAM's (see the module's text):
    ``(AmpliconSamples, ages)``."""
    import numpy as np
    import scipy.sparse as sp
    from common import load
    from q2_aam.core.data import AmpliconSamples
    from q2_aam.example_data.variants import substitute
    _, real, metadata = load("ecam", token_limit=TOKEN_LIMIT)
    counts = real.kept_counts().tocsr()
    n_real = counts.shape[1]
    copies = max(1, math.ceil(n_asvs / n_real))
    variants = np.random.default_rng(0)  # the same ASVs whatever the samples' seed
    sequences = [s if k == 0 else substitute(s, 1 + (k - 1) % 3, variants)
                 for k in range(copies) for s in real.sequences]
    rng = np.random.default_rng(seed)
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


def run_one(size: str, version: str) -> dict:
    from q2_aam.core import api
    from q2_aam.core.readout import plan as readout_plan
    from q2_aam.core.engine import TrainConfig
    n, n_asvs = (int(v) for v in size.split("x"))
    if version != "now":
        from readout_speed import module_at
        import inspect
        earlier = module_at(version).fit_regression
        takes = inspect.signature(earlier).parameters
        # earlier commits took dense blocks (readout_blocks made them so), some no log
        readout_plan.fit_regression = lambda blocks, *args, **kwargs: earlier(
            {name: x.toarray() for name, x in blocks.items()}, *args,
            **{k: v for k, v in kwargs.items() if k in takes})
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
            "readout_steps": [m for m in said if m.startswith("Readout:")],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                 / 1024 ** 2, 2)}


PREDICT_MODEL = "2000x10000"


def _rss_gb() -> float:
    """The process's resident memory now, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def predict_one(n: int) -> dict:
    """Train (once, saved) on ``PREDICT_MODEL``, then in this process: load it, make ``n``
    samples over the same ASVs, and time ``predict`` on them."""
    from common import OUTPUT
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.engine import TrainConfig
    path = OUTPUT / f"scale-model-{PREDICT_MODEL}"
    if not path.exists():
        m, v = (int(x) for x in PREDICT_MODEL.split("x"))
        samples, ages = synthetic(m, v)
        api.train(samples, ages, task="regression", architecture=dict(ARCHITECTURE),
                  config=TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu"),
                  log=lambda message: None, progress=False).save(path)
        return {"trained": str(path)}
    bundle = ModelBundle.load(path)
    started = time.perf_counter()
    samples, _ = synthetic(n, int(PREDICT_MODEL.split("x")[1]), seed=1)
    made = time.perf_counter() - started
    before = _rss_gb()
    said = []
    started = time.perf_counter()
    predicted = api.predict(bundle, samples, log=said.append)
    return {"predict_n": n, "make_s": round(made, 1),
            "predict_s": round(time.perf_counter() - started, 1),
            "rss_before_gb": round(before, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                 / 1024 ** 2, 2),
            "finite": bool(np.isfinite(predicted).all()),
            "new_asvs": next((m for m in said if m.startswith("New ASVs")), "")[:80]}


def _subprocess(arguments: list, limit: int) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True,
                              text=True, timeout=limit)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        return {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    except subprocess.TimeoutExpired:
        return {"failed": f"not done in {limit} s"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="SAMPLESxASVS")
    parser.add_argument("--versions", nargs="+", default=["now", *BEFORE],
                        help="'now' and earlier commits, whose readout is swapped in")
    parser.add_argument("--limit", type=int, default=1800, help="seconds per run")
    parser.add_argument("--predict-sizes", nargs="*", type=int, default=[20000, 100000])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: SIZE VERSION
    parser.add_argument("--predict-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    if args.predict_one is not None:
        print(json.dumps(predict_one(args.predict_one)))
        return
    rows = json.loads(JSON.read_text()) if JSON.exists() else []
    if not args.tables_only:
        for size in args.sizes:
            for version in args.versions:
                if any(r.get("size") == size and r.get("version") == version for r in rows):
                    continue
                log(f"{size} {version}")
                started = time.perf_counter()
                row = {"size": size, "version": version,
                       **_subprocess(["--one", size, version], args.limit)}
                row["wall_s"] = round(time.perf_counter() - started, 1)
                log(f"  {row}")
                rows.append(row)
                JSON.write_text(json.dumps(rows, indent=1))
        for n in args.predict_sizes:
            if any(r.get("predict_n") == n for r in rows):
                continue
            if not (OUTPUT / f"scale-model-{PREDICT_MODEL}").exists():
                log(f"training the model that predicts ({PREDICT_MODEL})")
                log(f"  {_subprocess(['--predict-one', '0'], args.limit)}")
            log(f"predict {n}")
            row = {"predict_n": n, **_subprocess(["--predict-one", str(n)], args.limit)}
            row.setdefault("predict_n", n)
            log(f"  {row}")
            rows.append(row)
            JSON.write_text(json.dumps(rows, indent=1))
    write(rows)


def write(rows: list) -> None:
    order = {s: i for i, s in enumerate(SIZES)}
    trains = sorted((r for r in rows if "size" in r),
                    key=lambda r: (order.get(r["size"], 99), r["size"], r["version"] != "now",
                                   r["version"]))
    base = {}
    lines = ["| samples x ASVs | code | vocabulary | vocabulary s | readout s | 1 epoch s "
             "| train s | train s per 1k samples (x linear) | predict s | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in trains:
        n, v = (int(x) for x in r["size"].split("x"))
        label = f"{n:,} x {v:,}"
        if "failed" in r:
            lines.append(f"| {label} | {r['version']} | | | {r['failed']} | | | | | |")
            continue
        steps = dict(r["steps"])
        total = sum(steps.values())
        per = total / n * 1000
        base.setdefault(r["version"], per)
        lines.append(
            f"| {label} | {r['version']} | {r['vocabulary']:,} | "
            f"{steps.get('the vocabulary and clades', 0):.1f} | "
            f"{steps.get('the linear readout', 0):.1f} | "
            f"{steps.get('training the network', 0):.1f} | {total:.1f} | "
            f"{per:.1f} ({per / base[r['version']]:.2f}) | {r['predict_s']:.1f} | "
            f"{r['peak_rss_gb']:.2f} |")
    predicts = sorted((r for r in rows if "predict_n" in r and r["predict_n"]),
                      key=lambda r: r["predict_n"])
    plines = ["| samples | predict s | s per 1k samples | memory before predict GB "
              "| peak GB | predictions finite |", "|---|---|---|---|---|---|"]
    for r in predicts:
        if "failed" in r:
            plines.append(f"| {r['predict_n']:,} | {r['failed']} | | | | |")
            continue
        plines.append(f"| {r['predict_n']:,} | {r['predict_s']:.1f} | "
                      f"{r['predict_s'] / r['predict_n'] * 1000:.2f} | "
                      f"{r['rss_before_gb']:.2f} | {r['peak_rss_gb']:.2f} | {r['finite']} |")
    text = ("# `train` and `predict` at scale (issue 26)\n\n"
            "Made by `benchmarks/train_scale.py` (`make bench-speed`) on this machine's 2 "
            "CPU cores, one process per row: synthetic studies from ECAM profiles (see the "
            "script; making one is not part of `train`), the readout without a phylogeny, "
            f"1 epoch of a small network (embedding 16, 1 + 1 layers, token limit "
            f"{TOKEN_LIMIT}, batch 32), `predict` on the same table. 'now' is this "
            "commit; a commit's row swaps in that commit's readout (25a231c: the code the "
            "issue timed; 0106b76: the last before the readout was chosen on a subsample). "
            "x linear: train seconds per 1,000 samples over the smallest size's (1.00 = "
            "linear growth in samples).\n\n" + "\n".join(lines) + "\n\n"
            f"### `predict` on large tables\n\nA model trained on {PREDICT_MODEL.replace('x', ' x ')} "
            "(as above) predicts new synthetic samples over the same ASVs, in a fresh "
            "process that loads it; memory is the process's resident set before "
            "`predict` (model and table read) and at its peak.\n\n" + "\n".join(plines)
            + "\n")
    write_section("scale.md", text)  # after scale.py's pretraining section
    print(text)


if __name__ == "__main__":
    main()
