"""The mean-position baseline: the error of predicting every landmark at its mean training position."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["mean_position_baseline"]


def _points(item: Mapping, n: int, world: bool) -> np.ndarray:
    rows = item.get("landmarks") or [None] * n
    d = next((len(r) for r in rows if r is not None), 3 if world else 2)
    return np.array([[np.nan] * d if r is None else [np.nan if v is None else v for v in r] for r in rows], float)


def mean_position_baseline(datalist: str | os.PathLike | Mapping, section: str = "validation") -> float:
    """MRE (mm) of predicting the training-set mean landmark positions for every item of ``section``.

    The best constant guess, so a model that does not beat it has learnt nothing about the images. World
    datalists hold millimetres already; pixel points are scaled by each item's spacing (1, i.e. pixels,
    without one). Missing landmarks (``null`` or NaN) are ignored: the mean is a per-landmark nanmean over
    the training items, and a missing ground-truth point (or a landmark no training item has) adds no error.

    Args:
        datalist: the datalist JSON (path or loaded dict).
        section: the section scored, e.g. ``"validation"`` or ``"test"``.
    """
    dl = datalist if isinstance(datalist, Mapping) else json.loads(Path(datalist).read_text())
    n = len(dl["landmark_names"])
    world = dl.get("coordinate_space") == "world"
    items = dl.get(section) or []
    if not dl.get("training") or not items:
        raise ValueError(f"mean_position_baseline: the datalist needs a non-empty 'training' and '{section}' section")
    train = np.stack([_points(it, n, world) for it in dl["training"]])
    target = np.stack([_points(it, n, world) for it in items])
    valid = np.isfinite(train).all(axis=-1, keepdims=True)  # a point with any missing coordinate is missing
    counts = valid[..., 0].sum(axis=0)  # training items per landmark
    mean = np.where(valid, train, 0.0).sum(axis=0) / np.maximum(counts, 1)[:, None]
    mean[counts == 0] = np.nan
    scale = 1.0 if world else np.array([it.get("spacing") or [1.0] * target.shape[-1] for it in items], float)[:, None, :]
    err = np.linalg.norm((target - mean) * scale, axis=-1)
    return float(np.mean(err[np.isfinite(err)]))
