"""Landmark preparation and coordinate mapping.

Convention (project-wide): a landmark array is float32 ``(N, D)``, one row per landmark, ``NaN`` rows for
missing landmarks, and it stays in the *original* index frame of the image (the grid the image had when
:class:`PrepareLandmarksd` ran). The image MetaTensor carries ``meta["landmark_affine"]`` (the affine at that
time). Every MONAI spatial transform updates ``image.affine``, so the current grid position of a point is
``inv(image.affine) @ landmark_affine @ [p, 1]`` (:func:`to_grid`), and predictions made on the current grid go
back with :func:`to_original`. Points are (x, y[, z]) and index the channel-first array as ``img[c, x, y(, z)]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "LANDMARK_AFFINE",
    "ORIGINAL_SPATIAL_SHAPE",
    "LANDMARK_MASK",
    "to_grid",
    "to_original",
    "world_lps_to_index",
    "index_to_world_lps",
    "landmarks_to_array",
    "points_inside",
    "PrepareLandmarks",
    "PrepareLandmarksd",
    "PrepareLandmarksD",
    "PrepareLandmarksDict",
    "LandmarksToGridd",
    "LandmarksToGridD",
    "LandmarksToGridDict",
]

LANDMARK_AFFINE = "landmark_affine"
"""Image meta key: the 4x4 affine of the grid in which the landmark array is expressed."""
ORIGINAL_SPATIAL_SHAPE = "original_spatial_shape"
"""Image meta key: the spatial shape of the image when the landmarks were prepared."""
LANDMARK_MASK = "landmark_mask"
"""Default data key of the (N,) float mask: 1 = present and inside the current grid, 0 otherwise."""

_LPS_TO_RAS = (-1.0, -1.0, 1.0)


def _image_name(image: Any, fallback: str = "image") -> str:
    meta = getattr(image, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else fallback


def _to_torch64(x: Any) -> torch.Tensor:
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _affine4(a: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) 2D or (..., 4, 4) affine -> (..., 4, 4), embedding 2D affines with an identity z axis."""
    if a.shape[-2:] == (4, 4):
        return a
    if a.shape[-2:] == (3, 3):
        out = torch.zeros((*a.shape[:-2], 4, 4), dtype=a.dtype, device=a.device)
        out[..., :2, :2] = a[..., :2, :2]
        out[..., :2, 3] = a[..., :2, 2]
        out[..., 2, 2] = 1.0
        out[..., 3, 3] = 1.0
        return out
    raise ValueError(f"expected a (3, 3) or (4, 4) affine (optionally batched), got shape {tuple(a.shape)}")


def _apply(points: Any, matrix: torch.Tensor) -> Any:
    """Apply a homogeneous (..., 4, 4) float64 matrix to points (..., N, D); keep the points' type and dtype."""
    is_torch = isinstance(points, torch.Tensor)
    p = _to_torch64(points)
    if p.ndim < 2 or p.shape[-1] not in (2, 3):
        raise ValueError(f"expected points of shape (N, D) or (B, N, D) with D = 2 or 3, got {tuple(p.shape)}")
    d = p.shape[-1]
    m = matrix.to(p.device)
    if m.ndim > 2 and m.ndim != p.ndim:
        raise ValueError(f"batched affines {tuple(m.shape)} do not match points {tuple(p.shape)}")
    rot = m[..., :d, :d]
    trans = m[..., :d, 3].unsqueeze(-2)
    out = torch.matmul(p, rot.transpose(-1, -2)) + trans  # NaN rows stay NaN
    if is_torch:
        dtype = points.dtype if points.is_floating_point() else torch.float32
        return out.to(device=points.device, dtype=dtype)
    arr = np.asarray(points)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    return out.numpy().astype(dtype, copy=False)


def to_grid(points: Any, image: torch.Tensor) -> Any:
    """Map points from the original index frame to the current grid of the MetaTensor ``image``.

    Uses ``inv(image.affine) @ image.meta["landmark_affine"]``; points (N, D) numpy or torch, NaN rows stay NaN.
    """
    if not isinstance(image, MetaTensor) or LANDMARK_AFFINE not in image.meta:
        raise ValueError(
            f"{_image_name(image)}: the image carries no meta['{LANDMARK_AFFINE}']; run PrepareLandmarksd "
            "right after loading the image"
        )
    la = _affine4(_to_torch64(image.meta[LANDMARK_AFFINE]))
    aff = _affine4(_to_torch64(image.affine))
    return _apply(points, torch.linalg.inv(aff) @ la)


