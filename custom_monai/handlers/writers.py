"""File writers for landmark predictions and evaluation reports.

- per image: the prediction JSON of the bundle contract (``<id>.json``) and, for 2D, an overlay PNG;
- per evaluation: ``metrics.json``, ``predictions.csv`` and a per-landmark error box plot.

2D images whose landmarks are the 19 of ISBI 2015 also get the challenge's cephalometric analysis
(:mod:`custom_monai.analysis.cephalometric`): ``measurements`` in the prediction JSON, the measurement lines and
values on the overlay, and, in evaluation, per-measurement MAE and class accuracy in ``metrics.json`` plus
``measurements.csv``.

``scripts/score.py`` reads the prediction JSON back with :func:`read_prediction_json`, so any tool that
writes this format can be scored. Every file is written to a temporary file in the target folder and
renamed into place (``os.replace``), so a reader never sees a half-written file.

Coordinates follow the project convention: (x, y[, z]) = (column, row[, slice]) in pixels of the
original image, NaN (``null`` in JSON) for a landmark that was not found.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom_monai.analysis.cephalometric import (
    ISBI_SYMBOLS,
    MEASUREMENTS,
    MeasurementAccumulator,
    cephalometric_measurements,
    is_isbi_landmark_set,
    landmark_roles,
)
from custom_monai.atomic import atomic_write
from custom_monai.data.readers import ISBI_LANDMARK_NAMES
from custom_monai.metrics.landmark_metrics import LandmarkErrorAccumulator

__all__ = [
    "METRICS_JSON",
    "PREDICTIONS_CSV",
    "BOXPLOT_PNG",
    "MEASUREMENTS_CSV",
    "image_id",
    "measurements_for",
    "prediction_record",
    "write_prediction_json",
    "read_prediction_json",
    "write_predictions_csv",
    "write_measurements_csv",
    "write_overlay_png",
    "write_boxplot",
    "write_metrics_json",
    "write_evaluation_report",
]

#: file names of an evaluation report inside its output folder
METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
BOXPLOT_PNG = "errors_boxplot.png"
MEASUREMENTS_CSV = "measurements.csv"

#: extensions of more than one part, stripped whole by :func:`image_id`
_MULTI_SUFFIXES = (".nii.gz", ".mrk.json", ".fcsv.json", ".seg.nrrd", ".tar.gz")
_AXES = ("x", "y", "z")


def image_id(path: str | os.PathLike) -> str:
    """The image file name without its extension: ``a/001.png`` -> ``001``, ``ct.nii.gz`` -> ``ct``."""
    name = Path(str(path)).name
    low = name.lower()
    for suf in _MULTI_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    stem = Path(name).stem
    return stem or name


def _num(x: Any) -> float | None:
    """Python float, or ``None`` for NaN/inf/None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    """Recursively turn numpy/torch scalars and arrays into JSON types, NaN/inf into ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _array(x: Any) -> np.ndarray:
    """Float64 numpy copy of a numpy array, torch tensor or nested sequence."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


def _points(x: Any, name: str) -> np.ndarray:
    a = _array(x)
    if a.ndim != 2 or a.shape[1] not in (2, 3):
        raise ValueError(f"{name} must be (N, 2) or (N, 3) points, got shape {a.shape}")
    return a


def _write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text))


def measurements_for(points: Any, landmark_names: Sequence[str], spacing: Any = None) -> dict[str, dict] | None:
    """The measurements (:func:`cephalometric_measurements`) of 2D ISBI-19 landmarks, else ``None``."""
    if np.shape(points)[-1] != 2 or not is_isbi_landmark_set(landmark_names):
        return None
    return cephalometric_measurements(points, landmark_names, spacing)


