"""Zhong et al. (2019) inference: global heatmaps -> coarse points -> expansive exploration."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .expansive_exploration import ExpansiveExplorationInferer, coarse_from_global
from .predictor import LandmarkPredictor, grid_to_original, original_to_grid

__all__ = ["AttentionGuidedPredictor", "sample_prior"]


def sample_prior(probs: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> Callable:
    """The global stage's probability maps as a prior for :class:`ExpansiveExplorationInferer`.

    Args:
        probs: (N, *spatial) one image's global-stage probabilities of the N landmarks.
        scale, offset: (D,) the affine map from local-grid to global-grid index coordinates
            (``global = local * scale + offset``; both grids are axis-aligned rescalings of the image).

    Returns:
        ``prior(coords (K, M, D), landmarks (K,)) -> (K, M)``, bilinearly (trilinearly) interpolated, 0 outside.
    """
    dims = probs.dim() - 1
    size = torch.tensor(probs.shape[1:], dtype=torch.float32, device=probs.device)

    def prior(coords: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        g = coords.to(probs.device).float() * scale.to(probs.device) + offset.to(probs.device)
        norm = (2 * g / (size - 1).clamp_min(1) - 1).flip(-1)  # grid_sample wants (x, y[, z]) = reversed dims
        grid = norm.reshape([coords.shape[0]] + [1] * (dims - 1) + [coords.shape[1], dims])
        maps = probs[landmarks.to(probs.device)].unsqueeze(1).float()  # (K, 1, *spatial)
        out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(coords.shape[0], coords.shape[1])

    return prior


class AttentionGuidedPredictor(LandmarkPredictor):
    """Two-stage attention-guided landmark prediction.

    The global network sees ``batch[global_key]`` (the whole image at low resolution); the arg-max of
    each landmark channel is the coarse point ("attention"). It is mapped to the grid of
    ``batch[local_key]`` (the image at the local scale) through the original frame, and the local
    network refines it with :class:`ExpansiveExplorationInferer` (5 regions, or one with
    ``expand=False``). ``stage="global"`` stops after the coarse points (the paper's stage-1 row).

    Args:
        global_net: global U-Net returning (B, N + 1, *spatial) logits.
        local_net: local U-Net, same output layout; required for ``stage="full"``.
        n_landmarks: N.
        stage: ``"full"`` or ``"global"``.
        expand: expansive exploration (paper) or a single centred region (ablation).
        region_size: inference region side at the local scale (paper: 150).
        eps: expansion factor (paper: 1.8).
        threshold: threshold on the merged, min-max-normalised heatmap (paper: 0.5).
        global_key: batch key of the global-resolution image.
        local_key: batch key of the local-resolution image.
        region_batch_size: regions per local forward pass.
        expand_below: explore only landmarks whose centred region's peak probability is below this
            (``1.0``: all, the paper); see :class:`ExpansiveExplorationInferer`.
        component: decode only one above-threshold blob of the merged local map (paper: all of them): the one
            with the largest local x global probability when ``prior_power`` > 0, else the local maximum's.
        prior_power: weight the merged local map by the global probability map ** this (0: paper).
    """

    def __init__(
        self,
        global_net: nn.Module,
        local_net: nn.Module | None,
        n_landmarks: int,
        stage: str = "full",
        expand: bool = True,
        region_size: int = 150,
        eps: float = 1.8,
        threshold: float = 0.5,
        global_key: str = "image",
        local_key: str = "image_local",
        region_batch_size: int = 32,
        expand_below: float = 1.0,
        component: bool = False,
        prior_power: float = 0.0,
    ) -> None:
        if stage not in ("full", "global"):
            raise ValueError(f"stage must be 'full' or 'global', got {stage!r}")
        if stage == "full" and local_net is None:
            raise ValueError("stage='full' needs a local network")
        self.global_net = global_net
        self.local_net = local_net
        self.n_landmarks = int(n_landmarks)
        self.stage = stage
        self.global_key = global_key
        self.local_key = local_key
        self.local_inferer = None
        if local_net is not None:
            self.local_inferer = ExpansiveExplorationInferer(
                local_net,
                region_size=region_size,
                eps=eps,
                expand=expand,
                threshold=threshold,
                background=True,
                softmax=True,
                batch_size=region_batch_size,
                expand_below=expand_below,
                component=component,
                prior_power=prior_power,
            )

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
        image = batch[self.global_key]
        probs = torch.softmax(self.global_net(image.to(device)).float(), dim=1)
        coarse = coarse_from_global(probs, self.n_landmarks)  # (B, N, D) on the global grid
        confidence = probs[:, : self.n_landmarks].flatten(2).amax(-1)
        if self.stage == "global":
            return coarse.cpu(), confidence.cpu(), self.global_key
        local_image = batch[self.local_key]
        coarse_local = original_to_grid(grid_to_original(coarse, image), local_image)
        if self.local_inferer.prior_power > 0:  # local-grid -> global-grid affine per image, from D + 1 points
            dims = coarse.shape[-1]
            basis = torch.cat([torch.zeros(1, dims), torch.eye(dims)])[None].expand(coarse.shape[0], -1, -1)
            mapped = original_to_grid(grid_to_original(basis.contiguous(), local_image), image)
            offsets, scales = mapped[:, 0], (mapped[:, 1:] - mapped[:, :1]).diagonal(dim1=1, dim2=2)
        points, confs = [], []
        for b in range(coarse_local.shape[0]):
            prior = None
            if self.local_inferer.prior_power > 0:
                prior = sample_prior(probs[b, : self.n_landmarks], scales[b], offsets[b])
            p, c = self.local_inferer(local_image[b : b + 1].to(device), coarse_local[b].to(device), prior)
            points.append(p.cpu())
            confs.append(c.cpu())
        return torch.stack(points), torch.stack(confs), self.local_key
