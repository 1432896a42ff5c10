"""Datalist JSON: load (with validation), write (atomically), split, and turn a section into MONAI items.

Format (see DESIGN.md)::

    {"landmark_names": [...], "coordinate_space": "pixel" | "world",
     "training": [...], "validation": [...], "test": [...], ...extra keys...}

each item ``{"image": path relative to the datalist's folder, "landmarks": [[x, y], ...] | [[x, y, z], ...]
(null = missing), "spacing": [sx, sy(, sz)] (optional, mm)}``. 2D pixel coordinates are (x = column,
y = row) of the original image; ``"world"`` datalists hold ITK/LPS millimetres.

Where a dataset has several annotators, an item may also carry their own points, ``"annotators":
{"<name>": [[x, y] or null, ...], ...}`` (same shape rules as ``landmarks``; ``landmarks`` is then usually their
mean, the ground truth). They serve the human reference rows of ``scripts/benchmark.py``; the training
pipelines do not see them (:func:`datalist_section` leaves them out unless asked).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from custom_monai.atomic import atomic_write_text

from .errors import DatalistError

__all__ = [
    "SECTIONS",
    "COORDINATE_SPACES",
    "load_datalist",
    "validate_datalist",
    "write_datalist",
    "split_items",
    "datalist_section",
    "count_missing",
    "summarize_datalist",
    "image_id",
    "atomic_write_text",
]

SECTIONS = ("training", "validation", "test")
COORDINATE_SPACES = ("pixel", "world")
_MULTI_SUFFIXES = (".nii.gz", ".mrk.json", ".tar.gz")
_DECIMALS = 6  # written coordinates are rounded to 1e-6 px / mm: removes float noise such as 115.78125000000001


def image_id(path: str | os.PathLike) -> str:
    """The file name without its extension (``001.png`` -> ``001``, ``ct.nii.gz`` -> ``ct``)."""
    name = Path(path).name
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_number(v: Any) -> bool:
    return isinstance(v, (Real, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_names(names: Any, path: Any) -> list[str]:
    if not isinstance(names, (list, tuple)) or not names:
        raise DatalistError(path, f"'landmark_names' must be a non-empty list of strings, got {names!r}")
    out = []
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n:
            raise DatalistError(path, f"'landmark_names'[{i}] must be a non-empty string, got {n!r}")
        out.append(n)
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise DatalistError(path, f"'landmark_names' must be unique, duplicated: {dup}")
    return out


def _parse_landmarks(
    landmarks: Any, names: Sequence[str], path: Any, section: str, index: int, image: str
) -> tuple[list[list[float]], int]:
    """-> (rows as float lists with NaN for missing, number of coordinates D)."""
    if isinstance(landmarks, np.ndarray):
        landmarks = [None if not np.all(np.isfinite(r)) else r.tolist() for r in np.asarray(landmarks, np.float64)]
    if not isinstance(landmarks, (list, tuple)):
        raise DatalistError(
            path, f"'landmarks' must be a list of points, got {type(landmarks).__name__}", section, index, image
        )
    if len(landmarks) != len(names):
        raise DatalistError(
            path,
            f"has {len(landmarks)} landmarks, expected {len(names)} "
            "(one per entry of 'landmark_names'; use null for a missing one)",
            section,
            index,
            image,
        )
    rows: list[list[float] | None] = []
    dims = set()
    for name, row in zip(names, landmarks):
        if row is None:
            rows.append(None)
            continue
        if isinstance(row, np.ndarray):
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or len(row) not in (2, 3):
            raise DatalistError(path, f"expected null or [x, y] / [x, y, z], got {row!r}", section, index, image, name)
        if all(v is None for v in row) or all(_is_number(v) and math.isnan(v) for v in row):
            rows.append(None)  # NaN written by a non-strict JSON writer is 'missing' too
            continue
        if not all(_is_number(v) and math.isfinite(v) for v in row):
            raise DatalistError(
                path,
                f"expected null or {len(row)} finite numbers, got {row!r} (a partly missing point is not allowed)",
                section,
                index,
                image,
                name,
            )
        dims.add(len(row))
        rows.append([float(v) for v in row])
    if len(dims) > 1:
        raise DatalistError(path, f"mixes 2D and 3D points ({sorted(dims)} coordinates)", section, index, image)
    d = dims.pop() if dims else 0
    return [[math.nan] * (d or 1) if r is None else r for r in rows], d


def validate_datalist(
    data: Any, path: Any = None, base_dir: str | os.PathLike | None = None, check_images: bool = False
) -> dict:
    """Validate a datalist dictionary and return a normalised copy.

    Normalised means: every section present (possibly empty), ``image`` absolute (resolved against
    ``base_dir`` when relative), landmarks as float lists with NaN for missing points, ``spacing`` as a float
    list (or absent). Raises :class:`DatalistError` naming ``path``, the section/item index, the image and the
    landmark.
    """
    if not isinstance(data, Mapping):
        raise DatalistError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    names = _check_names(data.get("landmark_names"), path)
    space = data.get("coordinate_space", "pixel")
    if space not in COORDINATE_SPACES:
        raise DatalistError(path, f"'coordinate_space' must be one of {list(COORDINATE_SPACES)}, got {space!r}")
    if not any(s in data for s in SECTIONS):
        raise DatalistError(path, f"no item section: expected at least one of {list(SECTIONS)}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out = {k: v for k, v in data.items() if k not in SECTIONS}
    out["landmark_names"] = list(names)
    out["coordinate_space"] = space
    dataset_dim = 0
    for section in SECTIONS:
        items = data.get(section, [])
        if items is None:
            items = []
        if not isinstance(items, (list, tuple)):
            raise DatalistError(path, f"must be a list of items, got {type(items).__name__}", section)
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise DatalistError(
                    path, f"an item must be an object with 'image' and 'landmarks', got {item!r}", section, i
                )
            image = item.get("image")
            if not isinstance(image, str) or not image:
                raise DatalistError(path, f"'image' must be a non-empty path string, got {image!r}", section, i)
            if "landmarks" not in item:
                raise DatalistError(path, "missing 'landmarks'", section, i, image)
            rows, d = _parse_landmarks(item["landmarks"], names, path, section, i, image)
            if d:
                if dataset_dim and d != dataset_dim:
                    raise DatalistError(
                        path, f"has {d}D points but earlier items have {dataset_dim}D points", section, i, image
                    )
                dataset_dim = d
                if space == "world" and d != 3:
                    raise DatalistError(
                        path, "a 'world' datalist needs [x, y, z] points (ITK/LPS mm)", section, i, image
                    )
            new = dict(item)
            img_path = Path(os.path.expanduser(image))
            new["image"] = os.path.abspath(img_path if img_path.is_absolute() else base / img_path)
            if check_images and not os.path.exists(new["image"]):
                raise DatalistError(path, f"image file not found: {new['image']}", section, i, image)
            new["landmarks"] = rows
            if "annotators" in item:
                new["annotators"], d = _parse_annotators(item["annotators"], names, path, section, i, image, d)
                if d and dataset_dim and d != dataset_dim:
                    raise DatalistError(
                        path, f"'annotators' have {d}D points but earlier items have {dataset_dim}D points",
                        section, i, image,
                    )
                dataset_dim = dataset_dim or d
            spacing = item.get("spacing")
            if spacing is None:
                new.pop("spacing", None)
            else:
                if (
                    not isinstance(spacing, (list, tuple))
                    or len(spacing) not in (2, 3)
                    or not all(_is_number(s) and math.isfinite(s) and s > 0 for s in spacing)
                ):
                    raise DatalistError(
                        path, f"'spacing' must be 2 or 3 positive numbers (mm), got {spacing!r}", section, i, image
                    )
                if d and len(spacing) != d:
                    raise DatalistError(
                        path, f"'spacing' has {len(spacing)} values but the points have {d}", section, i, image
                    )
                new["spacing"] = [float(s) for s in spacing]
            parsed.append(new)
        out[section] = parsed
    # fully-missing items could not tell their dimension: give them the dataset's
    if dataset_dim:
        for section in SECTIONS:
            for item in out[section]:
                item["landmarks"] = _fill_dim(item["landmarks"], dataset_dim)
                if "annotators" in item:
                    item["annotators"] = {k: _fill_dim(v, dataset_dim) for k, v in item["annotators"].items()}
    return out


def _fill_dim(rows: list[list[float]], d: int) -> list[list[float]]:
    return [r if len(r) == d else [math.nan] * d for r in rows]


def _parse_annotators(
    annotators: Any, names: Sequence[str], path: Any, section: str, index: int, image: str, dim: int
) -> tuple[dict[str, list[list[float]]], int]:
    """``({"<annotator>": rows}, D)``: each annotator's points validated like ``landmarks`` (same count and D)."""
    if not isinstance(annotators, Mapping) or not annotators:
        raise DatalistError(
            path,
            f"'annotators' must be a non-empty object {{name: landmarks}}, got {type(annotators).__name__}",
            section,
            index,
            image,
        )
    out = {}
    for who, pts in annotators.items():
        if not isinstance(who, str) or not who:
            raise DatalistError(path, f"'annotators' keys must be non-empty names, got {who!r}", section, index, image)
        try:
            rows, d = _parse_landmarks(pts, names, path, section, index, image)
        except DatalistError as e:
            raise DatalistError(
                path, f"'annotators'[{who!r}]: {e.message}", section, index, image, e.landmark
            ) from e
        if d and dim and d != dim:
            raise DatalistError(
                path, f"'annotators'[{who!r}] has {d}D points, 'landmarks' has {dim}D", section, index, image
            )
        dim = dim or d
        out[who] = rows
    return out, dim


