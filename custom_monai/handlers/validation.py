"""Validation every ``interval`` epochs and always after the last epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["LandmarkValidationHandler"]


class LandmarkValidationHandler(ValidationHandler):
    """MONAI's ``ValidationHandler`` plus a run when training ends off the interval.

    Training that stops on ``max_epochs`` or on a time budget still gets a validation of its final
    weights, so the best-model checkpoint exists even for runs shorter than ``interval`` epochs.
    """

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._final)
        self._last_validated = -1
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._mark)

    def _mark(self, engine: Engine) -> None:
        self._last_validated = engine.state.epoch

    def _final(self, engine: Engine) -> None:
        if self._last_validated != engine.state.epoch:
            self._last_validated = engine.state.epoch
            self(engine)
