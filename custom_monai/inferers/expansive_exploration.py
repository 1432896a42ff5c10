"""Attention-guided local inference with Expansive Exploration (Zhong et al., MICCAI 2019).

Stage 1 gives one coarse point per landmark (arg-max of the global heatmaps, :func:`coarse_from_global`).
Stage 2 runs the local U-Net on square regions around it: with expansion, four regions at the corners
of a square of side ``eps * region`` plus one centred region (:func:`expansive_regions`); the
softmax channel of that landmark from every region is pasted into a heatmap ``H_M`` (overlaps averaged,
0 outside the regions); per channel ``H_M`` is min-max normalised, values below ``threshold`` are
dropped, and the landmark is the unweighted mean position of the remaining pixels
(:func:`decode_threshold_mean`).

``expand_below`` makes the exploration adaptive: the centred region runs for every landmark, and the
corner regions only for landmarks whose centred-region peak probability is below ``expand_below``
(``1.0`` = always, the paper; ``0.0`` = never, the paper's "without expansion" row). A confident centred
region means the global stage found the landmark, and exploring it can only add look-alike structures
to the merged map; an unconfident one is the global miss that exploration is for. It also saves the
corner regions' forward passes for every confident landmark.

Two fusion options address what goes wrong when the explored regions contain look-alike structures (the
merged map then has two bright blobs, and the paper's mean of everything above the threshold lands between
them, on neither): ``component=True`` keeps only the above-threshold blob that holds the maximum, and
``prior_power`` > 0 multiplies the merged map by the global stage's probability of that landmark (sampled on
the local grid, raised to ``prior_power``), so an explored blob must be supported by the global heatmap too.
With both off (the defaults) the decoding is the paper's.

Everything here is plain torch and works for 2D and 3D (``2**D`` corner regions + 1). Instead of a
full-size ``H_M`` per landmark, the regions are pasted into a local canvas covering their union
(side ``eps * region``), which gives the same result: the full-size map is 0 outside the canvas, so
its minimum is 0 unless the regions cover the whole image, which is handled explicitly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from monai.data import MetaTensor
from scipy import ndimage

__all__ = [
    "expansive_regions",
    "crop_regions",
    "decode_threshold_mean",
    "coarse_from_global",
    "ExpansiveExplorationInferer",
]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def expansive_regions(center: torch.Tensor, region: float = 150, eps: float = 1.8) -> torch.Tensor:
    """Centres of the Expansive Exploration regions around each coarse point.

    Args:
        center: (N, D) coarse points (pixel/voxel index coordinates).
        region: side of one square region.
        eps: expansion factor; the corner regions tile a square of side ``eps * region`` (paper: 1.8, in (1, 2)).

    Returns:
        (N, 2**D + 1, D): the ``2**D`` corner-region centres, offset by ``±(eps - 1) * region / 2`` on every
        axis (±60 px for 150 px and 1.8), then the centre itself.
    """
    center = _plain(center)
    if center.dim() != 2:
        raise ValueError(f"expansive_regions: center must be (N, D), got shape {list(center.shape)}")
    if region <= 0 or eps <= 0:
        raise ValueError(f"expansive_regions: region and eps must be > 0, got region={region}, eps={eps}")
    dims = center.shape[1]
    dtype = center.dtype if center.is_floating_point() else torch.float32
    half = (eps * region - region) / 2.0
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=dims)), dtype=dtype, device=center.device)
    offsets = torch.cat([signs * half, torch.zeros((1, dims), dtype=dtype, device=center.device)])
    return center.to(dtype)[:, None, :] + offsets[None]


def _grid_index(starts: torch.Tensor, size: Sequence[int], dim: int) -> torch.Tensor:
    """(K, 1.., size[dim], ..1) indices ``starts[:, dim] + arange`` shaped to broadcast over a (K, *size) block."""
    shape = [starts.shape[0]] + [1] * len(size)
    shape[1 + dim] = size[dim]
    return (starts[:, dim : dim + 1] + torch.arange(size[dim], device=starts.device)).view(shape)


def crop_regions(
    image: torch.Tensor, starts: torch.Tensor, size: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop K boxes ``[start, start + size)`` from ``image`` (C, *spatial), zero outside the image.

    Returns:
        patches (K, C, *size) and ``inside`` (K, *size), True where the patch pixel lies in the image.
    """
    image = _plain(image)
    starts = _plain(starts).long()
    dims = image.dim() - 1
    if starts.dim() != 2 or starts.shape[1] != dims:
        raise ValueError(f"crop_regions: starts must be (K, {dims}) for an image of shape {list(image.shape)}")
    size = [int(size)] * dims if isinstance(size, (int, float)) else [int(s) for s in size]
    k = starts.shape[0]
    inside = torch.ones([k] + size, dtype=torch.bool, device=image.device)
    index = []
    for d in range(dims):
        idx = _grid_index(starts, size, d)
        inside = inside & (idx >= 0) & (idx < image.shape[1 + d])
        index.append(idx.clamp(0, image.shape[1 + d] - 1))
    patches = image[(slice(None), *index)]  # (C, K, *size)
    patches = patches.movedim(0, 1) * inside[:, None].to(image.dtype)
    return patches, inside