def load_datalist(path: str | os.PathLike, check_images: bool = False) -> dict:
    """Read and validate a datalist JSON file.

    Image paths are resolved relative to the datalist's folder into absolute paths; landmarks become float
    lists with NaN for ``null``; all three sections are present in the result. ``check_images=True`` also
    requires every image file to exist.

    Raises:
        DatalistError: naming the file, the section/item index and image, and the landmark.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatalistError(path, f"cannot read the datalist ({e.strerror or e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatalistError(
            path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated file?)"
        ) from e
    return validate_datalist(data, path=path, base_dir=path.resolve().parent, check_images=check_images)


def _landmarks_for_json(landmarks: Any) -> list:
    arr = landmarks
    if not isinstance(arr, np.ndarray):
        arr = [None if r is None else [math.nan if v is None else v for v in r] for r in landmarks]
        width = max((len(r) for r in arr if r is not None), default=2)
        arr = np.array([[math.nan] * width if r is None else r for r in arr], dtype=np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    return [None if not np.all(np.isfinite(r)) else [round(float(v), _DECIMALS) for v in r] for r in arr]


def _item_for_json(item: Mapping, folder: Path) -> dict:
    out = {}
    image = os.path.abspath(os.fspath(item["image"]))
    try:
        out["image"] = Path(os.path.relpath(image, folder)).as_posix()
    except ValueError:  # another drive on Windows
        out["image"] = Path(image).as_posix()
    out["landmarks"] = _landmarks_for_json(item["landmarks"])
    if item.get("annotators") is not None:
        ann = item["annotators"]
        out["annotators"] = (
            {str(k): _landmarks_for_json(v) for k, v in ann.items()} if isinstance(ann, Mapping) else ann
        )
    spacing = item.get("spacing")
    if spacing is not None:
        out["spacing"] = [float(s) for s in np.asarray(spacing, dtype=np.float64).ravel()]
    for k, v in item.items():
        if k not in out and k not in ("image", "landmarks", "spacing", "annotators"):
            out[k] = v
    return out


def write_datalist(
    path: str | os.PathLike,
    landmark_names: Sequence[str],
    training: Iterable[Mapping],
    validation: Iterable[Mapping] = (),
    test: Iterable[Mapping] = (),
    coordinate_space: str = "pixel",
    **extra: Any,
) -> Path:
    """Validate and write a datalist JSON atomically (temporary file + ``os.replace``).

    Items need ``image`` (absolute, or relative to the current directory) and ``landmarks`` ((N, D) array or
    rows, NaN/None = missing); ``spacing`` and any other keys are kept. Image paths are stored relative to the
    datalist's folder, NaN as ``null``, coordinates rounded to 1e-6. ``extra`` keys (e.g. ``name``,
    ``source``, ``warnings``) are written at the top level, before the sections. One item per line keeps the
    file readable and diff-friendly. A datalist that :func:`load_datalist` would refuse is never written.
    """
    path = Path(path)
    folder = path.resolve().parent
    sections = {"training": list(training), "validation": list(validation), "test": list(test)}
    clash = [k for k in extra if k in SECTIONS or k in ("landmark_names", "coordinate_space")]
    if clash:
        raise ValueError(f"write_datalist: extra keys {clash} clash with the datalist's own keys")
    doc: dict[str, Any] = {"landmark_names": list(landmark_names), "coordinate_space": coordinate_space}
    doc.update(extra)
    for s in SECTIONS:
        doc[s] = [_item_for_json(it, folder) for it in sections[s]]
    validate_datalist(doc, path=path, base_dir=folder)  # never write a file that load_datalist would refuse

    lines = ["{"]
    head = [k for k in doc if k not in SECTIONS]
    for k in head:
        lines.append(f"  {json.dumps(k)}: {json.dumps(doc[k], allow_nan=False)},")
    for si, s in enumerate(SECTIONS):
        items = doc[s]
        end = "," if si < len(SECTIONS) - 1 else ""
        if not items:
            lines.append(f"  {json.dumps(s)}: []{end}")
            continue
        lines.append(f"  {json.dumps(s)}: [")
        for ii, it in enumerate(items):
            lines.append("    " + json.dumps(it, allow_nan=False) + ("," if ii < len(items) - 1 else ""))
        lines.append(f"  ]{end}")
    lines.append("}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def split_items(
    items: Sequence[Any], val_fraction: float = 0.2, seed: int = 0, test_fraction: float | None = None
) -> tuple[list, list] | tuple[list, list, list]:
    """Deterministic random split into ``(train, val)``, or ``(train, val, test)`` when ``test_fraction`` is given.

    Every part keeps the input order; the parts are disjoint and together hold every item. ``round(fraction * n)``
    items go to validation and to test (at least one each when its fraction is > 0 and the items allow it, and
    never all of them: training keeps at least one). One seeded permutation (numpy ``default_rng(seed)``) is cut
    into validation first, then test: with the same ``items``, ``val_fraction`` and ``seed``, the validation
    part of a three-way split is the validation part of the two-way split, and the test part comes out of the
    former training part. So adding a test section to an existing 80/20 split never moves into the test
    section an image on which models were already selected (or hyper-parameters tuned).

    Args:
        items: anything; the split is by position.
        val_fraction: share of validation, in [0, 1).
        seed: the split's seed.
        test_fraction: share of test, in [0, 1) with ``val_fraction + test_fraction < 1``; ``None`` (default)
            returns the two-way split.
    """
    vf = float(val_fraction)
    tf = 0.0 if test_fraction is None else float(test_fraction)
    if not 0.0 <= vf < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 <= tf < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if vf + tf >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 (training needs items), got {vf} + {tf}")
    items = list(items)
    n = len(items)
    n_val = int(round(vf * n))
    n_test = int(round(tf * n))
    if n >= 2:
        if vf > 0:
            n_val = min(max(n_val, 1), n - 1)
        if tf > 0:
            n_test = min(max(n_test, 1), n - 1 - n_val)
    else:
        n_val = n_test = 0
    perm = np.random.default_rng(int(seed)).permutation(n)
    val_idx = set(int(i) for i in perm[:n_val])
    test_idx = set(int(i) for i in perm[n_val : n_val + n_test])
    train = [it for i, it in enumerate(items) if i not in val_idx and i not in test_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    if test_fraction is None:
        return train, val
    test = [it for i, it in enumerate(items) if i in test_idx]
    return train, val, test


def datalist_section(
    datalist: Mapping | str | os.PathLike, section: str, annotators: bool = False
) -> list[dict]:
    """Items of one section, ready for a MONAI ``Dataset``.

    Each item: ``image`` (absolute path string), ``landmarks`` float32 (N, D) with NaN rows for missing points,
    ``spacing`` float64 (D,) array or ``None``, ``id`` (the image file name without extension); any other item
    keys are passed through, except ``annotators`` (the single annotators' points, for human reference
    figures): left out unless ``annotators=True``, then as ``{name: float32 (N, D)}`` (a batch cannot collate
    items that have them with items that do not, and no transform moves them with the image).
    ``datalist`` is a path (loaded with :func:`load_datalist`) or an already-loaded dictionary.
    """
    if not isinstance(datalist, Mapping):
        datalist = load_datalist(datalist)
    if section not in SECTIONS:
        raise DatalistError(None, f"unknown section {section!r}, expected one of {list(SECTIONS)}")
    n = len(datalist["landmark_names"])
    out = []
    for i, item in enumerate(datalist.get(section) or []):
        raw = item["landmarks"]
        if isinstance(raw, np.ndarray):
            arr = raw.astype(np.float32)
        else:
            d = _dim(item)
            arr = np.array(
                [[np.nan] * d if r is None else [np.nan if v is None else v for v in r] for r in raw], dtype=np.float32
            ).reshape(len(raw), -1)
        if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] not in (2, 3):
            raise DatalistError(
                None, f"landmarks of shape {arr.shape}, expected ({n}, 2 or 3)", section, i, item.get("image")
            )
        arr[~np.all(np.isfinite(arr), axis=1)] = np.nan
        spacing = item.get("spacing")
        new = dict(item)
        new["image"] = os.fspath(item["image"])
        new["landmarks"] = arr
        new["spacing"] = None if spacing is None else np.asarray(spacing, dtype=np.float64)
        new["id"] = image_id(item["image"])
        ann = new.pop("annotators", None)
        if annotators and ann is not None:
            new["annotators"] = {k: _points_array(v, arr.shape[1]) for k, v in ann.items()}
        out.append(new)
    return out


def _points_array(rows: Any, d: int) -> np.ndarray:
    """Rows (None / NaN = missing) -> float32 (N, d) with NaN rows for missing points."""
    if isinstance(rows, np.ndarray):
        arr = rows.astype(np.float32).reshape(len(rows), -1)
    else:
        arr = np.array(
            [[np.nan] * d if r is None else [np.nan if v is None else v for v in r] for r in rows], dtype=np.float32
        ).reshape(len(rows), -1)
    if arr.shape[1] != d:
        arr = np.full((len(rows), d), np.nan, dtype=np.float32) if np.all(np.isnan(arr)) else arr
    arr[~np.all(np.isfinite(arr), axis=1)] = np.nan
    return arr


def _dim(item: Mapping) -> int:
    for r in item["landmarks"]:
        if r is not None:
            return len(r)
    sp = item.get("spacing")
    return len(sp) if sp is not None else 2


def count_missing(datalist: Mapping) -> int:
    """Number of missing (null / NaN) landmark entries over all sections."""
    total = 0
    for s in SECTIONS:
        for item in datalist.get(s) or []:
            for r in item["landmarks"]:
                if r is None or not np.all(np.isfinite(np.asarray(r, dtype=np.float64))):
                    total += 1
    return total


def summarize_datalist(datalist: Mapping, warnings: Sequence[str] | None = None) -> str:
    """One line: counts per section, landmarks, missing entries and warnings."""
    counts = " ".join(f"{s}={len(datalist.get(s) or [])}" for s in SECTIONS)
    w = datalist.get("warnings", []) if warnings is None else warnings
    return (
        f"{counts} landmarks={len(datalist['landmark_names'])} space={datalist.get('coordinate_space', 'pixel')} "
        f"missing={count_missing(datalist)} warnings={len(w)}"
    )
