"""Short prepared GPU check (issue 5): bf16 training of the demo model, throughput, memory.

    python scripts/gpu-check.py [--steps 300] [--batch-size 32] [--processes 1]

Needs a CUDA GPU; never run by the tests. Uses synthetic 150-nt ASVs and
random UniFrac-like distances of the demo's shape (256 ASVs per sample, the
default architecture) so it runs without downloads; pretrains for about
``--steps`` optimizer steps in fp32 and in bf16 and prints samples/second and
peak GPU memory for each.
"""
import argparse
import time

import numpy as np
import torch


def synthetic(n_samples: int, n_features: int = 3000, length: int = 150, seed: int = 0):
    from q2_aam.core.data import AmpliconSamples
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n_features)]
    counts = rng.poisson(0.3, (n_samples, n_features)) * rng.integers(1, 50, (n_samples, n_features))
    counts[:, 0] += 1
    samples = AmpliconSamples.from_counts(counts, [f"s{i}" for i in range(n_samples)],
                                          [f"f{i}" for i in range(n_features)], seqs, 256)
    points = rng.random((n_samples, 8))
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).astype(np.float32)
    return samples, distances / distances.max()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this check needs a GPU.")
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    n = args.batch_size * 20
    samples, distances = synthetic(n)
    epochs = max(1, round(args.steps / (n / args.batch_size)))
    print(f"{torch.cuda.get_device_name()}; {n} samples, batch {args.batch_size}, "
          f"{epochs} epochs ({epochs * n // args.batch_size} steps)")
    for precision in ("no", "bf16"):
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        bundle = api.pretrain(samples, distances, validation_fraction=0.0,
                              config=TrainConfig(epochs=epochs, batch_size=args.batch_size,
                                                 device="cuda", mixed_precision=precision,
                                                 num_processes=args.processes),
                              log=lambda m: None)
        history = bundle.training["history"]
        print(f"mixed precision {precision}: {history[-1]['samples_per_second']:.0f} "
              f"samples/s (last epoch), loss {history[-1]['train_loss']:.4f}, peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
