"""Score a folder of landmark prediction JSON files against a datalist section.

    python scripts/score.py --datalist D.json --section test --predictions DIR --out OUT/metrics.json

Predictions are matched to datalist items by id (the image file name without its extension), i.e.
``DIR/<id>.json`` in the bundle's prediction format (see ``custom_monai.handlers.writers``). Any tool
that writes that format can be scored. Writes ``metrics.json`` (the ``--out`` path), ``predictions.csv``
and ``errors_boxplot.png`` beside it, and prints MRE/SDR.

- ``coordinate_space: "pixel"`` (2D, or voxel 3D): errors in pixels, and in mm where the item has a
  ``spacing`` (or ``--spacing`` is given for items without one; e.g. ``--spacing 0.127`` for Hamedan).
- ``coordinate_space: "world"``: ground truth in world mm; predictions' ``"world"`` coordinates are used
  and errors are in mm only.
- A datalist item without a prediction file is listed in ``missing_predictions`` and all its
  landmarks count as not found (failures in SDR).
- 2D datalists whose landmarks are the 19 of ISBI 2015 are also scored on the challenge's cephalometric
  analysis (``metrics.json`` ``measurements``: class accuracy and MAE per measurement, ``measurements.csv``),
  with the same code as the bundles' evaluation (``custom_monai.analysis.cephalometric``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom_monai.analysis.cephalometric import MeasurementAccumulator, summary_line
from custom_monai.handlers.writers import image_id, read_prediction_json, write_evaluation_report
from custom_monai.metrics.landmark_metrics import DEFAULT_THRESHOLDS, LandmarkErrorAccumulator

__all__ = ["load_datalist_section", "score"]


def _gt_points(lms: Any, n: int, where: str) -> np.ndarray:
    """Datalist ``landmarks`` -> (N, D) float array, NaN for ``null`` points (or a ``null`` list)."""
    if lms is None:
        return np.full((n, 2), np.nan)
    if not isinstance(lms, list) or len(lms) != n:
        got = len(lms) if isinstance(lms, list) else type(lms).__name__
        raise ValueError(f"{where}: 'landmarks' must be a list of {n} points (landmark_names), got {got}")
    dims = {len(p) for p in lms if isinstance(p, list)}
    if len(dims) > 1 or not dims <= {2, 3}:
        raise ValueError(f"{where}: every point must be [x, y] or [x, y, z] (one kind), got lengths {sorted(dims)}")
    d = dims.pop() if dims else 2
    out = np.full((n, d), np.nan)
    for k, p in enumerate(lms):
        if p is None:
            continue
        if not isinstance(p, list) or len(p) != d:
            raise ValueError(f"{where}: landmark {k + 1} must be a list of {d} numbers or null, got {p!r}")
        if any(v is None for v in p):
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p):
            raise ValueError(f"{where}: landmark {k + 1} must hold numbers, got {p!r}")
        out[k] = p
    return out


def load_datalist_section(datalist: str | Path, section: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, items)``; each item ``{"id", "image" (absolute), "landmarks" (N, D) NaN, "spacing" or None}``."""
    datalist = Path(datalist)
    with open(datalist, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "landmark_names" not in data:
        raise ValueError(f"{datalist}: expected a datalist object with 'landmark_names'")
    if section not in data:
        have = [k for k, v in data.items() if isinstance(v, list) and k != "landmark_names"]
        raise ValueError(f"{datalist}: no section '{section}' (sections: {have})")
    names = [str(x) for x in data["landmark_names"]]
    space = data.get("coordinate_space", "pixel")
    if space not in ("pixel", "world"):
        raise ValueError(f"{datalist}: coordinate_space must be 'pixel' or 'world', got {space!r}")
    items, seen = [], {}
    for i, it in enumerate(data[section]):
        where = f"{datalist} [{section}][{i}]"
        if not isinstance(it, dict) or "image" not in it:
            raise ValueError(f"{where}: expected an object with 'image'")
        img = Path(it["image"])
        img = img if img.is_absolute() else datalist.parent / img
        iid = image_id(img)
        if iid in seen:
            raise ValueError(f"{where}: id '{iid}' already used by item {seen[iid]}; prediction files would collide")
        seen[iid] = i
        sp = it.get("spacing")
        if sp is not None:
            sp = np.asarray(sp, dtype=np.float64).reshape(-1)
        gt = _gt_points(it.get("landmarks"), len(names), where)
        items.append({"id": iid, "image": str(img), "landmarks": gt, "spacing": sp})
    header = {"landmark_names": names, "coordinate_space": space}
    return header, items


def score(
    datalist: str,
    section: str = "test",
    predictions: str = "predictions",
    out: str = "metrics.json",
    spacing: float | Sequence[float] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score ``predictions/<id>.json`` against ``datalist[section]``; write the report; return the summary.

    Args:
        datalist: datalist JSON file.
        section: ``training``, ``validation`` or ``test``.
        predictions: folder of prediction JSON files.
        out: path of ``metrics.json``; ``predictions.csv`` and ``errors_boxplot.png`` go beside it.
        spacing: mm per pixel for items without their own ``spacing`` (a number or one per axis).
        thresholds: SDR thresholds in mm.
        quiet: do not print the result.
    """
    header, items = load_datalist_section(datalist, section)
    names, space = header["landmark_names"], header["coordinate_space"]
    world = space == "world"
    if world and spacing is not None:
        raise ValueError("--spacing does not apply to a world-coordinate datalist (errors are already in mm)")
    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"predictions folder not found: {pred_dir}")
    acc = LandmarkErrorAccumulator(names, thresholds)
    measurements = MeasurementAccumulator(names)
    missing: list[str] = []
    for it in items:
        gt = it["landmarks"]
        path = pred_dir / f"{it['id']}.json"
        if path.is_file():
            _, pred, pred_names = read_prediction_json(path, world=world)
            if pred.shape[0] != len(names):
                raise ValueError(f"{path}: {pred.shape[0]} landmarks, the datalist has {len(names)}")
            if pred_names != names:
                warnings.warn(f"{path}: landmark names {pred_names[:3]}... differ from the datalist's {names[:3]}...")
            if pred.shape[1] != gt.shape[1]:
                if np.all(np.isnan(gt)):
                    gt = np.full(pred.shape, np.nan)
                else:
                    raise ValueError(f"{path}: {pred.shape[1]}D points, datalist item '{it['id']}' has {gt.shape[1]}D")
        else:
            missing.append(it["id"])
            pred = np.full(gt.shape, np.nan)
        if world:
            acc.add(it["id"], pred, gt, world=True)
        else:
            sp = it["spacing"] if it["spacing"] is not None else spacing
            if sp is not None:
                sp = np.broadcast_to(np.asarray(sp, dtype=np.float64).reshape(-1), (gt.shape[1],))
            acc.add(it["id"], pred, gt, sp)
            measurements.add(it["id"], pred, gt, sp)
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(items)} images have no prediction file in {pred_dir} (e.g. {missing[:5]}); "
            "counted as not found"
        )
    extra = {
        "datalist": str(datalist),
        "section": section,
        "coordinate_space": space,
        "missing_predictions": missing,
    }
    summary = write_evaluation_report(
        Path(out).parent, acc, extra=extra, metrics_name=Path(out).name, measurements=measurements
    )
    if not quiet:
        print(_format(summary, out))
    return summary


def _format(s: dict[str, Any], out: str) -> str:
    def v(x: float | None, unit: str) -> str:
        return "n/a" if x is None else f"{x:.3f} {unit}"

    lines = [
        f"{s['n_images']} images, {s['n_points']} landmarks with ground truth "
        f"({s['n_missing_gt']} missing ground truth, {s['n_not_found']} not found, "
        f"{len(s['missing_predictions'])} images without prediction)",
        f"MRE {v(s['mre_mm'], 'mm')} (SD {v(s['sd_mm'], 'mm')}, median {v(s['median_mm'], 'mm')}); "
        f"MRE {v(s['mre_px'], 'px')} (SD {v(s['sd_px'], 'px')})",
        "SDR " + ", ".join(f"{k} mm: " + ("n/a" if p is None else f"{p:.2f}%") for k, p in s["sdr"].items()),
    ]
    if "measurements" in s:
        lines.append(summary_line(s["measurements"]))
    lines.append(f"written: {out}")
    return "\n".join(lines)


def _cli(
    datalist: str,
    section: str = "test",
    predictions: str = "predictions",
    out: str = "metrics.json",
    spacing: float | Sequence[float] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    quiet: bool = False,
) -> None:
    """Command line: like :func:`score`, without echoing the returned summary (it is in ``out``)."""
    score(datalist, section, predictions, out, spacing, thresholds, quiet)


_cli.__doc__ = score.__doc__

if __name__ == "__main__":
    import fire

    fire.Fire(_cli)
