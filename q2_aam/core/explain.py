"""Attribution: what a trained model reads, from its gates, attention and response.

The per-ASV response to metadata (:func:`conditioning_response`, from the model's
:func:`slot_responses`) is the attribution q2-aam stands behind; attention and gates are
shown beside it. The tables are plain numpy/pandas on the arrays of
:func:`q2_aam.core.predict.model_outputs` and of the response; the visualizers draw them
and offer them as TSV, so every number on a plot is one a user can download. Shapes: ``n``
samples, ``h`` heads, ``S`` ASV slots (slot ``j`` of sample ``i`` is its ``j``-th most
abundant ASV), ``K`` metadata tokens (one per column, then the null token), ``L`` latents.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .bundle import ModelBundle
from .data import AmpliconSamples
from .model import AAMModel
from .options import DEFAULT_DEVICE, DEFAULT_MATCH_IDENTITY, RESPONSE_BATCH_SIZE
from .predict import batches, regressor_transform
from .progress import stderr

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


@torch.no_grad()
def slot_responses(model: AAMModel, batch: dict, asv_embeddings: torch.Tensor,
                   max_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions with one ASV slot alone conditioned on another value of a column.

    For every slot ``s``, column ``c`` and known value ``v`` (index 1 and up;
    0 is *unknown*), the cross-attention output of slot ``s`` is taken from a
    pass in which column ``c`` is ``v``; every other slot, and everything
    after the fusion (FiLM, output scaling), keeps the sample's own metadata.
    So the change from the plain prediction is what conditioning *that* ASV
    on ``v`` does to the output: an attribution, unlike the attention
    weights, which also move for ASVs the prediction does not read.

    Returns the plain outputs ``(B, n_outputs)`` and the patched ones
    ``(B, S, C, V, n_outputs)`` (``V`` the largest cardinality), NaN for
    padded slots, for ``v`` equal to the sample's own value and past a
    column's cardinality.
    """
    if model.cross_attention is None:
        raise ValueError("slot_responses needs a model trained with "
                         "categorical_fusion='cross-attention'.")
    mask, categories = batch["asv_mask"], batch.get("categories")
    context = model.context(batch)
    x, _ = model.sample_encoder(asv_embeddings, batch["asv_index"], mask, batch["abundance"])
    x = model.slots(x, context)
    fused, _ = model.cross_attention(x, context.tokens)
    plain = model.head_output(fused, context)["prediction"]
    conditional = model.readout is not None and model.readout.conditional is not None
    if conditional:  # the readout's share of the response
        level = batch["abundance"][..., 2].to(context.offset.dtype) * mask
        own = model.readout.conditional_terms(level, batch["asv_vocab"], categories)
    (n, width, _), cards = fused.shape, model.config.categorical_cardinalities
    patched = plain.new_full((n, width, len(cards), max(cards), plain.shape[1]), float("nan"))
    pairs = mask.nonzero()  # (P, 2): the (sample, slot) pairs that hold an ASV
    for c, card in enumerate(cards):
        for v in range(1, card):
            other = categories.clone()
            other[:, c] = v
            alt, _ = model.cross_attention(x, model.categories.tokens(other))
            todo = pairs[categories[pairs[:, 0], c] != v]  # the sample's own value: NaN
            for start in range(0, len(todo), max_rows):
                b, j = todo[start:start + max_rows].unbind(1)
                # Held slots come first, so the chunk's samples need only their longest
                # length, not the batch's: no work on padding.
                w = int(mask[b].sum(1).max())
                rows = fused[b, :w]  # (k, w, D): the sample's slots, slot j from alt
                rows[torch.arange(len(b)), j] = alt[b, j]
                shifted = None if context.offset is None else context.offset[b]
                if conditional:  # slot j's term under value v
                    swapped = model.readout.conditional_terms(
                        level[b, j][:, None], batch["asv_vocab"][b, j][:, None],
                        other[b])[:, 0]
                    shifted = shifted - own[b, j] + swapped
                patched[b, j, c, v] = model.head_output(
                    rows, context.rows(b, w, shifted))["prediction"]
    patched[~mask] = float("nan")
    return plain, patched


def conditioning_response(bundle: ModelBundle, samples: AmpliconSamples, *,
                          categorical: dict, normalize_groups: Sequence | None = None,
                          batch_size: int = RESPONSE_BATCH_SIZE, device: str = DEFAULT_DEVICE,
                          match_identity: float = DEFAULT_MATCH_IDENTITY,
                          log: Callable[[str], None] = stderr) -> np.ndarray:
    """How much each ASV's conditioning moves each sample's prediction, per column.

    ``(n_samples, token_limit, C)``: for sample ``i``, ASV slot ``j`` and
    conditioning column ``c``, the change in the prediction when that ASV alone
    is conditioned on another value of ``c`` (every other ASV, and the rest of
    the model, keep the sample's metadata), averaged over the column's other
    values seen in training. Regressors: the absolute change in the target's
    units; classifiers: the total variation between the class probabilities
    (0 to 1). NaN for empty slots. Only for cross-attention models (see
    :func:`slot_responses`).
    """
    if bundle.model_config.get("categorical_fusion") != "cross-attention" or not \
            bundle.target.get("categorical", {}).get("columns"):
        raise ValueError("The per-ASV response to metadata needs a model trained with "
                         "--p-categorical-columns and --p-categorical-fusion cross-attention.")
    transform = regressor_transform(bundle, normalize_groups)
    if transform is not None and transform.uses_groups:  # unseen groups: said once, here
        transform.inverse(np.zeros(len(samples)), normalize_groups, warn=log)
    point = bundle.target.get("point_output", 0)
    result = np.full((len(samples), samples.token_limit,
                      len(bundle.target["categorical"]["columns"])), np.nan)
    for model, batch, embeddings, rows in batches(bundle, samples, batch_size, device,
                                                  categorical, match_identity, log):
        plain, patched = (t.double().cpu() for t in slot_responses(model, batch,
                                                                       embeddings))
        if transform is None:  # classifiers: class probabilities
            plain, patched = plain.softmax(-1), patched.softmax(-1)
        groups = (None if transform is None or not transform.uses_groups else
                  np.asarray(normalize_groups, dtype=object)[rows])
        change = conditioning_change(plain.numpy(), patched.numpy(), transform, groups, point)
        with warnings.catch_warnings():  # a slot or column with no other value stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            result[rows, :patched.shape[1]] = np.nanmean(change, axis=-1)  # over other values
    return result


def mean_attention(attention: dict) -> dict:
    """The mean attention of a pass over batches, one matrix per kind, from the per-batch
    sums ``engine.evaluate`` collects (slots padded to the widest batch)."""
    out = {}
    if "cross_attention" in attention:  # slots differ in width between batches
        width = max(w.shape[0] for w, _ in attention["cross_attention"])
        total = torch.zeros(width, attention["cross_attention"][0][0].shape[1])
        count = torch.zeros(width)
        for w, c in attention["cross_attention"]:
            total[: w.shape[0]] += w
            count[: c.shape[0]] += c
        out["cross_attention"] = (total / count.clamp(min=1)[:, None]).numpy()
    if "perceiver" in attention:  # latents x [ASV slots (padded to the widest) ; tokens]
        width = max(s.shape[1] for s, _, _ in attention["perceiver"])
        total = sum(torch.cat([F.pad(s, (0, width - s.shape[1])), m], dim=1)
                    for s, m, _ in attention["perceiver"])
        out["perceiver"] = (total / sum(n for _, _, n in attention["perceiver"])).numpy()
    return out
