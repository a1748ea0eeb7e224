"""What the model predicts: target transforms for regression, class encodings, scores.

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

from .options import (CENTRED_TRANSFORMS, CLASS_WEIGHTS, DEFAULT_TARGET_TRANSFORM,
                      TARGET_TRANSFORMS, check_choice)

#: Above this many classes, a numeric target is refused as continuous, and classes
#: that are not numbers get a warning.
MANY_CLASSES = 20
#: Training without class weights warns when a class is less than this share of the
#: training samples.
IMBALANCED = 0.2
#: Target values further than this many median absolute deviations from the median are
#: reported (real ages, weights, indices sit within a few tens).
OUTLIER_SCALES = 1000.0


def _as_groups(groups, n: int) -> np.ndarray:
    if groups is None:
        raise ValueError("The 'zscore-category' transform needs each sample's group "
                         "(the normalize-by column values).")
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} target values.")
    return groups


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
        check_choice("target transform", self.kind, TARGET_TRANSFORMS)

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


def _as_numbers(labels: list) -> np.ndarray | None:
    """``labels`` as numbers when every one reads as a finite number, else ``None``."""
    try:
        numbers = np.asarray([float(label) for label in labels])
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def balanced_class_weights(encoded: np.ndarray, n_classes: int) -> np.ndarray:
    """``n / (k * count_c)`` per class present (scikit-learn's ``compute_class_weight``
    'balanced', k the classes present); absent classes get 0."""
    from sklearn.utils.class_weight import compute_class_weight
    present = np.unique(encoded)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=encoded)
    return weights


def check_target_settings(transform: str, output_constraint: str,
                          normalize_by: Sequence[str] | None) -> None:
    """Refuse contradictory regression settings (before any data is read).

    Nothing is switched on implicitly: a transform never changes the output
    constraint, and each conflict is an error that says why.
    """
    if normalize_by and transform != "zscore-category":
        raise ValueError(f"normalize-by ({', '.join(normalize_by)}) is used only by the "
                         f"'zscore-category' target transform, not {transform!r}. Choose "
                         "--p-target-transform zscore-category or leave --p-normalize-by out.")
    if transform == "zscore-category" and not normalize_by:
        raise ValueError("The 'zscore-category' transform z-scores the target within groups; "
                         "name the categorical column(s) with --p-normalize-by.")
    if output_constraint.startswith("nonnegative") and transform in CENTRED_TRANSFORMS:
        raise ValueError(
            f"--p-output-constraint {output_constraint} keeps outputs >= 0, but the "
            f"{transform!r} transform centres the target at 0, so about half of the "
            "training targets are negative on the scale the model learns. Use 'bounded', "
            "or a 'none', 'minmax' or 'log-minmax' transform.")


def output_bounds(learned: np.ndarray, output_constraint: str) -> list | None:
    """The bounds of a 'bounded' output (the range of the training targets on the scale the
    model learns); refuses negative targets under a 'nonnegative' constraint."""
    if output_constraint.startswith("nonnegative") and (learned < 0).any():
        raise ValueError(
            f"--p-output-constraint {output_constraint} keeps outputs >= 0, but "
            f"{int((learned < 0).sum())} training target(s) are negative on the scale the "
            f"model learns (smallest {learned.min():g}). Use 'none' or 'bounded'.")
    if output_constraint == "bounded":
        low, high = float(learned.min()), float(learned.max())
        if not low < high:
            raise ValueError("'bounded' needs training targets that are not all equal.")
        return [low, high]
    return None


def extreme_values(y: np.ndarray) -> np.ndarray:
    """Indices of values more than ``OUTLIER_SCALES`` robust scales from the median (the
    median absolute deviation, or the mean one when over half the values are equal)."""
    centre = np.median(y)
    deviation = np.abs(y - centre)
    scale = np.median(deviation) or deviation.mean()
    if not np.isfinite(scale) or scale == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(deviation > OUTLIER_SCALES * scale)


@dataclass
class PreparedTarget:
    """A target ready to train on: ``encoded`` (float32 on the learned scale, or class
    indices), the model's ``n_outputs``, validation ``metrics(prediction, target, rows)``,
    what the model saves about it (``info``), ``bounds`` of a 'bounded' output and the
    classes' loss ``class_weights``."""

    encoded: np.ndarray
    n_outputs: int
    metrics: Callable
    info: dict
    bounds: list | None = None
    class_weights: np.ndarray | None = None

    def loss_weights(self):
        """The classes' loss weights as the objective takes them (``None``: unweighted)."""
        import torch
        return (None if self.class_weights is None
                else torch.as_tensor(self.class_weights, dtype=torch.float32))


