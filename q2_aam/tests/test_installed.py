"""The installed plugin works end to end on tiny generated data (no network, no downloads):
every action's usage example runs, and the core trains, saves, loads and predicts."""
import numpy as np
from qiime2.plugin.testing import TestPluginBase


class TestInstalledPlugin(TestPluginBase):
    package = "q2_aam.tests"

    def test_every_action_has_an_example_and_they_run(self):
        self.assertTrue(all(action.examples for action in self.plugin.actions.values()))
        self.execute_examples()

    def test_train_save_load_predict(self):
        from q2_aam import _examples
        from q2_aam.core import api
        from q2_aam.core.bundle import ModelBundle
        from q2_aam.core.data import AmpliconSamples
        from q2_aam.core.engine import TrainConfig
        counts, ids, sequences, metadata = _examples._data()
        samples = AmpliconSamples.from_counts(counts, ids, sequences, sequences, token_limit=16)
        bundle = api.train(samples, metadata["age"].to_numpy(), task="regression",
                           architecture=dict(embedding_dim=16, attention_heads=2,
                                             nucleotide_layers=1, sample_layers=1,
                                             patch_size=8),
                           config=TrainConfig(epochs=2, batch_size=8, seed=0, device="cpu"),
                           log=lambda message: None)
        folder = self.temp_dir.name + "/model"
        bundle.save(folder)
        loaded = ModelBundle.load(folder)
        before = api.predict(bundle, samples, log=lambda message: None)
        after = api.predict(loaded, samples, log=lambda message: None)
        self.assertEqual(before.shape, (len(ids),))
        self.assertTrue(np.isfinite(after).all())
        np.testing.assert_allclose(before, after, rtol=1e-5)
