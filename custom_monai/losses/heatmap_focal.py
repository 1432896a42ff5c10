"""Zhong et al. (MICCAI 2019) heatmap regression loss: soft cross-entropy + focal term (paper eq. 3).

The network predicts, per pixel, a softmax over landmark channels plus a shared background channel
(last channel); the target is the matching set of heatmaps whose channels sum to 1 per pixel.

    L = 1/2 * CE + 1/2 * w_focal * FL
    CE = mean over pixels of  -sum_c H_c log Ĥ_c                       (soft-label cross-entropy)
    FL = mean over pixels and channels of  -alpha_t (1 - H_t)^gamma log H_t
    H_t = Ĥ where H > 0.01 (inside a Gaussian) else 1 - Ĥ;  alpha_t = alpha there, else 1 - alpha

``focal_weight`` (``w_focal``) is a plain attribute so that a handler
(:class:`custom_monai.handlers.schedule.ProgressAttributeSwitch`) can switch the focal term on part-way
through a training stage: the paper's focal term "mainly fine-tunes targets after 60 epochs" (of 100), so
the bundle switches it on at 60 % of the stage's real length (epochs, or its time budget).
"""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from torch import nn

__all__ = ["SoftCEFocalLoss", "log1m_softmax"]

# added to the logits of excluded channels (relative to the per-pixel maximum): exp(-1e4) == 0 in
# float16/32/64, yet the value stays finite so no inf/NaN reaches the backward pass.
_EXCLUDED = 1.0e4


