"""Global and local FCNNs of Noothout et al. (TMI 2020), 2D and 3D.

Both networks are fully convolutional with a total stride ``cell_size``: every output cell
covers a ``cell_size``-wide block of input pixels and predicts, per landmark, a presence logit and
a displacement (signed-log space) from the cell centre to the landmark. Targets and decoding live in
:mod:`custom_monai.transforms.cell_targets`.

Geometry: cell ``i`` along an axis covers input pixels ``i*c ... i*c + c - 1`` and its nominal centre
is ``i*c + (c - 1)/2`` (:meth:`GlobalFCNN.cell_centers`). A stride-2 layer with an odd kernel can only
centre its receptive field on a whole pixel, so the half-pixel centre is not reachable exactly; the
paddings of the stride-2 layers are chosen so that the receptive field of cell ``i`` is centred at
``i*c + c/2 - 1``, half a pixel before the nominal centre, for both downsampling variants
(``receptive_field_center`` gives it). Inputs should be multiples of ``cell_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from custom_monai.transforms.cell_targets import cell_centers as _cell_centers

__all__ = ["GlobalFCNN", "GlobalToLocalFCNN", "LocalFCNN"]


class _PaddedConv(nn.Module):
    """Convolution with explicit (possibly asymmetric) zero padding ``[lo, hi]`` per spatial axis."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int, lo: int, hi: int
    ) -> None:
        super().__init__()
        # F.pad lists pads from the last axis backwards: (lo, hi) for every axis
        self.pad: list[int] = [lo, hi] * spatial_dims
        self.symmetric = lo == hi
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, stride=stride, padding=lo if lo == hi else 0, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = F.pad(x, self.pad)
        return self.conv(x)


def _conv_bn_relu(spatial_dims: int, in_ch: int, out_ch: int, kernel_size: int = 3, groups: int = 1) -> list[nn.Module]:
    return [
        Conv[Conv.CONV, spatial_dims](in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False, groups=groups),
        Norm[Norm.BATCH, spatial_dims](out_ch),
        nn.ReLU(inplace=True),
    ]


