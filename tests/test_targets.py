"""Target transforms, output constraints, regression losses and their validation."""
import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle
from q2_aam.core.engine import TrainConfig
from q2_aam.core.losses import RegressionLoss, classification_loss
from q2_aam.core.model import ModelConfig, OutputConstraint
from q2_aam.core.targets import (check_target_settings, output_bounds, CENTRED_TRANSFORMS, DEFAULT_TARGET_TRANSFORM,
                                 TARGET_TRANSFORMS, TargetTransform, balanced_class_weights,
                                 group_labels, scale_warning)

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = {k: v for k, v in SMALL_ARCHITECTURE.items() if k != "max_sequence_length"}


def _fit(kind, y, groups=None):
    return TargetTransform(kind).fit(y, groups)


# --- transforms ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TARGET_TRANSFORMS)
@pytest.mark.parametrize("seed", range(5))
def test_round_trip_on_training_and_unseen_values(kind, seed):
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 100.0, 50)
    groups = rng.choice(["FIN", "EST", "RUS"], 50)
    t = _fit(kind, y, groups)
    unseen = rng.gamma(2.0, 300.0, 20)  # outside the training range too
    unseen_groups = rng.choice(["FIN", "EST", "RUS", "NEW"], 20)
    for values, g in ((y, groups), (unseen, unseen_groups)):
        z = t.transform(values, g)
        np.testing.assert_allclose(t.inverse(z, g), values, rtol=1e-9, atol=1e-9)


def test_zscore_round_trip():
    y = np.array([3.0, 10.0, 40.0])
    t = TargetTransform("zscore").fit(y)
    np.testing.assert_allclose(t.inverse(t.transform(y)), y)
    np.testing.assert_allclose(t.transform(y).mean(), 0, atol=1e-12)


def test_minmax_maps_training_targets_to_unit_interval():
    y = np.array([3.0, 7.0, 11.0])
    z = _fit("minmax", y).transform(y)
    np.testing.assert_allclose(z, [0, 0.5, 1])


def test_log_zscore_standardises_log_targets():
    y = np.array([0.0, 9.0, 99.0, 999.0])
    z = _fit("log-zscore", y).transform(y)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12


