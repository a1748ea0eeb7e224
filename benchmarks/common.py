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


def write_section(name: str, text: str) -> None:
    """Put ``text`` (a Markdown section that starts with its ``# `` title) into
    ``results/<name>``, in place of the section with the same title or after the others,
    so that two benchmarks can share one results page."""
    path = RESULTS / name
    sections = []
    for line in (path.read_text().splitlines(keepends=True) if path.exists() else []):
        if line.startswith("# ") or not sections:
            sections.append("")
        sections[-1] += line
    title = text.splitlines()[0]
    at = [i for i, section in enumerate(sections) if section.splitlines()[0] == title]
    if at:
        sections[at[0]] = text.rstrip("\n") + "\n\n"
    else:
        sections.append(("\n" if sections and not sections[-1].endswith("\n\n") else "")
                        + text.rstrip("\n") + "\n\n")
    path.write_text("".join(sections).rstrip("\n") + "\n")


def load(name: str, token_limit: int = 256):
    """The dataset, all its samples as core samples, and the metadata (same order)."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.example_data import load_dataset
    data = load_dataset(name)
    ids = list(data.metadata.index)
    samples = amplicon_samples(data.table, None, token_limit, sample_ids=ids)
    return data, samples, data.metadata.loc[samples.sample_ids]


def pretrained_encoder(name: str, data, samples, epochs: int = 5, seed: int = 0):
    """Pretrain on all samples' tables and UniFrac (no labels), once; cached on disk."""
    from q2_aam.core.unifrac import unifrac_distances
    from q2_aam.core import api
    from q2_aam.core.bundle import ModelBundle
    from q2_aam.core.engine import TrainConfig
    path = OUTPUT / f"encoder-{name}-e{epochs}-s{seed}"
    if (path / "config.json").exists():
        log(f"reusing {path}")
        return ModelBundle.load(path)
    distances = unifrac_distances(samples, data.tree, "unweighted")
    bundle = api.pretrain(samples, distances, config=TrainConfig(epochs=epochs, seed=seed),
                          groups=data.metadata.loc[samples.sample_ids, "subject"].to_numpy(),
                          log=log)
    bundle.save(path)
    return bundle


def readout_alone(bundle):
    """A copy of the trained ``bundle`` whose network adds nothing: its prediction head's
    output layer zeroed, so it predicts the closed-form linear readout alone (the network
    starts so; ``AAMModel._build_target_branch``)."""
    import dataclasses
    if not bundle.model_config.get("linear_readout"):
        raise ValueError("This model has no linear readout.")
    state = dict(bundle.state_dict)
    for name in ("target_head.out.weight", "target_head.out.bias"):
        state[name] = state[name].clone().zero_()
    return dataclasses.replace(bundle, state_dict=state)


def train_defaults(**overrides) -> dict:
    """Keyword arguments of ``api.train`` that reproduce ``qiime aam train``'s defaults (its
    recipe, read from ``core/options.py``, so a benchmark follows the defaults as they
    change), updated with ``overrides``; ``config`` is the ``TrainConfig``."""
    from q2_aam.core.engine import TrainConfig
    from q2_aam.core.options import ARCHITECTURE, TRAIN_RECIPE, TRAINING
    config = TrainConfig(**{**{k: TRAIN_RECIPE.get(k, v) for k, v in TRAINING.items()},
                            "device": "cpu"})
    # train sets its head's layers only: the encoder's settings are a pretrained encoder's,
    # else ModelConfig's (ARCHITECTURE's).
    architecture = {"target_layers": ARCHITECTURE["target_layers"]}
    kwargs = dict(config=config, architecture=architecture,
                  **{k: TRAIN_RECIPE[k] for k in ("freeze_encoder", "linear_readout",
                                                  "asv_min_samples", "validation_fraction",
                                                  "target_transform")})
    architecture.update(overrides.pop("architecture", {}))
    config_overrides = {k: overrides.pop(k) for k in list(overrides)
                        if k in TrainConfig.__dataclass_fields__}
    if config_overrides:
        import dataclasses
        kwargs["config"] = dataclasses.replace(config, **config_overrides)
    kwargs.update(overrides)
    return kwargs


def add_variant_option(parser) -> None:
    """``--variant NAME JSON``: q2-aam's rows are named ``q2-aam NAME`` and trained with the
    defaults changed by the ``api.train`` arguments in JSON (an ablation)."""
    parser.add_argument("--variant", nargs=2, metavar=("NAME", "JSON"),
                        default=["default", "{}"],
                        help="a name for q2-aam's rows and the api.train arguments that differ "
                             "from the defaults, e.g. no-linear '{\"linear_readout\": false}'")


