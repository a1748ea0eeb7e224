"""The on-disk format of a training run's checkpoints, and resuming from it.

A checkpoint folder may come from another person or machine, so reading it must
not run code. Accelerate's ``save_state`` / ``load_state`` (and
``torch.distributed.checkpoint``) unpickle some of their files, so a run's
state is written here in two safe formats only:

* tensors (weights, the optimizer's moments, random-generator states) as
  safetensors;
* everything else (the loop state, the scheduler, the optimizer's
  hyperparameters, the settings the run was started with) as JSON.

The folder given as ``--p-checkpoint-dir`` holds::

    latest                      the name of the newest complete epoch folder
    epoch-K/run.json            settings ("signature"), loop state (epoch, step, best
                                validation loss, patience count, history), scheduler,
                                optimizer hyperparameters and scalars, AMP scaler
    epoch-K/weights-R.safetensors
                                "model.*" weights and "optimizer.ID.*" moments: R = 0
                                written by the main process, or each process's own
                                shards under FSDP (R = its rank)
    epoch-K/rng-R.safetensors   process R's generators: shuffling, masking, dropout
                                (torch and CUDA)
    epoch-K/best.safetensors    the weights of the best epoch so far (with validation)

``latest`` moves (atomically) only once every process has written its part, so
a kill at any moment leaves the previous checkpoint loadable; older epoch
folders are then removed. A run resumes only with the same signature (its
settings, model, objective and a fingerprint of its data); the device and
activation checkpointing may differ, since they do not change what is computed.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from .bundle import module_names, saved_names

WEIGHTS = "weights-{}.safetensors"
RNG = "rng-{}.safetensors"
RUN = "run.json"
BEST = "best.safetensors"


def _local(tensor: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The part of ``tensor`` this process holds, and whether it was a shard (DTensor)."""
    from torch.distributed.tensor import DTensor
    if isinstance(tensor, DTensor):
        return tensor.to_local(), True
    return tensor, False


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"The checkpoint file {path} cannot be read ({type(error).__name__}: "
                      f"{str(error)[:200]}). It is damaged or was not written by q2-aam; "
                      "delete the checkpoint directory to start afresh.")


def read_tensors(path: Path) -> dict:
    """A safetensors file's tensors, or an error that names the file."""
    from safetensors.torch import load_file
    if not path.is_file():
        raise ValueError(f"The checkpoint file {path} is missing: the checkpoint is "
                         "incomplete. Delete the checkpoint directory to start afresh.")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types, and OSError
        raise _unreadable(path, error) from None


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"The checkpoint file {path} is missing: the checkpoint is "
                         "incomplete. Delete the checkpoint directory to start afresh.")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, OSError) as error:
        raise _unreadable(path, error) from None
    if not isinstance(values, dict):
        raise _unreadable(path, TypeError("not a JSON object"))
    return values


def write_tensors(tensors: dict, path: Path) -> None:
    from .bundle import write_safetensors
    write_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)