@pytest.mark.parametrize("kind", ["log-minmax", "log-zscore"])
def test_log_transforms_refuse_values_at_or_below_minus_one(kind):
    with pytest.raises(ValueError, match="log\\(y \\+ 1\\).*y > -1"):
        _fit(kind, np.array([-1.0, 2.0, 3.0]))
    t = _fit(kind, np.array([0.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="smallest -5"):
        t.transform(np.array([-5.0]))


def test_zscore_category_standardises_within_groups():
    y = np.array([1.0, 3.0, 100.0, 300.0])
    g = np.array(["a", "a", "b", "b"])
    z = _fit("zscore-category", y, g).transform(y, g)
    np.testing.assert_allclose(z, [-1, 1, -1, 1])


def test_zscore_category_unseen_group_uses_global_stats_and_warns():
    y = np.array([1.0, 3.0, 100.0, 300.0])
    t = _fit("zscore-category", y, ["a", "a", "b", "b"])
    said = []
    z = t.transform(np.array([101.0]), ["zz"], warn=said.append)
    assert z[0] == pytest.approx((101.0 - y.mean()) / y.std())
    assert len(said) == 1 and "'zz'" in said[0]


def test_zscore_category_needs_groups():
    with pytest.raises(ValueError, match="group"):
        TargetTransform("zscore-category").fit(np.array([1.0, 2.0]))


def test_single_sample_group_falls_back_to_global_sd():
    t = _fit("zscore-category", np.array([1.0, 3.0, 50.0]), ["a", "a", "b"])
    assert t.stats["groups"]["b"]["std"] == pytest.approx(t.stats["std"])


def test_transform_survives_json_round_trip():
    import json
    t = _fit("zscore-category", np.array([1.0, 3.0, 7.0]), ["a", "b", "b"])
    t2 = TargetTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_allclose(t2.transform([5.0], ["b"]), t.transform([5.0], ["b"]))


def test_unknown_transform_is_refused():
    with pytest.raises(ValueError, match="must be one of"):
        TargetTransform("cube-root")


def test_group_labels_join_columns_and_mark_missing():
    labels = group_labels([["FIN", "EST", None], ["vaginal", float("nan"), "csection"]])
    assert labels.tolist() == ["FIN|vaginal", "EST|", "|csection"]


# --- settings that contradict each other -----------------------------------------------

def test_normalize_by_needs_zscore_category():
    with pytest.raises(ValueError, match="only by the 'zscore-category'"):
        check_target_settings("zscore", "none", ["country"])


def test_zscore_category_needs_normalize_by():
    with pytest.raises(ValueError, match="--p-normalize-by"):
        check_target_settings("zscore-category", "none", None)


@pytest.mark.parametrize("kind", CENTRED_TRANSFORMS)
@pytest.mark.parametrize("constraint", ["nonnegative", "nonnegative-learnable"])
def test_nonnegative_output_refused_for_centred_targets(kind, constraint):
    with pytest.raises(ValueError, match="centres the target at 0"):
        check_target_settings(kind, constraint, ["c"] if kind == "zscore-category" else None)


def test_nonnegative_output_refused_for_negative_raw_targets():
    with pytest.raises(ValueError, match="1 training target\\(s\\) are negative"):
        output_bounds(np.array([-1.0, 2.0]), "nonnegative")


def test_bounded_uses_the_range_of_the_training_targets():
    assert output_bounds(np.array([-1.5, 0.2, 2.0]), "bounded") == [-1.5, 2.0]


# --- losses and output constraints -----------------------------------------------------

@pytest.mark.parametrize("quantiles,message", [
    ((0.9, 0.1), "sorted"), ((0.5, 0.5), "unique"), ((0.0, 0.5), "between 0 and 1"),
    ((0.5, 1.0), "between 0 and 1"), ((), "at least one")])
def test_quantiles_are_validated(quantiles, message):
    with pytest.raises(ValueError, match=message):
        RegressionLoss("quantile", quantiles=quantiles)


def test_quantiles_only_with_the_quantile_loss():
    with pytest.raises(ValueError, match="only by the 'quantile' loss"):
        RegressionLoss("mse", quantiles=(0.5,))


def test_penalties_only_with_the_asymmetric_loss():
    with pytest.raises(ValueError, match="only by the 'asymmetric' loss"):
        RegressionLoss("huber", over_penalty=2.0)


def test_pinball_loss_values():
    loss = RegressionLoss("quantile", quantiles=(0.1, 0.9))
    pred = torch.tensor([[0.0, 0.0]])
    # target above the prediction by 1: under-prediction costs q
    assert float(loss(pred, torch.tensor([1.0]))) == pytest.approx((0.1 + 0.9) / 2)
    assert loss.n_outputs == 2 and loss.point_output in (0, 1)
    assert RegressionLoss("quantile", quantiles=(0.1, 0.5, 0.9)).point_output == 1


def test_asymmetric_loss_weights_over_and_under_prediction():
    loss = RegressionLoss("asymmetric", over_penalty=3.0, under_penalty=1.0)
    assert float(loss(torch.tensor([[2.0]]), torch.tensor([1.0]))) == pytest.approx(3.0)
    assert float(loss(torch.tensor([[0.0]]), torch.tensor([1.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("kind,expected", [("huber", 0.5 * 0.25), ("mse", 0.25), ("mae", 0.5)])
def test_point_losses(kind, expected):
    assert float(RegressionLoss(kind)(torch.tensor([[0.5]]), torch.tensor([0.0]))) \
        == pytest.approx(expected)


def test_balanced_class_weights_equalise_classes():
    encoded = np.array([0, 0, 0, 1])
    w = balanced_class_weights(encoded, 2)
    assert w[0] * 3 == pytest.approx(w[1] * 1)
    logits = torch.zeros(4, 2)
    loss = classification_loss(logits, torch.as_tensor(encoded), weight=torch.as_tensor(w))
    assert float(loss) == pytest.approx(np.log(2))


def test_output_constraints_keep_their_range():
    x = torch.linspace(-50, 50, 101)
    bounded = OutputConstraint("bounded", [-1.0, 2.0])(x)
    assert bounded.min() >= -1 and bounded.max() <= 2
    assert (OutputConstraint("nonnegative")(x) >= 0).all()
    learnable = OutputConstraint("nonnegative-learnable")
    out = learnable(x)
    assert (out >= 0).all()
    out.sum().backward()
    assert learnable.log_scale.grad is not None and learnable.raw_offset.grad is not None
    torch.testing.assert_close(OutputConstraint("none")(x), x)


def test_bounded_config_needs_bounds():
    with pytest.raises(ValueError, match="low < high"):
        ModelConfig(task="regression", n_outputs=1, output_constraint="bounded",
                    output_bounds=[2.0, 1.0])


# --- every allowed transform x constraint, trained, saved, loaded ----------------------

ALLOWED = [(t, c) for t in TARGET_TRANSFORMS
           for c in ("none", "bounded", "nonnegative", "nonnegative-learnable")
           if not (c.startswith("nonnegative") and t in CENTRED_TRANSFORMS)]


@pytest.mark.parametrize("transform,constraint", ALLOWED)
def test_saved_model_predicts_in_original_units(transform, constraint, tmp_path):
    samples = random_samples(n_samples=16, seed=1)
    rng = np.random.default_rng(0)
    y = rng.uniform(100, 1000, len(samples))
    groups = np.array(["a", "b"] * 8)
    kwargs = {}
    if transform == "zscore-category":
        kwargs = dict(normalize_by=["site"], normalize_groups=groups)
    bundle = api.train(samples, y, task="regression", architecture=dict(SMALL),
                       config=TrainConfig(epochs=1, batch_size=8, device="cpu"),
                       target_transform=transform, output_constraint=constraint,
                       log=lambda m: None, **kwargs)
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    pg = {"normalize_groups": groups} if transform == "zscore-category" else {}
    before = api.predict(bundle, samples, log=lambda m: None, **pg)
    after = api.predict(loaded, samples, log=lambda m: None, **pg)
    np.testing.assert_array_equal(before, after)
    assert np.isfinite(after).all()
    if transform != "none":
        # Back in original units (hundreds), not on the learning scale (~0-1). With
        # 'none' the model learns the raw scale itself, which one epoch cannot reach.
        assert after.mean() > 10
    if constraint == "bounded":
        assert after.min() >= y.min() - 1e-6 and after.max() <= y.max() + 1e-6


def test_quantile_model_predicts_the_median_output(tmp_path):
    samples = random_samples(n_samples=16, seed=2)
    y = np.linspace(0, 100, len(samples))
    bundle = api.train(samples, y, task="regression", architecture=dict(SMALL),
                       config=TrainConfig(epochs=1, batch_size=8, device="cpu"),
                       loss=RegressionLoss("quantile", quantiles=(0.1, 0.5, 0.9)),
                       log=lambda m: None)
    assert bundle.model_config["n_outputs"] == 3 and bundle.target["point_output"] == 1
    raw = api.predict_raw(bundle, samples, log=lambda m: None)
    t = TargetTransform.from_dict(bundle.target["transform"])
    np.testing.assert_allclose(api.predict(bundle, samples, log=lambda m: None),
                               t.inverse(raw[:, 1]))


@pytest.mark.parametrize("y, warns", [
    (np.array([27.0, 400.0, 1162.0]), False),       # age in days: fine as it is
    (np.array([0.2, 0.5, 0.9]), False),
    (np.array([1e5, 3e5, 9e5]), True),              # read depth: far too large
    (np.array([0.001, 0.002, 0.0015]), True),       # tiny spread
])
def test_untransformed_targets_far_from_unit_scale_get_a_warning(y, warns):
    assert (scale_warning(y, "none") is not None) == warns
    assert scale_warning(y, "zscore") is None


def test_untransformed_large_targets_warn_in_train():
    samples = random_samples(n_samples=12, token_limit=8)
    messages = []
    bundle = api.train(samples, np.linspace(1e5, 9e5, 12), task="regression",
                       architecture=SMALL, config=TrainConfig(epochs=1, batch_size=4,
                                                              device="cpu"),
                       target_transform="none", log=messages.append)
    assert DEFAULT_TARGET_TRANSFORM == "zscore"
    assert bundle.target["transform"]["kind"] == "none"
    assert any("Consider 'zscore'" in m for m in messages)


# --- odd targets are named before training ---------------------------------------------

def test_a_class_with_one_sample_is_refused_with_its_name():
    samples = random_samples(n_samples=12, seed=3)
    labels = ["a"] * 6 + ["b"] * 5 + ["lonely"]
    with pytest.raises(ValueError, match=r"1 class\(es\) have fewer: 'lonely' \(1\)"):
        api.train(samples, labels, task="classification", architecture=dict(SMALL),
                  config=TrainConfig(epochs=1, batch_size=8, device="cpu"), log=lambda m: None)


def test_many_numeric_classes_are_refused_as_continuous_and_named_classes_warn():
    """Issue 27: numbers with more than MANY_CLASSES values are a continuous column given
    as classes (refused, naming --p-task regression); as many named classes only warn."""
    samples = random_samples(n_samples=44, seed=4)
    codes = [str(i // 2) for i in range(44)]  # 22 numeric classes of 2
    with pytest.raises(ValueError, match=r"looks continuous.*22 distinct numbers.*"
                                         r"--p-task regression"):
        api.train(samples, codes, task="classification", architecture=dict(SMALL),
                  validation_fraction=0.0, asv_min_samples=0,
                  config=TrainConfig(epochs=1, batch_size=8, device="cpu"), log=print)
    messages = []
    api.train(samples, [f"site {c}" for c in codes], task="classification",
              architecture=dict(SMALL), validation_fraction=0.0, asv_min_samples=0,
              config=TrainConfig(epochs=1, batch_size=8, device="cpu"), log=messages.append)
    assert any("22 classes" in m and "Merge rare classes" in m for m in messages), messages


def _train_messages(samples, y):
    messages = []
    api.train(samples, y, task="regression", architecture=dict(SMALL),
              config=TrainConfig(epochs=1, batch_size=8, device="cpu"), log=messages.append)
    return messages


def test_an_extreme_target_value_is_reported_with_its_sample():
    samples = random_samples(n_samples=16, seed=5)
    y = np.linspace(10, 300, 16)
    y[7] = 1e12
    flagged = [m for m in _train_messages(samples, y) if "extremely far" in m]
    assert len(flagged) == 1 and f"{samples.sample_ids[7]} = 1e+12" in flagged[0], flagged
    assert not any("extremely far" in m
                   for m in _train_messages(samples, np.linspace(10, 300, 16)))


def test_a_target_that_overflows_its_scaling_is_refused():
    samples = random_samples(n_samples=16, seed=5)
    y = np.linspace(10, 300, 16)
    y[7] = 1e300
    with pytest.raises(ValueError, match=r"cannot be scaled with 'zscore'.*up to 1e\+300|"
                                         r"cannot be scaled with 'zscore'.*to 1e\+300\) overflow"):
        _train_messages(samples, y)
