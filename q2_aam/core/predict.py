"""Inference: a saved model's outputs for new samples.

Each distinct ASV of the table is encoded once (:func:`embed_features`), new ASVs are read
as their nearest training-vocabulary sequence (``vocabulary``), samples go through the
model in batches of similar length (:func:`batches`), and :func:`model_outputs` keeps the
outputs asked for; :func:`predict` turns them into the target's units or class names.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bundle import ModelBundle
from .data import AmpliconSamples, BatchCollator, encode_categories, sample_tokens
from .model import AAMModel
from .options import DEFAULT_DEVICE, DEFAULT_MATCH_IDENTITY, PREDICT_BATCH_SIZE
from .parallel import make_accelerator
from .progress import stderr
from .targets import TargetTransform
from .vocabulary import Vocabulary


@torch.no_grad()
def embed_features(model: AAMModel, tokens: np.ndarray, features: np.ndarray,
                   device, chunk: int = 512, tick=None) -> torch.Tensor:
    """``(n_features, D)`` embeddings of the given feature rows of ``tokens``, computed once
    (``tick(message)`` after each chunk)."""
    was_training = model.training
    model.eval()
    table = torch.zeros(tokens.shape[0], model.config.embedding_dim, device=device)
    lengths = (tokens != 0).sum(axis=1)
    order = features[np.argsort(lengths[features], kind="stable")]  # similar lengths together
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        width = int(lengths[rows].max())
        batch = torch.as_tensor(tokens[rows, :width].astype(np.int64), device=device)
        table[torch.as_tensor(rows, device=device)] = model.encode_asvs(batch)
        if tick is not None:
            tick(f"Frozen encoder: {min(start + chunk, len(order))} of {len(order)} ASV "
                 "sequences encoded.")
    model.train(was_training)
    return table



@torch.no_grad()
def predict_raw(bundle: ModelBundle, samples: AmpliconSamples, *,
                batch_size: int = PREDICT_BATCH_SIZE, device: str = DEFAULT_DEVICE,
                categorical: dict | None = None, match_identity: float = DEFAULT_MATCH_IDENTITY,
                log: Callable[[str], None] = stderr) -> np.ndarray:
    """The model's raw outputs ``(n, n_outputs)`` (transformed scale / logits).

    Each distinct ASV is encoded once for the whole table. ``categorical``:
    ``{column: per-sample values}`` for a model conditioned on metadata.
    ``match_identity``: a sequence outside the training vocabulary reads the identity and
    readout coefficients of its nearest vocabulary sequence at this alignment identity or
    more (1: exact sequences only; see ``vocabulary``).
    """
    outputs = model_outputs(bundle, samples, batch_size=batch_size, device=device,
                            categorical=categorical, match_identity=match_identity, log=log,
                            keys=("prediction",))
    return outputs["prediction"]


def vocabulary_match(bundle: ModelBundle, samples: AmpliconSamples,
                     match_identity: float = DEFAULT_MATCH_IDENTITY, log=None):
    """Where the samples' features sit in the model's training vocabulary (a
    ``vocabulary.VocabularyMatch``; ``None`` for a model without one)."""
    if not 0 < match_identity <= 1:
        raise ValueError(f"match_identity must be in (0, 1], got {match_identity}; 1 reads "
                         "only the vocabulary's own sequences as known.")
    vocabulary = Vocabulary.from_target(bundle.target)
    if vocabulary is None:
        return None
    if vocabulary.sequences is None and match_identity < 1 and log is not None:
        log("This model was saved by an earlier q2-aam without its vocabulary's "
            "sequences, so ASVs it never saw are not matched to similar ones; train it "
            "again to have them matched.")
    return vocabulary.match(samples.sequences, match_identity, log=log)


def read_shares(bundle: ModelBundle, samples: AmpliconSamples,
                match_identity: float = DEFAULT_MATCH_IDENTITY) -> dict | None:
    """Per sample, the shares of the reads the model reads (``samples``' kept ASVs) in the
    training vocabulary, in new ASVs read as a vocabulary neighbour and in new ASVs with
    none (``VocabularyMatch.read_shares``); ``None`` for a model without a vocabulary."""
    match = vocabulary_match(bundle, samples, match_identity)
    return None if match is None else match.read_shares(samples.kept_counts())


def batches(bundle: ModelBundle, samples: AmpliconSamples, batch_size: int, device: str,
             categorical: dict | None, match_identity: float, log: Callable[[str], None]):
    """``(model, batch, asv_embeddings, rows)`` for batches of ``samples`` (``rows``: which
    samples, by position), each distinct ASV encoded once; the metadata encoded with the
    model's vocabularies; new ASVs matched to the training vocabulary, and how much of
    the table that concerns said.

    Batches hold samples of similar length (samples ordered by their number of ASVs), so
    that padding slots cost almost nothing: in random batches of 8 to 16 ECAM or karelia
    samples, about half of all slots were padding. The outputs of a sample do not depend
    on its batch (padding is masked out), so callers put them back in place by ``rows``.
    """
    match = vocabulary_match(bundle, samples, match_identity, log=log)
    if match is not None:
        report_new_asvs(match, samples, log)
    accelerator = make_accelerator(device)
    model = bundle.build_model().to(accelerator.device)
    tokens = sample_tokens(samples, max_length=model.config.max_sequence_length, log=log)
    table = embed_features(model, tokens, np.unique(samples.indices), accelerator.device)
    cats = None
    vocabularies = bundle.target.get("categorical", {}).get("vocabularies")
    if vocabularies:
        if categorical is None:
            raise ValueError(f"This model is conditioned on the metadata column(s) "
                             f"{list(vocabularies)}; pass the sample metadata holding them.")
        cats = encode_categories(categorical, vocabularies, warn=log)
    collator = BatchCollator(samples, tokens, categories=cats,
                             vocabulary=None if match is None else match.rows)
    order = np.argsort(np.diff(samples.indptr), kind="stable")
    for start in range(0, len(samples), batch_size):
        rows = order[start:start + batch_size]
        batch = collator(rows)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        yield model, batch, table[batch["asv_feature"]], rows


#: ``predict`` warns when more than this share of the reads is in ASVs outside the
#: training vocabulary.
NEW_READS_WARNING = 0.25


def report_new_asvs(match, samples: AmpliconSamples, log: Callable[[str], None]) -> None:
    """Say how much of the reads the model reads are in ASVs outside its training
    vocabulary and how they are read; warn above ``NEW_READS_WARNING``."""
    counts = samples.kept_counts()
    per_sample = match.read_shares(counts)
    reads = np.asarray(counts.sum(axis=1)).ravel()
    overall = {name: float(share @ reads) / max(float(reads.sum()), 1e-300)
               for name, share in per_sample.items()}
    new = per_sample["neighbour"] + per_sample["unmatched"]
    share = overall["neighbour"] + overall["unmatched"]
    how = (f"{overall['neighbour']:.1%} are read as their nearest vocabulary ASV (alignment "
           f"identity {match.min_identity:.0%} or more) and {overall['unmatched']:.1%}"
           if match.min_identity < 1 else
           f"with matching off (match identity 1), all {overall['unmatched']:.1%} are read")
    log(f"New ASVs: {share:.1%} of the reads (per sample: median {np.median(new):.1%}, "
        f"max {new.max():.1%}) are in ASVs outside the model's training vocabulary; "
        f"{how} by the sequence network alone.")
    if share > NEW_READS_WARNING:
        log(f"Warning: {share:.0%} of the reads are in ASVs this model did not learn "
            "(another denoising run, trimming, primer pair or study?), so its predictions "
            "extrapolate. Check them on samples with known values (qiime aam accuracy "
            "lists each sample's share), or train on data processed like these samples.")


def regressor_transform(bundle: ModelBundle, normalize_groups) -> TargetTransform | None:
    """A regressor's target transform (``None`` for a classifier), refusing a missing
    ``normalize_groups`` where the transform needs them."""
    if bundle.kind != "regressor":
        return None
    transform = TargetTransform.from_dict(bundle.target["transform"])
    if transform.uses_groups and normalize_groups is None:
        raise ValueError(f"This model z-scores its target within groups of "
                         f"{bundle.target.get('normalize_by')}; pass each sample's values "
                         "of these columns.")
    return transform


@torch.no_grad()
def model_outputs(bundle: ModelBundle, samples: AmpliconSamples, *,
                  batch_size: int = PREDICT_BATCH_SIZE, device: str = DEFAULT_DEVICE,
                  categorical: dict | None = None, match_identity: float = DEFAULT_MATCH_IDENTITY,
                  log: Callable[[str], None] = stderr, keys: Sequence | None = None) -> dict:
    """Every per-sample output of the model (or those named in ``keys``): ``prediction``,
    ``sample_embedding``, and, by fusion mode, ``gmu_gate`` ``(n, D)``,
    ``cross_attention`` ``(n, heads, S, K)`` or ``perceiver_attention``
    ``(n, heads, latents, S + K)`` (ASV slots padded to the token limit; slot ``j`` of
    sample ``i`` is its ``j``-th most abundant ASV). Only these are kept from batch to
    batch, so memory beyond the table grows with the samples by the outputs' size."""
    if bundle.kind == "encoder":
        raise ValueError("This model is a pretrained encoder; it predicts nothing. Train a "
                         "regressor or classifier from it with 'train'.")
    per_batch: dict = {}
    order = []
    width = samples.token_limit
    for model, batch, embeddings, rows in batches(bundle, samples, batch_size, device,
                                                   categorical, match_identity, log):
        order.append(rows)
        out = model(batch, asv_embeddings=embeddings)
        for key in keys or ("prediction", "sample_embedding", "gmu_gate", "cross_attention",
                            "perceiver_attention"):
            if key not in out:
                continue
            value = out[key].float().cpu()
            if key == "cross_attention":  # pad the ASV axis to the token limit
                value = F.pad(value, (0, 0, 0, width - value.shape[2]))
            elif key == "perceiver_attention":  # keys: S slots then K metadata tokens
                s_slots = batch["asv_mask"].shape[1]
                value = torch.cat([F.pad(value[..., :s_slots], (0, width - s_slots)),
                                   value[..., s_slots:]], dim=-1)
            per_batch.setdefault(key, []).append(value)
    place = np.argsort(np.concatenate(order))  # batch order -> sample order
    return {k: torch.cat(v).numpy()[place] for k, v in per_batch.items()}


def predict(bundle: ModelBundle, samples: AmpliconSamples, *,
            normalize_groups: Sequence | None = None, **kwargs) -> np.ndarray:
    """Predictions in the target's original units (regression) or class names.

    ``kwargs``: ``batch_size``, ``device``, ``categorical``, ``match_identity``, ``log`` (see
    :func:`predict_raw`).

    ``normalize_groups``: each sample's group label, for a model trained with
    the ``zscore-category`` transform (groups unseen in training use the
    global statistics, with a warning naming them).
    """
    transform = regressor_transform(bundle, normalize_groups)
    raw = predict_raw(bundle, samples, **kwargs)
    if transform is not None:
        point = bundle.target.get("point_output", 0)
        return transform.inverse(raw[:, point], normalize_groups if transform.uses_groups
                                 else None, warn=kwargs.get("log", stderr))
    classes = np.asarray(bundle.target["classes"], dtype=object)
    return classes[raw.argmax(axis=1)]
