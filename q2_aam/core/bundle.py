"""A trained model on disk: ``config.json`` + ``model.safetensors``, no pickle.

``config.json`` holds everything ``predict`` needs: the architecture
(``ModelConfig``), what the model predicts (target name, kind, transform
statistics or class names), how it was trained and its history, the library
versions, and the sha256 of the weights file, which loading checks.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
KINDS = ("encoder", "regressor", "classifier")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict:
    import numpy
    import torch
    from .. import __version__
    return {"q2-aam": __version__, "torch": torch.__version__, "numpy": numpy.__version__}


def validate_config(config: dict, where: str = CONFIG_FILE) -> None:
    """Raise ``ValueError`` naming what is wrong with a model's ``config.json``."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} must hold a JSON object.")
    missing = [k for k in ("format_version", "kind", "model", "target", "weights_sha256")
               if k not in config]
    if missing:
        raise ValueError(f"{where} lacks {missing}; it was not written by q2-aam.")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{where} has format_version {config['format_version']!r}; this "
                         f"q2-aam reads version {FORMAT_VERSION}. Upgrade q2-aam.")
    if config["kind"] not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {config['kind']!r}.")
    if not isinstance(config["model"], dict):
        raise ValueError(f"{where}: 'model' must be an object of architecture settings.")
    target = config["target"]
    if config["kind"] == "classifier" and not (isinstance(target, dict)
                                               and target.get("classes")):
        raise ValueError(f"{where}: a classifier must list its classes under target.classes.")
    if config["kind"] == "regressor" and not (isinstance(target, dict)
                                              and "transform" in target):
        raise ValueError(f"{where}: a regressor must store its target transform.")


def validate_directory(path: Path) -> dict:
    """Check a model directory without torch: config, weights header, checksum.

    Returns the parsed config. Raises ``ValueError`` with what is wrong.
    """
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise ValueError(f"The model has no {p.name}.")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{CONFIG_FILE} is not valid JSON: {err}") from None
    validate_config(config)
    found = sha256_of(weights_path)
    if found != config["weights_sha256"]:
        raise ValueError(f"{WEIGHTS_FILE} has sha256 {found}, but {CONFIG_FILE} records "
                         f"{config['weights_sha256']}: the weights were altered or belong to "
                         "another model.")
    check_safetensors_header(weights_path)
    return config