def prediction_record(
    image_path: str | os.PathLike,
    spacing: Any,
    points: Any,
    landmark_names: Sequence[str],
    confidence: Any = None,
    world_points: Any = None,
    extra: Mapping[str, Any] | None = None,
    analysis: bool = True,
    landmark_fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The prediction dictionary of the bundle contract for one image.

    Args:
        image_path: the input image (stored as given; its file name gives the output ``<id>``).
        spacing: (D,) mm per pixel along (x, y[, z]), or ``None`` if unknown.
        points: (N, D) points in the input image's own pixel/voxel coordinates, NaN row = not found.
        landmark_names: N names, in landmark order (``index`` is the 1-based position).
        confidence: (N,) per-landmark confidence or ``None``.
        world_points: 3D only, (N, 3) points in world millimetres (ITK/LPS), stored as ``"world"``.
        extra: more top-level fields (e.g. ``"method"``, ``"time_s"``); cannot override the contract keys.
        analysis: add ``"measurements"`` (:func:`measurements_for`) when the points are 2D ISBI-19 landmarks.
        landmark_fields: more per-landmark fields, ``{name: (N,) or (N, D) values}``; an ``(N, D)`` field is
            written per axis (``{"x", "y"[, "z"]}``), e.g. D-CeLR's predicted ``sigma`` in pixels. A landmark
            that was not found gets ``null``. Cannot override the landmark's own keys.

    Returns:
        ``{"image", "spacing", "landmarks": [{"index", "name", "x", "y", ["z"], "confidence", ["world"]}],
        ["measurements": {"ANB": {"value", "unit", "class", "class_name", ["reason"]}, ...}], ...}``
    """
    pts = _points(points, "points")
    n, d = pts.shape
    names = [str(x) for x in landmark_names]
    if len(names) != n:
        raise ValueError(f"{image_path}: {n} points but {len(names)} landmark names")
    conf = None
    if confidence is not None:
        conf = _array(confidence).reshape(-1)
        if conf.size != n:
            raise ValueError(f"{image_path}: {n} points but {conf.size} confidence values")
    world = None
    if world_points is not None:
        world = _points(world_points, "world_points")
        if world.shape != (n, 3):
            raise ValueError(f"{image_path}: world_points must be ({n}, 3), got {world.shape}")
    sp = None
    if spacing is not None:
        sp = [_num(s) for s in _array(spacing).reshape(-1)]
        if len(sp) != d:
            raise ValueError(f"{image_path}: spacing has {len(sp)} values for {d}D points")
    fields: dict[str, np.ndarray] = {}
    for key, values in (landmark_fields or {}).items():
        if key in ("index", "name", "confidence", "world", *_AXES):
            raise ValueError(f"landmark field {key!r} would overwrite a landmark's own field")
        arr = _array(values)
        if arr.shape[0] != n or arr.ndim > 2:
            raise ValueError(f"{image_path}: landmark field {key!r} must be ({n},) or ({n}, D), got {arr.shape}")
        fields[str(key)] = arr
    landmarks = []
    for i in range(n):
        found = bool(np.all(np.isfinite(pts[i])))
        lm: dict[str, Any] = {"index": i + 1, "name": names[i]}
        for a in range(d):
            lm[_AXES[a]] = float(pts[i, a]) if found else None
        lm["confidence"] = None if conf is None else _num(conf[i])
        for key, arr in fields.items():
            if arr.ndim == 1:
                lm[key] = _num(arr[i]) if found else None
            else:
                lm[key] = {_AXES[a]: (_num(arr[i, a]) if found else None) for a in range(arr.shape[1])}
        if world is not None:
            ok = found and bool(np.all(np.isfinite(world[i])))
            lm["world"] = {_AXES[a]: (float(world[i, a]) if ok else None) for a in range(3)}
        landmarks.append(lm)
    record: dict[str, Any] = {"image": os.fspath(image_path), "spacing": sp, "landmarks": landmarks}
    measurements = measurements_for(pts, names, sp) if analysis else None
    if measurements is not None:
        record["measurements"] = measurements
    if extra:
        clash = set(extra) & set(record)
        if clash:
            raise ValueError(f"extra fields {sorted(clash)} would overwrite the prediction record's own fields")
        record.update(_jsonable(dict(extra)))
    return record


def write_prediction_json(out_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` (from :func:`prediction_record`) to ``out_dir/<id>.json``; return the path."""
    if "image" not in record or "landmarks" not in record:
        raise ValueError("a prediction record needs 'image' and 'landmarks' (use prediction_record)")
    return _write_json(Path(out_dir) / f"{image_id(record['image'])}.json", record)


def read_prediction_json(path: str | os.PathLike, world: bool = False) -> tuple[str, np.ndarray, list[str]]:
    """Read a prediction JSON: ``(image, points (N, D) with NaN where null, names)``.

    With ``world=True`` the points are the ``"world"`` millimetre coordinates (3D) instead of ``x, y, z``.
    Landmarks are placed by their 1-based ``index``; a gap, a repeated index, a non-number coordinate or a
    missing ``world`` raise ``ValueError`` naming the file and the landmark.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("landmarks"), list):
        raise ValueError(f"{path}: expected an object with a 'landmarks' list")
    lms = data["landmarks"]
    n = len(lms)
    dims = 3 if any(isinstance(lm, dict) and "z" in lm for lm in lms) or world else 2
    pts = np.full((n, dims), np.nan, dtype=np.float64)
    names: list[str | None] = [None] * n
    for k, lm in enumerate(lms):
        where = f"{path}: landmarks[{k}]"
        if not isinstance(lm, dict) or "index" not in lm:
            raise ValueError(f"{where}: expected an object with 'index', 'name', 'x', 'y'")
        idx = lm["index"]
        if isinstance(idx, bool) or not isinstance(idx, int) or not 1 <= idx <= n:
            raise ValueError(f"{where}: 'index' must be an integer in 1..{n}, got {idx!r}")
        if names[idx - 1] is not None:
            raise ValueError(f"{where}: index {idx} appears more than once")
        names[idx - 1] = str(lm.get("name", f"L{idx}"))
        src = lm
        if world:
            if "world" not in lm:
                raise ValueError(f"{where} (index {idx}): no 'world' coordinates (needed for world-space scoring)")
            src = lm["world"] or {}
        vals = [src.get(a) for a in _AXES[:dims]]
        if any(v is None for v in vals):
            continue  # not found
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"{where} (index {idx}): coordinates must be numbers or null, got {vals}")
        pts[idx - 1] = vals
    return str(data.get("image", "")), pts, [str(x) for x in names]


def write_predictions_csv(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """One row per (image, landmark), from :meth:`LandmarkErrorAccumulator.records`.

    Columns: ``id, index, name, pred_x, pred_y[, pred_z], gt_x, gt_y[, gt_z], error_px, error_mm, status``.
    Empty cell = missing value; a not-found prediction has empty ``pred_*`` and ``inf`` errors.
    """
    dims = 3 if any("pred_z" in r or "gt_z" in r for r in records) else 2
    cols = ["id", "index", "name"]
    cols += [f"pred_{a}" for a in _AXES[:dims]] + [f"gt_{a}" for a in _AXES[:dims]]
    cols += ["error_px", "error_mm", "status"]
    return _write_csv(path, cols, records)


def write_measurements_csv(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """One row per (image, measurement), from :meth:`MeasurementAccumulator.records`; empty cell = ``None``.

    Columns: ``id, measurement, unit, pred_value, gt_value, abs_error, pred_class, gt_class``.
    """
    cols = ["id", "measurement", "unit", "pred_value", "gt_value", "abs_error", "pred_class", "gt_class"]
    return _write_csv(path, cols, records)


def _csv_cell(v: Any) -> Any:
    """CSV text of a value: empty for NaN/None, ``inf`` for infinities, full-precision floats."""
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return ""
        return "inf" if math.isinf(v) else repr(float(v))
    return v


def _write_csv(path: str | os.PathLike, cols: Sequence[str], records: Sequence[Mapping[str, Any]]) -> Path:
    def write(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(cols)
        for r in records:
            w.writerow([_csv_cell(r.get(c, float("nan"))) for c in cols])

    return atomic_write(path, write)


def _to_grey_uint8(image_2d: Any) -> np.ndarray:
    """(W, H) as loaded by MONAI (also (1, W, H), (C, W, H) or (W, H, C)) -> (H, W) uint8 for PIL."""
    if hasattr(image_2d, "detach"):
        image_2d = image_2d.detach().cpu().float().numpy()
    a = np.asarray(image_2d, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4):
        a = a[:3].mean(axis=0)
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    if a.ndim != 2:
        raise ValueError(f"overlay image must be 2D (W, H) indexed [x, y], got shape {np.shape(image_2d)}")
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape[::-1], dtype=np.uint8)
    sample = finite[:: max(1, finite.size // 200_000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(a, nan=lo) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8).T  # (W, H) -> (H, W) = rows, columns


def write_overlay_png(
    path: str | os.PathLike,
    image_2d: Any,
    pred_points: Any,
    gt_points: Any = None,
    names: Sequence[str] | None = None,
    max_size: int = 1024,
    measurements: Mapping[str, Mapping[str, Any]] | None = None,
    gt_measurements: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Draw predictions (red crosses, 1-based numbers), ground truth (green dots) and gt->pred lines (yellow).

    With ``measurements`` (from :func:`measurements_for` on the original-frame points) and ``names``, the
    cephalometric analysis is drawn too: the lines the measurements are built on (cyan, between predicted
    points) and, in a panel added to the right of the image, each value and class (green = class 1, normal;
    orange = another class). The image part keeps its size and frame (at the top left).

    Args:
        path: output PNG.
        image_2d: the image **as loaded by MONAI**, shape (W, H) indexed ``[x, y]`` (a leading channel or a
            trailing RGB axis is averaged to grey). The file is written as usual, H rows by W columns.
        pred_points: (N, 2) (x, y) points in the same frame; NaN rows are skipped.
        gt_points: optional (N, 2) ground truth.
        names: optional N names, listed as a ``number name`` legend in the top-left corner.
        max_size: the longest side of the written file; larger images are downscaled (points with them).
        measurements: the predicted points' measurements, ``None`` for no analysis.
        gt_measurements: the ground truth's, shown beside them in the panel.
    """
    from PIL import Image, ImageDraw, ImageFont

    grey = _to_grey_uint8(image_2d)
    h, w = grey.shape
    pred = _points(pred_points, "pred_points")
    gt = None if gt_points is None else _points(gt_points, "gt_points")
    if gt is not None and gt.shape != pred.shape:
        raise ValueError(f"gt_points {gt.shape} and pred_points {pred.shape} differ")
    if names is not None and len(names) != len(pred):
        raise ValueError(f"{len(names)} names for {len(pred)} points")
    scale = min(1.0, max_size / max(h, w))
    img = Image.fromarray(grey)  # uint8 (H, W) -> mode "L"
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    r = max(3, round(side / 150))
    lw = max(1, r // 3)
    try:
        font = ImageFont.load_default(size=max(10, 3 * r))
        small = ImageFont.load_default(size=max(9, 2 * r))
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = small = ImageFont.load_default()

    outline = {"stroke_width": 1, "stroke_fill": (0, 0, 0)}

    def xy(p: np.ndarray) -> tuple[float, float]:
        # pixel centres: index i covers [i - 0.5, i + 0.5] in the original, so scale about the pixel edges
        return (p[0] + 0.5) * scale - 0.5, (p[1] + 0.5) * scale - 0.5

    ok_pred = np.all(np.isfinite(pred), axis=1)
    ok_gt = np.zeros(len(pred), bool) if gt is None else np.all(np.isfinite(gt), axis=1)
    if measurements and names is not None:
        index = {sym: landmark_roles(names).get(role) for sym, role in zip(ISBI_SYMBOLS, ISBI_LANDMARK_NAMES)}
        for a, b in dict.fromkeys(seg for m in MEASUREMENTS for seg in m.lines):  # each segment once
            i, j = index[a], index[b]
            if i is not None and j is not None and ok_pred[i] and ok_pred[j]:
                draw.line([xy(pred[i]), xy(pred[j])], fill=(0, 200, 255), width=lw)
    for i in range(len(pred)):
        if ok_pred[i] and ok_gt[i]:
            draw.line([xy(gt[i]), xy(pred[i])], fill=(255, 220, 0), width=lw)
    for i in range(len(pred)):
        if ok_gt[i]:
            x, y = xy(gt[i])
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 220, 0))
    for i in range(len(pred)):
        if ok_pred[i]:
            x, y = xy(pred[i])
            draw.line([(x - r, y - r), (x + r, y + r)], fill=(255, 0, 0), width=lw + 1)
            draw.line([(x - r, y + r), (x + r, y - r)], fill=(255, 0, 0), width=lw + 1)
            draw.text((x + r + 1, y - r - 1), str(i + 1), fill=(255, 0, 0), font=font, **outline)
    if names is not None:
        line_h = draw.textbbox((0, 0), "Ag", font=small)[3] + 2
        for i, name in enumerate(names):
            draw.text((4, 4 + i * line_h), f"{i + 1} {name}", fill=(255, 255, 255), font=small, **outline)
    if measurements:
        img = _with_measurement_panel(img, measurements, gt_measurements, small)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # a preview: fast encoding beats a few % of file size
    return atomic_write(path, lambda f: f.write(buf.getvalue()), binary=True)


