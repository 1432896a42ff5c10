"""An evaluator whose output is landmark coordinates in the original image frame.

Every method (heatmaps, coordinate regression, cell voting, multi-stage) differs only in how it
turns a batch into points; that step is a *predictor* (``custom_monai.inferers.LandmarkPredictor``).
The evaluator runs it and hands the same output dictionary to metrics and writers, so metrics never
run in a resized frame and all bundles report through one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.transforms import Transform
from torch.utils.data import DataLoader

from custom_monai.metrics import lower_is_better

__all__ = ["LandmarkEvaluator", "landmark_metric_output"]


def landmark_metric_output(output: dict, pred_key: str = "pred") -> tuple:
    """``output_transform`` for the landmark metrics: ``(pred, label, spacing)`` in the original frame.

    ``pred_key`` picks another point set of the output, e.g. an extra output of the predictor such as
    ``"pred_coarse"`` (``functools.partial(landmark_metric_output, pred_key="pred_coarse")``).
    """
    return output[pred_key], output["label"], output.get("spacing")


class LandmarkEvaluator(Evaluator):
    """Evaluate (or infer with) a landmark predictor.

    Args:
        device: device for the networks and the batch.
        val_data_loader: yields dictionaries with at least ``image`` (a MetaTensor that carries
            ``meta["landmark_affine"]``); ``landmarks`` (B, N, D) in the original frame when labelled;
            ``spacing`` (B, D) when known. A ``None`` batch (all items unreadable) is skipped.
        network: the module(s) of the predictor, used for ``eval()`` mode and by checkpoint handlers.
        predictor: callable ``(batch, device) -> (points (B, N, D), confidence (B, N))`` with points in the
            original image's index frame (NaN = not found). It may return a third element, a dict of extra
            named tensors (e.g. ``{"pred_coarse": (B, N, D)}`` for an intermediate stage, also in the original
            frame), which is added to the iteration output so that additional metrics can read it.
        metric_cmp_fn: compares key metric values; default: lower is better (errors).
        amp: autocast the prediction on CUDA.
        other args: as :class:`monai.engines.Evaluator`.

    The iteration output is ``{"pred", "confidence", "label", "spacing", "landmark_affine", "image_path"}``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        predictor: Callable[[dict, torch.device], tuple[torch.Tensor, torch.Tensor]],
        epoch_length: int | None = None,
        non_blocking: bool = False,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        postprocessing: Transform | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn or lower_is_better,
            val_handlers=val_handlers,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.predictor = predictor

    def _iteration(self, engine: LandmarkEvaluator, batchdata: dict[str, Any] | None) -> dict:
        if not batchdata:
            return {}
        device = torch.device(engine.state.device)
        with engine.mode(engine.network), torch.no_grad():
            if engine.amp and device.type == "cuda":
                with torch.autocast("cuda", **engine.amp_kwargs):
                    result = engine.predictor(batchdata, device)
            else:
                result = engine.predictor(batchdata, device)
        pred, conf = result[0], result[1]
        extra = result[2] if len(result) > 2 and result[2] else {}
        image = batchdata["image"]
        meta = getattr(image, "meta", {})
        paths = meta.get("filename_or_obj", [None] * len(pred))
        return {
            "pred": pred.detach().float().cpu(),
            "confidence": None if conf is None else conf.detach().float().cpu(),
            "label": _as_tensor(batchdata.get("landmarks")),
            "spacing": _as_tensor(batchdata.get("spacing")),
            "landmark_affine": _as_tensor(meta.get("landmark_affine")),
            "image_path": list(paths) if isinstance(paths, (list, tuple)) else [paths],
            **{k: v.detach().float().cpu() for k, v in extra.items()},
        }


def _as_tensor(x: Any) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().as_subclass(torch.Tensor)
    return torch.as_tensor(x, dtype=torch.float32)
