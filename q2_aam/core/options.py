"""Every choice a user makes, with its allowed values and default: defined once, here.

Torch-free and qiime2-free, so that ``plugin_setup`` builds its ``Choices``
and signature defaults from these tuples, and the core checks values against
the same tuples. The reasons behind each default are given where it is set.
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

#: Target transforms (``targets.TargetTransform``).
TARGET_TRANSFORMS = ("none", "minmax", "zscore", "zscore-category", "log-minmax",
                     "log-zscore")
#: Transforms whose output is negative for part of the training targets by construction.
CENTRED_TRANSFORMS = ("zscore", "zscore-category", "log-zscore")
#: The default of ``train``. The model's linear readout (``linear``) is a ridge regression on
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

#: Where and how training runs (``engine.TrainConfig``).
DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")

#: What ``train`` does with table samples that the metadata lacks.
MISSING_SAMPLES = ("error", "ignore")


def check_choice(name: str, value, allowed: tuple) -> None:
    """Refuse ``value`` for the setting ``name`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
