"""Schedules defined on a training stage's real length (epochs or the time budget, whichever ends it).

A bundle's schedule (learning-rate decay, a loss term that starts late, warm restarts) is written as a
function of the stage's *progress* in [0, 1], not of an epoch count: with ``max_train_minutes`` the stage
ends when its time is spent, long before ``max_epochs``, and an epoch-based schedule would never run in
full. :class:`custom_monai.handlers.TimeBudgetHandler` measures progress; the handlers here read it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["ProgressAttributeSwitch", "ProgressLRHandler", "lr_factor"]


def lr_factor(
    progress: float,
    shape: str = "cosine",
    min_factor: float = 0.0,
    warmup: float = 0.0,
    cycles: int = 1,
    cycle_mult: float = 1.0,
) -> float:
    """The learning-rate multiplier at ``progress`` (0 = stage start, 1 = stage end).

    Args:
        shape: ``"constant"``, ``"cosine"`` (from 1 to ``min_factor``), or ``"linear"``.
        min_factor: the floor, reached at the end of the (last) cycle.
        warmup: fraction of the stage with a linear warm-up from ``min_factor`` to 1.
        cycles: number of cosine cycles (warm restarts, SGDR); each cycle ``cycle_mult`` times the previous.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return min_factor + (1.0 - min_factor) * p / warmup
    if shape == "constant":
        return 1.0
    p = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    if cycles > 1:
        lengths = [cycle_mult**i for i in range(cycles)]
        t = p * sum(lengths)
        for length in lengths:
            if t <= length:
                p = t / length
                break
            t -= length
        else:
            p = 1.0
    if shape == "linear":
        return 1.0 - (1.0 - min_factor) * p
    if shape == "cosine":
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown learning-rate shape {shape!r} (constant, cosine, linear)")


class ProgressLRHandler:
    """Set every parameter group's learning rate to ``initial_lr * lr_factor(progress)`` before each iteration.

    The base rate is each group's ``initial_lr`` (set once, saved with the optimizer's state, so a resumed
    run continues the same schedule). The rate at the end of the stage is logged, so the docs can say which
    schedule ran.

    Args:
        optimizer: the stage's optimizer.
        clock: the stage's :class:`custom_monai.handlers.TimeBudgetHandler` (its ``progress``).
        other args: as :func:`lr_factor`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        clock: Any,
        shape: str = "cosine",
        min_factor: float = 0.0,
        warmup: float = 0.0,
        cycles: int = 1,
        cycle_mult: float = 1.0,
        name: str | None = None,
    ) -> None:
        lr_factor(0.5, shape, min_factor, warmup, cycles, cycle_mult)  # fail early on a bad shape
        self.optimizer, self.clock = optimizer, clock
        self.kwargs = dict(shape=shape, min_factor=min_factor, warmup=warmup, cycles=cycles, cycle_mult=cycle_mult)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def __call__(self, engine: Engine) -> None:
        factor = lr_factor(self.clock.progress(engine, iteration_offset=-1), **self.kwargs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def report(self, engine: Engine) -> None:
        lrs = ", ".join(f"{g['lr']:.3g}" for g in self.optimizer.param_groups)
        self.logger.info(
            f"schedule: {self.kwargs['shape']} lr ran to progress {self.clock.progress(engine):.3f} "
            f"(epoch {engine.state.epoch}, iteration {engine.state.iteration}); final lr {lrs}"
        )


class ProgressAttributeSwitch:
    """Set ``obj.<attr> = value`` once the stage's progress reaches ``start`` (``before`` until then).

    Used for Zhong et al.'s focal term, which "mainly fine-tunes targets" in the last part of training.
    Applied before every iteration, so a resumed run restores it; the switch is logged with its epoch.

    Args:
        obj: the object (e.g. the loss).
        attr: attribute name.
        value: value from ``start`` on.
        before: value before ``start``.
        clock: the stage's :class:`custom_monai.handlers.TimeBudgetHandler`.
        start: progress in [0, 1] at which ``value`` takes effect (0 = from the start).
    """

    def __init__(self, obj: Any, attr: str, value: Any, before: Any, clock: Any, start: float = 0.0, name: str | None = None) -> None:
        if not hasattr(obj, attr):
            raise AttributeError(f"{type(obj).__name__} has no attribute '{attr}' to schedule")
        if not 0.0 <= float(start) <= 1.0:
            raise ValueError(f"start must be a stage fraction in [0, 1], got {start}")
        self.obj, self.attr, self.value, self.before, self.clock, self.start = obj, attr, value, before, clock, float(start)
        self.switched_at: tuple[int, int, float] | None = None
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        progress = self.clock.progress(engine, iteration_offset=-1)
        new = self.value if progress >= self.start else self.before
        if getattr(self.obj, self.attr) != new:
            self.logger.info(
                f"schedule: {type(self.obj).__name__}.{self.attr} = {new} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration} (stage progress {progress:.3f})"
            )
            if new == self.value:
                self.switched_at = (engine.state.epoch, engine.state.iteration, progress)
        setattr(self.obj, self.attr, new)
