"""Categorical conditioning: each fusion mode, FiLM and output scaling do what they claim."""
import numpy as np
import pytest
import torch

from q2_aam.core import explain
from q2_aam.core.data import BatchCollator, encode_categories, fit_vocabularies
from q2_aam.core.engine import parameter_groups
from q2_aam.core.options import GMU_VARIANTS
from q2_aam.core.fusion import (CategoricalEmbedding, ConditionalOutputScaling,
                                CrossAttentionFusion, FiLM, GatedMultimodalUnit,
                                PerceiverFusion)
from q2_aam.core.model import AAMModel, ModelConfig
from q2_aam.core.tokenizer import tokenize

from conftest import random_samples

D = 16
CARDS = [3, 4]  # two columns: 2 and 3 values plus 'unknown'
MODES = ["none", "concat", "add", "gmu", "cross-attention", "perceiver"]
VARIANTS = [dict(categorical_fusion=m) for m in MODES] + [
    dict(categorical_fusion="none", film_conditioning=True),
    dict(categorical_fusion="none", conditional_output_scaling=True),
    dict(categorical_fusion="cross-attention", film_conditioning=True,
         conditional_output_scaling=True)]
IDS = [m for m in MODES] + ["film", "scaling", "cross-attention+film+scaling"]


def model_for(cards=CARDS, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = ModelConfig(embedding_dim=D, attention_heads=2, nucleotide_layers=1,
                         sample_layers=1, patch_size=4, max_sequence_length=64, dropout=0.0,
                         task="regression", n_outputs=1, categorical_cardinalities=list(cards),
                         cross_attn_heads=4, perceiver_num_latents=4, perceiver_num_layers=1,
                         **kwargs)
    return AAMModel(config).eval()


def batch_for(rows, categories=None, samples=None):
    samples = samples or random_samples()
    if categories is None:
        categories = np.stack([np.arange(len(samples)) % 3, np.arange(len(samples)) % 4], 1)
    collator = BatchCollator(samples, tokenize(samples.sequences).tokens,
                             categories=categories.astype(np.int64))
    return collator(rows)


# --- every mode ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_output_shape_and_finite(kwargs):
    out = model_for(**kwargs)(batch_for([0, 1, 2]))
    assert out["prediction"].shape == (3, 1) and torch.isfinite(out["prediction"]).all()


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_padding_never_changes_the_output(kwargs):
    model = model_for(**kwargs)
    alone = model(batch_for([0]))["prediction"]
    together = model(batch_for([0, 1, 2, 3, 4, 5, 6, 7]))["prediction"][:1]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_gradients_reach_every_target_branch_parameter(kwargs):
    model = model_for(**kwargs).train()
    # Zero-initialised layers (FiLM, scaling) pass no gradient to what feeds them until they
    # move; nudge them so every parameter is reachable.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "film" in name or "output_scaling" in name:
                p.add_(0.01)
    model(batch_for([0, 1, 2, 3]))["prediction"].sum().backward()
    missing = [n for n, p in model.named_parameters()
               if n.startswith(("categories", "fusion", "cross_attention", "gmu", "perceiver",
                                "target_head", "output_scaling"))
               and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_deterministic(kwargs):
    model = model_for(**kwargs)
    b = batch_for([0, 1, 2])
    torch.testing.assert_close(model(b)["prediction"], model(b)["prediction"], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_all_missing_metadata_gives_finite_outputs(kwargs):
    unknown = np.zeros((12, 2), dtype=np.int64)
    out = model_for(**kwargs)(batch_for([0, 1, 2], categories=unknown))
    for key, value in out.items():
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_zero_categorical_columns_work_with_every_mode(kwargs):
    model = model_for(cards=[], **kwargs)
    samples = random_samples()
    b = BatchCollator(samples, tokenize(samples.sequences).tokens)([0, 1])
    assert torch.isfinite(model(b)["prediction"]).all()
    assert model.categories is None


@pytest.mark.parametrize("kwargs", [v for v in VARIANTS if v["categorical_fusion"] != "none"
                                    or len(v) > 1], ids=IDS[1:])
def test_categories_change_the_prediction(kwargs):
    model = model_for(**kwargs)
    with torch.no_grad():  # move zero-initialised FiLM/scaling off the identity
        for name, p in model.named_parameters():
            if "film" in name or "output_scaling" in name:
                p.normal_(0, 0.5)
    a = model(batch_for([0], categories=np.tile([[1, 1]], (12, 1))))["prediction"]
    b = model(batch_for([0], categories=np.tile([[2, 3]], (12, 1))))["prediction"]
    assert not torch.allclose(a, b)


def test_fusion_without_columns_in_an_encoder_is_refused():
    with pytest.raises(ValueError, match="regressors and classifiers"):
        ModelConfig(task="encoder", categorical_fusion="gmu")


def test_unknown_fusion_mode_is_refused():
    with pytest.raises(ValueError, match="categorical_fusion must be one of"):
        ModelConfig(task="regression", n_outputs=1, categorical_fusion="telepathy")


# --- metadata tokens -------------------------------------------------------------------

def test_one_token_per_column_plus_null():
    emb = CategoricalEmbedding([3, 4, 2], D)
    tokens = emb.tokens(torch.tensor([[1, 2, 0]]))
    assert tokens.shape == (1, 4, D)
    torch.testing.assert_close(tokens[0, -1], emb.null[0])


def test_same_value_index_differs_between_columns():
    emb = CategoricalEmbedding([3, 3], D)
    with torch.no_grad():
        emb.values[1].weight.copy_(emb.values[0].weight)
    t = emb.tokens(torch.tensor([[1, 1]]))
    assert not torch.allclose(t[0, 0], t[0, 1])


def test_vocabularies_and_unseen_values():
    cols = {"country": ["FIN", "EST", None, "RUS"], "delivery": ["v", "c", "v", "c"]}
    vocab = fit_vocabularies(cols, [0, 1, 2])  # RUS only outside the training rows
    assert vocab == {"country": ["EST", "FIN"], "delivery": ["c", "v"]}
    said = []
    idx = encode_categories(cols, vocab, warn=said.append)
    assert idx.tolist() == [[2, 2], [1, 1], [0, 2], [0, 1]]
    assert len(said) == 1 and "'country'" in said[0] and "RUS" in said[0]


def test_missing_conditioning_column_is_refused():
    with pytest.raises(ValueError, match="lacks"):
        encode_categories({"a": ["x"]}, {"a": ["x"], "b": ["y"]})


# --- GMU -------------------------------------------------------------------------------

@pytest.fixture
def hc():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)


@pytest.mark.parametrize("variant", GMU_VARIANTS)
def test_gmu_returns_gates_in_unit_interval(variant, hc):
    out, z = GatedMultimodalUnit(D, variant)(*hc)
    assert out.shape == z.shape == (5, D)
    assert (z > 0).all() and (z < 1).all()


def test_gmu_canonical_formula(hc):
    gmu = GatedMultimodalUnit(D, "canonical")
    h, c = hc
    out, z = gmu(h, c)
    expected = z * torch.tanh(gmu.sequence(h)) + (1 - z) * torch.tanh(gmu.metadata(c))
    torch.testing.assert_close(out, expected)


def _force_gate(gmu, value):
    with torch.no_grad():
        gmu.gate.weight.zero_()
        gmu.gate.bias.fill_(value)


def test_gmu_sequence_branch_alone_when_gate_open(hc):
    gmu = GatedMultimodalUnit(D, "canonical")
    _force_gate(gmu, 50.0)  # z = 1: only the sequence branch
    h, c = hc
    out, _ = gmu(h, c)
    torch.testing.assert_close(out, torch.tanh(gmu.sequence(h)))
    torch.testing.assert_close(out, gmu(h, torch.randn_like(c))[0])  # metadata ignored


def test_gmu_metadata_branch_alone_when_gate_closed(hc):
    gmu = GatedMultimodalUnit(D, "canonical")
    _force_gate(gmu, -50.0)  # z = 0: only the metadata branch
    h, c = hc
    out, _ = gmu(h, c)
    torch.testing.assert_close(out, torch.tanh(gmu.metadata(c)))
    torch.testing.assert_close(out, gmu(torch.randn_like(h), c)[0])  # sequence ignored


def test_gmu_branches_use_their_own_weights(hc):
    """Changing the metadata weights changes only the metadata branch."""
    gmu = GatedMultimodalUnit(D, "canonical")
    _force_gate(gmu, 50.0)
    h, c = hc
    before = gmu(h, c)[0]
    with torch.no_grad():
        gmu.metadata.weight.add_(1.0)
    torch.testing.assert_close(gmu(h, c)[0], before)  # sequence-only output unchanged
    _force_gate(gmu, -50.0)
    with torch.no_grad():
        gmu.sequence.weight.add_(1.0)
    torch.testing.assert_close(gmu(h, c)[0], torch.tanh(gmu.metadata(c)))


def test_gmu_residual_is_identity_when_gate_closed(hc):
    gmu = GatedMultimodalUnit(D, "residual")
    _force_gate(gmu, -50.0)
    h, c = hc
    torch.testing.assert_close(gmu(h, c)[0], h, atol=1e-6, rtol=0)


def test_gmu_residual_formula(hc):
    gmu = GatedMultimodalUnit(D, "residual")
    h, c = hc
    out, z = gmu(h, c)
    torch.testing.assert_close(out, h + z * torch.tanh(gmu.metadata(c)))


def test_gmu_gate_depends_on_both_inputs(hc):
    gmu = GatedMultimodalUnit(D)
    h, c = hc
    z = gmu(h, c)[1]
    assert not torch.allclose(z, gmu(h + 1, c)[1])
    assert not torch.allclose(z, gmu(h, c + 1)[1])


def test_gmu_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        GatedMultimodalUnit(D, "sideways")


def test_model_returns_gmu_gates():
    out = model_for(categorical_fusion="gmu")(batch_for([0, 1]))
    assert out["gmu_gate"].shape == (2, D)


# --- cross-attention -------------------------------------------------------------------

@pytest.fixture
def xattn_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, D, generator=g)
    tokens = CategoricalEmbedding(CARDS, D).tokens(torch.tensor([[1, 2], [2, 3]]))
    return x, tokens


def test_cross_attention_weights_shape_and_rows_sum_to_one(xattn_inputs):
    x, tokens = xattn_inputs
    out, w = CrossAttentionFusion(D, 4, 0.0).eval()(x, tokens)
    assert out.shape == x.shape and w.shape == (2, 4, 5, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))


