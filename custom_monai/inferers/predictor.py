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

__all__ = ["LandmarkPredictor", "grid_to_original"]


def grid_to_original(points: torch.Tensor, image: Any) -> torch.Tensor:
    """Map (B, N, D) points on the grid of the collated MetaTensor ``image`` to the original frame."""
    affine = image.affine
    landmark_affine = image.meta["landmark_affine"]
    if affine.ndim == 2:
        affine = affine[None].expand(points.shape[0], -1, -1)
    out = to_original(points.detach().cpu(), affine.cpu(), torch.as_tensor(landmark_affine).cpu())
    return torch.as_tensor(out, dtype=torch.float32)


class LandmarkPredictor:
    """Base class: ``__call__(batch, device) -> (points (B, N, D) original frame, confidence (B, N))``."""

    #: batch key of the image whose grid :meth:`predict_grid` returns points on
    ref_key: str = "image"

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def __call__(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        points, confidence = self.predict_grid(batch, device)
        return grid_to_original(points, batch[self.ref_key]), confidence
