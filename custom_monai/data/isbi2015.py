"""ISBI 2015 cephalometric challenge: both layouts (original release, and JPEG images + CSV tables).

Original release layout (what most users download)::

    ROOT/RawImage/TrainingData/001.bmp ... 150.bmp
    ROOT/RawImage/Test1Data/151.bmp ... 300.bmp
    ROOT/RawImage/Test2Data/301.bmp ... 400.bmp
    ROOT/AnnotationsByMD/400_senior/001.txt ... 400.txt
    ROOT/AnnotationsByMD/400_junior/001.txt ... 400.txt

Each ``NNN.txt`` starts with 19 lines ``x,y`` (pixels, x = column), followed by the classification lines of
the challenge's second task, which are ignored.

Table layout (the 'cepha400' JPEG images + Payer's annotation tables, as in ``../shared/data``)::

    ROOT/images/001.jpg ... 300.jpg                       (any NNN.<image extension> below ROOT)
    ANNOTATIONS/setup/all_senior.csv, all_junior.csv      (rows ``id,x1,y1,...,x19,y19`` in mm)

with pixel = mm / 0.1. ``ANNOTATIONS`` defaults to ``ROOT`` itself, then ``ROOT/../isbi2015_annotations``.

Images are 1935 x 2400 px at 0.1 mm/px. Ranges: training = 001-150, Test1 = 151-300, Test2 = 301-400.

Ground truth. The papers our bundles follow report ISBI 2015 against the **mean of the two doctors**
(``--ground_truth mean``, the default): CEPHMark-Net (SPECS A) uses ``ceil(mean(junior, senior))`` (integer
pixels; we keep the plain mean), Noothout et al. (B) the average ("origineelAverage"), D-CeLR (D)
``mean(junior, senior)``, Zhong et al. (E) "the average of two sets of annotations" for Test1/Test2 (their
4-fold cross-validation, Lindner's protocol, uses the senior doctor alone). Multiresolution-HTC (C) reports on
ISBI 2023 (Aariz), not on this set. Note (Payer, README of the annotation tables): the challenge's own
ground-truth files (``all_challenge.csv``) equal the senior doctor's, except landmark 16 on Test2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .datalist import split_items
from .errors import LandmarkFileError
from .readers import (
    IMAGE_2D_EXTENSIONS,
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
    "ISBI_RANGES",
    "ISBI_DOCTORS",
    "ISBI_PROTOCOLS",
    "read_isbi_txt",
    "read_isbi_csv",
    "build_isbi2015",
]

ISBI_SPACING = 0.1
"""mm per pixel of the ISBI 2015 images."""
ISBI_RANGES = {"training": (1, 150), "test1": (151, 300), "test2": (301, 400)}
"""Inclusive image-number ranges of the challenge's training, Test1 and Test2 sets."""
ISBI_SPLIT_RANGES = {"training": (1, 150), "validation": (151, 300), "test": (301, 400)}
"""The ``"official"`` protocol's sections (validation = Test1, test = Test2); kept for existing users."""
ISBI_DOCTORS = ("senior", "junior")
ISBI_PROTOCOLS = ("challenge", "official")

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


def _range_of(number: int) -> str | None:
    for name, (lo, hi) in ISBI_RANGES.items():
        if lo <= number <= hi:
            return name
    return None


def _find_annotations(root: Path, annotations: str | os.PathLike | None) -> tuple[str, dict[str, Path]]:
    """``("txt", {doctor: folder of NNN.txt})`` or ``("csv", {doctor: all_<doctor>.csv})`` for the doctors found."""
    candidates = [Path(annotations)] if annotations is not None else [root, root.parent / "isbi2015_annotations"]
    if annotations is not None:
        require_dir(annotations, "ISBI 2015 annotation")
    for c in candidates:
        for folder in (c / "AnnotationsByMD", c):
            found = {d: folder / f"400_{d}" for d in ISBI_DOCTORS if (folder / f"400_{d}").is_dir()}
            if found:
                return "txt", found
        for folder in (c / "setup", c):
            found = {d: folder / f"all_{d}.csv" for d in ISBI_DOCTORS if (folder / f"all_{d}.csv").is_file()}
            if found:
                return "csv", found
    tried = ", ".join(str(c) for c in candidates)
    raise LandmarkFileError(
        candidates[0],
        "no ISBI 2015 annotations found: expected AnnotationsByMD/400_senior|400_junior/ (original release) or "
        f"setup/all_senior.csv|all_junior.csv (tables in mm); looked in {tried} (pass --annotations)",
    )