def test_cross_attention_positions_attend_differently(xattn_inputs):
    x, tokens = xattn_inputs
    _, w = CrossAttentionFusion(D, 4, 0.0).eval()(x, tokens)
    # Not the degenerate single-key case: weights are not all equal across ASV slots.
    assert (w[0, :, 0] - w[0, :, 1]).abs().max() > 1e-3
    assert (w < 0.999).all()


def test_cross_attention_with_one_column_still_has_a_choice():
    x = torch.randn(1, 4, D)
    tokens = CategoricalEmbedding([3], D).tokens(torch.tensor([[1]]))
    _, w = CrossAttentionFusion(D, 2, 0.0).eval()(x, tokens)
    assert w.shape[-1] == 2 and (w < 0.999).all()


def test_cross_attention_residual_layernorm(xattn_inputs):
    x, tokens = xattn_inputs
    fusion = CrossAttentionFusion(D, 4, 0.0).eval()
    out, _ = fusion(x, tokens)
    attn, _ = fusion.attention(x, tokens, tokens)
    torch.testing.assert_close(out, fusion.norm(x + attn))


def test_cross_attention_slots_are_independent(xattn_inputs):
    """A slot's output depends on that slot only: padding slots cannot leak in."""
    x, tokens = xattn_inputs
    fusion = CrossAttentionFusion(D, 4, 0.0).eval()
    full, _ = fusion(x, tokens)
    part, _ = fusion(x[:, :2], tokens)
    torch.testing.assert_close(full[:, :2], part)