def to_original(points: Any, affine: Any, landmark_affine: Any) -> Any:
    """Map points from a grid with ``affine`` back to the original index frame (``landmark_affine``).

    Accepts numpy or torch, points (N, D) with (4, 4) affines or, after collation, (B, N, D) with (B, 4, 4)
    affines (e.g. ``batch["image"].affine`` and ``batch["image"].meta["landmark_affine"]``).
    Returns the type and float dtype of ``points``.
    """
    aff = _affine4(_to_torch64(affine))
    la = _affine4(_to_torch64(landmark_affine))
    return _apply(points, torch.linalg.inv(la) @ aff)


def _lps_flip(d: int) -> torch.Tensor:
    return torch.tensor(_LPS_TO_RAS[:d], dtype=torch.float64)


def world_lps_to_index(points: Any, affine: Any) -> Any:
    """World points in the ITK/LPS frame (mm, as ITK and 3D Slicer store them) -> index of a MONAI (RAS) affine."""
    p = _to_torch64(points)
    if p.ndim < 2 or p.shape[-1] not in (2, 3):
        raise ValueError(f"expected points of shape (N, D) with D = 2 or 3, got {tuple(p.shape)}")
    ras = p * _lps_flip(p.shape[-1]).to(p.device)
    out = _apply(ras, torch.linalg.inv(_affine4(_to_torch64(affine))))
    return _like(out, points)


def index_to_world_lps(points: Any, affine: Any) -> Any:
    """Index points of a grid with a MONAI (RAS) affine -> world points in the ITK/LPS frame (mm)."""
    p = _to_torch64(points)
    ras = _apply(p, _affine4(_to_torch64(affine)))
    lps = ras * _lps_flip(p.shape[-1]).to(ras.device)
    return _like(lps, points)


def _like(out: torch.Tensor, ref: Any) -> Any:
    if isinstance(ref, torch.Tensor):
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        return out.to(device=ref.device, dtype=dtype)
    arr = np.asarray(ref)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return out.cpu().numpy().astype(dtype, copy=False)


def points_inside(points: np.ndarray, spatial_shape: Sequence[int], tolerance: float = 0.5) -> np.ndarray:
    """Boolean (N,): finite and within ``[-tolerance, size - 1 + tolerance]`` on every axis (pixel centres at integers)."""
    p = np.asarray(points, dtype=np.float64)
    size = np.asarray(spatial_shape, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = (p >= -tolerance) & (p <= size - 1 + tolerance)
    return np.all(ok & np.isfinite(p), axis=-1)


def landmarks_to_array(landmarks: Any, spatial_dims: int, name: str = "landmarks") -> np.ndarray:
    """A datalist landmark list (rows ``[x, y(, z)]`` or ``None``) or an array -> float32 (N, D), NaN = missing.

    A row with any ``None``/NaN coordinate is missing as a whole. Raises naming ``name`` and the landmark
    (1-based, L1...) when a row has the wrong number of coordinates.
    """
    if isinstance(landmarks, torch.Tensor) or (isinstance(landmarks, np.ndarray) and landmarks.dtype != object):
        arr = np.asarray(landmarks.detach().cpu() if isinstance(landmarks, torch.Tensor) else landmarks, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != spatial_dims:
            raise ValueError(f"{name}: expected landmarks of shape (N, {spatial_dims}), got {arr.shape}")
        out = arr.copy()
    else:
        if landmarks is None or isinstance(landmarks, (str, bytes, Mapping)):
            raise ValueError(f"{name}: expected a list of [x, y{', z' if spatial_dims == 3 else ''}] rows, got {type(landmarks).__name__}")
        rows = list(landmarks)
        out = np.full((len(rows), spatial_dims), np.nan)
        for i, row in enumerate(rows):
            if row is None:
                continue
            if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray, torch.Tensor)):
                raise ValueError(f"{name}: landmark L{i + 1} is {row!r}, expected [x, y{', z' if spatial_dims == 3 else ''}] or null")
            vals = list(row.tolist() if isinstance(row, (np.ndarray, torch.Tensor)) else row)
            if len(vals) != spatial_dims:
                raise ValueError(
                    f"{name}: landmark L{i + 1} has {len(vals)} coordinates {vals}, expected {spatial_dims} "
                    f"for a {spatial_dims}D image"
                )
            if any(v is None for v in vals):
                continue
            try:
                out[i] = [float(v) for v in vals]
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name}: landmark L{i + 1} has non-numeric coordinates {vals}") from e
    out[~np.all(np.isfinite(out), axis=1)] = np.nan
    return out.astype(np.float32)


