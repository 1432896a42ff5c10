"""Shared pieces of the dataset readers, and the registry used by ``scripts/prepare_data.py``.

Every dataset module exposes ``build_<name>(root, ...) -> dict``: a datalist dictionary (the format of
:mod:`custom_monai.data.datalist`, images as absolute paths) plus a ``"warnings"`` list naming every defect
that was turned into a missing landmark or a skipped file. Nothing is dropped or shifted silently; anything
that cannot be repaired raises :class:`~custom_monai.data.errors.LandmarkFileError` naming the file.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .datalist import image_id
from .errors import LandmarkFileError

__all__ = [
    "ISBI_LANDMARK_NAMES",
    "IMAGE_2D_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "generic_names",
    "image_size_2d",
    "image_header",
    "itk_error_message",
    "check_points_inside",
    "list_files",
    "index_by_id",
    "require_dir",
    "merge_annotators",
    "landmark_item",
    "DATASETS",
    "get_builder",
    "read_points_csv",
]

ISBI_LANDMARK_NAMES = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
)
"""The 19 ISBI 2015 landmarks, in the challenge order (L1 ... L19); also the Hamedan order."""

IMAGE_2D_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_ITK_2D_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".dcm")


def generic_names(n: int) -> list[str]:
    """``["L1", ..., "Ln"]`` for datasets whose landmarks have no published names."""
    return [f"L{i + 1}" for i in range(n)]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz",):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def itk_error_message(error: BaseException) -> str:
    """The useful line of an ITK exception (its text starts with a C++ source location)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines:
        if "ITK ERROR" in ln:
            return re.sub(r"^ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", ln)[:200]
    return (lines[-1] if lines else type(error).__name__)[:200]


def image_header(path: str | os.PathLike) -> tuple[tuple[int, ...], tuple[float, ...], np.ndarray, np.ndarray]:
    """Read only the header of an ITK-readable image (MHA/MHD, NRRD, NIfTI, DICOM file).

    Returns ``(size, spacing, origin, direction)`` in ITK (x, y, z) order and the LPS frame. Raises
    :class:`LandmarkFileError` naming the file when ITK cannot read it.
    """
    import itk

    path = Path(path)
    if not path.is_file():
        raise LandmarkFileError(path, "image file not found")
    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise LandmarkFileError(path, "not a readable image (no ITK reader recognises this file)")
    try:
        io.SetFileName(str(path))
        io.ReadImageInformation()
    except Exception as e:  # itk raises RuntimeError with a long C++ trace
        raise LandmarkFileError(path, f"corrupt or unreadable image header ({itk_error_message(e)})") from e
    n = io.GetNumberOfDimensions()
    size = tuple(int(io.GetDimensions(i)) for i in range(n))
    spacing = tuple(float(io.GetSpacing(i)) for i in range(n))
    origin = np.array([io.GetOrigin(i) for i in range(n)], dtype=np.float64)
    direction = np.array([[io.GetDirection(j)[i] for j in range(n)] for i in range(n)], dtype=np.float64)
    if any(s <= 0 for s in size):
        raise LandmarkFileError(path, f"image header has an empty size {list(size)}")
    return size, spacing, origin, direction


def _check_raw_length(im, path: Path) -> None:
    """Uncompressed formats (BMP) have no checksum: compare the file length with what the header promises."""
    if im.format != "BMP" or len(im.tile) != 1 or im.tile[0][0] != "raw":
        return
    _, extents, offset, args = im.tile[0]
    stride = args[1] if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int) else 0
    if stride > 0:
        expected = offset + stride * (extents[3] - extents[1])
        actual = os.path.getsize(path)
        if actual < expected:
            raise LandmarkFileError(path, f"corrupt image: truncated, {actual} bytes but the header needs {expected}")


