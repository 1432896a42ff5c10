"""3D landmark files (3D Slicer ``.mrk.json`` / ``.fcsv``, ``name,x,y,z`` CSV, VerSe centroids) and 3D datalists.

Everything is returned in **world millimetres in the ITK/LPS frame** (the frame ITK, SimpleITK and the
datalist use): RAS files are converted by negating x and y. Missing points are NaN rows.

Coordinate systems of the inputs:

* ``.mrk.json``: ``markups[*].coordinateSystem`` is ``"LPS"`` or ``"RAS"`` (LPS when absent, the schema's
  default); control points whose ``positionStatus`` is not ``"defined"`` (``"missing"``, ``"undefined"``,
  ``"preview"``) or that have no ``position`` are missing.
* ``.fcsv``: the header line ``# CoordinateSystem = LPS | RAS | 0 | 1`` (0 = RAS, 1 = LPS, as written by old
  Slicer versions; RAS when the line is absent). ``nan`` or empty coordinates are missing.
* ``.csv``: ``name,x,y,z`` (header optional), LPS unless told otherwise; a ``0,0,0`` row means missing (the
  convention of the dental CBCT landmark tables).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datalist import atomic_write_text, image_id, split_items
from .errors import LandmarkFileError
from .readers import VOLUME_EXTENSIONS, image_header, itk_error_message, require_dir

__all__ = [
    "MARKUP_EXTENSIONS",
    "read_markups",
    "write_mrk_json",
    "write_fcsv",
    "write_points_csv",
    "read_verse_centroids",
    "volume_affine_lps",
    "lps_to_index",
    "index_to_lps",
    "build_markups",
]

MARKUP_EXTENSIONS = (".mrk.json", ".fcsv", ".csv")
_FLIP = np.array([-1.0, -1.0, 1.0])
_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"]


def _system(value: object, path: Path, default: str) -> str:
    if value is None or str(value).strip() == "":
        return default
    v = str(value).strip().upper()
    mapped = {"LPS": "LPS", "RAS": "RAS", "0": "RAS", "1": "LPS"}.get(v)
    if mapped is None:
        raise LandmarkFileError(
            path, f"unsupported coordinate system {str(value).strip()!r} (expected LPS, RAS, 0 = RAS or 1 = LPS)"
        )
    return mapped


def _to_lps(points: np.ndarray, system: str) -> np.ndarray:
    return points * _FLIP if system == "RAS" else points


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "json"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv") or name.endswith(".txt"):
        return "csv"
    raise LandmarkFileError(path, f"unknown landmark file type (expected one of {list(MARKUP_EXTENSIONS)})")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkFileError(path, f"cannot read the landmark file ({e})") from e


def _read_mrk_json(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise LandmarkFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (truncated file?)", line=e.lineno
        ) from e
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups:
        raise LandmarkFileError(path, "not a 3D Slicer markups file: expected a non-empty 'markups' list")
    names: list[str] = []
    rows: list[list[float]] = []
    for m, mk in enumerate(markups):
        if not isinstance(mk, dict):
            raise LandmarkFileError(path, f"markups[{m}] is not an object")
        system = _system(mk.get("coordinateSystem"), path, "LPS")
        units = mk.get("coordinateUnits", "mm")
        if isinstance(units, str) and units not in ("mm", ""):
            raise LandmarkFileError(path, f"markups[{m}] has coordinateUnits {units!r}, expected 'mm'")
        cps = mk.get("controlPoints", [])
        if not isinstance(cps, list):
            raise LandmarkFileError(path, f"markups[{m}].controlPoints must be a list")
        for c, cp in enumerate(cps):
            if not isinstance(cp, dict):
                raise LandmarkFileError(path, f"markups[{m}].controlPoints[{c}] is not an object")
            label = str(cp.get("label", "") or cp.get("id", "") or f"{c + 1}")
            status = str(cp.get("positionStatus", "defined")).lower()
            pos = cp.get("position")
            if status != "defined" or pos is None:
                point = [math.nan] * 3
            else:
                try:
                    point = [float(v) for v in pos]
                    if len(point) != 3:
                        raise ValueError
                except (TypeError, ValueError) as e:
                    raise LandmarkFileError(path, f"position must be 3 numbers, got {pos!r}", landmark=label) from e
                point = list(_to_lps(np.asarray(point), system))
            names.append(label)
            rows.append(point)
    return names, np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _read_fcsv(path: Path) -> tuple[list[str], np.ndarray]:
    text = _read_text(path)
    system = None
    columns = list(_FCSV_COLUMNS)
    body: list[tuple[int, str]] = []
    for ln, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            key, _, value = s[1:].partition("=")
            key = key.strip().lower()
            if key == "coordinatesystem":
                system = _system(value, path, "RAS")
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        body.append((ln, line))
    system = system or "RAS"
    try:
        ix, iy, iz = columns.index("x"), columns.index("y"), columns.index("z")
    except ValueError as e:
        raise LandmarkFileError(path, f"the '# columns =' header has no x, y, z: {columns}") from e
    il = columns.index("label") if "label" in columns else None
    names, rows = [], []
    for ln, line in body:
        cells = next(csv.reader([line]))
        if len(cells) <= max(ix, iy, iz):
            raise LandmarkFileError(
                path, f"expected at least {max(ix, iy, iz) + 1} comma-separated fields, got {len(cells)}", line=ln
            )
        label = cells[il].strip() if il is not None and il < len(cells) and cells[il].strip() else f"{len(names) + 1}"
        vals = [cells[i].strip() for i in (ix, iy, iz)]
        if all(v.lower() in ("", "nan") for v in vals):
            point = np.full(3, np.nan)
        else:
            try:
                point = _to_lps(np.asarray([float(v) for v in vals]), system)
            except ValueError as e:
                raise LandmarkFileError(path, f"x, y, z must be numbers, got {vals}", line=ln, landmark=label) from e
        names.append(label)
        rows.append(point)
    return names, np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _read_csv(path: Path, system: str, zero_is_missing: bool) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(_read_text(path))))
    names, pts = [], []
    for ln, cells in enumerate(rows, start=1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 4:
            raise LandmarkFileError(path, f"expected 'name,x,y,z' (4 fields), got {len(cells)}: {cells}", line=ln)
        try:
            vals = [math.nan if v.lower() in ("", "nan") else float(v) for v in cells[1:]]
        except ValueError as e:
            if ln == 1 and not names:  # a header row
                continue
            raise LandmarkFileError(
                path, f"x, y, z must be numbers, got {cells[1:]}", line=ln, landmark=cells[0]
            ) from e
        p = np.asarray(vals, dtype=np.float64)
        if not np.all(np.isfinite(p)) or (zero_is_missing and np.all(p == 0.0)):
            p = np.full(3, np.nan)
        names.append(cells[0])
        pts.append(_to_lps(p, system))
    return names, np.asarray(pts, dtype=np.float64).reshape(-1, 3)


def read_markups(
    path: str | os.PathLike, coordinate_system: str = "LPS", zero_is_missing: bool = True
) -> tuple[list[str], np.ndarray]:
    """Read a 3D landmark file -> ``(names, points_lps (N, 3) float64, NaN rows for missing)``.

    ``.mrk.json`` and ``.fcsv`` state their own coordinate system; ``coordinate_system`` and
    ``zero_is_missing`` apply to ``name,x,y,z`` CSV files only. Names are returned as written (duplicates
    included, in file order). Raises :class:`LandmarkFileError` naming the file (and line/landmark).
    """
    path = Path(path)
    if not path.is_file():
        raise LandmarkFileError(path, "landmark file not found")
    kind = _kind(path)
    if kind == "json":
        names, pts = _read_mrk_json(path)
    elif kind == "fcsv":
        names, pts = _read_fcsv(path)
    else:
        names, pts = _read_csv(path, _system(coordinate_system, path, "LPS"), zero_is_missing)
    if not names:
        raise LandmarkFileError(path, "no landmarks in the file")
    return names, pts


def _check_points(names: Sequence[str], points: np.ndarray, where: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) != len(names):
        raise ValueError(f"{where}: expected points of shape ({len(names)}, 3) for {len(names)} names, got {pts.shape}")
    return pts


def write_mrk_json(
    path: str | os.PathLike, names: Sequence[str], points_lps: np.ndarray, coordinate_system: str = "LPS"
) -> Path:
    """Write a 3D Slicer point list (``.mrk.json``) atomically; NaN rows get ``positionStatus: "missing"``.

    Points are given in LPS; with ``coordinate_system="RAS"`` they are stored in RAS (x, y negated).
    """
    path = Path(path)
    system = _system(coordinate_system, path, "LPS")
    pts = _check_points(names, points_lps, str(path))
    cps = []
    for i, (name, p) in enumerate(zip(names, pts)):
        cp = {"id": str(i + 1), "label": str(name), "description": "", "associatedNodeID": ""}
        if np.all(np.isfinite(p)):
            cp["position"] = [float(v) for v in _to_lps(p, system)]  # the flip is its own inverse
            cp["positionStatus"] = "defined"
        else:
            cp["positionStatus"] = "missing"
        cp.update(
            {
                "orientation": (
                    [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
                    if system == "LPS"
                    else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
                ),
                "selected": True,
                "locked": False,
                "visibility": True,
            }
        )
        cps.append(cp)
    doc = {
        "@schema": _SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(cps),
                "controlPoints": cps,
                "measurements": [],
            }
        ],
    }
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def write_fcsv(
    path: str | os.PathLike, names: Sequence[str], points_lps: np.ndarray, coordinate_system: str = "LPS"
) -> Path:
    """Write a Slicer 4.11-style ``.fcsv`` atomically (``# CoordinateSystem = LPS|RAS``); NaN rows as ``nan``.

    ``.fcsv`` has no "missing" status: prefer :func:`write_mrk_json` when points can be missing.
    """
    path = Path(path)
    system = _system(coordinate_system, path, "LPS")
    pts = _check_points(names, points_lps, str(path))
    buf = io.StringIO()
    buf.write("# Markups fiducial file version = 4.11\n")
    buf.write(f"# CoordinateSystem = {system}\n")
    buf.write(f"# columns = {','.join(_FCSV_COLUMNS)}\n")
    w = csv.writer(buf, lineterminator="\n")
    for i, (name, p) in enumerate(zip(names, pts)):
        q = _to_lps(p, system)
        xyz = [repr(float(v)) if np.isfinite(v) else "nan" for v in q]
        w.writerow([str(i + 1), *xyz, 0, 0, 0, 1, 1, 1, 0, str(name), "", ""])
    return atomic_write_text(path, buf.getvalue())


def write_points_csv(path: str | os.PathLike, names: Sequence[str], points_lps: np.ndarray) -> Path:
    """Write ``name,x,y,z`` (LPS mm, header row) atomically; NaN rows are left empty."""
    path = Path(path)
    pts = _check_points(names, points_lps, str(path))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "x", "y", "z"])
    for name, p in zip(names, pts):
        w.writerow([name, *(repr(float(v)) if np.isfinite(v) else "" for v in p)])
    return atomic_write_text(path, buf.getvalue())


def read_verse_centroids(
    path: str | os.PathLike, image: str | os.PathLike, units: str = "voxel"
) -> tuple[list[str], np.ndarray]:
    """VerSe centroid JSON -> ``(labels as strings, points_lps (N, 3))`` using the mask/CT header.

    The file is ``[{"direction": ["P", "I", "R"]}, {"label": 16, "X": .., "Y": .., "Z": ..}, ...]``: coordinates
    along the axes of the image *reoriented* to ``direction`` (flips/permutations only, by nibabel's
    orientation tools). ``units="voxel"`` (default) reads them as voxel indices of that reoriented grid, which
    is what VerSe's own tools assume and what puts every centroid of ``sub-verse004`` inside its vertebra;
    ``units="mm"`` divides by the reoriented voxel size first.
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    path = Path(path)
    if units not in ("voxel", "mm"):
        raise ValueError(f"units must be 'voxel' or 'mm', got {units!r}")
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise LandmarkFileError(
            path, f"not valid JSON: {e.msg} at line {e.lineno} (truncated file?)", line=e.lineno
        ) from e
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict) or "direction" not in doc[0]:
        raise LandmarkFileError(path, "expected a list whose first entry is {'direction': [three axis codes]}")
    direction = tuple(str(c).upper() for c in doc[0]["direction"])
    try:
        img = nib.load(str(image))
    except Exception as e:
        raise LandmarkFileError(image, f"cannot read the image header ({e})") from e
    shape = img.shape[:3]
    try:
        t = ornt_transform(io_orientation(img.affine), axcodes2ornt(direction))
    except Exception as e:
        raise LandmarkFileError(path, f"invalid direction {direction}: {e}") from e
    affine = img.affine @ inv_ornt_aff(t, shape)  # voxel of the reoriented grid -> RAS
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    names, rows = [], []
    for i, e in enumerate(doc[1:], start=1):
        try:
            label = e["label"]
            v = np.array([float(e["X"]), float(e["Y"]), float(e["Z"])])
        except (KeyError, TypeError, ValueError) as err:
            raise LandmarkFileError(path, f"entry {i} must have 'label', 'X', 'Y', 'Z', got {e!r}") from err
        if units == "mm":
            v = v / zooms
        ras = affine @ np.append(v, 1.0)
        names.append(str(label))
        rows.append(ras[:3] * _FLIP)
    return names, np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def volume_affine_lps(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, ...], tuple[float, ...]]:
    """``(affine index -> LPS mm (4x4), size, spacing)`` from a volume header (file or DICOM folder)."""
    path = Path(path)
    if path.is_dir():
        size, spacing, origin, direction = _dicom_header(path)
    else:
        size, spacing, origin, direction = image_header(path)
    if len(size) != 3:
        raise LandmarkFileError(path, f"expected a 3D volume, the header says size {list(size)}")
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine, size, spacing


