"""The U-Net of Zhong et al. (MICCAI 2019), used for both the global and the local stage.

The paper does not give the depth or width of its "modified U-Net" (Fig. 1c). Following
``SPECS.md`` §5 we use MONAI's :class:`~monai.networks.nets.BasicUNet` with four down-sampling
levels, batch norm and ReLU. The method's inputs (290 px global images, 100 px training patches,
150 px inference regions) are not multiples of 16, so the input is zero-padded to the next
multiple of 2**4 (split evenly between both sides) and the output is cropped back: every pooling
level then sees even sizes and the output grid is exactly the input grid.

:class:`AttentionGuidedUNet` holds the two stages (``global_net``, ``local_net``) as one module: the bundle's
``network_def``, whose state dict is ``model.pt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

__all__ = ["AttentionGuidedUNet", "LandmarkUNet"]


class LandmarkUNet(nn.Module):
    """BasicUNet returning per-pixel heatmap logits on the input grid, for any input size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: landmarks + 1 background channel (20 for the 19 ISBI landmarks).
        features: the six BasicUNet widths (five encoder levels, last decoder level).
        softmax: return softmax probabilities over channels instead of logits (for export);
            train with logits and :class:`custom_monai.losses.heatmap_focal.SoftCEFocalLoss`.
        act: activation (BasicUNet format). ReLU as in the original U-Net.
        norm: normalisation (BasicUNet format). Batch norm as in ``SPECS.md``.
        dropout: dropout ratio inside the convolution blocks.
        upsample: BasicUNet upsampling mode (``"deconv"``, ``"pixelshuffle"``, ``"nontrainable"``).

    The forward pass takes ``(B, in_channels, *spatial)`` and returns ``(B, out_channels, *spatial)``.
    It is TorchScript-scriptable (MONAI's ``ckpt_export`` scripts the network).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 20,
        features: Sequence[int] = (32, 64, 128, 256, 512, 32),
        softmax: bool = False,
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LandmarkUNet: spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(tuple(features)) != 6:
            raise ValueError(f"LandmarkUNet: features needs 6 values (5 encoder levels + last decoder), got {features}")
        if out_channels < 2:
            raise ValueError(f"LandmarkUNet: out_channels must be >= 2 (landmarks + background), got {out_channels}")
        self.spatial_dims: int = spatial_dims
        self.softmax: bool = softmax
        # four 2x down-sampling levels -> sizes must be multiples of 2**4
        self.divisor: int = 16
        self.unet = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(features),
            act=act,
            norm=norm,
            dropout=dropout,
            upsample=upsample,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"LandmarkUNet expects (B, C, {self.spatial_dims} spatial dims), got shape {list(x.shape)}"
            )
        spatial = x.shape[2:]
        before: list[int] = []
        pads: list[int] = []  # F.pad order: last dimension first
        for d in range(self.spatial_dims):
            total = (self.divisor - spatial[d] % self.divisor) % self.divisor
            before.append(total // 2)
        for d in range(self.spatial_dims - 1, -1, -1):
            total = (self.divisor - spatial[d] % self.divisor) % self.divisor
            pads.append(total // 2)
            pads.append(total - total // 2)
        y = self.unet(F.pad(x, pads, mode="constant", value=0.0))
        for d in range(self.spatial_dims):
            y = y.narrow(2 + d, before[d], spatial[d])
        if self.softmax:
            y = torch.softmax(y, dim=1)
        return y


class AttentionGuidedUNet(nn.Module):
    """The whole method of Zhong et al.: the global and the local U-Net as one module.

    One module per bundle is what MONAI's tools expect (``network_def``, a single ``model.pt`` state dict,
    ``ckpt_export``, MONAI Label). The two stages stay separate submodules, trained one after the other:
    ``global_net`` on the whole downscaled image and ``local_net`` on patches at the local scale, both
    :class:`LandmarkUNet` of the same widths (so that the local net can start from the global weights);
    :class:`custom_monai.inferers.AttentionGuidedPredictor` runs both (expansive exploration).

    ``forward(x)`` runs the global stage on an image ``(B, C, *spatial)`` (any size) and returns its heatmap
    logits ``(B, N + 1, *spatial)``: N landmark channels, then the background channel.

    Args:
        spatial_dims: 2 or 3.
        n_landmarks: number of landmarks N (each U-Net has N + 1 output channels).
        in_channels: image channels.
        features: the six :class:`LandmarkUNet` widths, for both stages.
        act, norm, dropout, upsample: as :class:`LandmarkUNet`, for both stages.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        n_landmarks: int = 19,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256, 16),
        act: str | tuple = "relu",
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if n_landmarks < 1:
            raise ValueError(f"AttentionGuidedUNet: n_landmarks must be >= 1, got {n_landmarks}")
        kwargs = dict(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=n_landmarks + 1,
            features=features,
            act=act,
            norm=norm,
            dropout=dropout,
            upsample=upsample,
        )
        self.global_net = LandmarkUNet(**kwargs)
        self.local_net = LandmarkUNet(**kwargs)
        self.n_landmarks: int = n_landmarks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_net(x)

    def init_local_from_global(self) -> None:
        """Copy the global U-Net's weights into the local U-Net (``local_init_from_global``)."""
        self.local_net.load_state_dict(self.global_net.state_dict())
