"""The README's classification example, small (issue 27): a classifier of karelia's
country, trained through the QIIME 2 API on split 0's training infants as the README's
commands do (without the pretraining step, a tiny network and 2 epochs, so that it runs
in about a minute), must beat always calling the most common country on the held-out
infants. (The example as written, with a pretrained encoder: 0.647 against 0.353.)"""
import biom
import pandas as pd
import pytest
import qiime2


@pytest.fixture(scope="module")
def karelia_split():
    from q2_aam.example_data import load_dataset
    from q2_aam.example_data.splits import split_samples
    data = load_dataset("karelia", build_tree=False)
    train, test = split_samples(data.metadata, 0)
    metadata = data.metadata.copy()
    metadata.index.name = "sample-id"
    metadata = qiime2.Metadata(metadata.astype(
        {c: str for c in metadata.columns if c != "age_days"}))

    def table(ids):  # every feature kept, as example_data's train- and test-table.qza
        return qiime2.Artifact.import_data("FeatureTable[Frequency]",
                                           data.table.filter(ids, inplace=False))
    return table(train), table(test), metadata


def test_the_country_classifier_beats_the_most_common_country(aam, karelia_split):
    train, test, metadata = karelia_split
    country = metadata.get_column("country")
    model, = aam.actions.train(
        table=train, metadata=country, task="classification",
        subjects=metadata.get_column("subject"), epochs=2, token_limit=64,
        embedding_dim=16, attention_heads=2, nucleotide_layers=1, sample_layers=1,
        patch_size=8, batch_size=32)
    predictions, probabilities = aam.actions.predict_classification(model=model, table=test)
    predicted = predictions.view(pd.Series)
    truth = country.to_series().loc[predicted.index]
    accuracy = (predicted.astype(str) == truth.astype(str)).mean()
    majority = truth.value_counts(normalize=True).max()
    assert len(predicted) == len(test.view(biom.Table).ids())
    assert accuracy > majority + 0.1, (accuracy, majority, predicted.value_counts())
