"""D-CeLR two-pass inference geometry (SPECS §4 "Inference"): crop around the first pass, run again, map back.

Pass 1 runs the network on the whole image (resized to the network input, not aspect-preserving) and its
points are mapped to the original frame by the usual predictor path. Pass 2 crops the *original* image to
the bounding box of those points expanded by ``margin`` pixels per side and shifted by ``shift``
(ISBI 2015: 300 px, x shifted by +100; ISBI 2023: 200 px, no shift), clamps it to the image, resizes the
crop to the same network input size (again not aspect-preserving: each axis has its own scale, exactly as
the first pass) and maps the second prediction back.

Conventions (those of the rest of ``custom_monai``): points are array-index coordinates of the original
image, ``(x, y)`` for MONAI 2-D ``[c, x, y]`` arrays, pixel centres at integers. A box is the integer range
``[start, end)`` per axis. The network sees the crop resized to ``S`` (``input_size``) and returns
normalised ``p = j / S`` (``j`` the index on the resized grid, as
:class:`~custom_monai.transforms.NormalizedCoordinatesd` writes the targets).
MONAI's ``Resize`` (``align_corners=False``; see ``monai.transforms.utils.scale_affine``) puts resized index
``j`` at crop index ``(j + 0.5) n / S - 0.5`` for a crop of ``n`` pixels, so

    ``x = start + (p S + 0.5) n / S - 0.5``        (:func:`crop_normalized_to_original`)

and sigma (a scale) maps as ``sigma_px = sigma n``. Everything works per axis and for any D.

:class:`DCeLRPredictor` (the dcelr_ceph2d bundle's ``inferer``) runs both passes on a batch and maps the
reference, fine-tune and two-pass outputs and their sigmas to the input image through the MetaTensor affines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from custom_monai.transforms.landmarks import to_original
from custom_monai.transforms.rescale import anti_aliased_resize

from .predictor import LandmarkPredictor, clip_to_image

__all__ = [
    "landmark_box",
    "crop_normalized_to_original",
    "original_to_crop_normalized",
    "sigma_to_original",
    "crop_resize",
    "second_pass",
    "DCeLRPredictor",
]


def _per_axis(value: float | Sequence[float], d: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * d
    out = [float(v) for v in value]
    if len(out) != d:
        raise ValueError(f"{name} needs 1 or {d} values, got {value}.")
    return out


def landmark_box(
    points: torch.Tensor,
    spatial_shape: Sequence[int],
    margin: float | Sequence[float] = 300.0,
    shift: float | Sequence[float] = (100.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer crop box ``[start, end)`` around the landmarks, expanded, shifted and clamped to the image.

    ``start = floor(min - margin + shift)``, ``end = ceil(max + margin + shift) + 1``, then clamped to
    ``[0, size]``; NaN (missing) points are ignored and with no finite point the box is the whole image.

    Args:
        points: ``(K, D)`` or ``(B, K, D)`` first-pass points in the original index frame.
        spatial_shape: original ``(S0, ..)`` (one image; the same for the whole batch).
        margin: pixels added on each side, per axis or one value (ISBI 2015: 300; ISBI 2023: 200).
        shift: translation of the box, per axis or one value (ISBI 2015: (100, 0) = +100 px in x).

    Returns:
        ``(start, end)``: int64 ``(D,)`` or ``(B, D)``.
    """
    p = torch.as_tensor(points, dtype=torch.float64)
    single = p.dim() == 2
    if single:
        p = p[None]
    if p.dim() != 3:
        raise ValueError(f"landmark_box: points must be (K, D) or (B, K, D), got {tuple(p.shape)}.")
    d = p.shape[-1]
    size = torch.tensor([int(s) for s in spatial_shape], dtype=torch.float64)
    if size.numel() != d:
        raise ValueError(f"landmark_box: spatial_shape {list(spatial_shape)} does not match D = {d}.")
    m = torch.tensor(_per_axis(margin, d, "margin"), dtype=torch.float64)
    s = torch.tensor(_per_axis(shift, d, "shift"), dtype=torch.float64)
    finite = torch.isfinite(p).all(dim=-1, keepdim=True)  # (B, K, 1)
    lo = torch.where(finite, p, torch.full_like(p, math.inf)).amin(dim=1)  # (B, D)
    hi = torch.where(finite, p, torch.full_like(p, -math.inf)).amax(dim=1)
    any_point = finite.any(dim=1)  # (B, 1)
    start = torch.floor(lo - m + s).clamp(min=0.0)
    end = torch.minimum(torch.ceil(hi + m + s) + 1.0, size)
    start = torch.where(any_point, torch.minimum(start, size - 1.0), torch.zeros_like(start))
    end = torch.where(any_point, torch.maximum(end, start + 1.0), size.expand_as(end))
    start, end = start.long(), end.long()
    return (start[0], end[0]) if single else (start, end)


