"""Global and local FCNNs (Noothout et al. 2020): shapes, geometry, parameter counts, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from custom_monai.networks.global_local_fcnn import GlobalFCNN, LocalFCNN
from custom_monai.transforms.cell_targets import decode_cells, encode_cells

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated")

SMALL = {"channels": (4, 8, 8, 8), "blocks": (1, 1, 1, 1), "stem_channels": 4, "head_channels": 8}


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("downsample", ["avg", "conv"])
def test_global_2d_shapes(downsample):
    net = GlobalFCNN(spatial_dims=2, n_landmarks=5, downsample=downsample).eval()
    assert net.cell_size == 32
    with torch.no_grad():
        logits, disp = net(torch.rand(2, 1, 64, 96) * 255)
    assert logits.shape == (2, 5, 2, 3)
    assert disp.shape == (2, 5, 2, 2, 3)


@pytest.mark.parametrize("downsample", ["avg", "conv"])
def test_global_3d_shapes_reduced_pooling(downsample):
    net = GlobalFCNN(spatial_dims=3, n_landmarks=3, downsample=downsample, **SMALL).eval()
    assert net.cell_size == 8  # 3D default: stem + 2 pooled stages
    with torch.no_grad():
        logits, disp = net(torch.rand(1, 1, 32, 16, 24))
    assert logits.shape == (1, 3, 4, 2, 3)
    assert disp.shape == (1, 3, 3, 4, 2, 3)
    assert GlobalFCNN(spatial_dims=3, stage_pools=(True, True, True, False), **SMALL).cell_size == 16
    assert GlobalFCNN(spatial_dims=2, stage_pools=(True, False, True, False), **SMALL).cell_size == 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        GlobalFCNN(spatial_dims=1)
    with pytest.raises(ValueError, match="stage_pools"):
        GlobalFCNN(stage_pools=(True, True))
    with pytest.raises(ValueError, match="downsample"):
        GlobalFCNN(downsample="max")
    with pytest.raises(ValueError, match="input channels"):
        LocalFCNN(n_landmarks=3)(torch.rand(1, 2, 16, 16))


def test_parameter_counts():
    g = _n_params(GlobalFCNN(spatial_dims=2, n_landmarks=19))
    print(f"GlobalFCNN 2D, 19 landmarks: {g:,} parameters")
    assert 5.0e6 < g < 7.0e6  # SPECS: ~6 M
    one = _n_params(LocalFCNN(spatial_dims=2, n_landmarks=1))
    print(f"LocalFCNN 2D, one landmark: {one:,} parameters")
    assert 0.08e6 < one < 0.12e6  # SPECS: ~0.1 M each
    # independent networks via grouped convolutions: exactly N separate nets
    assert _n_params(LocalFCNN(spatial_dims=2, n_landmarks=19)) == 19 * one
    shared = _n_params(LocalFCNN(spatial_dims=2, n_landmarks=19, shared=True))
    assert shared == one + 19 * 32 * 9  # only the one-hot input channels of the first conv are extra


def _positive_linear(net: nn.Module) -> nn.Module:
    """All conv weights = 1/fan_in, biases 0, BN identity, float64: every activation is positive, so the
    gradient of an output cell is non-zero exactly on its receptive field."""
    net = net.double().eval()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def _rf_along_axis0(net: nn.Module, shape: tuple[int, ...], cell: tuple[int, ...]) -> tuple[int, int]:
    x = torch.ones(1, 1, *shape, dtype=torch.float64, requires_grad=True)
    logits, _ = net(x)
    logits[(0, 0, *cell)].backward()
    support = (x.grad[0, 0] != 0).reshape(shape[0], -1).any(1).nonzero()[:, 0]
    return int(support.min()), int(support.max())


@pytest.mark.parametrize("downsample", ["avg", "conv"])
def test_global_2d_receptive_field_is_centred_on_its_cell(downsample):
    net = _positive_linear(GlobalFCNN(spatial_dims=2, n_landmarks=1, downsample=downsample))
    i = 17  # an interior cell along x for a 1152-px axis (receptive field ~1000 px)
    lo, hi = _rf_along_axis0(net, (1152, 32), (i, 0))
    assert hi - lo + 1 == net.receptive_field  # analytic bookkeeping matches the real network
    assert 970 < net.receptive_field < 1020  # SPECS: ~978 px for the AVP net
    centre = (lo + hi) / 2
    assert centre == i * 32 + net.receptive_field_center
    nominal = net.cell_centers((i + 1, 1))[i, 0, 0].item()
    assert nominal == i * 32 + (32 - 1) / 2
    assert abs(centre - nominal) == 0.5  # best possible with an odd-kernel stride-2 stem


@pytest.mark.parametrize("downsample", ["avg", "conv"])
def test_global_3d_receptive_field_cell8(downsample):
    net = _positive_linear(GlobalFCNN(spatial_dims=3, n_landmarks=1, downsample=downsample, **SMALL))
    assert net.cell_size == 8
    i = 10
    lo, hi = _rf_along_axis0(net, (176, 8, 8), (i, 0, 0))
    assert hi - lo + 1 == net.receptive_field
    assert (lo + hi) / 2 == i * 8 + net.receptive_field_center == i * 8 + 3
    assert net.cell_centers((i + 1, 1, 1))[i, 0, 0, 0].item() == i * 8 + 3.5


def test_local_receptive_field_exactly_centred():
    net = _positive_linear(LocalFCNN(spatial_dims=2, n_landmarks=1))
    lo, hi = _rf_along_axis0(net, (48, 4), (12, 0))
    assert hi - lo + 1 == net.receptive_field == 18
    assert (lo + hi) / 2 == 12 * 2 + 0.5 == net.cell_centers((13, 1))[12, 0, 0].item()


def test_local_shapes_and_independence():
    torch.manual_seed(0)
    net = LocalFCNN(spatial_dims=2, n_landmarks=3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        logits, disp = net(x)
        assert logits.shape == (2, 3, 8, 8) and disp.shape == (2, 3, 2, 8, 8)
        y = x.clone()
        y[:, 1] = torch.rand(2, 16, 16)  # change only landmark 1's patch
        logits2, disp2 = net(y)
    assert torch.equal(logits[:, [0, 2]], logits2[:, [0, 2]]) and torch.equal(disp[:, [0, 2]], disp2[:, [0, 2]])
    assert not torch.allclose(logits[:, 1], logits2[:, 1])

    net3 = LocalFCNN(spatial_dims=3, n_landmarks=2, shared=True).eval()
    with torch.no_grad():
        logits, disp = net3(torch.rand(1, 1, 8, 8, 8).expand(1, 2, 8, 8, 8))
    assert logits.shape == (1, 2, 4, 4, 4) and disp.shape == (1, 2, 3, 4, 4, 4)
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # same patch, landmark identity differs


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: GlobalFCNN(spatial_dims=2, n_landmarks=4), (1, 1, 64, 64)),
        (lambda: GlobalFCNN(spatial_dims=3, n_landmarks=2, downsample="conv", **SMALL), (1, 1, 16, 16, 16)),
        (lambda: LocalFCNN(spatial_dims=2, n_landmarks=3), (2, 3, 16, 16)),
        (lambda: LocalFCNN(spatial_dims=3, n_landmarks=2, shared=True), (1, 2, 8, 8, 8)),
    ],
)
def test_torchscript_matches_eager(make, shape):
    torch.manual_seed(0)
    net = make().eval()
    x = torch.rand(*shape)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        for a, b in zip(net(x), scripted(x)):
            torch.testing.assert_close(a, b)


def test_local_net_learns_a_dot():
    """End to end: encode -> LocalFCNN -> CellLoss -> decode; a short fit beats the untrained net."""
    from custom_monai.losses.cell_loss import CellLoss

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(32, 2, generator=g) * 12 + 2
    xx, yy = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    imgs = torch.exp(-((xx - pts[:, 0, None, None]) ** 2 + (yy - pts[:, 1, None, None]) ** 2) / 4.0)[:, None]
    targets = [encode_cells(p[None].numpy(), (8, 8), 2) for p in pts]
    presence = torch.stack([torch.as_tensor(t[0]) for t in targets])
    disp = torch.stack([torch.as_tensor(t[1]) for t in targets])

    torch.manual_seed(0)
    net = LocalFCNN(spatial_dims=2, n_landmarks=1)
    loss_fn = CellLoss(alpha=1.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def error() -> float:
        net.eval()
        with torch.no_grad():
            logits, d = net(imgs)
            found, _ = decode_cells(torch.sigmoid(logits), d, net.cell_size)
        net.train()
        return (found[:, 0] - pts).norm(dim=-1).mean().item()

    before = error()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(net(imgs), presence, disp)
        loss.backward()
        opt.step()
    after = error()
    print(f"local net mean error: {before:.2f} px -> {after:.2f} px")
    assert after < 2.0 and after < 0.4 * before  # untrained: ~4.5 px
