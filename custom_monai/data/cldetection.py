"""CL-Detection 2023 (38 cephalometric landmarks), two layouts.

1. Per-image label files (the annotation repository): ``NNN_landmark.txt`` with 38 lines ``k,x,y`` (k 1-based,
   pixels), paired with ``NNN.png|bmp|jpg`` in an images folder. These files carry no spacing: pass
   ``spacing`` (0.1 mm for the ISBI-origin images) or leave it out (metrics in pixels).
2. The official challenge release: ``train_stack.mha`` (all 2D images stacked along z, each zero-padded at
   the right/bottom to the largest width/height; RGB or grey) with ``train-gt.json``
   (``{"points": [{"name": k, "point": [x, y, z], "scale": "0.1"}, ...]}``, z = 1-based image index, scale =
   mm/px) or a CSV (one row per image: an image column such as ``image file``/``file``, an optional
   ``scale``/``spacing`` column, then ``p1x,p1y,...`` or ``landmark_1_x,landmark_1_y,...``). Stack slices are
   written as ``NNN.png`` (padding removed; the first channel of RGB) into ``extract_dir``: the padding is at
   the right/bottom, so the pixel coordinates are unchanged.

Landmarks 1-19 are the ISBI 2015 landmarks in the same order; 20-38 are named ``L20`` ... ``L38``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np

from .datalist import image_id, split_items
from .errors import LandmarkFileError
from .readers import (
    IMAGE_2D_EXTENSIONS,
    ISBI_LANDMARK_NAMES,
    check_points_inside,
    image_header,
    image_size_2d,
    index_by_id,
    itk_error_message,
    landmark_item,
    require_dir,
)

__all__ = [
    "CLDETECTION_N_LANDMARKS",
    "CLDETECTION_LANDMARK_NAMES",
    "read_cldetection_txt",
    "read_cldetection_gt_json",
    "read_cldetection_gt_csv",
    "extract_stack_slices",
    "build_cldetection2023",
]

CLDETECTION_N_LANDMARKS = 38
CLDETECTION_LANDMARK_NAMES = (*ISBI_LANDMARK_NAMES, *(f"L{i}" for i in range(20, 39)))


def read_cldetection_txt(path: str | os.PathLike, n_landmarks: int = CLDETECTION_N_LANDMARKS) -> np.ndarray:
    """Read ``NNN_landmark.txt`` (lines ``k,x,y``) -> (n_landmarks, 2) pixels, row ``k - 1`` = landmark k.

    Every k in 1..n_landmarks must appear exactly once; otherwise (wrong line count, repeated or out-of-range
    k, a malformed line) a :class:`LandmarkFileError` names the file, the line and what was expected.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkFileError(path, f"cannot read the landmark file ({e})") from e
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln]
    if len(numbered) != n_landmarks:
        raise LandmarkFileError(path, f"has {len(numbered)} landmark lines, expected {n_landmarks} lines 'k,x,y'")
    pts = np.full((n_landmarks, 2), np.nan)
    seen: dict[int, int] = {}
    for ln, text in numbered:
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            k = int(parts[0])
            x, y = float(parts[1]), float(parts[2])
        except ValueError as e:
            raise LandmarkFileError(path, f"expected 'k,x,y' (integer k, pixel x, y), got {text!r}", line=ln) from e
        if not 1 <= k <= n_landmarks:
            raise LandmarkFileError(path, f"landmark number {k} outside 1..{n_landmarks}", line=ln)
        if k in seen:
            raise LandmarkFileError(path, f"landmark {k} appears twice (lines {seen[k]} and {ln})", line=ln)
        seen[k] = ln
        pts[k - 1] = (x, y)
    return pts