class _ResBlock(nn.Module):
    """``conv3-BN-ReLU-conv3-BN-ReLU`` plus a shortcut (1x1 conv + BN when the width changes)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(spatial_dims, in_channels, out_channels), *_conv_bn_relu(spatial_dims, out_channels, out_channels)
        )
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, bias=False),
                Norm[Norm.BATCH, spatial_dims](out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


def _head(spatial_dims: int, in_channels: int, hidden: int, out_channels: int, groups: int = 1) -> nn.Sequential:
    """1x1 convolutions ``in -> hidden -> hidden -> out`` with ReLU between them (raw outputs)."""
    conv = Conv[Conv.CONV, spatial_dims]
    return nn.Sequential(
        conv(in_channels, hidden, 1, groups=groups),
        nn.ReLU(inplace=True),
        conv(hidden, hidden, 1, groups=groups),
        nn.ReLU(inplace=True),
        conv(hidden, out_channels, 1, groups=groups),
    )


class GlobalFCNN(nn.Module):
    """ResNet-34-like global FCNN (base width 16) with presence and displacement heads.

    Layout: stem conv7 stride 2 (``in_channels -> 16``) + BN + ReLU; four stages of ``blocks``
    residual blocks with widths ``channels``; a stage whose ``stage_pools`` flag is set starts with a
    downsampling by 2: ``AvgPool2 + BN + ReLU`` (``downsample="avg"``, the paper's AVP setting) or a
    strided ``conv3 + BN + ReLU`` (``downsample="conv"``). The cell size is ``2 * 2**(#pooled stages)``:
    32 in 2D (all stages pooled), 8 in 3D by default (stem + 2 pooled stages, the paper's CCTA net).
    Heads are 1x1 convs ``256 -> 256 -> 256 -> N`` (presence logits, no sigmoid) and
    ``-> N*D`` (displacements, axis order of the array: x, y[, z]).

    Args:
        spatial_dims: 2 or 3.
        n_landmarks: number of landmarks N.
        in_channels: input channels (1 for raw grey values).
        channels: widths of the four stages.
        blocks: residual blocks per stage.
        stem_channels: width of the stem.
        head_channels: width of the hidden 1x1 layers of both heads.
        stage_pools: which stages start with a downsampling; ``None`` = all four in 2D and
            ``(True, True, False, False)`` in 3D.
        downsample: ``"avg"`` (AvgPool + BN + ReLU) or ``"conv"`` (strided 3x3 conv + BN + ReLU).

    ``forward(x)`` with ``x (B, C, *spatial)`` returns ``logits (B, N, *grid)`` and
    ``displacement (B, N, D, *grid)`` with ``grid = spatial / cell_size``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        n_landmarks: int = 19,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (3, 4, 6, 3),
        stem_channels: int = 16,
        head_channels: int = 256,
        stage_pools: Sequence[bool] | None = None,
        downsample: str = "avg",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) != len(blocks):
            raise ValueError(f"channels {tuple(channels)} and blocks {tuple(blocks)} must have the same length.")
        if stage_pools is None:
            stage_pools = (True,) * len(channels) if spatial_dims == 2 else (True, True) + (False,) * (len(channels) - 2)
        if len(stage_pools) != len(channels):
            raise ValueError(f"stage_pools {tuple(stage_pools)} needs one flag per stage ({len(channels)}).")
        if downsample not in ("avg", "conv"):
            raise ValueError(f"downsample must be 'avg' or 'conv', got {downsample!r}.")
        if n_landmarks < 1:
            raise ValueError(f"n_landmarks must be >= 1, got {n_landmarks}.")
        self.spatial_dims = spatial_dims
        self.n_landmarks = n_landmarks
        n_pools = sum(bool(p) for p in stage_pools)
        self.cell_size: int = 2 * 2**n_pools

        # Receptive-field bookkeeping along one axis: centre of output unit k is ``offset + jump*k``,
        # ``rf`` its width. A symmetric stride-2 odd kernel keeps the offset; padding one pixel less
        # on the low side moves it by one input unit (``jump``). AvgPool2 moves it by ``jump/2``.
        norm, pool = Norm[Norm.BATCH, spatial_dims], Pool[Pool.AVG, spatial_dims]
        shift_conv = downsample == "conv"  # conv variant: stem and all but the last strided conv shift by one
        stem_lo = 2 if shift_conv and n_pools > 0 else 3
        self.stem = nn.Sequential(
            _PaddedConv(spatial_dims, in_channels, stem_channels, 7, 2, stem_lo, 6 - stem_lo),
            norm(stem_channels),
            nn.ReLU(inplace=True),
        )
        offset, jump, rf = float(3 - stem_lo), 2, 7
        stages: list[nn.Module] = []
        width = stem_channels
        pooled = 0
        for out_ch, n_blocks, do_pool in zip(channels, blocks, stage_pools):
            layers: list[nn.Module] = []
            if do_pool:
                pooled += 1
                if downsample == "avg":
                    layers += [pool(2), norm(width), nn.ReLU(inplace=True)]
                    offset, rf = offset + jump / 2, rf + jump
                else:
                    lo = 0 if pooled < n_pools else 1
                    layers += [_PaddedConv(spatial_dims, width, width, 3, 2, lo, 2 - lo), norm(width), nn.ReLU(inplace=True)]
                    offset, rf = offset + (1 - lo) * jump, rf + 2 * jump
                jump *= 2
            for b in range(n_blocks):
                layers.append(_ResBlock(spatial_dims, width if b == 0 else out_ch, out_ch))
                rf += 4 * jump
            width = out_ch if n_blocks > 0 else width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.receptive_field: int = rf
        self.receptive_field_center: float = offset  # centre of cell 0's receptive field, in input pixels
        self.cls_head = _head(spatial_dims, width, head_channels, n_landmarks)
        self.reg_head = _head(spatial_dims, width, head_channels, n_landmarks * spatial_dims)

    def cell_centers(self, grid_shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Nominal cell centres ``(*grid, D)`` in input pixels: ``index * cell + (cell - 1) / 2``."""
        return _cell_centers(grid_shape, self.cell_size, device=device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.stages(self.stem(x))
        logits = self.cls_head(feat)
        disp = self.reg_head(feat)
        shape = [disp.shape[0], self.n_landmarks, self.spatial_dims] + list(disp.shape[2:])
        return logits, disp.reshape(shape)


class LocalFCNN(nn.Module):
    """Small local FCNN (cell size 2) that refines landmarks in sub-images around global estimates.

    Per landmark: 4 x [conv3 32 + BN + ReLU] -> AvgPool2 -> conv3 32->64 + BN + ReLU -> conv3 64 + BN +
    ReLU; heads 1x1 ``64 -> 64 -> 64 -> D`` (displacement) and ``-> 1`` (presence logit). About 0.1 M
    parameters per landmark network.

    The input holds one sub-image per landmark, stacked on channels: ``(B, N*C, *patch)`` where
    channels ``n*C ... n*C + C - 1`` are the patch of landmark ``n``.

    - ``shared=False`` (paper): N independent networks, realised as grouped convolutions
      (``groups=N``), so landmark ``n`` only ever sees its own patch and its own weights.
    - ``shared=True``: one network for all landmarks; each patch is processed as its own sample with
      ``N`` one-hot input channels naming its landmark (a learned per-landmark embedding at the first
      layer). ~N times fewer parameters.

    ``forward`` returns ``logits (B, N, *grid)`` and ``displacement (B, N, D, *grid)`` with
    ``grid = patch / 2``; decode with :func:`custom_monai.transforms.cell_targets.decode_cells`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        n_landmarks: int = 1,
        in_channels: int = 1,
        shared: bool = False,
        channels: Sequence[int] = (32, 64),
        n_first_convs: int = 4,
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if n_landmarks < 1:
            raise ValueError(f"n_landmarks must be >= 1, got {n_landmarks}.")
        if len(channels) != 2:
            raise ValueError(f"channels must be (before pooling, after pooling), got {tuple(channels)}.")
        self.spatial_dims = spatial_dims
        self.n_landmarks = n_landmarks
        self.in_channels = in_channels
        self.shared = shared
        self.cell_size: int = 2
        g = 1 if shared else n_landmarks  # groups
        first_in = in_channels + n_landmarks if shared else in_channels * n_landmarks
        c1, c2 = channels[0] * g, channels[1] * g
        layers: list[nn.Module] = []
        width = first_in
        for _ in range(n_first_convs):
            layers += _conv_bn_relu(spatial_dims, width, c1, groups=g)
            width = c1
        layers.append(Pool[Pool.AVG, spatial_dims](2))
        layers += _conv_bn_relu(spatial_dims, c1, c2, groups=g)
        layers += _conv_bn_relu(spatial_dims, c2, c2, groups=g)
        self.features = nn.Sequential(*layers)
        self.reg_head = _head(spatial_dims, c2, head_channels * g, spatial_dims * g, groups=g)
        self.cls_head = _head(spatial_dims, c2, head_channels * g, g, groups=g)
        self.receptive_field: int = 2 * n_first_convs + 2 + 4 + 4

    def cell_centers(self, grid_shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Cell centres ``(*grid, D)`` in patch pixels: ``2 * index + 0.5``."""
        return _cell_centers(grid_shape, self.cell_size, device=device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = self.n_landmarks, self.in_channels
        spatial = list(x.shape[2:])
        if x.shape[1] != n * c:
            raise ValueError(f"LocalFCNN expects {n} x {c} input channels (one patch per landmark), got {x.shape[1]}.")
        b = x.shape[0]
        if self.shared:
            x = x.reshape([b * n, c] + spatial)
            onehot = torch.eye(n, dtype=x.dtype, device=x.device).repeat(b, 1)
            onehot = onehot.reshape([b * n, n] + [1] * len(spatial)).expand([b * n, n] + spatial)
            x = torch.cat([x, onehot], dim=1)
        feat = self.features(x)
        logits = self.cls_head(feat)
        disp = self.reg_head(feat)
        grid = list(feat.shape[2:])
        return logits.reshape([b, n] + grid), disp.reshape([b, n, self.spatial_dims] + grid)


class GlobalToLocalFCNN(nn.Module):
    """The whole method of Noothout et al.: the global FCNN and the local FCNN as one module.

    One module per bundle is what MONAI's tools expect (``network_def``, a single ``model.pt`` state dict,
    ``ckpt_export``, MONAI Label). The stages stay separate submodules, trained one after the other:
    ``global_net`` (:class:`GlobalFCNN`) on the downscaled image and ``local_net`` (:class:`LocalFCNN`) on
    patches around the global estimates; :class:`custom_monai.inferers.GlobalLocalPredictor` runs both.

    ``forward(x)`` runs the global stage on an image ``(B, C, *spatial)`` (spatial a multiple of
    ``cell_size``) and returns one tensor ``(B, N * (1 + D), *grid)``: the N presence logits followed by the
    N x D displacements (landmark-major), so that tools that check a single output can.

    Args:
        spatial_dims: 2 or 3.
        n_landmarks: number of landmarks N.
        in_channels: image channels.
        global_*: :class:`GlobalFCNN` arguments.
        local_*: :class:`LocalFCNN` arguments (``local_shared``: one local net for all landmarks).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        n_landmarks: int = 19,
        in_channels: int = 1,
        global_channels: Sequence[int] = (32, 64, 128, 256),
        global_blocks: Sequence[int] = (3, 4, 6, 3),
        global_stem_channels: int = 16,
        global_head_channels: int = 256,
        global_stage_pools: Sequence[bool] | None = None,
        global_downsample: str = "avg",
        local_shared: bool = False,
        local_channels: Sequence[int] = (32, 64),
        local_head_channels: int = 64,
    ) -> None:
        super().__init__()
        self.global_net = GlobalFCNN(
            spatial_dims=spatial_dims,
            n_landmarks=n_landmarks,
            in_channels=in_channels,
            channels=global_channels,
            blocks=global_blocks,
            stem_channels=global_stem_channels,
            head_channels=global_head_channels,
            stage_pools=global_stage_pools,
            downsample=global_downsample,
        )
        self.local_net = LocalFCNN(
            spatial_dims=spatial_dims,
            n_landmarks=n_landmarks,
            in_channels=in_channels,
            shared=local_shared,
            channels=local_channels,
            head_channels=local_head_channels,
        )
        self.cell_size: int = self.global_net.cell_size
        self.local_cell_size: int = self.local_net.cell_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, disp = self.global_net(x)
        return torch.cat([logits, disp.flatten(1, 2)], dim=1)