def prepare_regression(targets, train_rows: np.ndarray, *, transform: str,
                       output_constraint: str, normalize_by: Sequence[str] | None,
                       normalize_groups: Sequence | None, loss, sample_ids: Sequence[str],
                       log: Callable[[str], None]) -> PreparedTarget:
    """Fit ``transform`` on the training rows and encode every target with it.

    ``loss``: the ``losses.RegressionLoss`` (its number of outputs and point output).
    """
    y = np.asarray(targets, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError("The target holds missing or non-finite values; drop those "
                         "samples first.")
    values = np.unique(y)
    if len(values) == 2:
        raise ValueError(
            f"The target holds only two values ({values[0]:g} and {values[1]:g}): it looks "
            "like two classes, not a number to predict. Use --p-task classification "
            "(its class probabilities are what a regression on the two codes would "
            "approximate); add --p-class-weights balanced when one class is rare.")
    fitted = TargetTransform(transform)
    groups = None
    if fitted.uses_groups:
        if normalize_groups is None or len(normalize_groups) != len(y):
            raise ValueError("zscore-category needs one group label per sample.")
        groups = np.asarray([str(g) for g in normalize_groups], dtype=object)
    warning = scale_warning(y[train_rows], transform)
    if warning:
        log(f"Warning: {warning}")
    _warn_extreme(y, sample_ids, log)
    with np.errstate(over="ignore", invalid="ignore"):
        fitted.fit(y[train_rows], None if groups is None else groups[train_rows])
        if fitted.uses_groups:
            fitted.stats["columns"] = list(normalize_by)
        encoded = fitted.transform(y, groups).astype(np.float32)
    if not np.isfinite(encoded).all() or not all(
            np.isfinite(v).all() for v in fitted.stats.values()
            if isinstance(v, (int, float, np.ndarray))):
        raise ValueError(
            f"The target cannot be scaled with {transform!r}: its values (from "
            f"{y.min():g} to {y.max():g}) overflow. Check the largest for unit or entry "
            "errors.")
    bounds = output_bounds(encoded[train_rows].astype(np.float64), output_constraint)
    info = {"transform": fitted.to_dict(), "loss": loss.to_dict(),
            "point_output": loss.point_output, "normalize_by": list(normalize_by or [])}
    return PreparedTarget(encoded, loss.n_outputs,
                          regression_metrics(fitted, loss.point_output, groups), info, bounds)


def _warn_extreme(y: np.ndarray, sample_ids: Sequence[str], log) -> None:
    outliers = extreme_values(y)
    if len(outliers):
        log(f"Warning: {len(outliers)} target value(s) lie extremely far from the others "
            f"(over {OUTLIER_SCALES:g} median absolute deviations from the median "
            f"{np.median(y):g}): " + ", ".join(
                f"{sample_ids[i]} = {y[i]:g}" for i in outliers[:5])
            + ". Check them for unit or entry errors; the model will try to fit them.")


def prepare_classification(targets, train_rows: np.ndarray, *, class_weights: str,
                           log: Callable[[str], None]) -> PreparedTarget:
    """Class indices of every target, refusing classes too small to learn."""
    check_choice("class_weights", class_weights, CLASS_WEIGHTS)
    classes, encoded = encode_classes(targets)
    if len(classes) < 2:
        raise ValueError(f"Classification needs at least 2 classes; the target has "
                         f"{classes}.")
    sizes = np.bincount(encoded, minlength=len(classes))
    rare = [f"{classes[k]!r} ({sizes[k]})" for k in np.flatnonzero(sizes < 2)]
    numbers = _as_numbers(classes)
    if numbers is not None and (rare or len(classes) > MANY_CLASSES):
        raise ValueError(
            f"The target looks continuous, not like classes: {len(classes)} distinct "
            f"numbers from {numbers.min():g} to {numbers.max():g}, {len(rare)} of them held "
            "by a single sample. To predict it as a number, use --p-task regression (the "
            "default); to predict classes, bin it into a categorical metadata column "
            "first.")
    if rare:
        raise ValueError(f"Each class needs at least 2 samples; {len(rare)} class(es) have "
                         f"fewer: {', '.join(rare[:5])}. Drop or merge rare classes first.")
    if len(classes) > MANY_CLASSES:
        log(f"Warning: the target has {len(classes)} classes ({sizes.min()} samples in the "
            "rarest); a class needs enough training samples to be learnt. Merge rare "
            "classes if the model calls them poorly.")
    train_sizes = np.bincount(encoded[train_rows], minlength=len(classes))
    share = train_sizes / max(1, train_sizes.sum())
    rarest = int(np.argmin(np.where(train_sizes > 0, share, np.inf)))
    if class_weights == "none" and share[rarest] < IMBALANCED:
        log(f"Warning: the classes are imbalanced: {classes[rarest]!r} is "
            f"{share[rarest]:.0%} of the training samples, {classes[int(share.argmax())]!r} "
            f"{share.max():.0%}. Calling every sample {classes[int(share.argmax())]!r} would "
            f"be right {share.max():.0%} of the time, so judge the model against that; "
            "--p-class-weights balanced makes each class count equally in training.")
    weights = (balanced_class_weights(encoded[train_rows], len(classes))
               if class_weights == "balanced" else None)
    return PreparedTarget(encoded, len(classes), classification_metrics,
                          {"classes": classes, "class_weights": class_weights},
                          class_weights=weights)


def regression_accuracy(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE, R² (scikit-learn's; NaN when the observed values do not vary) and n of
    predictions against observed values."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    varies = len(observed) > 1 and observed.min() < observed.max()
    return {"n": len(observed), "mae": float(mean_absolute_error(observed, predicted)),
            "rmse": float(np.sqrt(mean_squared_error(observed, predicted))),
            "r2": float(r2_score(observed, predicted)) if varies else float("nan")}


def regression_metrics(transform: TargetTransform, point: int, groups: np.ndarray | None):
    """Validation MAE and R² in the target's original units."""
    def metrics(prediction: np.ndarray, target: np.ndarray, rows: np.ndarray) -> dict:
        g = None if groups is None else groups[rows]
        y_hat = transform.inverse(prediction[:, point], g)
        y = transform.inverse(target.reshape(-1), g)
        scores = regression_accuracy(y, y_hat)
        return {"mae": scores["mae"], "r2": scores["r2"]}
    return metrics


def classification_metrics(prediction: np.ndarray, target: np.ndarray, rows=None) -> dict:
    return {"accuracy": float((prediction.argmax(-1) == target).mean())}
