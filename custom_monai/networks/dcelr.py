"""D-CeLR (Dai, Wang, Huang et al., ECCV 2024): dual-encoder landmark regression with iterative refinement.

Follows ``methods/SPECS.md`` §4 (code facts of the public release; written from that description):

- a ResNet-34 gives four levels (strides 4, 8, 16, 32); each is resized to ``token_size``^2 (32 x 32) and
  projected to ``embed_dim`` (512) by a 1x1 conv (no bias) + BN; each level has a fixed 2-D sin-cos position
  embedding built at its native size, resized to the token grid and projected by its own 1x1 conv;
- **reference encoder**: ViT blocks (joint self-attention) over [C5 tokens ; landmark queries], the queries
  being a fixed 1-D sinusoidal encoding; the position embedding is re-added after every block; a head gives
  ``(x, y, sigma_x, sigma_y)`` per landmark, all through a sigmoid;
- **fine-tune encoder**: image tokens = learnable-weighted sum of the four levels; queries = sinusoid +
  ``s`` x (features bilinearly sampled at the reference points from the four levels, learnable weights);
  after each block a per-layer MLP moves the reference point in inverse-sigmoid space
  (``ref <- sigmoid(delta + logit(ref))``, Deformable-DETR style), the features are re-sampled there and the
  query position embedding (a sine embedding of the point) is updated; per-layer output
  ``coords = sigmoid(delta + logit(prev ref)) + delta_b``, ``sigma = sigmoid(.)``;
- **auxiliary head**: a 1x1 conv on the (projected) C5 map -> one channel at the token grid (sigmoid).

Axis convention (as :mod:`custom_monai.networks.cephmarknet`): the network takes ``(B, C, S0, S1)`` and returns
normalised points in the same axis order, ``(p0, p1) = (q0 / S0, q1 / S1)``; for MONAI 2-D ``[c, x, y]``
arrays that is ``(x / W, y / H)``. A normalised point ``p`` sits at feature index ``p * F - 0.5`` on an
``F``-cell map (``grid_sample`` with ``align_corners=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import resnet34

from .cephmarknet import count_parameters, crop_and_resize

__all__ = [
    "DCeLR",
    "DCeLRTraining",
    "ViTBlock",
    "sincos_embedding_1d",
    "sincos_embedding_2d",
    "point_sine_embedding",
    "inverse_sigmoid",
    "sample_points",
]

_LEVEL_CHANNELS = (64, 128, 256, 512)  # ResNet-34 layer1..layer4
_LEVEL_STRIDES = (4, 8, 16, 32)


def sincos_embedding_1d(n: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed transformer sinusoid ``(n, dim)``: ``[sin(k w_i), cos(k w_i)]`` with ``w_i = T^(-i / (dim/2))``."""
    if dim % 2:
        raise ValueError(f"sincos_embedding_1d needs an even dim, got {dim}.")
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    omega = temperature ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    arg = pos * omega[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1).float()


