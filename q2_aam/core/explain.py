"""Tables that explain a trained model: gates, attention per ASV, history, accuracy.

Plain numpy/pandas on the arrays of :func:`q2_aam.core.api.model_outputs`;
the visualizers draw these tables and offer them as TSV, so every number on a
plot is one a user can download. Shapes: ``n`` samples, ``h`` heads, ``S``
ASV slots (slot ``j`` of sample ``i`` is its ``j``-th most abundant ASV),
``K`` metadata tokens (one per column, then the null token), ``L`` latents.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import AmpliconSamples

NULL_TOKEN = "(null)"


def token_names(columns) -> list[str]:
    """Names of the metadata tokens: the columns, then the null token."""
    return [*columns, NULL_TOKEN]


def slot_features(samples: AmpliconSamples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every (sample, slot) that holds an ASV: sample row, slot, feature index."""
    lengths = np.diff(samples.indptr)
    rows = np.repeat(np.arange(len(samples)), lengths)
    slots = np.arange(len(samples.indices)) - samples.indptr[rows]
    return rows, slots, samples.indices


MISSING = "(missing)"


def category_frame(categorical: dict, sample_ids) -> pd.DataFrame:
    """Each sample's value of each column, as text; missing values (None) are ``(missing)``."""
    return pd.DataFrame({c: [MISSING if v is None else str(v) for v in values]
                         for c, values in categorical.items()},
                        index=pd.Index(sample_ids, name="sample_id"))


def category_groups(categorical: dict) -> list[tuple[str, str, np.ndarray]]:
    """``(column, value, boolean sample mask)`` for each value of each column (sorted)."""
    frame = category_frame(categorical, range(len(next(iter(categorical.values())))))
    return [(column, value, (frame[column] == value).to_numpy())
            for column in frame.columns for value in sorted(frame[column].unique())]


def _mean_by_feature(values: np.ndarray, features: np.ndarray, n_features: int):
    """Mean of ``values`` ``(m, ...)`` per feature, NaN entries left out (a mean with
    nothing to average is NaN), and how many rows each feature has."""
    flat = values.reshape(len(values), -1)
    known = ~np.isnan(flat)
    sums, counts = np.zeros((n_features, flat.shape[1])), np.zeros((n_features, flat.shape[1]))
    np.add.at(sums, features, np.where(known, flat, 0.0))
    np.add.at(counts, features, known)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return (means.reshape((n_features,) + values.shape[1:]),
            np.bincount(features, minlength=n_features))


def asv_attention(weights: np.ndarray, samples: AmpliconSamples, categorical: dict,
                  columns) -> pd.DataFrame:
    """Mean cross-attention of each ASV to each metadata token, per category value and head.

    ``weights``: ``(n, h, S, K)``. One row per (feature, column, value, head),
    heads numbered from 1 plus ``mean`` (the heads' average), a column per
    token, and ``n_samples``: how many of the group's samples hold the ASV
    (the means are over those). ASVs absent from a group have no row for it.
    """
    rows, slots, features = slot_features(samples)
    per_slot = weights[rows, :, slots, :]  # (m, h, K)
    per_slot = np.concatenate([per_slot, per_slot.mean(axis=1, keepdims=True)], axis=1)
    heads = np.array([str(i + 1) for i in range(weights.shape[1])] + ["mean"], dtype=object)
    feature_ids = np.asarray(samples.feature_ids, dtype=object)
    frames = []
    for column, value, in_group in category_groups(categorical):
        keep = in_group[rows]
        means, counts = _mean_by_feature(per_slot[keep], features[keep], len(feature_ids))
        present = np.flatnonzero(counts)
        f = np.repeat(present, len(heads))
        h = np.tile(np.arange(len(heads)), len(present))
        frame = pd.DataFrame({"feature_id": feature_ids[f], "column": column, "value": value,
                              "head": heads[h], "n_samples": counts[f]})
        frame[token_names(columns)] = means[f, h]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def rank_by_variance(table: pd.DataFrame, tokens, min_samples: int) -> pd.Series:
    """ASVs ranked by how much their (heads' mean) attention varies between category values.

    For each column, the variance across its values of the ASV's mean
    attention to each token, summed over tokens; the score sums these over
    columns. Only groups holding the ASV in ``min_samples`` samples or more
    count, and a column needs two such groups. Highest first.
    """
    mean = table[(table["head"] == "mean") & (table["n_samples"] >= min_samples)]
    by_column = mean.groupby(["feature_id", "column"])
    variance = by_column[list(tokens)].var().sum(axis=1)[by_column.size() >= 2]
    score = variance.groupby(level="feature_id").sum()
    return score.sort_values(ascending=False, kind="stable").rename("attention_variance")


