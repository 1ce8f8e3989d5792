"""The one faulty problem of the test suite: a problem whose workers die or raise on cue.

Worker processes and Ray actors unpickle it, so it lives at module level in a module they can
import (Ray cells register it by value: ``ray.cloudpickle.register_pickle_by_value``). Each
process counts the gradients *it* computes, so ``at = 3`` is the victim's own 3rd gradient.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

import torch

from asyncopt.problems.base import Problem


class Faulty(Problem):
    """``inner``, except that each worker in ``victims`` SIGKILLs its own process (``how =
    "kill"``) or raises ``ValueError`` (``how = "raise"``) on its ``at``-th gradient, only the
    first time when ``once`` names a marker file (a restarted worker then computes normally),
    and that the ``interrupt_at``-th evaluation (the main process) raises Ctrl-C."""

    def __init__(self, inner: Problem, victims: tuple[int, ...] = (), at: int = 0,
                 how: str = "kill", once: Path | None = None,
                 interrupt_at: int | None = None) -> None:
        self.inner, self.num_workers = inner, inner.num_workers
        self.victims, self.at, self.how, self.interrupt_at = victims, at, how, interrupt_at
        self.once = None if once is None else str(once)
        self.calls = self.evaluations = 0

    def init_params(self, generator: torch.Generator) -> Any:
        return self.inner.init_params(generator)

    def loss_and_grad(self, params: Any, worker: int, generator: torch.Generator) -> Any:
        self.calls += 1
        if worker in self.victims and self.calls == self.at and not self._struck():
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError(f"broken gradient on worker {worker}")
        return self.inner.loss_and_grad(params, worker, generator)

    def _struck(self) -> bool:
        """Whether the fault already happened once (with ``once``); marks it if not."""
        if self.once is None:
            return False
        if os.path.exists(self.once):
            return True
        Path(self.once).touch()
        return False

    def evaluate(self, params: Any) -> dict[str, float]:
        self.evaluations += 1
        if self.evaluations == self.interrupt_at:
            raise KeyboardInterrupt
        return self.inner.evaluate(params)

    def to(self, device: Any, *, worker: int | None = None) -> Faulty:
        self.inner.to(device, worker=worker)
        return self


def logged(caplog: Any, pattern: str) -> bool:
    """Whether asyncopt logged a run event (WARNING) matching ``pattern`` (a regex) during the
    test: how a lost or restarting worker is reported (``caplog`` is pytest's fixture)."""
    return any(record.name.startswith("asyncopt") and record.levelno == logging.WARNING
               and re.search(pattern, record.getMessage()) for record in caplog.records)
