"""Chest X-rays (Shenzhen, YOLO-universal labels): ``images/*.png`` + ``labels/*.txt``.

A label file holds the point count on its first line, then one ``x y`` line per landmark, normalised to
[0, 1] by the image width and height. Pixels are ``x * W``, ``y * H`` (the size is read from the image
header only). The images here are downsampled, so no physical spacing is known: spacing is left out and
metrics are in pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datalist import image_id, split_items
from .errors import LandmarkFileError
from .readers import (
    check_points_inside,
    generic_names,
    image_size_2d,
    index_by_id,
    landmark_item,
    list_files,
    require_dir,
)

__all__ = ["read_normalised_points", "build_chest"]


def read_normalised_points(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a count-then-``x y`` label file; (N, 2) pixels if ``size=(W, H)`` is given, else normalised.

    Errors (naming the file and line): a missing or non-integer count, a count that differs from the number of
    point lines, a line that is not two numbers, a value outside [0, 1].
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkFileError(path, f"cannot read the label file ({e})") from e
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LandmarkFileError(path, "empty label file: expected the point count on line 1")
    try:
        count = int(lines[0])
    except ValueError as e:
        raise LandmarkFileError(path, f"expected the point count on line 1, got {lines[0]!r}", line=1) from e
    body = lines[1:]
    if len(body) != count:
        raise LandmarkFileError(path, f"line 1 announces {count} points but the file has {len(body)} point lines")
    pts = np.empty((count, 2), dtype=np.float64)
    for i, text in enumerate(body):
        parts = text.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            pts[i] = [float(parts[0]), float(parts[1])]
        except ValueError as e:
            raise LandmarkFileError(path, f"expected 'x y' (two numbers), got {text!r}", line=i + 2) from e
        if not np.all((pts[i] >= 0.0) & (pts[i] <= 1.0)):
            raise LandmarkFileError(path, f"normalised coordinates must be in [0, 1], got {text!r}", line=i + 2)
    if size is not None:
        pts = pts * np.asarray(size, dtype=np.float64)
    return pts


def build_chest(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Datalist of ``root/images/*.png`` with ``root/labels/<same name>.txt`` (``training``/``validation``).

    All label files must have the same number of points (the first one sets it). Images without a label file
    and label files without an image are skipped with a warning.
    """
    root = require_dir(root, "chest X-ray root")
    images = list_files(root / "images", (".png", ".jpg", ".jpeg", ".bmp"), "chest X-ray image")
    labels = index_by_id(list_files(root / "labels", (".txt",), "chest X-ray label"), root / "labels")
    warnings: list[str] = []
    items = []
    n = None
    names: list[str] = []
    for img in images:
        key = image_id(img)
        if key not in labels:
            warnings.append(f"{img}: no label file {root / 'labels' / (key + '.txt')}; skipped")
            continue
        size = image_size_2d(img)
        pts = read_normalised_points(labels.pop(key), size)
        if n is None:
            n = len(pts)
            names = generic_names(n)
        elif len(pts) != n:
            raise LandmarkFileError(
                root / "labels" / f"{key}.txt", f"has {len(pts)} points, expected {n} like the other label files"
            )
        check_points_inside(pts, size, root / "labels" / f"{key}.txt", names, image=img)
        items.append(landmark_item(img, pts))
    for key, path in sorted(labels.items()):
        warnings.append(f"{path}: no image {key}.*; skipped")
    if not items:
        raise LandmarkFileError(root / "images", "no image has a label file")
    train, val = split_items(items, val_fraction, seed)
    return {
        "landmark_names": names,
        "coordinate_space": "pixel",
        "name": "chest",
        "split": {"val_fraction": val_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "test": [],
        "warnings": warnings,
    }