def _dicom_header(folder: Path):
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(folder))
    series = names.GetSeriesUIDs()
    if not series:
        raise LandmarkFileError(folder, "no DICOM series in the folder")
    if len(series) > 1:
        raise LandmarkFileError(folder, f"{len(series)} DICOM series in the folder, expected one")
    files = names.GetFileNames(series[0])
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New(FileNames=files, ImageIO=itk.GDCMImageIO.New())
    try:
        reader.UpdateOutputInformation()
    except Exception as e:
        raise LandmarkFileError(folder, f"unreadable DICOM series ({itk_error_message(e)})") from e
    out = reader.GetOutput()
    size = tuple(int(s) for s in out.GetLargestPossibleRegion().GetSize())
    spacing = tuple(float(s) for s in out.GetSpacing())
    origin = np.array(out.GetOrigin(), dtype=np.float64)
    direction = np.array(itk.array_from_matrix(out.GetDirection()), dtype=np.float64)
    return size, spacing, origin, direction


def lps_to_index(points_lps: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """World LPS mm (N, 3) -> continuous voxel indices (i, j, k) with an index -> LPS affine; NaN stays NaN."""
    p = np.asarray(points_lps, dtype=np.float64)
    return (np.linalg.inv(np.asarray(affine_lps, dtype=np.float64)) @ np.c_[p, np.ones(len(p))].T).T[:, :3]


def index_to_lps(index: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) -> world LPS mm with an index -> LPS affine."""
    p = np.asarray(index, dtype=np.float64)
    return (np.asarray(affine_lps, dtype=np.float64) @ np.c_[p, np.ones(len(p))].T).T[:, :3]


def _find_volume(folder: Path, key: str) -> Path | None:
    for ext in VOLUME_EXTENSIONS:
        for cand in (folder / f"{key}{ext}", folder / f"{key}{ext.upper()}"):
            if cand.is_file():
                return cand
    d = folder / key
    if d.is_dir() and any(p.is_file() for p in d.iterdir()):
        return d
    return None


def build_markups(
    root: str | os.PathLike,
    images: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    tolerance: float = 0.5,
    test_fraction: float = 0.2,
) -> dict:
    """3D datalist (``coordinate_space: "world"``, LPS mm) from landmark files paired with volumes by name.

    Args:
        root: folder of landmark files ``<id>.mrk.json`` / ``<id>.fcsv`` / ``<id>.csv``.
        images: folder of volumes ``<id>.nii.gz|nii|mha|mhd|nrrd|nhdr`` or DICOM folders ``<id>/``
            (default: ``root/images`` if it exists, else ``root``).
        val_fraction, seed, test_fraction: the deterministic training/validation/test split
            (:func:`~custom_monai.data.datalist.split_items`; default 60/20/20, e.g. 55/18/18 of the 91 CT
            volumes of ``cmf_ct3d``; ``test_fraction=0`` gives a two-way split).
        tolerance: how far (in voxels) beyond the centres of the edge voxels a point may lie before it counts
            as outside its volume (0.5 = the volume's physical extent).

    Landmark names are the union over the files in first-seen order (files sorted by name). A name missing
    from a file, or repeated in it (ambiguous), is NaN with a warning. Every point is checked against its
    volume (header only; spacing comes from the header too): a point outside it (e.g. cut off by a CBCT's field
    of view) is NaN with a warning naming the file, the landmark and the voxel index. When most of a file's
    points are outside, the file and the volume do not match (or the coordinate system is wrong): that is an
    error naming the file.
    """
    root = require_dir(root, "landmark")
    folder = Path(images) if images is not None else (root / "images" if (root / "images").is_dir() else root)
    require_dir(folder, "volume")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(MARKUP_EXTENSIONS)
    )
    if not files:
        raise LandmarkFileError(root, f"empty folder: no landmark files ({'/'.join(MARKUP_EXTENSIONS)})")
    warnings: list[str] = []
    cases = []
    seen_ids: dict[str, Path] = {}
    for f in files:
        key = image_id(f)
        if key in seen_ids:
            raise LandmarkFileError(root, f"two landmark files for {key!r}: {seen_ids[key].name} and {f.name}")
        seen_ids[key] = f
        vol = _find_volume(folder, key)
        if vol is None:
            warnings.append(f"{f}: no volume {key}.nii.gz|mha|nrrd|... or DICOM folder {key}/ in {folder}; skipped")
            continue
        names, pts = read_markups(f)
        cases.append((f, vol, names, pts))
    if not cases:
        raise LandmarkFileError(folder, f"none of the {len(files)} landmark files has a volume with the same name")
    all_names: list[str] = []
    for _, _, names, _ in cases:
        for n in names:
            if n not in all_names:
                all_names.append(n)
    items = []
    for f, vol, names, pts in cases:
        counts = Counter(names)
        row = {n: i for i, n in enumerate(names)}
        out = np.full((len(all_names), 3), np.nan)
        for j, n in enumerate(all_names):
            if counts[n] == 0:
                warnings.append(f"{f}: landmark {n!r} missing; set to missing")
            elif counts[n] > 1:
                warnings.append(f"{f}: landmark {n!r} appears {counts[n]} times; ambiguous, set to missing")
            else:
                out[j] = pts[row[n]]
        affine, size, spacing = volume_affine_lps(vol)
        idx = lps_to_index(out, affine)
        defined = np.all(np.isfinite(idx), axis=1)
        outside = defined & (np.any(idx < -tolerance, axis=1) | np.any(idx > np.asarray(size) - 1 + tolerance, axis=1))
        if outside.sum() > 0 and 2 * outside.sum() > defined.sum():
            j = int(np.flatnonzero(outside)[0])
            raise LandmarkFileError(
                f,
                f"{int(outside.sum())} of {int(defined.sum())} points lie outside the volume {vol} (e.g. "
                f"{all_names[j]!r} at voxel {np.round(idx[j], 2).tolist()}, size {list(size)}): wrong volume or "
                "coordinate system (LPS vs RAS)?",
            )
        for j in np.flatnonzero(outside):
            warnings.append(
                f"{f}: landmark {all_names[j]!r}: point {np.round(out[j], 3).tolist()} mm (LPS) is outside the "
                f"volume {vol} (voxel {np.round(idx[j], 2).tolist()}, size {list(size)}, tolerance {tolerance} "
                "voxel); set to missing"
            )
            out[j] = np.nan
        item = {"image": os.path.abspath(vol), "landmarks": out, "spacing": [float(s) for s in spacing]}
        items.append(item)
    train, val, test = split_items(items, val_fraction, seed, test_fraction)
    return {
        "landmark_names": all_names,
        "coordinate_space": "world",
        "name": "markups",
        "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        "training": train,
        "validation": val,
        "test": test,
        "warnings": warnings,
    }
