"""Usage examples shown by ``--help`` (and run by the tests).

The factories build a small synthetic data set (feature IDs are the DNA
sequences, so no FeatureData[Sequence] is needed) and train a tiny
cross-attention model on it in a few seconds; the examples show the same
commands a user runs on real data.
"""
import numpy as np
import pandas as pd

from .core.options import TRAIN_RECIPE

N_SAMPLES, N_FEATURES = 40, 12


def _data():
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ACGT"), 40)) for _ in range(N_FEATURES)]
    counts = rng.integers(0, 50, (N_SAMPLES, N_FEATURES)) * (rng.random((N_SAMPLES, N_FEATURES))
                                                            < 0.6)
    counts[:, 0] += 1  # every sample has reads
    ids = [f"sample{i + 1}" for i in range(N_SAMPLES)]
    season = np.where(np.arange(N_SAMPLES) % 2 == 0, "summer", "winter")
    age = 30 + 2.0 * counts[:, 1] * (season == "summer") + rng.normal(0, 3, N_SAMPLES)
    metadata = pd.DataFrame({"age": age, "season": season},
                            index=pd.Index(ids, name="sample-id"))
    return counts, ids, sequences, metadata


def table_factory():
    import biom
    import qiime2
    counts, ids, sequences, _ = _data()
    return qiime2.Artifact.import_data("FeatureTable[Frequency]",
                                       biom.Table(counts.T.astype(float), sequences, ids))


def metadata_factory():
    import qiime2
    return qiime2.Metadata(_data()[3])


def _tiny_model(task: str, target: str, semantic: str, **settings):
    """A model trained in seconds on the example data (``settings``: architecture extras and
    ``categorical``), as an artifact of type ``semantic``."""
    import qiime2
    from .core import api
    from .core.data import AmpliconSamples
    from .core.engine import TrainConfig
    counts, ids, sequences, metadata = _data()
    samples = AmpliconSamples.from_counts(counts, ids, sequences, sequences, token_limit=16)
    categorical = settings.pop("categorical", None)
    values = metadata[target]
    bundle = api.train(
        samples, values.to_numpy() if task == "regression" else values.tolist(), task=task,
        target_name=target,
        architecture=dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1,
                          sample_layers=1, patch_size=8, max_sequence_length=64, **settings),
        config=TrainConfig(epochs=3, batch_size=8, seed=0),
        categorical=None if categorical is None else
        {c: metadata[c].tolist() for c in categorical}, log=lambda message: None)
    return qiime2.Artifact.import_data(semantic, bundle)


def encoder_factory():
    """A tiny encoder (masked nucleotides only, one epoch), to start the train examples:
    they then take its architecture and need no architecture flags."""
    import qiime2
    from .core import api
    from .core.data import AmpliconSamples
    from .core.engine import TrainConfig
    counts, ids, sequences, _ = _data()
    samples = AmpliconSamples.from_counts(counts, ids, sequences, sequences, token_limit=16)
    bundle = api.pretrain(
        samples, None, architecture=dict(embedding_dim=16, attention_heads=2,
                                         nucleotide_layers=1, sample_layers=1, patch_size=8,
                                         max_sequence_length=64),
        config=TrainConfig(epochs=1, batch_size=8, seed=0), unifrac_weight=0.0,
        log=lambda message: None)
    return qiime2.Artifact.import_data("AAMModel[AAMEncoder]", bundle)


def model_factory():
    return _tiny_model("regression", "age", "AAMModel[AAMRegressor]", categorical=["season"],
                       categorical_fusion="cross-attention", cross_attn_heads=2)


def tree_factory():
    """A rooted tree over the example's ASVs (random topology and branch lengths)."""
    import qiime2
    import skbio
    _, _, sequences, _ = _data()
    rng = np.random.default_rng(1)
    nodes = [skbio.TreeNode(name=s, length=float(rng.uniform(0.01, 0.2))) for s in sequences]
    while len(nodes) > 1:
        a, b = nodes.pop(int(rng.integers(len(nodes)))), nodes.pop(int(rng.integers(len(nodes))))
        nodes.append(skbio.TreeNode(children=[a, b], length=float(rng.uniform(0.01, 0.2))))
    root = nodes[0]
    root.length = None
    return qiime2.Artifact.import_data("Phylogeny[Rooted]", root)


#: Architecture and training settings that make the examples run in seconds (real data
#: keeps the defaults).
TINY = dict(embedding_dim=16, attention_heads=2, nucleotide_layers=1, sample_layers=1,
            patch_size=8, batch_size=8)


def pretrain(use):
    table = use.init_artifact("table", table_factory)
    tree = use.init_artifact("phylogeny", tree_factory)
    use.comment("Self-supervised: UniFrac between samples and masked nucleotides; no labels. "
                "The small architecture and 3 epochs keep the example fast; on real data keep "
                "the defaults (and pass --i-sequences when the feature IDs are hashes).")
    use.action(use.UsageAction(plugin_id="aam", action_id="pretrain"),
               use.UsageInputs(table=table, phylogeny=tree, epochs=3, **TINY),
               use.UsageOutputNames(model="encoder"))


