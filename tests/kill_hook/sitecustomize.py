"""Test hook, active only in processes started with this folder on PYTHONPATH.

In the worker whose RANK equals AAM_KILL_RANK, the optimizer step after
AAM_KILL_AFTER steps SIGKILLs the process: a worker dying mid-training with
no chance to clean up, as when the machine's OOM killer or a scheduler ends it.
(RANK is checked at each step: torch's launcher sets it only after the worker
process has started.)
"""
import os

if os.environ.get("AAM_KILL_AFTER"):
    import signal

    import torch

    _original, _steps = torch.optim.AdamW.step, [0]

    def _step(self, *args, **kwargs):
        if os.environ.get("RANK") == os.environ.get("AAM_KILL_RANK"):
            _steps[0] += 1
            if _steps[0] > int(os.environ["AAM_KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
        return _original(self, *args, **kwargs)

    torch.optim.AdamW.step = _step

if os.environ.get("AAM_SIGNAL_PARENT_AFTER"):
    # Rank 0 sends AAM_SIGNAL (TERM or INT) to the process that launched the workers after
    # that many optimizer steps, as a scheduler or Ctrl-C would; every worker writes its
    # PID to AAM_PID_DIR so that a test can check that none outlives the run.
    import signal

    import torch

    _original_step, _count = torch.optim.AdamW.step, [0]

    def _signalling_step(self, *args, **kwargs):
        _count[0] += 1
        if _count[0] == 1 and os.environ.get("AAM_PID_DIR"):
            with open(os.path.join(os.environ["AAM_PID_DIR"], f"{os.getpid()}"), "w"):
                pass
        if os.environ.get("RANK", "0") == "0" and \
                _count[0] == int(os.environ["AAM_SIGNAL_PARENT_AFTER"]) + 1:
            # (one process: the run's own process)
            target = os.getppid() if "WORLD_SIZE" in os.environ else os.getpid()
            os.kill(target, getattr(signal, "SIG" + os.environ["AAM_SIGNAL"]))
        return _original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = _signalling_step

if os.environ.get("AAM_KILL_IN_SAVE"):
    # SIGKILL halfway through writing a checkpoint file whose path holds AAM_KILL_IN_SAVE
    # (e.g. "epoch-3/rng"): a run killed in the middle of saving.
    import signal

    import safetensors.torch

    _original_save = safetensors.torch.save_file

    def _killing_save(tensors, filename, *args, **kwargs):
        if os.environ["AAM_KILL_IN_SAVE"] in str(filename):
            with open(filename, "wb") as out:
                out.write(b"\x00" * 64)  # a partial file
            os.kill(os.getpid(), signal.SIGKILL)
        return _original_save(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = _killing_save