def test_cross_attention_depends_on_the_categories(xattn_inputs):
    x, _ = xattn_inputs
    emb = CategoricalEmbedding(CARDS, D)
    fusion = CrossAttentionFusion(D, 4, 0.0).eval()
    a, _ = fusion(x, emb.tokens(torch.tensor([[1, 1], [1, 1]])))
    b, _ = fusion(x, emb.tokens(torch.tensor([[2, 3], [2, 3]])))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("heads", [3, 5, 7])
def test_cross_attention_heads_must_divide_dim(heads):
    with pytest.raises(ValueError, match="must divide"):
        CrossAttentionFusion(D, heads, 0.0)
    with pytest.raises(ValueError, match="must divide"):
        ModelConfig(embedding_dim=D, attention_heads=2, task="regression", n_outputs=1,
                    categorical_fusion="cross-attention", cross_attn_heads=heads)


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
def test_cross_attention_any_dividing_head_count(heads, xattn_inputs):
    x, tokens = xattn_inputs
    _, w = CrossAttentionFusion(D, heads, 0.0).eval()(x, tokens)
    assert w.shape[1] == heads


def test_model_returns_cross_attention_per_head():
    out = model_for(categorical_fusion="cross-attention")(batch_for([0, 1]))
    w = out["cross_attention"]
    assert w.shape[:2] == (2, 4) and w.shape[-1] == 3
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))