def _table_and_age(use):
    """The example table, its sample metadata and the metadata's ``age`` column."""
    table = use.init_artifact("table", table_factory)
    metadata = use.init_metadata("sample_metadata", metadata_factory)
    return table, metadata, use.get_metadata_column("age", "age", metadata)


def train_regressor(use):
    table, _, age = _table_and_age(use)
    encoder = use.init_artifact("encoder", encoder_factory)
    use.comment("From a pretrained encoder (its architecture is kept); 3 epochs for speed.")
    use.action(use.UsageAction(plugin_id="aam", action_id="train"),
               use.UsageInputs(table=table, pretrained=encoder, metadata=age, epochs=3),
               use.UsageOutputNames(model="regressor"))


def train_cross_attention(use):
    table, metadata, age = _table_and_age(use)
    encoder = use.init_artifact("encoder", encoder_factory)
    use.comment("Each ASV attends to the season: an ASV can count differently by season.")
    use.action(use.UsageAction(plugin_id="aam", action_id="train"),
               use.UsageInputs(table=table, pretrained=encoder, metadata=age,
                               sample_metadata=metadata, categorical_columns=["season"],
                               categorical_fusion="cross-attention", epochs=3),
               use.UsageOutputNames(model="conditioned_regressor"))


def predict(use):
    model, table, metadata = _inputs(use)
    use.comment("The model was trained with --p-categorical-columns season, so predict "
                "reads season from the sample metadata too.")
    use.action(use.UsageAction(plugin_id="aam", action_id="predict"),
               use.UsageInputs(model=model, table=table, sample_metadata=metadata),
               use.UsageOutputNames(predictions="predictions"))


def classifier_factory():
    return _tiny_model("classification", "season", "AAMModel[AAMClassifier]")


def predict_classification(use):
    model = use.init_artifact("classifier", classifier_factory)
    table = use.init_artifact("table", table_factory)
    use.comment("A classifier trained on season. The probabilities go to q2-sample-classifier:"
                " qiime sample-classifier confusion-matrix --i-predictions predictions.qza "
                "--i-probabilities probabilities.qza --m-truth-file sample-metadata.tsv "
                "--m-truth-column season --o-visualization confusion.qzv")
    use.action(use.UsageAction(plugin_id="aam", action_id="predict_classification"),
               use.UsageInputs(model=model, table=table),
               use.UsageOutputNames(predictions="predictions", probabilities="probabilities"))


def _inputs(use):
    model = use.init_artifact("model", model_factory)
    table = use.init_artifact("table", table_factory)
    metadata = use.init_metadata("sample_metadata", metadata_factory)
    return model, table, metadata


def training_history(use):
    model = use.init_artifact("model", model_factory)
    use.action(use.UsageAction(plugin_id="aam", action_id="training_history"),
               use.UsageInputs(model=model),
               use.UsageOutputNames(visualization="history"))


def accuracy(use):
    model, table, metadata = _inputs(use)
    age = use.get_metadata_column("age", "age", metadata)
    use.comment("Score samples the model did not train on; here the conditioned model also "
                "needs its categorical column (season), from the same metadata.")
    use.action(use.UsageAction(plugin_id="aam", action_id="accuracy"),
               use.UsageInputs(model=model, table=table, metadata=age,
                               sample_metadata=metadata),
               use.UsageOutputNames(visualization="accuracy"))


def explain_conditioning(use):
    model, table, metadata = _inputs(use)
    use.comment("The model was trained with --p-categorical-columns season "
                "--p-categorical-fusion cross-attention; add --i-taxonomy to label the ASVs.")
    use.action(use.UsageAction(plugin_id="aam", action_id="explain_conditioning"),
               use.UsageInputs(model=model, table=table, sample_metadata=metadata,
                               top_n=10, min_samples=3),
               use.UsageOutputNames(visualization="cross_attention"))


def train_and_evaluate(use):
    table, _, age = _table_and_age(use)
    use.comment("Hold out a fifth of the samples, train on the rest and score the held-out "
                "ones. With longitudinal data add --m-subjects-file/--m-subjects-column so a "
                "subject's samples stay on one side; --p-pretrain-epochs pretrains first. 3 "
                "epochs keep the example fast; on real data keep the default "
                f"({TRAIN_RECIPE['epochs']}).")
    use.action(use.UsageAction(plugin_id="aam", action_id="train_and_evaluate"),
               use.UsageInputs(table=table, metadata=age, task="regression", epochs=3),
               use.UsageOutputNames(model="model", predictions="test_predictions",
                                    accuracy_results="test_accuracy"))
