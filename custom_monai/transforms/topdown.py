"""MMPose-style "top-down" geometry for whole-image landmark models (the multiresolution HTC, ``SPECS.md`` §3).

* :func:`padded_fit` -- the whole image as the "box", padded by a factor (1.25) around its centre, aspect ratio
  kept, fitted to the network input (MMPose's ``TopDownAffine`` of a whole-image box).
* :class:`RandTopDownAffined` and :func:`topdown_augmentations` -- the paper's training augmentations as a
  preset: random whole-image flip, Gaussian-distributed scale and rotation, uniform translation, photometric
  distortion.

Everything is built from MONAI transforms that update the MetaTensor affine, so landmarks (kept in the
original frame) follow the image through :func:`custom_monai.transforms.landmarks.to_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Affine,
    MapTransform,
    Randomizable,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
    Transform,
)

from .spatial import ResizeLongestPadd

__all__ = ["RandTopDownAffined", "augmentation_preset", "padded_fit", "topdown_augmentations"]


def padded_fit(
    keys: KeysCollection,
    spatial_size: Sequence[int],
    padding: float = 1.25,
    mode: str = "bilinear",
    anti_aliasing: bool = True,
) -> list[Transform]:
    """Fit the whole image, aspect ratio kept, into ``spatial_size / padding`` and centre it in ``spatial_size``.

    The image then fills ``1 / padding`` of the limiting axis with a zero margin around it, as MMPose's top-down
    pipeline does with a whole-image box enlarged by ``padding`` (1.25) -- room for the augmentations' shifts
    and rotations. ``padding = 1`` is a plain aspect-preserving fit (centred).
    """
    if padding < 1.0:
        raise ValueError(f"padded_fit: padding must be >= 1, got {padding}")
    inner = [max(1, int(math.floor(int(s) / float(padding)))) for s in spatial_size]
    return [
        ResizeLongestPadd(keys, inner, mode=mode, anti_aliasing=anti_aliasing, pad_method="symmetric"),
        SpatialPadd(keys, [int(s) for s in spatial_size], method="symmetric"),
    ]


class RandTopDownAffined(Randomizable, MapTransform):
    """Random scale, rotation and translation with MMPose top-down distributions (2D), one MONAI ``Affine``.

    * scale factor ``clip(N(1, scale_sd), 1 - scale_sd, 1 + scale_sd)`` (> 1 zooms out, as an enlarged box);
    * rotation ``clip(N(0, rotate_sd), -2 rotate_sd, 2 rotate_sd)`` degrees with probability ``rotate_prob``;
    * translation ``U(-translate, translate) * size`` per axis with probability ``translate_prob``.

    Output size = input size; zero padding outside (``padding_mode``); the affine records the warp.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        scale_sd: float = 0.5,
        rotate_sd: float = 40.0,
        rotate_prob: float = 0.6,
        translate: float = 0.15,
        translate_prob: float = 1.0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.scale_sd, self.rotate_sd, self.rotate_prob = float(scale_sd), float(rotate_sd), float(rotate_prob)
        self.translate, self.translate_prob = float(translate), float(translate_prob)
        self.mode, self.padding_mode = mode, padding_mode
        self._params: tuple[float, float, tuple[float, float]] = (1.0, 0.0, (0.0, 0.0))
        self._size: tuple[int, int] = (1, 1)

    def randomize(self, data: Any = None) -> None:
        sd = self.scale_sd
        scale = float(np.clip(self.R.normal(1.0, sd), 1.0 - sd, 1.0 + sd)) if sd > 0 else 1.0
        scale = max(scale, 1e-3)
        rot = 0.0
        if self.rotate_sd > 0 and self.R.rand() < self.rotate_prob:
            rot = float(np.clip(self.R.normal(0.0, self.rotate_sd), -2 * self.rotate_sd, 2 * self.rotate_sd))
        shift = (0.0, 0.0)
        if self.translate > 0 and self.R.rand() < self.translate_prob:
            u = self.R.uniform(-self.translate, self.translate, 2)
            shift = (float(u[0] * self._size[0]), float(u[1] * self._size[1]))
        self._params = (scale, rot, shift)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        self._size = tuple(int(s) for s in d[first].shape[1:3])  # type: ignore[assignment]
        self.randomize()
        scale, rot, shift = self._params
        if scale == 1.0 and rot == 0.0 and shift == (0.0, 0.0):
            return d
        affine = Affine(
            rotate_params=math.radians(rot),
            scale_params=(scale, scale),
            translate_params=shift,
            mode=self.mode,
            padding_mode=self.padding_mode,
            image_only=True,
        )
        for key in self.key_iterator(d):
            d[key] = affine(d[key])
        return d


def topdown_augmentations(
    keys: KeysCollection = "image",
    flip_prob: float = 0.4,
    scale_sd: float = 0.5,
    rotate_sd: float = 40.0,
    rotate_prob: float = 0.6,
    translate: float = 0.15,
    brightness: float = 32.0 / 255.0,
    contrast: float = 0.5,
    photometric_prob: float = 0.5,
) -> list[Transform]:
    """The HTC paper's training augmentations (``SPECS.md`` §3) for grey images scaled to [0, 1].

    Whole-image flip along x (``flip_prob``; the landmarks keep their identity: no flip pairs), MMPose's
    ``PhotometricDistortion`` reduced to what acts on a grey image (brightness ``+-32/255`` and contrast
    ``x[0.5, 1.5]``, each with ``photometric_prob``; saturation, hue and channel swap do nothing on replicated
    grey channels), then :class:`RandTopDownAffined` (scale ``N(1, 0.5)`` clipped to [0.5, 1.5], rotation
    ``N(0, 40 deg)`` clipped to +-80 deg with p 0.6, translation +-0.15 of the size).
    """
    keys_t = (keys,) if isinstance(keys, str) else tuple(keys)
    ops: list[Transform] = []
    if flip_prob > 0:
        ops.append(RandFlipd(keys_t, prob=flip_prob, spatial_axis=0))
    if photometric_prob > 0:
        ops.append(RandShiftIntensityd(keys_t[0], offsets=brightness, prob=photometric_prob))
        ops.append(RandScaleIntensityd(keys_t[0], factors=contrast, prob=photometric_prob))
    ops.append(RandTopDownAffined(keys_t, scale_sd, rotate_sd, rotate_prob, translate))
    return ops


def augmentation_preset(
    name: str,
    keys: KeysCollection = "image",
    spatial_size: Sequence[int] | None = None,
    rotate: float = 10.0,
    scale: float = 0.1,
    translate: float = 0.05,
    prob: float = 0.5,
) -> list[Transform]:
    """A bundle's ``augmentation`` setting: ``"paper"`` (:func:`topdown_augmentations`), ``"moderate"`` (the project's
    :func:`custom_monai.transforms.landmark_augmentations` with ``rotate``/``scale``/``translate``/``prob``) or
    ``"none"``."""
    from .spatial import landmark_augmentations

    if name == "paper":
        return topdown_augmentations(keys)
    if name == "moderate":
        return landmark_augmentations(
            keys, 2, rotate=rotate, scale=scale, translate=translate, spatial_size=spatial_size, prob=prob
        )
    if name == "none":
        return []
    raise ValueError(f"augmentation must be 'paper', 'moderate' or 'none', got {name!r}")
