"""A training run's side outputs: checkpoints and resume, TensorBoard, accumulation, precision."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from q2_aam.core import api
from q2_aam.core.engine import TrainConfig

from conftest import SMALL_ARCHITECTURE, random_samples

SMALL = dict(SMALL_ARCHITECTURE, max_sequence_length=40, dropout=0.1)
CONFIG = dict(epochs=5, batch_size=4, seed=3, device="cpu")
STEPS_PER_EPOCH = 4  # 16 training samples (20, of which 4 validate), batches of 4

# Trains in a child process; SIGKILLs itself in the optimizer step after KILL_AFTER steps.
CHILD = """
import atexit, os, signal, sys, threading
import numpy as np, torch
sys.path.insert(0, {tests!r})
atexit.register(lambda: print("threads at exit:", sorted(
    t.name for t in threading.enumerate() if t is not threading.main_thread()),
    file=sys.stderr))
from conftest import random_samples
from q2_aam.core import api
from q2_aam.core.engine import TrainConfig
kill_after, steps = int(os.environ.get("KILL_AFTER", "0")), [0]
original = torch.optim.AdamW.step
def step(self, *args, **kwargs):
    steps[0] += 1
    if kill_after and steps[0] > kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
torch.optim.AdamW.step = step
samples = random_samples(n_samples=20, token_limit=8)
api.train(samples, np.linspace(0, 10, 20), task="regression", architecture={small!r},
          config=TrainConfig(**{config!r}), validation_fraction=0.2,
          checkpoint_dir=sys.argv[1], log=lambda m: None).save(sys.argv[2])
