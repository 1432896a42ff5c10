"""Noothout et al. (TMI 2020) inference: global FCNN cell votes -> per-landmark patches -> local FCNN votes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from custom_monai.transforms.cell_targets import DECODE_MODES, decode_cells
from custom_monai.transforms.landmark_patches import extract_patches

from .predictor import LandmarkPredictor, grid_to_original, original_to_grid

__all__ = ["GlobalLocalPredictor"]


def _cell_size(net: nn.Module | None, given: int | Sequence[int] | None, name: str) -> int | Sequence[int]:
    if given is not None:
        return given
    size = getattr(net, "cell_size", None)
    if size is None:
        raise ValueError(f"{name} has no 'cell_size' attribute; pass {name.split('_')[0]}_cell_size")
    return size


class GlobalLocalPredictor(LandmarkPredictor):
    """Global-to-local landmark prediction with cell (patch) classification + regression.

    1. **Global.** ``global_net`` sees ``batch[global_key]`` (the whole image, padded to a multiple of
       the cell size) and returns, per cell and landmark, a presence logit and a log-displacement;
       :func:`~custom_monai.transforms.decode_cells` turns them into one point per landmark (paper:
       probability-weighted mean of all cells' votes; ``decode_mode`` ``"topk"``/``"threshold"`` restrict
       the vote).
    2. **Local.** Each global estimate is mapped (through the original frame) to the grid of
       ``batch[local_key]`` (the image at the local resolution); a ``patch_size`` patch centred on it is cut
       for every landmark (:func:`~custom_monai.transforms.extract_patches`), the patches go through
       ``local_net`` stacked on channels (one patch per landmark), and each landmark's own cell votes are
       decoded in its patch and shifted by the patch origin.

    ``stage="global"`` stops after step 1 (the ablation "global only"). Confidence is the highest cell
    probability of the last stage that ran.

    Args:
        global_net: returns ``(logits (B, N, *grid), displacement (B, N, D, *grid))``, e.g. ``GlobalFCNN``.
        local_net: same output on ``(B, N * C, *patch)`` inputs, e.g. ``LocalFCNN``; needed for ``"full"``.
        stage: ``"full"`` or ``"global"``.
        patch_size: local patch size in pixels of the local image (a multiple of the local cell size).
        global_key, local_key: batch keys of the global- and local-resolution images.
        decode_mode, top_k, threshold: how the global cells vote (see ``decode_cells``).
        local_decode_mode: how the local cells vote.
        global_cell_size, local_cell_size: default: the networks' ``cell_size`` attributes.
    """

    def __init__(
        self,
        global_net: nn.Module,
        local_net: nn.Module | None = None,
        stage: str = "full",
        patch_size: int | Sequence[int] = 32,
        global_key: str = "image",
        local_key: str = "image_local",
        decode_mode: str = "weighted",
        top_k: int = 9,
        threshold: float = 0.5,
        local_decode_mode: str = "weighted",
        global_cell_size: int | Sequence[int] | None = None,
        local_cell_size: int | Sequence[int] | None = None,
    ) -> None:
        if stage not in ("full", "global"):
            raise ValueError(f"stage must be 'full' or 'global', got {stage!r}")
        if stage == "full" and local_net is None:
            raise ValueError("stage='full' needs a local network")
        for name, mode in (("decode_mode", decode_mode), ("local_decode_mode", local_decode_mode)):
            if mode not in DECODE_MODES:
                raise ValueError(f"{name} must be one of {DECODE_MODES}, got {mode!r}")
        self.global_net = global_net
        self.local_net = local_net
        self.stage = stage
        self.patch_size = patch_size
        self.global_key = global_key
        self.local_key = local_key
        self.decode_mode = decode_mode
        self.top_k = int(top_k)
        self.threshold = float(threshold)
        self.local_decode_mode = local_decode_mode
        self.global_cell_size = _cell_size(global_net, global_cell_size, "global_net")
        self.local_cell_size = None if local_net is None else _cell_size(local_net, local_cell_size, "local_net")

    def _decode(self, out: Sequence[torch.Tensor], cell_size, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits, disp = out[0], out[1]
        return decode_cells(torch.sigmoid(logits.float()), disp.float(), cell_size, mode, self.top_k, self.threshold)

    def global_points(self, image: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Global estimates ``(B, N, D)`` on the grid of ``image`` and their confidence ``(B, N)``."""
        points, conf = self._decode(self.global_net(image.to(device)), self.global_cell_size, self.decode_mode)
        return points.cpu(), conf.cpu()

    def local_points(
        self, local_image: torch.Tensor, centers: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``centers (B, N, D)`` (grid of ``local_image``): points on that grid and confidence."""
        patches, origins = [], []
        for b in range(local_image.shape[0]):
            p, o = extract_patches(local_image[b], centers[b], self.patch_size)  # (N, C, *P), (N, D)
            patches.append(p.reshape(-1, *p.shape[2:]))
            origins.append(o)
        x = torch.stack(patches).to(device)
        points, conf = self._decode(self.local_net(x), self.local_cell_size, self.local_decode_mode)
        return points.cpu() + torch.stack(origins), conf.cpu()

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
        image = batch[self.global_key]
        coarse, confidence = self.global_points(image, device)
        if self.stage == "global":
            return coarse, confidence, self.global_key
        local_image = batch[self.local_key]
        centers = original_to_grid(grid_to_original(coarse, image), local_image)
        points, confidence = self.local_points(local_image, centers, device)
        return points, confidence, self.local_key