def variant_of(args) -> tuple[str, dict]:
    import json
    return args.variant[0], json.loads(args.variant[1])


def regression_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    return {"mae": float(np.abs(predicted - truth).mean()),
            "r2": 1 - float(((truth - predicted) ** 2).sum()) / ss_tot,
            "bias": float(np.mean(predicted - truth))}


class ResultTable:
    """Rows appended to a TSV as they are measured, so a stopped run resumes.

    ``has`` reads the file again, so several processes may share one table
    (e.g. ``--splits 1 2`` and ``--splits 4 3`` on two cores): each skips what
    the other has finished.
    """

    def __init__(self, path: Path, columns: list):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = []
        self._read()

    def _read(self) -> None:
        if self.path.exists():
            with open(self.path) as fh:
                self.rows = list(csv.DictReader(fh, delimiter="\t"))

    def has(self, **key) -> bool:
        self._read()
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
    values, seen = {}, set()
    for r in rows:
        # Two processes sharing a table may both finish the run they met on: count it once.
        key = tuple(v for k, v in r.items() if k not in ("mae", "r2", "best_epoch", "seconds"))
        if key not in seen:
            seen.add(key)
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


def run_grid(dataset: str, splits, variants: dict, *, results: str, mode: str, epochs: int,
             variant_column: str, categorical_columns=None, common: dict | None = None):
    """Train every variant on every split's training subjects; score on its test subjects.

    ``variants``: ``{name: keyword arguments of q2_aam.core.api.train}``. The
    encoder is pretrained once per dataset (all samples, no labels); ``mode``
    ``frozen`` keeps it fixed (its outputs cached), ``finetune`` trains it too.
    ``common``: keyword arguments of ``train`` shared by every variant; each
    becomes a column of the results (so rows made with other values are kept apart).
    Each finished row is appended to ``results/<results>.tsv`` at once, and
    rows already there are skipped, so a stopped run resumes.
    """
    from q2_aam.core import api
    from q2_aam.core.engine import TrainConfig
    from q2_aam.example_data import split_samples

    data, samples, metadata = load(dataset)
    encoder = pretrained_encoder(dataset, data, samples)
    common = common or {}
    columns = ["dataset", "split", variant_column, *common, "mode", "epochs", "mae", "r2",
               "best_epoch", "seconds"]
    table = ResultTable(RESULTS / f"{results}.tsv", columns)
    y_all = metadata["age_days"].astype(float).to_numpy()
    position = {s: i for i, s in enumerate(samples.sample_ids)}
    frozen = mode == "frozen"
    for k in splits:
        train_ids, test_ids = split_samples(metadata, k)
        train_rows = np.array([position[s] for s in train_ids])
        test_rows = np.array([position[s] for s in test_ids])
        for name, kwargs in variants.items():
            kwargs = dict(kwargs)
            conditioned = kwargs.pop("conditioned", True)
            key = {"dataset": dataset, "split": k, variant_column: name, **common,
                   "mode": mode, "epochs": epochs}
            if table.has(**key):
                continue
            started = time.perf_counter()
            cats = None
            if categorical_columns and conditioned:
                cats = {c: [None if v != v else str(v) for v in metadata[c]]
                        for c in categorical_columns}
            bundle = api.train(
                samples.subset(train_rows), y_all[train_rows], task="regression",
                target_name="age_days", pretrained=encoder, freeze_encoder=frozen,
                categorical=None if cats is None else
                {c: [v[i] for i in train_rows] for c, v in cats.items()},
                config=TrainConfig(epochs=epochs, learning_rate=1e-3 if frozen else 5e-4,
                                   patience=15, seed=0),
                groups=metadata["subject"].to_numpy()[train_rows], log=lambda m: None,
                **common, **kwargs)
            predicted = api.predict(
                bundle, samples.subset(test_rows), log=lambda m: None,
                categorical=None if cats is None else
                {c: [v[i] for i in test_rows] for c, v in cats.items()})
            scores = regression_scores(predicted, y_all[test_rows])
            best = max((r["epoch"] for r in bundle.training["history"] if r.get("best")),
                       default=len(bundle.training["history"]))
            table.add({**key, "mae": round(scores["mae"], 2), "r2": round(scores["r2"], 4),
                       "best_epoch": best, "seconds": round(time.perf_counter() - started)})
            log(f"{dataset} split {k} {name}: MAE {scores['mae']:.1f} R2 {scores['r2']:.3f}")
    return [r for r in table.rows if r["mode"] == mode and r["epochs"] == str(epochs)]