"""


def run_child(checkpoints, output, kill_after=0):
    script = CHILD.format(tests=str(Path(__file__).parent), small=SMALL, config=CONFIG)
    env = {**os.environ, "KILL_AFTER": str(kill_after), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script, str(checkpoints), str(output)],
                          env=env, capture_output=True, text=True)


def test_killed_run_resumes_to_the_same_model(tmp_path):
    from q2_aam.core.bundle import ModelBundle
    whole = run_child(tmp_path / "ck-whole", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = run_child(tmp_path / "ck", tmp_path / "resumed", kill_after=2 * STEPS_PER_EPOCH + 1)
    assert killed.returncode == -9  # SIGKILL, in epoch 3
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    assert not (tmp_path / "resumed").exists()
    resumed = run_child(tmp_path / "ck", tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    a, b = ModelBundle.load(tmp_path / "whole"), ModelBundle.load(tmp_path / "resumed")
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=0, msg=key)
    assert [r["val_target"] for r in a.training["history"]] == \
        [r["val_target"] for r in b.training["history"]]


def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_one_before(tmp_path):
    from q2_aam.core.bundle import ModelBundle
    script = CHILD.format(tests=str(Path(__file__).parent), small=SMALL, config=CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "kill_hook"),
                                          os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", script, str(tmp_path / "ck"), str(tmp_path / "resumed")]
    killed = subprocess.run(args, env={**env, "AAM_KILL_IN_SAVE": "epoch-3/rng"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    assert (tmp_path / "ck" / "epoch-3" / "weights-0.safetensors").exists()  # half-saved
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = run_child(tmp_path / "ck-whole", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    a, b = ModelBundle.load(tmp_path / "whole"), ModelBundle.load(tmp_path / "resumed")
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=0, msg=key)


def _disk_full_in(monkeypatch, where: str) -> None:
    """safetensors' writer fails as it does on a full disk, for paths holding ``where``
    (after writing part of the file, as a real full disk does)."""
    import safetensors.torch
    from safetensors import SafetensorError
    original = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if where in str(filename):
            Path(filename).write_bytes(b"\x00" * 64)
            raise SafetensorError("Error while serializing: I/O error: No space left on "
                                  "device (os error 28)")
        return original(tensors, filename, *args, **kwargs)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    samples = random_samples(n_samples=20, token_limit=8)
    kwargs = dict(task="regression", architecture=SMALL, validation_fraction=0.2,
                  config=TrainConfig(**CONFIG), checkpoint_dir=str(tmp_path / "ck"),
                  log=lambda m: None)
    with monkeypatch.context() as patch:
        _disk_full_in(patch, "epoch-3")
        with pytest.raises(OSError, match=r"Could not write the checkpoint .*epoch-3 \(No "
                           r"space left on device\); .*latest still names epoch-2, which "
                           r"resumes. Free some space"):
            api.train(samples, np.linspace(0, 10, 20), **kwargs)
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    assert not (tmp_path / "ck" / "epoch-3").exists()
    bundle = api.train(samples, np.linspace(0, 10, 20), **kwargs)  # space again: resumes
    assert len(bundle.training["history"]) == CONFIG["epochs"]


def test_a_full_disk_while_saving_the_model_leaves_nothing_half_written(tmp_path,
                                                                         monkeypatch):
    samples = random_samples(n_samples=20, token_limit=8)
    bundle = api.train(samples, np.linspace(0, 10, 20), task="regression",
                       architecture=SMALL, config=TrainConfig(**{**CONFIG, "epochs": 1}),
                       log=lambda m: None)
    _disk_full_in(monkeypatch, "model.safetensors")
    with pytest.raises(OSError, match=r"Could not write the model to .*out \(No space left "
                       r"on device\); nothing was written there"):
        bundle.save(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def run_workers_child(checkpoints, output, kill_after=0, distributed="ddp"):
    """The same run in 2 worker processes (over gloo); worker 1 SIGKILLs itself in the
    optimizer step after ``kill_after`` steps (see kill_hook/sitecustomize.py)."""
    config = {**CONFIG, "num_processes": 2, "distributed": distributed}
    script = CHILD.format(tests=str(Path(__file__).parent), small=SMALL, config=config)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "kill_hook"),
                                          os.environ.get("PYTHONPATH", "")])}
    if kill_after:
        env.update(AAM_KILL_AFTER=str(kill_after), AAM_KILL_RANK="1")
    return subprocess.run([sys.executable, "-c", script, str(checkpoints), str(output)],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_run_with_a_killed_worker_fails_then_resumes_to_the_same_model(tmp_path, distributed):
    """One of two workers is SIGKILLed in epoch 3: the action fails (no hang) naming the
    worker, keeps epoch 2's checkpoint, and the same command then ends with the model of
    an uninterrupted two-process run. FSDP: each process saves and loads only its shards."""
    from q2_aam.core.bundle import ModelBundle
    whole = run_workers_child(tmp_path / "ck-whole", tmp_path / "whole",
                              distributed=distributed)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_workers_child(tmp_path / "ck", tmp_path / "resumed",
                               kill_after=2 * STEPS_PER_EPOCH + 1, distributed=distributed)
    assert killed.returncode == 1, killed.stderr[-3000:]
    assert "A training worker failed. worker 1: killed by SIGKILL (exit code -9)" in killed.stderr
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    assert not (tmp_path / "resumed").exists()
    saved = sorted(p.name for p in (tmp_path / "ck" / "epoch-2").iterdir())
    weights = ["weights-0.safetensors", "weights-1.safetensors"][:2 if distributed == "fsdp"
                                                                  else 1]
    assert saved == sorted(["best.safetensors", "rng-0.safetensors", "rng-1.safetensors",
                            "run.json", *weights])
    resumed = run_workers_child(tmp_path / "ck", tmp_path / "resumed", distributed=distributed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = ModelBundle.load(tmp_path / "whole"), ModelBundle.load(tmp_path / "resumed")
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=0, msg=key)
    assert [r["val_target"] for r in a.training["history"]] == \
        [r["val_target"] for r in b.training["history"]]


@pytest.mark.parametrize("name,processes", [("TERM", 2), ("INT", 2), ("TERM", 1)])
def test_a_signalled_run_writes_no_model_stops_its_workers_and_resumes(tmp_path, name,
                                                                         processes):
    """SIGTERM (what kill and schedulers send) or SIGINT (Ctrl-C) in epoch 3: the run fails
    with a message that says what to do, writes no model, leaves no worker running, keeps
    epoch 2's checkpoint, and the same command then finishes the run."""
    config = {**CONFIG, "num_processes": processes}
    script = CHILD.format(tests=str(Path(__file__).parent), small=SMALL, config=config)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "kill_hook"),
                                          os.environ.get("PYTHONPATH", "")])}
    signalled = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ck"), str(tmp_path / "model")],
        env={**env, "AAM_SIGNAL": name, "AAM_PID_DIR": str(pids),
             "AAM_SIGNAL_PARENT_AFTER": str(2 * STEPS_PER_EPOCH)},
        capture_output=True, text=True, timeout=600)
    assert signalled.returncode == 1, signalled.stderr[-3000:]
    assert f"Training was stopped by SIG{name}" in signalled.stderr, signalled.stderr[-3000:]
    assert "running the same command again resumes" in signalled.stderr
    # No thread of the launcher is left running into the interpreter's exit: one that
    # was (the c10d rendezvous heartbeat) sometimes aborted the process at exit.
    assert "threads at exit: []" in signalled.stderr, signalled.stderr[-3000:]
    assert not (tmp_path / "model").exists()
    assert (tmp_path / "ck" / "latest").read_text() == "epoch-2"
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == processes
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    resumed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ck"), str(tmp_path / "model")],
        env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    from q2_aam.core.bundle import ModelBundle
    assert len(ModelBundle.load(tmp_path / "model").training["history"]) == CONFIG["epochs"]