def log1m_softmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(1 - softmax(logits))`` along ``dim``, accurate where a probability is close to 1.

    ``log1p(-p)`` gives ``-inf`` once ``p`` rounds to 1, i.e. exactly for the confidently wrong pixels
    the focal term must penalise. Here ``1 - p_c`` is the sum of the other channels' probabilities:
    for the arg-max channel it is a log-sum-exp over the others; for any other channel the sum still
    contains the maximum term (= 1 after shifting), so ``S - e_c`` has no cancellation.
    """
    m = logits.detach().amax(dim=dim, keepdim=True)
    shifted = logits - m
    e = torch.exp(shifted)
    s = e.sum(dim=dim, keepdim=True)
    is_max = torch.zeros_like(logits, dtype=torch.bool).scatter_(dim, logits.detach().argmax(dim, keepdim=True), True)
    others_of_max = torch.logsumexp(shifted.masked_fill(is_max, -_EXCLUDED), dim=dim, keepdim=True)
    others = torch.log(torch.where(is_max, torch.ones_like(e), s - e))
    return torch.where(is_max, others_of_max, others) - torch.log(s)


class SoftCEFocalLoss(nn.Module):
    """Soft cross-entropy + focal loss on softmax heatmaps (Zhong et al. 2019, eq. 3), 2D or 3D.

    Args:
        alpha: focal class weight for foreground pixels (``1 - alpha`` for the rest); ``None`` = 1 for all.
        gamma: focal exponent.
        focal_weight: multiplies the focal half of the loss; set it to 0 to train with cross-entropy only
            and switch it to 1 when the focal term should start.
        fg_threshold: a pixel is foreground for channel ``c`` where ``H_c > fg_threshold`` (paper: 0.01).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for a (B,) tensor.
        missing: what a masked (unannotated) landmark channel means for the softmax, see ``mask`` below:
            ``"merge"`` (default), ``"exclude"`` or ``"background"``.

    ``forward(input, target, mask=None)``:
        - ``input``: logits (B, C, *spatial); the softmax over C is taken here (log-softmax, stable).
        - ``target``: heatmaps (B, C, *spatial), background channel last, channels summing to 1.
        - ``mask``: optional (B, C - 1), 1/True for annotated landmarks, 0/False for missing ones. A masked
          channel's own cross-entropy and focal terms are dropped (its target is never read) and the focal
          mean runs over the remaining channels; the background channel always counts. How the masked
          channel enters the softmax depends on ``missing``:

          * ``"merge"`` (default): its probability counts as background, i.e. the background term reads
            ``p_bg + p_missing`` (log-sum-exp of their logits). The target says only "no annotated landmark
            here", which is exactly what a missing annotation leaves known: the loss never trains the
            unannotated landmark's true location as background and never pushes its channel down.
          * ``"exclude"``: removed from the softmax; the background alone must explain the pixel, so the
            background channel is still trained up at the missing landmark's location.
          * ``"background"``: kept as an ordinary channel with an all-zero target (its location is trained
            as background). Right only when the mask means "outside this patch", where zero is the truth.
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        focal_weight: float = 1.0,
        fg_threshold: float = 0.01,
        reduction: str = "mean",
        missing: str = "merge",
    ) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"SoftCEFocalLoss: alpha must be in [0, 1] or None, got {alpha}")
        if gamma < 0:
            raise ValueError(f"SoftCEFocalLoss: gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"SoftCEFocalLoss: reduction must be 'mean', 'sum' or 'none', got '{reduction}'")
        self.alpha = alpha
        self.gamma = float(gamma)
        self.focal_weight = float(focal_weight)
        self.fg_threshold = float(fg_threshold)
        self.reduction = reduction
        if missing not in ("merge", "exclude", "background"):
            raise ValueError(f"SoftCEFocalLoss: missing must be 'merge', 'exclude' or 'background', got {missing!r}")
        self.missing = missing

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = input.as_tensor() if isinstance(input, MetaTensor) else input
        target = target.as_tensor() if isinstance(target, MetaTensor) else torch.as_tensor(target)
        if logits.dim() < 3:
            raise ValueError(f"SoftCEFocalLoss: input must be (B, C, *spatial), got shape {list(logits.shape)}")
        if target.shape != logits.shape:
            raise ValueError(
                f"SoftCEFocalLoss: target shape {list(target.shape)} must equal input shape {list(logits.shape)} "
                "(heatmaps with the background channel last)"
            )
        b, c = logits.shape[:2]
        if c < 2:
            raise ValueError(f"SoftCEFocalLoss: need >= 2 channels (landmarks + background), got {c}")
        target = target.to(logits.dtype)
        extra = (1,) * (logits.dim() - 2)

        if mask is None:
            keep = torch.ones((b, c) + extra, dtype=torch.bool, device=logits.device)
        else:
            mask = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
            if tuple(mask.shape) != (b, c - 1):
                raise ValueError(
                    f"SoftCEFocalLoss: mask must be (B, C-1) = ({b}, {c - 1}) (one flag per landmark channel, "
                    f"background last), got shape {list(mask.shape)}"
                )
            lm_keep = mask.to(device=logits.device) != 0
            keep = torch.cat([lm_keep, torch.ones((b, 1), dtype=torch.bool, device=logits.device)], dim=1)
            keep = keep.view((b, c) + extra)
            if self.missing != "background":  # large finite negative offset: exp() == 0, gradients stay finite
                low = logits.detach().amax(dim=1, keepdim=True) - _EXCLUDED
                kept = torch.where(keep, logits, low)
                if self.missing == "merge":  # background logit := logsumexp(background, masked channels)
                    masked = torch.where(keep[:, :-1], low, logits[:, :-1])
                    bg = torch.logsumexp(torch.cat([logits[:, -1:], masked], dim=1), dim=1, keepdim=True)
                    kept = torch.cat([kept[:, :-1], bg], dim=1)
                logits = kept
        keep_f = keep.to(logits.dtype)
        target = torch.where(keep, target, torch.zeros_like(target))  # masked targets may hold anything (NaN)
        n_pix = float(logits[0, 0].numel())

        logp = torch.log_softmax(logits, dim=1)
        ce = -(target * logp).sum(dim=1)  # (B, *spatial); masked channels have target 0
        loss = 0.5 * ce.flatten(1).sum(1) / n_pix

        if self.focal_weight != 0.0:
            fg = target > self.fg_threshold
            log_ht = torch.where(fg, logp, log1m_softmax(logits, dim=1))
            ht = torch.exp(log_ht)
            # gamma < 1: keep the base off 0, where the power's derivative is infinite
            base = (1.0 - ht).clamp_min(torch.finfo(ht.dtype).tiny if self.gamma < 1 else 0.0)
            focal = -(base**self.gamma) * log_ht
            if self.alpha is not None:
                alpha = torch.full_like(focal, self.alpha)
                focal = focal * torch.where(fg, alpha, 1.0 - alpha)
            n_ch = keep_f.flatten(1).sum(1)  # kept channels per sample
            fl = (keep_f * focal).flatten(1).sum(1) / (n_ch * n_pix)
            loss = loss + 0.5 * self.focal_weight * fl

        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
