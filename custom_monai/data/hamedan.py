"""Hamedan cephalograms: ``images/NNN.png`` + Labelme ``annotations/<annotator>/NNN.json``, 19 landmarks.

Labels ``l1`` ... ``l19`` follow the ISBI 2015 order. The ``imagePath`` inside the JSON files is stale, so a
JSON file is paired with the image of the same number. Pixel spacing is not published: 0.127 mm/px is an
*estimate* from the ruler on image 007 (~7.89 px/mm); mm figures on this set carry that uncertainty.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from .datalist import image_id, split_items
from .errors import LandmarkFileError
from .readers import (
    ISBI_LANDMARK_NAMES,
    check_points_inside,
    image_size_2d,
    landmark_item,
    list_files,
    merge_annotators,
    require_dir,
)

__all__ = ["HAMEDAN_SPACING", "HAMEDAN_ANNOTATORS", "read_labelme_points", "read_hamedan_annotations", "build_hamedan"]

HAMEDAN_SPACING = 0.127
"""Estimated mm per pixel (not published; measured on the ruler of image 007)."""
HAMEDAN_ANNOTATORS = ("farhadifar", "mollabashi")


def read_labelme_points(
    path: str | os.PathLike, n_landmarks: int = 19, label_prefix: str = "l"
) -> tuple[np.ndarray, list[str]]:
    """Read the point shapes ``<prefix>1`` ... ``<prefix>N`` of a Labelme JSON file.

    Returns ``(points, warnings)``: ``points`` (N, 2) float pixels (x = column), NaN where a label is missing
    or ambiguous. A label present twice (or more) is ambiguous: that landmark becomes NaN and one warning names
    the file and the label; a missing label gives NaN and one warning; a shape that is not a single point or
    carries an unknown label gives one warning and is ignored. Unreadable or truncated JSON, or a file without
    a ``shapes`` list, raises :class:`LandmarkFileError` naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkFileError(path, f"cannot read the Labelme file ({e})") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LandmarkFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated file?)", line=e.lineno
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise LandmarkFileError(path, "not a Labelme file: expected a JSON object with a 'shapes' list")
    labels = [f"{label_prefix}{i + 1}" for i in range(n_landmarks)]
    wanted = set(labels)
    warnings: list[str] = []
    found: dict[str, list] = {}
    counts: Counter = Counter()
    for k, shape in enumerate(doc["shapes"]):
        label = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
        if label not in wanted:
            warnings.append(
                f"{path}: shape {k} has unexpected label {label!r} (expected {labels[0]}..{labels[-1]}); ignored"
            )
            continue
        counts[label] += 1
        pts = shape.get("points")
        if (
            shape.get("shape_type", "point") != "point"
            or not isinstance(pts, list)
            or len(pts) != 1
            or not isinstance(pts[0], (list, tuple))
            or len(pts[0]) != 2
        ):
            warnings.append(
                f"{path}: label {label!r} is not a single [x, y] point "
                f"(shape_type {shape.get('shape_type')!r}); set to missing"
            )
            found.setdefault(label, []).append(None)
            continue
        try:
            found.setdefault(label, []).append((float(pts[0][0]), float(pts[0][1])))
        except (TypeError, ValueError):
            warnings.append(f"{path}: label {label!r} has non-numeric coordinates {pts[0]!r}; set to missing")
            found.setdefault(label, []).append(None)
    points = np.full((n_landmarks, 2), np.nan)
    for i, label in enumerate(labels):
        if counts[label] == 0:
            warnings.append(f"{path}: label {label!r} missing; set to missing")
        elif counts[label] > 1:
            warnings.append(f"{path}: label {label!r} appears {counts[label]} times; ambiguous, set to missing")
        elif found[label][0] is not None:
            points[i] = found[label][0]
    return points, warnings


def read_hamedan_annotations(root: str | os.PathLike, annotator: str) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{id: (points (19, 2), warnings)}`` for every ``annotations/<annotator>/NNN.json`` below ``root``."""
    folder = require_dir(Path(root) / "annotations" / annotator, f"Hamedan {annotator!r} annotation")
    return {
        image_id(f): read_labelme_points(f) for f in list_files(folder, (".json",), f"Hamedan {annotator!r} annotation")
    }


def build_hamedan(
    root: str | os.PathLike,
    annotator: str = "mean",
    val_fraction: float = 0.2,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict:
    """Datalist of the Hamedan set: ``training`` / ``validation`` / ``test`` by one seeded split.

    Args:
        root: folder with ``images/`` and ``annotations/<annotator>/``.
        annotator: ``"farhadifar"``, ``"mollabashi"`` or ``"mean"`` (default). The mean ground truth is,
            landmark by landmark, the mean of the two annotators where both placed it, the single annotator's
            point where only one did (e.g. mollabashi 086 has no ``l16``), and missing where neither did.
            With ``"mean"`` every item also carries ``"annotators": {"farhadifar": ..., "mollabashi": ...}``
            (NaN where that annotator's label is missing or ambiguous), for the human reference rows.
        val_fraction, seed, test_fraction: the split (:func:`~custom_monai.data.datalist.split_items`); the
            default 60/20/20 of the 100 images gives 20 test images that no model selection sees, and the same
            20 validation images as the former 80/20 split with the same seed (the test images come out of its
            training part). ``test_fraction=0`` gives the old two-way split.

    Every image is checked for readability and every point for lying inside its image. Defects (duplicated or
    missing labels, images without annotation) are listed in ``warnings``.
    """
    names = HAMEDAN_ANNOTATORS if annotator == "mean" else (annotator,)
    if annotator != "mean" and annotator not in HAMEDAN_ANNOTATORS:
        raise ValueError(f"annotator must be one of {['mean', *HAMEDAN_ANNOTATORS]}, got {annotator!r}")
    root = require_dir(root, "Hamedan root")
    images = list_files(root / "images", (".png",), "Hamedan image")
    per = {a: read_hamedan_annotations(root, a) for a in names}
    warnings: list[str] = []
    items = []
    for img in images:
        key = image_id(img)
        size = image_size_2d(img)
        pts = []
        for a in names:
            ann = root / "annotations" / a / f"{key}.json"
            if key not in per[a]:
                warnings.append(f"{img}: no annotation {ann}")
                continue
            p, w = per[a][key]
            warnings.extend(w)
            check_points_inside(p, size, ann, ISBI_LANDMARK_NAMES, image=img)
            pts.append(p)
        if not pts:
            warnings.append(f"{img}: skipped, no annotation from {list(names)}")
            continue
        points = merge_annotators(pts)
        item = landmark_item(img, points, (HAMEDAN_SPACING, HAMEDAN_SPACING))
        if len(names) > 1 and len(pts) == len(names):
            item["annotators"] = dict(zip(names, pts))
        items.append(item)
    image_keys = {image_id(i) for i in images}
    for a in names:
        for key in sorted(set(per[a]) - image_keys):
            warnings.append(f"{root / 'annotations' / a / (key + '.json')}: no image {key}.png; skipped")
    if not items:
        raise LandmarkFileError(root / "images", "no image has an annotation")
    train, val, test = split_items(items, val_fraction, seed, test_fraction)
    return {
        "landmark_names": list(ISBI_LANDMARK_NAMES),
        "coordinate_space": "pixel",
        "name": "hamedan",
        "annotator": annotator,
        "spacing_note": f"{HAMEDAN_SPACING} mm/px is an estimate (ruler on image 007), not a published value",
        "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "test": test,
        "warnings": warnings,
    }
