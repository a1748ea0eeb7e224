"""Speed at the size of issue 13: samples/s and peak memory per phase, FLOP/s against the
machine's measured matmul peak, fp32 vs bf16.

    .venv/bin/python benchmarks/speed.py [--samples 256] [--epochs 2] [--phases ...]

Setting (issue 13): ECAM, embedding 128, 4 heads, 2 + 2 layers, token limit 256, batch 8.
Each phase runs in a fresh Python process, so that its peak resident memory
(``ru_maxrss``, which includes Python, QIIME 2's libraries and the data) is its
own: pretrain (UniFrac + masked nucleotides), train with a frozen and with a
fine-tuned encoder, predict, and the conditioning response of
``explain-conditioning`` on a cross-attention model. Training figures are the
last epoch's samples/s (the first pays for start-up).

FLOPs per sample are counted by ``torch.utils.flop_counter`` on one batch of
each phase (forward + backward for training); FLOP/s is that times samples/s,
reported as a fraction of a square fp32 (and bf16) matmul measured in the same
run with the same threads. Results go to ``results/speed.md``; everything in it
comes from one run.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, log  # noqa: E402

SIZE = {"embedding_dim": 128, "attention_heads": 4, "nucleotide_layers": 2, "sample_layers": 2}
TOKEN_LIMIT = 256
BATCH = 8


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype`` (best of ``repeats``)."""
    import torch
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best / 1e9


def run_phase(phase: str, samples_n: int, epochs: int, patch: int, precision: str,
              work: Path, checkpointing: bool = False) -> dict:
    """One phase in this process; returns its figures."""
    import numpy as np
    import torch
    from common import load
    from q2_aam.core.unifrac import unifrac_distances
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.engine import TrainConfig

    quiet = lambda message: None  # noqa: E731
    data, samples, metadata = load("ecam", token_limit=TOKEN_LIMIT)
    samples = samples.subset(np.arange(min(samples_n, len(samples))))
    metadata = metadata.loc[samples.sample_ids]
    architecture = dict(SIZE, patch_size=patch)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, seed=0, device="cpu",
                         mixed_precision=precision, patience=epochs,
                         activation_checkpointing=checkpointing)
    encoder_path = work / f"encoder-p{patch}"
    out = {"phase": phase, "patch": patch, "precision": precision,
           "checkpointing": checkpointing}
    keep = precision == "no" and not checkpointing  # the models later phases start from
    small = samples.subset(np.arange(32))
    flop_config = lambda epochs: dataclasses.replace(config, epochs=epochs, patience=epochs)  # noqa
    if phase == "pretrain":
        distances = unifrac_distances(samples, data.tree, "unweighted")
        pretrain = lambda s, d, c: api.pretrain(  # noqa: E731
            s, d, architecture=architecture, config=c, validation_fraction=0.0, log=quiet)
        bundle = pretrain(samples, distances, config)
        if keep:
            bundle.save(encoder_path)
        last = bundle.training["history"][-1]
        small_d = distances[:32, :32]
        out["flops_per_sample"] = epoch_flops(
            lambda e: pretrain(small, small_d, flop_config(e)), len(small))
    elif phase.startswith("train"):
        pretrained = ModelBundle.load(encoder_path)
        age = metadata["age_days"].to_numpy(float)
        train = lambda s, c: api.train(  # noqa: E731
            s, age[:len(s)], task="regression", pretrained=pretrained,
            freeze_encoder=phase == "train-frozen", config=c, validation_fraction=0.0, log=quiet)
        bundle = train(samples, config)
        last = bundle.training["history"][-1]
        if keep:
            bundle.save(work / f"{phase}-p{patch}")
        out["flops_per_sample"] = epoch_flops(lambda e: train(small, flop_config(e)), len(small))
    if phase == "pretrain" or phase.startswith("train"):
        out["samples_per_second"] = last["samples_per_second"]
        out["loss"] = last["train_loss"]
    elif phase == "predict":
        bundle = ModelBundle.load(work / f"train-finetune-p{patch}")
        api.predict(bundle, samples.subset(np.arange(8)), log=quiet)  # warm-up
        started = time.perf_counter()
        prediction = api.predict(bundle, samples, log=quiet)
        out["samples_per_second"] = len(samples) / (time.perf_counter() - started)
        out["prediction_head"] = [float(v) for v in prediction[:3]]
    elif phase == "explain":
        age = metadata["age_days"].to_numpy(float)
        pretrained = ModelBundle.load(encoder_path)
        delivery = {"delivery": metadata["delivery"].astype(str).to_numpy()}
        bundle = api.train(samples, age, task="regression", pretrained=pretrained,
                           freeze_encoder=True, categorical=delivery,
                           architecture={"categorical_fusion": "cross-attention"},
                           config=TrainConfig(epochs=1, batch_size=BATCH, seed=0, device="cpu"),
                           validation_fraction=0.0, log=quiet)
        started = time.perf_counter()
        api.conditioning_response(bundle, samples, categorical=delivery, log=quiet)
        seconds = time.perf_counter() - started
        out["samples_per_second"] = len(samples) / seconds
        out["seconds"] = seconds
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    out["threads"] = torch.get_num_threads()
    import q2_aam
    out["q2_aam"] = str(Path(q2_aam.__file__).resolve())
    return out