def asv_response(response: np.ndarray, samples: AmpliconSamples, columns) -> pd.DataFrame:
    """Each ASV's mean response to each conditioning column, over the samples holding it.

    ``response``: ``(n, S, C)`` from :func:`q2_aam.core.api.conditioning_response`.
    One row per ASV held by any sample, indexed by feature ID: a column per
    conditioning column (NaN where no holding sample had another value to
    compare with) and ``n_samples``. Sorted by the largest column, highest
    first.
    """
    rows, slots, features = slot_features(samples)
    means, held = _mean_by_feature(response[rows, slots], features, len(samples.feature_ids))
    present = np.flatnonzero(held)
    frame = pd.DataFrame(means[present], columns=list(columns),
                         index=pd.Index(np.asarray(samples.feature_ids, dtype=object)[present],
                                        name="feature_id"))
    frame["n_samples"] = held[present]
    order = frame[list(columns)].max(axis=1).sort_values(ascending=False, kind="stable").index
    return frame.loc[order]


def heatmap_matrix(table: pd.DataFrame, features, head: str, groups, tokens) -> np.ndarray:
    """``(len(features), len(groups) * len(tokens))`` attention for one head (NaN: absent)."""
    part = table[table["head"] == head].set_index(["feature_id", "column", "value"])
    index = pd.MultiIndex.from_tuples([(f, c, v) for f in features for (c, v) in groups])
    return part[list(tokens)].reindex(index).to_numpy().reshape(len(features), -1)


def gate_table(gates: np.ndarray, sample_ids, categorical: dict) -> pd.DataFrame:
    """Per sample: its category values and the mean, sd, min and max of its GMU gate."""
    frame = category_frame(categorical, sample_ids)
    frame["gate_mean"] = gates.mean(axis=1)
    frame["gate_sd"] = gates.std(axis=1)
    frame["gate_min"] = gates.min(axis=1)
    frame["gate_max"] = gates.max(axis=1)
    return frame


def latent_attention(weights: np.ndarray, samples: AmpliconSamples, columns) -> pd.DataFrame:
    """Mean Perceiver cross-attention of each latent to each ASV and metadata token.

    ``weights``: ``(n, h, L, S + K)``. One row per (latent, head, key): for an
    ASV key, the mean over the samples holding it (``n_samples``); for a
    metadata token, over all samples. Heads numbered from 1 plus ``mean``.
    """
    n, n_heads, n_latents, width = weights.shape
    s_slots = width - len(columns) - 1
    with_mean = np.concatenate([weights, weights.mean(axis=1, keepdims=True)], axis=1)
    heads = [str(i + 1) for i in range(n_heads)] + ["mean"]
    rows, slots, features = slot_features(samples)
    per_slot = with_mean[rows, :, :, slots]  # (m, h+1, L)
    means, counts = _mean_by_feature(per_slot, features, len(samples.feature_ids))
    present = np.flatnonzero(counts)
    f, h, l_ = np.meshgrid(present, np.arange(len(heads)), np.arange(n_latents), indexing="ij")
    asvs = pd.DataFrame({"latent": l_.ravel() + 1, "head": np.asarray(heads)[h.ravel()],
                         "key": np.asarray(samples.feature_ids, dtype=object)[f.ravel()],
                         "key_type": "ASV", "attention": means[f.ravel(), h.ravel(), l_.ravel()],
                         "n_samples": counts[f.ravel()]})
    token_means = with_mean[..., s_slots:].mean(axis=0)  # (h+1, L, K)
    h, l_, k = np.meshgrid(np.arange(len(heads)), np.arange(n_latents),
                           np.arange(token_means.shape[-1]), indexing="ij")
    tokens = pd.DataFrame({"latent": l_.ravel() + 1, "head": np.asarray(heads)[h.ravel()],
                           "key": np.asarray(token_names(columns), dtype=object)[k.ravel()],
                           "key_type": "metadata token",
                           "attention": token_means[h.ravel(), l_.ravel(), k.ravel()],
                           "n_samples": n})
    return pd.concat([tokens, asvs], ignore_index=True)


