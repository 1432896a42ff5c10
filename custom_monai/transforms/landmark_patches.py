"""One patch per landmark, stacked on channels: the input of per-landmark local networks.

A local refinement network (e.g. Noothout et al.'s local FCNN) sees, for each landmark ``n``, a small
sub-image around that landmark's (estimated) position. :func:`extract_patches` cuts them from one image
(zero padding where a patch leaves the image) and returns where each patch starts on the image grid, so
a point found in patch ``n`` maps back to the grid with ``point + origin[n]``. The same function serves
training (:class:`LandmarkPatchesd`, patches around the ground truth with random offsets) and inference
(``custom_monai.inferers.GlobalLocalPredictor``, patches centred on the global estimates).

Box convention (as :class:`~custom_monai.transforms.spatial.CropAroundPoint`): a patch of size ``P``
around centre ``c`` starts at ``floor(c + 0.5) - P // 2`` per axis, so the rounded centre sits at index
``P // 2`` of the patch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from .cell_targets import CellTargets
from .landmarks import _image_name, to_grid

__all__ = ["patch_starts", "extract_patches", "LandmarkPatchesd", "PatchCellTargetsd"]


def _sizes(patch_size: int | Sequence[int], ndim: int) -> list[int]:
    sizes = [int(s) for s in ensure_tuple_rep(patch_size, ndim)]
    if any(s < 1 for s in sizes):
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    return sizes


def patch_starts(centers: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """Integer start index ``floor(c + 0.5) - P // 2`` of the patch around each centre, ``(..., N, D)``.

    Non-finite centres give start 0 (their patch is meaningless; callers mark them missing).
    """
    c = torch.as_tensor(centers, dtype=torch.float64)
    half = torch.tensor([s // 2 for s in _sizes(patch_size, c.shape[-1])], dtype=torch.float64)
    finite = torch.isfinite(c)
    return torch.where(finite, torch.floor(torch.where(finite, c, 0.0) + 0.5) - half, 0.0).to(torch.int64)


def extract_patches(
    image: torch.Tensor, centers: torch.Tensor | np.ndarray, patch_size: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one patch per centre from a channel-first image; zeros outside the image.

    Args:
        image: ``(C, *spatial)`` tensor (a MetaTensor is read as a plain tensor).
        centers: ``(N, D)`` patch centres on the image grid (pixel-centre index coordinates, axis order
            of the array); a non-finite row gives an all-zero patch.
        patch_size: one size for all axes or one per axis.

    Returns:
        ``patches (N, C, *patch_size)`` (same dtype and device as ``image``) and ``origins (N, D)``
        float32 = the grid index of each patch's first pixel (NaN for non-finite centres), so that
        ``grid point = patch point + origin``.
    """
    img = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    spatial = list(img.shape[1:])
    ndim = len(spatial)
    c = torch.as_tensor(np.asarray(centers) if not isinstance(centers, torch.Tensor) else centers).detach().cpu()
    if c.ndim != 2 or c.shape[1] != ndim:
        raise ValueError(f"centers must be (N, {ndim}) for an image of shape {tuple(img.shape)}, got {tuple(c.shape)}")
    sizes = _sizes(patch_size, ndim)
    finite = torch.isfinite(c).all(dim=1)
    starts = patch_starts(c, sizes)
    patches = img.new_zeros((c.shape[0], img.shape[0], *sizes))
    for n in range(c.shape[0]):
        if not finite[n]:
            continue
        # copy the part of the box that lies inside the image; the rest stays zero
        lo = [max(int(a), 0) for a in starts[n].tolist()]
        hi = [min(int(a) + s, p) for a, s, p in zip(starts[n].tolist(), sizes, spatial)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        src = (slice(None), *(slice(l, h) for l, h in zip(lo, hi)))
        dst = (n, slice(None), *(slice(l - int(a), h - int(a)) for l, h, a in zip(lo, hi, starts[n].tolist())))
        patches[dst] = img[src]
    origins = torch.where(finite[:, None], starts.to(torch.float32), torch.tensor(float("nan")))
    return patches, origins


class LandmarkPatchesd(Randomizable, MapTransform):
    """A patch around every landmark, stacked on channels, with each landmark's position in its own patch.

    For landmark ``n`` the centre is its current grid position on ``keys`` (the landmarks stay in the
    original frame; :func:`~custom_monai.transforms.landmarks.to_grid` maps them) plus a uniform random
    offset in ``[-max_offset, max_offset]`` per axis, so that the landmark lands anywhere in the patch
    (``max_offset = P // 2 - 1`` keeps it inside). ``max_offset=0`` centres the patches (deterministic).

    Writes ``patches_key`` (``(N * C, *P)``, channels ``n*C ... n*C + C - 1`` = landmark ``n``'s patch, the
    layout of :class:`custom_monai.networks.LocalFCNN`), ``points_key`` (``(N, D)`` float32: landmark ``n``
    in patch ``n``'s pixel coordinates, NaN when missing) and ``origin_key`` (``(N, D)``: patch origins on
    the image grid). Missing landmarks get an all-zero patch.

    Args:
        keys: the image to cut from (one key), a MetaTensor prepared by ``PrepareLandmarksd``.
        patch_size: patch size (one for all axes or one per axis).
        max_offset: maximum random shift of the patch centre from the landmark, in pixels.
        landmarks_key: the ``(N, D)`` landmarks in the original frame.
    """

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int],
        max_offset: float | Sequence[float] = 0.0,
        landmarks_key: str = "landmarks",
        patches_key: str = "patches",
        points_key: str = "patch_points",
        origin_key: str = "patch_origin",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LandmarkPatchesd cuts from one image key, got {self.keys}")
        self.patch_size = patch_size
        self.max_offset = max_offset
        self.landmarks_key = landmarks_key
        self.patches_key = patches_key
        self.points_key = points_key
        self.origin_key = origin_key
        self._offsets: np.ndarray | None = None

    def randomize(self, shape: tuple[int, int]) -> None:
        m = np.asarray(ensure_tuple_rep(self.max_offset, shape[1]), dtype=np.float64)
        if np.any(m < 0):
            raise ValueError(f"max_offset must be >= 0, got {self.max_offset}")
        self._offsets = self.R.uniform(-m, m, size=shape) if np.any(m > 0) else np.zeros(shape)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if self.landmarks_key not in d:
                raise KeyError(f"LandmarkPatchesd: no {self.landmarks_key!r} in the data for {_image_name(image)}")
            points = np.asarray(d[self.landmarks_key], dtype=np.float64)
            ndim = image.ndim - 1
            if points.ndim != 2 or points.shape[1] != ndim:
                raise ValueError(
                    f"{_image_name(image)}: {self.landmarks_key!r} must be (N, {ndim}), got {points.shape}"
                )
            grid = np.asarray(to_grid(points, image), dtype=np.float64)
            self.randomize(grid.shape)
            centers = grid + self._offsets
            patches, origins = extract_patches(image, torch.as_tensor(centers), self.patch_size)
            d[self.patches_key] = patches.reshape(-1, *patches.shape[2:])
            d[self.points_key] = (grid - origins.numpy().astype(np.float64)).astype(np.float32)
            d[self.origin_key] = origins.numpy()
        return d


