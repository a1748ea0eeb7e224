"""Semantic types. Names carry the AAM prefix: type names are global in QIIME 2."""
from qiime2.plugin import SemanticType

AAMModel = SemanticType("AAMModel", field_names="kind")
AAMEncoder = SemanticType("AAMEncoder", variant_of=AAMModel.field["kind"])
AAMRegressor = SemanticType("AAMRegressor", variant_of=AAMModel.field["kind"])
AAMClassifier = SemanticType("AAMClassifier", variant_of=AAMModel.field["kind"])
