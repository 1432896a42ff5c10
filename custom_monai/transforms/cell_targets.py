"""Cell (patch) targets of the global-to-local FCNN of Noothout et al. (TMI 2020).

A fully convolutional network with total stride ``c`` (the *cell size*) gives one output per
``c x c[ x c]`` cell of its input. For every landmark each cell predicts

- a presence logit: is the landmark inside this cell (one-hot target, one cell per landmark), and
- a displacement from the cell centre to the landmark, learned in the signed-log space
  ``sign(d) * log10(|d| + 1)`` so that far cells do not dominate the L1 loss.

Geometry convention (used by the encoder, the decoder and the networks' ``cell_centers``):
points are continuous **pixel-centre** index coordinates (pixel ``k`` is centred at ``k`` and
covers ``[k - 0.5, k + 0.5)``), in array axis order ``x, y[, z]``. Cell ``i`` along an axis holds
pixels ``i*c ... i*c + c - 1``, i.e. the interval ``[i*c - 0.5, (i+1)*c - 0.5)``, and its centre is
``i*c + (c - 1)/2`` (15.5 for the first 32-pixel cell). The cell that contains ``p`` is
``floor((p + 0.5) / c)``, so a point on a border between two cells belongs to the upper one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from custom_monai.transforms.landmarks import to_grid

__all__ = [
    "signed_log10",
    "signed_exp10",
    "cell_centers",
    "cell_index",
    "encode_cells",
    "decode_cells",
    "CellTargets",
    "CellTargetsd",
    "DECODE_MODES",
]

DECODE_MODES = ("weighted", "topk", "threshold")


def signed_log10(x: Any) -> Any:
    """``sign(x) * log10(|x| + 1)`` for numpy arrays or torch tensors (the displacement target space)."""
    if isinstance(x, torch.Tensor):
        return torch.sign(x) * torch.log10(x.abs() + 1.0)
    x = np.asarray(x)
    return np.sign(x) * np.log10(np.abs(x) + 1.0)


def signed_exp10(y: Any) -> Any:
    """Inverse of :func:`signed_log10`: ``sign(y) * (10**|y| - 1)``."""
    if isinstance(y, torch.Tensor):
        return torch.sign(y) * (torch.pow(10.0, y.abs()) - 1.0)
    y = np.asarray(y)
    return np.sign(y) * (np.power(10.0, np.abs(y)) - 1.0)


def _cell_sizes(cell_size: int | Sequence[int], ndim: int) -> np.ndarray:
    sizes = np.broadcast_to(np.asarray(cell_size, dtype=np.int64), (ndim,)).copy()
    if np.any(sizes < 1):
        raise ValueError(f"cell_size must be >= 1 per axis, got {cell_size}.")
    return sizes


def cell_centers(
    grid_shape: Sequence[int],
    cell_size: int | Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centres of all cells of a grid, ``(*grid_shape, D)``, in input pixel-centre coordinates.

    The centre of cell ``(i, j[, k])`` is ``index * c + (c - 1) / 2`` per axis (see module docstring).
    """
    grid_shape = [int(g) for g in grid_shape]
    sizes = _cell_sizes(cell_size, len(grid_shape))
    axes = [torch.arange(g, dtype=torch.float64) * float(c) + (float(c) - 1.0) / 2.0 for g, c in zip(grid_shape, sizes)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=-1).to(device=device, dtype=dtype)


def cell_index(points: np.ndarray, cell_size: int | Sequence[int]) -> np.ndarray:
    """Integer index of the cell containing each point, ``floor((p + 0.5) / c)``; NaN points give -1."""
    points = np.asarray(points, dtype=np.float64)
    sizes = _cell_sizes(cell_size, points.shape[-1])
    finite = np.isfinite(points)
    idx = np.floor((np.where(finite, points, 0.0) + 0.5) / sizes).astype(np.int64)
    return np.where(finite, idx, -1)


