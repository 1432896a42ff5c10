"""Aariz cephalograms (29 landmarks, 7 devices, per-image pixel size).

Layout (split folder names are matched case-insensitively)::

    ROOT/cephalogram_machine_mappings.csv        cephalogram_id, machine, pixel_size, ...
    ROOT/train|valid|test/Cephalograms/<id>.png|jpg
    ROOT/train|valid|test/Annotations/Cephalometric Landmarks/Senior Orthodontists/<id>.json
    ROOT/train|valid|test/Annotations/Cephalometric Landmarks/Junior Orthodontists/<id>.json

An annotation JSON holds ``{"landmarks": [{"title": "Sella", "symbol": "S", "value": {"x": .., "y": ..}},
...]}``. Points are matched to :data:`AARIZ_LANDMARKS` by symbol (or, without one, by title), never by their
position in the list, so a reordered file cannot shift labels.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import LandmarkFileError
from .readers import check_points_inside, image_size_2d, index_by_id, landmark_item, merge_annotators, require_dir

__all__ = ["AARIZ_LANDMARKS", "AARIZ_LANDMARK_NAMES", "read_aariz_json", "read_aariz_spacing", "build_aariz"]

AARIZ_LANDMARKS = (
    ("A", "A-point"),
    ("ANS", "Anterior Nasal Spine"),
    ("B", "B-point"),
    ("Me", "Menton"),
    ("N", "Nasion"),
    ("Or", "Orbitale"),
    ("Pog", "Pogonion"),
    ("PNS", "Posterior Nasal Spine"),
    ("Pn", "Pronasale"),
    ("R", "Ramus"),
    ("S", "Sella"),
    ("Ar", "Articulare"),
    ("Co", "Condylion"),
    ("Gn", "Gnathion"),
    ("Go", "Gonion"),
    ("Po", "Porion"),
    ("LPM", "Lower 2nd PM Cusp Tip"),
    ("LIT", "Lower Incisor Tip"),
    ("LMT", "Lower Molar Cusp Tip"),
    ("UPM", "Upper 2nd PM Cusp Tip"),
    ("UIA", "Upper Incisor Apex"),
    ("UIT", "Upper Incisor Tip"),
    ("UMT", "Upper Molar Cusp Tip"),
    ("LIA", "Lower Incisor Apex"),
    ("Li", "Labrale inferius"),
    ("Ls", "Labrale superius"),
    ("N`", "Soft Tissue Nasion"),
    ("Pog`", "Soft Tissue Pogonion"),
    ("Sn", "Subnasale"),
)
"""(symbol, title) of the 29 Aariz landmarks, in the dataset's order."""
AARIZ_LANDMARK_NAMES = tuple(s for s, _ in AARIZ_LANDMARKS)

_SPLITS = {"training": ("train", "training"), "validation": ("valid", "validation", "val"), "test": ("test", "testing")}
_ANNOTATORS = {"senior": "Senior Orthodontists", "junior": "Junior Orthodontists"}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9`']+", "", str(text).lower().replace("'", "`"))


_BY_SYMBOL = {_norm(s): i for i, (s, _) in enumerate(AARIZ_LANDMARKS)}
_BY_TITLE = {_norm(t): i for i, (_, t) in enumerate(AARIZ_LANDMARKS)}


