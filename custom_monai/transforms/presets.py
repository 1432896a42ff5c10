"""Transform chains shared by every bundle, so that no bundle config repeats a pipeline."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform, ScaleIntensityRangePercentilesd, SqueezeDim, Transform

from .intensity import EnsureGreyd
from .landmarks import PrepareLandmarksd
from .spatial import CropBoxd

__all__ = ["SpacingArrayd", "SqueezeSpatiald", "landmark_loading"]


class SpacingArrayd(MapTransform):
    """Make ``spacing`` a float64 (D,) array, NaN when unknown, so batches collate and metrics fall back to px.

    Args:
        keys: the spacing key(s).
        ref_key: image whose number of spatial axes gives D.
        from_affine: when no spacing is given, take it from the image affine (volumes in world mm; not for
            PNG/BMP files, whose affine is the identity and says nothing about millimetres).
    """

    def __init__(
        self, keys: KeysCollection = "spacing", ref_key: str = "image", from_affine: bool = False, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.from_affine = from_affine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        dims = len(image.shape) - 1
        for key in self.keys:
            value = d.get(key)
            if value is None and self.from_affine and hasattr(image, "affine"):
                value = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:dims, :dims], axis=0)
            arr = np.full(dims, np.nan) if value is None else np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.shape != (dims,):
                raise ValueError(f"{key} {arr.tolist()} does not have {dims} values (one per spatial axis)")
            d[key] = arr
        return d


class SqueezeSpatiald(MapTransform):
    """Drop trailing singleton spatial axes beyond ``spatial_dims`` (a 2D MHA often loads as (1, W, H, 1)).

    Uses MONAI ``SqueezeDim``, which also drops the axis from the affine, so points keep their frame.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            while img.ndim - 1 > self.spatial_dims and img.shape[-1] == 1:
                img = SqueezeDim(dim=-1)(img)
            if img.ndim - 1 != self.spatial_dims:
                raise ValueError(
                    f"{getattr(img, 'meta', {}).get('filename_or_obj', key)}: expected a {self.spatial_dims}D image, "
                    f"got spatial shape {list(img.shape[1:])}"
                )
            d[key] = img
        return d


def landmark_loading(
    coordinate_space: str = "pixel",
    crop_box: Sequence[Sequence[int]] | None = None,
    labelled: bool = True,
    image_key: str = "image",
    landmarks_key: str = "landmarks",
    grey: bool = True,
    normalize: bool = True,
    spatial_dims: int = 2,
) -> list[Transform]:
    """Load an image and its landmarks into the project's frame conventions.

    ``LoadImaged`` (MONAI readers: (x, y[, z]) indexing, MetaTensor affine) -> single grey channel ->
    ``PrepareLandmarksd`` (NaN for missing, world LPS -> index, records ``landmark_affine``) ->
    optional fixed crop box (a dataset recipe such as ISBI's top 465 rows: ``[[0, 465], [1935, 2400]]``)
    -> robust intensity scaling to [0, 1] (0.5-99.5 percentiles, so that labels burnt into the film or
    a bright ruler do not squash the anatomy).

    Args:
        coordinate_space: the datalist's ``coordinate_space`` (``"pixel"`` or ``"world"``).
        crop_box: ``[start, end]`` in original pixels, or ``None``.
        labelled: ``False`` for inference on images without landmarks.
        grey: convert to one channel.
        normalize: scale intensities to [0, 1].
        spatial_dims: 2 or 3; extra trailing singleton axes are dropped.
    """
    ops: list[Transform] = [
        LoadImaged(image_key, image_only=True, ensure_channel_first=True),
        SqueezeSpatiald(image_key, spatial_dims),
    ]
    if grey:
        ops.append(EnsureGreyd(image_key))
    ops.append(
        PrepareLandmarksd(landmarks_key, ref_key=image_key, coordinate_space=coordinate_space, allow_missing_keys=not labelled)
    )
    ops.append(SpacingArrayd("spacing", ref_key=image_key, from_affine=coordinate_space == "world"))
    if crop_box is not None:
        ops.append(CropBoxd(image_key, roi_start=crop_box[0], roi_end=crop_box[1]))
    if normalize:
        ops.append(ScaleIntensityRangePercentilesd(image_key, lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True))
    return ops