def build_isbi2015(
    root: str | os.PathLike,
    ground_truth: str = "mean",
    annotations: str | os.PathLike | None = None,
    protocol: str = "challenge",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Datalist of ISBI 2015 in either layout (see the module docstring).

    Args:
        root: folder holding the images (``RawImage/`` of the original release, or ``images/NNN.jpg``); images
            are found anywhere below it by number.
        ground_truth: ``"mean"`` (default, the papers' convention: see the module docstring), ``"senior"`` or
            ``"junior"``. Items also carry ``"annotators": {"senior": ..., "junior": ...}`` when both doctors'
            annotations are there (for the human reference rows of the benchmark).
        annotations: folder of ``AnnotationsByMD/`` (or of ``400_senior/``, ``400_junior/``), or of
            ``setup/all_senior.csv`` (or of the CSVs); default: ``root``, then ``root/../isbi2015_annotations``.
        protocol: ``"challenge"`` (default, the papers' table): training = 001-150 minus a seeded validation
            part (``val_fraction`` of them, 15 images by default) used for model selection, test = Test1
            (151-300); Test2 is not used. ``"official"``: training = 001-150, validation = Test1, test = Test2
            (CEPHMark-Net's README protocol; it selects models on Test1, so do not report Test1 with it).
        val_fraction, seed: the validation part of the training images (``"challenge"`` only).

    Image numbers without an image (e.g. Test2, kept back) are skipped with one summary line in ``warnings``;
    an image without its annotation is an error naming the file.
    """
    if ground_truth not in ("senior", "junior", "mean"):
        raise ValueError(f"ground_truth must be 'senior', 'junior' or 'mean', got {ground_truth!r}")
    if protocol not in ISBI_PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(ISBI_PROTOCOLS)}, got {protocol!r}")
    root = require_dir(root, "ISBI 2015 root")
    kind, sources = _find_annotations(root, annotations)
    needed = list(ISBI_DOCTORS) if ground_truth == "mean" else [ground_truth]
    for d in needed:
        if d not in sources:
            where = next(iter(sources.values())).parent
            raise LandmarkFileError(where, f"ISBI 2015 {d} annotations not found (400_{d}/ or all_{d}.csv)")
    doctors = [d for d in ISBI_DOCTORS if d in sources]
    tables = {d: read_isbi_csv(sources[d]) for d in doctors} if kind == "csv" else {}

    images: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_2D_EXTENSIONS and p.stem.isdigit() and len(p.stem) == 3:
            if p.stem in images:
                raise LandmarkFileError(root, f"two images for number {p.stem}: {images[p.stem]} and {p}")
            images[p.stem] = p
    if not images:
        raise LandmarkFileError(root, "empty image folder: no NNN.bmp / NNN.jpg images below it")

    ranges: dict[str, list] = {r: [] for r in ISBI_RANGES}
    absent: dict[str, int] = {r: 0 for r in ISBI_RANGES}
    warnings: list[str] = []
    for number in range(1, 401):
        key = f"{number:03d}"
        if key not in images:
            absent[_range_of(number)] += 1
            continue
        img = images.pop(key)
        size = image_size_2d(img)
        per = {}
        for d in doctors:
            if kind == "txt":
                src = sources[d] / f"{key}.txt"
                if not src.is_file():
                    raise LandmarkFileError(src, f"annotation file missing for image {img}")
                pts = read_isbi_txt(src)
            else:
                src = sources[d]
                if key not in tables[d]:
                    raise LandmarkFileError(src, f"no row {key!r} for image {img}")
                pts = tables[d][key]
            check_points_inside(pts, size, src, ISBI_LANDMARK_NAMES, image=img)
            per[d] = pts
        points = merge_annotators([per[d] for d in needed])
        item = landmark_item(img, points, (ISBI_SPACING, ISBI_SPACING))
        if len(per) == 2:
            item["annotators"] = dict(per)
        ranges[_range_of(number)].append(item)
    n_absent = sum(absent.values())
    if n_absent:
        parts = ", ".join(f"{r} {ISBI_RANGES[r][0]:03d}-{ISBI_RANGES[r][1]:03d}: {n}" for r, n in absent.items() if n)
        warnings.append(f"{root}: {n_absent} of the 400 ISBI 2015 images not present ({parts}); skipped")
    if images:
        warnings.append(f"{root}: {len(images)} image(s) outside 001-400 ignored: {sorted(images)[:5]}")

    if protocol == "challenge":
        train, val = split_items(ranges["training"], val_fraction, seed)
        test = ranges["test1"]
        if ranges["test2"]:
            warnings.append(
                f"{root}: {len(ranges['test2'])} Test2 images (301-400) present but not used by the 'challenge' "
                "protocol (test = Test1); use --protocol official to test on Test2"
            )
        split = {"protocol": protocol, "val_fraction": val_fraction, "seed": seed}
    else:
        train, val, test = ranges["training"], ranges["test1"], ranges["test2"]
        split = {"protocol": protocol}
    return {
        "landmark_names": list(ISBI_LANDMARK_NAMES),
        "coordinate_space": "pixel",
        "name": "isbi2015",
        "ground_truth": ground_truth,
        "split": split,
        "training": train,
        "validation": val,
        "test": test,
        "warnings": warnings,
    }