def _measurement_cells(entry: Mapping[str, Any] | None) -> tuple[str, str]:
    """``("4.2°", "1 Class I (normal)")``, or ``("n/a", reason)``."""
    if not entry or entry.get("value") is None:
        return "n/a", str((entry or {}).get("reason", ""))
    unit = {"deg": "°", "ratio": ""}.get(entry.get("unit"), f" {entry.get('unit')}")
    value = f"{entry['value']:.2f}" if entry.get("unit") == "ratio" else f"{entry['value']:.1f}{unit}"
    return value, f"{entry['class']} {entry['class_name']}"


def _with_measurement_panel(
    img: Any,
    measurements: Mapping[str, Mapping[str, Any]],
    gt_measurements: Mapping[str, Mapping[str, Any]] | None,
    font: Any,
) -> Any:
    """``img`` with a black panel on its right: a table of each measurement's value and class (predicted and,
    if given, ground truth), coloured by class (green = class 1, normal; orange = another class; grey = n/a)."""
    from PIL import Image, ImageDraw

    grey, white = (170, 170, 170), (255, 255, 255)
    columns = [("predicted", measurements)] + ([("ground truth", gt_measurements)] if gt_measurements else [])
    table: list[list[tuple[str, tuple[int, int, int]]]] = [[("", white)] + [(t, white) for t, _ in columns]]
    for m in MEASUREMENTS:
        row = [(m.key, white)]
        for _, meas in columns:
            entry = meas.get(m.key)
            cls = entry.get("class") if entry else None
            colour = grey if cls is None else (90, 230, 90) if cls == 1 else (255, 170, 40)
            row.append(("  ".join(_measurement_cells(entry)), colour))
        table.append(row)
    draw = ImageDraw.Draw(img)
    widths = [max(draw.textlength(row[c][0], font=font) for row in table) + 14 for c in range(len(table[0]))]
    line_h = draw.textbbox((0, 0), "Ag°", font=font)[3] + 4
    height = max(img.size[1], int(16 + (len(table) + 1.5) * line_h))  # a small image gets a taller canvas
    canvas = Image.new("RGB", (img.size[0] + int(sum(widths)) + 16, height), (0, 0, 0))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((img.size[0] + 8, 8), "ISBI 2015 cephalometric analysis", fill=white, font=font)
    for k, row in enumerate(table):
        x = img.size[0] + 8
        for (text, colour), width in zip(row, widths):
            draw.text((x, 8 + (k + 1.5) * line_h), text, fill=colour, font=font)
            x += width
    return canvas


