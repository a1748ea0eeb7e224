"""The pretraining losses (``core/losses.py``): pairwise UniFrac and masked nucleotides.
The target losses are tested with the targets, in ``test_targets.py``."""
import pytest
import torch

from q2_aam.core.losses import mask_nucleotides, pairwise_unifrac_loss
from q2_aam.core.tokenizer import MASK, PAD


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