# --- per-ASV response (attribution) ------------------------------------------------------

def response_inputs(model, rows=(0, 1, 2, 3)):
    batch = batch_for(list(rows))
    embeddings = model.encode_asvs(batch["asv_tokens"])
    return batch, embeddings


def hooked_prediction(model, batch, embeddings, slot, column, value):
    """The prediction with one slot's cross-attention output taken from a pass where
    ``column`` is ``value``, done with a forward hook on the plain forward pass."""
    other = batch["categories"].clone()
    other[:, column] = value
    captured = {}

    def capture(module, args, output):
        captured["alt"] = output[0]
    hook = model.cross_attention.register_forward_hook(capture)
    model(dict(batch, categories=other), asv_embeddings=embeddings)
    hook.remove()

    def patch(module, args, output):
        fused = output[0].clone()
        fused[:, slot] = captured["alt"][:, slot]
        return fused, output[1]
    hook = model.cross_attention.register_forward_hook(patch)
    out = model(batch, asv_embeddings=embeddings)["prediction"]
    hook.remove()
    return out


@pytest.mark.parametrize("kwargs", [{}, dict(film_conditioning=True,
                                             conditional_output_scaling=True)],
                         ids=["plain", "film+scaling"])
def test_response_equals_a_forward_pass_with_one_slot_on_another_value(kwargs):
    model = model_for(categorical_fusion="cross-attention", **kwargs)
    batch, embeddings = response_inputs(model)
    plain, patched = explain.slot_responses(model, batch, embeddings, max_rows=8)
    torch.testing.assert_close(plain, model(batch, asv_embeddings=embeddings)["prediction"])
    assert patched.shape == (4, batch["asv_mask"].shape[1], 2, 4, 1)
    checked = 0
    for column, card in enumerate(CARDS):
        for value in range(1, card):
            for slot in (0, 2, batch["asv_mask"].sum(1).min().item() - 1):
                expected = hooked_prediction(model, batch, embeddings, slot, column, value)
                own = batch["categories"][:, column] == value
                got = patched[:, slot, column, value]
                assert torch.isnan(got[own]).all()
                torch.testing.assert_close(got[~own], expected[~own])
                checked += int((~own).sum())
    assert checked > 20


def test_response_is_nan_for_padded_slots_unknown_and_missing_values():
    model = model_for(categorical_fusion="cross-attention")
    batch, embeddings = response_inputs(model)
    _, patched = explain.slot_responses(model, batch, embeddings)
    mask = batch["asv_mask"]
    assert not mask.all()  # the batch has padded slots
    assert torch.isnan(patched[~mask]).all()
    assert torch.isnan(patched[..., 0, :]).all()  # 'unknown' is never an alternative
    assert torch.isnan(patched[:, :, 0, 3]).all()  # column 0 has values 1-2 only
    assert torch.isfinite(patched[mask][:, 1, 1:]).any()


def test_response_is_zero_when_the_metadata_cannot_reach_the_asvs():
    model = model_for(categorical_fusion="cross-attention")
    batch, embeddings = response_inputs(model)
    _, moved = explain.slot_responses(model, batch, embeddings)
    changes = (moved - explain.slot_responses(model, batch, embeddings)[0][:, None, None, None])
    assert changes.abs().nan_to_num().max() > 1e-4  # untrained, the metadata still matters
    with torch.no_grad():
        model.cross_attention.attention.out_proj.weight.zero_()
        model.cross_attention.attention.out_proj.bias.zero_()
    plain, patched = explain.slot_responses(model, batch, embeddings)
    changes = (patched - plain[:, None, None, None]).nan_to_num()
    assert changes.abs().max() < 1e-6  # float rounding only


def test_response_needs_a_cross_attention_model():
    model = model_for(categorical_fusion="concat")
    batch, embeddings = response_inputs(model)
    with pytest.raises(ValueError, match="cross-attention"):
        explain.slot_responses(model, batch, embeddings)


def test_cross_attention_all_unknown_is_finite(xattn_inputs):
    x, _ = xattn_inputs
    tokens = CategoricalEmbedding(CARDS, D).tokens(torch.zeros(2, 2, dtype=torch.long))
    out, w = CrossAttentionFusion(D, 4, 0.0).eval()(x, tokens)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()


