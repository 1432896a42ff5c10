"""Residual log-likelihood estimation (RLE, Li et al. ICCV 2021) and the D-CeLR loss (SPECS §4).

RLE models the normalised residual ``r = (gt - mu) / sigma`` of a regressed point with a density
``Q(r) * G(r)``, where ``Q`` is a fixed base (Laplace here, "residual" mode) and ``G`` a learnt RealNVP flow
density that corrects it. The per-landmark negative log-likelihood is

    ``-log G(r) - log Q(r) + sum_d log sigma_d``,   ``-log Q(r) = sum_d (log 2 + |r_d|)``

(the Jacobian of ``x -> r`` gives one ``log sigma`` per axis; the constant that would renormalise
``Q * G`` is dropped, as in the paper). The flow is trained with the network, so **its parameters live in
the loss**: give ``loss.parameters()`` to the optimizer too and keep the loss state with the checkpoint. It
is not needed at inference.

:class:`DCeLRLoss` = RLE on the reference output + RLE on every fine-tune layer + the auxiliary heatmap
terms (pos/neg-balanced MSE + soft Dice), each weight 1 as in the public code. Missing landmarks (NaN
target rows or ``mask == 0``) are left out of every term and get zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RealNVP", "RLELoss", "DCeLRLoss", "gaussian_targets", "balanced_heatmap_mse", "soft_dice_loss"]

_LOG2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)


class _Coupling(nn.Module):
    """Affine coupling on 2-D points: the ``mask`` coordinate conditions scale ``s`` and shift ``t`` of the other."""

    def __init__(self, mask: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.scale = nn.Sequential(
            nn.Linear(2, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, 2),
            nn.Tanh(),
        )
        self.shift = nn.Sequential(
            nn.Linear(2, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Linear(hidden, 2)
        )

    def to_base(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> base direction: ``x = m y + (1 - m) (y - t(m y)) exp(-s(m y))``; returns ``(x, log|det dx/dy|)``."""
        m = self.mask
        ym = y * m
        s = self.scale(ym) * (1 - m)
        t = self.shift(ym) * (1 - m)
        x = ym + (1 - m) * (y - t) * torch.exp(-s)
        return x, -s.sum(dim=-1)

    def from_base(self, x: torch.Tensor) -> torch.Tensor:
        """Base -> data: ``y = m x + (1 - m) (x exp(s(m x)) + t(m x))`` (for sampling / checks)."""
        m = self.mask
        xm = x * m
        s = self.scale(xm) * (1 - m)
        t = self.shift(xm) * (1 - m)
        return xm + (1 - m) * (x * torch.exp(s) + t)


