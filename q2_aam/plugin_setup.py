"""Registration only: types, formats, transformers and actions of ``qiime aam``.

Nothing here imports torch; the actions import it when they run.
"""
from qiime2.plugin import (Bool, Categorical, Choices, Citations, Float, Int, List, Metadata,
                           MetadataColumn, Numeric, Plugin, Range, Str, TypeMap)
from q2_types.distance_matrix import DistanceMatrix
from q2_types.feature_data import FeatureData, Sequence
from q2_types.feature_table import FeatureTable, Frequency
from q2_types.sample_data import SampleData
from q2_types.tree import Phylogeny, Rooted
from q2_sample_classifier import ClassifierPredictions, Probabilities, RegressorPredictions

from . import __version__, _examples, _methods, _transformers
from ._formats import (AAMModelConfigFormat, AAMModelDirectoryFormat,
                       AAMModelWeightsFormat)
from ._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor
from .core import options

citations = Citations.load("citations.bib", package="q2_aam")

plugin = Plugin(
    name="aam",
    version=__version__,
    website="https://github.com/q2-aam/q2-aam",
    package="q2_aam",
    citations=[citations["bolyen2019qiime2"], citations["aam_tensorflow"],
               citations["aam_pytorch"], citations["vaswani2017attention"],
               citations["paszke2019pytorch"]],
    short_description="Attention All Microbes: transformers over ASV sequences.",
    description=(
        "Attention All Microbes (AAM) reads each sample as a bag of DNA sequences (ASVs) with "
        "their abundances. A nucleotide transformer embeds each ASV from its sequence, a "
        "sample transformer reads the sample's ASVs, and heads predict pairwise UniFrac "
        "distances and masked nucleotides (pretraining) or sample metadata (training). "
        "Because the model reads sequences, not feature IDs, it predicts on samples with "
        "ASVs it never saw."),
)

plugin.register_formats(AAMModelConfigFormat, AAMModelWeightsFormat, AAMModelDirectoryFormat)
plugin.register_semantic_types(AAMModel, AAMEncoder, AAMRegressor, AAMClassifier)
plugin.register_semantic_type_to_format(
    AAMModel[AAMEncoder | AAMRegressor | AAMClassifier], AAMModelDirectoryFormat)
plugin.register_transformer(_transformers.bundle_to_format)
plugin.register_transformer(_transformers.format_to_bundle)

ANY_MODEL = AAMModel[AAMEncoder | AAMRegressor | AAMClassifier]
DEVICE = Str % Choices(*options.DEVICES)
UNIFRAC = Str % Choices(*options.UNIFRAC_METRICS)
POSITIVE = Int % Range(1, None)
FRACTION = Float % Range(0, 1, inclusive_start=True, inclusive_end=False)
WEIGHT = Float % Range(0, None)
MATCH_IDENTITY = Float % Range(0.5, 1, inclusive_start=True, inclusive_end=True)


def _inherited(name: str) -> str:
    """How ``train``'s help gives the default of an architecture setting that a pretrained
    encoder fixes (``_describe`` cuts the encoder's part for ``pretrain``)."""
    return f"Default {options.ARCHITECTURE[name]:g}, or the pretrained model's."


