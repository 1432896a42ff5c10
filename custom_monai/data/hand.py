"""Digital Hand Atlas (Payer's setup): ``images/NNNN.mha`` + ``setup/all.csv``, 37 landmarks in pixels.

The CSV lists every annotated image of the atlas (rows ``id,x1,y1,...,x37,y37``); only the rows whose
image is present are used. Each MHA header carries its own pixel spacing (0.108-0.165 mm).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datalist import image_id, split_items
from .errors import LandmarkFileError
from .readers import (
    read_points_csv,
    check_points_inside,
    generic_names,
    image_header,
    image_size_2d,
    landmark_item,
    list_files,
    require_dir,
)

__all__ = ["HAND_N_LANDMARKS", "read_points_csv", "build_hand"]

HAND_N_LANDMARKS = 37


def build_hand(
    root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0, csv: str | os.PathLike | None = None
) -> dict:
    """Datalist of the hand X-rays present under ``root/images`` (``training``/``validation`` split).

    Args:
        root: folder with ``images/*.mha`` and ``setup/all.csv``.
        val_fraction, seed: the deterministic split.
        csv: another annotation table (default ``root/setup/all.csv``).

    Spacing comes from each MHA header (first two axes). Images without a CSV row are skipped with a warning;
    CSV rows without an image are not used (the CSV covers the whole atlas).
    """
    root = require_dir(root, "hand X-ray root")
    images = list_files(root / "images", (".mha", ".mhd", ".nrrd", ".png"), "hand X-ray image")
    table = read_points_csv(Path(csv) if csv is not None else root / "setup" / "all.csv", HAND_N_LANDMARKS)
    names = generic_names(HAND_N_LANDMARKS)
    warnings: list[str] = []
    items = []
    for img in images:
        key = image_id(img)
        if key not in table:
            warnings.append(f"{img}: no row {key!r} in the annotation CSV; skipped")
            continue
        size = image_size_2d(img)
        spacing = None
        if img.suffix.lower() != ".png":
            spacing = image_header(img)[1][:2]
        check_points_inside(
            table[key], size, Path(csv) if csv is not None else root / "setup" / "all.csv", names, image=img
        )
        items.append(landmark_item(img, table[key], spacing))
    if not items:
        raise LandmarkFileError(root / "images", "no image has a row in the annotation CSV")
    train, val = split_items(items, val_fraction, seed)
    return {
        "landmark_names": names,
        "coordinate_space": "pixel",
        "name": "hand",
        "split": {"val_fraction": val_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "test": [],
        "warnings": warnings,
    }
