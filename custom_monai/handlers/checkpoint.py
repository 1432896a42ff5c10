"""Atomic checkpoints: a resumable training state and the best model by a validation metric.

MONAI's ``CheckpointSaver`` writes non-atomically; a crash during ``torch.save`` can leave a
truncated file. These handlers write to a temporary file in the same folder and ``os.replace`` it,
so a checkpoint on disk is always complete, and only rank 0 writes under ``torchrun``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from custom_monai.atomic import atomic_write

__all__ = [
    "BestMetricCheckpoint",
    "ResumableCheckpoint",
    "atomic_torch_save",
    "check_settings",
    "load_checkpoint",
    "load_model",
    "save_model",
    "settings_path",
    "state_dicts",
    "trained_settings",
]


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


def settings_path(ckpt_path: str | os.PathLike) -> Path:
    """The settings file that travels with a model file: ``models/model.pt`` -> ``models/model.json``."""
    return Path(ckpt_path).with_suffix(".json")


def save_model(network: torch.nn.Module, path: str | os.PathLike, settings: Mapping[str, Any] | None = None, **info: Any) -> Path:
    """Write ``network``'s state dict to ``path`` (what MONAI's loaders expect) and its settings beside it.

    ``model.pt`` is the plain state dict of the bundle's ``network_def`` (``ckpt_export``, MONAI Label and
    ``torch.load(weights_only=True)`` read it as is); ``model.json`` holds ``{"settings": ..., **info}``:
    the landmark names and every setting that defines the network and its preprocessing, so that evaluation,
    inference, export and resume build the same model. Both files are written atomically.
    """
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        network = network.module
    path = atomic_torch_save(network.state_dict(), path)
    record = {"settings": _plain(dict(settings or {})), **_plain(info)}
    atomic_write(settings_path(path), lambda f: f.write(json.dumps(record, indent=2)))
    return path


def trained_settings(ckpt_path: str | os.PathLike, required: bool = True) -> dict:
    """The settings saved with the model at ``ckpt_path`` (``{}`` when there is none and not ``required``)."""
    path = settings_path(ckpt_path)
    if not path.is_file():
        if required:
            raise FileNotFoundError(
                f"no trained model settings at {path} (the file is written with {Path(ckpt_path).name} by training; "
                "train first, or pass --ckpt_path)"
            )
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    settings = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected an object with a 'settings' object")
    return settings


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def check_settings(trained: Mapping[str, Any], current: Mapping[str, Any], source: str = "the trained model") -> bool:
    """Stop when a setting of this run contradicts the one the model was trained with.

    ``trained`` comes from :func:`trained_settings`; ``current`` is the bundle's ``model_settings`` as this
    run resolved them (config defaults read the trained values, so only an explicit override can differ).
    Returns True so that it can stand in a config's run list.
    """
    for key, value in trained.items():
        if key in current and not _same(value, current[key]):
            raise ValueError(
                f"setting '{key}': {source} was trained with {_plain(value)!r}, but this run asks for "
                f"{_plain(current[key])!r}; drop the override (the trained value is used by default), "
                "or train a new model in another ckpt_dir"
            )
    return True


def load_model(path: str | os.PathLike, network: torch.nn.Module, map_location: str = "cpu", strict: bool = True) -> torch.nn.Module:
    """Load the state dict at ``path`` (``model.pt``) into ``network``; a clear error names a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist (train first, or pass --ckpt_path)")
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        network = network.module
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # the layout some zoo tools write
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not fit the network built from its settings ({settings_path(path)}): {e}") from e
    return network


def load_checkpoint(path: str | os.PathLike, objects: Mapping[str, Any], map_location: str = "cpu") -> dict:
    """Load the entries of a resumable checkpoint file into ``objects`` (``{key: object}``); return the file's dict.

    A clear error names the file when it is missing or lacks an entry. Loads with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train first, or pass ckpt_path)")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    _load_into(objects, checkpoint, path)
    return checkpoint


class ResumableCheckpoint:
    """Save the whole training state after every epoch (and when training ends) and resume from it when it exists.

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
        # a stage that the time budget ends mid-epoch keeps its last iterations too
        engine.add_event_handler(Events.COMPLETED, self.save)
        if self.save_on_exception:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def load(self, engine: Engine) -> None:
        if not (self.resume and self.path.is_file()):
            return
        max_epochs = engine.state.max_epochs
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
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
    """Save the network when the evaluator's key metric improves (lower is better by default).

    Attach to the evaluator. ``filename`` (e.g. ``model.pt``) is the plain state dict of ``network`` (the
    bundle's whole ``network_def``, every stage); the settings file beside it (``model.json``, see
    :func:`save_model`) holds ``settings`` plus ``{"metric_name", "metric", "epoch"}``.

    Args:
        save_dir: folder of the file.
        network: the module to save (DDP/DataParallel are unwrapped).
        filename: file name.
        settings: what rebuilds the model (landmark names, network and preprocessing settings).
        metric_name: evaluator metric name; default: the evaluator's key metric.
        mode: ``"min"`` or ``"max"``.
        trainer: used only to record the epoch (default: the evaluator's epoch, which the validation handler
            sets to the trainer's).
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        filename: str = "model.pt",
        settings: dict | None = None,
        metric_name: str | None = None,
        mode: str = "min",
        trainer: Engine | None = None,
        name: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.path = Path(save_dir) / filename
        self.network = network
        self.metric_name = metric_name
        self.mode = mode
        self.trainer = trainer
        self.settings = _plain(settings or {})
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
                epoch = self.trainer.state.epoch if self.trainer is not None else engine.state.epoch
                save_model(self.network, self.path, self.settings, metric_name=name, metric=value, epoch=epoch)
                self.logger.info(f"saved {self.path} ({name} = {value:.4f}, epoch {epoch})")
