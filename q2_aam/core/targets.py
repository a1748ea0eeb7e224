"""What the model predicts: target transforms for regression, class encodings."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TARGET_TRANSFORMS = ("none", "zscore")


@dataclass
class TargetTransform:
    """Maps a numeric target to the scale the model learns on, and back.

    Statistics are fitted on the training samples only and saved with the
    model, so ``predict`` returns values in the original units.

    Examples:
        >>> t = TargetTransform("zscore").fit(np.array([1.0, 2.0, 3.0]))
        >>> t.inverse(t.transform(np.array([5.0])))
        array([5.])
    """

    kind: str = "zscore"
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in TARGET_TRANSFORMS:
            raise ValueError(f"target transform must be one of {TARGET_TRANSFORMS}, "
                             f"got {self.kind!r}.")

    def fit(self, y: np.ndarray) -> "TargetTransform":
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0 or not np.isfinite(y).all():
            raise ValueError("Cannot fit a target transform on an empty or non-finite target.")
        if self.kind == "zscore":
            std = float(y.std())
            self.stats = {"mean": float(y.mean()), "std": std if std > 0 else 1.0}
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "zscore":
            return (y - self.stats["mean"]) / self.stats["std"]
        return y

    def inverse(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.kind == "zscore":
            return z * self.stats["std"] + self.stats["mean"]
        return z

    def to_dict(self) -> dict:
        return {"kind": self.kind, "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, values: dict) -> "TargetTransform":
        return cls(kind=values["kind"], stats=dict(values.get("stats", {})))


def encode_classes(labels) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each label's class index."""
    labels = np.asarray([str(x) for x in labels], dtype=object)
    classes = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, np.fromiter((lookup[x] for x in labels), dtype=np.int64, count=len(labels))
