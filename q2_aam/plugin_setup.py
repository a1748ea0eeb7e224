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

# Every description in one place, shared by the actions.
INPUTS = {
    "table": "Feature table of read counts. Each sample is read as its most abundant ASVs.",
    "sequences": "The ASVs' DNA sequences. Optional when the table's feature IDs are the "
                 "sequences themselves (DADA2/Deblur without hashing).",
    "phylogeny": "Rooted tree whose tips are the table's features, for UniFrac. UniFrac is "
                 "computed on the counts the model sees (each sample's token-limit most "
                 "abundant ASVs). Up to 5,000 samples the full UniFrac matrix is computed "
                 "once; past that, each batch's pairs are computed from the tree as training "
                 "needs them, so memory grows linearly with the samples.",
    "distance_matrix": "Precomputed sample distances (e.g. UniFrac) instead of a phylogeny.",
    "pretrained": "A model from 'pretrain' (or 'train') whose encoder starts this model. The "
                  "architecture (embedding dim, heads, layers, patch size), token limit and "
                  "dropout default to the pretrained model's; an architecture value that "
                  "differs from it is an error.",
    "model": "A model from 'train'.",
}
PARAMETERS = {
    "metadata": "The target column: numeric for --p-task regression; categorical (or "
                "numeric codes) for --p-task classification.",
    "task": "'regression' predicts a number and gives an AAMModel[AAMRegressor]; "
            "'classification' predicts a class and gives an AAMModel[AAMClassifier].",
    "subjects": "Subject (host) of each sample. When given, the validation samples used for "
                "early stopping are whole subjects, so repeated samples of one subject do not "
                "leak between training and validation.",
    "missing_samples": "What to do with table samples absent from the metadata: 'error' "
                       "stops with their names, 'ignore' leaves them out. Samples whose "
                       "target is empty are always left out, and counted in the log.",
    "unifrac_metric": "UniFrac variant computed from the phylogeny.",
    "token_limit": "Most ASVs read per sample: the most abundant ones, ties broken by "
                   "sequence. A larger limit reads rarer ASVs; time and memory per sample "
                   "grow with the ASVs a sample holds (see the README's 'Speed and scale'). "
                   "Default 256, or the pretrained model's.",
    "embedding_dim": "Width of every embedding and transformer layer (feed-forward width is "
                     "4x this). Default 64, or the pretrained model's.",
    "attention_heads": "Attention heads per transformer layer; must divide embedding-dim. "
                       "Default 4, or the pretrained model's.",
    "nucleotide_layers": "Transformer layers of the nucleotide encoder. Default 2, or the "
                         "pretrained model's.",
    "sample_layers": "Transformer layers of the sample encoder. Default 2, or the pretrained "
                     "model's.",
    "patch_size": "Nucleotides per token of the nucleotide encoder: larger is faster, "
                  "smaller reads finer. Default 4, or the pretrained model's.",
    "target_layers": "Transformer layers between the encoder and the prediction head.",
    "dropout": "Dropout rate in every layer but the nucleotide encoder's. Default 0.1, or the "
               "pretrained model's.",
    "nucleotide_dropout": "Dropout rate in the nucleotide encoder. Its masks cover every "
                          "patch of every distinct ASV and keep attention off its fused "
                          "kernel, which made CPU pretraining about twice as slow at 0.1 "
                          "(see the README's 'Speed and scale'). Default 0, or the "
                          "pretrained model's.",
    "epochs": "Maximum passes over the training samples.",
    "batch_size": "Samples per optimisation step. The UniFrac loss covers all pairs in a "
                  "batch.",
    "learning_rate": "Peak AdamW learning rate (linear warm-up, then cosine decay to 10%).",
    "weight_decay": "AdamW weight decay (not applied to biases, norms and embeddings).",
    "warmup_fraction": "Fraction of all optimisation steps spent warming up the learning "
                       "rate.",
    "patience": "Stop after this many epochs without a better validation loss; 0 never "
                "stops early. The best epoch's weights are kept.",
    "validation_fraction": "Fraction of samples held out for early stopping and model "
                           "selection (0: train on all, keep the last epoch).",
    "unifrac_weight": "Weight of the pairwise UniFrac loss; 0 turns it off. A positive value "
                      "needs a phylogeny or a distance matrix (in 'train' it is an auxiliary "
                      "loss, off by default).",
    "mlm_weight": "Weight of the masked-nucleotide loss (0 turns it off).",
    "mask_rate": "Fraction of nucleotides masked for the masked-nucleotide loss.",
    "freeze_encoder": "Keep the pretrained encoder's weights fixed and train only the target "
                      "branch (default). Its outputs are then computed once, which is much "
                      "faster. No effect without --i-pretrained: the whole model is trained.",
    "linear_readout": "Add a linear model of the log abundances and presences of the ASVs "
                      "held by --p-asv-min-samples or more training samples, fitted before "
                      "training and then kept fixed; the network learns what it leaves. "
                      "Cross-validation on the training samples (by subject with "
                      "--m-subjects-*) picks the penalty: ridge (L2: many ASVs carry a "
                      "little), lasso / elastic net (L1: a few ASVs carry the signal) or "
                      "the relaxed lasso, and its strength. With --i-phylogeny (regression) "
                      "it also reads clades; with --p-categorical-fusion cross-attention "
                      "each ASV's coefficient can depend on the category values. See the "
                      "README's 'Accuracy' section. Default: on.",
    "asv_min_samples": "ASVs held by this many training samples or more get an identity "
                       "embedding (and a linear-readout coefficient) of their own, so the "
                       "model can single out one ASV even when its sequence is nearly that "
                       "of another; rarer and unseen ASVs share one. 0 turns both off.",
    "target_transform": "How a numeric target is scaled for learning (statistics from the "
                        "training samples only; predictions are always in the original "
                        "units): 'none'; 'minmax' to [0, 1]; 'zscore' (mean 0, sd 1; the "
                        "default); 'zscore-category' (within each group of "
                        "--p-normalize-by); 'log-minmax' / 'log-zscore' of log(y + 1), for "
                        "y > -1, when the target spans orders of magnitude (the linear "
                        "readout then becomes linear in log(y)). Numeric targets only; see "
                        "the README's 'The target' section.",
    "normalize_by": "Categorical column(s) of --m-sample-metadata-file whose groups get their "
                    "own z-score; only with --p-target-transform zscore-category, which "
                    "requires it. Several columns form combined groups.",
    "sample_metadata": "Sample metadata holding the --p-categorical-columns and "
                       "--p-normalize-by column(s). In 'predict', needed for a model trained "
                       "with either.",
    "output_constraint": "Range of the model's output, on the transformed scale: 'none'; "
                         "'bounded' (sigmoid into the range of the transformed training "
                         "targets: predictions never leave it); 'nonnegative' (softplus); "
                         "'nonnegative-learnable' (softplus with a learnable scale and "
                         "offset). The nonnegative ones are refused with a centred transform "
                         "(zscore, zscore-category, log-zscore). Default: none.",
    "loss": "Loss for a numeric target, on the transformed scale: 'huber' (delta 1), 'mse', "
            "'mae', 'quantile' (pinball loss over --p-quantiles; the point prediction is the "
            "quantile nearest 0.5) or 'asymmetric' (absolute error weighted by "
            "--p-over-penalty / --p-under-penalty). Default: huber.",
    "quantiles": "Quantiles for --p-loss quantile: sorted, unique, in (0, 1). Default: 0.1 0.5 "
                 "0.9.",
    "over_penalty": "For --p-loss asymmetric: weight of errors where the prediction is too "
                    "high. Default 1.",
    "under_penalty": "For --p-loss asymmetric: weight of errors where the prediction is too "
                     "low. Default 1.",
    "categorical_columns": "Categorical column(s) of --m-sample-metadata-file to condition "
                           "the prediction on (e.g. country, delivery mode). Missing values "
                           "and values not seen in training use an 'unknown' embedding. "
                           "'predict' then needs the same columns.",
    "categorical_fusion": "How the categorical columns enter the model (unused without "
                          "--p-categorical-columns): 'gmu' (the default) gates sequence "
                          "against metadata after pooling; 'concat' or 'add' put one categorical vector on every "
                          "ASV; 'cross-attention' lets each ASV attend to one token per "
                          "column, so taxa can respond to different conditions; 'perceiver' "
                          "has learned latents attend to the ASVs and metadata tokens; "
                          "'none' leaves it to FiLM or output scaling. See the README's "
                          "'Conditioning on categorical metadata' section for measured "
                          "differences.",
    "cross_attn_heads": "Attention heads of cross-attention fusion; must divide the "
                        "embedding dim.",
    "perceiver_num_latents": "Learned latents of perceiver fusion.",
    "perceiver_num_layers": "Self-attention layers over the latents in perceiver fusion.",
    "film_conditioning": "FiLM: scale and shift the prediction head's hidden features by "
                         "the categorical vector (identity at the start).",
    "conditional_output_scaling": "Learn a scale and shift of the output per category "
                                  "value (identity at the start).",
    "class_weights": "For --p-task classification: 'balanced' weights each class by "
                     "n / (k * count) in the cross-entropy, so rare classes count as much as "
                     "common ones; 'none' (default) weights every sample equally.",
    "random_seed": "Seed for initialisation, shuffling, masking and the validation split: "
                   "the same seed gives the same model on the CPU.",
    "device": "'auto' uses a GPU when torch sees one, else the CPU.",
    "match_identity": "An ASV outside the model's training vocabulary (another denoising "
                      "run, trimming or study) is read with the identity and linear-readout "
                      "coefficients of its nearest vocabulary ASV when their alignment "
                      "identity is at least this, as closed-reference OTU picking would "
                      "count it; 1 matches exact sequences only. The log says what share "
                      "of the reads this concerns.",
    "num_processes": "Worker processes to train in (data parallel, DDP): the GPUs to use on "
                     "a GPU machine, CPU processes otherwise. Each reads its share of every "
                     "batch; the UniFrac loss still covers all pairs of the whole batch. "
                     "--p-batch-size must be a multiple of --p-num-processes x "
                     "--p-gradient-accumulation-steps. For several machines, see the "
                     "README (torchrun / accelerate launch). Default 1.",
    "distributed": "With --p-num-processes > 1: 'ddp' (default) keeps a whole copy of the "
                   "model in each process; 'fsdp' shards every weight over the processes "
                   "(each holds 1/N), for models too large for one device.",
    "mixed_precision": "'bf16' or 'fp16' (GPU only) runs the forward pass in half "
                       "precision: faster and lighter on recent GPUs. Default 'no'.",
    "gradient_accumulation_steps": "Split each batch into this many passes per process "
                                   "before one optimizer step: the same training with less "
                                   "memory. Default 1.",
    "activation_checkpointing": "Keep only each transformer layer's input during the "
                                "forward pass and recompute the rest in the backward pass: "
                                "the same model with less memory (at embedding 128 on ECAM: "
                                "a fifth less peak in pretraining, a tenth in fine-tuning) "
                                "but a quarter to a third slower. Use it when training runs "
                                "out of memory. Default off.",
    "checkpoint_dir": "Folder for a checkpoint after every epoch. If the run is stopped, "
                      "run the same command again: it continues from the last checkpoint "
                      "and ends with the model an uninterrupted run would give. Other "
                      "settings than the checkpoint's are refused.",
    "tensorboard_dir": "Folder for TensorBoard logs: each loss, validation metrics in the "
                       "target's units, learning rate, gradient norm, samples per second, "
                       "and GMU gates or attention maps when those fusions are used. View "
                       "with 'tensorboard --logdir DIR'.",
}