def check_safetensors_header(path: Path) -> None:
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{WEIGHTS_FILE} is truncated.")
    size = int.from_bytes(raw[:8], "little")
    if size <= 0 or 8 + size > len(raw):
        raise ValueError(f"{WEIGHTS_FILE} is not a safetensors file (bad header length).")
    try:
        header = json.loads(raw[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{WEIGHTS_FILE} is not a safetensors file (bad header).") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise ValueError(f"{WEIGHTS_FILE} holds no tensors.")


@dataclass
class ModelBundle:
    """A model's weights and its self-description.

    Attributes:
        kind: ``encoder``, ``regressor`` or ``classifier``.
        model_config: ``ModelConfig`` as a dict.
        state_dict: tensors by name.
        target: ``{"name", "transform"}`` (regressor), ``{"name", "classes"}``
            (classifier) or ``{}`` (encoder).
        training: how it was trained (parameters, seed, history, data sizes).
    """

    kind: str
    model_config: dict
    state_dict: dict
    target: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    source: str = field(default="the model", compare=False)

    def build_model(self):
        """The ``AAMModel`` with these weights loaded (strict), in eval mode."""
        from .model import AAMModel, ModelConfig
        model = AAMModel(ModelConfig.from_dict(self.model_config))
        check_weights(model, self.state_dict, self.model_config, self.source)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def load_encoder_into(self, model) -> None:
        """Copy this pretrained encoder's weights into ``model`` (built on its settings)."""
        from .model import ENCODER_PREFIXES
        state = {k: v for k, v in self.state_dict.items() if k.startswith(ENCODER_PREFIXES)}
        check_weights(model, state, self.model_config, self.source, prefixes=ENCODER_PREFIXES)
        missing, _ = model.load_state_dict(state, strict=False)
        absent = [k for k in missing if k.startswith(ENCODER_PREFIXES)]
        if absent:
            raise ValueError(f"The pretrained model lacks encoder weights {absent[:3]}.")

    def save(self, path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``.

        Files are written under temporary names and renamed, so a failure
        leaves no half-written model.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu()
                   for k, v in saved_names(self.state_dict).items()}
        tmp_weights = path / (WEIGHTS_FILE + ".partial")
        tmp_config = None
        try:
            write_safetensors(tensors, tmp_weights)
            config = {
                "format_version": FORMAT_VERSION, "kind": self.kind,
                "model": self.model_config, "target": self.target, "training": self.training,
                "versions": self.versions or library_versions(),
                "weights_sha256": sha256_of(tmp_weights),
            }
            validate_config(config)
            with tempfile.NamedTemporaryFile("w", dir=path, delete=False,
                                             suffix=".partial") as tmp:
                tmp_config = tmp.name
                json.dump(config, tmp, indent=2, sort_keys=True, default=_json_default)
            os.replace(tmp_config, path / CONFIG_FILE)
            os.replace(tmp_weights, path / WEIGHTS_FILE)
        except OSError as error:  # a full disk: no half-written model is left behind
            for partial in (tmp_weights, tmp_config):
                if partial and os.path.exists(partial):
                    os.remove(partial)
            raise OSError(error.errno, f"Could not write the model to {path} "
                          f"({error.strerror or error}); nothing was written there. Free some "
                          "space, or save it elsewhere.") from None

    @classmethod
    def load(cls, path) -> "ModelBundle":
        """Read a model folder; never unpickles anything."""
        from safetensors.torch import load_file
        path = Path(path)
        config = validate_directory(path)
        from .model import ModelConfig
        ModelConfig.from_dict(config["model"])  # every setting's type and range, by name
        return cls(kind=config["kind"], model_config=config["model"],
                   state_dict=module_names(load_file(str(path / WEIGHTS_FILE))),
                   target=config["target"],
                   training=config.get("training", {}), versions=config.get("versions", {}),
                   source=str(path))


READOUT_PREFIX = "readout."


def saved_names(state_dict: dict) -> dict:
    """The tensors of a model's ``state_dict`` under the names its file gives them: the
    linear readout's as models have always been saved (``LinearReadout.SAVED_NAMES``),
    the rest as they are."""
    from .readout.module import LinearReadout
    names = {READOUT_PREFIX + k: v for k, v in LinearReadout.SAVED_NAMES.items()}
    return {names.get(k, k): v for k, v in state_dict.items()}


def module_names(tensors: dict) -> dict:
    """The inverse of :func:`saved_names`: a file's tensors under the model's names."""
    from .readout.module import LinearReadout
    names = {v: READOUT_PREFIX + k for k, v in LinearReadout.SAVED_NAMES.items()}
    return {names.get(k, k): v for k, v in tensors.items()}


def write_safetensors(tensors: dict, path) -> None:
    """``safetensors.torch.save_file``, with its I/O failures (a full disk: "No space left
    on device (os error 28)") raised as ``OSError`` with their errno."""
    import re
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    try:
        save_file(tensors, str(path))
    except SafetensorError as error:
        found = re.search(r"os error (\d+)", str(error))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def check_weights(model, state_dict: dict, model_config: dict, source: str,
                  prefixes: tuple = ()) -> None:
    """Refuse weights that the settings in ``model_config`` do not describe (an edited
    ``config.json``, or files of two models), naming the tensors and the likely settings,
    instead of torch's size-mismatch traceback. ``prefixes``: check only these tensors
    (and do not require the rest)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not prefixes or k.startswith(prefixes)}
    saved = {k: tuple(v.shape) for k, v in state_dict.items()
             if not prefixes or k.startswith(prefixes)}
    wrong = [(k, saved[k], expected[k]) for k in sorted(expected)
             if k in saved and saved[k] != expected[k]]
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if not (wrong or missing or extra):
        return
    detail = "; ".join(f"{k} is {a} in {WEIGHTS_FILE} but {b} for these settings"
                       for k, a, b in wrong[:3])
    if missing or extra:
        detail += ("; " if detail else "") + (
            f"{len(missing)} tensor(s) missing (e.g. {missing[0]})" if missing else "") + (
            ", " if missing and extra else "") + (
            f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "")
    # The settings whose value sizes the most mismatched tensors (and not their saved shape).
    counts = {name: sum(value in b and value not in a for _, a, b in wrong)
              for name, value in model_config.items()
              if isinstance(value, int) and not isinstance(value, bool) and value > 1}
    most = max(counts.values(), default=0)
    suspects = sorted(name for name, n in counts.items() if most and n == most)
    hint = f" Check {', '.join(suspects)} in {CONFIG_FILE}." if suspects else ""
    raise ValueError(f"The weights of {source} do not match its {CONFIG_FILE}: {detail}. "
                     "The settings were edited, or the files come from two different "
                     f"models.{hint} Use the model as it was saved.")


def _json_default(value):
    import numpy as np
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