def test_resume_with_other_settings_is_refused(tmp_path):
    samples = random_samples(n_samples=20, token_limit=8)
    y = np.linspace(0, 10, 20)
    kwargs = dict(task="regression", architecture=SMALL, validation_fraction=0.2,
                  checkpoint_dir=str(tmp_path), log=lambda m: None)
    api.train(samples, y, config=TrainConfig(**{**CONFIG, "epochs": 1}), **kwargs)
    with pytest.raises(ValueError, match=r"config.learning_rate: checkpoint 0.001, now 0.01"):
        api.train(samples, y, config=TrainConfig(**{**CONFIG, "epochs": 1,
                                                     "learning_rate": 1e-2}), **kwargs)


def tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    runs = [p.parent for p in Path(directory).rglob("events.out.tfevents.*")]
    assert runs, f"no event file under {directory}"
    found = {"scalars": set(), "images": set()}
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        for kind in found:
            found[kind] |= set(events.Tags()[kind])
    return found


@pytest.mark.parametrize("fusion, scalar, image", [
    ("gmu", "gmu/gate_mean", None),
    ("cross-attention", None, "attention/cross_attention"),
    ("perceiver", None, "attention/perceiver")])
def test_tensorboard_has_losses_metrics_lr_and_fusion_views(tmp_path, fusion, scalar, image):
    samples = random_samples(n_samples=20, token_limit=8)
    categorical = {"season": ["summer", "winter"] * 10}
    api.train(samples, np.linspace(0, 10, 20), task="regression",
              architecture={**SMALL, "categorical_fusion": fusion, "cross_attn_heads": 2},
              config=TrainConfig(**{**CONFIG, "epochs": 2}), validation_fraction=0.2,
              categorical=categorical, unifrac_weight=0.5,
              distances=np.abs(np.subtract.outer(np.arange(20.), np.arange(20.))) / 20,
              tensorboard_dir=str(tmp_path), log=lambda m: None)
    found = tags(tmp_path)
    for tag in ("train/loss", "train/target", "train/unifrac", "val/target", "val/mae",
                "val/r2", "train/lr", "train/grad_norm", "train/samples_per_second",
                "train/step_loss"):
        assert tag in found["scalars"], (tag, sorted(found["scalars"]))
    if scalar:
        assert scalar in found["scalars"]
    if image:
        assert image in found["images"]


def test_tensorboard_dir_without_tensorboard_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    with pytest.raises(ValueError, match=r"needs the tensorboard package.*q2-aam\[tensorboard\]"):
        api.train(random_samples(n_samples=20, token_limit=8), np.linspace(0, 10, 20),
                  task="regression", architecture=SMALL, config=TrainConfig(**CONFIG),
                  tensorboard_dir=str(tmp_path / "tb"), log=lambda m: None)
    assert not (tmp_path / "tb").exists()


def test_two_runs_into_one_tensorboard_folder_stay_apart(tmp_path):
    samples = random_samples(n_samples=20, token_limit=8)
    for _ in range(2):
        api.train(samples, np.linspace(0, 10, 20), task="regression", architecture=SMALL,
                  config=TrainConfig(**{**CONFIG, "epochs": 1}), validation_fraction=0.2,
                  tensorboard_dir=str(tmp_path), log=lambda m: None)
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2 and all(r.startswith("aam-") for r in runs), runs
    for run in runs:
        assert len(list((tmp_path / run).glob("events.out.tfevents.*"))) == 1, run