# --- Perceiver -------------------------------------------------------------------------

@pytest.fixture
def perceiver_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, D, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    tokens = CategoricalEmbedding(CARDS, D).tokens(torch.tensor([[1, 2], [0, 0]]))
    return x, mask, tokens


def test_perceiver_shapes(perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    out, w = PerceiverFusion(D, 2, 4, 2, 0.0).eval()(x, mask, tokens)
    assert out.shape == (2, D) and w.shape == (2, 2, 4, 9)


def test_perceiver_latents_ignore_padded_slots(perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    _, w = PerceiverFusion(D, 2, 4, 1, 0.0).eval()(x, mask, tokens)
    assert (w[1, :, :, 3:6] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 4))


def test_perceiver_padding_content_does_not_matter(perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    p = PerceiverFusion(D, 2, 4, 1, 0.0).eval()
    a, _ = p(x, mask, tokens)
    x2 = x.clone()
    x2[1, 3:] = 1e3
    b, _ = p(x2, mask, tokens)
    torch.testing.assert_close(a, b)


def test_perceiver_attends_to_metadata_tokens(perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    _, w = PerceiverFusion(D, 2, 4, 1, 0.0).eval()(x, mask, tokens)
    assert (w[..., 6:].sum(-1) > 0).all()


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_perceiver_layers(layers, perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    out, _ = PerceiverFusion(D, 2, 4, layers, 0.0).eval()(x, mask, tokens)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("latents", [1, 4, 32])
def test_perceiver_latent_counts(latents, perceiver_inputs):
    x, mask, tokens = perceiver_inputs
    _, w = PerceiverFusion(D, 2, latents, 1, 0.0).eval()(x, mask, tokens)
    assert w.shape[2] == latents


def test_perceiver_without_metadata(perceiver_inputs):
    x, mask, _ = perceiver_inputs
    out, w = PerceiverFusion(D, 2, 4, 1, 0.0).eval()(x, mask, None)
    assert out.shape == (2, D) and w.shape[-1] == 6


def test_perceiver_metadata_changes_output(perceiver_inputs):
    x, mask, _ = perceiver_inputs
    emb = CategoricalEmbedding(CARDS, D)
    p = PerceiverFusion(D, 2, 4, 1, 0.0).eval()
    a, _ = p(x, mask, emb.tokens(torch.tensor([[1, 1], [1, 1]])))
    b, _ = p(x, mask, emb.tokens(torch.tensor([[2, 3], [2, 3]])))
    assert not torch.allclose(a, b)


def test_model_returns_perceiver_attention():
    out = model_for(categorical_fusion="perceiver")(batch_for([0, 1]))
    assert out["perceiver_attention"].shape[2] == 4


# --- FiLM and output scaling -----------------------------------------------------------

def test_film_starts_as_identity():
    h, c = torch.randn(3, D), torch.randn(3, D)
    torch.testing.assert_close(FiLM(D)(h, c), h)


def test_film_modulates_once_trained():
    film = FiLM(D)
    with torch.no_grad():
        film.film.weight.normal_()
    h, c = torch.randn(3, D), torch.randn(3, D)
    assert not torch.allclose(film(h, c), h)


def test_film_model_equals_plain_model_at_initialisation():
    b = batch_for([0, 1, 2])
    plain = model_for(cards=CARDS, categorical_fusion="none", conditional_output_scaling=True)
    film = model_for(cards=CARDS, categorical_fusion="none", film_conditioning=True,
                     conditional_output_scaling=True)
    film.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(plain(b)["prediction"], film(b)["prediction"])


def test_output_scaling_starts_as_identity_and_shifts_per_category():
    s = ConditionalOutputScaling([3], 1)
    y = torch.tensor([[2.0], [2.0]])
    cats = torch.tensor([[1], [2]])
    torch.testing.assert_close(s(y, cats), y)
    with torch.no_grad():
        s.shift[0].weight[2] = 5.0
        s.scale[0].weight[1] = 1.0
    torch.testing.assert_close(s(y, cats), torch.tensor([[4.0], [7.0]]))


def test_film_and_scaling_are_kept_out_of_weight_decay():
    model = model_for(categorical_fusion="none", film_conditioning=True,
                      conditional_output_scaling=True)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "target_head.film.film.weight" in exempt
    assert any(n.startswith("output_scaling.") for n in exempt)
    assert not any("film" in names[id(p)] for p in decay["params"])
