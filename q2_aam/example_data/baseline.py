"""The random-forest baseline: q2-sample-classifier with its defaults.

``fit_regressor`` / ``fit_classifier`` (100 trees, all features,
``random_state=0``) on the train side's table, then ``predict_regression`` /
``predict_classification`` on the test side's table, through QIIME 2's Python
API.  QIIME 2 is imported inside the functions.
"""

import numpy as np
import pandas as pd
from sklearn import metrics


def _table_and_metadata(data, metadata):
    if hasattr(data, "table") and hasattr(data, "metadata"):
        return data.table, data.metadata if metadata is None else metadata
    if metadata is None:
        raise ValueError("pass a Dataset, or a biom.Table and metadata")
    return data, metadata


def _prepare(data, train_ids, test_ids, target, metadata):
    table, metadata = _table_and_metadata(data, metadata)
    train_ids = [str(i) for i in train_ids]
    test_ids = [str(i) for i in test_ids]
    if set(train_ids) & set(test_ids):
        raise ValueError("train and test samples overlap")
    values = metadata[target]
    # Samples whose target is missing cannot be fitted or scored.
    train_ids = [i for i in train_ids if pd.notna(values.loc[i])]
    test_ids = [i for i in test_ids if pd.notna(values.loc[i])]
    if not train_ids or not test_ids:
        raise ValueError(f"no samples with a {target!r} value on one side")
    train = table.filter(train_ids, axis="sample", inplace=False)
    test = table.filter(test_ids, axis="sample", inplace=False)
    return train, test, values, train_ids, test_ids


def _artifacts(train, test):
    import qiime2

    return (qiime2.Artifact.import_data("FeatureTable[Frequency]", train),
            qiime2.Artifact.import_data("FeatureTable[Frequency]", test))


def _column(values, ids, numeric):
    import qiime2

    series = values.loc[ids].copy()
    series.index = pd.Index(ids, name="sample-id")
    series.name = str(values.name)
    if numeric:
        return qiime2.NumericMetadataColumn(series.astype(float))
    return qiime2.CategoricalMetadataColumn(series.astype(str))


def _fit_predict(data, train_ids, test_ids, target, metadata, numeric, **forest):
    """q2-sample-classifier's forest fitted on the train side, predicting the test side.

    Returns ``(predictions by test sample ID, truth array, n_train, n_test)``.
    """
    from qiime2.plugins import sample_classifier

    train, test, values, train_ids, test_ids = _prepare(
        data, train_ids, test_ids, target, metadata)
    train_art, test_art = _artifacts(train, test)
    actions = sample_classifier.actions
    fit, predict = ((actions.fit_regressor, actions.predict_regression) if numeric
                    else (actions.fit_classifier, actions.predict_classification))
    fitted = fit(table=train_art, metadata=_column(values, train_ids, numeric=numeric),
                 **forest)
    predicted = predict(table=test_art, sample_estimator=fitted.sample_estimator,
                        n_jobs=forest["n_jobs"])
    kind = float if numeric else str
    predictions = predicted.predictions.view(pd.Series).astype(kind).reindex(test_ids)
    truth = values.loc[test_ids].astype(kind).to_numpy()
    return predictions, truth, len(train_ids), len(test_ids)


def random_forest(data, train_ids, test_ids, target="age_days", *,
                  metadata=None, n_estimators=100, random_state=0, n_jobs=1):
    """Fit a random-forest regressor on the train samples, score the test.

    ``data``: a :class:`~q2_aam.example_data.mitre.Dataset`, or a biom.Table
    together with ``metadata`` (DataFrame indexed by sample ID).  Returns
    ``{"mae", "r2", "predictions" (pd.Series by test sample ID), "n_train",
    "n_test", "target"}``.
    """
    predictions, truth, n_train, n_test = _fit_predict(
        data, train_ids, test_ids, target, metadata, True,
        n_estimators=n_estimators, random_state=random_state, n_jobs=n_jobs)
    return {
        "target": target,
        "mae": float(metrics.mean_absolute_error(truth, predictions)),
        "r2": float(metrics.r2_score(truth, predictions)),
        "predictions": predictions, "n_train": n_train, "n_test": n_test,
    }


def classify(data, train_ids, test_ids, target, *, metadata=None,
             n_estimators=100, random_state=0, n_jobs=1):
    """Fit a random-forest classifier on the train samples, score the test.

    Returns ``{"accuracy", "balanced_accuracy", "predictions", "n_train",
    "n_test", "target"}``.
    """
    predictions, truth, n_train, n_test = _fit_predict(
        data, train_ids, test_ids, target, metadata, False,
        n_estimators=n_estimators, random_state=random_state, n_jobs=n_jobs)
    return {
        "target": target,
        "accuracy": float(metrics.accuracy_score(truth, predictions)),
        "balanced_accuracy": float(
            metrics.balanced_accuracy_score(truth, predictions)),
        "predictions": predictions, "n_train": n_train, "n_test": n_test,
    }


def mean_predictor(data, train_ids, test_ids, target="age_days", *,
                   metadata=None):
    """The floor: predict the train mean for every test sample (MAE)."""
    _table, metadata = _table_and_metadata(data, metadata)
    values = metadata[target].astype(float)
    train = values.loc[[str(i) for i in train_ids]].dropna()
    test = values.loc[[str(i) for i in test_ids]].dropna()
    return {"target": target,
            "mae": float(np.mean(np.abs(test - train.mean())))}
