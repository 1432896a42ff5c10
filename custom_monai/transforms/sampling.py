"""Draw several random samples from one (cached) item, e.g. several patches per image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.transforms import Randomizable, Transform

__all__ = ["MultiSample"]


class MultiSample(Randomizable, Transform):
    """Apply a random dictionary transform ``num_samples`` times to the same input; return the list.

    MONAI's ``Compose`` applies the following transforms to each sample and ``list_data_collate``
    flattens the lists into the batch, as for ``RandCropByPosNegLabeld(num_samples=...)``. Used for
    local-stage patches: one decoded, cached image gives ``num_samples`` patches around random landmarks.

    Args:
        transform: a (random) dictionary transform, e.g. ``RandCropAroundLandmarkd``.
        num_samples: samples per input.
    """

    def __init__(self, transform: Transform, num_samples: int) -> None:
        if int(num_samples) < 1:
            raise ValueError(f"MultiSample: num_samples must be >= 1, got {num_samples}")
        self.transform = transform
        self.num_samples = int(num_samples)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiSample:
        super().set_random_state(seed, state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        return [self.transform(dict(data)) for _ in range(self.num_samples)]
