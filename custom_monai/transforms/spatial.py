"""Point-aware geometry: resize-with-pad, fixed crop boxes, crops around landmarks, augmentation presets.

All of them are built from MONAI transforms that update the MetaTensor affine, so landmarks (kept in the
original index frame) follow the image through :func:`~custom_monai.transforms.landmarks.to_grid` with no
extra code, and predictions go back with :func:`~custom_monai.transforms.landmarks.to_original`.
They are also invertible with MONAI's ``Invertd``.

Note on ``Resize``/``Zoom`` modes: MONAI's default ``mode="area"`` (adaptive average pooling) is not a
resampling at the positions the updated affine describes: with non-integer factors it shifts content by up
to ~0.4 px, and when upsampling it acts as nearest neighbour. Use ``"bilinear"``/``"bicubic"`` (with
``anti_aliasing`` when shrinking) for landmark work, as :class:`ResizeLongestPad` does.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Crop,
    Cropd,
    InvertibleTransform,
    MapTransform,
    Pad,
    RandAffined,
    Randomizable,
    RandFlipd,
    Resize,
    SpatialCrop,
    SpatialPad,
    Transform,
)
from monai.utils import ensure_tuple_rep

from .intensity import intensity_augmentations
from .landmarks import _image_name, points_inside, to_grid
from .rescale import gaussian_smooth

__all__ = [
    "ResizeLongestPad",
    "ResizeLongestPadd",
    "ResizeLongestPadD",
    "ResizeLongestPadDict",
    "CropBox",
    "CropBoxd",
    "CropBoxD",
    "CropBoxDict",
    "CropTopRows",
    "CropTopRowsd",
    "CropTopRowsD",
    "CropTopRowsDict",
    "CropAroundPoint",
    "CropAroundPointd",
    "CropAroundPointD",
    "CropAroundPointDict",
    "RandCropAroundLandmarkd",
    "RandCropAroundLandmarkD",
    "RandCropAroundLandmarkDict",
    "RandLandmarkBoxCropd",
    "landmark_augmentations",
]


def _spatial_shape(img: Any) -> tuple[int, ...]:
    if isinstance(img, MetaTensor):
        return tuple(int(s) for s in img.peek_pending_shape())
    return tuple(int(s) for s in img.shape[1:])


class ResizeLongestPad(InvertibleTransform, Transform):
    """Keep the aspect ratio: resize so the image fits inside ``spatial_size``, then pad it to ``spatial_size``.

    Uses MONAI ``Resize`` and ``SpatialPad`` so the affine records both (landmarks follow); invertible.

    Args:
        spatial_size: target size (one value per spatial axis, or one int for all).
        mode: interpolation (``"bilinear"`` default; avoid ``"area"``, see the module note).
        anti_aliasing: Gaussian pre-smoothing when shrinking (MONAI ``Resize`` option; never for ``"nearest"``).
        pad_method: ``"end"`` (image at the origin corner, padding after it) or ``"symmetric"`` (centred).
        pad_mode, pad_kwargs: padding mode and its options (e.g. ``value=0``) for ``SpatialPad``.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | int,
        mode: str = "bilinear",
        anti_aliasing: bool = True,
        pad_method: str = "end",
        pad_mode: str = "constant",
        **pad_kwargs: Any,
    ) -> None:
        self.spatial_size = spatial_size
        self.mode = mode
        self.anti_aliasing = anti_aliasing
        self.padder = SpatialPad(spatial_size, method=pad_method, mode=pad_mode, **pad_kwargs)

    def fitted_size(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The resized size (before padding) for an image of ``spatial_shape``."""
        target = ensure_tuple_rep(self.spatial_size, len(spatial_shape))
        if any(int(t) < 1 for t in target):
            raise ValueError(f"ResizeLongestPad: spatial_size must be positive, got {self.spatial_size}")
        scale = min(float(t) / float(s) for t, s in zip(target, spatial_shape))
        return tuple(min(int(t), max(1, int(round(s * scale)))) for t, s in zip(target, spatial_shape))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        shape = _spatial_shape(img)
        new = self.fitted_size(shape)
        shrink = any(n < s for n, s in zip(new, shape))
        smooth = self.anti_aliasing and shrink and not str(self.mode).startswith("nearest")  # keep label values
        resizer = Resize(new, mode=self.mode, anti_aliasing=False)
        with resizer.trace_transform(False):  # updates the affine; the op is recorded below under this transform
            out = resizer(gaussian_smooth(img, [max(0.0, (s / n - 1.0) / 2.0) for s, n in zip(shape, new)]) if smooth else img)
        self.push_transform(out, orig_size=shape, extra_info={"resized_size": new})
        return self.padder(out)

    def inverse(self, img: torch.Tensor) -> torch.Tensor:
        out = self.padder.inverse(img)
        info = self.pop_transform(out)
        resizer = Resize(info["orig_size"], mode=self.mode)
        with resizer.trace_transform(False):
            return resizer(out)


class ResizeLongestPadd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`ResizeLongestPad` (same box for every key, ``mode`` per key)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        mode: str | Sequence[str] = "bilinear",
        anti_aliasing: bool = True,
        pad_method: str = "end",
        pad_mode: str = "constant",
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        self.resizers = {
            k: ResizeLongestPad(spatial_size, m, anti_aliasing, pad_method, pad_mode, **pad_kwargs)
            for k, m in zip(self.keys, modes)
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key].inverse(d[key])
        return d


class CropBox(Crop):
    """Crop a fixed box ``[roi_start, roi_end)`` of the current grid (e.g. right after loading).

    Unlike ``SpatialCrop`` it refuses a box that does not lie inside the image (naming the file), so a
    dataset recipe cannot silently crop the wrong region.
    """

    def __init__(self, roi_start: Sequence[int], roi_end: Sequence[int], lazy: bool = False) -> None:
        super().__init__(lazy)
        self.roi_start = [int(v) for v in roi_start]
        self.roi_end = [int(v) for v in roi_end]
        if len(self.roi_start) != len(self.roi_end) or any(e <= s for s, e in zip(self.roi_start, self.roi_end)):
            raise ValueError(f"CropBox: need roi_end > roi_start per axis, got {self.roi_start} -> {self.roi_end}")

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        shape = _spatial_shape(img)
        if len(shape) != len(self.roi_start) or any(
            s < 0 or e > n for s, e, n in zip(self.roi_start, self.roi_end, shape)
        ):
            raise ValueError(
                f"{_image_name(img)}: crop box {self.roi_start} -> {self.roi_end} is not inside the image of "
                f"spatial size {list(shape)}"
            )
        slices = tuple(slice(s, e) for s, e in zip(self.roi_start, self.roi_end))
        return super().__call__(img, slices, lazy=lazy)


class CropBoxd(Cropd):
    """Dictionary version of :class:`CropBox`."""

    def __init__(
        self, keys: KeysCollection, roi_start: Sequence[int], roi_end: Sequence[int], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, CropBox(roi_start, roi_end), allow_missing_keys)


class CropTopRows(Crop):
    """Drop the first ``rows`` rows of a 2D image (axis 1 = y with MONAI's (x, y) indexing).

    E.g. ISBI 2015: ``CropTopRows(465)`` turns 1935x2400 into 1935x1935 (points: y - 465, via the affine).
    """

    def __init__(self, rows: int, axis: int = 1, lazy: bool = False) -> None:
        super().__init__(lazy)
        if int(rows) < 0:
            raise ValueError(f"CropTopRows: rows must be >= 0, got {rows}")
        self.rows = int(rows)
        self.axis = int(axis)

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        shape = _spatial_shape(img)
        if not 0 <= self.axis < len(shape) or self.rows >= shape[self.axis]:
            raise ValueError(
                f"{_image_name(img)}: cannot drop {self.rows} rows along spatial axis {self.axis} of an image of "
                f"spatial size {list(shape)}"
            )
        slices = [slice(None)] * len(shape)
        slices[self.axis] = slice(self.rows, None)
        return super().__call__(img, tuple(slices), lazy=lazy)


class CropTopRowsd(Cropd):
    """Dictionary version of :class:`CropTopRows`."""

    def __init__(self, keys: KeysCollection, rows: int, axis: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, CropTopRows(rows, axis), allow_missing_keys)


class CropAroundPoint(InvertibleTransform, Transform):
    """Crop ``roi_size`` so that grid point ``center`` (rounded) sits at index ``roi_size // 2``; pad where the
    box leaves the image. Crop then pad are MONAI ``Crop``/``Pad`` (affine tracked, invertible)."""

    def __init__(self, roi_size: Sequence[int] | int, mode: str = "constant", **pad_kwargs: Any) -> None:
        self.roi_size = roi_size
        self.cropper = Crop()
        self.padder = Pad(mode=mode, **pad_kwargs)

    def box(self, center: Sequence[float], spatial_shape: Sequence[int]) -> tuple[list[int], list[int]]:
        """Start and end (exclusive) of the box on the current grid, before clipping to the image."""
        size = [int(s) for s in ensure_tuple_rep(self.roi_size, len(spatial_shape))]
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (len(spatial_shape),) or not np.all(np.isfinite(c)):
            raise ValueError(f"CropAroundPoint: need a finite centre with {len(spatial_shape)} values, got {center}")
        start = [int(math.floor(v + 0.5)) - s // 2 for v, s in zip(c, size)]
        return start, [a + s for a, s in zip(start, size)]

    def __call__(self, img: torch.Tensor, center: Sequence[float]) -> torch.Tensor:
        shape = _spatial_shape(img)
        start, end = self.box(center, shape)
        lo = [min(max(a, 0), n) for a, n in zip(start, shape)]
        hi = [min(max(b, 0), n) for b, n in zip(end, shape)]
        out = self.cropper(img, tuple(slice(a, b) for a, b in zip(lo, hi)))
        to_pad = [(0, 0)] + [(a_c - a, b - b_c) for a, b, a_c, b_c in zip(start, end, lo, hi)]
        return self.padder(out, to_pad=to_pad)

    def inverse(self, img: torch.Tensor) -> torch.Tensor:
        return self.cropper.inverse(self.padder.inverse(img))


class CropAroundPointd(MapTransform, InvertibleTransform):
    """Crop every key around one landmark's current grid position (deterministic; e.g. inference).

    The landmark is ``data[landmarks_key][index]`` (original frame, as prepared by ``PrepareLandmarksd``;
    at inference it can hold a coarse prediction), mapped with ``to_grid`` on ``ref_key`` (default: the
    first key). The index is stored under ``landmark_index_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        landmarks_key: str = "landmarks",
        index: int = 0,
        ref_key: str | None = None,
        landmark_index_key: str = "landmark_index",
        mode: str = "constant",
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.landmarks_key = landmarks_key
        self.index = index
        self.ref_key = ref_key if ref_key is not None else self.keys[0]
        self.landmark_index_key = landmark_index_key
        self.croppers = {k: CropAroundPoint(roi_size, mode, **pad_kwargs) for k in self.keys}

    def _grid_points(self, d: Mapping[Hashable, Any]) -> np.ndarray:
        return np.asarray(to_grid(np.asarray(d[self.landmarks_key], dtype=np.float32), d[self.ref_key]))

    def _crop(self, d: dict, grid: np.ndarray, index: int, offset: np.ndarray | None = None) -> dict:
        if not 0 <= index < len(grid) or not np.all(np.isfinite(grid[index])):
            raise ValueError(
                f"{_image_name(d[self.ref_key])}: cannot crop around landmark L{index + 1}: it is missing or does "
                f"not exist ({len(grid)} landmarks)"
            )
        center = grid[index] + (0 if offset is None else offset)
        for key in self.key_iterator(d):
            d[key] = self.croppers[key](d[key], center)
        d[self.landmark_index_key] = int(index)
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        return self._crop(d, self._grid_points(d), self.index)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.croppers[key].inverse(d[key])
        return d


class RandCropAroundLandmarkd(Randomizable, CropAroundPointd):
    """Random patch around a landmark: centre = a randomly chosen present landmark's current grid position
    (or ``index`` if given) + a uniform offset in ``[-max_offset, max_offset]`` per axis; pads at borders.

    Landmarks inside the current grid are preferred; if none is, any present one is used. The chosen
    landmark's index is stored under ``landmark_index_key`` (e.g. to select the target channel).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        max_offset: Sequence[float] | float = 0.0,
        landmarks_key: str = "landmarks",
        index: int | None = None,
        ref_key: str | None = None,
        landmark_index_key: str = "landmark_index",
        mode: str = "constant",
        allow_missing_keys: bool = False,
        **pad_kwargs: Any,
    ) -> None:
        super().__init__(
            keys, roi_size, landmarks_key, 0 if index is None else index, ref_key, landmark_index_key, mode,
            allow_missing_keys, **pad_kwargs,
        )
        self.random_index = index is None
        self.max_offset = max_offset
        self._index = 0
        self._offset: np.ndarray | None = None

    def randomize(self, grid: np.ndarray, spatial_shape: Sequence[int]) -> None:
        d = grid.shape[-1]
        if self.random_index:
            candidates = np.flatnonzero(points_inside(grid, spatial_shape, 0.5))
            if candidates.size == 0:
                candidates = np.flatnonzero(np.all(np.isfinite(grid), axis=1))
            self._index = int(self.R.choice(candidates)) if candidates.size else -1
        else:
            self._index = self.index
        m = np.asarray(ensure_tuple_rep(self.max_offset, d), dtype=np.float64)
        self._offset = self.R.uniform(-m, m)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        grid = self._grid_points(d)
        self.randomize(grid, _spatial_shape(d[self.ref_key]))
        if self._index < 0:
            raise ValueError(f"{_image_name(d[self.ref_key])}: no present landmark to crop around")
        return self._crop(d, grid, self._index, self._offset)


class RandLandmarkBoxCropd(Randomizable, MapTransform):
    """Random crop that keeps every landmark (D-CeLR's training crop, SPECS §4).

    Per axis, with ``lo``/``hi`` the smallest/largest present landmark coordinate on the current grid, the box
    start is drawn uniformly from ``[0, lo - margin)`` and the end from ``(hi + margin, size]`` (integers;
    a side without room keeps the image border). Applied with probability ``prob``; MONAI's ``SpatialCrop``
    records it in the affine, so the landmarks follow. Items without a present landmark are left as they are.
    Follow it with the same ``Resized`` as the preprocessing, so that the network sees crops of every extent at
    its input size (the second inference pass feeds it such a crop).

    Args:
        keys: image-like keys cropped with the same box.
        margin: minimum distance in pixels of the current grid between a landmark and the box border (10).
        prob: probability of cropping.
        landmarks_key: original-frame landmarks (``PrepareLandmarksd``); ``ref_key`` (default: first key) maps
            them to the current grid.
    """

    def __init__(
        self,
        keys: KeysCollection,
        margin: float = 10.0,
        prob: float = 1.0,
        landmarks_key: str = "landmarks",
        ref_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.margin = float(margin)
        self.prob = float(prob)
        self.landmarks_key = landmarks_key
        self.ref_key = ref_key if ref_key is not None else self.keys[0]
        self._do = False

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.random_sample() < self.prob

    def box(self, grid: np.ndarray, spatial_shape: Sequence[int]) -> tuple[list[int], list[int]] | None:
        """A random ``(start, end)`` box for grid points ``(N, D)``, or ``None`` (no crop this time)."""
        self.randomize()
        finite = np.all(np.isfinite(grid), axis=1)
        if not self._do or not finite.any():
            return None
        lo, hi = grid[finite].min(axis=0), grid[finite].max(axis=0)
        start, end = [], []
        for a, n in enumerate(spatial_shape):
            s_max = int(math.floor(lo[a] - self.margin))  # exclusive upper bound of the start
            e_min = int(math.ceil(hi[a] + self.margin)) + 1  # inclusive lower bound of the end
            start.append(int(self.R.randint(0, s_max)) if s_max > 0 else 0)
            end.append(int(self.R.randint(e_min, n + 1)) if e_min <= n else int(n))
        return start, end

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.ref_key]
        grid = np.asarray(to_grid(np.asarray(d[self.landmarks_key], dtype=np.float32), ref), dtype=np.float64)
        box = self.box(grid, _spatial_shape(ref))
        if box is None:
            return d
        cropper = SpatialCrop(roi_start=box[0], roi_end=box[1])
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        return d


def landmark_augmentations(
    keys: KeysCollection = "image",
    spatial_dims: int = 2,
    rotate: float = 15.0,
    scale: float = 0.1,
    translate: float = 0.05,
    spatial_size: Sequence[int] | None = None,
    flip: bool = False,
    flip_axis: int = 0,
    intensity: bool = True,
    prob: float = 0.5,
    mode: str | Sequence[str] = "bilinear",
    padding_mode: str = "zeros",
    intensity_keys: KeysCollection | None = None,
) -> list[Transform]:
    """A moderate augmentation preset built from MONAI transforms (all move the points via the affine).

    Args:
        keys: the image-like keys to transform geometrically (landmarks follow through the affine).
        rotate: maximum rotation in degrees (about each axis in 3D).
        scale: zoom factor range ``1 +- scale``.
        translate: maximum shift as a fraction of ``spatial_size`` (the image size at this point of the
            pipeline; required when ``translate > 0``).
        flip: random flip along ``flip_axis`` (0 = x = left-right). Off by default: a flipped cephalogram is
            a mirrored face; the points still map correctly.
        intensity: append :func:`~custom_monai.transforms.intensity.intensity_augmentations` on
            ``intensity_keys`` (default: the first key), for intensities in about [0, 1].
        prob: probability of the affine, of the flip and of each intensity op.
        padding_mode: ``grid_sample`` padding; ``"zeros"`` avoids MONAI's default mirrored anatomy.
    """
    keys_t = (keys,) if isinstance(keys, str) else tuple(keys)
    ops: list[Transform] = []
    if translate > 0 and spatial_size is None:
        raise ValueError("landmark_augmentations: translate is a fraction of the image size; pass spatial_size")
    if rotate > 0 or scale > 0 or translate > 0:
        n_rot = 1 if spatial_dims == 2 else 3
        ops.append(
            RandAffined(
                keys_t,
                prob=prob,
                rotate_range=(math.radians(rotate),) * n_rot if rotate > 0 else None,
                scale_range=(scale,) * spatial_dims if scale > 0 else None,
                translate_range=tuple(translate * float(s) for s in ensure_tuple_rep(spatial_size, spatial_dims))
                if translate > 0
                else None,
                mode=mode,
                padding_mode=padding_mode,
            )
        )
    if flip:
        ops.append(RandFlipd(keys_t, prob=prob, spatial_axis=flip_axis))
    if intensity:
        ops.extend(intensity_augmentations(intensity_keys if intensity_keys is not None else keys_t[0], prob=prob))
    return ops


ResizeLongestPadD = ResizeLongestPadDict = ResizeLongestPadd
CropBoxD = CropBoxDict = CropBoxd
CropTopRowsD = CropTopRowsDict = CropTopRowsd
CropAroundPointD = CropAroundPointDict = CropAroundPointd
RandCropAroundLandmarkD = RandCropAroundLandmarkDict = RandCropAroundLandmarkd
