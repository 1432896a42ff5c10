"""Intensity transforms for landmark images: single-channel conversion and an intensity augmentation preset."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    MapTransform,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandHistogramShiftd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Transform,
)
from monai.utils import convert_to_dst_type

__all__ = [
    "LUMA_WEIGHTS",
    "EnsureGrey",
    "EnsureGreyd",
    "EnsureGreyD",
    "EnsureGreyDict",
    "ToGrey",
    "ToGreyd",
    "intensity_augmentations",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B (the same as PIL's ``convert("L")``)."""


class EnsureGrey(Transform):
    """Channel-first image with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels -> 1 channel float32.

    RGB becomes BT.601 luma; alpha is dropped. Meta data (affine, landmark frame) is kept.
    """

    def __call__(self, img: Any) -> Any:
        t = torch.as_tensor(img)
        if t.ndim < 3:
            raise ValueError(
                f"EnsureGrey expects a channel-first image (C, *spatial), got shape {tuple(t.shape)}; "
                "load with ensure_channel_first=True or add EnsureChannelFirstd"
            )
        c = t.shape[0]
        if c in (1, 2):
            out = t[:1].to(torch.float32)
        elif c in (3, 4):
            w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=t.device).reshape(3, *([1] * (t.ndim - 1)))
            out = (t[:3].to(torch.float32) * w).sum(dim=0, keepdim=True)
        else:
            name = getattr(img, "meta", {}).get("filename_or_obj", "image")
            raise ValueError(
                f"{name}: EnsureGrey expects 1-4 channels first, got {c} channels in shape {tuple(t.shape)} "
                "(is the image channel-last? use EnsureChannelFirstd)"
            )
        return convert_to_dst_type(out, img, dtype=torch.float32)[0] if isinstance(img, torch.Tensor) else out.numpy()


class EnsureGreyd(MapTransform):
    """Dictionary version of :class:`EnsureGrey`."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureGrey()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


ToGrey = EnsureGrey
ToGreyd = EnsureGreyD = EnsureGreyDict = EnsureGreyd


def intensity_augmentations(
    keys: KeysCollection = "image",
    prob: float = 0.5,
    scale: float = 0.1,
    shift: float = 0.1,
    noise_std: float = 0.02,
    gamma: tuple[float, float] = (0.7, 1.5),
    histogram_shift: bool = True,
) -> list[Transform]:
    """Random intensity augmentations from MONAI for images scaled to about [0, 1].

    Each op is applied independently with probability ``prob``: multiply by ``1 + U(-scale, scale)``, add
    ``U(-shift, shift)``, Gaussian noise (std up to ``noise_std``), gamma in ``gamma``, and a random
    histogram shift. A value of 0 (or ``histogram_shift=False``) leaves an op out. Intensity ops do not
    touch the geometry, so landmarks need no update.
    """
    ops: list[Transform] = []
    if scale > 0:
        ops.append(RandScaleIntensityd(keys, factors=scale, prob=prob))
    if shift > 0:
        ops.append(RandShiftIntensityd(keys, offsets=shift, prob=prob))
    if noise_std > 0:
        ops.append(RandGaussianNoised(keys, prob=prob, mean=0.0, std=noise_std))
    if gamma is not None and tuple(gamma) != (1.0, 1.0):
        ops.append(RandAdjustContrastd(keys, prob=prob, gamma=tuple(gamma)))
    if histogram_shift:
        ops.append(RandHistogramShiftd(keys, num_control_points=(5, 10), prob=prob))
    return ops
