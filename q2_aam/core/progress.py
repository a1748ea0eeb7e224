"""Progress lines for long work, and the time each step of an action took.

A step of ``train`` can run for minutes at a real study's size (the readout's
cross-validation, an epoch on thousands of samples); a user watching ``--verbose``
should never wait more than ``EVERY`` seconds without a line. :class:`Ticker` says a
line at most that often; :class:`Steps` times an action's steps, says each one's time
when it ends, and keeps the times for the model's training record (shown by
``training-history``).
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable


def stderr(message: str) -> None:
    """The core's default ``log``: a line on standard error."""
    print(message, file=sys.stderr, flush=True)

#: Seconds between progress lines, at most.
EVERY = 10.0


class Ticker:
    """``ticker(message)`` passes ``message`` (a string, or a function that makes one) to
    ``log`` when ``every`` (default ``EVERY``) seconds have passed since the last line, or
    with ``force=True``; otherwise it drops it."""

    def __init__(self, log: Callable[[str], None] | None, every: float | None = None):
        self.log, self.every = log, EVERY if every is None else every
        self.last = time.perf_counter()

    def __call__(self, message, force: bool = False) -> None:
        now = time.perf_counter()
        if self.log is None or not (force or now - self.last >= self.every):
            return
        self.log(message() if callable(message) else message)
        self.last = now


class Steps:
    """The named steps of one action and the seconds each took, in order."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, say: bool = True):
        """Time the block as step ``name`` (adding up when a name repeats); say its time
        when it ends, if it took a second or more and ``say``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)
            if say and self.log is not None and seconds >= 1:
                self.log(f"{name[:1].upper()}{name[1:]}: {seconds:.1f} s.")

    def add(self, name: str, seconds: float) -> None:
        """Record a step timed elsewhere."""
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)
