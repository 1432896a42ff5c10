"""Adapter so that a loss with extra target arguments fits MONAI's ``loss(pred, target)`` call."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TupleTargetLoss"]


class TupleTargetLoss(nn.Module):
    """Call ``loss(pred, *target)`` when ``target`` is a tuple (e.g. ``(heatmap, landmark_mask)``).

    MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, target)``; with
    :class:`custom_monai.engines.PrepareLandmarkBatch` returning several targets this unpacks them.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor | tuple) -> torch.Tensor:
        if isinstance(target, (tuple, list)):
            return self.loss(pred, *target)
        return self.loss(pred, target)
