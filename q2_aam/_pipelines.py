"""``train-and-evaluate``: from a table to a scored model in one action (a QIIME 2 Pipeline,
like q2-sample-classifier's ``regress-samples``), built from the plugin's own actions so that
each step has its own provenance."""
import numpy as np
import pandas as pd

from .core.options import (DEFAULT_CLASS_WEIGHTS, DEFAULT_DEVICE, DEFAULT_FUSION,
                           DEFAULT_MISSING_SAMPLES, DEFAULT_TASK, PRETRAIN_RECIPE, TEST_SIZE,
                           TRAIN_RECIPE, TRAINING)


def split_ids(ids: list, truth: pd.Series, subjects: pd.Series | None, test_size: float,
              seed: int) -> tuple[list, list]:
    """Training and test sample IDs among ``ids`` that have a value in ``truth``; whole
    subjects go to one side when ``subjects`` is given (a longitudinal study's samples of one
    subject never judge each other)."""
    from sklearn.model_selection import GroupShuffleSplit
    labelled = [i for i in ids if i in truth.index and not pd.isna(truth[i])]
    if subjects is None:
        groups = np.asarray(labelled)
    else:
        unknown = [i for i in labelled if i not in subjects.index or pd.isna(subjects[i])]
        if unknown:
            raise ValueError(f"{len(unknown)} sample(s) have no subject in the column "
                             f"{subjects.name!r} (e.g. {unknown[0]!r}); every sample to split "
                             "needs one. Fill the column or leave out --m-subjects-*.")
        groups = subjects.reindex(labelled).astype(str).to_numpy()
    if len(set(groups)) < 4:
        unit = "subjects" if subjects is not None else "samples"
        raise ValueError(f"Only {len(set(groups))} {unit} with a value in {truth.name!r}: "
                         "too few to hold some out for testing and still train. Give "
                         "more samples, or use 'train' and "
                         "'accuracy' with a test table of your own.")
    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(split.split(np.zeros(len(labelled)), groups=groups))
    return [labelled[k] for k in train], [labelled[k] for k in test]


def train_and_evaluate(ctx, table, metadata, task=DEFAULT_TASK, sequences=None,
                       phylogeny=None, pretrained=None, subjects=None, sample_metadata=None,
                       categorical_columns=None, categorical_fusion=DEFAULT_FUSION,
                       missing_samples=DEFAULT_MISSING_SAMPLES,
                       class_weights=DEFAULT_CLASS_WEIGHTS, test_size=TEST_SIZE,
                       pretrain_epochs=0, epochs=TRAIN_RECIPE["epochs"],
                       random_state=TRAINING["seed"], device=DEFAULT_DEVICE):
    import biom
    import qiime2
    regression = task == "regression"
    if pretrained is not None and pretrain_epochs:
        raise ValueError("Both --i-pretrained and --p-pretrain-epochs were given: start "
                         "from the given encoder (leave out --p-pretrain-epochs) or pretrain "
                         "a new one (leave out --i-pretrained).")
    if phylogeny is not None and not regression and not pretrain_epochs:
        raise ValueError("A phylogeny was given, but it would not be used: a classifier's "
                         "training does not read it, and --p-pretrain-epochs is 0. Set "
                         "--p-pretrain-epochs to pretrain with UniFrac, or leave the input "
                         "out.")
    ids = [str(i) for i in table.view(biom.Table).ids()]
    truth = metadata.to_series()
    absent = [i for i in ids if i not in truth.index]
    if absent and missing_samples == "error":
        raise ValueError(
            f"{len(absent)} sample(s) of the table are not in the metadata (e.g. "
            f"{absent[0]!r}). Add them to the metadata, filter them from the table, or pass "
            "--p-missing-samples ignore to leave them out.")
    train_ids, test_ids = split_ids(ids, truth, None if subjects is None else
                                    subjects.to_series(), test_size, random_state)
    filter_samples = ctx.get_action("feature_table", "filter_samples")

    def part(sample_ids):
        kept = qiime2.Metadata(pd.DataFrame(index=pd.Index(sample_ids, name="sample-id")))
        return filter_samples(table=table, metadata=kept)[0]

    train_table, test_table = part(train_ids), part(test_ids)
    common = dict(random_state=random_state, device=device)
    encoder = pretrained
    if pretrain_epochs:
        # Unlabelled: every sample's table, no target (as in the benchmarks: docs/accuracy.md).
        encoder, = ctx.get_action("aam", "pretrain")(
            table=table, sequences=sequences, phylogeny=phylogeny,
            unifrac_weight=PRETRAIN_RECIPE["unifrac_weight"] if phylogeny is not None else 0.0,
            epochs=pretrain_epochs, **common)
    conditioning = (dict(categorical_columns=categorical_columns,
                         categorical_fusion=categorical_fusion) if categorical_columns else {})
    model, = ctx.get_action("aam", "train")(
        table=train_table, metadata=metadata, task=task, sequences=sequences,
        pretrained=encoder, phylogeny=phylogeny if regression else None, subjects=subjects,
        sample_metadata=sample_metadata, missing_samples=missing_samples, epochs=epochs,
        **({} if regression else {"class_weights": class_weights}), **conditioning, **common)
    model_metadata = {"sample_metadata": sample_metadata} if categorical_columns else {}
    predict = ctx.get_action("aam", "predict" if regression else "predict_classification")
    predictions = predict(model=model, table=test_table, sequences=sequences, device=device,
                          **model_metadata)[0]
    accuracy_results, = ctx.get_action("aam", "accuracy")(
        model=model, table=test_table, metadata=metadata, sequences=sequences, device=device,
        **model_metadata)
    return model, predictions, accuracy_results
