"""ISBI 2015 cephalometric challenge: the original release and the CSV annotation tables.

Original release layout (what users download)::

    ROOT/RawImage/TrainingData/001.bmp ... 150.bmp
    ROOT/RawImage/Test1Data/151.bmp ... 300.bmp
    ROOT/RawImage/Test2Data/301.bmp ... 400.bmp
    ROOT/AnnotationsByMD/400_senior/001.txt ... 400.txt
    ROOT/AnnotationsByMD/400_junior/001.txt ... 400.txt

Each ``NNN.txt`` starts with 19 lines ``x,y`` (pixels, x = column), followed by the classification lines of
the challenge's second task, which are ignored. Images are 1935 x 2400 px at 0.1 mm/px. Official split:
training = 001-150, validation = Test1 (151-300), test = Test2 (301-400).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .errors import LandmarkFileError
from .readers import (
    read_points_csv,
    ISBI_LANDMARK_NAMES,
    check_points_inside,
    image_size_2d,
    landmark_item,
    merge_annotators,
    require_dir,
)

__all__ = [
    "ISBI_SPACING",
    "ISBI_SPLIT_RANGES",
    "read_isbi_txt",
    "read_isbi_csv",
    "build_isbi2015",
]

ISBI_SPACING = 0.1
"""mm per pixel of the ISBI 2015 images."""
ISBI_SPLIT_RANGES = {"training": (1, 150), "validation": (151, 300), "test": (301, 400)}
"""Inclusive image-number ranges of the official split (training, Test1, Test2)."""

_XY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*[,\s]\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")


def read_isbi_txt(path: str | os.PathLike, n_landmarks: int = 19) -> np.ndarray:
    """Read an original-release annotation ``NNN.txt``: (n_landmarks, 2) float pixels.

    The first ``n_landmarks`` lines must each be ``x,y``; whatever follows (the classification lines, single
    integers) is ignored. A file with fewer point lines (e.g. 18, then a classification line) is an error
    naming the file, the line and the count found, never a shifted label.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkFileError(path, f"cannot read the annotation file ({e})") from e
    points = []
    for i in range(n_landmarks):
        if i >= len(lines):
            raise LandmarkFileError(
                path, f"found {len(points)} 'x,y' point lines, expected {n_landmarks} (file ends)", line=i + 1
            )
        m = _XY.match(lines[i])
        if not m:
            raise LandmarkFileError(
                path,
                f"found {len(points)} 'x,y' point lines, expected {n_landmarks}: line {i + 1} is {lines[i].strip()!r}",
                line=i + 1,
            )
        points.append((float(m.group(1)), float(m.group(2))))
    return np.asarray(points, dtype=np.float64)


def read_isbi_csv(
    path: str | os.PathLike, spacing: float = ISBI_SPACING, n_landmarks: int = 19
) -> dict[str, np.ndarray]:
    """Read a Payer-style table (``setup/all_senior.csv``: rows ``id,x1,y1,...,x19,y19`` in mm) -> pixels.

    Returns ``{id: (n_landmarks, 2) pixels}`` with ``pixel = mm / spacing``, rounded to 1e-4 px to remove the
    float noise of the division (the table stores px * 0.1 with one decimal, so pixels are integers).
    """
    return {k: np.round(v, 4) for k, v in read_points_csv(path, n_landmarks, scale=spacing).items()}


def _split_of(number: int) -> str | None:
    for section, (lo, hi) in ISBI_SPLIT_RANGES.items():
        if lo <= number <= hi:
            return section
    return None


def build_isbi2015(root: str | os.PathLike, ground_truth: str = "mean") -> dict:
    """Datalist of the original ISBI 2015 release (see the module docstring for the layout).

    Args:
        root: folder holding ``RawImage/`` and ``AnnotationsByMD/``.
        ground_truth: ``"senior"``, ``"junior"`` or ``"mean"`` (default: the mean of the two doctors, the
            challenge's own ground truth).

    Images are searched anywhere below ``RawImage/`` by number (``001.bmp``); numbers without an image are
    skipped and reported in ``warnings``; an image without its annotation file is an error.
    """
    if ground_truth not in ("senior", "junior", "mean"):
        raise ValueError(f"ground_truth must be 'senior', 'junior' or 'mean', got {ground_truth!r}")
    root = require_dir(root, "ISBI 2015 root")
    raw = require_dir(root / "RawImage", "ISBI 2015 RawImage")
    ann_root = require_dir(root / "AnnotationsByMD", "ISBI 2015 AnnotationsByMD")
    doctors = ["senior", "junior"] if ground_truth == "mean" else [ground_truth]
    ann_dirs = {d: require_dir(ann_root / f"400_{d}", f"ISBI 2015 {d} annotation") for d in doctors}

    images: dict[str, Path] = {}
    for p in sorted(raw.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".bmp", ".png", ".jpg", ".tif", ".tiff") and p.stem.isdigit():
            if p.stem in images:
                raise LandmarkFileError(raw, f"two images for number {p.stem}: {images[p.stem]} and {p}")
            images[p.stem] = p
    if not images:
        raise LandmarkFileError(raw, "empty image folder: no NNN.bmp images below RawImage/")

    sections: dict[str, list] = {s: [] for s in ISBI_SPLIT_RANGES}
    warnings: list[str] = []
    for number in range(1, 401):
        key = f"{number:03d}"
        if key not in images:
            continue
        img = images.pop(key)
        size = image_size_2d(img)
        pts = []
        for d in doctors:
            txt = ann_dirs[d] / f"{key}.txt"
            if not txt.is_file():
                raise LandmarkFileError(txt, f"annotation file missing for image {img}")
            p = read_isbi_txt(txt)
            check_points_inside(p, size, txt, ISBI_LANDMARK_NAMES, image=img)
            pts.append(p)
        points = merge_annotators(pts)
        sections[_split_of(number)].append(landmark_item(img, points, (ISBI_SPACING, ISBI_SPACING)))
    missing = 400 - sum(len(v) for v in sections.values())
    if missing:
        warnings.append(f"{raw}: {missing} of the 400 ISBI images not found; their annotations were skipped")
    if images:
        warnings.append(f"{raw}: {len(images)} image(s) outside 001-400 ignored: {sorted(images)[:5]}")
    return {
        "landmark_names": list(ISBI_LANDMARK_NAMES),
        "coordinate_space": "pixel",
        "name": "isbi2015",
        "ground_truth": ground_truth,
        **sections,
        "warnings": warnings,
    }
