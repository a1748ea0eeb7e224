"""The AAM model format: ``config.json`` + ``model.safetensors``.

Validation reads no pickled data and needs no torch: the JSON config is
checked for what ``predict`` needs, the weights file's safetensors header is
parsed, and the weights' sha256 must match the one recorded in the config,
so a truncated, tampered or mixed-up model is refused on import.
"""
import json

import qiime2.plugin.model as model
from qiime2.plugin import ValidationError

from .core import bundle


class AAMModelConfigFormat(model.TextFileFormat):
    def _validate_(self, level):
        try:
            with self.open() as fh:
                config = json.load(fh)
            bundle.validate_config(config)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValidationError(f"Not an AAM model config: {err}") from None


class AAMModelWeightsFormat(model.BinaryFileFormat):
    def _validate_(self, level):
        try:
            bundle.check_safetensors_header(self.path)
        except ValueError as err:
            raise ValidationError(str(err)) from None


class AAMModelDirectoryFormat(model.DirectoryFormat):
    config = model.File(bundle.CONFIG_FILE, format=AAMModelConfigFormat)
    weights = model.File(bundle.WEIGHTS_FILE, format=AAMModelWeightsFormat)

    def _validate_(self, level):
        try:
            bundle.validate_directory(self.path)
        except ValueError as err:
            raise ValidationError(str(err)) from None
