"""Loss of the global-to-local FCNN (Noothout et al., TMI 2020): L1 on log-displacements + alpha * BCE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CellLoss"]


class CellLoss(nn.Module):
    """``L1(displacement) + alpha * BCE(presence)`` over all cells of the landmarks that are present.

    - Regression: mean absolute error between predicted and target displacements (both in the
      signed-log space of :func:`custom_monai.transforms.cell_targets.signed_log10`), over every cell,
      axis and present landmark.
    - Classification: binary cross-entropy with logits between the presence logits and the one-hot
      presence map, over every cell and present landmark.

    Landmarks with ``mask == 0`` (missing annotation, or outside the training chunk) do not contribute,
    whatever their targets hold (NaN included). With no present landmark the loss is 0.

    ``alpha`` is 20 for the paper's cephalometric global net, 8 (CCTA) or 2 (olfactory MR) in 3D, and
    1 for the local nets.

    ``forward(pred, presence, displacement, mask=None)`` takes the network output
    ``pred = (logits (B, N, *grid), displacement (B, N, D, *grid))`` and returns the scalar total, so it
    plugs into MONAI's ``SupervisedTrainer`` (with ``TupleTargetLoss`` for the extra targets). The parts
    of the last call are kept, detached, in ``last_parts`` (``"regression"``, ``"classification"``);
    :meth:`components` returns them with gradients.
    """

    def __init__(self, alpha: float = 20.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.last_parts: dict[str, torch.Tensor] = {}

    def components(
        self,
        pred: Sequence[torch.Tensor],
        presence: torch.Tensor,
        displacement: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "regression", "classification"}`` as tensors (with gradients)."""
        if len(pred) != 2:
            raise ValueError(f"pred must be (logits, displacement), got {len(pred)} tensors.")
        logits, disp = pred[0], pred[1]
        if logits.shape != presence.shape:
            raise ValueError(f"presence logits {tuple(logits.shape)} and target {tuple(presence.shape)} differ.")
        if disp.shape != displacement.shape:
            raise ValueError(f"predicted displacement {tuple(disp.shape)} and target {tuple(displacement.shape)} differ.")
        b, n = logits.shape[:2]
        if disp.shape[:2] != logits.shape[:2] or disp.shape[3:] != logits.shape[2:]:
            raise ValueError(
                f"displacement {tuple(disp.shape)} must be (B, N, D, *grid) for logits {tuple(logits.shape)}."
            )
        if mask is None:
            m = torch.ones(b, n, dtype=torch.bool, device=logits.device)
        else:
            if tuple(mask.shape) != (b, n):
                raise ValueError(f"mask must be (B, N) = {(b, n)}, got {tuple(mask.shape)}.")
            m = mask.to(logits.device) > 0
        n_cells = logits[0, 0].numel()
        n_axes = disp.shape[2]
        n_present = m.sum()

        m_cls = m.reshape(b, n, *([1] * (logits.ndim - 2)))
        m_reg = m.reshape(b, n, *([1] * (disp.ndim - 2)))
        target_p = torch.where(m_cls, presence.to(logits.dtype), torch.zeros_like(logits))
        target_d = torch.where(m_reg, displacement.to(disp.dtype), torch.zeros_like(disp))
        bce = F.binary_cross_entropy_with_logits(logits, target_p, reduction="none")
        l1 = (disp - target_d).abs()
        zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
        denom = n_present.clamp_min(1).to(logits.dtype)
        cls = torch.where(m_cls, bce, zero).sum() / (denom * n_cells)
        reg = torch.where(m_reg, l1, zero).sum() / (denom * n_cells * n_axes)
        return {"loss": reg + self.alpha * cls, "regression": reg, "classification": cls}

    def forward(
        self,
        pred: Sequence[torch.Tensor],
        presence: torch.Tensor,
        displacement: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = self.components(pred, presence, displacement, mask)
        self.last_parts = {k: v.detach() for k, v in parts.items() if k != "loss"}
        return parts["loss"]
