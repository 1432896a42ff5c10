"""LandmarkUNet: any input size in, same grid out; TorchScript equals eager."""

from __future__ import annotations

import pytest
import torch

from custom_monai.networks.attention_unet import LandmarkUNet

SMALL = (8, 8, 16, 16, 32, 8)


def test_output_grid_equals_input_grid_2d():
    net = LandmarkUNet(features=SMALL).eval()
    for size in [(100, 100), (150, 150), (97, 131), (16, 33), (1, 1)]:
        with torch.no_grad():
            y = net(torch.randn(2, 1, *size))
        assert y.shape == (2, 20, *size)
        assert torch.isfinite(y).all()


def test_default_network_at_global_size():
    """The default (paper-scale) network on a 290x290 global-stage image."""
    net = LandmarkUNet().eval()
    assert 7e6 < sum(p.numel() for p in net.parameters()) < 9e6
    with torch.no_grad():
        y = net(torch.randn(1, 1, 290, 290))
    assert y.shape == (1, 20, 290, 290)


def test_padding_is_centred_and_cropped_back():
    """Output pixel (i, j) depends on the input around (i, j): a point impulse response peaks there."""
    torch.manual_seed(0)
    net = LandmarkUNet(out_channels=2, features=SMALL, norm="instance").eval()
    x = torch.zeros(1, 1, 50, 37)
    with torch.no_grad():
        base = net(x)
        x[0, 0, 20, 11] = 100.0
        diff = (net(x) - base).abs().sum(1)[0]
    # the change is centred on the impulse (the receptive field reaches far, but the effect is local)
    assert diff[20, 11] > 0
    near = diff[15:26, 6:17].sum()
    assert near > 0.2 * diff.sum()


def test_softmax_flag():
    torch.manual_seed(1)
    logits_net = LandmarkUNet(out_channels=5, features=SMALL).eval()
    prob_net = LandmarkUNet(out_channels=5, features=SMALL, softmax=True).eval()
    prob_net.load_state_dict(logits_net.state_dict())
    x = torch.randn(1, 1, 40, 24)
    with torch.no_grad():
        assert torch.allclose(prob_net(x), torch.softmax(logits_net(x), 1), atol=1e-6)
        assert torch.allclose(prob_net(x).sum(1), torch.ones(1, 40, 24), atol=1e-5)


@pytest.mark.parametrize("softmax", [False, True])
def test_torchscript_equals_eager(softmax):
    torch.manual_seed(2)
    net = LandmarkUNet(features=SMALL, softmax=softmax).eval()
    scripted = torch.jit.script(net)
    for size in [(100, 100), (150, 150), (77, 45)]:  # one scripted module, several sizes
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            assert torch.allclose(scripted(x), net(x), atol=1e-6)


def test_3d_any_size_and_scripted():
    torch.manual_seed(3)
    net = LandmarkUNet(spatial_dims=3, out_channels=4, features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.randn(1, 1, 17, 20, 33)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 4, 17, 20, 33)
        assert torch.allclose(torch.jit.script(net)(x), y, atol=1e-6)


def test_trains_one_step():
    torch.manual_seed(4)
    net = LandmarkUNet(out_channels=3, features=SMALL)
    x = torch.randn(2, 1, 30, 30)
    y = net(x)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="6 values"):
        LandmarkUNet(features=(8, 16, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        LandmarkUNet(spatial_dims=1)
    with pytest.raises(ValueError, match="expects"):
        LandmarkUNet(features=SMALL)(torch.randn(1, 1, 8, 8, 8))


def test_whole_method_module_forward_is_the_global_stage_and_scripts():
    """AttentionGuidedUNet (the bundle's network_def): two LandmarkUNets; forward = the global U-Net, one tensor."""
    from custom_monai.networks import AttentionGuidedUNet

    torch.manual_seed(5)
    net = AttentionGuidedUNet(n_landmarks=3, features=SMALL).eval()
    assert isinstance(net.global_net, LandmarkUNet) and isinstance(net.local_net, LandmarkUNet)
    assert {k.split(".")[0] for k in net.state_dict()} == {"global_net", "local_net"}
    x = torch.randn(2, 1, 40, 56)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 4, 40, 56)
        assert torch.equal(y, net.global_net(x)) and not torch.allclose(y, net.local_net(x))
        assert torch.allclose(torch.jit.script(net)(x), y, atol=1e-6)
        net.init_local_from_global()
        assert torch.equal(net.local_net(x), y)
    with pytest.raises(ValueError, match="n_landmarks"):
        AttentionGuidedUNet(n_landmarks=0)