class RealNVP(nn.Module):
    """RealNVP density on R^2 with a standard normal base: ``log G(y) = log N(f(y)) + log|det df/dy|``.

    ``n_couplings`` affine couplings alternate which coordinate is transformed; the scale and shift nets are
    2 -> ``hidden`` -> ``hidden`` -> 2 MLPs (LeakyReLU; tanh on the scale). It is a normalised density for
    any parameters (tested: its integral on a grid is ~1).
    """

    def __init__(self, hidden: int = 64, n_couplings: int = 6) -> None:
        super().__init__()
        masks = [torch.tensor([1.0, 0.0]) if i % 2 == 0 else torch.tensor([0.0, 1.0]) for i in range(n_couplings)]
        self.couplings = nn.ModuleList([_Coupling(m, hidden) for m in masks])
        for c in self.couplings:  # small init: G starts close to the standard normal
            for net in (c.scale, c.shift):
                for layer in net:
                    if isinstance(layer, nn.Linear):
                        nn.init.xavier_uniform_(layer.weight, gain=0.01)
                        nn.init.zeros_(layer.bias)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``log G(y)`` for points ``(..., 2)`` -> ``(...)``."""
        log_det = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        x = y
        for c in reversed(self.couplings):
            x, ld = c.to_base(x)
            log_det = log_det + ld
        return -0.5 * (x * x).sum(dim=-1) - _LOG_2PI + log_det

    def sample(self, n: int) -> torch.Tensor:
        p = next(self.parameters())
        x = torch.randn(n, 2, dtype=p.dtype, device=p.device)
        for c in self.couplings:
            x = c.from_base(x)
        return x


def _present(target: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    present = torch.isfinite(target).all(dim=-1)
    if mask is not None:
        if mask.shape != present.shape:
            raise ValueError(f"{name}: mask must be (B, K) = {tuple(present.shape)}, got {tuple(mask.shape)}.")
        present = present & (mask.to(present.device) != 0)
    return present


class RLELoss(nn.Module):
    """RLE negative log-likelihood of normalised targets under ``(mu, sigma)`` predictions.

    ``forward(pred (B, K, 4) = (mu0, mu1, sigma0, sigma1), target (B, K, 2), mask (B, K) or None)``.

    Args:
        flow: a :class:`RealNVP` (shared between several ``RLELoss`` to have one flow, as D-CeLR does).
        residual: ``True``: density ``Q * G`` with a Laplace ``Q`` (RLE's residual mode, D-CeLR's choice);
            ``False``: the flow alone.
        reduction: ``"sum_landmarks"`` (sum over present landmarks, mean over the batch, as the public code's
            ``sum / batch``) or ``"mean"`` (mean over present landmarks).
        eps: added to sigma.
    """

    def __init__(
        self, flow: RealNVP | None = None, residual: bool = True, reduction: str = "sum_landmarks", eps: float = 1e-9
    ) -> None:
        super().__init__()
        if reduction not in ("sum_landmarks", "mean"):
            raise ValueError(f"RLELoss reduction must be 'sum_landmarks' or 'mean', got {reduction!r}.")
        self.flow = flow if flow is not None else RealNVP()
        self.residual = bool(residual)
        self.reduction = reduction
        self.eps = float(eps)

    def nll(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-landmark negative log-likelihood ``(B, K)`` (no masking)."""
        mu, sigma = pred[..., :2], pred[..., 2:4] + self.eps
        r = (target - mu) / sigma
        out = torch.log(sigma).sum(dim=-1) - self.flow.log_prob(r)
        if self.residual:
            out = out + (_LOG2 + r.abs()).sum(dim=-1)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if pred.dim() != 3 or pred.shape[-1] != 4 or target.shape != pred.shape[:-1] + (2,):
            raise ValueError(
                f"RLELoss expects pred (B, K, 4) and target (B, K, 2), got {tuple(pred.shape)}, {tuple(target.shape)}."
            )
        target = target.to(pred.dtype)
        present = _present(target, mask, "RLELoss")
        target = torch.where(present[..., None], target, pred[..., :2].detach())  # no NaN in the graph
        nll = torch.where(present, self.nll(pred, target), torch.zeros_like(target[..., 0]))
        if self.reduction == "mean":
            return nll.sum() / present.sum().clamp_min(1)
        return nll.sum() / pred.shape[0]


