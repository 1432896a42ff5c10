"""Stop training when a wall-clock budget is spent (``max_train_minutes``), and tell schedules how far a stage is."""

from __future__ import annotations

import logging
import os
import time

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

__all__ = ["TimeBudgetHandler"]


class TimeBudgetHandler:
    """Terminate the attached engine once ``max_minutes`` have passed since it started.

    The check runs after every iteration, so the overshoot is one iteration plus the end-of-epoch
    handlers (validation, checkpoint) that ``terminate`` still lets run. ``max_minutes`` <= 0 or
    ``None`` disables the budget. Under ``torchrun`` the decision is all-reduced so that every
    process stops at the same iteration.

    :meth:`progress` is the stage's progress in [0, 1]: the larger of the iterations done out of
    ``max_epochs`` and the time spent out of the budget, so that schedules written on it
    (:mod:`custom_monai.handlers.schedule`) run in full whichever of the two ends the stage. The time spent
    is part of :meth:`state_dict`: put the handler in the resumable checkpoint and a resumed stage keeps
    its budget and its schedule.

    Args:
        max_minutes: the budget in minutes.
        clock: ``"wall"`` (wall-clock time, the default) or ``"process"`` (CPU time of this process: the same
            compute for every run on a shared machine, which is what ``scripts/benchmark.py`` uses for its
            "30 CPU-minutes"); default: ``$CUSTOM_MONAI_BUDGET_CLOCK`` or ``"wall"``.
        name: logger name.
    """

    def __init__(self, max_minutes: float | None, clock: str | None = None, name: str | None = None) -> None:
        self.max_seconds = None if not max_minutes or max_minutes <= 0 else float(max_minutes) * 60.0
        clock = clock or os.environ.get("CUSTOM_MONAI_BUDGET_CLOCK", "wall")
        if clock not in ("wall", "process"):
            raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
        self.clock = clock
        self._now = time.monotonic if clock == "wall" else time.process_time
        self.logger = logging.getLogger(name or __name__)
        self._start: float | None = None
        self._spent_before = 0.0  # seconds of earlier runs of this stage (resume)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        if self.max_seconds is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _started(self, engine: Engine) -> None:
        self._start = self._now()

    def elapsed(self) -> float:
        """Seconds this stage has trained, including runs before a resume."""
        return self._spent_before + (0.0 if self._start is None else self._now() - self._start)

    def progress(self, engine: Engine, iteration_offset: int = 0) -> float:
        """Stage progress in [0, 1]: max(iterations done / planned iterations, time spent / budget).

        ``iteration_offset=-1`` when called as an iteration starts (``engine.state.iteration`` already counts it).
        """
        state = engine.state
        epoch_length = state.epoch_length or 1
        by_epochs = max(0, state.iteration + iteration_offset) / max(1, (state.max_epochs or 1) * epoch_length)
        by_time = self.elapsed() / self.max_seconds if self.max_seconds else 0.0
        return float(min(1.0, max(by_epochs, by_time)))

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self._spent_before = float(state.get("elapsed", 0.0))
        if self._start is not None:
            self._start = self._now()

    def _over(self) -> bool:
        over = self.max_seconds is not None and self.elapsed() >= self.max_seconds
        if idist.get_world_size() > 1:  # every rank stops at the same iteration, or DDP would hang
            over = bool(idist.all_reduce(torch.tensor([float(over)]), op="MAX").item())
        return over

    def _check(self, engine: Engine) -> None:
        if self._over() and not engine.should_terminate:
            self.logger.info(
                f"time budget of {self.max_seconds / 60:.1f} min ({self.clock} clock) reached at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}: stopping"
            )
            engine.terminate()
