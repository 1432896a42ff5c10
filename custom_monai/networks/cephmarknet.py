"""CEPHMark-Net (Khalid et al., Expert Syst. Appl. 2024): two-stage coordinate regression on one backbone.

Stage 1 (LDM) regresses all landmarks from the flattened stride-32 feature map; stage 2 crops small windows
around those coarse points from an FPN-like fusion of the stride 8/16/32 maps (SFB) and lets one small head
per landmark (LRM) regress an offset. See ``methods/SPECS.md`` §1 for the facts this follows.

Axis convention: the network is axis-agnostic. It takes ``(B, C, S0, S1)`` and returns normalised coordinates
in the same axis order, ``(p0, p1) = (q0 / S0, q1 / S1)`` in ``[0, 1]``. With the project's MONAI 2D arrays,
``(S0, S1) = (W, H)`` and ``(p0, p1) = (x / W, y / H)``; the paper's 800x640 (HxW) input is therefore
``input_size=(640, 800)`` here. A normalised point ``p`` sits at feature index ``p * S / stride - 0.5`` on a
map of stride ``stride`` (the ``align_corners=False`` convention of ``grid_sample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import resnet18, resnet34, resnet50

__all__ = [
    "CEPHMarkNet",
    "GradientNormClipping",
    "SemanticFusionBlock",
    "PerLandmarkRefinementHeads",
    "SharedRefinementHead",
    "crop_and_resize",
    "count_parameters",
]

# channels of the stride 8 / 16 / 32 taps (MONAI ResNet layer2 / layer3 / layer4)
_BACKBONES = {
    "resnet18": (resnet18, (128, 256, 512)),
    "resnet34": (resnet34, (128, 256, 512)),
    "resnet50": (resnet50, (512, 1024, 2048)),
}
_STRIDES = (8, 16, 32)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def crop_and_resize(
    features: torch.Tensor, centres: torch.Tensor, box_size: float, output_size: int = 5
) -> torch.Tensor:
    """Bilinearly sample an ``output_size``^2 grid from a square box around each centre (RoIAlign-like).

    As ``tf.image.crop_and_resize`` in the original code, the samples are evenly spaced from one box edge to
    the other (edges included), and samples falling outside the map read zeros.

    Args:
        features: ``(B, C, F0, F1)`` feature map.
        centres: ``(B, N, 2)`` box centres as normalised ``(p0, p1)`` of the map extent; a centre ``p`` is at
            feature index ``p * F - 0.5`` (``align_corners=False``), i.e. ``p * S / stride - 0.5`` in terms of
            the network input size ``S``.
        box_size: side of the box in feature cells.
        output_size: samples per side.

    Returns:
        ``(B, N, C, output_size, output_size)``; crop axis 0 follows feature axis ``F0``.
    """
    if features.dim() != 4 or centres.dim() != 3 or centres.shape[-1] != 2 or centres.shape[0] != features.shape[0]:
        raise ValueError(
            "crop_and_resize expects features (B, C, F0, F1) and centres (B, N, 2), got "
            + str(features.shape)
            + " and "
            + str(centres.shape)
            + "."
        )
    b, c, f0, f1 = features.shape[0], features.shape[1], features.shape[2], features.shape[3]
    n = centres.shape[1]
    k = output_size
    if k > 1:
        steps = (torch.arange(k, dtype=features.dtype, device=features.device) - (k - 1) / 2.0) * (box_size / (k - 1))
    else:
        steps = torch.zeros(1, dtype=features.dtype, device=features.device)
    centres = centres.to(features.dtype)
    # grid_sample (align_corners=False): g = 2 (f + 0.5) / F - 1, so the centre is g = 2p - 1 and a shift of
    # df cells is dg = 2 df / F.
    g0 = (2.0 * centres[..., 0] - 1.0).unsqueeze(-1) + steps * (2.0 / f0)  # (B, N, K) along F0
    g1 = (2.0 * centres[..., 1] - 1.0).unsqueeze(-1) + steps * (2.0 / f1)  # (B, N, K) along F1
    # grid[..., 0] indexes the last axis (F1), grid[..., 1] the one before (F0)
    grid = torch.stack([g1.unsqueeze(2).expand(b, n, k, k), g0.unsqueeze(3).expand(b, n, k, k)], dim=-1)
    out = F.grid_sample(
        features, grid.reshape(b, n * k, k, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B, C, N*K, K)
    return out.reshape(b, c, n, k, k).permute(0, 2, 1, 3, 4)


class SemanticFusionBlock(nn.Module):
    """FPN-like fusion of the stride 8/16/32 maps (C3, C4, C5) into P3, P4, P5 with ``out_channels`` each.

    Lateral 1x1 conv + ReLU; top-down nearest x2 upsampling of the merged lateral map and addition; then a
    3x3 conv + ReLU + BatchNorm per level. The BatchNorm momentum 0.01 is Keras' 0.99.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, bn_momentum: float = 0.01, bn_eps: float = 1e-5
    ) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"SemanticFusionBlock needs 3 input channel counts (C3, C4, C5), got {in_channels}.")
        c3, c4, c5 = (int(c) for c in in_channels)
        self.lateral3 = self._lateral(c3, out_channels)
        self.lateral4 = self._lateral(c4, out_channels)
        self.lateral5 = self._lateral(c5, out_channels)
        self.smooth3 = self._smooth(out_channels, bn_momentum, bn_eps)
        self.smooth4 = self._smooth(out_channels, bn_momentum, bn_eps)
        self.smooth5 = self._smooth(out_channels, bn_momentum, bn_eps)

    @staticmethod
    def _lateral(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    @staticmethod
    def _smooth(channels: int, bn_momentum: float, bn_eps: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_momentum),
        )

    @staticmethod
    def _up_add(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        return fine + F.interpolate(coarse, size=[int(fine.shape[2]), int(fine.shape[3])], mode="nearest")

    def forward(
        self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m5 = self.lateral5(c5)
        m4 = self._up_add(m5, self.lateral4(c4))
        m3 = self._up_add(m4, self.lateral3(c3))
        return self.smooth3(m3), self.smooth4(m4), self.smooth5(m5)


class PerLandmarkRefinementHeads(nn.Module):
    """N independent refinement heads, run batched (the paper's LRM).

    Head n: conv3x3 (``in_channels`` -> ``conv_channels``) + ReLU -> flatten -> Linear ``fc_channels`` + ReLU
    -> Linear 2 (no bias). The N convolutions are one grouped convolution (``groups=N``) and the N linear
    layers are stacked weights applied with ``einsum``; the parameter count equals N separate heads.
    Input ``(B, N, C, K, K)``, output ``(B, N, 2)``.
    """

    def __init__(
        self, n_landmarks: int, in_channels: int, crop_size: int = 5, conv_channels: int = 512, fc_channels: int = 512
    ) -> None:
        super().__init__()
        self.n_landmarks = n_landmarks
        self.in_channels = in_channels
        self.crop_size = crop_size
        self.conv = nn.Conv2d(n_landmarks * in_channels, n_landmarks * conv_channels, 3, padding=1, groups=n_landmarks)
        n_flat = conv_channels * crop_size * crop_size
        self.fc1_weight = nn.Parameter(torch.empty(n_landmarks, n_flat, fc_channels))
        self.fc1_bias = nn.Parameter(torch.empty(n_landmarks, fc_channels))
        self.fc2_weight = nn.Parameter(torch.empty(n_landmarks, fc_channels, 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the stacked linear layers as ``nn.Linear`` does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w, fan_in in ((self.fc1_weight, self.fc1_weight.shape[1]), (self.fc1_bias, self.fc1_weight.shape[1])):
            nn.init.uniform_(w, -(fan_in**-0.5), fan_in**-0.5)
        fan_in = self.fc2_weight.shape[1]
        nn.init.uniform_(self.fc2_weight, -(fan_in**-0.5), fan_in**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        n, c, k = self.n_landmarks, self.in_channels, self.crop_size
        if x.dim() != 5 or x.shape[1] != n or x.shape[2] != c or x.shape[3] != k or x.shape[4] != k:
            raise ValueError(
                "PerLandmarkRefinementHeads expects (B, "
                + str(n)
                + ", "
                + str(c)
                + ", "
                + str(k)
                + ", "
                + str(k)
                + "), got "
                + str(x.shape)
            )
        # the grouped 3x3 convolution (group n owns output channels [n*512, (n+1)*512)) as one batched matrix
        # product over the landmarks: the same result and parameters as self.conv(x.reshape(b, n*c, k, k)),
        # about twice as fast on CPU (forward + backward) as the grouped convolution kernel
        cols = F.unfold(x.reshape(b * n, c, k, k), 3, padding=1).reshape(b, n, c * 9, k * k)
        w = self.conv.weight.reshape(n, -1, c * 9)
        h = torch.einsum("nok,bnkp->bnop", w, cols)
        bias = self.conv.bias
        if bias is not None:
            h = h + bias.reshape(n, -1, 1)
        h = F.relu(h).reshape(b, n, -1)  # (B, N, conv_channels * k * k), channel-major as the conv's flatten
        h = F.relu(torch.einsum("bni,nio->bno", h, self.fc1_weight) + self.fc1_bias)
        return torch.einsum("bni,nio->bno", h, self.fc2_weight)


class SharedRefinementHead(nn.Module):
    """One refinement head shared by all landmarks, told apart by a learned embedding added to the crops.

    Same layers as one head of :class:`PerLandmarkRefinementHeads` plus an ``(N, C)`` embedding, so the LRM
    costs about 1/N of the per-landmark parameters. Input ``(B, N, C, K, K)``, output ``(B, N, 2)``.
    """

    def __init__(
        self, n_landmarks: int, in_channels: int, crop_size: int = 5, conv_channels: int = 512, fc_channels: int = 512
    ) -> None:
        super().__init__()
        self.n_landmarks = n_landmarks
        self.in_channels = in_channels
        self.crop_size = crop_size
        self.embedding = nn.Parameter(torch.randn(n_landmarks, in_channels))
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, padding=1)
        self.fc1 = nn.Linear(conv_channels * crop_size * crop_size, fc_channels)
        self.fc2 = nn.Linear(fc_channels, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        n, c, k = self.n_landmarks, self.in_channels, self.crop_size
        if x.dim() != 5 or x.shape[1] != n or x.shape[2] != c or x.shape[3] != k or x.shape[4] != k:
            raise ValueError(
                "SharedRefinementHead expects (B, "
                + str(n)
                + ", "
                + str(c)
                + ", "
                + str(k)
                + ", "
                + str(k)
                + "), got "
                + str(x.shape)
            )
        h = x + self.embedding[None, :, :, None, None]
        h = F.relu(self.conv(h.reshape(b * n, c, k, k)))
        h = F.relu(self.fc1(h.reshape(b * n, -1)))
        return self.fc2(h).reshape(b, n, 2)


class CEPHMarkNet(nn.Module):
    """CEPHMark-Net: coarse landmark regression (LDM) + crop-based offset refinement (SFB + LRM).

    ``forward(x)`` takes ``(B, C, S0, S1)`` of exactly ``input_size`` and returns ONE tensor ``(B, N, 4)``:
    ``[..., 0:2]`` the coarse points, ``[..., 2:4]`` the refined points, both normalised
    ``(p0, p1) = (q0 / S0, q1 / S1)`` in the input's own axis order (for MONAI 2D arrays, indexed
    ``[c, x, y]``, that is ``(x / W, y / H)``). One tensor is what MONAI's tools expect of ``network_def``
    (``verify_net_in_out``, ``ckpt_export``, DDP in training); :meth:`split` (or :meth:`forward_pair`) gives
    ``(coarse, refined)``.

    As in the original code, the crop boxes are gradient-stopped (the crops are sampled around
    ``coarse.detach()``), while ``refined = coarse + offset`` adds the *undetached* coarse prediction, so the
    refinement loss trains the LDM too. ``detach_coarse=True`` (not the original) makes it
    ``coarse.detach() + offset``: the refinement loss then reaches the LDM not at all.

    Args:
        n_landmarks: number of landmarks N.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (MONAI ResNet, 2D, stride-2 stem, random
            init; nothing is downloaded).
        in_channels: image channels (1 for grey, 3 for the original's RGB copies).
        input_size: ``(S0, S1)`` of the network input, each a multiple of 32. Default ``(640, 800)`` is the
            paper's H x W = 800 x 640 in the project's (x, y) order. The LDM's linear layer is sized for it.
        head: ``"per_landmark"`` (paper: N independent heads, ~10.1 M parameters each) or ``"shared"``.
        box_cells: box sides in feature cells on P3, P4, P5 (paper: 7, 5, 3 = 56, 80, 96 input pixels).
        crop_size: samples per box side (paper: 5).
        fusion_channels: SFB width (paper: 256).
        ldm_bias: not in the paper. ``False`` (paper): the LDM is one bias-free linear layer on the flattened,
            non-negative C5 features. ``True``: the layer gets a bias initialised to the image centre (0.5)
            and zero weights, so training starts from the centre.
        detach_coarse: ``False`` (original): ``refined = coarse + offset``; ``True``: ``coarse.detach() + offset``.
        target_norm: normalisation of the LDM's regression targets; the layer itself stays as configured
            (bias-free by default). The coarse point is ``target_mean + target_scale * ldm(features)``, with the
            two ``(N, 2)`` buffers (saved in the state dict, so a trained model carries them):
            ``"none"`` (the paper's code: the LDM regresses ``x / W`` directly; mean 0, scale 1),
            ``"centre"`` (mean 0.5, scale 1: targets centred on the image centre) or ``"dataset"`` (each
            landmark's mean and standard deviation over the training set, set by
            :meth:`set_target_statistics` before training; until then as ``"centre"``).
        zero_init_heads: initialise the LDM's weight and the refinement heads' last layer to zero (not in the
            paper), so training starts with every coarse point at ``target_mean`` (plus the bias, if any) and
            every offset at 0.
        fusion_bn_momentum: momentum of the SFB's BatchNorm running statistics (PyTorch convention; paper: Keras
            0.99 = 0.01 here). Training only: the running statistics are in the state dict.
    """

    def __init__(
        self,
        n_landmarks: int = 19,
        backbone: str = "resnet50",
        in_channels: int = 1,
        input_size: Sequence[int] = (640, 800),
        head: str = "per_landmark",
        box_cells: Sequence[float] = (7.0, 5.0, 3.0),
        crop_size: int = 5,
        fusion_channels: int = 256,
        ldm_bias: bool = False,
        detach_coarse: bool = False,
        target_norm: str = "none",
        zero_init_heads: bool = False,
        fusion_bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"CEPHMarkNet backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}.")
        if head not in ("per_landmark", "shared"):
            raise ValueError(f"CEPHMarkNet head must be 'per_landmark' or 'shared', got {head!r}.")
        size = tuple(int(s) for s in input_size)
        if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
            raise ValueError(f"CEPHMarkNet input_size must be two positive multiples of 32 (S0, S1), got {input_size}.")
        if target_norm not in ("none", "centre", "dataset"):
            raise ValueError(f"CEPHMarkNet target_norm must be 'none', 'centre' or 'dataset', got {target_norm!r}.")
        if len(box_cells) != 3:
            raise ValueError(f"CEPHMarkNet box_cells needs one size per level (P3, P4, P5), got {box_cells}.")
        if n_landmarks < 1 or in_channels < 1 or crop_size < 1:
            raise ValueError(
                "CEPHMarkNet needs n_landmarks, in_channels, crop_size >= 1, "
                f"got {n_landmarks}, {in_channels}, {crop_size}."
            )
        self.n_landmarks = int(n_landmarks)
        self.in_channels = int(in_channels)
        self.input_size: Tuple[int, int] = (size[0], size[1])
        self.box_cells: Tuple[float, float, float] = (float(box_cells[0]), float(box_cells[1]), float(box_cells[2]))
        self.crop_size = int(crop_size)
        self.head_type = head
        self.detach_coarse: bool = bool(detach_coarse)
        self.target_norm = target_norm
        origin = 0.0 if target_norm == "none" else 0.5
        self.register_buffer("target_mean", torch.full((self.n_landmarks, 2), origin))
        self.register_buffer("target_scale", torch.ones(self.n_landmarks, 2))

        factory, channels = _BACKBONES[backbone]
        self.backbone = factory(
            pretrained=False, spatial_dims=2, n_input_channels=in_channels, conv1_t_stride=2, feed_forward=False
        )
        c5_features = channels[2] * (size[0] // 32) * (size[1] // 32)
        self.ldm = nn.Linear(c5_features, 2 * n_landmarks, bias=ldm_bias)
        if ldm_bias:  # start at the image centre
            nn.init.zeros_(self.ldm.weight)
            nn.init.constant_(self.ldm.bias, 0.5 - origin)
        self.sfb = SemanticFusionBlock(channels, fusion_channels, bn_momentum=fusion_bn_momentum)
        lrm_cls = PerLandmarkRefinementHeads if head == "per_landmark" else SharedRefinementHead
        self.lrm = lrm_cls(n_landmarks, 3 * fusion_channels, crop_size)
        if zero_init_heads:
            nn.init.zeros_(self.ldm.weight)
            if isinstance(self.lrm, PerLandmarkRefinementHeads):
                nn.init.zeros_(self.lrm.fc2_weight)
            else:
                nn.init.zeros_(self.lrm.fc2.weight)

    @torch.jit.unused
    def set_target_statistics(self, points: torch.Tensor, min_scale: float = 1e-3) -> bool:
        """With ``target_norm="dataset"``: set ``target_mean`` / ``target_scale`` to the per-landmark mean and
        standard deviation of ``points`` ``(M, N, 2)`` (normalised training targets, NaN = missing; a landmark
        seen fewer than twice keeps mean 0.5 / scale 1 where it has no data). A no-op for other modes.
        Returns whether the statistics were set."""
        if self.target_norm != "dataset":
            return False
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.dim() != 3 or points.shape[1:] != self.target_mean.shape:
            raise ValueError(
                f"set_target_statistics expects (M, {self.n_landmarks}, 2) points, got {tuple(points.shape)}."
            )
        ok = torch.isfinite(points)
        count = ok.sum(0)
        zero = torch.zeros_like(points)
        mean = torch.where(ok, points, zero).sum(0) / count.clamp_min(1)
        var = torch.where(ok, (points - mean) ** 2, zero).sum(0) / (count - 1).clamp_min(1)
        mean = torch.where(count > 0, mean, torch.full_like(mean, 0.5))
        scale = torch.where(count > 1, var.sqrt().clamp_min(min_scale), torch.ones_like(var))
        with torch.no_grad():
            self.target_mean.copy_(mean.to(self.target_mean.dtype))
            self.target_scale.copy_(scale.to(self.target_scale.dtype))
        return True

    def parameter_groups(self, ldm_lr: float) -> list:
        """Optimizer groups: the LDM at its own learning rate ``ldm_lr``, everything else at the optimizer's."""
        rest = [p for n, p in self.named_parameters() if not n.startswith("ldm.")]
        return [{"params": rest}, {"params": list(self.ldm.parameters()), "lr": float(ldm_lr)}]

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone taps C3, C4, C5 (strides 8, 16, 32)."""
        bb = self.backbone
        x = bb.maxpool(bb.act(bb.bn1(bb.conv1(x))))
        c3 = bb.layer2(bb.layer1(x))
        c4 = bb.layer3(c3)
        c5 = bb.layer4(c4)
        return c3, c4, c5

    @staticmethod
    def split(output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coarse, refined)``, each ``(B, N, 2)``, from the ``(B, N, 4)`` output of :meth:`forward`."""
        if output.dim() != 3 or output.shape[-1] != 4:
            raise ValueError("CEPHMarkNet.split expects the (B, N, 4) network output, got " + str(output.shape) + ".")
        return output[..., 0:2], output[..., 2:4]

    def forward_pair(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coarse, refined)``, each ``(B, N, 2)`` normalised points (see the class docstring)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "CEPHMarkNet expects (B, " + str(self.in_channels) + ", S0, S1), got " + str(x.shape) + "."
            )
        if x.shape[2] != self.input_size[0] or x.shape[3] != self.input_size[1]:
            raise ValueError(
                "CEPHMarkNet was built for input_size "
                + str(self.input_size)
                + " (its LDM flattens the stride-32 map), got spatial size "
                + str(x.shape[2:])
                + "; resize the image to input_size or rebuild the network."
            )
        c3, c4, c5 = self.encode(x)
        coarse = self.target_mean + self.target_scale * self.ldm(torch.flatten(c5, 1)).reshape(-1, self.n_landmarks, 2)
        p3, p4, p5 = self.sfb(c3, c4, c5)
        centres = coarse.detach()  # the boxes are gradient-stopped, as in the original
        crops = torch.cat(
            [
                crop_and_resize(p3, centres, self.box_cells[0], self.crop_size),
                crop_and_resize(p4, centres, self.box_cells[1], self.crop_size),
                crop_and_resize(p5, centres, self.box_cells[2], self.crop_size),
            ],
            dim=2,
        )
        offset = self.lrm(crops)
        refined = (centres if self.detach_coarse else coarse) + offset
        return coarse, refined

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse, refined = self.forward_pair(x)
        return torch.cat([coarse, refined], dim=-1)


class GradientNormClipping:
    """Ignite handler: clip the global gradient norm of ``network`` to ``max_norm`` before each optimizer step.

    Attached to a MONAI trainer, it runs on ``IterationEvents.BACKWARD_COMPLETED`` (after ``backward``, before
    ``optimizer.step``); with AMP it unscales the gradients first. ``max_norm`` <= 0 disables it. The
    cephmarknet_ceph2d bundle uses it (``grad_clip``, measured in its docs); it lives here until a shared
    handler exists in :mod:`custom_monai.handlers`.
    """

    def __init__(self, network: nn.Module, max_norm: float) -> None:
        self.network = network
        self.max_norm = float(max_norm)
        self.last_norm: float | None = None

    def attach(self, engine) -> None:
        from monai.engines.utils import IterationEvents

        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for p in self.network.parameters() if p.grad is not None]
        self.last_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True))
