"""Real benchmark data for q2-aam (ecam, karelia) from the mitre sdist.

Nothing here is imported until used: ``from q2_aam.example_data import
subject_split`` does not load pandas, biom or QIIME 2.
"""

import importlib

_EXPORTS = {
    "Dataset": "mitre",
    "ChecksumError": "mitre",
    "DataError": "mitre",
    "default_cache_dir": "mitre",
    "fetch_mitre": "mitre",
    "load_dataset": "mitre",
    "placement_tree": "tree",
    "subject_split": "splits",
    "split_samples": "splits",
    "N_SPLITS": "splits",
    "random_forest": "baseline",
    "classify": "baseline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