def metadata_share(weights: np.ndarray, sample_ids, categorical: dict) -> pd.DataFrame:
    """Per sample: its category values and the share of the Perceiver's attention (heads and
    latents averaged) that goes to metadata tokens rather than ASVs."""
    frame = category_frame(categorical, sample_ids)
    frame["metadata_share"] = weights[..., -(len(categorical) + 1):].sum(axis=-1).mean(axis=(1, 2))
    return frame


def history_frame(history: list[dict]) -> pd.DataFrame:
    """The per-epoch training history as a table indexed by epoch."""
    if not history:
        raise ValueError("This model has no training history (it was saved without one).")
    return pd.DataFrame(history).set_index("epoch").sort_index()


def regression_accuracy(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE, R² (scikit-learn's; NaN when the observed values do not vary) and n of
    predictions against observed values."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    varies = len(observed) > 1 and observed.min() < observed.max()
    return {"n": len(observed), "mae": float(mean_absolute_error(observed, predicted)),
            "rmse": float(np.sqrt(mean_squared_error(observed, predicted))),
            "r2": float(r2_score(observed, predicted)) if varies else float("nan")}


def confusion(observed, predicted, classes) -> pd.DataFrame:
    """Counts of (observed class, predicted class); rows observed, columns predicted.

    Observed labels that the model does not know get their own rows.
    """
    observed = pd.Categorical(np.asarray(observed, dtype=str),
                              categories=list(classes) + sorted(set(map(str, observed))
                                                                - set(classes)))
    predicted = pd.Categorical(np.asarray(predicted, dtype=str), categories=list(classes))
    table = pd.crosstab(observed, predicted, dropna=False)
    table.index.name, table.columns.name = "observed", "predicted"
    return table


def conditioning_change(plain: np.ndarray, patched: np.ndarray, transform, groups,
                        point: int) -> np.ndarray:
    """``(n, S, C, V)``: how far each patched prediction lies from the sample's own.

    ``plain`` ``(n, O)`` and ``patched`` ``(n, S, C, V, O)``: the model's outputs
    (``AAMModel.conditioning_response``). Regressors (``transform``: the target's,
    ``groups`` each sample's group for it): the absolute change of output ``point`` in
    the target's units. Classifiers (``transform`` ``None``; outputs already class
    probabilities): the total variation between the probability vectors. NaN stays NaN.
    """
    if transform is None:
        return 0.5 * np.abs(patched - plain[:, None, None, None]).sum(-1)
    n = patched.shape[0]
    flat = patched[..., point].reshape(n, -1)
    per_value = np.repeat(groups, flat.shape[1]) if groups is not None else None
    values = transform.inverse(flat.ravel(), per_value).reshape(patched.shape[:-1])
    return np.abs(values - transform.inverse(plain[:, point], groups)[:, None, None, None])