def epoch_flops(fit, n: int) -> float:
    """FLOPs per sample of one training epoch: ``fit(epochs)`` run for 2 epochs minus 1
    epoch (so one-time work, such as a frozen encoder's embedding cache, cancels)."""
    from torch.utils.flop_counter import FlopCounterMode
    totals = []
    for epochs in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter:
            fit(epochs)
        totals.append(counter.get_total_flops())
    return (totals[1] - totals[0]) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase
    parser.add_argument("--patch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing-only", action="store_true",
                        help="instead: pretrain and fine-tune (patch 4, fp32) with and without "
                             "activation checkpointing, side by side, into "
                             "results/speed-checkpointing.md")
    parser.add_argument("--work", default=str(HERE / "output" / "speed"), help=argparse.SUPPRESS)
    parser.add_argument("--before", metavar="REV",
                        help="instead: run patch-4 fp32 phases of git revision REV (a worktree "
                             "under output/) and of this tree, interleaved, into "
                             "results/speed-before.md")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.samples, args.epochs, args.patch,
                                   args.precision, work, args.checkpointing)))
        return
    if args.before:
        return before_and_after(args)
    if args.checkpointing_only:
        return checkpointing_side_by_side(args)
    rows = []
    for patch in (4, 1):
        for phase in ("pretrain", "train-frozen", "train-finetune", "predict", "explain"):
            if patch == 1 and phase == "explain":
                continue
            rows.append(child(phase, patch, "no", args))
    for phase in ("pretrain", "train-finetune"):
        rows.append(child(phase, 4, "bf16", args))
    for phase in ("pretrain", "train-finetune"):
        rows.append(child(phase, 4, "no", args, checkpointing=True))
    import torch
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")}
    write(rows, peaks, args, torch.get_num_threads())


