"""Between the model format on disk and the torch core's ``ModelBundle``."""
from .core.bundle import ModelBundle
from ._formats import AAMModelDirectoryFormat


def bundle_to_format(data: ModelBundle) -> AAMModelDirectoryFormat:
    fmt = AAMModelDirectoryFormat()
    data.save(fmt.path)
    return fmt


def format_to_bundle(fmt: AAMModelDirectoryFormat) -> ModelBundle:
    return ModelBundle.load(fmt.path)
