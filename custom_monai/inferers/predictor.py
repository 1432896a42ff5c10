"""Predictors: turn a batch into landmark points in the original image frame.

A predictor is what differs between methods at evaluation/inference time. Each subclass implements
:meth:`LandmarkPredictor.predict_grid`, which returns points on the grid of one image key of the
batch; the base class maps them back to the original image (undoing every resize, crop and pad
recorded in the MetaTensor affines), so that metrics and writers never see a resized frame.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from custom_monai.transforms.landmarks import to_original

__all__ = ["LandmarkPredictor", "clip_to_image", "grid_to_original", "original_to_grid"]


def _batch_affines(image: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    affine = torch.as_tensor(image.affine).cpu()
    landmark_affine = torch.as_tensor(image.meta["landmark_affine"]).cpu()
    if affine.ndim == 2:
        affine = affine[None].expand(batch_size, -1, -1)
    if landmark_affine.ndim == 2:
        landmark_affine = landmark_affine[None].expand(batch_size, -1, -1)
    return affine, landmark_affine


def grid_to_original(points: torch.Tensor, image: Any) -> torch.Tensor:
    """Map (B, N, D) points on the grid of the collated MetaTensor ``image`` to the original frame."""
    affine, landmark_affine = _batch_affines(image, points.shape[0])
    return torch.as_tensor(to_original(points.detach().float().cpu(), affine, landmark_affine), dtype=torch.float32)


def original_to_grid(points: torch.Tensor, image: Any) -> torch.Tensor:
    """Map (B, N, D) points from the original frame to the grid of the collated MetaTensor ``image``."""
    affine, landmark_affine = _batch_affines(image, points.shape[0])
    # to_original(p, A, L) = inv(L) @ A @ p, so swapping the affines gives inv(A) @ L @ p
    return torch.as_tensor(to_original(points.detach().float().cpu(), landmark_affine, affine), dtype=torch.float32)


def clip_to_image(points: torch.Tensor, image: Any) -> torch.Tensor:
    """Clamp (B, N, D) original-frame points to the original image extent ``[-0.5, size - 0.5]``.

    A point decoded in padding (e.g. an arg-max in the pad of a resize-with-pad input) cannot be a
    landmark of the image; it is moved to the nearest border. NaN (not found) stays NaN.
    """
    shape = image.meta.get("original_spatial_shape") if hasattr(image, "meta") else None
    if shape is None:
        return points
    shape = torch.as_tensor(shape, dtype=points.dtype).reshape(-1, points.shape[-1])
    upper = (shape - 0.5)[:, None, :].expand_as(points) if shape.shape[0] == points.shape[0] else shape[0] - 0.5
    return torch.maximum(torch.minimum(points, upper), torch.full_like(points, -0.5))


class LandmarkPredictor(Inferer):
    """Interface: ``__call__(batch, device) -> (points (B, N, D) original frame, confidence (B, N))``.

    A MONAI ``Inferer`` (the bundles' ``inferer`` id): it runs every stage of a method on the networks it
    was built with, given the whole batch dictionary (a method may need more than the image tensor).

    Subclasses implement :meth:`predict_grid`, returning points on the grid of ``batch[ref_key]``
    for the key they name; :meth:`__call__` maps them to the original image frame.
    """

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """Return ``(points (B, N, D), confidence (B, N) or None, ref_key)``."""
        raise NotImplementedError

    def __call__(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        points, confidence, ref_key = self.predict_grid(batch, device)
        return clip_to_image(grid_to_original(points, batch[ref_key]), batch[ref_key]), confidence
