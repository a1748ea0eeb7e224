"""Unit tests of the torch core: tokenizer, batches, model, losses, schedule, bundle."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle, validate_directory
from q2_aam.core.data import AmpliconSamples, BatchCollator
from q2_aam.core.engine import Objective, TrainConfig, lr_factor, parameter_groups
from q2_aam.core.losses import mask_nucleotides, pairwise_unifrac_loss
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.targets import TargetTransform
from q2_aam.core.tokenizer import MASK, N, PAD, is_dna, tokenize

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = SMALL_ARCHITECTURE


def small_model(task="regression", n_outputs=1, seed=0):
    torch.manual_seed(seed)
    return AAMModel(ModelConfig(task=task, n_outputs=n_outputs, **SMALL)).eval()


def batch_of(samples, rows, targets=None):
    tokens = tokenize(samples.sequences).tokens
    return BatchCollator(samples, tokens, targets)(rows)


# --- tokenizer -------------------------------------------------------------------------

def test_tokenize_maps_nucleotides_and_pads():
    t = tokenize(["ACGT", "ac"])
    assert t.tokens.tolist() == [[1, 2, 3, 4], [1, 2, PAD, PAD]]
    assert t.lengths.tolist() == [4, 2]


def test_ambiguity_codes_become_n_not_padding():
    t = tokenize(["ACNRY"])
    assert t.tokens[0].tolist() == [1, 2, N, N, N]
    assert t.n_ambiguous == 1


@pytest.mark.parametrize("bad", ["AC-GT", "ACGU", "AC GT", "ACG1"])
def test_non_dna_characters_are_refused_with_the_feature_name(bad):
    with pytest.raises(ValueError, match="feature 'asv7'"):
        tokenize([bad], names=["asv7"])


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="at most 3 nt"):
        tokenize(["ACGT"], max_length=3)


def test_is_dna():
    assert is_dna("ACGTN")
    assert not is_dna("f1a2b3")
    assert not is_dna("")


# --- samples and batches ---------------------------------------------------------------

def test_token_limit_keeps_most_abundant_ties_by_sequence():
    counts = np.array([[5, 9, 5, 1]])
    seqs = ["GGGG", "AAAA", "CCCC", "TTTT"]
    s = AmpliconSamples.from_counts(counts, ["s"], list("abcd"), seqs, token_limit=3)
    idx, cnt = s.sample(0)
    assert cnt.tolist() == [9, 5, 5]
    assert [seqs[i] for i in idx] == ["AAAA", "CCCC", "GGGG"]  # tie broken by sequence
    # Column order does not change which ASVs are kept.
    perm = [3, 2, 1, 0]
    s2 = AmpliconSamples.from_counts(counts[:, perm], ["s"], list("dcba"),
                                     [seqs[i] for i in perm], token_limit=3)
    assert [s2.sequences[i] for i in s2.sample(0)[0]] == ["AAAA", "CCCC", "GGGG"]
    assert s.totals[0] == 20  # relative abundance uses all reads


def test_empty_sample_is_refused_by_name():
    with pytest.raises(ValueError, match="no reads.*'b'"):
        AmpliconSamples.from_counts(np.array([[1, 0], [0, 0]]), ["a", "b"], ["x", "y"],
                                    ["AC", "GT"], 4)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        AmpliconSamples.from_counts(np.array([[1, -1]]), ["a"], ["x", "y"], ["AC", "GT"], 4)


def test_batch_holds_each_distinct_asv_once(samples):
    batch = batch_of(samples, [0, 1, 2, 3])
    features = batch["asv_feature"].tolist()
    assert len(features) == len(set(features))
    # Every real slot points at the right feature.
    for b, r in enumerate([0, 1, 2, 3]):
        idx, _ = samples.sample(r)
        got = batch["asv_feature"][batch["asv_index"][b, : len(idx)]].tolist()
        assert got == idx.tolist()
        assert batch["asv_mask"][b].sum() == len(idx)


# --- model -----------------------------------------------------------------------------

def test_output_shapes(samples):
    model = small_model()
    batch = batch_of(samples, [0, 1, 2])
    out = model(batch, mlm_tokens=batch["asv_tokens"])
    u, length = batch["asv_tokens"].shape
    assert out["prediction"].shape == (3, 1)
    assert out["sample_embedding"].shape == (3, 16)
    assert out["mlm_logits"].shape == (u, length, 5)


def test_dedup_equals_encoding_every_slot(samples):
    """Encoding unique ASVs and gathering gives what encoding every slot gives."""
    model = small_model()
    batch = batch_of(samples, [0, 1, 2, 3])
    dedup = model(batch)["prediction"]
    slots = batch["asv_index"][batch["asv_mask"]]
    per_slot_tokens = batch["asv_tokens"][slots]  # one row per slot, duplicates included
    per_slot = model.encode_asvs(per_slot_tokens)
    table = torch.zeros(int(batch["asv_mask"].sum()), 16)
    table[:] = per_slot
    flat_index = torch.zeros_like(batch["asv_index"])
    flat_index[batch["asv_mask"]] = torch.arange(len(slots))
    full = model({**batch, "asv_index": flat_index}, asv_embeddings=table)["prediction"]
    torch.testing.assert_close(dedup, full, atol=1e-5, rtol=1e-5)


def test_padding_never_changes_the_output(samples):
    model = small_model()
    alone = model(batch_of(samples, [0]))["prediction"]
    # In a batch with larger samples, sample 0 is padded (ASV slots and nucleotides).
    together = model(batch_of(samples, [0] + list(range(1, 10))))["prediction"][:1]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


def test_nucleotide_padding_does_not_change_asv_embedding():
    model = small_model()
    t = torch.as_tensor(tokenize(["ACGTACGTA"]).tokens.astype(np.int64))
    padded = torch.nn.functional.pad(t, (0, 13), value=PAD)
    torch.testing.assert_close(model.encode_asvs(t), model.encode_asvs(padded),
                               atol=1e-5, rtol=1e-5)


def test_sample_encoder_ignores_slot_order(samples):
    model = small_model()
    batch = batch_of(samples, [4])
    n = int(batch["asv_mask"].sum())
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shuffled = dict(batch)
    shuffled["asv_index"] = batch["asv_index"][:, perm]
    shuffled["abundance"] = batch["abundance"][:, perm]
    torch.testing.assert_close(model(batch)["prediction"], model(shuffled)["prediction"],
                               atol=1e-5, rtol=1e-5)


def test_config_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(embedding_dim=30, attention_heads=4)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="newer"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "warp_drive": 1})


# --- losses and schedule ---------------------------------------------------------------

def test_unifrac_loss_is_zero_when_distances_match():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    dist = torch.cdist(emb, emb)
    assert float(pairwise_unifrac_loss(emb, dist)) < 1e-10
    assert float(pairwise_unifrac_loss(emb, dist + 1)) == pytest.approx(1.0)


def test_masking_only_touches_real_nucleotides():
    tokens = torch.tensor([[1, 2, 3, 4, 0, 0]] * 50)
    masked, labels = mask_nucleotides(tokens, 0.5, torch.Generator().manual_seed(0))
    assert (masked[:, 4:] == PAD).all()
    chosen = labels != -100
    assert (masked[chosen] == MASK).all()
    assert (labels[chosen] == tokens[chosen] - 1).all()
    assert 0.3 < chosen[:, :4].float().mean() < 0.7


def test_schedule_warms_up_then_decays_within_the_run():
    total = 100
    f = [lr_factor(s, total, 0.1) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=0.01)


def test_scheduler_steps_once_per_optimizer_step(samples):
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, warmup_fraction=0.5,
                         device="cpu")
    model = small_model()
    tokens = tokenize(samples.sequences).tokens
    y = np.linspace(0, 1, len(samples)).astype(np.float32)
    from q2_aam.core.engine import fit
    history = fit(model, BatchCollator(samples, tokens, y), None,
                  Objective(task="regression"), config, log=lambda m: None)
    steps = 2 * int(np.ceil(len(samples) / 4))
    assert history[-1]["lr"] == pytest.approx(1e-2 * lr_factor(steps, steps, 0.5))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = small_model()
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") for p in decay["params"])
    assert any("embed" in names[id(p)] for p in no_decay["params"])


def test_zscore_round_trip():
    y = np.array([3.0, 10.0, 40.0])
    t = TargetTransform("zscore").fit(y)
    np.testing.assert_allclose(t.inverse(t.transform(y)), y)
    np.testing.assert_allclose(t.transform(y).mean(), 0, atol=1e-12)


# --- training, determinism, bundle -----------------------------------------------------

def tiny_train(samples, seed=0, **kwargs):
    y = np.array([float(samples.sample(i)[1][0]) for i in range(len(samples))])
    return api.train(samples, y, task="regression", architecture=dict(SMALL),
                     config=TrainConfig(epochs=2, batch_size=4, seed=seed, device="cpu"),
                     log=lambda m: None, **kwargs), y


def test_same_seed_same_model(samples):
    a, _ = tiny_train(samples, seed=3)
    b, _ = tiny_train(samples, seed=3)
    c, _ = tiny_train(samples, seed=4)
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=0, atol=0)
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_saved_model_predicts_the_same(samples, tmp_path):
    bundle, y = tiny_train(samples)
    before = api.predict(bundle, samples, log=lambda m: None)
    bundle.save(tmp_path / "m")
    after = api.predict(ModelBundle.load(tmp_path / "m"), samples, log=lambda m: None)
    np.testing.assert_array_equal(before, after)
    # Predictions are in original units (the target's scale, not z-scores).
    assert abs(before.mean() - y.mean()) < 3 * y.std()


def test_tampered_weights_are_refused(samples, tmp_path):
    bundle, _ = tiny_train(samples)
    bundle.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        validate_directory(tmp_path / "m")


def test_malformed_config_is_refused(samples, tmp_path):
    bundle, _ = tiny_train(samples)
    bundle.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        validate_directory(tmp_path / "m")
    config.write_text(json.dumps({"kind": "regressor"}))
    with pytest.raises(ValueError, match="lacks"):
        validate_directory(tmp_path / "m")


@pytest.mark.parametrize("use", ["predict", "pretrained"])
def test_edited_config_is_refused_naming_the_model_and_the_setting(samples, tmp_path, use):
    from q2_aam.core.bundle import ModelBundle
    config = TrainConfig(epochs=1, batch_size=4, device="cpu")
    if use == "predict":
        bundle, _ = tiny_train(samples)
    else:
        d = np.zeros((len(samples), len(samples)))
        bundle = api.pretrain(samples, d, architecture=dict(SMALL), config=config,
                              log=lambda m: None)
    bundle.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    values = json.loads(path.read_text())
    values["model"]["embedding_dim"] *= 2
    path.write_text(json.dumps(values))
    edited = ModelBundle.load(tmp_path / "m")
    with pytest.raises(ValueError, match=r"The weights of .*m do not match its config.json: "
                       r".* is \(.*\) in model.safetensors but .* Check .*embedding_dim"):
        if use == "predict":
            api.predict(edited, samples, log=lambda m: None)
        else:
            api.train(samples, np.linspace(0, 1, len(samples)), task="regression",
                      pretrained=edited, config=config, log=lambda m: None)


def test_pretrain_then_train_frozen_classifier(samples):
    d = np.random.default_rng(0).random((len(samples), len(samples)))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    config = TrainConfig(epochs=1, batch_size=4, device="cpu")
    enc = api.pretrain(samples, d, architecture=dict(SMALL), config=config, log=lambda m: None)
    assert enc.kind == "encoder" and enc.training["history"]
    labels = np.array(["a", "b"] * (len(samples) // 2))
    clf = api.train(samples, labels, task="classification", pretrained=enc,
                    freeze_encoder=True, config=config, log=lambda m: None)
    # Frozen: encoder weights unchanged.
    for k, v in enc.state_dict.items():
        if k.startswith("nucleotide_encoder."):
            torch.testing.assert_close(clf.state_dict[k], v, rtol=0, atol=0)
    assert set(api.predict(clf, samples, log=lambda m: None)) <= {"a", "b"}


def test_predict_reads_unseen_asvs(samples):
    bundle, _ = tiny_train(samples)
    other = random_samples(n_samples=4, seed=9)  # different sequences
    assert np.isfinite(api.predict(bundle, other, log=lambda m: None)).all()


def test_validation_split_by_group_keeps_groups_whole():
    from q2_aam.core.data import validation_split
    groups = np.repeat(list("abcdefghij"), 5)
    train, val = validation_split(len(groups), 0.2, 0, groups)
    assert not set(groups[train]) & set(groups[val])
    assert len(val) == 10


def test_frozen_encoder_cache_equals_running_the_encoder(samples):
    from q2_aam.core.engine import FrozenEncoderCache
    model = small_model()
    collator = BatchCollator(samples, tokenize(samples.sequences).tokens)
    cache = FrozenEncoderCache(model, collator, "cpu", batch_size=5)
    batch = collator([3, 7, 1])
    direct = model(batch)["prediction"]
    cached = model(batch, encoded=cache(batch))["prediction"]
    torch.testing.assert_close(direct, cached, atol=1e-5, rtol=1e-5)


def test_same_seed_same_model_on_real_data():
    """At real scale (200 ECAM samples sharing ASVs, default architecture), not only on tiny
    synthetic batches: without deterministic algorithms this differed by ~1e-3."""
    from q2_aam._inputs import amplicon_samples
    from q2_aam.example_data import load_dataset
    data = load_dataset("ecam", build_tree=False)
    real = amplicon_samples(data.table, None, 256, sample_ids=list(data.metadata.index[:200]))
    d = np.random.default_rng(0).random((200, 200))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    runs = [api.pretrain(real, d, config=TrainConfig(epochs=1, seed=0, device="cpu"),
                         log=lambda m: None) for _ in range(2)]
    for k in runs[0].state_dict:
        torch.testing.assert_close(runs[0].state_dict[k], runs[1].state_dict[k], rtol=0, atol=0)


def test_response_of_a_group_normalised_regressor_is_in_each_groups_units():
    """zscore-category: the response needs each sample's group, and a sample's response is
    its z-scale change times its group's sd (the inverse transform is linear in z)."""
    from synthetic import position_specific
    samples, y, categorical, _ = position_specific(n_samples=80, seed=0)
    groups = categorical["season"]
    y = y + 50 * (np.array(groups) == "a")  # group 'a' far above 'b'
    bundle = api.train(samples, y, task="regression", target_transform="zscore-category",
                       normalize_groups=groups, normalize_by=["season"],
                       categorical={"site": categorical["site"]},
                       architecture=dict(embedding_dim=16, attention_heads=2,
                                         nucleotide_layers=1, sample_layers=1,
                                         categorical_fusion="cross-attention",
                                         cross_attn_heads=2),
                       config=TrainConfig(epochs=2), log=lambda m: None)
    site = {"site": categorical["site"]}
    with pytest.raises(ValueError, match="pass each sample's values"):
        api.conditioning_response(bundle, samples, categorical=site, log=lambda m: None)
    days = api.conditioning_response(bundle, samples, categorical=site,
                                     normalize_groups=groups, log=lambda m: None)
    transform = TargetTransform.from_dict(bundle.target["transform"])
    z_scale = dataclasses.replace(bundle, target=dict(
        bundle.target, transform=TargetTransform("none").to_dict()))
    raw = api.conditioning_response(z_scale, samples, categorical=site, log=lambda m: None)
    sd = transform.inverse(np.ones(len(y)), groups) - transform.inverse(np.zeros(len(y)),
                                                                        groups)
    said = []
    unseen = ["zz"] + list(groups[1:])  # a group not seen in training: said once, not per batch
    api.conditioning_response(bundle, samples, categorical=site, normalize_groups=unseen,
                              batch_size=8, log=said.append)
    assert sum("not seen in training" in m for m in said) == 1, said
    held = ~np.isnan(days)
    assert held.sum() > 100 and (np.isnan(raw) == ~held).all()
    np.testing.assert_allclose(days[held], (raw * sd[:, None, None])[held], rtol=1e-6)
    assert len(set(np.round(sd, 6))) == 2