class PrepareLandmarks(Transform):
    """Datalist landmarks -> float32 (N, D) NaN-for-missing array in the index frame of ``image``.

    Args:
        coordinate_space: ``"pixel"`` (indices of the loaded image, x = column) or ``"world"`` (ITK/LPS mm,
            converted with the image affine).
        tolerance: how far (in pixels) a point may lie outside the pixel centres before it is an error.
        on_outside: ``"raise"`` (default) or ``"missing"`` (set such points to NaN).
    """

    def __init__(self, coordinate_space: str = "pixel", tolerance: float = 0.5, on_outside: str = "raise") -> None:
        if coordinate_space not in ("pixel", "world"):
            raise ValueError(f"coordinate_space must be 'pixel' or 'world', got {coordinate_space!r}")
        if on_outside not in ("raise", "missing"):
            raise ValueError(f"on_outside must be 'raise' or 'missing', got {on_outside!r}")
        self.coordinate_space = coordinate_space
        self.tolerance = float(tolerance)
        self.on_outside = on_outside

    def __call__(self, landmarks: Any, image: torch.Tensor) -> np.ndarray:
        name = _image_name(image)
        spatial_shape = tuple(image.shape[1:])
        d = len(spatial_shape)
        if d not in (2, 3):
            raise ValueError(f"{name}: expected a channel-first 2D or 3D image, got shape {tuple(image.shape)}")
        pts = landmarks_to_array(landmarks, d, name=f"{name}")
        if self.coordinate_space == "world":
            affine = image.affine if isinstance(image, MetaTensor) else torch.eye(4, dtype=torch.float64)
            pts = world_lps_to_index(pts, affine).astype(np.float32)
        inside = points_inside(pts, spatial_shape, self.tolerance)
        bad = np.flatnonzero(~inside & np.all(np.isfinite(pts), axis=1))
        if bad.size:
            if self.on_outside == "raise":
                desc = ", ".join(f"L{i + 1} at {[round(float(v), 2) for v in pts[i]]}" for i in bad[:5])
                raise ValueError(
                    f"{name}: {bad.size} landmark(s) outside the image of size {list(spatial_shape)} "
                    f"({self.coordinate_space} coordinates, tolerance {self.tolerance} px): {desc}"
                )
            pts[bad] = np.nan
        return pts


class PrepareLandmarksd(MapTransform):
    """Dictionary version of :class:`PrepareLandmarks`; also records the landmark frame on the image.

    Sets ``image.meta["landmark_affine"]`` (float64 4x4, the current affine) and
    ``image.meta["original_spatial_shape"]``. Run it right after loading (and channel-first); a plain array
    image is wrapped in a MetaTensor with an identity affine. The meta is set even when the landmark key
    is absent (inference, with ``allow_missing_keys=True``) so predictions can be mapped back.
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        coordinate_space: str = "pixel",
        tolerance: float = 0.5,
        on_outside: str = "raise",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.converter = PrepareLandmarks(coordinate_space, tolerance, on_outside)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.ref_key not in d:
            raise KeyError(f"PrepareLandmarksd: reference image key {self.ref_key!r} not in the data ({list(d)})")
        image = d[self.ref_key]
        if not isinstance(image, MetaTensor):
            image = MetaTensor(torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image))
            d[self.ref_key] = image
        image.meta[LANDMARK_AFFINE] = _affine4(_to_torch64(image.affine)).clone()
        image.meta[ORIGINAL_SPATIAL_SHAPE] = np.asarray(image.shape[1:], dtype=np.int64)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], image)
        return d


class LandmarksToGridd(MapTransform):
    """Write the current grid position of the landmarks (float32 (N, D), NaN kept) under ``out_key``."""

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        out_key: str | Sequence[str] = "landmarks_grid",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        out = [out_key] if isinstance(out_key, str) else list(out_key)
        if len(out) != len(self.keys):
            raise ValueError(f"LandmarksToGridd: {len(self.keys)} keys but {len(out)} out_keys")
        self.out_keys = out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.out_keys):
            d[out_key] = np.asarray(to_grid(np.asarray(d[key], dtype=np.float32), d[self.ref_key]), dtype=np.float32)
        return d


PrepareLandmarksD = PrepareLandmarksDict = PrepareLandmarksd
LandmarksToGridD = LandmarksToGridDict = LandmarksToGridd