def test_gradient_accumulation_is_the_same_global_batch():
    """4 samples per step as 1 x 4 or 2 x 2 accumulated: the same run up to float rounding."""
    samples = random_samples(n_samples=20, token_limit=8)
    y = np.linspace(0, 10, 20)
    runs = [api.train(samples, y, task="regression", architecture={**SMALL, "dropout": 0.0},
                      config=TrainConfig(**{**CONFIG, "epochs": 2,
                                            "gradient_accumulation_steps": k}),
                      validation_fraction=0.2, log=lambda m: None) for k in (1, 2)]
    for a, b in zip(*(r.training["history"] for r in runs)):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_target"] == pytest.approx(a["val_target"], rel=1e-3)
        assert b["lr"] == pytest.approx(a["lr"])


def test_activation_checkpointing_trains_the_same_model_and_may_resume_either_way(
        tmp_path, monkeypatch):
    """Recomputing each layer in the backward pass (same dropout masks) changes no weight;
    a run checkpointed without it continues with it."""
    from q2_aam.core import layers
    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    samples = random_samples(n_samples=20, token_limit=8)
    y = np.linspace(0, 10, 20)
    architecture = {**SMALL, "dropout": 0.2, "nucleotide_dropout": 0.2}
    runs = []
    for on in (False, True):
        bundle = api.train(samples, y, task="regression", architecture=architecture,
                           config=TrainConfig(**{**CONFIG, "epochs": 2,
                                                 "activation_checkpointing": on}),
                           mlm_weight=1.0, validation_fraction=0.2, log=lambda m: None)
        runs.append(bundle)
        assert bool(calls) == on  # layers were recomputed only when asked
    assert [r["train_loss"] for r in runs[0].training["history"]] == \
        [r["train_loss"] for r in runs[1].training["history"]]
    for name, weight in runs[0].state_dict.items():
        assert torch.equal(weight, runs[1].state_dict[name]), name
    kwargs = dict(task="regression", architecture=architecture, validation_fraction=0.2,
                  checkpoint_dir=str(tmp_path), log=lambda m: None)
    first = api.train(samples, y, config=TrainConfig(**{**CONFIG, "epochs": 2}), **kwargs)
    again = api.train(samples, y, config=TrainConfig(
        **{**CONFIG, "epochs": 2, "activation_checkpointing": True}), **kwargs)
    assert again.training["history"] == first.training["history"]


def test_bf16_on_the_cpu_trains_and_predicts_finite_values():
    samples = random_samples(n_samples=20, token_limit=8)
    bundle = api.train(samples, np.linspace(0, 10, 20), task="regression", architecture=SMALL,
                       config=TrainConfig(**{**CONFIG, "epochs": 1, "mixed_precision": "bf16"}),
                       validation_fraction=0.2, log=lambda m: None)
    assert bundle.training["config"]["mixed_precision"] == "bf16"
    assert np.isfinite(api.predict(bundle, samples, log=lambda m: None)).all()


def test_fp16_on_the_cpu_is_refused_before_training():
    samples = random_samples(n_samples=20, token_limit=8)
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        api.train(samples, np.linspace(0, 10, 20), task="regression", architecture=SMALL,
                  config=TrainConfig(**{**CONFIG, "mixed_precision": "fp16"}),
                  log=lambda m: None)


def test_resume_on_other_data_is_refused(tmp_path):
    samples = random_samples(n_samples=20, token_limit=8)
    kwargs = dict(task="regression", architecture=SMALL, validation_fraction=0.2,
                  config=TrainConfig(**{**CONFIG, "epochs": 1}), checkpoint_dir=str(tmp_path),
                  log=lambda m: None)
    api.train(samples, np.linspace(0, 10, 20), **kwargs)
    with pytest.raises(ValueError, match=r"training_data: checkpoint '16 samples, sha256 "):
        # Same samples, other target. (A rescaled copy of the target would be the same data
        # to the model: it learns z-scored targets, which is what the check compares.)
        api.train(samples, np.linspace(10, 0, 20), **kwargs)


@pytest.mark.parametrize("option", ["checkpoint_dir", "tensorboard_dir"])
def test_an_output_folder_that_is_a_file_is_refused_before_training(tmp_path, option):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    messages = []
    with pytest.raises(ValueError, match=f"directory {taken} is a file; give a folder"):
        api.train(random_samples(n_samples=20, token_limit=8), np.linspace(0, 10, 20),
                  task="regression", architecture=SMALL, config=TrainConfig(**CONFIG),
                  log=messages.append, **{option: str(taken)})
    assert not any(m.startswith("epoch") for m in messages)
    assert taken.read_text() == "not a folder"


