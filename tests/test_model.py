"""The model (``core/model.py``): output shapes, each distinct ASV encoded once, padding and
slot order that never change the output. Its settings (``ModelConfig``) are checked in
``test_model_config.py``."""
import numpy as np
import torch

from q2_aam.core.tokenizer import PAD, tokenize

from conftest import batch_of, small_model


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
