"""Switch an attribute of any object at a given epoch (e.g. turn on a loss term)."""

from __future__ import annotations

import logging
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["EpochAttributeSwitch"]


class EpochAttributeSwitch:
    """Set ``obj.<attr> = value`` from epoch ``start_epoch`` on (1-based), ``before`` until then.

    Used for Zhong et al.'s focal term, which "mainly fine-tunes targets after 60 epochs". The value is
    re-applied at every epoch start, so resuming a run restores it.

    Args:
        obj: the object (e.g. the loss).
        attr: attribute name.
        value: value from ``start_epoch`` on.
        before: value before ``start_epoch``.
        start_epoch: first epoch with ``value``; ``None`` or <= 1 means from the start.
    """

    def __init__(self, obj: Any, attr: str, value: Any, before: Any, start_epoch: int | None) -> None:
        if not hasattr(obj, attr):
            raise AttributeError(f"{type(obj).__name__} has no attribute '{attr}' to schedule")
        self.obj, self.attr, self.value, self.before = obj, attr, value, before
        self.start_epoch = start_epoch or 1
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        new = self.value if engine.state.epoch >= self.start_epoch else self.before
        if getattr(self.obj, self.attr) != new:
            self.logger.info(f"epoch {engine.state.epoch}: {type(self.obj).__name__}.{self.attr} = {new}")
        setattr(self.obj, self.attr, new)