def before_and_after(args) -> None:
    """The same phases with the code of ``args.before`` and of this tree, side by side."""
    tree = HERE / "output" / f"speed-tree-{args.before}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before],
                       check=True, cwd=HERE.parent)
    rows = []
    for phase in ("pretrain", "train-frozen", "train-finetune", "predict", "explain"):
        for label, code in ((args.before, tree), ("this tree", HERE.parent)):
            row = child(phase, 4, "no", args, code=code,
                        work=str(Path(args.work) / ("before" if code == tree else "now")))
            rows.append(dict(row, code=label))
    lines = ["| phase | code | samples/s | peak RSS GB | ratio now / before |", "|---|---|---|---|---|"]
    for before, now in zip(rows[::2], rows[1::2]):
        for row in (before, now):
            ratio = now["samples_per_second"] / before["samples_per_second"]
            lines.append(f"| {row['phase']} | {row['code']} | {row['samples_per_second']:.1f} | "
                         f"{row['peak_rss_gb']:.2f} | {'' if row is before else f'{ratio:.2f}'} |")
    text = (f"# Speed before and after: {args.before} vs this tree, side by side\n\n"
            f"Made by `benchmarks/speed.py --before {args.before}` in one run (phases "
            "interleaved, each in its own process): ECAM, embedding 128, 4 heads, 2 + 2 layers, "
            f"patch 4, token limit {TOKEN_LIMIT}, batch {BATCH}, {args.samples} samples, "
            f"{args.epochs} epochs, fp32, CPU.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "speed-before.md").write_text(text)
    print(text)


def checkpointing_side_by_side(args) -> None:
    """Pretrain and fine-tune with and without activation checkpointing, interleaved."""
    rows = []
    for phase in ("pretrain", "train-finetune"):
        for checkpointing in (False, True):
            rows.append(child(phase, 4, "no", args, checkpointing=checkpointing))
    lines = ["| phase | checkpointing | samples/s | peak RSS GB | last-epoch loss |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['phase']} | {'on' if row['checkpointing'] else 'off'} | "
                     f"{row['samples_per_second']:.1f} | {row['peak_rss_gb']:.2f} | "
                     f"{row['loss']} |")
    text = ("# Activation checkpointing at issue 13's size, side by side\n\n"
            "Made by `benchmarks/speed.py --checkpointing-only` in one run (each phase in its "
            f"own process): ECAM, embedding 128, 4 heads, 2 + 2 layers, patch 4, token limit "
            f"{TOKEN_LIMIT}, batch {BATCH}, {args.samples} samples, {args.epochs} epochs, fp32, "
            "CPU. The fine-tuning rows start from the pretraining row without checkpointing. "
            "Peak RSS includes Python, QIIME 2's libraries and the data.\n\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "speed-checkpointing.md").write_text(text)
    print(text)


def child(phase: str, patch: int, precision: str, args, code: Path = HERE.parent,
          work: str | None = None, checkpointing: bool = False) -> dict:
    """Run one phase in a fresh process (its own peak memory), with q2_aam from ``code``."""
    command = [sys.executable, __file__, "--phase", phase, "--patch", str(patch),
               "--precision", precision, "--samples", str(args.samples),
               "--epochs", str(args.epochs), "--work", work or args.work]
    if checkpointing:
        command.append("--checkpointing")
    log(f"{phase}, patch {patch}, precision {precision}, checkpointing {checkpointing}, "
        f"code {code}")
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(code)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if not row.get("q2_aam", "").startswith(str(code)):
        raise SystemExit(f"{phase} imported q2_aam from {row.get('q2_aam')}, not {code}")
    row["wall_s"] = time.perf_counter() - started
    log(f"  {row}")
    return row


def write(rows: list, peaks: dict, args, threads: int) -> None:
    def fraction(row):
        if "flops_per_sample" not in row:
            return ""
        achieved = row["flops_per_sample"] * row["samples_per_second"] / 1e9
        peak = peaks["bf16" if row["precision"] == "bf16" else "fp32"]
        return f"{achieved:.1f} ({achieved / peak:.0%})"

    lines = ["| phase | patch | precision | activation checkpointing | samples/s | "
             "peak RSS GB | GFLOP/sample | GFLOP/s (of the matmul peak) | last-epoch loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        flops = row.get("flops_per_sample")
        lines.append(
            f"| {row['phase']} | {row['patch']} | {row['precision']} | "
            f"{'on' if row.get('checkpointing') else 'off'} | "
            f"{row['samples_per_second']:.1f} | {row['peak_rss_gb']:.2f} | "
            f"{'' if flops is None else f'{flops / 1e9:.2f}'} | {fraction(row)} | "
            f"{row.get('loss', '')} |")
    text = (f"# Speed at issue 13's size, ECAM, {args.samples} samples, CPU, {threads} threads\n\n"
            "Made by `benchmarks/speed.py` (`make bench-speed`) in one run: embedding 128, 4 "
            f"heads, 2 + 2 layers, token limit {TOKEN_LIMIT}, batch {BATCH}; training figures "
            f"are the last of {args.epochs} epochs. Each phase ran in its own process; peak RSS "
            "includes Python, QIIME 2's libraries and the data. Matmul peak in this run "
            f"(2048 x 2048, best of 5): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 "
            f"{peaks['bf16']:.0f} GFLOP/s.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "speed.md").write_text(text)
    (RESULTS / "speed.json").write_text(json.dumps({"rows": rows, "peaks": peaks}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
