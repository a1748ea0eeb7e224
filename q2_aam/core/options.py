"""Every choice a user makes, with its allowed values and default, and the actions' training
recipes: defined once, here.

Torch-free and qiime2-free, so that ``plugin_setup`` builds its ``Choices``
and signature defaults from these tuples, and the core checks values against
the same tuples; the core's dataclasses, the actions, the views and the
benchmarks read their defaults here. The reasons behind each default are given
where it is set.
"""
from __future__ import annotations

#: ASVs read per sample (its most abundant) unless a pretrained model says otherwise.
DEFAULT_TOKEN_LIMIT = 256
#: Epochs without a better validation loss before training stops: the core's and
#: pretraining's default, and the plugin's ``train`` (whose starting point is already a
#: fitted readout, so it is given longer to improve on it).
DEFAULT_PATIENCE = 10
TRAIN_PATIENCE = 15

#: What ``train`` learns (``encoder`` is what ``pretrain`` makes).
TASKS = ("regression", "classification")
MODEL_TASKS = ("encoder",) + TASKS
DEFAULT_TASK = "regression"

#: Target transforms (``targets.TargetTransform``).
TARGET_TRANSFORMS = ("none", "minmax", "zscore", "zscore-category", "log-minmax",
                     "log-zscore")
#: Transforms whose output is negative for part of the training targets by construction.
CENTRED_TRANSFORMS = ("zscore", "zscore-category", "log-zscore")
#: The default of ``train``. The model's linear readout (``readout``) is a ridge regression on
#: log abundances, fitted on this scale: with 'log-zscore' it fitted log(age) linearly and the
#: ECAM development folds' MAE rose from 104 to 142 days (benchmarks/results/ablation.md).
DEFAULT_TARGET_TRANSFORM = "zscore"

#: Output constraints of a regressor (``model.OutputConstraint``).
OUTPUT_CONSTRAINTS = ("none", "bounded", "nonnegative", "nonnegative-learnable")
DEFAULT_OUTPUT_CONSTRAINT = "none"

#: Regression losses (``losses.RegressionLoss``).
REGRESSION_LOSSES = ("huber", "mse", "mae", "quantile", "asymmetric")
#: Huber: as accurate as MSE on the benchmarks and not pulled by a few extreme targets.
DEFAULT_LOSS = "huber"
#: The quantile loss's quantiles unless others are given.
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
#: The asymmetric loss's penalties unless others are given (1, 1 is the MAE).
DEFAULT_PENALTY = 1.0

#: Class weights of a classifier's cross-entropy.
CLASS_WEIGHTS = ("none", "balanced")
DEFAULT_CLASS_WEIGHTS = "none"

#: How categorical metadata enters the model (``fusion``).
FUSION_MODES = ("none", "concat", "add", "gmu", "cross-attention", "perceiver")
#: Fusion when columns are given without a mode: the residual GMU. With the linear readout
#: (benchmarks/results/fusion.md, split 0), age MAE against no conditioning: ECAM (delivery,
#: diet) -0.5 days, karelia (country) -1.9, the best there; cross-attention -1.7 and +8.3.
#: Only cross-attention learns an ASV x category signal (the suite's interaction target,
#: suite.md: R² 0.830 against 0.501 for the GMU), through its readout: FUSION_GUIDANCE says
#: so, and a user who expects such a signal chooses it.
DEFAULT_FUSION = "gmu"
#: The modes that read one pooled categorical vector, and those that read metadata tokens.
VECTOR_FUSIONS = ("concat", "add", "gmu")
TOKEN_FUSIONS = ("cross-attention", "perceiver")
#: The GMU's two forms; residual (h + z * tanh(W_c c)) was better than the canonical unit on
#: every ECAM split measured (benchmarks/results/fusion-before-readout.md).
GMU_VARIANTS = ("canonical", "residual")
DEFAULT_GMU_VARIANT = "residual"
#: Sizes of the token fusions (``model.ModelConfig``): cross-attention's heads, and the
#: perceiver's latents and the layers over them.
FUSION_SIZES = {"cross_attn_heads": 8, "perceiver_num_latents": 16, "perceiver_num_layers": 2}
#: The same, in brief, for --help.
FUSION_CHOICES = (
    "'gmu' gates the metadata in or out (safe); 'cross-attention' gives each ASV a "
    "coefficient per category value (taxa that respond to conditions); others: "
    "docs/parameters.md.")
FUSION_GUIDANCE = (
    "Which conditioning to use: 'gmu' (the default) to let each sample gate the metadata "
    "in or out, the safe choice when it is unclear whether the columns help; "
    "'cross-attention' when different taxa should respond to different conditions: its "
    "linear readout gives each ASV a coefficient per category value, the only mode that "
    "learned such a signal in our benchmarks (other modes do not); 'concat' for a few "
    "simple columns; 'add' + --p-conditional-output-scaling for a per-category shift of "
    "the target; "
    "'perceiver' for many ASVs or many, often missing, columns; --p-film-conditioning "
    "(with fusion 'none') to modulate the prediction head's features.")