def encode_cells(
    points: np.ndarray | torch.Tensor,
    grid_shape: Sequence[int],
    cell_size: int | Sequence[int],
    keep_outside: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Presence and log-displacement targets of ``points`` on a grid of cells.

    Args:
        points: ``(N, D)`` landmark positions in the current grid (pixel-centre index coordinates,
            axis order of the array); NaN rows are missing landmarks.
        grid_shape: number of cells per axis (the network's output grid).
        cell_size: pixels per cell (an int, or one per axis).
        keep_outside: a point outside the grid normally gets mask 0 (ignored by the loss). With
            ``True`` it keeps mask 1 with an all-zero presence map and its (far) displacements, so
            the network also learns that the landmark is *not* in this chunk.

    Returns:
        ``presence (N, *grid)`` one-hot float32, ``displacement (N, D, *grid)`` float32 =
        ``signed_log10(point - cell centre)`` (zero for missing points), and ``mask (N,)`` float32,
        1 where the landmark supervises the loss.
    """
    pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    pts = pts.astype(np.float64, copy=False)
    grid_shape = tuple(int(g) for g in grid_shape)
    ndim = len(grid_shape)
    if pts.ndim != 2 or pts.shape[1] != ndim:
        raise ValueError(f"points must have shape (N, {ndim}) for a {ndim}-D grid {grid_shape}, got {pts.shape}.")
    n = pts.shape[0]
    finite = np.all(np.isfinite(pts), axis=1)
    idx = cell_index(pts, cell_size)
    inside = finite & np.all((idx >= 0) & (idx < np.asarray(grid_shape)), axis=1)

    presence = np.zeros((n, *grid_shape), dtype=np.float32)
    if inside.any():
        rows = np.nonzero(inside)[0]
        presence[(rows, *idx[rows].T)] = 1.0

    centres = cell_centers(grid_shape, cell_size, dtype=torch.float64).numpy()  # (*grid, D)
    centres = np.moveaxis(centres, -1, 0)  # (D, *grid)
    expand = (slice(None), slice(None)) + (None,) * ndim
    disp = np.where(finite[:, None], pts, 0.0)[expand] - centres[None]  # (N, D, *grid)
    disp = signed_log10(disp)
    disp[~finite] = 0.0
    mask = (inside | (finite & keep_outside)).astype(np.float32)
    return presence, disp.astype(np.float32), mask


def decode_cells(
    prob: torch.Tensor,
    displacement: torch.Tensor,
    cell_size: int | Sequence[int],
    mode: str = "weighted",
    k: int = 9,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmark positions from per-cell presence probabilities and log-displacements.

    Every cell votes for ``cell centre + signed_exp10(displacement)``; the landmark is the mean of
    the votes weighted by the cells' probabilities, taken over

    - ``"weighted"``: all cells (the paper's inference),
    - ``"topk"``: the ``k`` most probable cells,
    - ``"threshold"``: the cells with ``prob > threshold``.

    If no cell has weight (all probabilities zero, or none above the threshold) the vote of the most
    probable cell is used.

    Args:
        prob: ``(B, N, *grid)`` presence probabilities (sigmoid of the network's logits).
        displacement: ``(B, N, D, *grid)`` predicted displacements in signed-log space.
        cell_size: pixels per cell of the network.

    Returns:
        ``points (B, N, D)`` in the network input's pixel coordinates (not rounded) and
        ``confidence (B, N)`` = the highest cell probability of each landmark.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"mode must be one of {DECODE_MODES}, got {mode!r}.")
    if prob.ndim < 3 or displacement.ndim != prob.ndim + 1:
        raise ValueError(
            f"expected prob (B, N, *grid) and displacement (B, N, D, *grid), got {tuple(prob.shape)} and "
            f"{tuple(displacement.shape)}."
        )
    b, n = prob.shape[:2]
    grid = tuple(prob.shape[2:])
    ndim = len(grid)
    if tuple(displacement.shape) != (b, n, ndim, *grid):
        raise ValueError(
            f"displacement shape {tuple(displacement.shape)} does not match prob {tuple(prob.shape)}: expected "
            f"{(b, n, ndim, *grid)}."
        )
    p = prob.reshape(b, n, -1).float()
    centres = cell_centers(grid, cell_size, device=prob.device).reshape(-1, ndim).T  # (D, M)
    # an untrained net can output huge log-displacements: clamp votes to twice the input's extent so
    # that 10**y cannot overflow to inf (inf * weight 0 would poison the weighted mean with NaN)
    extent = float(max(g * int(c) for g, c in zip(grid, _cell_sizes(cell_size, ndim))))
    log_disp = displacement.reshape(b, n, ndim, -1).float().clamp(-np.log10(2 * extent + 1), np.log10(2 * extent + 1))
    votes = centres + signed_exp10(log_disp)  # (B, N, D, M)

    if mode == "weighted":
        w = p
    elif mode == "topk":
        vals, idx = p.topk(min(int(k), p.shape[-1]), dim=-1)
        w = torch.zeros_like(p).scatter(-1, idx, vals)
    else:
        w = torch.where(p > threshold, p, torch.zeros_like(p))
    total = w.sum(-1, keepdim=True)
    best = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)
    w = torch.where(total > 0, w, best)
    points = (votes * w[:, :, None]).sum(-1) / w.sum(-1)[..., None]
    return points, p.max(-1).values


class CellTargets(Transform):
    """Array transform: ``(points (N, D), spatial_shape) -> (presence, displacement, mask)``.

    The grid is ``spatial_shape / cell_size``; the spatial shape must be a multiple of the cell size
    (pad with ``DivisiblePadd(k=cell_size)``), because only then do the network's cells tile the
    input exactly. See :func:`encode_cells`.
    """

    def __init__(self, cell_size: int | Sequence[int] = 32, keep_outside: bool = False) -> None:
        self.cell_size = cell_size
        self.keep_outside = keep_outside

    def grid_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        spatial = np.asarray([int(s) for s in spatial_shape])
        sizes = _cell_sizes(self.cell_size, len(spatial))
        if np.any(spatial % sizes):
            raise ValueError(
                f"spatial shape {tuple(spatial)} is not a multiple of the cell size {tuple(sizes)}; pad the image "
                f"first (e.g. DivisiblePadd(k={self.cell_size}))."
            )
        return tuple(int(g) for g in spatial // sizes)

    def __call__(
        self, points: np.ndarray | torch.Tensor, spatial_shape: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return encode_cells(points, self.grid_shape(spatial_shape), self.cell_size, self.keep_outside)


class CellTargetsd(MapTransform):
    """Dictionary version of :class:`CellTargets`, built on the current grid of ``data[ref_key]``.

    ``data[keys]`` holds ``(N, D)`` landmarks in the original image's index frame; they are mapped to
    the reference image's current grid with :func:`custom_monai.transforms.landmarks.to_grid`
    (``inv(affine) @ meta["landmark_affine"]``), so every earlier crop, pad, resize or flip is
    accounted for. The reference image must be a MetaTensor prepared by ``PrepareLandmarksd``. Writes ``out_keys[0]`` (presence, ``(N, *grid)``),
    ``out_keys[1]`` (log-displacement, ``(N, D, *grid)``) and ``mask_key`` (``(N,)``).
    """

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        ref_key: str = "image",
        cell_size: int | Sequence[int] = 32,
        out_keys: Sequence[str] = ("presence", "displacement"),
        mask_key: str = "landmark_mask",
        keep_outside: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"CellTargetsd takes one landmark key, got {self.keys}.")
        if len(out_keys) != 2:
            raise ValueError(f"out_keys must name (presence, displacement), got {out_keys}.")
        self.ref_key = ref_key
        self.out_keys = tuple(out_keys)
        self.mask_key = mask_key
        self.encoder = CellTargets(cell_size, keep_outside)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.ref_key not in d:
                raise KeyError(f"CellTargetsd: reference image key {self.ref_key!r} not in the data.")
            image = d[self.ref_key]
            spatial = tuple(image.shape[1:])
            points = d[key]
            points = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
            if points.ndim != 2 or points.shape[1] != len(spatial):
                raise ValueError(
                    f"CellTargetsd: {key!r} must be (N, {len(spatial)}) for image {self.ref_key!r} of shape "
                    f"{tuple(image.shape)}, got {points.shape}."
                )
            presence, disp, mask = self.encoder(to_grid(points.astype(np.float64), image), spatial)
            d[self.out_keys[0]] = presence
            d[self.out_keys[1]] = disp
            d[self.mask_key] = mask
        return d
