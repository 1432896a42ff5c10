"""Multiresolution heatmap loss of the HTC method (``SPECS.md`` §3): weighted MSE on the stride-4 and stride-2 heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from custom_monai.networks.htc import split_heads

__all__ = ["HTCLoss"]


class HTCLoss(nn.Module):
    """``quarter_weight * MSE(quarter) + half_weight * MSE(half)`` (1000 and 3000 in the paper).

    Each term is MMPose's ``JointsMSELoss`` with target weights: the squared error of ``mask * pred`` vs
    ``mask * target`` averaged over all (batch, landmark, pixel) entries -- a missing landmark's channel is
    zeroed (no gradient) but still counts in the mean, as in MMPose, so the loss scale does not depend on how
    many landmarks are annotated.

    ``forward(pred, target_quarter, target_half, mask=None)``; ``pred`` is ``(quarter, half)`` from
    ``HTCLandmarkNet.forward_heads`` or the stacked tensor ``(B, 2, K, h, w)`` of its ``forward``
    (index 0 = half, index 1 = quarter repeated 2x2; :func:`custom_monai.networks.htc.split_heads`). With ``TupleTargetLoss`` and
    ``PrepareLandmarkBatch(target_keys=("heatmap_quarter", "heatmap_half", "landmark_mask"))`` it fits MONAI's
    ``SupervisedTrainer``. The last call's two terms (weighted, detached) are kept in ``last_parts``.
    """

    def __init__(self, quarter_weight: float = 1000.0, half_weight: float = 3000.0) -> None:
        super().__init__()
        self.quarter_weight = float(quarter_weight)
        self.half_weight = float(half_weight)
        self.last_parts: dict[str, torch.Tensor] = {}

    @staticmethod
    def split(pred: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quarter, half)`` from either output form of ``HTCLandmarkNet``."""
        if isinstance(pred, torch.Tensor):
            if pred.dim() != 5 or pred.shape[1] != 2:
                raise ValueError(
                    "HTCLoss: a tensor prediction must be the stacked heads (B, 2, K, h, w) of HTCLandmarkNet.forward, "
                    f"got {tuple(pred.shape)}"
                )
            return split_heads(pred)
        if len(pred) != 2:
            raise ValueError(f"HTCLoss expects pred = (quarter, half), got {len(pred)} tensors")
        return pred[0], pred[1]

    @staticmethod
    def _mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"HTCLoss: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
        target = target.to(pred.dtype)
        if mask is not None:
            w = mask.to(pred.dtype).reshape(mask.shape[0], mask.shape[1], *([1] * (pred.dim() - 2)))
            pred, target = pred * w, target * w
        return ((pred - target) ** 2).mean()

    def forward(
        self,
        pred: torch.Tensor | Sequence[torch.Tensor],
        target_quarter: torch.Tensor,
        target_half: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        quarter, half = self.split(pred)
        if mask is not None and tuple(mask.shape) != tuple(quarter.shape[:2]):
            raise ValueError(f"HTCLoss: mask must be (B, K) = {tuple(quarter.shape[:2])}, got {tuple(mask.shape)}")
        lq = self.quarter_weight * self._mse(quarter, target_quarter, mask)
        lh = self.half_weight * self._mse(half, target_half, mask)
        self.last_parts = {"quarter": lq.detach(), "half": lh.detach()}
        return lq + lh
