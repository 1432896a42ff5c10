"""Prediction for coordinate-regression networks (e.g. CEPHMark-Net): normalised points -> original image.

A regression network returns points normalised by the size of its input grid, as produced for training by
:class:`custom_monai.transforms.NormalizedCoordinatesd` (``grid index / grid size``, so ``(x / W, y / H)``
for MONAI's 2D ``[c, x, y]`` arrays). The predictor undoes exactly that with
:func:`custom_monai.transforms.normalized_to_grid` on the grid of the image it fed to the network; the base
class then maps the points through every resize/crop/pad back to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from custom_monai.transforms.heatmap import NormalizedCoordinatesd, normalized_to_grid

from .predictor import LandmarkPredictor, clip_to_image, grid_to_original

__all__ = ["CoordinateRegressionPredictor", "SelectOutput", "normalized_targets"]


def normalized_targets(dataset: Sequence[dict], key: str = "landmarks", ref_key: str = "image") -> torch.Tensor:
    """The regression targets of a preprocessed dataset, ``(M, N, D)`` (NaN where a landmark is missing or
    outside the image): :class:`custom_monai.transforms.NormalizedCoordinatesd` on every item, without
    augmentation. Used for target statistics (``CEPHMarkNet.set_target_statistics``)."""
    to_coords = NormalizedCoordinatesd(key, ref_key=ref_key, out_key="_coords", mask_key="_mask")
    rows = []
    for item in dataset:
        d = to_coords(item)
        coords = torch.as_tensor(d["_coords"], dtype=torch.float32).clone()
        coords[torch.as_tensor(d["_mask"]) == 0] = float("nan")
        rows.append(coords)
    if not rows:
        raise ValueError("normalized_targets: the dataset is empty")
    return torch.stack(rows)


class SelectOutput(nn.Module):
    """Wrap a network that returns a tuple and return only its element ``index``.

    Used where a tool expects one tensor from a network that returns several (CEPHMark-Net itself now returns
    one ``(B, N, 4)`` tensor, so its bundle no longer needs this).
    """

    def __init__(self, network: nn.Module, index: int = -1) -> None:
        super().__init__()
        self.network = network
        self.index = int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        if isinstance(out, (tuple, list)):
            return out[self.index]
        return out


class CoordinateRegressionPredictor(LandmarkPredictor):
    """Points from a network that regresses normalised coordinates of the whole input image.

    The network sees ``batch[image_key]`` (B, C, *spatial) and returns (B, N, D) normalised points, or
    several such outputs named by ``output_names``: a tuple, or one ``(B, N, k D)`` tensor with the k outputs
    side by side along the last axis (CEPHMark-Net: ``(B, N, 4)`` = ``("coarse", "refined")``). ``output``
    selects the prediction; ``extra_outputs`` names others that are also returned, mapped to the original
    frame, as ``{"pred_<name>": (B, N, D)}`` (the third element that
    :class:`custom_monai.engines.LandmarkEvaluator` adds to its output, e.g. for a coarse-stage MRE).
    Regression gives no confidence, so it is ``None``. As in the base class, points are clamped to the
    original image extent.

    Args:
        network: the regression network.
        output: name of the output used as the prediction (``"refined"`` or ``"coarse"`` for CEPHMark-Net).
        output_names: names of the network's outputs in order; a network returning one tensor has one name.
        extra_outputs: names of outputs also returned (in the original frame) for extra metrics.
        image_key: batch key of the network input; its grid is the one the targets were normalised on.
    """

    def __init__(
        self,
        network: nn.Module,
        output: str = "refined",
        output_names: Sequence[str] = ("coarse", "refined"),
        extra_outputs: Sequence[str] = (),
        image_key: str = "image",
    ) -> None:
        names = [str(n) for n in output_names]
        extra = [str(n) for n in ([extra_outputs] if isinstance(extra_outputs, str) else extra_outputs)]
        for what, name in [("output", output)] + [("extra_outputs", e) for e in extra]:
            if name not in names:
                raise ValueError(f"CoordinateRegressionPredictor: {what} {name!r} is not one of the outputs {names}.")
        self.network = network
        self.output = str(output)
        self.output_names = names
        self.extra_outputs = extra
        self.image_key = image_key

    def _forward(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        image = batch[self.image_key]
        out = self.network(image.to(device))
        spatial = tuple(image.shape[2:])
        k, d = len(self.output_names), len(spatial)
        if isinstance(out, (tuple, list)):
            outs = list(out)
        elif k > 1 and out.ndim == 3 and out.shape[-1] == k * d:  # (B, N, k D): the outputs side by side
            outs = list(torch.split(out, d, dim=-1))
        else:
            outs = [out]
        if len(outs) != len(self.output_names):
            raise ValueError(
                f"CoordinateRegressionPredictor: the network returned {len(outs)} output(s), "
                f"expected {len(self.output_names)} named {self.output_names}."
            )
        grids = {}
        for name, coords in zip(self.output_names, outs):
            if coords.ndim != 3 or coords.shape[-1] != len(spatial):
                raise ValueError(
                    f"CoordinateRegressionPredictor: output {name!r} must be (B, N, {len(spatial)}) normalised "
                    f"points for a {len(spatial)}D input, got {tuple(coords.shape)}."
                )
            grids[name] = normalized_to_grid(coords.detach().float().cpu(), spatial)
        return grids

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, None, str]:
        """``(points (B, N, D) on the grid of batch[image_key], None, image_key)``."""
        return self._forward(batch, device)[self.output], None, self.image_key

    def __call__(
        self, batch: dict, device: torch.device
    ) -> tuple[torch.Tensor, None] | tuple[torch.Tensor, None, dict[str, torch.Tensor]]:
        grids = self._forward(batch, device)
        image = batch[self.image_key]

        def original(grid: torch.Tensor) -> torch.Tensor:  # as the base class: mapped back, clamped to the image
            return clip_to_image(grid_to_original(grid, image), image)

        points = original(grids[self.output])
        if not self.extra_outputs:
            return points, None
        return points, None, {f"pred_{name}": original(grids[name]) for name in self.extra_outputs}
