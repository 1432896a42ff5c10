"""Strided heatmaps: targets at a network's output strides, MMPose "default" decoding, multiresolution predictor.

Used by the multiresolution HTC (``SPECS.md`` §3, :class:`custom_monai.networks.htc.HTCLandmarkNet`), whose two
heads predict heatmaps at strides 4 and 2 of the input grid.

**Coordinate convention** (MMPose's non-UDP one): heatmap pixel ``j`` of a stride-``s`` head is input pixel
``s * j``, so a point ``p`` on the input grid is drawn at ``p / s`` and a decoded heatmap point ``q`` maps back to
``s * q`` (:func:`input_to_heatmap`, :func:`heatmap_to_input`). Targets and decoding share these two functions,
so they are exact inverses of each other.

**Targets** reuse :func:`custom_monai.transforms.heatmap.gaussian_heatmaps`: Gaussians with sigma = 2 *heatmap*
pixels at every stride, value 1 at the exact point, zero beyond 3 sigma (MSRA window). Unlike MMPose's MSRA
targets the centre is **not rounded** to a heatmap pixel (MMPose's ``int(p / s + 0.5)`` costs up to half a
heatmap pixel, i.e. 2 input pixels at stride 4).

**Decoding** (:func:`decode_quarter_offset`): arg-max, then a shift of 0.25 heatmap pixel along each axis
towards the larger of the two neighbours (no shift at a border or on a tie). Exact for a peak on a pixel
centre, error at most 0.25 px for a peak between pixels (the existing decoders in
:mod:`custom_monai.transforms.heatmap` give the integer arg-max and the Zhong threshold-mean).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from custom_monai.transforms.heatmap import gaussian_heatmaps, heatmap_argmax
from custom_monai.transforms.landmarks import LANDMARK_MASK, points_inside, to_grid

from .predictor import LandmarkPredictor, clip_to_image, grid_to_original

__all__ = [
    "MultiResolutionHeatmapd",
    "MultiResolutionHeatmapPredictor",
    "decode_multiresolution",
    "decode_quarter_offset",
    "heatmap_to_input",
    "input_to_heatmap",
    "multiresolution_heatmaps",
]


def input_to_heatmap(points: Any, stride: float) -> Any:
    """Input-grid points -> heatmap-grid points of a stride-``stride`` head (``p / s``); numpy or torch."""
    return points / float(stride)


def heatmap_to_input(points: Any, stride: float) -> Any:
    """Heatmap-grid points of a stride-``stride`` head -> input-grid points (``s * q``); numpy or torch."""
    return points * float(stride)


def multiresolution_heatmaps(
    points: Any,
    input_shape: Sequence[int],
    strides: Sequence[int] = (4, 2),
    sigma: float = 2.0,
    truncate: float | None = 3.0,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """One Gaussian target (N, *input_shape / s) per stride for input-grid points (N, D); NaN rows -> zeros."""
    out = []
    pts = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64)
    for s in strides:
        if any(int(n) % int(s) for n in input_shape):
            raise ValueError(f"input shape {list(input_shape)} is not a multiple of the stride {s}")
        shape = [int(n) // int(s) for n in input_shape]
        out.append(gaussian_heatmaps(input_to_heatmap(pts, s), shape, sigma, "peak", truncate, dtype))
    return out


class MultiResolutionHeatmapd(MapTransform):
    """Targets for multiresolution heads from the landmarks in ``keys`` on the current grid of ``ref_key``.

    Writes one float tensor (N, *S / s) per stride under ``out_keys`` (plain tensors: their grid is not the
    image's) and the (N,) float32 mask under ``mask_key`` (1 = present and inside the input grid), like
    :class:`custom_monai.transforms.heatmap.LandmarkHeatmapd`. Run it last, after all spatial transforms.
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        strides: Sequence[int] = (4, 2),
        out_keys: Sequence[str] = ("heatmap_quarter", "heatmap_half"),
        mask_key: str = LANDMARK_MASK,
        sigma: float = 2.0,
        truncate: float | None = 3.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("MultiResolutionHeatmapd takes one landmark key")
        if len(strides) != len(out_keys):
            raise ValueError(f"{len(strides)} strides but {len(out_keys)} out_keys")
        self.ref_key = ref_key
        self.strides = [int(s) for s in strides]
        self.out_keys = list(out_keys)
        self.mask_key = mask_key
        self.sigma = float(sigma)
        self.truncate = truncate

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        shape = tuple(int(n) for n in image.shape[1:])
        for key in self.key_iterator(d):
            grid = np.asarray(to_grid(np.asarray(d[key], dtype=np.float32), image), dtype=np.float64)
            for out_key, hm in zip(
                self.out_keys, multiresolution_heatmaps(grid, shape, self.strides, self.sigma, self.truncate)
            ):
                d[out_key] = hm
            d[self.mask_key] = points_inside(grid, shape, 0.5).astype(np.float32)
        return d


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def decode_quarter_offset(hm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MMPose "default" decoding: (B, N, *spatial) -> (points (B, N, D) heatmap grid, peak values (B, N)).

    Arg-max, then ``+0.25 * sign(h[i+1] - h[i-1])`` along each axis where both neighbours exist.
    """
    hm = _plain(hm).detach()
    if hm.ndim not in (4, 5):
        raise ValueError(f"expected heatmaps (B, N, H, W) or (B, N, D, H, W), got shape {tuple(hm.shape)}")
    spatial = [int(s) for s in hm.shape[2:]]
    flat = hm.flatten(2).float()
    coords, val = heatmap_argmax(hm, return_value=True)
    idx = flat.argmax(dim=-1, keepdim=True)  # same index as heatmap_argmax (first maximum)
    out = coords.clone()
    step = 1
    for a in range(len(spatial) - 1, -1, -1):  # row-major: the last axis has step 1
        pos = coords[..., a].long()
        inner = (pos > 0) & (pos < spatial[a] - 1)
        lo = (idx - step).clamp(0, flat.shape[-1] - 1)
        hi = (idx + step).clamp(0, flat.shape[-1] - 1)
        diff = (flat.gather(-1, hi) - flat.gather(-1, lo)).squeeze(-1)
        out[..., a] += 0.25 * torch.sign(diff) * inner
        step *= spatial[a]
    return out, val.float()


def decode_multiresolution(
    heads: Sequence[torch.Tensor], strides: Sequence[int] = (4, 2), combine: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Decode each head, map it to the input grid and combine.

    Args:
        heads: heatmaps (B, N, *spatial) per head.
        strides: the heads' strides w.r.t. the input grid.
        combine: ``"mean"`` of all heads (the method), or ``"first"`` / ``"last"``, or an integer string index.

    Returns:
        ``(points (B, N, D) input grid, confidence (B, N) = mean peak value, per-head input-grid points)``.
    """
    if len(heads) != len(strides):
        raise ValueError(f"{len(heads)} heads but {len(strides)} strides")
    per_head, values = [], []
    for hm, s in zip(heads, strides):
        p, v = decode_quarter_offset(hm)
        per_head.append(heatmap_to_input(p, s))
        values.append(v)
    if combine == "mean":
        points = torch.stack(per_head).mean(0)
        conf = torch.stack(values).mean(0)
    else:
        i = {"first": 0, "last": len(heads) - 1}.get(combine)
        i = int(combine) if i is None else i
        points, conf = per_head[i], values[i]
    return points, conf, per_head


class MultiResolutionHeatmapPredictor(LandmarkPredictor):
    """Points in the original frame from a network with strided heatmap heads (e.g. ``HTCLandmarkNet``).

    Calls ``net.forward_heads(image)`` if the network has it, else ``net(image)`` (a tensor = one head, the
    stacked ``(B, 2, K, H, W)`` of ``HTCLandmarkNet.forward`` when two strides are set, or a tuple/list of heads);
    decodes each head with :func:`decode_quarter_offset`, maps it to the input grid with
    its stride, and combines (:func:`decode_multiresolution`).

    Args:
        net: the network (pass ``.module`` of a DDP wrapper).
        strides: stride of each head, in ``forward_heads`` order ((4, 2) for HTC: quarter, half).
        head: ``"mean"`` (the method), ``"0"``/``"1"``... or a name of ``head_names`` (a single head, e.g. for
            per-head benchmark rows).
        flip_axis: optional test-time flip along this spatial axis (0 = x): the flipped image is decoded, its
            points are mirrored back (``S - 1 - x``) and averaged with the plain ones. Coordinate averaging
            makes MMPose's 1-px heatmap shift unnecessary. Off by default: cephalograms are asymmetric
            (profile view), a mirrored skull is not a plausible input, and the landmarks have no mirror pairs.
        image_key: batch key of the network input.
        head_names: names of the heads for ``head`` (HTC: ``("quarter", "half")``).
        extra_outputs: also return each head's points (original frame) as ``pred_<head name>``, for
            per-head metrics (``custom_monai.engines.landmark_metric_output(..., pred_key="pred_half")``).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        strides: Sequence[int] = (4, 2),
        head: str = "mean",
        flip_axis: int | None = None,
        image_key: str = "image",
        head_names: Sequence[str] = ("quarter", "half"),
        extra_outputs: bool = False,
    ) -> None:
        self.net = net
        self.strides = [int(s) for s in strides]
        names = [str(n) for n in head_names]
        head = str(head)
        if head in names:
            head = str(names.index(head))
        elif head not in ("mean", "first", "last") and not (head.isdigit() and int(head) < len(self.strides)):
            raise ValueError(f"head must be 'mean', one of {names} or a head index, got {head!r}")
        self.head = head
        self.head_names = names
        self.extra_outputs = bool(extra_outputs)
        self.flip_axis = flip_axis
        self.image_key = image_key

    def _heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        fn = getattr(self.net, "forward_heads", None)
        out = fn(x) if fn is not None else self.net(x)
        if isinstance(out, torch.Tensor) and out.dim() == 5 and out.shape[1] == 2 and len(self.strides) == 2:
            from custom_monai.networks.htc import split_heads

            out = split_heads(out)
        heads = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(heads) != len(self.strides):
            raise ValueError(f"the network returned {len(heads)} heads but {len(self.strides)} strides are set")
        return [h.float() for h in heads]

    def _predict(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        image = batch[self.image_key]
        x = _plain(image).to(device)
        with torch.no_grad():
            points, conf, per_head = decode_multiresolution(self._heads(x), self.strides, self.head)
            if self.flip_axis is not None:
                dim = 2 + int(self.flip_axis)
                fpoints, fconf, fper = decode_multiresolution(self._heads(torch.flip(x, dims=[dim])), self.strides, self.head)
                for p in [fpoints, *fper]:
                    p[..., self.flip_axis] = x.shape[dim] - 1 - p[..., self.flip_axis]
                points, conf = (points + fpoints) / 2, (conf + fconf) / 2
                per_head = [(a + b) / 2 for a, b in zip(per_head, fper)]
        return points.cpu(), conf.cpu(), [p.cpu() for p in per_head]

    def predict_grid(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
        points, conf, _ = self._predict(batch, device)
        return points, conf, self.image_key

    def __call__(self, batch: dict, device: torch.device) -> tuple:
        points, conf, per_head = self._predict(batch, device)
        image = batch[self.image_key]

        def original(grid: torch.Tensor) -> torch.Tensor:  # as the base class: mapped back, clamped to the image
            return clip_to_image(grid_to_original(grid, image), image)

        if not self.extra_outputs:
            return original(points), conf
        names = self.head_names if len(self.head_names) == len(per_head) else [str(i) for i in range(len(per_head))]
        return original(points), conf, {f"pred_{n}": original(p) for n, p in zip(names, per_head)}