def test_a_sequence_longer_than_any_amplicon_is_refused_with_its_length():
    samples = random_samples(n_samples=8)
    sequences = list(samples.sequences)
    sequences[3] = "ACGT" * 3000  # 12,000 nt
    counts = np.ones((8, len(sequences)), dtype=int)
    long = AmpliconSamples.from_counts(counts, samples.sample_ids, list(samples.feature_ids),
                                       sequences, 16)
    with pytest.raises(ValueError, match=r"1 feature sequence\(s\) are longer than the 2000 nt"
                                         r".*'f3' \(12000 nt\).*Trim"):
        api.train(long, np.arange(8.0), task="regression", config=TrainConfig(epochs=1),
                  log=lambda m: None)


def test_deferred_distances_are_computed_once_before_workers_start(monkeypatch):
    """With several processes, a function given as ``distances`` is called once in the
    parent and its matrix handed to the workers (not computed again in each)."""
    from q2_aam.core import launch
    from q2_aam.core.engine import TrainConfig
    calls, handed = [], {}

    def distances():
        calls.append(1)
        return np.zeros((3, 3))

    def fake_workers(action, args, keywords, num_processes):
        handed.update(action=action, processes=num_processes, distances=args[1])
        return "model"
    monkeypatch.setattr(launch, "run_in_workers", fake_workers)
    assert api.pretrain("samples", distances, config=TrainConfig(num_processes=2)) == "model"
    assert calls == [1]
    assert handed["action"] is api.pretrain and handed["processes"] == 2
    assert isinstance(handed["distances"], np.ndarray)
