"""A model on disk (``core/bundle.py``): saved and loaded it predicts the same; tampered
weights, a malformed or edited ``config.json`` are refused."""
import json

import numpy as np
import pytest

from q2_aam.core import api
from q2_aam.core.bundle import ModelBundle, validate_directory
from q2_aam.core.engine import TrainConfig

from conftest import SMALL_ARCHITECTURE, tiny_train

SMALL = SMALL_ARCHITECTURE


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