def _box_terms(start: torch.Tensor, end: torch.Tensor, input_size: Sequence[int], like: torch.Tensor):
    start = torch.as_tensor(start, dtype=like.dtype, device=like.device)
    n = torch.as_tensor(end, dtype=like.dtype, device=like.device) - start
    size = torch.tensor([float(v) for v in input_size], dtype=like.dtype, device=like.device)
    if start.dim() == 2:  # (B, D) boxes against (B, K, D) points
        start, n = start[:, None, :], n[:, None, :]
    return start, n, size


def crop_normalized_to_original(
    points: torch.Tensor, start: torch.Tensor, end: torch.Tensor, input_size: Sequence[int]
) -> torch.Tensor:
    """Normalised points ``(.., K, D)`` of the resized crop -> original index frame (inverse of crop + resize)."""
    start, n, size = _box_terms(start, end, input_size, points)
    return start + (points * size + 0.5) * n / size - 0.5


def original_to_crop_normalized(
    points: torch.Tensor, start: torch.Tensor, end: torch.Tensor, input_size: Sequence[int]
) -> torch.Tensor:
    """Original index frame ``(.., K, D)`` -> normalised points of the crop resized to ``input_size``."""
    start, n, size = _box_terms(start, end, input_size, points)
    return ((points - start + 0.5) * size / n - 0.5) / size


