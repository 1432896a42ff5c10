"""Ignite metrics for landmark detection: mean radial error (lower is better) and SDR.

Both take ``(pred_points, gt_points, spacing)`` per iteration, in the **original** image frame
(``custom_monai.engines.landmark_metric_output`` produces exactly that from the evaluator output; a
mapping with keys ``pred``, ``label``, ``spacing`` also works without an ``output_transform``). Errors come
from :func:`custom_monai.metrics.radial_errors`, so these agree with ``metrics.json`` and ``score.py``.

They hold only sums and counts, which ``sync_all_reduce`` adds over processes, so the value under
``torchrun`` (gloo or nccl) is the value over the whole validation set.

Use as MONAI's key metric with ``metric_cmp_fn=custom_monai.metrics.lower_is_better`` (MONAI's default
comparison keeps the *highest* value)::

    "key_val_metric": {"val_mre": {"_target_": "custom_monai.metrics.MeanRadialError"}},
    "metric_cmp_fn": "$custom_monai.metrics.lower_is_better",
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from custom_monai.metrics.landmark_metrics import _TIE_TOL, _to_numpy, radial_errors

__all__ = ["MeanRadialError", "SuccessDetectionRate", "lower_is_better"]


def lower_is_better(current_metric: float, prev_best: float) -> bool:
    """``metric_cmp_fn`` for MONAI workflows/checkpoint handlers: a smaller error is an improvement."""
    return current_metric < prev_best


def _unpack(output: Any) -> tuple[Any, Any, Any]:
    """``(pred, gt, spacing)`` from a tuple/list, a mapping, or a decollated list of per-image mappings."""
    if isinstance(output, Mapping):
        return output["pred"], output["label"], output.get("spacing")
    if isinstance(output, Sequence) and output and all(isinstance(o, Mapping) for o in output):
        pred = torch.stack([torch.as_tensor(o["pred"]) for o in output])
        gt = [o.get("label") for o in output]
        gt = None if any(g is None for g in gt) else torch.stack([torch.as_tensor(g) for g in gt])
        sp = [o.get("spacing") for o in output]
        sp = None if any(s is None for s in sp) else torch.stack([torch.as_tensor(s) for s in sp])
        return pred, gt, sp
    if isinstance(output, Sequence) and len(output) in (2, 3):
        return output[0], output[1], output[2] if len(output) == 3 else None
    raise TypeError(
        "landmark metrics expect (pred, gt[, spacing]) or a mapping with 'pred', 'label', 'spacing'; "
        f"got {type(output)}"
    )


def _split_spacing(spacing: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, D) spacing with NaN rows replaced by 1 and the (B,) mask of rows whose spacing is known.

    ``None`` or an all-NaN row means unknown (``SpacingArrayd`` collates unknown spacing as NaN).
    """
    if spacing is None:
        return np.ones((batch, 1)), np.zeros(batch, bool)
    s = _to_numpy(spacing, "spacing")
    if s.ndim == 1:
        s = np.broadcast_to(s, (batch, s.shape[0])).copy()
    if s.ndim != 2 or s.shape[0] != batch:
        raise ValueError(f"spacing must be (B, D) or (D,) for a batch of {batch}, got shape {s.shape}")
    unknown = np.all(np.isnan(s), axis=1)
    partial = np.any(np.isnan(s), axis=1) & ~unknown
    if partial.any():
        raise ValueError(f"spacing rows {np.flatnonzero(partial).tolist()} are partly NaN: {s[partial].tolist()}")
    s[unknown] = 1.0
    return s, ~unknown


