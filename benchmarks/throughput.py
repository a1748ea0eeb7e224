"""Training throughput of 1 vs N processes at the same global batch (issue 5).

    .venv/bin/python benchmarks/throughput.py [--dataset ecam] [--samples 256]
        [--batch-size 32] [--processes 1 2] [--epochs 3]

Pretrains (UniFrac + masked nucleotides, the demo's architecture) on the first
``--samples`` samples of the dataset, once per process count, with the same
global batch, and reports samples/second of the last epoch (the first pays
for start-up). Each process gets an equal share of the machine's cores
(torch threads = cores / processes). Results go to results/throughput.md.
"""
import argparse
import os
import time

from common import RESULTS, load, log


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ecam", choices=["ecam", "karelia"])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import numpy as np
    from q2_aam.core.unifrac import unifrac_distances
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig

    data, samples, _ = load(args.dataset)
    samples = samples.subset(np.arange(min(args.samples, len(samples))))
    distances = unifrac_distances(samples, data.tree, "unweighted")
    cores = os.cpu_count()
    rows = []
    for n in args.processes:
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // n))  # inherited by workers
        import torch
        torch.set_num_threads(max(1, cores // n))
        started = time.perf_counter()
        bundle = api.pretrain(samples, distances, validation_fraction=0.0,
                              config=TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                                 seed=0, device="cpu", num_processes=n),
                              log=lambda m: None)
        last = bundle.training["history"][-1]
        rows.append((n, last["samples_per_second"], last["train_loss"],
                     time.perf_counter() - started))
        log(f"{n} process(es): {last['samples_per_second']} samples/s in the last epoch")
    base = rows[0][1]
    lines = ["| processes | samples/s (last epoch) | ratio to 1 | last-epoch loss | wall s |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {sps:.1f} | {sps / base:.2f} | {loss:.4f} | {wall:.0f} |"
              for n, sps, loss, wall in rows]
    text = (f"# Training throughput, {args.dataset}, {len(samples)} samples, global batch "
            f"{args.batch_size}, {cores} cores, CPU\n\nMade by `benchmarks/throughput.py`; "
            "pretraining (UniFrac + masked nucleotides), default architecture.\n\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
