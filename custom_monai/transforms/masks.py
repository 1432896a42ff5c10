"""Which landmarks are annotated: the mask that keeps missing annotations out of losses."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["PresenceMaskd"]


class PresenceMaskd(MapTransform):
    """``out_key`` = float32 (N,): 1 where the landmark is annotated (finite), 0 where it is missing.

    Unlike the mask of ``LandmarkHeatmapd`` (present *and* inside the grid), this one keeps landmarks
    that lie outside a patch: for patch training (Zhong et al.'s local stage) their all-background
    channel is a true negative the network must learn, not a missing label.
    """

    def __init__(self, keys: KeysCollection = "landmarks", out_key: str = "landmark_mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.out_key = out_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.out_key] = np.all(np.isfinite(np.asarray(d[key], dtype=np.float32)), axis=-1).astype(np.float32)
        return d
