"""The linear readout's fit at karelia's size, side by side with the code before issue 26.

    .venv/bin/python benchmarks/readout_speed.py [--before 25a231c 8acec1c] [--repeats 1]

The readout of ``qiime aam train``'s defaults on the issue's setting: karelia cut to the
region it shares with ECAM (``example_data.variants.common_region``), every karelia
sample less ``train``'s validation subjects (20 %, seed 0), ASVs held by 2 or more of
them, with the joint tree's clades. ``fit_regression`` of each commit ``--before`` (read
with ``git show``, loaded as a module of this package: 25a231c is the code the issue
timed, 8acec1c the first speed-up) and of the working tree run one after the other in this
process, alternating when repeated, on the same blocks. Printed: seconds of each, what
each chose, the cross-validated errors and the largest coefficient difference to the
first. Results go to ``results/readout-speed.md``.
"""
import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, log

ROOT = Path(__file__).resolve().parent.parent


def module_at(commit: str):
    """``q2_aam.core.linear`` (the readout before it became ``q2_aam.core.readout``) as it was
    at ``commit``."""
    source = subprocess.run(["git", "show", f"{commit}:q2_aam/core/linear.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path("/tmp") / f"q2_aam_linear_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"q2_aam.core.linear_{commit}", path,
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "q2_aam.core"
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def karelia_blocks():
    """The readout's blocks, target (z-scored) and subjects of the issue's setting."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.core.data import validation_split
    from q2_aam.core.readout import plan_readout, readout_blocks
    from q2_aam.example_data.variants import common_region
    data = common_region()
    ids = list(data.metadata.index[data.metadata["study"] == "karelia"])
    samples = amplicon_samples(data.table, None, 256, sample_ids=ids)
    metadata = data.metadata.loc[samples.sample_ids]
    subjects = metadata["subject"].astype(str).to_numpy()
    train, _ = validation_split(len(samples), 0.2, 0, subjects)
    fit = samples.subset(train)
    plan = plan_readout(fit, samples.sequences, samples.feature_ids, asv_min_samples=2,
                        linear_readout=True, phylogeny=data.tree, log=log)
    blocks = readout_blocks(fit, plan.rows, len(plan.vocabulary), plan.clade_rows,
                            plan.clade_ids)
    blocks = {name: x.toarray() for name, x in blocks.items()}  # as earlier commits took them
    age = metadata["age_days"].to_numpy(float)[train]
    return blocks, (age - age.mean()) / age.std(), subjects[train]


def main():
    from q2_aam.core.readout import choice
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", nargs="+", default=["25a231c", "8acec1c"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    blocks, y, groups = karelia_blocks()
    shape = (len(y), sum(x.shape[1] for x in blocks.values()))
    log(f"{shape[0]} samples x {shape[1]} columns ("
        + ", ".join(f"{k} {x.shape[1]}" for k, x in blocks.items()) + ")")
    versions = {**{f"before ({commit})": module_at(commit) for commit in args.before},
                "now": choice}
    runs = {name: [] for name in versions}
    for _ in range(args.repeats):
        for name, module in versions.items():
            started = time.perf_counter()
            coef, intercept, how = module.fit_regression(blocks, y, groups)
            runs[name].append((time.perf_counter() - started, coef, how))
            log(f"{name}: {runs[name][-1][0]:.1f} s; {how}")
    first = runs[next(iter(versions))][-1]
    lines = ["# The linear readout's fit at karelia's size (issue 26)", "",
             f"Made by `benchmarks/readout_speed.py`: {shape[0]} samples x {shape[1]} "
             "columns (" + ", ".join(f"{k} {x.shape[1]}" for k, x in blocks.items())
             + "), one process, the versions one after the other on the same blocks.", "",
             "| version | seconds | chosen, with the cross-validated errors |", "|---|---|---|"]
    for name in versions:
        seconds = [r[0] for r in runs[name]]
        lines.append(f"| {name} | {' / '.join(f'{s:.1f}' for s in seconds)} | "
                     f"{runs[name][-1][2]} |")
    lines += [""] + [f"Largest coefficient difference, {name} vs {next(iter(versions))}: "
                     f"{np.abs(first[1] - runs[name][-1][1]).max():.2g} (largest coefficient "
                     f"{np.abs(first[1]).max():.2g})." for name in list(versions)[1:]] + [""]
    (RESULTS / "readout-speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