def read_aariz_json(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read one Aariz annotation file -> ``(points (29, 2) pixels, warnings)``.

    A landmark missing from the file, or present twice, is NaN with one warning naming the file and the
    landmark; an entry whose symbol/title is unknown is ignored with a warning. Truncated JSON or a file
    without a ``landmarks`` list raises :class:`LandmarkFileError`.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise LandmarkFileError(path, f"cannot read the annotation file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise LandmarkFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated file?)", line=e.lineno
        ) from e
    entries = doc.get("landmarks") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise LandmarkFileError(path, "not an Aariz annotation: expected a JSON object with a 'landmarks' list")
    n = len(AARIZ_LANDMARKS)
    points = np.full((n, 2), np.nan)
    counts = [0] * n
    warnings: list[str] = []
    for j, e in enumerate(entries):
        e = e if isinstance(e, dict) else {}
        idx = _BY_SYMBOL.get(_norm(e.get("symbol", ""))) if e.get("symbol") else None
        if idx is None:
            idx = _BY_TITLE.get(_norm(e.get("title", "")))
        if idx is None:
            warnings.append(
                f"{path}: landmarks[{j}] has unknown symbol/title {e.get('symbol')!r}/{e.get('title')!r}; ignored"
            )
            continue
        counts[idx] += 1
        value = e.get("value")
        try:
            points[idx] = (float(value["x"]), float(value["y"]))
        except (TypeError, KeyError, ValueError):
            warnings.append(
                f"{path}: landmark {AARIZ_LANDMARK_NAMES[idx]!r} has no numeric value {{x, y}}: {value!r}; "
                "set to missing"
            )
            points[idx] = np.nan
    for i, c in enumerate(counts):
        if c == 0:
            warnings.append(f"{path}: landmark {AARIZ_LANDMARK_NAMES[i]!r} missing; set to missing")
        elif c > 1:
            warnings.append(
                f"{path}: landmark {AARIZ_LANDMARK_NAMES[i]!r} appears {c} times; ambiguous, set to missing"
            )
            points[i] = np.nan
    return points, warnings


def read_aariz_spacing(path: str | os.PathLike) -> dict[str, float]:
    """``cephalogram_machine_mappings.csv`` -> ``{cephalogram_id: pixel_size_mm}``."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "cephalogram_id" not in fields or "pixel_size" not in fields:
                raise LandmarkFileError(
                    path, f"expected columns 'cephalogram_id' and 'pixel_size', got {fields}", line=1
                )
            out = {}
            for ln, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                try:
                    value = float(row["pixel_size"])
                except ValueError as e:
                    raise LandmarkFileError(path, f"pixel_size {row['pixel_size']!r} is not a number", line=ln) from e
                if not value > 0:
                    raise LandmarkFileError(path, f"pixel_size must be positive, got {value}", line=ln)
                out[row["cephalogram_id"]] = value
    except OSError as e:
        raise LandmarkFileError(path, f"cannot read the spacing CSV ({e.strerror or e})") from e
    return out


def _child(folder: Path, names: tuple[str, ...]) -> Path | None:
    if not folder.is_dir():
        return None
    low = {n.lower() for n in names}
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in low), None)


def build_aariz(root: str | os.PathLike, annotator: str = "mean") -> dict:
    """Datalist of Aariz with its official train/valid/test split as training/validation/test.

    Args:
        root: the dataset folder (see the module docstring).
        annotator: ``"senior"``, ``"junior"`` or ``"mean"`` (default; landmark by landmark the mean of the two,
            or the one annotator who placed it).

    Spacing is the image's ``pixel_size`` in ``cephalogram_machine_mappings.csv`` (left out, with a warning, for
    an image that is not listed).
    """
    if annotator not in ("senior", "junior", "mean"):
        raise ValueError(f"annotator must be 'senior', 'junior' or 'mean', got {annotator!r}")
    root = require_dir(root, "Aariz root")
    mapping = root / "cephalogram_machine_mappings.csv"
    spacing = read_aariz_spacing(mapping) if mapping.is_file() else {}
    warnings: list[str] = [] if mapping.is_file() else [f"{mapping}: not found; no spacing in the datalist"]
    who = ["senior", "junior"] if annotator == "mean" else [annotator]
    sections: dict[str, list] = {s: [] for s in _SPLITS}
    for section, folder_names in _SPLITS.items():
        split_dir = _child(root, folder_names)
        if split_dir is None:
            continue
        img_dir = _child(split_dir, ("Cephalograms",))
        if img_dir is None:
            raise LandmarkFileError(split_dir, "no 'Cephalograms' image folder")
        images = index_by_id(
            (
                p
                for p in sorted(img_dir.iterdir())
                if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")
            ),
            img_dir,
        )
        ann_base = _child(_child(split_dir, ("Annotations",)) or split_dir, ("Cephalometric Landmarks",))
        if ann_base is None:
            raise LandmarkFileError(split_dir, "no 'Annotations/Cephalometric Landmarks' folder")
        ann_dirs = {}
        for a in who:
            d = _child(ann_base, (_ANNOTATORS[a],))
            if d is None:
                raise LandmarkFileError(ann_base, f"no '{_ANNOTATORS[a]}' folder")
            ann_dirs[a] = d
        for key, img in sorted(images.items()):
            size = image_size_2d(img)
            pts = []
            for a, d in ann_dirs.items():
                js = d / f"{key}.json"
                if not js.is_file():
                    warnings.append(f"{img}: no {a} annotation {js}")
                    continue
                p, w = read_aariz_json(js)
                warnings.extend(w)
                check_points_inside(p, size, js, AARIZ_LANDMARK_NAMES, image=img)
                pts.append(p)
            if not pts:
                warnings.append(f"{img}: skipped, no annotation")
                continue
            sp = spacing.get(key)
            if sp is None and spacing:
                warnings.append(f"{img}: id {key!r} not in {mapping.name}; no spacing")
            sections[section].append(landmark_item(img, merge_annotators(pts), None if sp is None else (sp, sp)))
    if not any(sections.values()):
        raise LandmarkFileError(root, "empty Aariz folder: no train/valid/test split with annotated cephalograms")
    return {
        "landmark_names": list(AARIZ_LANDMARK_NAMES),
        "coordinate_space": "pixel",
        "name": "aariz",
        "annotator": annotator,
        **sections,
        "warnings": warnings,
    }