class _RadialErrorMetric(Metric):
    """Shared update: radial errors in px and, for images with a spacing, in mm.

    The result is in mm when every image of the run had a spacing, otherwise in px (with a warning if only
    some had one), so units are never mixed. ``None`` spacing or a NaN row means unknown.
    """

    required_output_keys = ("pred", "label", "spacing")

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    def _zero(self) -> torch.Tensor:
        return torch.tensor(0.0, dtype=torch.float64, device=self._device)

    def _errors(self, output: Any) -> tuple[np.ndarray, np.ndarray]:
        """(B, N) errors in px and in mm (the latter equals px for images without spacing); counts them."""
        pred, gt, spacing = _unpack(output)
        if gt is None:
            raise ValueError(f"{type(self).__name__} needs ground-truth points ('label'), got None")
        e_px = radial_errors(pred, gt)
        if e_px.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects batched (B, N, D) points, got {e_px.shape} errors")
        s, known = _split_spacing(spacing, e_px.shape[0])
        e_mm = radial_errors(pred, gt, s) if known.any() else e_px
        self._n_images += float(e_px.shape[0])
        self._n_without_spacing += float((~known).sum())
        return e_px, e_mm

    def _use_mm(self) -> bool:
        n_without, n_images = self._n_without_spacing.item(), self._n_images.item()
        if 0 < n_without < n_images:
            warnings.warn(
                f"{type(self).__name__}: {int(n_without)} of {int(n_images)} images have no spacing; "
                "reporting in pixels instead of mixing mm and px"
            )
        return n_without == 0

    @property
    def unit(self) -> str | None:
        """``"mm"`` or ``"px"`` for the data seen so far (``None`` before any update)."""
        if self._n_images.item() == 0:
            return None
        return "mm" if self._n_without_spacing.item() == 0 else "px"


class MeanRadialError(_RadialErrorMetric):
    """Mean radial error over all (image, landmark) pairs with ground truth and a prediction.

    In mm when every image has a spacing, else in pixels. Missing ground truth is skipped; a not-found
    prediction (NaN) is left out of the mean (see :mod:`custom_monai.metrics.landmark_metrics`). If ground
    truth exists but nothing was found at all, the value is ``inf`` (the worst possible), so that such a
    model never becomes the "best" checkpoint. Lower is better.
    """

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum_px, self._sum_mm, self._count = self._zero(), self._zero(), self._zero()
        self._n_points, self._n_images, self._n_without_spacing = self._zero(), self._zero(), self._zero()

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        e_px, e_mm = self._errors(output)
        found = np.isfinite(e_px)
        self._sum_px += float(e_px[found].sum())
        self._sum_mm += float(e_mm[found].sum())
        self._count += float(found.sum())
        self._n_points += float((~np.isnan(e_px)).sum())

    @sync_all_reduce("_sum_px", "_sum_mm", "_count", "_n_points", "_n_images", "_n_without_spacing")
    def compute(self) -> float:
        if self._n_points.item() == 0:
            raise NotComputableError("MeanRadialError needs at least one landmark with ground truth before compute")
        if self._count.item() == 0:
            return float("inf")
        total = self._sum_mm if self._use_mm() else self._sum_px
        return float(total.item() / self._count.item())


class SuccessDetectionRate(_RadialErrorMetric):
    """Percentage of (image, landmark) pairs with ground truth whose radial error is ``<= threshold``.

    ``threshold`` is in mm when every image has a spacing, else in pixels. Not-found predictions count as
    failures. Higher is better.
    """

    def __init__(
        self, threshold: float = 2.0, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu"
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = float(threshold)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._success_px, self._success_mm, self._n_points = self._zero(), self._zero(), self._zero()
        self._n_images, self._n_without_spacing = self._zero(), self._zero()

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        e_px, e_mm = self._errors(output)
        has_gt = ~np.isnan(e_px)
        self._success_px += float((e_px[has_gt] <= self.threshold + _TIE_TOL).sum())
        self._success_mm += float((e_mm[has_gt] <= self.threshold + _TIE_TOL).sum())
        self._n_points += float(has_gt.sum())

    @sync_all_reduce("_success_px", "_success_mm", "_n_points", "_n_images", "_n_without_spacing")
    def compute(self) -> float:
        if self._n_points.item() == 0:
            raise NotComputableError("SuccessDetectionRate needs at least one landmark with ground truth")
        success = self._success_mm if self._use_mm() else self._success_px
        return float(100.0 * success.item() / self._n_points.item())
