"""Batch preparation for landmark trainers: one input, several targets (e.g. heatmap + mask)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["PrepareLandmarkBatch"]


class PrepareLandmarkBatch(PrepareBatch):
    """Return ``(batch[image_key], targets)`` on ``device`` for MONAI's ``SupervisedTrainer``.

    With one target key the target is that tensor; with several it is a tuple in the given order,
    which a loss such as :class:`custom_monai.losses.TupleTargetLoss` unpacks. This is how a landmark
    mask (missing annotations) reaches the loss without a custom trainer.

    Args:
        image_key: input key (e.g. ``"image"`` or ``"image_local"``).
        target_keys: one key or several, e.g. ``("heatmap", "landmark_mask")``.
    """

    def __init__(self, image_key: str = "image", target_keys: str | Sequence[str] = "label") -> None:
        self.image_key = image_key
        self.target_keys = [target_keys] if isinstance(target_keys, str) else list(target_keys)

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, Any]:
        def _to(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                x = torch.as_tensor(x)
            return x.to(device=device, non_blocking=non_blocking, **kwargs)

        image = _to(batchdata[self.image_key])
        targets = tuple(_to(batchdata[k]) for k in self.target_keys)
        return image, targets[0] if len(targets) == 1 else targets