#: At prediction, a sequence outside the training vocabulary reads the identity and readout
#: coefficients of its nearest vocabulary sequence when they share this alignment identity
#: (``vocabulary``): closed-reference OTU picking's customary 97 %. 1 turns it off.
DEFAULT_MATCH_IDENTITY = 0.97

#: UniFrac variants computed from a phylogeny.
UNIFRAC_METRICS = ("unweighted", "weighted-normalized")
DEFAULT_UNIFRAC_METRIC = "unweighted"
#: Up to this many samples, UniFrac is computed once as a full matrix (fastest); past it,
#: per batch from the tree (``unifrac.TreeDistances``), since n x n doubles outgrow memory
#: (5,000 samples: 200 MB; 100,000: 80 GB).
UNIFRAC_MATRIX_MAX_SAMPLES = 5000

#: Where and how training runs (``engine.TrainConfig``).
DEVICES = ("auto", "cpu", "cuda")
#: A GPU when torch sees one (training, prediction and the views).
DEFAULT_DEVICE = "auto"
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")

#: What ``train`` does with table samples that the metadata lacks.
MISSING_SAMPLES = ("error", "ignore")
DEFAULT_MISSING_SAMPLES = "error"

#: The architecture of a new model (``model.ModelConfig``); ``train`` from a pretrained
#: encoder keeps the encoder's, all but its own head's ``target_layers``. The nucleotide
#: encoder has no dropout of its own: its activations are (distinct ASVs x patches x width),
#: drawing a dropout mask over them took a quarter of a CPU pretraining step, and the masks
#: keep attention off its fused kernel; a step took 4.27 s with dropout 0.1, 2.26 s with 0
#: (profile at embedding 128; docs/scale.md).
ARCHITECTURE = {"embedding_dim": 64, "attention_heads": 4, "nucleotide_layers": 2,
                "sample_layers": 2, "patch_size": 4, "target_layers": 1, "dropout": 0.1,
                "nucleotide_dropout": 0.0}

#: How a model is trained unless told otherwise (``engine.TrainConfig``); the actions change
#: some of these by their recipe (``PRETRAIN_RECIPE``, ``TRAIN_RECIPE``).
TRAINING = {"epochs": 20, "batch_size": 16, "learning_rate": 1e-3, "weight_decay": 0.01,
            "warmup_fraction": 0.05, "patience": DEFAULT_PATIENCE, "max_grad_norm": 1.0,
            "seed": 0, "device": DEFAULT_DEVICE, "num_processes": 1, "distributed": "ddp",
            "mixed_precision": "no", "gradient_accumulation_steps": 1,
            "activation_checkpointing": False}
#: Share of the nucleotides that the masked-nucleotide loss masks.
MASK_RATE = 0.15
#: ``pretrain``'s recipe (the action's and ``api.pretrain``'s) where it differs from
#: ``TRAINING``: both self-supervised losses, a tenth of the samples held out to choose the epoch.
PRETRAIN_RECIPE = {"epochs": 10, "validation_fraction": 0.1, "unifrac_weight": 1.0,
                   "mlm_weight": 1.0}
#: ``train``'s recipe, which the benchmarks reproduce (``benchmarks/common.train_defaults``):
#: the target's loss alone, on a fixed pretrained encoder, after a linear readout of the ASVs
#: that ``asv_min_samples`` training samples or more hold.
TRAIN_RECIPE = {"epochs": 40, "patience": TRAIN_PATIENCE, "validation_fraction": 0.2,
                "unifrac_weight": 0.0, "mlm_weight": 0.0, "freeze_encoder": True,
                "linear_readout": True, "asv_min_samples": 2,
                "target_transform": DEFAULT_TARGET_TRANSFORM}
#: Samples per forward pass when a trained model predicts (no gradients, so more than in
#: training): ``predict`` and the views.
PREDICT_BATCH_SIZE = 64
#: Samples per batch of the per-ASV response (``explain.conditioning_response``) when called
#: from Python: each batch is run once per slot, column and value.
RESPONSE_BATCH_SIZE = 16
#: ``train-and-evaluate``'s share of the samples (or subjects) held out for testing.
TEST_SIZE = 0.2
#: ``explain-conditioning``: ASVs shown per heatmap, and the samples that must hold an ASV
#: for it to be ranked.
CONDITIONING_VIEW = {"top_n": 30, "min_samples": 5}


def check_choice(name: str, value, allowed: tuple) -> None:
    """Refuse ``value`` for the setting ``name`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
