"""The linear readout: a linear model of each vocabulary ASV's log abundance and presence
(and, when given, of clades and of ASV x category interactions), fitted in closed form.

A linear model on log abundances and presences, with its penalty chosen by
cross-validation, is what microbiome signals carried by a few ASVs need, and
what stochastic training of the same linear layer does not reach on a few
hundred samples: with Adam and early stopping it stays well below the
closed-form fit (see benchmarks/results/ablation.md). So the model's linear
readout is fitted once, before training, on the training samples, and kept
fixed; the network then learns what the linear model leaves.

Its columns come in blocks, each a ``(samples, n)`` matrix:

* ``level``: each vocabulary ASV's log-abundance level (``1 + log10(rel) / 6``, 0 when
  absent), the model's third abundance feature;
* ``presence``: 1 where the ASV is present;
* ``clade`` (with a phylogeny): the level of each clade's summed relative abundance, for
  the clades (internal nodes) whose vocabulary ASVs are held by 2-98 % of the training
  samples; a clade that responds together is one column instead of many small ones;
* ``conditional`` (with categorical columns, for cross-attention): each ASV's level again,
  once per value of each column, 0 in the samples with another value; so an ASV's
  coefficient can depend on the category (an ASV x category interaction).

Three fits compete, and the lowest cross-validated error on the training samples wins:

* a ridge (L2) penalty, best when many ASVs each carry a little of the signal (as for
  age), with each block after ``level`` scaled by its own weight (0 drops it), also chosen
  by cross-validation, so that thousands of extra columns cannot dilute the ASV levels;
* an elastic net / lasso (L1), best when a few ASVs carry the signal (a biomarker, a
  presence, a balance of two taxa);
* the relaxed lasso: the lasso's support refitted with (almost) no penalty and mixed with
  the lasso, which undoes the lasso's shrinkage of the few coefficients it keeps.

The package, by concept: ``blocks`` (the columns), ``folds`` (cross-validation and the
subsample of large studies), ``ridge`` and ``lasso`` (the candidates), ``choice`` (the
regressor's choice among them), ``logistic`` (the classifier's), ``plan`` (what a new
model's readout covers, and its fit) and ``module`` (the readout inside the model).
"""
from .blocks import BLOCK_ORDER, clades, readout_blocks, relative_matrix
from .choice import fit_regression
from .folds import CV_SAMPLES
from .logistic import fit_classification
from .module import LinearReadout, ReadoutConfig
from .plan import ReadoutPlan, fit_readout, plan_readout

__all__ = ["BLOCK_ORDER", "CV_SAMPLES", "LinearReadout", "ReadoutConfig", "ReadoutPlan",
           "clades", "fit_classification", "fit_readout", "fit_regression", "plan_readout",
           "readout_blocks", "relative_matrix"]
