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
