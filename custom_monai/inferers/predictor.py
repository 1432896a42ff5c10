"""Predictors: turn a batch into landmark points in the original image frame.

A predictor is what differs between methods at evaluation/inference time. Each subclass implements
:meth:`LandmarkPredictor.predict_grid`, which returns points on the grid of one image key of the
batch; the base class maps them back to the original image (undoing every resize, crop and pad
recorded in the MetaTensor affines), so that metrics and writers never see a resized frame.
"""

from __future__ import annotations

from typing import Any

import torch

from custom_monai.transforms.landmarks import to_original

__all__ = ["LandmarkPredictor", "grid_to_original", "original_to_grid"]


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


class LandmarkPredictor:
    """Interface: ``__call__(batch, device) -> (points (B, N, D) original frame, confidence (B, N))``.

    Subclasses implement :meth:`predict_grid`, returning points on the grid of ``batch[ref_key]``
    for the key they name; :meth:`__call__` maps them to the original image frame.
    """

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """Return ``(points (B, N, D), confidence (B, N) or None, ref_key)``."""
        raise NotImplementedError

    def __call__(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        points, confidence, ref_key = self.predict_grid(batch, device)
        return grid_to_original(points, batch[ref_key]), confidence