def decode_threshold_mean(
    heatmaps: torch.Tensor,
    threshold: float = 0.5,
    valid: torch.Tensor | None = None,
    minimum: torch.Tensor | None = None,
    component: bool = False,
    select: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: min-max normalise, drop values below ``threshold``, mean position of the rest.

    Args:
        heatmaps: (N, *spatial), one map per landmark.
        threshold: kept where the normalised value is >= ``threshold`` (and > 0).
        valid: optional (N, *spatial) bool; only these pixels exist (min, max and mean ignore the rest).
        minimum: optional (N,) value used as the map minimum instead of the one computed over ``valid``.
        component: keep only the connected above-threshold region (face-connected) that holds the maximum,
            so two separate blobs do not average into a point between them.
        select: optional (N, *spatial) scores that choose that region instead (the region holding the largest
            score among the kept pixels, e.g. the map weighted by a prior); the mean is still of ``heatmaps``.

    Returns:
        points (N, D) in index coordinates of the maps (NaN where nothing survives, e.g. a constant map),
        and ``found`` (N,) bool.
    """
    heatmaps = _plain(heatmaps)
    n = heatmaps.shape[0]
    spatial = heatmaps.shape[1:]
    flat = heatmaps.reshape(n, -1).float()
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else _plain(valid).reshape(n, -1).bool()
    hi = torch.where(ok, flat, torch.full_like(flat, -math.inf)).amax(1)
    lo = torch.where(ok, flat, torch.full_like(flat, math.inf)).amin(1) if minimum is None else _plain(minimum).float()
    span = hi - lo
    norm = (flat - lo[:, None]) / span.clamp_min(torch.finfo(flat.dtype).tiny)[:, None]
    keep = ok & (norm >= threshold) & (norm > 0) & (span > 0)[:, None]
    if component:
        scores = flat if select is None else _plain(select).reshape(n, -1).float()
        keep = _peak_component(keep, scores, spatial)
    w = keep.to(flat.dtype)
    count = w.sum(1)
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=flat.dtype, device=flat.device) for s in spatial], indexing="ij"), -1
    ).reshape(-1, len(spatial))
    points = (w @ coords) / count.clamp_min(1)[:, None]
    found = count > 0
    points = torch.where(found[:, None], points, torch.full_like(points, math.nan))
    return points, found


def _peak_component(keep: torch.Tensor, values: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(N, M) bool ``keep`` reduced to the face-connected region of each row that contains its largest value."""
    out = torch.zeros_like(keep)
    for i in range(keep.shape[0]):
        if not keep[i].any():
            continue
        labels, _ = ndimage.label(keep[i].reshape(spatial).cpu().numpy())
        peak = int(torch.where(keep[i], values[i], torch.full_like(values[i], -math.inf)).argmax())
        out[i] = torch.from_numpy(labels.reshape(-1) == labels.reshape(-1)[peak]).to(keep.device)
    return out


def coarse_from_global(global_probs: torch.Tensor, n_landmarks: int) -> torch.Tensor:
    """Arg-max position of each of the first ``n_landmarks`` channels (the background channel is last).

    Args:
        global_probs: (B, C, *spatial) global-stage heatmaps (logits or probabilities).
        n_landmarks: number of landmark channels (C - 1 with a background channel).

    Returns:
        (B, N, D) float index coordinates on the heatmap grid.
    """
    global_probs = _plain(global_probs)
    if global_probs.dim() < 3:
        raise ValueError(f"coarse_from_global: expected (B, C, *spatial), got shape {list(global_probs.shape)}")
    if not 0 < n_landmarks <= global_probs.shape[1]:
        raise ValueError(
            f"coarse_from_global: n_landmarks={n_landmarks} but the heatmaps have {global_probs.shape[1]} channels"
        )
    spatial = tuple(global_probs.shape[2:])
    flat = global_probs[:, :n_landmarks].flatten(2).argmax(-1)  # (B, N)
    return torch.stack(torch.unravel_index(flat, spatial), -1).float()


def _paste_mean(
    maps: torch.Tensor, rel_starts: torch.Tensor, inside: torch.Tensor, canvas: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average (N, P, *size) maps placed at ``rel_starts`` (N, P, D) on an (N, *canvas) grid.

    Only ``inside`` pixels (in the image) are pasted. Returns the averaged canvas (0 where nothing was
    pasted) and ``covered`` (N, *canvas) bool.
    """
    n, p = maps.shape[:2]
    size = list(maps.shape[2:])
    strides = [math.prod(canvas[d + 1 :]) for d in range(len(canvas))]
    starts = rel_starts.reshape(n * p, -1)
    lin = sum(_grid_index(starts, size, d) * strides[d] for d in range(len(canvas)))  # (N*P, *size)
    lin = lin.reshape(n, -1)
    w = inside.reshape(n, -1).to(maps.dtype)
    total = torch.zeros((n, math.prod(canvas)), dtype=maps.dtype, device=maps.device)
    count = torch.zeros_like(total)
    total.scatter_add_(1, lin, maps.reshape(n, -1) * w)
    count.scatter_add_(1, lin, w)
    covered = count > 0
    mean = total / count.clamp_min(1)
    return mean.reshape([n] + list(canvas)), covered.reshape([n] + list(canvas))


class ExpansiveExplorationInferer:
    """Local-stage inference of Zhong et al.: crops around coarse points -> merged heatmaps -> points.

    Args:
        local_net_fn: the local network (or any callable) mapping (B, C_in, *region) to (B, C, *region)
            logits (or probabilities with ``softmax=False``); C = landmarks + 1 with ``background``.
        region_size: side of each inference region in pixels at the local scale (paper: 150).
        eps: expansion factor (paper: 1.8 -> corner regions offset by ±60 px).
        expand: use the 2**D corner regions + centre; ``False`` = one centred region (paper ablation).
        threshold: threshold on the min-max-normalised merged heatmap (paper: 0.5).
        background: the network's last output channel is background (so C = N + 1, else C = N).
        softmax: apply a softmax over channels to the network output.
        batch_size: regions per forward pass (the regions are split into chunks of this size).
        expand_below: with ``expand``, explore only landmarks whose centred region's peak probability is
            below this (``1.0``: every landmark, as in the paper).
        component: decode only the above-threshold blob holding the merged map's maximum (paper: all of them).
        prior_power: weight the merged map by ``prior ** prior_power`` where a ``prior`` is given to
            ``__call__`` (the global stage's probability map); 0 = no weighting (paper).

    ``__call__(image, coarse, prior=None) -> (points (N, D), confidence (N,))``: ``image`` (1, C_in, *spatial)
    at the local scale, ``coarse`` (N, D) coarse points on the same grid; ``prior(coords, landmarks)``, if
    given, maps (K, M, D) grid coordinates and the (K,) landmark indices to (K, M) non-negative weights. ``points`` are on that grid;
    ``confidence`` is the maximum of the landmark's averaged probability map. A landmark whose merged map
    is constant (nothing to threshold) keeps its coarse point with confidence 0; a NaN coarse point
    gives a NaN point. The network runs under ``torch.no_grad()``; putting it in eval mode is the
    caller's job (MONAI's evaluators do). After a call, ``explored`` holds the (N,) bool of the landmarks
    whose corner regions ran.
    """

    def __init__(
        self,
        local_net_fn: Callable[[torch.Tensor], torch.Tensor],
        region_size: int = 150,
        eps: float = 1.8,
        expand: bool = True,
        threshold: float = 0.5,
        background: bool = True,
        softmax: bool = True,
        batch_size: int = 32,
        expand_below: float = 1.0,
        component: bool = False,
        prior_power: float = 0.0,
    ) -> None:
        if prior_power < 0:
            raise ValueError(f"ExpansiveExplorationInferer: prior_power must be >= 0, got {prior_power}")
        if int(region_size) < 1:
            raise ValueError(f"ExpansiveExplorationInferer: region_size must be >= 1, got {region_size}")
        if batch_size < 1:
            raise ValueError(f"ExpansiveExplorationInferer: batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ExpansiveExplorationInferer: threshold must be in [0, 1], got {threshold}")
        self.local_net_fn = local_net_fn
        self.region_size = int(region_size)
        self.eps = float(eps)
        self.expand = expand
        self.threshold = float(threshold)
        self.background = background
        self.softmax = softmax
        self.batch_size = int(batch_size)
        self.expand_below = float(expand_below)
        self.component = bool(component)
        self.prior_power = float(prior_power)
        self.explored: torch.Tensor | None = None

    def region_starts(self, coarse: torch.Tensor) -> torch.Tensor:
        """(N, P, D) integer start corners of the regions around each coarse point."""
        centres = expansive_regions(coarse, self.region_size, self.eps) if self.expand else coarse[:, None].float()
        return torch.floor(centres + 0.5).long() - self.region_size // 2

    def _run_net(self, patches: torch.Tensor, channel: torch.Tensor, n_landmarks: int) -> torch.Tensor:
        out_maps = []
        with torch.no_grad():
            for i in range(0, patches.shape[0], self.batch_size):
                out = _plain(self.local_net_fn(patches[i : i + self.batch_size]))
                expected = n_landmarks + int(self.background)
                if out.dim() != patches.dim() or out.shape[1] != expected or out.shape[2:] != patches.shape[2:]:
                    raise ValueError(
                        f"ExpansiveExplorationInferer: the local network returned shape {list(out.shape)} for input "
                        f"{list(patches[i : i + self.batch_size].shape)}; expected {expected} channels "
                        f"({n_landmarks} landmarks{' + background' if self.background else ''}) on the input grid"
                    )
                out = out.float()
                ch = channel[i : i + self.batch_size].view([-1, 1] + [1] * (out.dim() - 2))
                mine = out.gather(1, ch.expand([-1, 1] + list(out.shape[2:])))[:, 0]
                if self.softmax:  # softmax probability of the region's own channel only
                    mine = torch.exp(mine - torch.logsumexp(out, dim=1))
                out_maps.append(mine)
        return torch.cat(out_maps)

    def __call__(
        self, image: torch.Tensor, coarse: torch.Tensor, prior: Callable | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = _plain(image)
        dims = image.dim() - 2
        if image.dim() < 4 or image.shape[0] != 1:
            raise ValueError(f"ExpansiveExplorationInferer: image must be (1, C, *spatial), got {list(image.shape)}")
        coarse = _plain(coarse).to(device=image.device, dtype=torch.float32)
        if coarse.dim() != 2 or coarse.shape[1] != dims:
            raise ValueError(
                f"ExpansiveExplorationInferer: coarse must be (N, {dims}) for a {dims}D image, got {list(coarse.shape)}"
            )
        n = coarse.shape[0]
        if n == 0:
            return coarse.clone(), coarse.new_zeros((0,))
        if not image.is_floating_point():
            image = image.float()
        missing = ~torch.isfinite(coarse).all(1)
        coarse_filled = torch.where(missing[:, None], torch.zeros_like(coarse), coarse)

        # the centred region of every landmark (the whole inference without expansion)
        centre = torch.floor(coarse_filled + 0.5).long()[:, None] - self.region_size // 2  # (N, 1, D)
        patches, inside = crop_regions(image[0], centre[:, 0], self.region_size)
        maps = self._run_net(patches, torch.arange(n, device=image.device), n)[:, None]  # (N, 1, *region)
        inside = inside[:, None]
        prior = prior if self.prior_power > 0 else None
        landmarks = torch.arange(n, device=image.device)
        points, confidence = self._decode(image, centre, maps, inside, coarse_filled, landmarks, prior)
        explored = torch.zeros(n, dtype=torch.bool, device=image.device)
        if self.expand:
            peak = torch.where(inside, maps, torch.zeros_like(maps)).reshape(n, -1).amax(1)
            explored = (peak < self.expand_below) & ~missing
        which = explored.nonzero()[:, 0]
        if which.numel():
            corners = self.region_starts(coarse_filled[which])[:, :-1]  # (K, 2**D, D), the centre is last
            k, p = corners.shape[:2]
            c_patches, c_inside = crop_regions(image[0], corners.reshape(k * p, dims), self.region_size)
            c_maps = self._run_net(c_patches, which.repeat_interleave(p), n)
            size = list(c_maps.shape[1:])
            starts = torch.cat([corners, centre[which]], 1)
            all_maps = torch.cat([c_maps.reshape([k, p] + size), maps[which]], 1)
            all_inside = torch.cat([c_inside.reshape([k, p] + size), inside[which]], 1)
            e_points, e_conf = self._decode(image, starts, all_maps, all_inside, coarse_filled[which], which, prior)
            points[which], confidence[which] = e_points, e_conf
        self.explored = explored
        points = torch.where(missing[:, None], torch.full_like(points, math.nan), points)
        confidence = torch.where(missing, torch.zeros_like(confidence), confidence)
        return points, confidence

    def _decode(
        self,
        image: torch.Tensor,
        starts: torch.Tensor,
        maps: torch.Tensor,
        inside: torch.Tensor,
        fallback: torch.Tensor,
        landmarks: torch.Tensor,
        prior: Callable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge each landmark's (P, *region) maps placed at ``starts`` (N, P, D) and decode one point each.

        ``landmarks`` (N,) are the landmark indices for ``prior`` (already ``None`` when ``prior_power`` is 0).
        A landmark whose merged map is constant keeps its ``fallback`` point with confidence 0.
        """
        n = starts.shape[0]
        origin = starts.amin(1)  # (N, D)
        rel = starts - origin[:, None]
        canvas = [int(v) + self.region_size for v in rel.amax((0, 1)).tolist()]
        merged, covered = _paste_mean(maps, rel, inside, canvas)
        select = None
        if prior is not None:
            grid = torch.stack(
                torch.meshgrid(*[torch.arange(c, device=merged.device) for c in canvas], indexing="ij"), -1
            ).reshape(1, -1, len(canvas))
            coords = (grid + origin[:, None]).float()  # (N, M, D) on the image grid
            weight = _plain(prior(coords, landmarks)).to(merged).clamp_min(0) ** self.prior_power
            if self.component:  # the prior chooses the blob; its position comes from the local maps alone
                select = merged * (weight.reshape(merged.shape) + 1e-8)  # + 1e-8: ties (prior 0) go to the map
            else:
                merged = merged * weight.reshape(merged.shape)

        # the full-size H_M is 0 wherever no region reached, so its minimum is 0 unless the regions
        # cover the whole image
        n_cov = covered.reshape(n, -1).sum(1)
        full = n_cov >= math.prod(image.shape[2:])
        cov_min = torch.where(covered, merged, torch.full_like(merged, math.inf)).reshape(n, -1).amin(1)
        minimum = torch.where(full, cov_min, torch.zeros_like(cov_min))
        points, found = decode_threshold_mean(
            merged, self.threshold, valid=covered, minimum=minimum, component=self.component, select=select
        )
        points = points + origin.to(points.dtype)
        confidence = merged.reshape(n, -1).amax(1)
        points = torch.where(found[:, None], points, fallback)
        confidence = torch.where(found, confidence, torch.zeros_like(confidence))
        return points, confidence
