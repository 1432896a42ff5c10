"""CEPHMark-Net loss: coarse detection MSE + multi-head refinement loss, on normalised coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["CEPHMarkLoss"]


class CEPHMarkLoss(nn.Module):
    """``detection_weight * detection + refinement_weight * refinement`` (both weights 1 in the paper).

    - detection: mean squared error of the coarse points over all present (image, landmark, axis) entries;
    - refinement ("multi-head refinement loss"): for each landmark head, the MSE of its refined point averaged
      over the images of the batch where that landmark is present; the heads' losses are summed.

    Missing landmarks (NaN target rows, or ``mask == 0``) are removed from both terms and get zero gradient;
    a head with no present landmark in the batch contributes 0.

    ``forward(pred, target, mask=None)`` takes ``pred`` as returned by
    :class:`custom_monai.networks.cephmarknet.CEPHMarkNet`, one ``(B, N, 2 D)`` tensor (coarse points in the
    first D entries of the last axis, refined in the last D), so it can be an engine's ``loss_function``; a
    ``(coarse, refined)`` pair is accepted too. It returns the total. The parts of the last call are kept, detached, in ``last_parts`` for logging
    (``"detection"``, ``"refinement"``, ``"per_head"``); :meth:`parts` returns them with their graph.

    Args:
        detection_weight: weight of the detection term.
        refinement_weight: weight of the summed refinement term.
    """

    def __init__(self, detection_weight: float = 1.0, refinement_weight: float = 1.0) -> None:
        super().__init__()
        self.detection_weight = float(detection_weight)
        self.refinement_weight = float(refinement_weight)
        self.last_parts: dict[str, torch.Tensor] = {}

    @staticmethod
    def _check(name: str, t: torch.Tensor, target: torch.Tensor) -> None:
        if t.shape != target.shape:
            raise ValueError(f"CEPHMarkLoss: {name} has shape {tuple(t.shape)}, target has {tuple(target.shape)}.")

    def parts(
        self, pred: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All terms: ``loss``, ``detection``, ``refinement`` and ``per_head`` (N,), with gradients."""
        if target.dim() != 3 or target.shape[-1] < 1:
            raise ValueError(f"CEPHMarkLoss: target must be (B, N, D) normalised points, got {tuple(target.shape)}.")
        if isinstance(pred, torch.Tensor):
            if pred.dim() != 3 or pred.shape[-1] % 2 or pred.shape[-1] != 2 * target.shape[-1]:
                raise ValueError(
                    f"CEPHMarkLoss expects pred (B, N, 2 D) = (coarse, refined) along the last axis for a target "
                    f"{tuple(target.shape)}, got {tuple(pred.shape)}."
                )
            d = pred.shape[-1] // 2
            coarse, refined = pred[..., :d], pred[..., d:]
        else:
            if len(pred) != 2:
                raise ValueError(f"CEPHMarkLoss expects pred = (coarse, refined), got a sequence of {len(pred)}.")
            coarse, refined = pred[0], pred[1]
        self._check("coarse", coarse, target)
        self._check("refined", refined, target)
        target = target.to(coarse.dtype)
        present = torch.isfinite(target).all(dim=-1)  # (B, N)
        if mask is not None:
            if mask.shape != present.shape:
                raise ValueError(
                    f"CEPHMarkLoss: mask must be (B, N) = {tuple(present.shape)}, got {tuple(mask.shape)}."
                )
            present = present & (mask != 0)
        # zero the missing targets first: NaN * 0 would still poison the sums and the gradients
        target = torch.where(present.unsqueeze(-1), target, torch.zeros_like(target))
        weight = present.to(coarse.dtype)

        sq_coarse = (coarse - target).pow(2).mean(dim=-1) * weight  # (B, N)
        detection = sq_coarse.sum() / weight.sum().clamp_min(1.0)
        sq_refined = (refined - target).pow(2).mean(dim=-1) * weight
        per_head = sq_refined.sum(dim=0) / weight.sum(dim=0).clamp_min(1.0)  # (N,)
        refinement = per_head.sum()
        loss = self.detection_weight * detection + self.refinement_weight * refinement
        return {"loss": loss, "detection": detection, "refinement": refinement, "per_head": per_head}

    def forward(
        self, pred: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.parts(pred, target, mask)
        self.last_parts = {k: v.detach() for k, v in out.items() if k != "loss"}
        return out["loss"]