# Every description in one place, shared by the actions: what a setting does and when to
# change it, once; q2cli adds the default. Longer explanations: docs/parameters.md.
INPUTS = {
    "table": "Feature table of read counts; each sample is read as its most abundant ASVs.",
    "sequences": "The ASVs' sequences; not needed when the feature IDs are the sequences.",
    "phylogeny": "Rooted tree of the table's features, for UniFrac (from the tree, batch by "
                 f"batch, past {options.UNIFRAC_MATRIX_MAX_SAMPLES:,} samples).",
    "distance_matrix": "Precomputed sample distances (e.g. UniFrac) instead of a phylogeny.",
    "pretrained": "An encoder from 'pretrain' to start from; its architecture and token "
                  "limit are kept.",
    "model": "A model from 'train'.",
}
PARAMETERS = {
    "metadata": "The column to predict: numeric (regression) or classes (classification).",
    "task": "A number ('regression') or a class ('classification').",
    "subjects": "Each sample's subject: held-out samples are then whole subjects.",
    "missing_samples": "'error' names table samples the metadata lacks; 'ignore' drops them.",
    "unifrac_metric": "UniFrac variant.",
    "token_limit": f"Most abundant ASVs read per sample. Default "
                   f"{options.DEFAULT_TOKEN_LIMIT}, or the pretrained model's.",
    "embedding_dim": f"Width of the layers. {_inherited('embedding_dim')}",
    "attention_heads": f"Heads per layer. {_inherited('attention_heads')}",
    "nucleotide_layers": f"Nucleotide-encoder layers. {_inherited('nucleotide_layers')}",
    "sample_layers": f"Sample-encoder layers. {_inherited('sample_layers')}",
    "patch_size": f"Nucleotides per token. {_inherited('patch_size')}",
    "target_layers": "Layers between encoder and head.",
    "dropout": f"Dropout. {_inherited('dropout')}",
    "nucleotide_dropout": "Nucleotide-encoder dropout (slow on CPU). "
                          f"{_inherited('nucleotide_dropout')}",
    "epochs": "Most passes over the training samples.",
    "batch_size": "Samples per step.",
    "learning_rate": "Peak AdamW learning rate.",
    "weight_decay": "AdamW weight decay.",
    "warmup_fraction": "Share of steps warming up.",
    "patience": "Epochs without a better validation loss before stopping (0: never).",
    "validation_fraction": "Share of samples held out to choose the epoch (0: the last).",
    "unifrac_weight": "UniFrac loss weight (0: off; needs a tree or distances).",
    "mlm_weight": "Masked-nucleotide loss weight (0: off).",
    "mask_rate": "Share of nucleotides masked.",
    "freeze_encoder": "Keep the pretrained encoder fixed (faster).",
    "linear_readout": "Fit a linear model of the ASVs (and clades) before the network.",
    "asv_min_samples": "ASVs in this many training samples get a readout coefficient.",
    "target_transform": "Target scaling; 'log-*' for values over orders of magnitude.",
    "normalize_by": "Sample-metadata column(s) whose groups get their own z-score.",
    "sample_metadata": "Holds --p-categorical-columns and --p-normalize-by.",
    "output_constraint": "'bounded': within the training targets' range.",
    "loss": "Loss for a numeric target.",
    "quantiles": "For --p-loss quantile.",
    "over_penalty": "For --p-loss asymmetric: weight of over-predictions.",
    "under_penalty": "For --p-loss asymmetric: weight of under-predictions.",
    "categorical_columns": "Sample-metadata columns to condition on (predict needs them).",
    "categorical_fusion": options.FUSION_CHOICES,
    "cross_attn_heads": "Cross-attention heads.",
    "perceiver_num_latents": "Perceiver latents.",
    "perceiver_num_layers": "Layers over the perceiver latents.",
    "film_conditioning": "FiLM on the head's features.",
    "conditional_output_scaling": "An output scale and shift per category.",
    "class_weights": "'balanced': each class counts equally (for a rare class).",
    "random_state": "The same seed gives the same model.",
    "device": "'auto': a GPU when torch sees one.",
    "match_identity": "An unseen ASV reads as its nearest training ASV at this identity or "
                      "more (1: exact only).",
    "num_processes": "Processes (GPUs); more machines: docs/distributed.md.",
    "distributed": "'fsdp' shards the weights over the processes.",
    "mixed_precision": "Half precision ('fp16': GPU only).",
    "gradient_accumulation_steps": "Passes per batch: less memory, same training.",
    "activation_checkpointing": "Recompute layers backwards: less memory, slower.",
    "checkpoint_dir": "Checkpoint folder; rerun the command to continue.",
    "tensorboard_dir": "Folder for TensorBoard logs.",
}

TRAINING_PARAMS = {
    "epochs": POSITIVE, "batch_size": POSITIVE,
    "learning_rate": Float % Range(0, None, inclusive_start=False),
    "weight_decay": Float % Range(0, None), "warmup_fraction": FRACTION,
    "patience": Int % Range(0, None), "validation_fraction": FRACTION,
    "mask_rate": Float % Range(0, 1, inclusive_start=False, inclusive_end=False),
    "random_state": Int % Range(0, None), "device": DEVICE,
    "num_processes": POSITIVE, "distributed": Str % Choices(*options.DISTRIBUTED),
    "mixed_precision": Str % Choices(*options.MIXED_PRECISION),
    "gradient_accumulation_steps": POSITIVE, "activation_checkpointing": Bool,
    "checkpoint_dir": Str, "tensorboard_dir": Str,
    "dropout": FRACTION, "nucleotide_dropout": FRACTION, "unifrac_metric": UNIFRAC,
    "unifrac_weight": WEIGHT, "mlm_weight": WEIGHT,
}
ARCHITECTURE_PARAMS = {
    "token_limit": POSITIVE, "embedding_dim": POSITIVE, "attention_heads": POSITIVE,
    "nucleotide_layers": POSITIVE, "sample_layers": POSITIVE, "patch_size": POSITIVE,
}


