"""Attribution (``core/explain.py``): the response to metadata in the target's units.
The response's definition (a forward pass with one slot on another value) is tested with
the conditioning modules in ``test_fusion.py``, the readout's share of it in
``test_readout_blocks.py``."""
import dataclasses

import numpy as np
import pytest

from q2_aam.core import api
from q2_aam.core.engine import TrainConfig
from q2_aam.core.targets import TargetTransform


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