def write_boxplot(
    path: str | os.PathLike, errors: Any, landmark_names: Sequence[str] | None = None, unit: str = "mm"
) -> Path:
    """Per-landmark box plot of (B, N) radial errors, with a dashed line at the overall MRE.

    NaN (missing ground truth) and inf (not found) are left out, as in the MRE. Uses matplotlib's Agg
    canvas directly, so it never touches the global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    e = _array(errors)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2:
        raise ValueError(f"errors must be (B, N), got shape {e.shape}")
    n = e.shape[1]
    names = [f"L{i + 1}" for i in range(n)] if landmark_names is None else [str(x) for x in landmark_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} landmark names for {n} landmarks")
    cols = [e[:, i][np.isfinite(e[:, i])] for i in range(n)]
    fig = Figure(figsize=(max(6.0, 0.45 * n + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    pos = [i + 1 for i in range(n) if cols[i].size]
    ax.boxplot([c for c in cols if c.size], positions=pos, widths=0.6, showfliers=True)
    finite = e[np.isfinite(e)]
    if finite.size:
        mre = float(finite.mean())
        ax.axhline(mre, color="tab:red", linestyle="--", linewidth=1, label=f"MRE {mre:.2f} {unit}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(1, n + 1))
    ax.set_xticklabels([f"{i + 1}" if len(names[i]) > 12 else names[i] for i in range(n)], rotation=60, ha="right")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_ylabel(f"radial error ({unit})")
    ax.set_title(f"Per-landmark radial error ({e.shape[0]} images)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()), binary=True)


def write_metrics_json(path: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Write the summary dictionary (NaN/inf become ``null``) as indented JSON."""
    return _write_json(path, summary)