def read_cldetection_gt_json(
    path: str | os.PathLike, n_landmarks: int = CLDETECTION_N_LANDMARKS
) -> tuple[dict[int, tuple[np.ndarray, float | None]], list[str]]:
    """Read the official ``train-gt.json`` -> ``({z: (points (n, 2), scale_mm or None)}, warnings)``.

    ``z`` is the 1-based image index in the stack. A landmark absent for an image is NaN with a warning; a
    landmark given twice for one image, a malformed entry or truncated JSON is an error naming the file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LandmarkFileError(path, f"cannot read the ground-truth file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise LandmarkFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated file?)", line=e.lineno
        ) from e
    entries = doc.get("points") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise LandmarkFileError(path, "expected a JSON object with a non-empty 'points' list")
    out: dict[int, tuple[np.ndarray, float | None]] = {}
    scales: dict[int, float | None] = {}
    for i, e in enumerate(entries):
        try:
            k = int(e["name"])
            x, y, z = (float(v) for v in e["point"])
            if z != int(z):
                raise ValueError("non-integer image index")
            z = int(z)
        except (KeyError, TypeError, ValueError) as err:
            raise LandmarkFileError(
                path, f"points[{i}] must be {{'name': k, 'point': [x, y, image_index]}}, got {e!r} ({err})"
            ) from err
        if not 1 <= k <= n_landmarks:
            raise LandmarkFileError(path, f"points[{i}]: landmark number {k} outside 1..{n_landmarks}")
        pts = out.setdefault(z, (np.full((n_landmarks, 2), np.nan), None))[0]
        if np.isfinite(pts[k - 1, 0]):
            raise LandmarkFileError(path, f"points[{i}]: landmark {k} of image {z} given twice")
        pts[k - 1] = (x, y)
        scale = e.get("scale")
        if scale is not None:
            try:
                s = float(scale)
            except (TypeError, ValueError) as err:
                raise LandmarkFileError(path, f"points[{i}]: scale {scale!r} is not a number") from err
            if z in scales and scales[z] is not None and abs(scales[z] - s) > 1e-9:
                raise LandmarkFileError(path, f"points[{i}]: image {z} has two scales ({scales[z]} and {s})")
            scales[z] = s
    warnings = []
    result = {}
    for z in sorted(out):
        pts = out[z][0]
        missing = [k + 1 for k in range(n_landmarks) if not np.isfinite(pts[k, 0])]
        if missing:
            warnings.append(f"{path}: image {z} has no landmark(s) {missing}; set to missing")
        result[z] = (pts, scales.get(z))
    return result, warnings


_COORD_COL = re.compile(r"^(?:p|l|landmark|point)[_ ]?(\d+)[_ ]?(x|y)$", re.IGNORECASE)
_IMAGE_COLS = ("image file", "image_file", "file", "image", "filename", "file_name", "image_id", "id")
_SCALE_COLS = ("scale", "spacing", "pixel_spacing", "pixel spacing", "pixel_size")


def read_cldetection_gt_csv(path: str | os.PathLike) -> list[tuple[str, np.ndarray, float | None]]:
    """Read a one-row-per-image ground-truth CSV -> ``[(image reference, points (n, 2), scale or None)]``.

    The header needs an image column (``image file``, ``file``, ``image``, ...), coordinate columns
    ``p{k}x``/``p{k}y`` or ``landmark_{k}_x``/``landmark_{k}_y`` (k = 1..n, all present), and optionally a
    ``scale``/``spacing`` column (mm/px). Empty cells are missing landmarks. The image reference is returned as
    written (a path, or a 1-based stack index).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LandmarkFileError(path, f"cannot read the CSV ({e})") from e
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise LandmarkFileError(path, "expected a header row and at least one image row")
    header = [h.strip() for h in rows[0]]
    low = [h.lower() for h in header]
    img_col = next((low.index(c) for c in _IMAGE_COLS if c in low), None)
    if img_col is None:
        raise LandmarkFileError(path, f"no image column in the header (expected one of {list(_IMAGE_COLS)})", line=1)
    scale_col = next((low.index(c) for c in _SCALE_COLS if c in low), None)
    coords: dict[tuple[int, str], int] = {}
    for j, h in enumerate(header):
        m = _COORD_COL.match(h)
        if m:
            coords[(int(m.group(1)), m.group(2).lower())] = j
    if not coords:
        raise LandmarkFileError(
            path, "no coordinate columns in the header (expected p1x,p1y,... or landmark_1_x,...)", line=1
        )
    n = max(k for k, _ in coords)
    absent = [f"{k}{a}" for k in range(1, n + 1) for a in "xy" if (k, a) not in coords]
    if absent:
        raise LandmarkFileError(path, f"coordinate columns missing for landmark(s) {absent[:6]}", line=1)
    out = []
    for ln, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise LandmarkFileError(path, f"row has {len(row)} cells, the header has {len(header)}", line=ln)
        pts = np.full((n, 2), np.nan)
        for k in range(1, n + 1):
            cx, cy = row[coords[(k, "x")]].strip(), row[coords[(k, "y")]].strip()
            if cx == "" and cy == "":
                continue
            try:
                pts[k - 1] = (float(cx), float(cy))
            except ValueError as e:
                raise LandmarkFileError(path, f"landmark {k}: expected numbers, got {cx!r}, {cy!r}", line=ln) from e
        scale = None
        if scale_col is not None and row[scale_col].strip():
            try:
                scale = float(row[scale_col])
            except ValueError as e:
                raise LandmarkFileError(path, f"scale {row[scale_col]!r} is not a number", line=ln) from e
        pts[~np.all(np.isfinite(pts), axis=1)] = np.nan
        out.append((row[img_col].strip(), pts, scale))
    return out