def _describe(names, pretrained=True):
    """Descriptions of ``names``; without a pretrained input, the plain defaults."""
    described = {n: PARAMETERS.get(n, INPUTS.get(n)) for n in names}
    if not pretrained:
        described = {n: d.replace(", or the pretrained model's", "")
                     for n, d in described.items()}
    return described


pretrain_params = {**ARCHITECTURE_PARAMS, **TRAINING_PARAMS,
                   "subjects": MetadataColumn[Categorical]}
plugin.methods.register_function(
    function=_methods.pretrain,
    inputs={"table": FeatureTable[Frequency], "sequences": FeatureData[Sequence],
            "phylogeny": Phylogeny[Rooted], "distance_matrix": DistanceMatrix},
    parameters=pretrain_params,
    outputs=[("model", AAMModel[AAMEncoder])],
    input_descriptions=_describe(["table", "sequences", "phylogeny", "distance_matrix"]),
    parameter_descriptions=_describe(pretrain_params, pretrained=False),
    output_descriptions={"model": "The pretrained encoder, to start 'train' from."},
    name="Pretrain an AAM encoder",
    description=(
        "Self-supervised pretraining, no labels needed: the encoder learns to place samples "
        "so that distances between their embeddings match UniFrac distances (all pairs in a "
        "batch), and to recover masked nucleotides of the ASVs. Needs a rooted phylogeny or "
        "a distance matrix. Progress is printed with --verbose."),
    citations=[citations["aam_tensorflow"], citations["aam_pytorch"],
               citations["vaswani2017attention"], citations["paszke2019pytorch"],
               citations["gugger2022accelerate"],
               citations["lozupone2005unifrac"], citations["mcdonald2018striped"],
               citations["scikitbio"]],
    examples={"pretrain": _examples.pretrain},
)

# q2cli 2022.11 cannot offer a type-mapped MetadataColumn as --m-* options, so the
# output type follows the explicit --p-task instead of the column's type.
T_task, T_model = TypeMap({
    Str % Choices("regression"): AAMModel[AAMRegressor],
    Str % Choices("classification"): AAMModel[AAMClassifier],
})
train_params = {
    "metadata": MetadataColumn[Numeric | Categorical], "task": T_task,
    "subjects": MetadataColumn[Categorical],
    "sample_metadata": Metadata,
    "missing_samples": Str % Choices(*options.MISSING_SAMPLES), "freeze_encoder": Bool,
    "linear_readout": Bool, "asv_min_samples": Int % Range(0, None),
    "target_transform": Str % Choices(*options.TARGET_TRANSFORMS),
    "normalize_by": List[Str],
    "output_constraint": Str % Choices(*options.OUTPUT_CONSTRAINTS),
    "loss": Str % Choices(*options.REGRESSION_LOSSES),
    "quantiles": List[Float % Range(0, 1, inclusive_start=False, inclusive_end=False)],
    "over_penalty": Float % Range(0, None, inclusive_start=False),
    "under_penalty": Float % Range(0, None, inclusive_start=False),
    "class_weights": Str % Choices(*options.CLASS_WEIGHTS),
    "categorical_columns": List[Str],
    "categorical_fusion": Str % Choices(*options.FUSION_MODES),
    "cross_attn_heads": POSITIVE, "perceiver_num_latents": POSITIVE,
    "perceiver_num_layers": Int % Range(0, None),
    "film_conditioning": Bool, "conditional_output_scaling": Bool,
    **ARCHITECTURE_PARAMS, "target_layers": Int % Range(0, None), **TRAINING_PARAMS,
}
plugin.methods.register_function(
    function=_methods.train,
    inputs={"table": FeatureTable[Frequency], "sequences": FeatureData[Sequence],
            "pretrained": ANY_MODEL, "phylogeny": Phylogeny[Rooted],
            "distance_matrix": DistanceMatrix},
    parameters=train_params,
    outputs=[("model", T_model)],
    input_descriptions={
        **_describe(["table", "sequences", "pretrained", "distance_matrix"]),
        "phylogeny": "Rooted tree of the features: clades for the readout (regression)."},
    parameter_descriptions=_describe(train_params),
    output_descriptions={"model": "The trained regressor or classifier, for 'predict'."},
    name="Train an AAM regressor or classifier",
    description=(
        "Learn to predict a metadata column (a number or a class) from the samples' ASVs, "
        "optionally from a pretrained encoder and conditioned on categorical metadata. "
        "--verbose shows progress; every setting, measured: docs/parameters.md."),
    citations=[citations["aam_tensorflow"], citations["aam_pytorch"],
               citations["vaswani2017attention"], citations["paszke2019pytorch"],
               citations["gugger2022accelerate"],
               citations["pedregosa2011scikit"], citations["lozupone2005unifrac"],
               citations["mcdonald2018striped"], citations["arevalo2017gated"],
               citations["perez2018film"], citations["jaegle2021perceiver"]],
    examples={"train_regressor": _examples.train_regressor,
              "train_cross_attention": _examples.train_cross_attention},
)

