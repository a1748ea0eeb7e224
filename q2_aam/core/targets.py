"""What the model predicts: target transforms for regression, class encodings.

A transform maps a numeric target to the scale the model learns on, and
back. Its statistics are fitted on the training samples only and saved with
the model, so ``predict`` returns values in the original units.

======================  =====================================================
``none``                the raw target
``minmax``              ``(y - min) / (max - min)``: training targets in [0, 1]
``zscore``              ``(y - mean) / sd``
``zscore-category``     ``(y - mean_g) / sd_g`` within each group ``g`` of the
                        ``normalize_by`` column(s); a group not seen in
                        training uses the global mean and sd
``log-minmax``          ``minmax`` of ``log(y + 1)``; needs ``y > -1``
``log-zscore``          ``zscore`` of ``log(y + 1)``; needs ``y > -1``
======================  =====================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

TARGET_TRANSFORMS = ("none", "minmax", "zscore", "zscore-category", "log-minmax",
                     "log-zscore")
#: Transforms whose output is negative for part of the training targets by construction.
CENTRED_TRANSFORMS = ("zscore", "zscore-category", "log-zscore")


def _as_groups(groups, n: int) -> np.ndarray:
    if groups is None:
        raise ValueError("The 'zscore-category' transform needs each sample's group "
                         "(the normalize-by column values).")
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} target values.")
    return groups


#: The default of ``train``. The model's linear readout (``linear``) is a ridge regression on
#: log abundances, fitted on this scale: with 'log-zscore' it fitted log(age) linearly and the
#: ECAM development folds' MAE rose from 104 to 142 days (benchmarks/results/ablation.md).
DEFAULT_TARGET_TRANSFORM = "zscore"
#: The quantile loss's quantiles unless others are given (kept here, torch-free, so the
#: plugin's signature can show them).
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)


def scale_warning(y: np.ndarray, kind: str) -> str | None:
    """A sentence when untransformed targets are far from the scale a network learns well."""
    if kind != "none" or not len(y):
        return None
    spread, largest = float(np.std(y)), float(np.max(np.abs(y)))
    if largest > 1e4 or 0 < spread < 1e-2:
        return (f"The target ranges over [{np.min(y):.4g}, {np.max(y):.4g}] (sd {spread:.3g}); "
                "with target transform 'none' the model learns it in these units, which "
                "trains poorly this far from the 0.01-10,000 range. Consider 'zscore' (any "
                "sign) or 'log-zscore' (values > -1).")
    return None


@dataclass
class TargetTransform:
    """A fitted target transform (see the module docstring for the kinds).

    Examples:
        >>> t = TargetTransform("log-zscore").fit(np.array([0.0, 9.0, 99.0]))
        >>> np.round(t.inverse(t.transform(np.array([49.0]))), 6)
        array([49.])
    """

    kind: str = DEFAULT_TARGET_TRANSFORM
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TARGET_TRANSFORMS:
            raise ValueError(f"target transform must be one of {TARGET_TRANSFORMS}, "
                             f"got {self.kind!r}.")

    @property
    def uses_groups(self) -> bool:
        return self.kind == "zscore-category"

    @property
    def is_log(self) -> bool:
        return self.kind.startswith("log-")

    def _log(self, y: np.ndarray, what: str = "target") -> np.ndarray:
        if not self.is_log:
            return y
        if (y <= -1).any():
            raise ValueError(
                f"The {what} has values <= -1 (smallest {y.min():g}); the '{self.kind}' "
                f"transform{' (the default)' if self.kind == DEFAULT_TARGET_TRANSFORM else ''} "
                "takes log(y + 1), which needs y > -1. Choose the target transform 'zscore' "
                "(--p-target-transform zscore) or 'minmax'.")
        return np.log1p(y)

    def fit(self, y, groups=None) -> "TargetTransform":
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0 or not np.isfinite(y).all():
            raise ValueError("Cannot fit a target transform on an empty or non-finite target.")
        v = self._log(y)
        stats: dict = {}
        if self.kind in ("minmax", "log-minmax"):
            lo, hi = float(v.min()), float(v.max())
            stats = {"min": lo, "range": hi - lo if hi > lo else 1.0}
        elif self.kind in ("zscore", "log-zscore", "zscore-category"):
            stats = {"mean": float(v.mean()), "std": _sd(v, 1.0)}
        if self.uses_groups:
            g = _as_groups(groups, len(v))
            stats["groups"] = {
                str(k): {"mean": float(v[g == k].mean()), "std": _sd(v[g == k], stats["std"])}
                for k in sorted(set(g))}
        self.stats = stats
        return self

    def _params(self, n: int, groups, warn: Callable[[str], None] | None):
        """Per-sample (shift, scale) arrays."""
        if self.kind == "none":
            return np.zeros(n), np.ones(n)
        if self.kind in ("minmax", "log-minmax"):
            return np.full(n, self.stats["min"]), np.full(n, self.stats["range"])
        shift, scale = np.full(n, self.stats["mean"]), np.full(n, self.stats["std"])
        if self.uses_groups:
            g = _as_groups(groups, n)
            known = self.stats["groups"]
            unseen = sorted({k for k in g if k not in known})
            if unseen and warn is not None:
                warn(f"Group(s) {unseen} of {self.stats.get('columns', 'the normalize-by')} "
                     "column(s) were not seen in training; their samples use the global "
                     "mean and sd of the target.")
            for k, s in known.items():
                rows = g == k
                shift[rows], scale[rows] = s["mean"], s["std"]
        return shift, scale

    def transform(self, y, groups=None, warn=None) -> np.ndarray:
        y = self._log(np.asarray(y, dtype=np.float64))
        shift, scale = self._params(len(y), groups, warn)
        return (y - shift) / scale

    def inverse(self, z, groups=None, warn=None) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        shift, scale = self._params(len(z), groups, warn)
        v = z * scale + shift
        return np.expm1(v) if self.is_log else v

    def to_dict(self) -> dict:
        return {"kind": self.kind, "stats": self.stats}

    @classmethod
    def from_dict(cls, values: dict) -> "TargetTransform":
        return cls(kind=values["kind"], stats=dict(values.get("stats", {})))


def _sd(v: np.ndarray, fallback: float) -> float:
    sd = float(v.std())
    return sd if sd > 0 else fallback


def group_labels(columns: Sequence[Sequence], missing: str = "") -> np.ndarray:
    """One label per sample from one or more categorical columns ("FIN|vaginal")."""
    rows = zip(*columns)
    return np.asarray(["|".join(missing if _missing(v) else str(v) for v in row)
                       for row in rows], dtype=object)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def encode_classes(labels) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each label's class index."""
    labels = np.asarray([str(x) for x in labels], dtype=object)
    classes = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, np.fromiter((lookup[x] for x in labels), dtype=np.int64, count=len(labels))


def balanced_class_weights(encoded: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (k * count_c)`` per class present (scikit-learn's ``compute_class_weight``
    'balanced', k the classes present); absent classes get 0."""
    from sklearn.utils.class_weight import compute_class_weight
    present = np.unique(encoded)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=encoded)
    return weights