TRAINING_PARAMS = {
    "epochs": POSITIVE, "batch_size": POSITIVE,
    "learning_rate": Float % Range(0, None, inclusive_start=False),
    "weight_decay": Float % Range(0, None), "warmup_fraction": FRACTION,
    "patience": Int % Range(0, None), "validation_fraction": FRACTION,
    "mask_rate": Float % Range(0, 1, inclusive_start=False, inclusive_end=False),
    "random_seed": Int % Range(0, None), "device": DEVICE,
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
        "phylogeny": "Rooted tree whose tips are the table's features. For a regressor with "
                     "the linear readout, the readout then also reads the log abundance of "
                     "each clade (subtree) held by 2-98% of the training samples, which is "
                     "how a group of related ASVs that respond together is found. With "
                     "--p-unifrac-weight above 0 it also gives the UniFrac distances of the "
                     "auxiliary loss."},
    parameter_descriptions=_describe(train_params),
    output_descriptions={"model": "The trained regressor or classifier, for 'predict'."},
    name="Train an AAM regressor or classifier",
    description=(
        "Learn to predict a sample metadata column from the sample's ASVs: a number "
        "(--p-task regression) or a class (--p-task classification). Optionally start from a "
        "pretrained encoder (kept frozen by default), and keep UniFrac and masked nucleotides "
        "as auxiliary losses. By default the ASVs held by 2 or more training samples get an "
        "identity embedding and a linear readout fitted in closed form before training (see "
        "--p-linear-readout). Part of the samples is held out for early stopping "
        "(--p-validation-fraction); pass --m-subjects-* for longitudinal data. The model "
        "stores everything 'predict' needs. Progress is printed with --verbose. "
        "Categorical metadata columns (--p-categorical-columns) can condition the prediction. "
        + options.FUSION_GUIDANCE + " Measured accuracy of each option: the README's "
        "'Accuracy' and 'Conditioning on categorical metadata' sections."),
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
            "phylogeny": Phylogeny[Rooted]},
    parameters={"metadata": MetadataColumn[Numeric | Categorical], "task": T_evaluate_task,
                "subjects": MetadataColumn[Categorical],
                "test_size": Float % Range(0, 1, inclusive_start=False, inclusive_end=False),
                "pretrain_epochs": Int % Range(0, None), "epochs": POSITIVE,
                "random_seed": Int % Range(0, None), "device": DEVICE},
    outputs=[("model", T_evaluate_model), ("predictions", T_evaluate_predictions),
             ("accuracy", Visualization)],
    input_descriptions={
        "table": "Read counts of every sample: those with a value in --m-metadata-column are "
                 "split into training and test samples.",
        "sequences": INPUTS["sequences"],
        "phylogeny": "Rooted tree of the table's features: UniFrac for pretraining, and for a "
                     "regressor the linear readout's clades. Optional."},
    parameter_descriptions={
        "metadata": "The column to predict: numeric with --p-task regression, categorical "
                    "with classification.",
        "task": "'regression' (a number) or 'classification' (a class).",
        "subjects": "Subject of each sample (longitudinal data): a subject's samples all go "
                    "to training or all to testing, and to one side of train's validation "
                    "split. Without it samples are split one by one.",
        "test_size": "Share of the samples (or subjects) held out for testing. Default 0.2.",
        "pretrain_epochs": "Pretrain the encoder this many epochs first, on every sample's "
                           "table without labels (with UniFrac when a phylogeny is given, "
                           "else masked nucleotides only). 0 (default): no pretraining.",
        "epochs": "Training epochs (train's --p-epochs). Default 40.",
        "random_seed": "Seed of the split, pretraining and training.",
        "device": PARAMETERS["device"]},
    output_descriptions={
        "model": "The model trained on the training samples, for 'predict'.",
        "predictions": "Predictions for the test samples only.",
        "accuracy": "The accuracy view of the test samples (never seen in training)."},
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