def test_progress_bar_on_request_and_quiet_otherwise(capfd):
    samples = random_samples(n_samples=20, token_limit=8)
    for progress in (True, None):
        api.train(samples, np.linspace(0, 10, 20), task="regression", architecture=SMALL,
                  config=TrainConfig(**{**CONFIG, "epochs": 2}), validation_fraction=0.2,
                  progress=progress, log=lambda m: None)
        err = capfd.readouterr().err
        # None: only on a terminal, and pytest's stderr is not one
        assert ("training: " in err and "epoch=2/2" in err) == (progress is True), err[-300:]


class _Payload:
    """Unpickling this touches a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_no_file_of_a_checkpoint_is_ever_unpickled(tmp_path):
    """A pickle payload planted in each file of a checkpoint folder (and in a torch.save
    archive in its place) never runs on resume; the error names the file."""
    import pickle
    import shutil
    samples = random_samples(n_samples=20, token_limit=8)
    kwargs = dict(task="regression", architecture=SMALL, validation_fraction=0.2,
                  config=TrainConfig(**{**CONFIG, "epochs": 1}), log=lambda m: None)
    clean = tmp_path / "clean"
    api.train(samples, np.linspace(0, 10, 20), checkpoint_dir=str(clean), **kwargs)
    files = sorted(p.relative_to(clean) for p in clean.rglob("*") if p.is_file())
    assert len(files) == 5, files  # latest, run.json, weights, rng, best
    marker = tmp_path / "payload-ran"
    for i, name in enumerate(files):
        for how in ("pickle", "torch.save"):
            planted = tmp_path / f"planted-{i}-{how}"
            shutil.copytree(clean, planted)
            with open(planted / name, "wb") as out:
                if how == "pickle":
                    pickle.dump(_Payload(marker), out)
                else:
                    torch.save({"state": _Payload(marker)}, out)
            with pytest.raises(ValueError, match=str(name.name).replace(".", r"\.")) as error:
                api.train(samples, np.linspace(0, 10, 20), checkpoint_dir=str(planted),
                          **kwargs)
            assert "delete the checkpoint directory" in str(error.value)
            assert not marker.exists(), f"{name} ({how}) was unpickled"


REPRO = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np, torch
from conftest import random_samples
from q2_aam.core import api
from q2_aam.core.engine import TrainConfig
torch.set_num_threads(int(sys.argv[2]))
samples = random_samples(n_samples=40, token_limit=16)
api.train(samples, np.linspace(0, 10, 40), task="regression",
          architecture=dict(embedding_dim=32, attention_heads=2, nucleotide_layers=1,
                            sample_layers=1, max_sequence_length=40),
          config=TrainConfig(epochs=3, batch_size=8, seed=1, device="cpu"),
          validation_fraction=0.2, log=lambda m: None).save(sys.argv[1])
"""


def test_one_seed_gives_one_model_for_a_thread_count_and_nearly_one_across_them(tmp_path):
    """Separate processes, same seed: bit-identical weights with the same number of
    threads; with another number, float sums run in another order, and the weights differ
    by at most 1e-4 after 3 epochs (measured: 1.9e-6). docs/installation.md, 'Reproducibility'."""
    from q2_aam.core.bundle import ModelBundle
    script = REPRO.format(tests=str(Path(__file__).parent))
    models = {}
    for name, threads in (("a", 1), ("b", 1), ("c", 2)):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / name),
                               str(threads)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        models[name] = ModelBundle.load(tmp_path / name).state_dict
    for key, value in models["a"].items():
        torch.testing.assert_close(models["b"][key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(models["c"][key], value, rtol=0, atol=1e-4, msg=key)


def test_the_device_that_ran_is_said_and_recorded():
    messages = []
    bundle = api.train(random_samples(n_samples=20, token_limit=8), np.linspace(0, 10, 20),
                       task="regression", architecture=SMALL,
                       config=TrainConfig(**{**CONFIG, "epochs": 1, "device": "auto"}),
                       log=messages.append)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"Device: {expected} (--p-device auto), 1 process(es), mixed precision no." \
        in messages
    assert bundle.training["device"] == expected
