"""Fast versions of two signal-suite targets (issue 12): the real model must learn them.

``q2_aam.example_data.signals`` plants a signal in 600 real ECAM samples
(480 train / 120 test). Here the model is small (dim 32, one layer per
encoder), is not pretrained and trains 4 epochs, so each target takes well
under a minute on two cores; ``benchmarks/suite.py`` runs the full suite
with a pretrained encoder and the defaults.

* ``abundance``: 5 planted ASVs' log abundances, noise set so the oracle
  explains 0.9. Before the ASV identity and the linear readout (issue 12)
  the model scored R² about 0 here.
* ``interaction``: 4 ASVs that count only under one value of ``season`` and 2
  main effects; cross-attention on ``season`` and ``site``, against concat.
* ``clade``: a subtree's summed abundance; the readout reads clades when
  ``train`` is given the phylogeny.

The thresholds sit below what was measured (see each test) and far above
what the model without the linear readout and the ASV identity reached (R²
about 0 on ``abundance`` in the issue). At this size and length the score
is mostly the linear readout's (before the relaxed lasso, clades and the
conditional readout, 4 and 8 epochs gave the same R²: no epoch beat the
starting point on validation).
"""
import pytest

from q2_aam.core import api
from q2_aam.core.data import AmpliconSamples
from q2_aam.core.engine import TrainConfig

SMALL = dict(embedding_dim=32, attention_heads=4, nucleotide_layers=1, sample_layers=1,
             target_layers=1, dropout=0.1)


@pytest.fixture(scope="module")
def ecam():
    from q2_aam.example_data import load_dataset
    return load_dataset("ecam")


def fit_and_score(target, fusion=None, **kwargs):
    samples = AmpliconSamples.from_counts(target.counts, target.sample_ids, target.sequences,
                                          target.sequences, token_limit=128)
    tr, te = target.train, target.test
    def rows(r):
        return {c: [v[i] for i in r] for c, v in target.categorical.items()} if fusion \
            else None
    bundle = api.train(samples.subset(tr), target.y[tr], task="regression",
                       target_transform="zscore",
                       architecture=dict(SMALL, **({"categorical_fusion": fusion,
                                                    "cross_attn_heads": 4} if fusion else {})),
                       config=TrainConfig(epochs=4, seed=0, device="cpu"),
                       categorical=rows(tr), log=lambda m: None, **kwargs)
    predicted = api.predict(bundle, samples.subset(te), categorical=rows(te),
                            log=lambda m: None)
    truth = target.y[te]
    return 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()


def test_main_effects_of_a_few_asvs_are_learned(ecam):
    from q2_aam.example_data.signals import make_target
    target = make_target(ecam, "abundance", seed=0)
    assert fit_and_score(target) > 0.75  # measured 0.821 (seed 1: 0.871)


def test_asv_by_category_interaction_is_learned_with_cross_attention(ecam):
    from q2_aam.example_data.signals import make_target
    target = make_target(ecam, "interaction", seed=0)
    cross = fit_and_score(target, fusion="cross-attention")
    concat = fit_and_score(target, fusion="concat")
    # Measured 0.842 vs 0.585 (seed 1: 0.815 vs 0.502): cross-attention's readout gives each
    # ASV a coefficient per season; concat's has one per ASV.
    assert cross > 0.75, cross
    assert cross > concat + 0.15, (cross, concat)


def test_a_clade_is_learned_with_the_phylogeny(ecam):
    from q2_aam.example_data.signals import make_target
    target = make_target(ecam, "clade", seed=0)
    # Measured 0.817 with the tree (seed 1: 0.835); 0.783 without it (seed 1: 0.829).
    assert fit_and_score(target, phylogeny=ecam.tree) > 0.8