class Checkpoints:
    """Save and resume one run's state: ``net`` (the module that trains, sharded or not),
    its torch ``optimizer``, the LR ``scheduler`` and the loop ``state`` (which has
    ``state_dict``, ``rng_state`` and ``best_state``)."""

    def __init__(self, directory: str, accelerator, net: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, state, signature: dict,
                 sharded: bool = False):
        self.dir, self.accelerator = Path(directory), accelerator
        self.net, self.optimizer, self.scheduler, self.state = net, optimizer, scheduler, state
        self.sharded = sharded
        self.signature = json.loads(json.dumps(signature))  # as it reads back from disk
        self.rank = accelerator.process_index

    # -- what is saved ---------------------------------------------------------------------

    def _params(self) -> list:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _tensors_and_meta(self) -> tuple[dict, dict]:
        """This process's tensors (``model.*``, ``optimizer.ID.*``) and the JSON rest."""
        tensors, shards = {}, []
        for key, value in saved_names(self.net.state_dict()).items():  # as model files name them
            tensors[f"model.{key}"], sharded = _local(value)
            if sharded:
                shards.append(f"model.{key}")
        optimizer = self.optimizer.state_dict()
        scalars = {}
        for pid, values in optimizer["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    name = f"optimizer.{pid}.{key}"
                    tensors[name], sharded = _local(value)
                    if sharded:
                        shards.append(name)
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        meta = {"param_groups": optimizer["param_groups"], "scalars": scalars,
                "shards": shards}
        return tensors, meta

    def save(self) -> None:
        name = f"epoch-{self.state.epoch}"
        try:
            self._write(name)
        except OSError as error:  # a full disk, a quota, a folder that went away
            shutil.rmtree(self.dir / name, ignore_errors=True)
            latest = self.dir / "latest"
            kept = (f"{latest} still names {latest.read_text().strip()}, which resumes"
                    if latest.exists() else "no earlier checkpoint was complete")
            raise OSError(error.errno, f"Could not write the checkpoint {self.dir / name} "
                          f"({error.strerror or error}); {kept}. Free some space (or give "
                          "another --p-checkpoint-dir) and run the same command again."
                          ) from None

    def _write(self, name: str) -> None:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._tensors_and_meta()
        if self.sharded or self.accelerator.is_main_process:
            write_tensors(tensors, path / WEIGHTS.format(self.rank if self.sharded else 0))
        rng = self.state.rng_state()
        cuda = rng.pop("cuda_rng")
        write_tensors({**rng, **{f"cuda_rng.{i}": s for i, s in enumerate(cuda)}},
                      path / RNG.format(self.rank))
        self.accelerator.wait_for_everyone()  # every process's part is written before 'latest'
        if self.accelerator.is_main_process:
            if self.state.best_state is not None:
                write_tensors(saved_names(self.state.best_state), path / BEST)
            scaler = getattr(self.accelerator, "scaler", None)
            run = {"signature": self.signature, "loop": self.state.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "optimizer": meta,
                   "scaler": scaler.state_dict() if scaler is not None else None}
            (path / RUN).write_text(json.dumps(run))
            tmp = self.dir / "latest.tmp"
            tmp.write_text(name)
            tmp.replace(self.dir / "latest")  # atomic: a kill leaves the old or the new one
            for old in self.dir.glob("epoch-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # -- resume ----------------------------------------------------------------------------

    def resume(self, log) -> bool:
        """Load the newest complete checkpoint, if any (refusing one written with other
        settings)."""
        latest = self.dir / "latest"
        if not latest.exists():
            return False
        try:
            name = latest.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, OSError) as error:
            raise _unreadable(latest, error) from None
        path = self.dir / name
        if not name.startswith("epoch-") or "/" in name or not (path / RUN).is_file():
            raise ValueError(f"{latest} names {name[:80]!r}, which is missing or incomplete; "
                             "delete the checkpoint directory to start afresh.")
        run = read_json(path / RUN)
        missing = [k for k in ("signature", "loop", "scheduler", "optimizer") if k not in run]
        if missing:
            raise _unreadable(path / RUN, KeyError(f"no {', '.join(missing)}"))
        found = differences(run["signature"], self.signature)
        if found:
            raise ValueError(
                f"The checkpoint in {self.dir} was written by a run with other settings: "
                + "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in found)
                + ". Run again with the checkpoint's settings to continue it, or give "
                "another checkpoint directory to start afresh.")
        if not (path / RNG.format(self.rank)).exists():
            raise ValueError(f"The checkpoint {path} has no random state for process "
                             f"{self.rank} ({RNG.format(self.rank)}): it was written by a run "
                             "with another number of processes, or is incomplete. Resume "
                             "with the same --p-num-processes, or delete the folder.")
        weights_file = path / WEIGHTS.format(self.rank if self.sharded else 0)
        tensors = read_tensors(weights_file)
        rng_file = path / RNG.format(self.rank)
        rng = read_tensors(rng_file)
        best = module_names(read_tensors(path / BEST)) if (path / BEST).exists() else None
        try:
            self._load_model(tensors)
            self._load_optimizer(tensors, run["optimizer"])
            self.scheduler.load_state_dict(run["scheduler"])
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None and run.get("scaler"):
                scaler.load_state_dict(run["scaler"])
            self.state.load_state_dict(run["loop"])
        except ValueError:
            raise
        except (KeyError, TypeError, RuntimeError, IndexError) as error:
            raise _unreadable(weights_file, error) from None
        try:
            cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda_rng.")),
                                           key=lambda k: int(k.split(".")[1]))]
            self.state.set_rng_state({"loader_rng": rng["loader_rng"],
                                      "mask_rng": rng["mask_rng"],
                                      "torch_rng": rng["torch_rng"], "cuda_rng": cuda})
        except (KeyError, TypeError, RuntimeError) as error:
            raise _unreadable(rng_file, error) from None
        self.state.best_state = best
        log(f"Resuming from {path} (epoch {self.state.epoch} of the run, step "
            f"{self.state.step}).")
        return True

    def _load_model(self, tensors: dict) -> None:
        with torch.no_grad():
            for key, value in saved_names(self.net.state_dict()).items():
                target, _ = _local(value)
                saved = tensors[f"model.{key}"]
                if saved.shape != target.shape:
                    raise RuntimeError(f"{key}: shape {tuple(saved.shape)} in the checkpoint, "
                                       f"{tuple(target.shape)} in the model")
                target.copy_(saved)

    def _load_optimizer(self, tensors: dict, meta: dict) -> None:
        from torch.distributed.tensor import DTensor
        params = self._params()
        shards = set(meta.get("shards", []))
        state = {}
        for name, value in tensors.items():
            if not name.startswith("optimizer."):
                continue
            _, pid, key = name.split(".", 2)
            param = params[int(pid)]
            if name in shards:
                value = DTensor.from_local(value.to(param.device), param.device_mesh,
                                           param.placements, run_check=False,
                                           shape=param.shape, stride=param.stride())
            state.setdefault(int(pid), {})[key] = value
        for pid, values in meta.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(values)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class LoopState:
    """What the training loop carries from epoch to epoch; saved in checkpoints."""

    def __init__(self, loader_rng: torch.Generator, mask_rng: torch.Generator):
        self.loader_rng, self.mask_rng = loader_rng, mask_rng
        self.epoch, self.step, self.best, self.stale = 0, 0, math.inf, 0
        self.stopped = False  # stopped early: a resumed run has nothing left to do
        self.history: list[dict] = []
        self.best_state: dict | None = None

    # The random generators are saved per process (see ``rng_state``), not here:
    # Accelerate writes registered objects from the main process only, so every worker
    # would resume with rank 0's dropout and masking streams.
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best,
                "stale": self.stale, "stopped": self.stopped, "history": self.history}

    def load_state_dict(self, values: dict) -> None:
        self.epoch, self.step = values["epoch"], values["step"]
        self.best, self.stale, self.history = values["best"], values["stale"], values["history"]
        self.stopped = values["stopped"]

    def rng_state(self) -> dict:
        """This process's random generators: shuffling, masking, dropout (torch's global
        generator, and CUDA's)."""
        return {"loader_rng": self.loader_rng.get_state(), "mask_rng": self.mask_rng.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def set_rng_state(self, values: dict) -> None:
        self.loader_rng.set_state(values["loader_rng"])
        self.mask_rng.set_state(values["mask_rng"])
        torch.set_rng_state(values["torch_rng"])
        if values["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(values["cuda_rng"])


def fingerprint(collator) -> str:
    """Which samples, with which ASV counts, targets and categories: a resumed run must
    continue on the same data, not just the same number of samples."""
    digest = hashlib.sha256()
    samples = collator.samples
    digest.update("\n".join(samples.sample_ids).encode())
    for array in (samples.indptr, samples.indices, samples.counts, collator.targets,
                  collator.categories):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return f"{len(samples)} samples, sha256 {digest.hexdigest()[:16]}"


def run_signature(config, objective, model_config: dict, freeze_encoder: bool,
                  train_collator, val_collator, processes: int) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    # Neither the device nor activation checkpointing changes what is computed.
    return {"config": {k: v for k, v in config.to_dict().items()
                       if k not in ("device", "activation_checkpointing")},
            "objective": {"target_weight": objective.target_weight,
                          "unifrac_weight": objective.unifrac_weight,
                          "mlm_weight": objective.mlm_weight,
                          "mask_rate": objective.mask_rate},
            "model": model_config, "freeze_encoder": freeze_encoder,
            "training_data": fingerprint(train_collator),
            "validation_data": fingerprint(val_collator) if val_collator is not None else None,
            "processes": processes}


def differences(saved: dict, current: dict, prefix: str = "") -> list:
    """``(setting, saved value, current value)`` for every setting that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def writable_directory(path: str, what: str, rank: int = 0) -> None:
    """Create the folder ``path`` (for ``what``: checkpoints, TensorBoard) or say why not."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"The {what} directory {folder} is a file; give a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".writable-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"The {what} directory {folder} cannot be written ({error.strerror}); "
                         "give a folder you can write to.") from None