def image_size_2d(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a 2D image, reading as little as possible; a clear error if it is unreadable.

    PNG/BMP/JPEG/TIFF go through PIL: ``open`` reads the header, ``verify`` walks the file and checks the PNG
    chunk checksums without decoding, and an uncompressed BMP must be as long as its header says.
    MHA/NRRD/NIfTI go through an ITK header read (a trailing size-1 axis, as in the hand atlas MHA files, is
    ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise LandmarkFileError(path, "image file not found")
    if _suffix(path) in _ITK_2D_EXTENSIONS:
        size = image_header(path)[0]
        size2 = tuple(s for i, s in enumerate(size) if i < 2 or s != 1)
        if len(size2) != 2:
            raise LandmarkFileError(path, f"expected a 2D image, the header says size {list(size)}")
        return int(size2[0]), int(size2[1])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size = im.size
            _check_raw_length(im, path)
            im.verify()
    except LandmarkFileError:
        raise
    except UnidentifiedImageError as e:
        raise LandmarkFileError(
            path, "not a readable image (PIL cannot identify the file: corrupt or wrong extension)"
        ) from e
    except Exception as e:  # truncated data, bad checksum, ...
        raise LandmarkFileError(path, f"corrupt image ({type(e).__name__}: {e})") from e
    if size[0] <= 0 or size[1] <= 0:
        raise LandmarkFileError(path, f"image has an empty size {size}")
    return int(size[0]), int(size[1])


def check_points_inside(
    points: np.ndarray,
    size: Sequence[int],
    path: str | os.PathLike,
    names: Sequence[str],
    tolerance: float = 0.5,
    image: str | os.PathLike | None = None,
) -> None:
    """Raise naming the annotation file and landmark when a point lies outside the image.

    Pixel centres are at integer coordinates, so the image covers ``[-0.5, size - 0.5]`` on each axis (the
    same tolerance as ``PrepareLandmarks``). NaN rows (missing) are ignored.
    """
    p = np.asarray(points, dtype=np.float64)
    hi = np.asarray(size, dtype=np.float64) - 1 + tolerance
    for i, row in enumerate(p):
        if not np.all(np.isfinite(row)):
            continue
        if np.any(row < -tolerance) or np.any(row > hi):
            raise LandmarkFileError(
                path,
                f"point {np.round(row, 3).tolist()} is outside the image{' ' + os.fspath(image) if image else ''} "
                f"of size {list(size)} "
                f"(expected 0 <= coordinate <= size - 1, x = column, y = row)",
                landmark=names[i] if i < len(names) else str(i + 1),
            )


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or a clear error when it is not an existing folder."""
    p = Path(path)
    if not p.is_dir():
        raise LandmarkFileError(p, f"{what} folder not found")
    return p


def list_files(folder: str | os.PathLike, extensions: Iterable[str], what: str) -> list[Path]:
    """Sorted files of ``folder`` with one of ``extensions`` (case-insensitive); error if there is none."""
    folder = require_dir(folder, what)
    exts = tuple(e.lower() for e in extensions)
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(exts) and not p.name.startswith(".")
    )
    if not files:
        raise LandmarkFileError(folder, f"empty {what} folder: no {'/'.join(exts)} files")
    return files


def index_by_id(files: Iterable[Path], path_for_errors: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{image_id: path}``; two files with the same id (e.g. ``001.png`` and ``001.bmp``) are an error."""
    out: dict[str, Path] = {}
    for f in files:
        k = image_id(f)
        if k in out:
            raise LandmarkFileError(path_for_errors or f.parent, f"two files for id {k!r}: {out[k].name} and {f.name}")
        out[k] = f
    return out


def merge_annotators(points: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of several annotators' (N, D) arrays, landmark by landmark, over the annotators that have it.

    Where every annotator placed the landmark this is the usual mean ground truth; where only some did, it is
    the mean of those (one annotator's point when only one has it); where none did, NaN.
    """
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in points])
    valid = np.all(np.isfinite(stack), axis=2)
    n = valid.sum(axis=0)
    total = np.where(valid[..., None], stack, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n[:, None]
    mean[n == 0] = np.nan
    return mean


def landmark_item(image: str | os.PathLike, landmarks: np.ndarray, spacing: Sequence[float] | None = None) -> dict:
    """A datalist item with an absolute image path."""
    item = {"image": os.path.abspath(os.fspath(image)), "landmarks": np.asarray(landmarks, dtype=np.float64)}
    if spacing is not None:
        item["spacing"] = [float(s) for s in spacing]
    return item


DATASETS: dict[str, str] = {
    "isbi2015": "custom_monai.data.isbi2015:build_isbi2015",
    "hamedan": "custom_monai.data.hamedan:build_hamedan",
    "hand": "custom_monai.data.hand:build_hand",
    "chest": "custom_monai.data.chest:build_chest",
    "cldetection2023": "custom_monai.data.cldetection:build_cldetection2023",
    "aariz": "custom_monai.data.aariz:build_aariz",
    "markups": "custom_monai.data.markups:build_markups",
}
"""Dataset name -> ``module:function`` of its builder (imported on demand)."""


def get_builder(name: str) -> Callable[..., dict]:
    """The ``build_<name>`` function of a dataset; a clear error listing the known names otherwise."""
    key = str(name).lower().replace("-", "").replace("_", "")
    aliases = {k.replace("_", ""): k for k in DATASETS}
    aliases["cldetection"] = "cldetection2023"
    aliases["isbi"] = "isbi2015"
    if key not in aliases:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    module, func = DATASETS[aliases[key]].split(":")
    return getattr(importlib.import_module(module), func)


def read_points_csv(path: str | os.PathLike, n_landmarks: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Rows ``id,x1,y1,...,xN,yN`` -> ``{id: (N, 2) float}`` (coordinates divided by ``scale``).

    Empty or ``nan`` values are missing (NaN). A row with the wrong number of values or a repeated id is an
    error naming the file and the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise LandmarkFileError(path, f"cannot read the CSV ({e.strerror or e})") from e
    out: dict[str, np.ndarray] = {}
    for ln, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        parts = [p.strip() for p in text.split(",")]
        values = parts[1:]
        while len(values) > 2 * n_landmarks and values[-1] == "":
            values.pop()
        if len(values) != 2 * n_landmarks:
            raise LandmarkFileError(
                path, f"row {parts[0]!r} has {len(values)} coordinate values, expected {2 * n_landmarks}", line=ln
            )
        try:
            arr = np.asarray([np.nan if v.lower() in ("", "nan") else float(v) for v in values], dtype=np.float64)
        except ValueError as e:
            raise LandmarkFileError(path, f"row {parts[0]!r} has a non-numeric value ({e})", line=ln) from e
        if parts[0] in out:
            raise LandmarkFileError(path, f"id {parts[0]!r} appears twice", line=ln)
        arr = arr.reshape(n_landmarks, 2) / float(scale)
        arr[~np.all(np.isfinite(arr), axis=1)] = np.nan
        out[parts[0]] = arr
    if not out:
        raise LandmarkFileError(path, "empty CSV: no annotation rows")
    return out