T_model_in, T_predictions = TypeMap({
    AAMModel[AAMRegressor]: SampleData[RegressorPredictions],
    AAMModel[AAMClassifier]: SampleData[ClassifierPredictions],
})
predict_params = {"sample_metadata": Metadata, "batch_size": POSITIVE, "device": DEVICE,
                  "match_identity": MATCH_IDENTITY}
plugin.methods.register_function(
    function=_methods.predict,
    inputs={"model": T_model_in, "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters=predict_params,
    outputs=[("predictions", T_predictions)],
    input_descriptions=_describe(["model", "table", "sequences"]),
    parameter_descriptions={"batch_size": "Samples per forward pass.",
                            "device": PARAMETERS["device"],
                            "match_identity": PARAMETERS["match_identity"],
                            "sample_metadata": PARAMETERS["sample_metadata"]},
    output_descriptions={"predictions": "Predicted values (original units) or classes, "
                                        "usable by q2-sample-classifier's visualizers."},
    name="Predict with a trained AAM model",
    description=(
        "Apply a trained model to samples, including ASVs it never saw (the model reads "
        "sequences). Each distinct ASV is encoded once."),
    citations=[citations["aam_tensorflow"], citations["aam_pytorch"],
               citations["paszke2019pytorch"]],
    examples={"predict": _examples.predict},
)
plugin.methods.register_function(
    function=_methods.predict_classification,
    inputs={"model": AAMModel[AAMClassifier], "table": FeatureTable[Frequency],
            "sequences": FeatureData[Sequence]},
    parameters=predict_params,
    outputs=[("predictions", SampleData[ClassifierPredictions]),
             ("probabilities", SampleData[Probabilities])],
    input_descriptions=_describe(["model", "table", "sequences"]),
    parameter_descriptions={"batch_size": "Samples per forward pass.",
                            "device": PARAMETERS["device"],
                            "match_identity": PARAMETERS["match_identity"],
                            "sample_metadata": PARAMETERS["sample_metadata"]},
    output_descriptions={
        "predictions": "Predicted classes (the most probable), as from 'predict'.",
        "probabilities": "Each class's probability per sample, for q2-sample-classifier's "
                         "confusion-matrix (--i-probabilities draws ROC curves)."},
    name="Predict classes and class probabilities",
    description=(
        "Apply a trained classifier to samples and also return each class's probability (the "
        "softmax of the model's outputs), like q2-sample-classifier's "
        "predict-classification. 'predict' gives the classes alone, for either kind of "
        "model."),
    citations=[citations["aam_tensorflow"], citations["aam_pytorch"],
               citations["paszke2019pytorch"]],
    examples={"predict_classification": _examples.predict_classification},
)

# --- visualizers --------------------------------------------------------------------------
from q2_types.feature_data import Taxonomy  # noqa: E402

from . import _visualizers  # noqa: E402

TRAINED_MODEL = AAMModel[AAMRegressor | AAMClassifier]
VIEW_PARAMETERS = {
    "batch_size": "Samples per forward pass.",
    "device": PARAMETERS["device"],
    "match_identity": PARAMETERS["match_identity"],
    "sample_metadata": "Sample metadata holding the categorical column(s) the model was "
                       "trained with (--p-categorical-columns, --p-normalize-by).",
}
VIEW_INPUTS = {"table": "Feature table of the samples to explain (e.g. held-out samples).",
               "sequences": INPUTS["sequences"]}
# What 'accuracy' and 'explain-conditioning' both take: a model run on samples.
VIEW_INPUT_TYPES = {"model": TRAINED_MODEL, "table": FeatureTable[Frequency],
                    "sequences": FeatureData[Sequence]}
VIEW_PARAMETER_TYPES = {"sample_metadata": Metadata, "batch_size": POSITIVE, "device": DEVICE,
                        "match_identity": MATCH_IDENTITY}

plugin.visualizers.register_function(
    function=_visualizers.training_history,
    inputs={"model": ANY_MODEL},
    parameters={},
    input_descriptions={"model": "A model from 'pretrain' or 'train'; it keeps its history."},
    parameter_descriptions={},
    name="Training history of an AAM model",
    description=(
        "Each loss component (total, target, UniFrac, masked nucleotides: whichever the run "
        "used) per epoch for the training and validation samples, the validation metrics in "
        "the target's units (MAE and R², or accuracy), and the learning rate. The epoch whose "
        "weights were kept is marked. Works for every model; the numbers are also a TSV."),
    examples={"training_history": _examples.training_history},
)

plugin.visualizers.register_function(
    function=_visualizers.accuracy,
    inputs=VIEW_INPUT_TYPES,
    parameters={"metadata": MetadataColumn[Numeric | Categorical], **VIEW_PARAMETER_TYPES},
    input_descriptions={"model": "A regressor or classifier from 'train'.", **VIEW_INPUTS},
    parameter_descriptions={"metadata": "The observed values of the model's target (numeric "
                                        "for a regressor, classes for a classifier). Samples "
                                        "without a value are left out, and counted.",
                            **VIEW_PARAMETERS},
    name="Accuracy of an AAM model on given samples",
    description=(
        "Predicts the table's samples and compares with the observed values: predicted vs "
        "observed with MAE and R² for a regressor, a confusion matrix with accuracy for a "
        "classifier. Pass samples the model did not train on for an honest estimate. The "
        "predictions and scores are also TSVs."),
    examples={"accuracy": _examples.accuracy},
)

plugin.visualizers.register_function(
    function=_visualizers.explain_conditioning,
    inputs={**VIEW_INPUT_TYPES, "taxonomy": FeatureData[Taxonomy]},
    parameters={"top_n": POSITIVE, "min_samples": POSITIVE, **VIEW_PARAMETER_TYPES},
    input_descriptions={"model": "A regressor or classifier trained with "
                                 "--p-categorical-columns and --p-categorical-fusion gmu, "
                                 "cross-attention or perceiver.",
                        "taxonomy": "Taxonomy of the table's features, to label the ASVs "
                                    "(optional).", **VIEW_INPUTS},
    parameter_descriptions={
        "top_n": "ASVs shown in a heatmap: those with the largest response and those whose "
                 "cross-attention varies most between category values (cross-attention), "
                 "or that get the most attention (perceiver). Every ASV is in the TSVs.",
        "min_samples": "Cross-attention: an ASV is ranked by its response only when this "
                       "many samples hold it, and a category value counts for its attention "
                       "ranking only when this many of the value's samples hold it.",
        **VIEW_PARAMETERS},
    name="What an AAM model's categorical conditioning learned",
    description=(
        "Shows, on the samples given, what the model's conditioning does; which view depends "
        "on the fusion the model was trained with. gmu: the distribution of gate values per "
        "category value, and what a gate value means in the form used. cross-attention: each "
        "ASV's response to each column (how much the prediction moves when that ASV alone is "
        "conditioned on another value of the column, in the target's units, or in class "
        "probabilities for a classifier; an attribution, "
        "one extra pass of the layers after the fusion per ASV, sample and other value), and "
        "a heatmap of ASVs (with sequence and, given --i-taxonomy, taxonomy) x metadata "
        "tokens per category value, per head and averaged, with the full matrix as TSV; the "
        "weights show where attention goes, not which taxa respond. perceiver: "
        "the latents' attention over metadata tokens and ASVs. Models trained with another "
        "fusion (none, concat, add) have no gates or attention to show and get an error "
        "saying so."),
    examples={"explain_conditioning": _examples.explain_conditioning},
)

from qiime2.plugin import Visualization  # noqa: E402

from . import _pipelines  # noqa: E402

T_evaluate_task, T_evaluate_model, T_evaluate_predictions = TypeMap({
    Str % Choices("regression"): (AAMModel[AAMRegressor], SampleData[RegressorPredictions]),
    Str % Choices("classification"): (AAMModel[AAMClassifier],
                                      SampleData[ClassifierPredictions]),
})
plugin.pipelines.register_function(
    function=_pipelines.train_and_evaluate,
    inputs={"table": FeatureTable[Frequency], "sequences": FeatureData[Sequence],
            "phylogeny": Phylogeny[Rooted], "pretrained": ANY_MODEL},
    parameters={"metadata": MetadataColumn[Numeric | Categorical], "task": T_evaluate_task,
                "subjects": MetadataColumn[Categorical], "sample_metadata": Metadata,
                "categorical_columns": List[Str],
                "categorical_fusion": Str % Choices(*options.FUSION_MODES),
                "missing_samples": Str % Choices(*options.MISSING_SAMPLES),
                "class_weights": Str % Choices(*options.CLASS_WEIGHTS),
                "test_size": Float % Range(0, 1, inclusive_start=False, inclusive_end=False),
                "pretrain_epochs": Int % Range(0, None), "epochs": POSITIVE,
                "random_state": Int % Range(0, None), "device": DEVICE},
    outputs=[("model", T_evaluate_model), ("predictions", T_evaluate_predictions),
             ("accuracy_results", Visualization)],
    input_descriptions={
        "table": "Read counts of every sample: those with a value in --m-metadata-column are "
                 "split into training and test samples.",
        "sequences": INPUTS["sequences"],
        "phylogeny": "Rooted tree of the table's features: UniFrac for pretraining, and for a "
                     "regressor the linear readout's clades. Optional.",
        "pretrained": INPUTS["pretrained"]},
    parameter_descriptions={
        "metadata": "The column to predict: numeric with --p-task regression, categorical "
                    "with classification.",
        "task": "'regression' (a number) or 'classification' (a class).",
        "subjects": "Subject of each sample (longitudinal data): a subject's samples all go "
                    "to training or all to testing, and to one side of train's validation "
                    "split. Without it samples are split one by one.",
        "test_size": "Share of the samples (or subjects) held out for testing.",
        "sample_metadata": PARAMETERS["sample_metadata"],
        "categorical_columns": PARAMETERS["categorical_columns"],
        "categorical_fusion": PARAMETERS["categorical_fusion"],
        "missing_samples": PARAMETERS["missing_samples"],
        "class_weights": PARAMETERS["class_weights"],
        "pretrain_epochs": "Pretrain the encoder this many epochs first, on every sample's "
                           "table without labels (with UniFrac when a phylogeny is given, "
                           "else masked nucleotides only); 0: none.",
        "epochs": "Training epochs (train's --p-epochs).",
        "random_state": "Seed of the split, pretraining and training.",
        "device": PARAMETERS["device"]},
    output_descriptions={
        "model": "The model trained on the training samples, for 'predict'.",
        "predictions": "Predictions for the test samples only.",
        "accuracy_results": "The accuracy view of the test samples (never seen in "
                            "training)."},
    name="Train an AAM model and score it on held-out samples",
    description=(
        "One step from a feature table to a scored model, like q2-sample-classifier's "
        "regress-samples: splits the samples with a value (whole subjects with --m-subjects-*) "
        "into training and test sets with feature-table filter-samples, optionally pretrains "
        "the encoder, runs 'train' with its defaults on the training samples, 'predict' (or "
        "'predict-classification') and 'accuracy' on the test samples. Every step is an "
        "action of its own, so provenance shows each. For other settings run the actions "
        "one by one."),
    citations=[citations["aam_pytorch"], citations["vaswani2017attention"]],
    examples={"train_and_evaluate": _examples.train_and_evaluate},
)