def _stack_pixel_type(path: Path):
    import itk

    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    io.SetFileName(str(path))
    io.ReadImageInformation()
    comps = io.GetNumberOfComponents()
    ctype = io.GetComponentTypeAsString(io.GetComponentType())
    if comps == 1:
        return itk.UC if ctype == "unsigned_char" else itk.F
    if comps in (3, 4) and ctype == "unsigned_char":
        return itk.RGBPixel[itk.UC] if comps == 3 else itk.RGBAPixel[itk.UC]
    raise LandmarkFileError(path, f"unsupported stack pixel type: {comps} component(s) of {ctype}")


def extract_stack_slices(
    stack: str | os.PathLike, out_dir: str | os.PathLike, indices: list[int] | None = None
) -> dict[int, Path]:
    """Write the 2D images of a CL-Detection stack as ``out_dir/NNN.png`` (NNN = 1-based z index).

    Slices are read one at a time (ITK streaming; the full training stack is several GB). The zero padding at
    the right and bottom is cut off, which leaves pixel coordinates unchanged; RGB slices keep their first
    channel (the images are grey). Returns ``{z: path}``.
    """
    import itk
    from PIL import Image

    stack = Path(stack)
    size = image_header(stack)[0]
    if len(size) != 3:
        raise LandmarkFileError(stack, f"expected a 3D stack of 2D images, the header says size {list(size)}")
    pixel = _stack_pixel_type(stack)
    image_type = itk.Image[pixel, 3]
    reader = itk.ImageFileReader[image_type].New(FileName=str(stack))
    reader.UpdateOutputInformation()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(range(1, size[2] + 1)) if indices is None else sorted(set(int(i) for i in indices))
    out: dict[int, Path] = {}
    for z in wanted:
        if not 1 <= z <= size[2]:
            raise LandmarkFileError(stack, f"image index {z} outside the stack's 1..{size[2]}")
        region = itk.ImageRegion[3]()
        region.SetIndex([0, 0, z - 1])
        region.SetSize([size[0], size[1], 1])
        extractor = itk.ExtractImageFilter[image_type, image_type].New(Input=reader.GetOutput())
        extractor.SetExtractionRegion(region)
        extractor.SetDirectionCollapseToSubmatrix()
        try:
            extractor.Update()
        except Exception as e:
            raise LandmarkFileError(stack, f"cannot read slice {z} ({itk_error_message(e)})") from e
        arr = np.asarray(itk.array_from_image(extractor.GetOutput()))[0]  # (H, W) or (H, W, C)
        if arr.ndim == 3:
            arr = arr[..., 0]
        rows = np.flatnonzero(arr.any(axis=1))
        cols = np.flatnonzero(arr.any(axis=0))
        if rows.size == 0:
            raise LandmarkFileError(stack, f"slice {z} is entirely zero (no image)")
        arr = arr[: rows[-1] + 1, : cols[-1] + 1]
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        target = out_dir / f"{z:03d}.png"
        tmp = out_dir / f".{z:03d}.png.tmp"
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, target)
        out[z] = target
    return out


