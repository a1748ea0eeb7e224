"""Processes and devices: the accelerator, FSDP sharding, gathering across processes.

What the training loop (``engine``) and prediction need to run the same code
on one CPU, one GPU or many processes: which device a setting means, the
Accelerate ``Accelerator`` for a run, how a batch is divided between
processes, FSDP2 sharding of the model and gathering it (or embeddings,
with gradient) back. Nothing here knows what a loss or a checkpoint is.
"""
from __future__ import annotations

import torch

from .options import TRAINING


def resolved_device(device: str) -> str:
    """The device a run with ``device`` ('auto', 'cpu', 'cuda') trains on; refuses 'cuda'
    where torch sees none."""
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device; "
                         "use device 'auto' or 'cpu'.")
    return "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"


def micro_batch(batch_size: int, processes: int, accumulation_steps: int) -> int:
    """Samples per process and forward pass, for a global ``batch_size`` per optimizer step
    split over ``processes`` x ``accumulation_steps``; refuses a batch that does not split."""
    shards = processes * accumulation_steps
    if batch_size % shards:
        raise ValueError(
            f"The batch size ({batch_size}) is the number of samples per optimizer "
            f"step, split over {processes} process(es) x {accumulation_steps} accumulation "
            f"step(s); it must be a multiple of {shards}, e.g. "
            f"{shards * max(1, round(batch_size / shards))}.")
    return batch_size // shards


def make_accelerator(device: str, mixed_precision: str = TRAINING["mixed_precision"],
                     gradient_accumulation_steps: int = TRAINING["gradient_accumulation_steps"],
                     tensorboard_dir: str | None = None):
    """A fresh ``accelerate.Accelerator`` for one run (in this process's process group)."""
    from accelerate import Accelerator
    if tensorboard_dir:
        try:
            import tensorboard  # noqa: F401  (optional: only logging needs it)
        except ImportError:
            raise ValueError("--p-tensorboard-dir needs the tensorboard package, which is "
                             "not installed: pip install 'q2-aam[tensorboard]' (or conda "
                             "install tensorboard), or leave the option out.") from None
    cpu = resolved_device(device) == "cpu"
    from accelerate.state import AcceleratorState, GradientState
    # Each run sets its own precision and accumulation; the process (and its process
    # group, PartialState) stays, but the previous run's settings must not carry over.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                       gradient_accumulation_steps=gradient_accumulation_steps,
                       log_with="tensorboard" if tensorboard_dir else None,
                       project_dir=tensorboard_dir)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP (FSDP2 ``fully_shard``) over all processes: each keeps 1/N of every parameter.

    Each submodule the model lists in ``sharding_units`` (the encoders, the
    target branch's parts) and the whole model are sharding units, so calling
    an encoder alone (prediction, frozen-encoder caching) gathers just its
    parameters.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in model.sharding_units():
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict:
    """A copy of every weight, whole on every process (gathered when sharded; collective)."""
    from torch.distributed.tensor import DTensor
    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        return {k: v.detach().clone() for k, v in get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True)).items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def local_numel(model: torch.nn.Module) -> int:
    """How many weights this process holds (its shards under FSDP)."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
               for p in model.parameters())


def global_batch(embedding: torch.Tensor, index: torch.Tensor):
    """Every process's ``(b, D)`` embeddings (with gradient) and sample indices, in rank order.

    A plain ``gather`` carries no gradient; ``torch.distributed.nn``'s
    ``all_gather`` sums each slice's gradient over the processes in backward,
    which DDP's averaging then turns into the gradient of the loss over the
    global batch. The identity in a single process.
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embedding, index
    from torch.distributed.nn.functional import all_gather
    indices = [torch.empty_like(index) for _ in range(dist.get_world_size())]
    dist.all_gather(indices, index.contiguous())
    return torch.cat(all_gather(embedding.contiguous())), torch.cat(indices)
