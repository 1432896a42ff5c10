"""Multiresolution hybrid transformer-CNN (HTC) of Viriyasaranon, Ma & Choi (MICCAI 2023), ``SPECS.md`` §3.

Layout (input ``(B, C, S0, S1)``, every spatial size a multiple of 16):

- **Backbone**, 4 stages at strides 2/4/8/16 with 64/128/320/512 channels (``embed_dims * (1, 2, 5, 8)``).
  Each stage is (1) a patch embedding: conv 3x3, stride 2, padding 1 (overlapping patches) + BN;
  (2) one pre-norm transformer layer, BN as the norm: :class:`BilinearPoolingAttention` (channel
  reductions 8/4/2/1) and :class:`MixFFN` (hidden ratios 8/8/4/4), each a residual with DropPath, the
  rate rising linearly 0 -> 0.1 over the 4 layers; (3) :class:`DilatedResidualBlock` (conv3x3 -> BN -> ReLU
  -> dilated conv3x3 (d = 2) -> BN, plus a conv3x3 shortcut, add, ReLU).
- **Neck** (:class:`HTCNeck`): stages 2-4 (strides 4/8/16) -> 3x3 lateral convs to 256, top-down nearest
  upsampling + add, a 3x3 conv on the finest level -> 256 channels at stride 4.
- **Heads**: stride 4: conv3x3 (256) + ReLU -> conv1x1 (K); stride 2: ConvTranspose 4x4/2 (256) + BN + ReLU ->
  conv3x3 (256) + ReLU -> conv1x1 (K).

Choices where ``SPECS.md`` is silent (or where the issue/brief disagrees with it):

- **No spatial reduction and no depthwise conv.** The bilinear-pooling attention is already linear in the
  number of pixels (it pools space into a ``c_mid x c_mid`` descriptor), so the PVT-style spatial-reduction
  ratios (8/4/2/1) have nothing to reduce; the 8/4/2/1 values are the *channel* reductions. The MixFFN is
  1x1 -> GELU -> 1x1 as SPECS states; ``ffn_dwconv=True`` inserts the SegFormer 3x3 depthwise conv after the
  first 1x1 (an option, off by default).
- DropPath (MONAI's) on both residuals of a layer (attention and FFN), same rate; no dropout elsewhere.
- Patch-embedding convs, attention/FFN 1x1 convs, neck convs and head convs have biases; the convs of the
  dilated residual block (both branches, including the shortcut) and the transposed conv have none (BN
  follows, or the sum is followed by ReLU). No norm after a stage.
- Initialisation: convs ``normal(0, sqrt(2 / fan_out))`` (Kaiming, fan-out), biases 0, BN weight 1 / bias 0;
  the final 1x1 conv of each head ``normal(0, 0.001)`` (MMPose heatmap-head convention), so the initial
  heatmaps are ~0.
- Input: ``in_channels`` (1 by default: grey radiographs; the paper replicates to RGB).
- Coordinates: a heatmap pixel ``j`` of the stride-``s`` head sits at input pixel ``s * j`` (MMPose's
  non-UDP convention, which is also where the receptive field of a pad-1 stride-2 3x3 conv is centred);
  targets and decoding use it consistently, see :mod:`custom_monai.inferers.heatmap_decode`.

**Outputs.** ``forward(x)`` returns ONE tensor with both heads, so that MONAI's ``verify_net_in_out``,
``ckpt_export`` (TorchScript), ONNX export and a plain ``SupervisedTrainer`` (also under DDP) see the whole
method: ``(B, 2, K, S0/2, S1/2)``, index 0 the stride-2 ("H/2") head, index 1 the stride-4 ("H/4") head repeated
2x2 (nearest; lossless: ``[..., ::2, ::2]`` gives it back exactly). :func:`split_heads` undoes the stacking;
:meth:`HTCLandmarkNet.forward_heads` (TorchScript-exported) returns ``(quarter, half)`` directly.
:class:`custom_monai.losses.htc_loss.HTCLoss` and
:class:`custom_monai.inferers.heatmap_decode.MultiResolutionHeatmapPredictor` accept either form. The module is
``torch.jit.script``-able.

**Parameters** (K = 29, 1 input channel). The network as SPECS §3 describes it -- checked module by module
against the public code's *used* modules (backbone, the FPN neck's three 3x3 laterals and the one 3x3 output
conv that is used, both heads) -- has **21.90 M** parameters: backbone 16.85 M, neck 2.80 M, heads 2.24 M
(the public code's module even holds 24.62 M, adding 1.54 M of unused ``nn.MultiheadAttention`` weights that
its attention class inherits, and 1.18 M in two unused neck output convs). No reading of SPECS gives the
paper's 16.20 M for the whole network; the figure matches the **backbone** (16.85 M, +4.0 %), which is what the
paper calls "HTC". The default stays the described network; ``shortcut="identity"`` with
``lateral_kernel=1`` (16.46 M in total, +1.6 %) is offered for a parameter-matched comparison only (not the
method's code). ``tests/test_htc.py::test_parameter_count`` pins all these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from torch import nn

__all__ = [
    "BilinearPoolingAttention",
    "DilatedResidualBlock",
    "HTCBackbone",
    "HTCLandmarkNet",
    "HTCNeck",
    "HTCStage",
    "HTCTransformerLayer",
    "MixFFN",
    "PatchEmbedding",
    "split_heads",
    "stack_heads",
]


class PatchEmbedding(nn.Module):
    """Overlapping patch embedding: conv ``kernel_size`` (3), stride 2, padding ``kernel_size // 2``, + BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class BilinearPoolingAttention(nn.Module):
    """Bilinear-pooling ("double") attention; returns the branch output (the caller adds the residual).

    Three 1x1 convs project ``x`` (B, C, H, W) to ``A``, ``B``, ``V`` with ``c_mid = C // channel_reduction``
    channels. ``B`` is softmaxed over space (``c_mid`` attention maps) and ``G = A @ softmax(B)^T``
    (B, c_mid, c_mid) pools the features globally; ``V`` is softmaxed over channels and distributes the
    descriptors back to every pixel: ``G @ softmax(V)`` (B, c_mid, HW); a 1x1 conv maps back to ``C``.
    Cost is linear in HW; there are no heads.
    """

    def __init__(self, channels: int, channel_reduction: int = 1) -> None:
        super().__init__()
        if channel_reduction < 1 or channels % channel_reduction:
            raise ValueError(f"channel_reduction must divide channels, got {channel_reduction} for {channels}")
        self.c_mid: int = channels // channel_reduction
        self.conv_a = nn.Conv2d(channels, self.c_mid, 1)
        self.conv_b = nn.Conv2d(channels, self.c_mid, 1)
        self.conv_v = nn.Conv2d(channels, self.c_mid, 1)
        self.proj = nn.Conv2d(self.c_mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        a = self.conv_a(x).reshape(b, self.c_mid, h * w)
        maps = torch.softmax(self.conv_b(x).reshape(b, self.c_mid, h * w), dim=-1)
        vecs = torch.softmax(self.conv_v(x).reshape(b, self.c_mid, h * w), dim=1)
        descriptors = torch.bmm(a, maps.transpose(1, 2))  # (b, c_mid, c_mid)
        out = torch.bmm(descriptors, vecs).reshape(b, self.c_mid, h, w)
        return self.proj(out)


class MixFFN(nn.Module):
    """Feed-forward branch: 1x1 conv (C -> ratio * C) -> [3x3 depthwise conv] -> GELU -> 1x1 conv (-> C)."""

    def __init__(self, channels: int, mlp_ratio: int = 4, dwconv: bool = False) -> None:
        super().__init__()
        hidden = int(mlp_ratio * channels)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1)]
        if dwconv:
            layers.append(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden))
        layers += [nn.GELU(), nn.Conv2d(hidden, channels, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class HTCTransformerLayer(nn.Module):
    """Pre-norm (BN) layer: ``x + dp(attn(bn1(x)))``, then ``x + dp(ffn(bn2(x)))``."""

    def __init__(
        self, channels: int, channel_reduction: int, mlp_ratio: int, drop_path: float = 0.0, ffn_dwconv: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = BilinearPoolingAttention(channels, channel_reduction)
        self.norm2 = nn.BatchNorm2d(channels)
        self.ffn = MixFFN(channels, mlp_ratio, ffn_dwconv)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


class DilatedResidualBlock(nn.Module):
    """``relu(bn(conv3x3_d2(relu(bn(conv3x3(x))))) + shortcut(x))``; shortcut a conv3x3 (or the identity)."""

    def __init__(self, channels: int, shortcut: str = "conv") -> None:
        super().__init__()
        if shortcut not in ("conv", "identity"):
            raise ValueError(f"shortcut must be 'conv' or 'identity', got {shortcut!r}")
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = (
            nn.Conv2d(channels, channels, 3, padding=1, bias=False) if shortcut == "conv" else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class HTCStage(nn.Module):
    """Patch embedding (stride 2) -> ``depth`` transformer layers -> dilated residual conv block."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        channel_reduction: int,
        mlp_ratio: int,
        drop_paths: Sequence[float] = (0.0,),
        ffn_dwconv: bool = False,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        self.embed = PatchEmbedding(in_channels, channels)
        self.layers = nn.Sequential(
            *[HTCTransformerLayer(channels, channel_reduction, mlp_ratio, float(dp), ffn_dwconv) for dp in drop_paths]
        )
        self.conv = DilatedResidualBlock(channels, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layers(self.embed(x)))


class HTCBackbone(nn.Module):
    """Four :class:`HTCStage` s; ``forward`` returns the list of stage outputs (strides 2, 4, 8, 16).

    Args:
        in_channels: image channels.
        embed_dims: base width; stage widths are ``embed_dims * widths`` (64/128/320/512).
        widths: per-stage multipliers of ``embed_dims`` (the code's "num_heads" [1, 2, 5, 8]).
        channel_reductions: attention ``c_mid = C / r`` per stage.
        mlp_ratios: FFN hidden ratio per stage.
        depths: transformer layers per stage.
        drop_path_rate: the last layer's DropPath rate (linear from 0 over all layers).
        ffn_dwconv: insert a 3x3 depthwise conv in the FFN (SegFormer; not in the method's code).
        shortcut: ``"conv"`` (method) or ``"identity"`` for the residual conv block.
    """

    def __init__(
        self,
        in_channels: int = 1,
        embed_dims: int = 64,
        widths: Sequence[int] = (1, 2, 5, 8),
        channel_reductions: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        depths: Sequence[int] = (1, 1, 1, 1),
        drop_path_rate: float = 0.1,
        ffn_dwconv: bool = False,
        shortcut: str = "conv",
    ) -> None:
        super().__init__()
        n = len(widths)
        if not (len(channel_reductions) == len(mlp_ratios) == len(depths) == n):
            raise ValueError("widths, channel_reductions, mlp_ratios and depths must have the same length")
        self.channels: list[int] = [int(embed_dims * w) for w in widths]
        total = int(sum(depths))
        rates = torch.linspace(0.0, float(drop_path_rate), total).tolist() if total > 1 else [0.0] * total
        stages = []
        cin, k = in_channels, 0
        for i in range(n):
            stages.append(
                HTCStage(
                    cin,
                    self.channels[i],
                    int(channel_reductions[i]),
                    int(mlp_ratios[i]),
                    rates[k : k + int(depths[i])],
                    ffn_dwconv,
                    shortcut,
                )
            )
            cin, k = self.channels[i], k + int(depths[i])
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HTCNeck(nn.Module):
    """FPN on stages 2-4: 3x3 laterals -> ``out_channels``, top-down nearest upsampling + add, 3x3 conv on the
    finest (stride-4) level, which is the only output."""

    def __init__(self, in_channels: Sequence[int] = (128, 320, 512), out_channels: int = 256, lateral_kernel: int = 3) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            [nn.Conv2d(c, out_channels, lateral_kernel, padding=lateral_kernel // 2) for c in in_channels]
        )
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats``: the stride 4, 8, 16 maps (finest first)."""
        lat: list[torch.Tensor] = []
        for i, conv in enumerate(self.laterals):
            lat.append(conv(feats[i]))
        top = lat[-1]
        for i in range(len(lat) - 2, -1, -1):
            top = lat[i] + F.interpolate(top, size=lat[i].shape[2:], mode="nearest")
        return self.out_conv(top)


class HTCLandmarkNet(nn.Module):
    """HTC backbone + FPN neck + stride-4 and stride-2 heatmap heads (multiresolution heatmap learning).

    Args:
        n_landmarks: K, heatmap channels of each head.
        in_channels: image channels.
        embed_dims, widths, channel_reductions, mlp_ratios, depths, drop_path_rate, ffn_dwconv, shortcut:
            see :class:`HTCBackbone` (defaults = the method).
        neck_channels: FPN / head width (256).
        lateral_kernel: FPN lateral conv size (3 in the method).

    ``forward(x)``: ``(B, in_channels, S0, S1)`` -> ``(B, 2, K, S0/2, S1/2)``: the H/2 head, then the H/4 head
    repeated 2x2 (see the module docstring). Sizes must be multiples of 16.
    """

    def __init__(
        self,
        n_landmarks: int,
        in_channels: int = 1,
        embed_dims: int = 64,
        widths: Sequence[int] = (1, 2, 5, 8),
        channel_reductions: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        depths: Sequence[int] = (1, 1, 1, 1),
        drop_path_rate: float = 0.1,
        neck_channels: int = 256,
        ffn_dwconv: bool = False,
        shortcut: str = "conv",
        lateral_kernel: int = 3,
    ) -> None:
        super().__init__()
        if n_landmarks < 1:
            raise ValueError(f"n_landmarks must be >= 1, got {n_landmarks}")
        if len(widths) != 4:
            raise ValueError(f"HTCLandmarkNet needs 4 stages, got {len(widths)}")
        self.n_landmarks: int = int(n_landmarks)
        self.divisor: int = 16
        self.strides: tuple[int, int] = (4, 2)  # (quarter head, half head)
        self.backbone = HTCBackbone(
            in_channels, embed_dims, widths, channel_reductions, mlp_ratios, depths, drop_path_rate, ffn_dwconv, shortcut
        )
        c = neck_channels
        self.neck = HTCNeck(self.backbone.channels[1:], c, lateral_kernel)
        self.head_quarter = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, n_landmarks, 1))
        self.head_half = nn.Sequential(
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, n_landmarks, 1),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in (self.head_quarter, self.head_half):
            last = head[-1]
            nn.init.normal_(last.weight, std=0.001)
            nn.init.zeros_(last.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Neck output: 256 channels at stride 4."""
        if x.dim() != 4:
            raise ValueError(f"HTCLandmarkNet expects (B, C, S0, S1), got shape {list(x.shape)}")
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise ValueError(f"HTCLandmarkNet: spatial size must be a multiple of {self.divisor}, got {list(x.shape[2:])}")
        feats = self.backbone(x)
        return self.neck(feats[1:])

    @torch.jit.export
    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quarter, half)``: heatmaps ``(B, K, S/4)`` and ``(B, K, S/2)``."""
        f = self.features(x)
        return self.head_quarter(f), self.head_half(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, K, S0/2, S1/2)``: index 0 the H/2 head, index 1 the H/4 head repeated 2x2."""
        quarter, half = self.forward_heads(x)
        return stack_heads(quarter, half)


def stack_heads(quarter: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``(B, K, h, w)`` and ``(B, K, 2h, 2w)`` -> ``(B, 2, K, 2h, 2w)`` (the H/4 head repeated 2x2, lossless)."""
    up = quarter.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return torch.stack([half, up], dim=1)


def split_heads(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`stack_heads`: ``(B, 2, K, H, W)`` -> ``(quarter (B, K, H/2, W/2), half (B, K, H, W))``."""
    if stacked.dim() != 5 or stacked.shape[1] != 2:
        raise ValueError(f"expected the stacked heads (B, 2, K, H, W) of HTCLandmarkNet, got {tuple(stacked.shape)}")
    return stacked[:, 1, :, ::2, ::2], stacked[:, 0]