def gaussian_targets(points: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Peak-1 Gaussians ``(B, K, H0, H1)`` at normalised points ``(B, K, 2)`` on an ``H0 x H1`` cell grid.

    A normalised ``p`` sits at cell index ``p * H - 0.5`` (cell centres; the ``align_corners=False``
    convention of the network's maps). NaN points give zero channels. ``sigma`` in cells.
    """
    pts = torch.nan_to_num(points, nan=-1e4)
    g = []
    for a in range(2):
        centre = pts[..., a] * size[a] - 0.5  # (B, K)
        coord = torch.arange(size[a], dtype=points.dtype, device=points.device)
        g.append(torch.exp(-0.5 * ((coord - centre[..., None]) / sigma) ** 2))
    hm = g[0][..., :, None] * g[1][..., None, :]
    return hm * torch.isfinite(points).all(dim=-1)[..., None, None].to(hm.dtype)


def balanced_heatmap_mse(
    pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor, threshold: float = 0.1, neg_weight: float = 2.0
) -> torch.Tensor:
    """``pos + neg_weight * neg``: squared errors averaged over positive (``target > threshold``) and negative pixels.

    ``pred`` ``(B, 1 or K, H0, H1)`` is broadcast against ``target`` ``(B, K, H0, H1)``; channels with
    ``present == False`` are left out.
    """
    sq = (pred - target) ** 2
    keep = present[..., None, None].to(sq.dtype).expand_as(sq)
    pos = (target > threshold).to(sq.dtype) * keep
    neg = (target <= threshold).to(sq.dtype) * keep
    pos_loss = (sq * pos).sum() / pos.sum().clamp_min(1.0)
    neg_loss = (sq * neg).sum() / neg.sum().clamp_min(1.0)
    return pos_loss + neg_weight * neg_loss


def soft_dice_loss(
    pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Mean over present channels of ``1 - (2 sum(p t) + smooth) / (sum p + sum t + smooth)`` (pred broadcast)."""
    pred = pred.expand_as(target)
    inter = (pred * target).sum(dim=(-2, -1))
    denom = pred.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)  # (B, K)
    keep = present.to(dice.dtype)
    return (dice * keep).sum() / keep.sum().clamp_min(1.0)


class DCeLRLoss(nn.Module):
    """D-CeLR training loss (SPECS §4): ``RLE(reference) + sum_l RLE(fine_l) + MSE_hm + Dice_hm``.

    ``forward(pred, target, mask=None)``: ``pred`` is :meth:`custom_monai.networks.DCeLR.forward_all`'s dict
    (``reference`` (B, K, 4), ``fine`` (L, B, K, 4), ``heatmap`` (B, 1, H0, H1)); ``target`` (B, K, 2)
    normalised points (NaN where missing, as :class:`custom_monai.transforms.NormalizedCoordinatesd`
    writes them); ``mask`` (B, K) optional. The heatmap targets are built here: one peak-1 Gaussian per
    landmark at the heatmap's own scale (``heatmap_sigma`` = 0.625 cells = 20 px at 1/32 of 1024), against
    which the single predicted channel is broadcast, as in the public code. The detached terms of the last
    call are in ``last_parts``. One RealNVP flow is shared by all RLE terms (its parameters are this
    module's: optimise and checkpoint them with the network).

    Args:
        reference_weight, fine_weight, mse_weight, dice_weight: term weights (all 1 in the public code).
        heatmap_sigma: Gaussian sigma of the auxiliary targets, in heatmap cells.
        pos_threshold, neg_weight: the balanced MSE's positive threshold (0.1) and negative weight (2).
        flow_hidden, flow_couplings: RealNVP width (64) and number of couplings.
        residual, reduction: see :class:`RLELoss`.
    """

    def __init__(
        self,
        reference_weight: float = 1.0,
        fine_weight: float = 1.0,
        mse_weight: float = 1.0,
        dice_weight: float = 1.0,
        heatmap_sigma: float = 0.625,
        pos_threshold: float = 0.1,
        neg_weight: float = 2.0,
        flow_hidden: int = 64,
        flow_couplings: int = 6,
        residual: bool = True,
        reduction: str = "sum_landmarks",
    ) -> None:
        super().__init__()
        self.rle = RLELoss(RealNVP(flow_hidden, flow_couplings), residual=residual, reduction=reduction)
        self.reference_weight = float(reference_weight)
        self.fine_weight = float(fine_weight)
        self.mse_weight = float(mse_weight)
        self.dice_weight = float(dice_weight)
        self.heatmap_sigma = float(heatmap_sigma)
        self.pos_threshold = float(pos_threshold)
        self.neg_weight = float(neg_weight)
        self.last_parts: dict[str, torch.Tensor] = {}

    def parts(
        self, pred: Mapping[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All terms, with gradients: ``loss``, ``rle_reference``, ``rle_fine`` (L,), ``heatmap_mse``/``_dice``."""
        for key in ("reference", "fine", "heatmap"):
            if key not in pred:
                raise ValueError(f"DCeLRLoss: pred must be DCeLR.forward_all's dict; {key!r} is missing.")
        reference, fine, heatmap = pred["reference"], pred["fine"], pred["heatmap"]
        if target.dim() != 3 or target.shape[-1] != 2 or target.shape != reference.shape[:-1] + (2,):
            raise ValueError(
                f"DCeLRLoss: target must be (B, K, 2) normalised points matching {tuple(reference.shape)}, "
                f"got {tuple(target.shape)}."
            )
        target = target.to(reference.dtype)
        present = _present(target, mask, "DCeLRLoss")
        rle_reference = self.rle(reference, target, present)
        rle_fine = torch.stack([self.rle(fine[i], target, present) for i in range(fine.shape[0])])
        hm_target = gaussian_targets(
            torch.where(present[..., None], target, torch.full_like(target, float("nan"))),
            (int(heatmap.shape[-2]), int(heatmap.shape[-1])),
            self.heatmap_sigma,
        )
        mse = balanced_heatmap_mse(heatmap, hm_target, present, self.pos_threshold, self.neg_weight)
        dice = soft_dice_loss(heatmap, hm_target, present)
        loss = (
            self.reference_weight * rle_reference
            + self.fine_weight * rle_fine.sum()
            + self.mse_weight * mse
            + self.dice_weight * dice
        )
        return {
            "loss": loss,
            "rle_reference": rle_reference,
            "rle_fine": rle_fine,
            "heatmap_mse": mse,
            "heatmap_dice": dice,
        }

    def forward(
        self, pred: Mapping[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.parts(pred, target, mask)
        self.last_parts = {k: v.detach() for k, v in out.items() if k != "loss"}
        return out["loss"]