def sigma_to_original(sigma: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Normalised sigma ``(.., K, D)`` of the resized crop -> original pixels (``sigma * crop size``)."""
    start, n, _ = _box_terms(start, end, [1] * sigma.shape[-1], sigma)
    return sigma * n


def crop_resize(
    image: torch.Tensor,
    start: Sequence[int] | torch.Tensor,
    end: Sequence[int] | torch.Tensor,
    input_size: Sequence[int],
    mode: str = "bilinear",
    anti_aliasing: bool = False,
) -> torch.Tensor:
    """Crop ``image`` ``(C, *S)`` to ``[start, end)`` and resize to ``input_size`` with MONAI's ``Resize``.

    Use the first pass's ``Resize`` settings (mode, anti-aliasing) so both passes see the same preprocessing.
    Intensity preprocessing that depends on the image content (e.g. scaling by the maximum) must already
    have been applied to ``image`` in the original frame, not recomputed on the crop. Returns a plain tensor.
    """
    image = torch.as_tensor(image)
    starts = [int(v) for v in torch.as_tensor(start).reshape(-1).tolist()]
    ends = [int(v) for v in torch.as_tensor(end).reshape(-1).tolist()]
    if len(starts) != image.dim() - 1 or len(ends) != len(starts):
        raise ValueError(f"crop_resize: box {starts} -> {ends} does not match image of shape {tuple(image.shape)}.")
    crop = image[(slice(None), *[slice(s, e) for s, e in zip(starts, ends)])]
    # = MONAI Resize(input_size, mode, anti_aliasing) up to float rounding, with the faster shared smoothing
    out = anti_aliased_resize(crop, [int(v) for v in input_size], mode, anti_aliasing)
    return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)


@torch.no_grad()
def second_pass(
    network: torch.nn.Module,
    image: torch.Tensor,
    first_points: torch.Tensor,
    input_size: Sequence[int],
    margin: float | Sequence[float] = 300.0,
    shift: float | Sequence[float] = (100.0, 0.0),
    mode: str = "bilinear",
    anti_aliasing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Run the D-CeLR second pass on one image.

    Args:
        network: returns ``(1, K, .. 2D)`` whose last ``2D`` columns are the normalised ``(p, sigma)`` of the
            prediction (``DCeLR.forward``: the last fine-tune layer).
        image: ``(C, *S)`` the original image, intensity-preprocessed as in training.
        first_points: ``(K, D)`` first-pass points in the original frame.
        input_size, mode, anti_aliasing: the network input size and the first pass's ``Resize`` settings.
        margin, shift: see :func:`landmark_box`.

    Returns:
        ``(points (K, D), sigma (K, D) in original pixels, (start, end))``.
    """
    image = torch.as_tensor(image)
    start, end = landmark_box(first_points, image.shape[1:], margin, shift)
    crop = crop_resize(image, start, end, input_size, mode, anti_aliasing)
    device = next(network.parameters()).device
    d = first_points.shape[-1]
    # the prediction is the last (p, sigma) group of the network's output (DCeLR: the last fine-tune layer)
    out = network(crop[None].to(device=device, dtype=torch.float32))[0, :, -2 * d :].detach().cpu().double()
    points = crop_normalized_to_original(out[:, :d], start, end, input_size)
    sigma = sigma_to_original(out[:, d : 2 * d], start, end)
    return points.float(), sigma.float(), (start, end)


def _affines(image: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A, A)`` grid affines and landmark affines of a collated MetaTensor."""
    affine = torch.as_tensor(image.affine).detach().cpu().double()
    landmark_affine = torch.as_tensor(image.meta["landmark_affine"]).detach().cpu().double()
    if affine.ndim == 2:
        affine = affine[None].expand(batch_size, -1, -1)
    if landmark_affine.ndim == 2:
        landmark_affine = landmark_affine[None].expand(batch_size, -1, -1)
    return affine, landmark_affine


def _sigma_to_original(grid: torch.Tensor, sigma: torch.Tensor, affine: Any, landmark_affine: Any) -> torch.Tensor:
    """Per-axis sigmas ``(.., K, D)`` on a grid -> lengths in the original frame (through the linear map)."""
    base = to_original(grid, affine, landmark_affine)
    out = []
    for a in range(grid.shape[-1]):
        step = torch.zeros_like(grid)
        step[..., a] = torch.nan_to_num(sigma[..., a])
        out.append(torch.linalg.vector_norm(to_original(grid + step, affine, landmark_affine) - base, dim=-1))
    return torch.stack(out, dim=-1)


class DCeLRPredictor(LandmarkPredictor):
    """D-CeLR prediction (SPECS §4 "Inference"): one network, up to two passes, points in the original frame.

    The network (:class:`custom_monai.networks.DCeLR`) returns ``(B, K, 4 (1 + L))``: the reference encoder's
    normalised ``(p, sigma)`` then each fine-tune layer's. Outputs (``output``, and ``extra_outputs`` for more
    metrics):

    - ``"reference"``: the reference encoder on the whole (resized) image;
    - ``"fine"``: the last fine-tune layer on the whole image (pass 1);
    - ``"two_pass"`` (the method's inference): pass 2 crops ``batch[full_image_key]`` (the preprocessed image
      before the resize, kept by the preprocessing) to the pass-1 landmark box widened by ``margin`` and
      shifted by ``shift`` (pixels of that image; ISBI 2015: 300 and (+100, 0)), resizes the crop to the
      network input size with the same ``Resize`` settings as the preprocessing, runs the network again and
      maps its last fine-tune layer back (:func:`second_pass`).

    The confidence of each landmark is the predicted **sigma in original pixels** (mean of the per-axis
    sigmas: an uncertainty, larger = less sure); the per-axis values are returned as ``sigma`` (B, K, D),
    which :class:`custom_monai.handlers.LandmarkReportHandler` writes per landmark with ``landmark_fields``.
    Extra outputs are returned as ``{"pred_<name>": (B, K, D)}`` (original frame), as
    :class:`~custom_monai.inferers.CoordinateRegressionPredictor` does.
    """

    OUTPUTS = ("reference", "fine", "two_pass")

    def __init__(
        self,
        network: nn.Module,
        output: str = "two_pass",
        extra_outputs: Sequence[str] = (),
        image_key: str = "image",
        full_image_key: str = "image_full",
        margin: float | Sequence[float] = 300.0,
        shift: float | Sequence[float] = (100.0, 0.0),
        mode: str = "bilinear",
        anti_aliasing: bool = True,
        sigma_key: str = "sigma",
    ) -> None:
        extra = [str(n) for n in ([extra_outputs] if isinstance(extra_outputs, str) else extra_outputs)]
        for what, name in [("output", output)] + [("extra_outputs", e) for e in extra]:
            if name not in self.OUTPUTS:
                raise ValueError(f"DCeLRPredictor: {what} {name!r} is not one of {list(self.OUTPUTS)}.")
        self.network = network
        self.output = str(output)
        self.extra_outputs = extra
        self.image_key = image_key
        self.full_image_key = full_image_key
        self.margin = margin
        self.shift = shift
        self.mode = mode
        self.anti_aliasing = bool(anti_aliasing)
        self.sigma_key = sigma_key

    def _outputs(self, batch: dict, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (points, sigma)}``, both ``(B, K, D)`` in the original frame (pixels)."""
        image = batch[self.image_key]
        spatial = [int(v) for v in image.shape[2:]]
        d = len(spatial)
        out = self.network(image.to(device)).detach().float().cpu().double()
        if out.ndim != 3 or out.shape[-1] % (2 * d) or out.shape[-1] < 4 * d:
            raise ValueError(
                f"DCeLRPredictor: the network must return (B, K, 2 {d} (1 + L)) = reference then fine-tune "
                f"(p, sigma) groups, got {tuple(out.shape)}."
            )
        b = out.shape[0]
        size = torch.tensor(spatial, dtype=torch.float64)
        affine, landmark_affine = _affines(image, b)
        groups = {"reference": out[..., : 2 * d], "fine": out[..., -2 * d :]}
        wanted = {self.output, *self.extra_outputs}
        result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, g in groups.items():
            grid = g[..., :d] * size
            points = to_original(grid, affine, landmark_affine)
            result[name] = (points, _sigma_to_original(grid, g[..., d:] * size, affine, landmark_affine))
        if "two_pass" in wanted:
            if self.full_image_key not in batch:
                raise KeyError(
                    f"DCeLRPredictor: the two-pass output needs batch[{self.full_image_key!r}], the image before "
                    "the resize (the bundle's preprocessing keeps it with CopyItemsd)."
                )
            full = batch[self.full_image_key]
            f_affine, f_landmark = _affines(full, b)
            # pass-1 points on the grid of the full image: image grid -> world -> full grid
            first = to_original(groups["fine"][..., :d] * size, affine, f_affine)
            pts, sig = [], []
            for i in range(b):
                crop_grid, crop_sigma, _ = second_pass(
                    self.network, torch.as_tensor(full[i]), first[i], spatial,
                    self.margin, self.shift, self.mode, self.anti_aliasing,
                )
                crop_grid, crop_sigma = crop_grid.double(), crop_sigma.double()
                pts.append(to_original(crop_grid, f_affine[i], f_landmark[i]))
                sig.append(_sigma_to_original(crop_grid, crop_sigma, f_affine[i], f_landmark[i]))
            result["two_pass"] = (torch.stack(pts), torch.stack(sig))
        return {k: (clip_to_image(p.float(), image), s.float()) for k, (p, s) in result.items() if k in wanted}

    def __call__(self, batch: dict, device: torch.device) -> tuple:
        outs = self._outputs(batch, device)
        points, sigma = outs[self.output]
        extra = {f"pred_{name}": outs[name][0] for name in self.extra_outputs}
        extra[self.sigma_key] = sigma
        return points, sigma.mean(dim=-1), extra
