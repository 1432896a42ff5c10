"""Experiment tracking for multi-stage bundles (``python -m monai.bundle run ... --tracking mlflow``).

MONAI's tracking patch appends an ``MLFlowHandler`` to ``train#handlers``, ``validate#handlers`` and
``handlers`` (see ``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``). Our bundles share those lists between
the stage engines of a method, so two small pieces make the result one complete run per command:
:func:`stage_handlers` keeps the run open after an earlier stage, and :class:`TrackingExtras` adds the
bundle's settings as run parameters and files such as ``metrics.json`` as artifacts. Without tracking both
are no-ops, and neither imports mlflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["TrackingExtras", "stage_handlers"]


def _is_mlflow_handler(obj: Any) -> bool:
    return type(obj).__name__ == "MLFlowHandler" and hasattr(obj, "close_on_complete")


class _KeepRunOpen:
    """Attach an ``MLFlowHandler`` without its close-on-complete step (an earlier stage of one run)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def attach(self, engine: Engine) -> None:
        close = self.handler.close_on_complete
        self.handler.close_on_complete = False
        try:
            self.handler.attach(engine)
        finally:
            self.handler.close_on_complete = close


def stage_handlers(handlers: Sequence[Any] | None, last: bool = False) -> list:
    """The shared ``train#handlers`` for one stage's trainer; before the ``last`` stage, tracking runs stay open."""
    return [h if last or not _is_mlflow_handler(h) else _KeepRunOpen(h) for h in (handlers or [])]


class TrackingExtras:
    """Give the tracking handlers of an engine the bundle's parameters and artifacts.

    Put it in the same handler list as the tracking handler (before it, which is where MONAI's patch
    appends); at ``STARTED`` it finds the ``MLFlowHandler`` instances attached to the engine and adds
    ``params`` to their ``experiment_param`` and ``artifacts`` (files written by the run, e.g.
    ``metrics.json``; logged when the engine completes) to their ``artifacts``.

    Args:
        params: run parameters (e.g. the bundle's ``model_settings`` and training settings).
        artifacts: file paths to log at the end of the run.
    """

    def __init__(self, params: Mapping[str, Any] | None = None, artifacts: Sequence[str] | str | None = None) -> None:
        self.params = {str(k): _short(v) for k, v in (params or {}).items()}
        self.artifacts = [artifacts] if isinstance(artifacts, str) else list(artifacts or [])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def trackers(self, engine: Engine) -> list:
        found = []
        for event_handlers in engine._event_handlers.values():
            for func, *_ in event_handlers:
                owner = getattr(func, "__self__", None)
                if _is_mlflow_handler(owner) and all(owner is not f for f in found):
                    found.append(owner)
        return found

    def __call__(self, engine: Engine) -> None:
        for tracker in self.trackers(engine):
            if self.params:
                tracker.experiment_param = {**(tracker.experiment_param or {}), **self.params}
            if self.artifacts:
                current = tracker.artifacts
                current = [] if not current else [current] if isinstance(current, str) else list(current)
                tracker.artifacts = current + [a for a in self.artifacts if a not in current]


def _short(value: Any) -> Any:
    """MLflow limits a parameter value to a few thousand characters; long lists are shortened."""
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."
