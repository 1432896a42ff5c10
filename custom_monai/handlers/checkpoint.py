"""Atomic checkpoints: a resumable training state and the best model by a validation metric.

MONAI's ``CheckpointSaver`` writes non-atomically; a crash during ``torch.save`` can leave a
truncated file. These handlers write to a temporary file in the same folder and ``os.replace`` it,
so a checkpoint on disk is always complete, and only rank 0 writes under ``torchrun``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from custom_monai.atomic import atomic_write

__all__ = ["atomic_torch_save", "checkpoint_meta", "load_checkpoint", "ResumableCheckpoint", "BestMetricCheckpoint", "state_dicts"]


def state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}``, unwrapping DistributedDataParallel/DataParallel modules."""
    out = {}
    for k, obj in objects.items():
        if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            obj = obj.module
        out[k] = obj.state_dict()
    return out


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _load_into(objects: Mapping[str, Any], checkpoint: Mapping[str, Any], path: Path) -> None:
    for k, obj in objects.items():
        if k not in checkpoint:
            raise KeyError(f"checkpoint {path} has no entry '{k}' (has {sorted(checkpoint)})")
        if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            obj = obj.module
        obj.load_state_dict(checkpoint[k])


def _plain(obj: Any) -> Any:
    """Config values -> plain Python (lists, dicts, numbers, strings) for a portable checkpoint."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """The ``"_meta"`` dictionary saved by :class:`BestMetricCheckpoint` (landmark names, settings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train first, or pass --ckpt_path)")
    meta = torch.load(path, map_location="cpu", weights_only=False).get("_meta")
    if not isinstance(meta, dict):
        raise KeyError(f"checkpoint {path} has no '_meta' entry (was it written by BestMetricCheckpoint?)")
    return meta


def load_checkpoint(path: str | os.PathLike, objects: Mapping[str, Any], map_location: str = "cpu") -> dict:
    """Load the entries of a checkpoint file into ``objects`` (``{key: module}``); return the file's dict.

    A clear error names the file when it is missing or lacks an entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train first, or pass ckpt_path)")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    _load_into(objects, checkpoint, path)
    return checkpoint


class ResumableCheckpoint:
    """Save the whole training state after every epoch and resume from it when it exists.

    ``save_dict`` holds the network(s), optimizer, scheduler and anything else with a ``state_dict``
    (e.g. a :class:`BestMetricCheckpoint`); the engine it is attached to is saved too (under
    ``"trainer"``: epoch and iteration), which avoids a circular reference in bundle configs. With
    ``resume=True`` and an existing file, the state is loaded when the trainer starts, so training
    continues from the next epoch with the same optimizer state. The run's ``max_epochs`` wins over the
    stored one, so a finished run can be extended.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict``.
        filename: file name in ``save_dir``.
        resume: load the checkpoint at start if it exists.
        save_on_exception: also save when training raises (the last state of a completed iteration).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        filename: str = "checkpoint.pt",
        resume: bool = True,
        save_on_exception: bool = False,
        name: str | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.resume = resume
        self.save_on_exception = save_on_exception
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.save_on_exception:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def load(self, engine: Engine) -> None:
        if not (self.resume and self.path.is_file()):
            return
        max_epochs = engine.state.max_epochs
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=False)
        _load_into(self.save_dict, checkpoint, self.path)
        if "trainer" in checkpoint:
            trainer_state = dict(checkpoint["trainer"])
            done = int(trainer_state["iteration"]) // max(int(trainer_state["epoch_length"]), 1)
            trainer_state["max_epochs"] = max(int(trainer_state.get("max_epochs") or 0), done)
            engine.load_state_dict(trainer_state)
        engine.state.max_epochs = max_epochs
        if engine.state.epoch >= max_epochs:
            self.logger.info(f"{self.path}: already trained {engine.state.epoch} epochs (max_epochs {max_epochs})")
        self.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")

    def save(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            data = state_dicts(self.save_dict)
            data["trainer"] = engine.state_dict()
            atomic_torch_save(data, self.path)

    def _on_exception(self, engine: Engine, e: Exception) -> None:
        if not isinstance(e, KeyboardInterrupt):
            self.save(engine)
        raise e


class BestMetricCheckpoint:
    """Save ``save_dict`` when the evaluator's key metric improves (lower is better by default).

    Attach to the evaluator; the file (e.g. ``model.pt``) holds the state dicts plus
    ``{"metric": value, "epoch": trainer epoch}`` under ``"_meta"``.

    Args:
        save_dir: folder of the file.
        save_dict: objects to save.
        filename: file name.
        metric_name: evaluator metric name; default: the evaluator's key metric.
        mode: ``"min"`` or ``"max"``.
        trainer: used only to record the epoch (default: the evaluator's epoch, which MONAI's
            ``ValidationHandler`` sets to the trainer's).
        meta: what inference needs to rebuild the model (landmark names, network and preprocessing
            settings), stored under ``"_meta"`` so that ``inference.json`` reads it from the file.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        filename: str = "model.pt",
        metric_name: str | None = None,
        mode: str = "min",
        trainer: Engine | None = None,
        meta: dict | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.metric_name = metric_name
        self.mode = mode
        self.trainer = trainer
        self.meta = _plain(meta or {})
        self.best: float | None = None
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def state_dict(self) -> dict:
        """The best value so far, so that a resumed run does not overwrite a better ``model.pt``."""
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(name) if name else None
        if value is None:
            return
        value = float(value)
        if value != value:  # NaN
            return
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best = value
            if idist.get_rank() == 0:
                data = state_dicts(self.save_dict)
                epoch = self.trainer.state.epoch if self.trainer is not None else engine.state.epoch
                data["_meta"] = {**self.meta, "metric_name": name, "metric": value, "epoch": epoch}
                atomic_torch_save(data, self.path)
                self.logger.info(f"saved {self.path} ({name} = {value:.4f}, epoch {epoch})")
