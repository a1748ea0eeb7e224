"""Running a training function in several worker processes (torch.distributed).

``run_workers(function, args, num_processes)`` starts ``num_processes`` workers
on this machine through torch's elastic launcher (what ``torchrun`` uses):
each gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``, so ``accelerate.Accelerator`` inside it joins one process
group (gloo on the CPU, NCCL on GPUs). It returns rank 0's return value. A
worker that raises makes the whole run raise, with that worker's error, and
the other workers are stopped: no hang. SIGTERM or SIGINT to this process
stops every worker and raises :class:`Interrupted`.

Outside QIIME 2, launch the same code with ``torchrun`` or ``accelerate
launch`` instead (docs/distributed.md); ``in_distributed_run()`` is then true and
the actions train in the processes they are given.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import socket
import tempfile
import uuid
from typing import Callable

from .progress import stderr


def in_distributed_run() -> bool:
    """True inside a worker of a multi-process run (ours, torchrun's or accelerate's)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerFailed(RuntimeError):
    """A worker process of a multi-process run failed; the message holds its error."""


class Interrupted(RuntimeError):
    """Training was stopped by a signal (SIGTERM, SIGINT); nothing was written."""

    def __init__(self, signal_name: str, workers: int = 1):
        where = f"its {workers} worker processes were stopped and " if workers > 1 else ""
        super().__init__(
            f"Training was stopped by {signal_name}: {where}no model was written. If "
            "--p-checkpoint-dir was given, running the same command again resumes from the "
            "last complete epoch.")


def run_workers(function, args: tuple, num_processes: int):
    """Run ``function(*args)`` in ``num_processes`` processes; return rank 0's result."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if num_processes < 2:
        raise ValueError(f"run_workers needs at least 2 processes, got {num_processes}.")
    # The static rendezvous (torchrun's default) is one TCP store on this machine. The
    # 'c10d' one adds a heartbeat thread that the launcher leaves running when a signal
    # stops it; that thread, still inside the store's C++ code when Python exits, aborted
    # the process ("terminate called without an active exception") instead of exit 1.
    with tempfile.TemporaryDirectory(prefix="q2-aam-workers-") as logs:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=num_processes,
            run_id=f"q2-aam-{uuid.uuid4().hex[:8]}", rdzv_backend="static",
            rdzv_configs={"rank": 0}, rdzv_endpoint=f"127.0.0.1:{_free_port()}",
            max_restarts=0,
            monitor_interval=0.2, start_method="spawn", logs_specs=None)
        # gloo picks a network interface from the host name, which may not resolve; the
        # workers all run here, so the loopback interface is the right one. Each worker
        # gets its share of the cores (as torchrun does): N workers each running
        # torch's default of one thread per core slow each other down many times over.
        settings = {"GLOO_SOCKET_IFNAME": "lo",
                    "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // num_processes))}
        added = [k for k in settings if k not in os.environ]
        os.environ.update({k: settings[k] for k in added})
        from torch.distributed.elastic.multiprocessing.api import SignalException
        try:
            results = elastic_launch(config, _worker)(function, logs, *args)
        except ChildFailedError as error:
            raise WorkerFailed(_failure_message(error, logs)) from None
        except SignalException as error:  # the launcher has stopped every worker
            raise Interrupted(signal.Signals(error.sigval).name, num_processes) from None
        finally:
            for key in added:
                os.environ.pop(key, None)
    return results[0]


def _worker(function, logs: str, *args):
    """Call ``function(*args)``; if it raises, write the error where the parent reads it."""
    try:
        return function(*args)
    except BaseException as error:
        rank = os.environ.get("RANK", "?")
        with open(os.path.join(logs, f"error-{rank}.txt"), "w") as fh:
            fh.write(f"{type(error).__name__}: {error}")
        raise


def _failure_message(error, logs: str) -> str:
    """One line per distinct error, naming the workers that raised it."""
    raised: dict[str, list[str]] = {}
    for name in sorted(os.listdir(logs)):
        if name.startswith("error-"):
            with open(os.path.join(logs, name)) as fh:
                raised.setdefault(fh.read(), []).append(name[6:-4])
    # Workers that died without raising (killed by a signal, os._exit) come first: their
    # death is usually what the others' errors (e.g. "Connection reset by peer") follow from.
    messages = []
    for rank, failure in sorted((getattr(error, "failures", {}) or {}).items()):
        if any(str(rank) in ranks for ranks in raised.values()):
            continue
        code = failure.exitcode
        how = (f"killed by {signal.Signals(-code).name} (exit code {code})"
               if code < 0 and -code in signal.valid_signals() else f"exited with code {code}")
        messages.append(f"worker {rank}: {how}")
    messages += [f"{'workers' if len(ranks) > 1 else 'worker'} {', '.join(ranks)}: {text}"
                 for text, ranks in raised.items()]
    return "A training worker failed. " + " | ".join(messages or [str(error)])


def distributable(action):
    """Let ``action(samples, data, ..., config=..., log=...)`` run in several processes.

    With ``config.num_processes > 1`` outside a distributed run, the call is
    repeated in that many worker processes (:func:`run_in_workers`) and rank
    0's model returned; inside a run (ours, torchrun's or accelerate's), only
    the first process logs. In one process, SIGTERM stops it like Ctrl-C.
    """
    signature = inspect.signature(action)

    @functools.wraps(action)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = bound.arguments["config"]
        if config.num_processes > 1 and not in_distributed_run():
            from .unifrac import deferred
            distances = bound.arguments.get("distances")
            if deferred(distances):  # computed here, once, not once in every worker
                bound.arguments["distances"] = distances()
            return run_in_workers(run, bound.args, bound.kwargs, config.num_processes)
        bound.arguments["log"] = _main_process_only(bound.arguments["log"])
        if in_distributed_run():
            return action(*bound.args, **bound.kwargs)
        with _sigterm_raises():
            return action(*bound.args, **bound.kwargs)
    return run


@contextlib.contextmanager
def _sigterm_raises():
    """In one process, SIGTERM (what ``kill`` and schedulers send) stops training like
    Ctrl-C: with an error (:class:`Interrupted`) that unwinds cleanly, instead of
    ending the process on the spot."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted("SIGTERM")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_in_workers(action: Callable, args: tuple, keywords: dict, num_processes: int):
    """Run ``action`` (a :func:`distributable` function, such as ``api.train``: the workers
    import it by its name) in ``num_processes`` processes; return the model.

    Each worker runs the same action on the same inputs inside one process
    group; the training loop shards every batch over them (DDP). Rank 0
    writes the trained model to a temporary folder, which is read back here
    and removed. A worker's error is raised here (:class:`WorkerFailed`).
    Messages go to standard error (a function given as ``log`` stays here).
    """
    from .bundle import ModelBundle
    keywords = {**keywords, "log": stderr}
    with tempfile.TemporaryDirectory(prefix="q2-aam-model-") as folder:
        run_workers(_action_worker, (action, args, keywords, folder), num_processes)
        return ModelBundle.load(os.path.join(folder, "model"))


def _main_process_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """In a multi-process run, only the first process speaks."""
    return log if int(os.environ.get("RANK", "0")) == 0 else (lambda message: None)


def _action_worker(action: Callable, args: tuple, keywords: dict, folder: str) -> None:
    bundle = action(*args, **keywords)
    if int(os.environ.get("RANK", "0")) == 0:
        bundle.save(os.path.join(folder, "model"))
