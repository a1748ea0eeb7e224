"""Classifier probabilities (issue 15): predict-classification's output opens in
q2-sample-classifier's confusion-matrix, which then draws ROC curves."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def classified():
    from qiime2.plugins import aam
    from q2_aam import _examples
    model, table = _examples.classifier_factory(), _examples.table_factory()
    predictions, probabilities = aam.methods.predict_classification(model=model, table=table)
    return model, table, predictions, probabilities


def test_probabilities_are_a_distribution_per_sample(classified):
    model, _, predictions, probabilities = classified
    assert str(probabilities.type) == "SampleData[Probabilities]"
    frame = probabilities.view(__import__("pandas").DataFrame)
    assert list(frame.columns) == ["summer", "winter"]
    assert len(frame) == 40
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, atol=1e-6)
    # The predicted class is the most probable one, and matches plain predict.
    from qiime2.plugins import aam
    classes = predictions.view(__import__("pandas").Series)
    assert (frame.idxmax(axis=1) == classes).all()
    plain = aam.methods.predict(model=model, table=classified[1]).predictions
    assert (plain.view(__import__("pandas").Series) == classes).all()


def test_confusion_matrix_draws_roc_curves(classified, tmp_path):
    from qiime2.plugins import sample_classifier
    from q2_aam import _examples
    _, _, predictions, probabilities = classified
    truth = _examples.metadata_factory().get_column("season")
    view, = sample_classifier.visualizers.confusion_matrix(
        predictions=predictions, probabilities=probabilities, truth=truth)
    view.export_data(str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    assert "ROC" in page or "roc" in page
    assert any(p.name.startswith("roc") for p in tmp_path.iterdir()), sorted(
        p.name for p in tmp_path.iterdir())


def test_a_regressor_is_refused(tmp_path):
    from qiime2.plugins import aam
    from q2_aam import _examples
    with pytest.raises(TypeError):  # QIIME 2 refuses the type before the action runs
        aam.methods.predict_classification(model=_examples.model_factory(),
                                           table=_examples.table_factory())