def sincos_embedding_2d(size0: int, size1: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(dim, size0, size1)``: half the channels per axis."""
    if dim % 4:
        raise ValueError(f"sincos_embedding_2d needs dim divisible by 4, got {dim}.")
    e0 = sincos_embedding_1d(size0, dim // 2, temperature)  # (S0, dim/2)
    e1 = sincos_embedding_1d(size1, dim // 2, temperature)  # (S1, dim/2)
    emb = torch.cat(
        [e0[:, None, :].expand(size0, size1, dim // 2), e1[None, :, :].expand(size0, size1, dim // 2)], dim=-1
    )
    return emb.permute(2, 0, 1).contiguous()


def point_sine_embedding(points: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding ``(..., dim)`` of normalised points ``(..., 2)`` (``2 pi p`` scaled), ``dim / 2`` per axis."""
    half = dim // 2
    omega = temperature ** (-torch.arange(half // 2, dtype=points.dtype, device=points.device) / (half // 2))
    arg = (2.0 * math.pi) * points[..., None] * omega  # (..., 2, half/2)
    emb = torch.cat([arg.sin(), arg.cos()], dim=-1)  # (..., 2, half)
    return emb.flatten(-2)


def inverse_sigmoid(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``logit(p)`` with ``p`` clamped to ``[eps, 1 - eps]`` (finite for any input)."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def sample_points(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear features ``(B, N, C)`` of ``(B, C, F0, F1)`` at normalised points ``(B, N, 2)`` (zeros outside).

    One-sample case of :func:`custom_monai.networks.cephmarknet.crop_and_resize`.
    """
    return crop_and_resize(features, points, 0.0, 1)[:, :, :, 0, 0]


class ViTBlock(nn.Module):
    """Pre-norm ViT block (timm ``Block`` layout): ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(
        self, dim: int = 512, num_heads: int = 8, mlp_ratio: float = 2.0, qkv_bias: bool = True, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViTBlock: dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = int(num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape[0], x.shape[1], x.shape[2]
        h = self.num_heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, n, c/h)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, D, T0, T1) -> (B, T0 * T1, D)`` (axis 1 fastest)."""
    return x.flatten(2).transpose(1, 2)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False)


class _Level(nn.Module):
    """One backbone level: resize to the token grid, 1x1 conv (no bias) + BN; and its projected position embedding.

    The fixed sin-cos embedding is built at the level's native size ``native`` and resized to the token grid
    once (a non-persistent buffer: rebuilt, never saved).
    """

    def __init__(self, in_channels: int, dim: int, native: Tuple[int, int], token_size: int) -> None:
        super().__init__()
        self.token_size = int(token_size)
        self.resize = native != (token_size, token_size)
        self.proj = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.pos_proj = nn.Conv2d(dim, dim, 1)
        fixed = sincos_embedding_2d(native[0], native[1], dim)[None]
        self.register_buffer("pos_fixed", _resize(fixed, token_size) if self.resize else fixed, persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if self.resize:  # resize first (cheaper), then the 1x1 conv + BN
            c = _resize(c, self.token_size)
        return self.proj(c)

    def position(self) -> torch.Tensor:
        """``(1, D, T, T)`` projected position embedding."""
        return self.pos_proj(self.pos_fixed)


class _FineLayer(nn.Module):
    """One fine-tune layer: a ViT block and its heads (reference update, extra delta, sigma)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, hidden: int) -> None:
        super().__init__()
        self.block = ViTBlock(dim, num_heads, mlp_ratio)
        self.delta_ref = _mlp([dim, hidden, hidden, 2])  # 512-512-ReLU x2 -> 2, in inverse-sigmoid space
        self.delta_out = _mlp([dim, hidden, 2])  # unconstrained extra delta on the output coordinates
        self.sigma = _mlp([dim, hidden, 2])


class DCeLR(nn.Module):
    """D-CeLR: reference encoder + iterative fine-tune encoder on ResNet-34 features (SPECS §4).

    ``forward(x)`` takes ``(B, C, S0, S1)`` of exactly ``input_size`` and returns ONE tensor
    ``(B, K, 4 (1 + L))``: the reference encoder's normalised ``(p0, p1, sigma0, sigma1)``
    (``(x/W, y/H, sigma_x, sigma_y)`` for MONAI 2-D arrays), then each of the ``L`` fine-tune layers' (the
    last one is the prediction), so ``verify_net_in_out``/``ckpt_export``/``torch.jit.trace``/ONNX see a
    plain tensor. ``forward_all(x)`` returns everything the loss needs (see there); training uses it
    through :class:`DCeLRTraining`.

    Args:
        n_landmarks: K.
        in_channels: image channels (1: grey; the original replicates grey to 3 for ImageNet weights).
        input_size: ``(S0, S1)``; fixes the native sizes at which the level position embeddings are built
            (``S / 4 ... S / 32``); each a multiple of 32. Paper: 1024 x 1024.
        embed_dim, num_heads, mlp_ratio: ViT width (512), heads (8), MLP ratio (2).
        ref_layers, fine_layers: blocks of the reference (4 for ISBI 2015, 2 for ISBI 2023) and fine-tune (4)
            encoders.
        token_size: side of the token grid every level is resized to (32).
        level_weights: initial learnable weights of the four levels (fine-tune tokens and query sampling).
        head_hidden: hidden width of the per-layer fine-tune MLPs (512).
        detach_reference: stop gradients through the reference points between encoders and layers
            (Deformable-DETR practice; SPECS is silent). The outputs themselves keep their gradients.
    """

    def __init__(
        self,
        n_landmarks: int = 19,
        in_channels: int = 1,
        input_size: Sequence[int] = (1024, 1024),
        embed_dim: int = 512,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        ref_layers: int = 4,
        fine_layers: int = 4,
        token_size: int = 32,
        level_weights: Sequence[float] = (1.0, 0.8, 0.6, 0.4),
        head_hidden: int = 512,
        detach_reference: bool = True,
    ) -> None:
        super().__init__()
        size = tuple(int(s) for s in input_size)
        if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
            raise ValueError(f"DCeLR input_size must be two positive multiples of 32 (S0, S1), got {input_size}.")
        if n_landmarks < 1 or in_channels < 1 or ref_layers < 1 or fine_layers < 1 or token_size < 1:
            raise ValueError(
                "DCeLR needs n_landmarks, in_channels, ref_layers, fine_layers, token_size >= 1, got "
                f"{n_landmarks}, {in_channels}, {ref_layers}, {fine_layers}, {token_size}."
            )
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"DCeLR embed_dim {embed_dim} must be divisible by 4 and by num_heads {num_heads}.")
        if len(level_weights) != 4:
            raise ValueError(f"DCeLR level_weights needs 4 values, got {level_weights}.")
        self.n_landmarks = int(n_landmarks)
        self.in_channels = int(in_channels)
        self.input_size: Tuple[int, int] = (size[0], size[1])
        self.embed_dim = int(embed_dim)
        self.token_size = int(token_size)
        self.n_fine = int(fine_layers)
        self.detach_reference = bool(detach_reference)
        d, t = self.embed_dim, self.token_size

        self.backbone = resnet34(
            pretrained=False, spatial_dims=2, n_input_channels=in_channels, conv1_t_stride=2, feed_forward=False
        )
        self.levels = nn.ModuleList(
            [
                _Level(c, d, (size[0] // stride, size[1] // stride), t)
                for c, stride in zip(_LEVEL_CHANNELS, _LEVEL_STRIDES)
            ]
        )
        self.register_buffer("query_fixed", sincos_embedding_1d(self.n_landmarks, d), persistent=False)

        self.ref_blocks = nn.ModuleList([ViTBlock(d, num_heads, mlp_ratio) for _ in range(ref_layers)])
        self.ref_head = _mlp([d, 256, 4])

        self.token_weights = nn.Parameter(torch.tensor([float(w) for w in level_weights]))
        self.sample_weights = nn.Parameter(torch.tensor([float(w) for w in level_weights]))
        self.sample_scale = nn.Parameter(torch.ones(()))
        self.query_pos = _mlp([d, d, d])
        self.fine_layers = nn.ModuleList([_FineLayer(d, num_heads, mlp_ratio, head_hidden) for _ in range(fine_layers)])

        self.aux_head = nn.Conv2d(d, 1, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in list(self.ref_blocks.modules()) + [layer.block for layer in self.fine_layers]:
            for sub in m.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.trunc_normal_(sub.weight, std=0.02)
                    nn.init.zeros_(sub.bias)
        # the fine-tune layers start as the identity on the points: zero last layers of the two deltas
        for layer in self.fine_layers:
            for mlp in (layer.delta_ref, layer.delta_out):
                last = mlp[-1]
                assert isinstance(last, nn.Linear)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def features(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The four projected levels and their projected position embeddings, each ``(B or 1, D, T, T)``."""
        bb = self.backbone
        h = bb.maxpool(bb.act(bb.bn1(bb.conv1(x))))
        c1 = bb.layer1(h)
        c2 = bb.layer2(c1)
        c3 = bb.layer3(c2)
        c4 = bb.layer4(c3)
        taps = [c1, c2, c3, c4]
        feats: List[torch.Tensor] = []
        pos: List[torch.Tensor] = []
        for i, level in enumerate(self.levels):
            feats.append(level(taps[i]))
            pos.append(level.position())
        return feats, pos

    def _sample(self, feats: List[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        out = self.sample_weights[0] * sample_points(feats[0], points)
        for i in range(1, len(feats)):
            out = out + self.sample_weights[i] * sample_points(feats[i], points)
        return out

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError("DCeLR expects (B, " + str(self.in_channels) + ", S0, S1), got " + str(x.shape) + ".")
        if x.shape[2] != self.input_size[0] or x.shape[3] != self.input_size[1]:
            raise ValueError(
                "DCeLR was built for input_size "
                + str(self.input_size)
                + " (its position embeddings are built at the native level sizes), got "
                + str(x.shape)
                + "."
            )

    def forward_all(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """All outputs, for the loss (:class:`custom_monai.losses.DCeLRLoss`) and diagnostics.

        Returns a dict of tensors:
            ``reference``: ``(B, K, 4)`` reference-encoder output ``(p0, p1, sigma0, sigma1)``;
            ``fine``: ``(L, B, K, 4)``, one per fine-tune layer (``fine[-1]`` is the prediction, ``forward``'s last four columns);
            ``refs``: ``(L + 1, B, K, 2)`` the reference points each fine-tune layer starts from, then the last;
            ``heatmap``: ``(B, 1, T, T)`` auxiliary heatmap (sigmoid).
        """
        if not torch.jit.is_tracing():
            self._check_input(x)
        b = x.shape[0]
        k = self.n_landmarks
        feats, pos = self.features(x)
        queries = self.query_fixed.to(x.dtype).unsqueeze(0).expand(b, k, self.embed_dim)

        # reference encoder: [C5 + pos ; queries]; the position embedding is re-added after every block
        img_pos = _tokens(pos[3]).expand(b, -1, -1)
        stream_pos = torch.cat([img_pos, queries], dim=1)
        h = torch.cat([_tokens(feats[3]) + img_pos, queries], dim=1)
        for blk in self.ref_blocks:
            h = blk(h) + stream_pos
        reference = torch.sigmoid(self.ref_head(h[:, -k:]))  # (B, K, 4)

        # fine-tune encoder: weighted levels; queries from point samples; iterative inverse-sigmoid refinement
        w = self.token_weights
        img = w[0] * feats[0] + w[1] * feats[1] + w[2] * feats[2] + w[3] * feats[3]
        img_pos = _tokens(w[0] * pos[0] + w[1] * pos[1] + w[2] * pos[2] + w[3] * pos[3]).expand(b, -1, -1)
        n_img = img_pos.shape[1]
        ref = reference[:, :, :2]
        if self.detach_reference:
            ref = ref.detach()
        ref = ref.clamp(1e-4, 1.0 - 1e-4)
        h_img = _tokens(img)
        h_q = queries
        fine: List[torch.Tensor] = []
        refs: List[torch.Tensor] = [ref]
        for layer in self.fine_layers:
            q_in = h_q + self.sample_scale * self._sample(feats, ref)
            q_in = q_in + self.query_pos(point_sine_embedding(ref, self.embed_dim))
            h = layer.block(torch.cat([h_img + img_pos, q_in], dim=1))
            h_img = h[:, :n_img]
            h_q = h[:, n_img:]
            moved = torch.sigmoid(layer.delta_ref(h_q) + inverse_sigmoid(ref))
            coords = moved + layer.delta_out(h_q)
            sigma = torch.sigmoid(layer.sigma(h_q))
            fine.append(torch.cat([coords, sigma], dim=-1))
            ref = moved.detach() if self.detach_reference else moved
            ref = ref.clamp(1e-4, 1.0 - 1e-4)  # strictly inside (0, 1) even where the sigmoid saturates
            refs.append(ref)

        heatmap = torch.sigmoid(self.aux_head(feats[3]))
        return {"reference": reference, "fine": torch.stack(fine), "refs": torch.stack(refs), "heatmap": heatmap}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, 4 (1 + L))``: the reference output, then each fine-tune layer's, each ``(p0, p1, s0, s1)``.

        Columns ``4 i .. 4 i + 3`` are output ``i`` (0 = reference encoder, ``1..L`` = fine-tune layers; the
        prediction is the last, ``[..., -4:]``), normalised points and sigmas (:meth:`output_names`).
        """
        out = self.forward_all(x)
        fine = out["fine"]
        parts = [out["reference"]] + [fine[i] for i in range(self.n_fine)]
        return torch.cat(parts, dim=-1)

    def output_names(self) -> List[str]:
        """Names of the four-column groups of :meth:`forward`: ``reference``, ``fine1`` .. ``fineL``."""
        return ["reference"] + ["fine%d" % (i + 1) for i in range(self.n_fine)]


class DCeLRTraining(nn.Module):
    """Training view of a :class:`DCeLR`: ``forward(x)`` returns :meth:`DCeLR.forward_all`'s dict for the loss.

    It also holds the loss (whose RealNVP flow has parameters), so that one module owns every trained
    parameter: ``DistributedDataParallel`` of this wrapper keeps the flow in sync across processes. The
    network's own state dict (``model.pt``) is unchanged; only training uses this wrapper.
    """

    def __init__(self, network: DCeLR, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        self.loss = loss

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.network.forward_all(x)