def _find(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for folder in (root, root / "images", root / "labels", root / "train"):
        if folder.is_dir():
            for pat in patterns:
                found.extend(p for p in sorted(folder.glob(pat)) if p.is_file())
    return sorted(set(found))


def _image_folder(root: Path, images: str | os.PathLike | None) -> Path:
    if images is not None:
        return require_dir(images, "CL-Detection image")
    if (root / "images").is_dir():
        return root / "images"
    raise LandmarkFileError(root, "no images folder: pass images=DIR (--images) with NNN.png|bmp|jpg files")


def build_cldetection2023(
    root: str | os.PathLike,
    images: str | os.PathLike | None = None,
    spacing: float | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    extract_dir: str | os.PathLike | None = None,
) -> dict:
    """Datalist of CL-Detection 2023 training data (``training``/``validation`` split, ``test`` empty).

    Args:
        root: a folder with ``*_landmark.txt`` files (itself, or ``train/``/``labels/`` below it), or with the
            official ``*stack*.mha`` and ``train-gt.json``/``*.csv`` (itself, ``images/`` or ``labels/``).
        images: folder of ``NNN.png|bmp|jpg`` for the txt layout or a CSV that names image files
            (default ``root/images``).
        spacing: mm/px for the txt layout (not stored in those files); the official files carry their own.
        val_fraction, seed: the deterministic split.
        extract_dir: where stack slices are written as PNG (required for the stack layout).
    """
    root = require_dir(root, "CL-Detection root")
    txts = _find(root, ("*_landmark.txt",))
    stacks = [p for p in _find(root, ("*.mha", "*.mhd")) if "stack" in p.name.lower()]
    gts = [p for p in _find(root, ("*.json", "*.csv")) if "gt" in p.name.lower() or "label" in p.name.lower()]
    warnings: list[str] = []
    items = []
    names = list(CLDETECTION_LANDMARK_NAMES)
    if txts:
        folder = _image_folder(root, images)
        imgs = index_by_id(
            (p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_2D_EXTENSIONS), folder
        )
        if not imgs:
            raise LandmarkFileError(folder, "empty image folder: no png/bmp/jpg images")
        for txt in txts:
            key = txt.name[: -len("_landmark.txt")]
            img = imgs.get(key)
            if img is None:
                warnings.append(f"{txt}: no image {key}.png|bmp|jpg in {folder}; skipped")
                continue
            pts = read_cldetection_txt(txt)
            size = image_size_2d(img)
            check_points_inside(pts, size, txt, names, image=img)
            items.append(landmark_item(img, pts, None if spacing is None else (spacing, spacing)))
        if not items:
            raise LandmarkFileError(folder, f"none of the {len(txts)} label files has its image here")
    elif gts:
        if len(gts) > 1:
            raise LandmarkFileError(root, f"several ground-truth files found, keep one: {[str(g) for g in gts]}")
        gt = gts[0]
        if gt.suffix.lower() == ".json":
            table, w = read_cldetection_gt_json(gt)
            warnings.extend(w)
            records = [(str(z), pts, s) for z, (pts, s) in table.items()]
        else:
            records = read_cldetection_gt_csv(gt)
        counts = {len(p) for _, p, _ in records}
        if len(counts) != 1:
            raise LandmarkFileError(gt, f"images have different landmark counts {sorted(counts)}")
        if counts != {CLDETECTION_N_LANDMARKS}:
            names = [f"L{i + 1}" for i in range(counts.pop())]
        by_index = all(ref.isdigit() for ref, _, _ in records)
        paths: dict[str, Path] = {}
        if by_index and stacks:
            if len(stacks) > 1:
                raise LandmarkFileError(root, f"several stacks found, keep one: {[str(s) for s in stacks]}")
            if extract_dir is None:
                raise LandmarkFileError(stacks[0], "extract_dir is required to write the stack's slices as images")
            written = extract_stack_slices(stacks[0], extract_dir, [int(r) for r, _, _ in records])
            paths = {str(z): p for z, p in written.items()}
        else:
            folder = Path(images) if images is not None else (root / "images" if (root / "images").is_dir() else None)
            for ref, _, _ in records:
                cand = [Path(ref), gt.parent / ref]
                if folder is not None:
                    cand.append(folder / Path(ref).name)
                    if ref.isdigit():
                        cand.extend(folder / f"{ref}{e}" for e in IMAGE_2D_EXTENSIONS)
                        cand.extend(folder / f"{int(ref):03d}{e}" for e in IMAGE_2D_EXTENSIONS)
                hit = next((c for c in cand if c.is_file()), None)
                if hit is not None:
                    paths[ref] = hit
        for ref, pts, scale in records:
            img = paths.get(ref)
            if img is None:
                warnings.append(f"{gt}: image {ref!r} not found; skipped")
                continue
            size = image_size_2d(img)
            check_points_inside(pts, size, gt, names, image=img)
            sp = scale if scale is not None else spacing
            items.append(landmark_item(img, pts, None if sp is None else (sp, sp)))
        if not items:
            raise LandmarkFileError(
                gt, "no image of the ground-truth file was found (pass --images DIR or keep the stack next to it)"
            )
    else:
        raise LandmarkFileError(root, "empty CL-Detection folder: no NNN_landmark.txt files and no train-gt.json/csv")
    items.sort(key=lambda it: image_id(it["image"]))
    train, val = split_items(items, val_fraction, seed)
    return {
        "landmark_names": names,
        "coordinate_space": "pixel",
        "name": "cldetection2023",
        "split": {"val_fraction": val_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "test": [],
        "warnings": warnings,
    }
