"""A model's settings (``ModelConfig``): values that do not fit together are refused, and
every setting is checked when a model is loaded (issue 28): every field of a saved model's
``config.json`` set to a value of the wrong type, or to NaN, or a key it does not know, is
refused with a message that names the field, before any weight is read into a model."""
import json
import math
from dataclasses import fields

import pytest

from q2_aam.core.bundle import ModelBundle
from q2_aam.core.model import AAMModel, ModelConfig

#: A value of another type than each kind of field takes.
WRONG = {"int": "3", "float": "0.1", "bool": -0.5, "str": 5, "list": {}, "list | None": "x"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = ModelConfig(embedding_dim=16, attention_heads=2, nucleotide_layers=1,
                         sample_layers=1, patch_size=8, max_sequence_length=64,
                         task="regression", n_outputs=1)
    bundle = ModelBundle(kind="regressor", model_config=config.to_dict(),
                         state_dict=AAMModel(config).state_dict(),
                         target={"transform": {"kind": "zscore", "stats": {}}}, training={})
    folder = tmp_path_factory.mktemp("model")
    bundle.save(folder)
    return folder


def _edited(saved, tmp_path, name, value):
    import shutil
    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"][name] = value
    (folder / "config.json").write_text(json.dumps(config))  # NaN is written as NaN
    return folder


def test_the_saved_model_loads_as_it_is(saved):
    assert ModelBundle.load(saved).model_config["embedding_dim"] == 16


@pytest.mark.parametrize("name", [f.name for f in fields(ModelConfig)])
@pytest.mark.parametrize("wrong", ["type", "nan"])
def test_each_setting_of_the_wrong_type_or_nan_is_refused_by_name(saved, tmp_path, name,
                                                                   wrong):
    kind = str(next(f.type for f in fields(ModelConfig) if f.name == name))
    value = WRONG[kind] if wrong == "type" else math.nan
    with pytest.raises(ValueError, match=rf"Model setting '{name}' must be"):
        ModelBundle.load(_edited(saved, tmp_path, name, value))


def test_config_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(embedding_dim=30, attention_heads=4)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="newer"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "warp_drive": 1})
