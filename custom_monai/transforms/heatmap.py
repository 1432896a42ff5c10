"""Training targets for landmark methods (Gaussian heatmaps, normalised coordinates) and heatmap decoders.

Targets are built on the *current* grid of the reference image (after resize/crop/augmentation), from the
landmark array in the original frame via :func:`~custom_monai.transforms.landmarks.to_grid`.

MONAI's ``GenerateHeatmap`` (monai 1.6.1) is not reused: it rounds each point to the nearest voxel before
blurring (up to 0.5 px target error) and convolves full-size impulse images in a Python loop over points.
Here each heatmap is an outer product of 1D Gaussians evaluated at the exact sub-pixel point.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from .landmarks import LANDMARK_MASK, points_inside, to_grid

__all__ = [
    "gaussian_heatmaps",
    "LandmarkHeatmap",
    "LandmarkHeatmapd",
    "LandmarkHeatmapD",
    "LandmarkHeatmapDict",
    "NormalizedCoordinatesd",
    "NormalizedCoordinatesD",
    "NormalizedCoordinatesDict",
    "normalized_to_grid",
    "heatmap_argmax",
    "heatmap_threshold_mean",
]

_NORMALIZE = ("peak", "max", "sum")


def _sigma_array(sigma: float | Sequence[float] | np.ndarray, n: int, d: int) -> np.ndarray:
    """Sigma as (N, D): a scalar, one value per axis (D,), or one per landmark and axis (N, D)."""
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim == 0:
        s = np.full((n, d), float(s))
    elif s.ndim == 1 and s.shape[0] == d:
        s = np.broadcast_to(s, (n, d))
    elif s.shape == (n, 1):
        s = np.broadcast_to(s, (n, d))
    elif s.shape != (n, d):
        raise ValueError(f"sigma must be a scalar, ({d},) per axis or ({n}, {d}) per landmark, got shape {s.shape}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    return np.ascontiguousarray(s)


def gaussian_heatmaps(
    points: Any,
    spatial_shape: Sequence[int],
    sigma: float | Sequence[float] | np.ndarray = 2.0,
    normalize: str = "peak",
    truncate: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian heatmaps (N, *spatial_shape) for grid points (N, D); NaN points give all-zero channels.

    Args:
        points: (N, D) grid coordinates (x, y[, z]) indexing the array axes, sub-pixel allowed.
        spatial_shape: the grid size (D values).
        sigma: in grid pixels; scalar, per axis (D,) or per landmark (N, D).
        normalize: ``"peak"``: ``exp(-|x - p|^2 / 2 sigma^2)``, value 1 at the exact point (the sampled maximum
            is below 1 for sub-pixel points); ``"max"``: each channel's sampled maximum is 1; ``"sum"``: each
            channel sums to 1 over the grid.
        truncate: if given, zero beyond ``truncate * sigma`` along each axis (a box window, e.g. 3 for MSRA).
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    shape = [int(s) for s in spatial_shape]
    p = torch.as_tensor(np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64))
    if p.ndim != 2 or p.shape[1] != len(shape):
        raise ValueError(f"points must be (N, {len(shape)}) for a grid of shape {shape}, got {tuple(p.shape)}")
    n, d = p.shape
    sig = torch.as_tensor(_sigma_array(sigma, n, d))
    present = torch.isfinite(p).all(dim=1)
    p = torch.where(present[:, None], p, torch.zeros_like(p))
    factors = []
    for a in range(d):
        coord = torch.arange(shape[a], dtype=torch.float64)
        diff = (coord[None, :] - p[:, a : a + 1]) / sig[:, a : a + 1]
        g = torch.exp(-0.5 * diff**2)
        if truncate is not None:
            g = torch.where(diff.abs() <= truncate, g, torch.zeros_like(g))
        g = g * present[:, None]
        if normalize != "peak":
            den = g.amax(dim=1, keepdim=True) if normalize == "max" else g.sum(dim=1, keepdim=True)
            g = torch.where(den > 0, g / den.clamp_min(1e-300), torch.zeros_like(g))
        factors.append(g.to(dtype))
    if d == 2:
        hm = factors[0][:, :, None] * factors[1][:, None, :]
    elif d == 3:
        hm = factors[0][:, :, None, None] * factors[1][:, None, :, None] * factors[2][:, None, None, :]
    else:
        raise ValueError(f"only 2D and 3D heatmaps are supported, got D = {d}")
    return hm.to(device) if device is not None else hm


class LandmarkHeatmap(Transform):
    """Grid points (N, D) -> Gaussian heatmaps (N[+1], *spatial); see :func:`gaussian_heatmaps`.

    Args:
        sigma: in grid pixels; scalar, per axis or per landmark and axis.
        background: append a channel ``clip(1 - sum of the landmark channels, 0, 1)`` (softmax targets, as in
            Zhong et al. 2019: 19 landmarks + background = 20 channels). Needs ``normalize="peak"`` or ``"max"``.
        normalize: ``"peak"``, ``"max"`` or ``"sum"`` (see :func:`gaussian_heatmaps`).
        truncate: optional box window in multiples of sigma.
    """

    def __init__(
        self,
        sigma: float | Sequence[float] | np.ndarray = 2.0,
        background: bool = False,
        normalize: str = "peak",
        truncate: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        if background and normalize == "sum":
            raise ValueError("a background channel (1 - sum) needs peak-normalised heatmaps, not normalize='sum'")
        self.sigma = sigma
        self.background = background
        self.normalize = normalize
        self.truncate = truncate
        self.dtype = dtype

    def __call__(self, points: Any, spatial_shape: Sequence[int]) -> torch.Tensor:
        hm = gaussian_heatmaps(points, spatial_shape, self.sigma, self.normalize, self.truncate, self.dtype)
        if self.background:
            bg = (1.0 - hm.sum(dim=0, keepdim=True)).clamp_(0.0, 1.0)
            hm = torch.cat([hm, bg], dim=0)
        return hm


class LandmarkHeatmapd(MapTransform):
    """Gaussian heatmap targets on the current grid of ``ref_key`` for the landmarks in ``keys``.

    Writes ``out_key`` (a MetaTensor (N[+1], *spatial) with the image's affine, so it can be saved or
    inverted like the image) and ``mask_key``: float32 (N,), 1 for a present landmark inside the grid,
    0 for a missing one (all-zero channel) or one outside the grid (its Gaussian is still drawn, so the
    background channel stays truthful near borders).
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        sigma: float | Sequence[float] | np.ndarray = 2.0,
        background: bool = False,
        out_key: str | Sequence[str] = "heatmap",
        mask_key: str | Sequence[str] = LANDMARK_MASK,
        normalize: str = "peak",
        truncate: float | None = None,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.out_keys = _per_key(out_key, self.keys, "out_key")
        self.mask_keys = _per_key(mask_key, self.keys, "mask_key")
        self.generator = LandmarkHeatmap(sigma, background, normalize, truncate, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        shape = tuple(image.shape[1:])
        for key, out_key, mask_key in self.key_iterator(d, self.out_keys, self.mask_keys):
            grid = to_grid(np.asarray(d[key], dtype=np.float32), image)
            hm = self.generator(grid, shape)
            d[out_key] = MetaTensor(hm, affine=image.affine.clone(), meta=_target_meta(image))
            d[mask_key] = points_inside(grid, shape, 0.5).astype(np.float32)
        return d


class NormalizedCoordinatesd(MapTransform):
    """Regression targets: current grid points divided by the grid size, ``(x / W, y / H[, z / D])``.

    Writes float32 (N, D) under ``out_key`` (NaN kept for missing landmarks; losses must use the mask)
    and the (N,) mask under ``mask_key`` (as :class:`LandmarkHeatmapd`). Undo with :func:`normalized_to_grid`.
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        out_key: str | Sequence[str] = "coords",
        mask_key: str | Sequence[str] = LANDMARK_MASK,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.out_keys = _per_key(out_key, self.keys, "out_key")
        self.mask_keys = _per_key(mask_key, self.keys, "mask_key")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.ref_key]
        shape = tuple(image.shape[1:])
        for key, out_key, mask_key in self.key_iterator(d, self.out_keys, self.mask_keys):
            grid = np.asarray(to_grid(np.asarray(d[key], dtype=np.float32), image), dtype=np.float64)
            d[out_key] = (grid / np.asarray(shape, dtype=np.float64)).astype(np.float32)
            d[mask_key] = points_inside(grid, shape, 0.5).astype(np.float32)
        return d


def normalized_to_grid(coords: Any, spatial_shape: Sequence[int] | Any) -> Any:
    """Inverse of :class:`NormalizedCoordinatesd`: multiply by the grid size; (..., N, D) numpy or torch.

    ``spatial_shape`` may be (D,) or, for a batch, (B, D).
    """
    if isinstance(coords, torch.Tensor):
        size = torch.as_tensor(spatial_shape, dtype=coords.dtype, device=coords.device)
        return coords * (size.unsqueeze(-2) if size.ndim == 2 else size)
    size = np.asarray(spatial_shape, dtype=np.float64)
    return np.asarray(coords) * (size[..., None, :] if size.ndim == 2 else size)


def _per_key(value: str | Sequence[str], keys: tuple, what: str) -> list[str]:
    out = [value] if isinstance(value, str) else list(value)
    if len(out) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(out)} values for {what}")
    return out


def _target_meta(image: Any) -> dict:
    meta = getattr(image, "meta", {})
    return {k: v for k, v in meta.items() if k not in ("affine", "applied_operations")}


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def heatmap_argmax(hm: torch.Tensor, return_value: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integer peak position per channel: (B, N, *spatial) -> (B, N, D) float32 grid coords (x, y[, z]).

    With ``return_value`` also the peak values (B, N) (e.g. as a confidence).
    """
    if hm.ndim not in (4, 5):
        raise ValueError(f"expected heatmaps (B, N, H, W) or (B, N, D, H, W), got shape {tuple(hm.shape)}")
    spatial = hm.shape[2:]
    flat = _plain(hm).flatten(2)
    val, idx = flat.max(dim=-1)
    coords = torch.stack(torch.unravel_index(idx, tuple(spatial)), dim=-1).to(torch.float32)
    return (coords, val) if return_value else coords


def heatmap_threshold_mean(hm: torch.Tensor, thr: float = 0.5) -> torch.Tensor:
    """Zhong et al. decoding: per channel min-max normalise to [0, 1], drop values below ``thr``, and return
    the unweighted mean position of the remaining non-zero pixels; (B, N, *spatial) -> (B, N, D) float32.

    A constant channel (no peak) gives NaN.
    """
    if hm.ndim not in (4, 5):
        raise ValueError(f"expected heatmaps (B, N, H, W) or (B, N, D, H, W), got shape {tuple(hm.shape)}")
    flat = _plain(hm).detach().flatten(2).to(torch.float32)
    mn = flat.amin(dim=-1, keepdim=True)
    rng = flat.amax(dim=-1, keepdim=True) - mn
    norm = (flat - mn) / rng.clamp_min(torch.finfo(torch.float32).tiny)
    keep = ((norm >= thr) & (norm > 0) & (rng > 0)).to(torch.float32).reshape(hm.shape)
    spatial_axes = list(range(2, hm.ndim))
    count = keep.sum(dim=spatial_axes).unsqueeze(-1)
    coords = torch.stack(
        [  # mean position per axis from the marginal counts along that axis
            (keep.sum(dim=[a for a in spatial_axes if a != ax]) * torch.arange(hm.shape[ax], device=flat.device)).sum(-1)
            for ax in spatial_axes
        ],
        dim=-1,
    )
    return torch.where(count > 0, coords / count.clamp_min(1.0), torch.full_like(coords, float("nan")))


LandmarkHeatmapD = LandmarkHeatmapDict = LandmarkHeatmapd
NormalizedCoordinatesD = NormalizedCoordinatesDict = NormalizedCoordinatesd