class PatchCellTargetsd(MapTransform):
    """Cell targets of each landmark on its own patch (see :func:`~custom_monai.transforms.encode_cells`).

    ``keys`` holds ``(N, D)`` points already in patch pixel coordinates (``LandmarkPatchesd``'s
    ``patch_points``); all patches share the spatial shape of ``data[patches_key]``, so one call of the
    shared :class:`~custom_monai.transforms.CellTargets` encoder gives landmark ``n``'s presence and
    displacement maps on patch ``n``. Writes ``out_keys`` (presence ``(N, *grid)``, displacement
    ``(N, D, *grid)``) and ``mask_key`` (``(N,)``: 1 = annotated and inside its patch).
    """

    def __init__(
        self,
        keys: KeysCollection = "patch_points",
        patches_key: str = "patches",
        cell_size: int | Sequence[int] = 2,
        out_keys: Sequence[str] = ("presence", "displacement"),
        mask_key: str = "landmark_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(out_keys) != 2:
            raise ValueError(f"out_keys must name (presence, displacement), got {out_keys}")
        self.patches_key = patches_key
        self.out_keys = tuple(out_keys)
        self.mask_key = mask_key
        self.encoder = CellTargets(cell_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            spatial = tuple(d[self.patches_key].shape[1:])
            presence, disp, mask = self.encoder(np.asarray(d[key], dtype=np.float64), spatial)
            d[self.out_keys[0]], d[self.out_keys[1]], d[self.mask_key] = presence, disp, mask
        return d