def write_evaluation_report(
    out_dir: str | os.PathLike,
    accumulator: LandmarkErrorAccumulator,
    extra: Mapping[str, Any] | None = None,
    metrics_name: str = METRICS_JSON,
    measurements: MeasurementAccumulator | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``predictions.csv`` and the box plot for an accumulator; return the summary.

    ``extra`` fields (e.g. ``missing_predictions``, ``spacing_note``) are added to the summary. The box plot
    is in mm when every image has mm errors, else in pixels. The paths are under ``summary["files"]``.
    With a non-empty ``measurements`` accumulator (fed the same images), the summary gains the
    ``measurements`` block (per-measurement MAE and class accuracy, :meth:`MeasurementAccumulator.summary`)
    and ``measurements.csv`` is written.
    """
    out_dir = Path(out_dir)
    summary = accumulator.summary()
    if extra:
        summary.update(dict(extra))
    with warnings.catch_warnings():  # a unit mix was already reported by summary()
        warnings.simplefilter("ignore")
        emm = accumulator.errors_mm
        errors, unit = (emm, "mm") if emm is not None else (accumulator.errors_px, "px")
    csv_path = write_predictions_csv(out_dir / PREDICTIONS_CSV, accumulator.records())
    box_path = write_boxplot(out_dir / BOXPLOT_PNG, errors, accumulator.landmark_names, unit=unit)
    summary["files"] = {"predictions_csv": csv_path.name, "boxplot": box_path.name}
    if measurements is not None and len(measurements):
        summary["measurements"] = measurements.summary()
        summary["files"]["measurements_csv"] = write_measurements_csv(
            out_dir / MEASUREMENTS_CSV, measurements.records()
        ).name
    write_metrics_json(out_dir / metrics_name, summary)
    return summary
