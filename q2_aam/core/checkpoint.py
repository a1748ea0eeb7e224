"""Checkpoints that resume a training run and never unpickle anything.

A checkpoint folder may come from another person or machine, so reading it must
not run code. Accelerate's ``save_state`` / ``load_state`` (and
``torch.distributed.checkpoint``) unpickle some of their files, so a run's
state is written here in two safe formats only:

* tensors (weights, the optimizer's moments, random-generator states) as
  safetensors;
* everything else (the loop state, the scheduler, the optimizer's
  hyperparameters, the settings the run was started with) as JSON.

``DIR/epoch-K`` holds one epoch's state and ``DIR/latest`` names the newest
complete one; it moves (atomically) only once every process has written its
part, so a kill at any moment leaves the previous checkpoint loadable.

With FSDP each process writes and reads only its own shards
(``weights-RANK.safetensors``); otherwise the main process writes
``weights-0.safetensors`` and every process reads it. Random states are per
process (``rng-RANK.safetensors``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

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
        for key, value in self.net.state_dict().items():
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
                write_tensors(self.state.best_state, path / BEST)
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

    def resume(self, log, differences) -> bool:
        """Load the newest complete checkpoint, if any; ``differences(saved, current)``
        lists the settings that differ from the run's."""
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
        best = read_tensors(path / BEST) if (path / BEST).exists() else None
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
            for key, value in self.net.state_dict().items():
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
