"""CEPHMark-Net network (custom_monai.networks.cephmarknet) and loss (custom_monai.losses.cephmarknet_loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from custom_monai.losses.cephmarknet_loss import CEPHMarkLoss
from custom_monai.networks.cephmarknet import (
    CEPHMarkNet,
    GradientNormClipping,
    PerLandmarkRefinementHeads,
    SharedRefinementHead,
    count_parameters,
    crop_and_resize,
)

SMALL = (128, 160)  # (S0, S1) = (W, H) in the project's (x, y) order
N = 3


@pytest.fixture(scope="module")
def small_net() -> CEPHMarkNet:
    torch.manual_seed(0)
    return CEPHMarkNet(n_landmarks=N, backbone="resnet18", in_channels=1, input_size=SMALL).eval()


class _Const(nn.Module):
    """Returns a fixed (B, 2N) tensor whatever the input: pins the coarse points."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1)


class _Record(nn.Module):
    """Stands in for the LRM: records its input and returns a fixed offset."""

    def __init__(self, offset: torch.Tensor) -> None:
        super().__init__()
        self.offset = offset
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.offset.expand(x.shape[0], -1, -1)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "backbone,channels", [("resnet18", (128, 256, 512)), ("resnet34", (128, 256, 512)), ("resnet50", (512, 1024, 2048))]
)
def test_shapes_per_backbone(backbone, channels):
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=N, backbone=backbone, in_channels=3, input_size=SMALL).eval()
    x = torch.rand(2, 3, *SMALL)
    with torch.no_grad():
        taps = net.encode(x)
        out = net(x)
    assert out.shape == (2, N, 4)  # one tensor: coarse (x, y) then refined (x, y) per landmark
    coarse, refined = CEPHMarkNet.split(out)
    for tap, ch, stride in zip(taps, channels, (8, 16, 32)):
        assert tuple(tap.shape) == (2, ch, SMALL[0] // stride, SMALL[1] // stride)
    assert coarse.shape == refined.shape == (2, N, 2)
    assert torch.isfinite(coarse).all() and torch.isfinite(refined).all()


@pytest.mark.parametrize("head", ["per_landmark", "shared"])
def test_default_size_shape_resnet18(head):
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=N, backbone="resnet18", head=head).eval()
    assert net.input_size == (640, 800)
    x = torch.rand(1, 1, 640, 800)
    with torch.no_grad():
        coarse, refined = net.forward_pair(x)
    assert coarse.shape == refined.shape == (1, N, 2)


def test_bad_arguments_and_inputs(small_net):
    with pytest.raises(ValueError, match="input_size"):
        small_net(torch.rand(1, 1, 160, 128))  # (H, W) instead of (W, H)
    with pytest.raises(ValueError, match=r"\(B, 1, S0, S1\)"):
        small_net(torch.rand(1, 3, *SMALL))
    with pytest.raises(ValueError, match="backbone"):
        CEPHMarkNet(backbone="vgg16")
    with pytest.raises(ValueError, match="multiples of 32"):
        CEPHMarkNet(backbone="resnet18", input_size=(100, 160))
    with pytest.raises(ValueError, match="head"):
        CEPHMarkNet(backbone="resnet18", head="mlp")


# ---------------------------------------------------------------- crops


def test_crop_centred_on_hot_cell():
    f0, f1, stride = 16, 20, 8  # a stride-8 map of a 128 x 160 input
    feat = torch.zeros(1, 1, f0, f1)
    feat[0, 0, 5, 7] = 1.0
    # the centre of cell (5, 7) is the normalised point p = (f + 0.5) * stride / S
    p = torch.tensor([[[(5 + 0.5) * stride / (f0 * stride), (7 + 0.5) * stride / (f1 * stride)]]])
    crop = crop_and_resize(feat, p, box_size=7.0, output_size=5)[0, 0, 0]
    assert crop.shape == (5, 5)
    assert crop[2, 2] == pytest.approx(1.0)
    assert int(crop.argmax()) == 2 * 5 + 2
    # one cell further along axis 0: the hot cell is now behind the centre (row 1), same along axis 1 (col 1)
    box4 = dict(box_size=4.0, output_size=5)  # samples one cell apart: exact shift by one sample
    right0 = crop_and_resize(feat, p + torch.tensor([1.0 / f0, 0.0]), **box4)[0, 0, 0]
    assert right0[1, 2] == pytest.approx(1.0) and right0.sum() == pytest.approx(1.0)
    right1 = crop_and_resize(feat, p + torch.tensor([0.0, 1.0 / f1]), **box4)[0, 0, 0]
    assert right1[2, 1] == pytest.approx(1.0) and right1.sum() == pytest.approx(1.0)
    # with the paper's 7-cell box (samples 1.75 cells apart) a one-cell shift moves the peak one sample back
    shifted = crop_and_resize(feat, p + torch.tensor([1.0 / f0, 0.0]), box_size=7.0)[0, 0, 0]
    assert int(shifted.argmax()) == 1 * 5 + 2
    assert shifted.max() == pytest.approx(0.25)  # 0.75 cell from the hot cell -> bilinear weight 0.25


def test_crop_matches_independent_bilinear_sampling():
    rng = np.random.default_rng(1)
    feat = torch.from_numpy(rng.normal(size=(2, 3, 12, 15)).astype(np.float32))
    centres = torch.from_numpy(rng.uniform(-0.05, 1.05, size=(2, 4, 2)).astype(np.float32))
    box, k = 5.0, 5
    out = crop_and_resize(feat, centres, box, k).numpy()  # (B, N, C, K, K)
    steps = (np.arange(k) - (k - 1) / 2) * box / (k - 1)
    for b in range(2):
        for n in range(4):
            c0 = centres[b, n, 0].item() * 12 - 0.5  # feature index of p: p * F - 0.5
            c1 = centres[b, n, 1].item() * 15 - 0.5
            r, c = np.meshgrid(c0 + steps, c1 + steps, indexing="ij")
            for ch in range(3):
                ref = ndimage.map_coordinates(feat[b, ch].numpy(), [r, c], order=1, mode="grid-constant", cval=0.0)
                np.testing.assert_allclose(out[b, n, ch], ref, atol=1e-5)


def test_network_crops_at_coarse_points_and_adds_offset(small_net):
    net = small_net
    saved_ldm, saved_lrm = net.ldm, net.lrm
    pts = torch.tensor([[0.30, 0.60], [0.75, 0.20], [0.50, 0.95]])
    offset = torch.tensor([[[0.01, -0.02], [0.0, 0.03], [-0.05, 0.0]]])
    try:
        net.ldm = _Const(pts.reshape(1, -1))
        rec = _Record(offset)
        net.lrm = rec
        x = torch.rand(2, 1, *SMALL)
        with torch.no_grad():
            coarse, refined = net.forward_pair(x)
            torch.testing.assert_close(net(x), torch.cat([coarse, refined], dim=-1))
            p3, p4, p5 = net.sfb(*net.encode(x))
        centres = pts.expand(2, -1, -1)
        torch.testing.assert_close(coarse, centres)
        torch.testing.assert_close(refined, centres + offset)  # refined = coarse + offset, both normalised
        expected = torch.cat(
            [crop_and_resize(p3, centres, 7.0), crop_and_resize(p4, centres, 5.0), crop_and_resize(p5, centres, 3.0)],
            dim=2,
        )
        assert rec.seen is not None and rec.seen.shape == (2, N, 768, 5, 5)
        torch.testing.assert_close(rec.seen, expected)
    finally:
        net.ldm, net.lrm = saved_ldm, saved_lrm


# ---------------------------------------------------------------- heads


def test_per_landmark_heads_are_independent_heads():
    torch.manual_seed(0)
    n, c, k = 3, 8, 5
    heads = PerLandmarkRefinementHeads(n, c, k, conv_channels=6, fc_channels=4)
    x = torch.randn(2, n, c, k, k)
    out = heads(x)
    for i in range(n):  # explicit head i from its slice of the stacked weights
        w = heads.conv.weight[i * 6 : (i + 1) * 6]
        bconv = heads.conv.bias[i * 6 : (i + 1) * 6]
        h = F.relu(F.conv2d(x[:, i], w, bconv, padding=1)).flatten(1)
        h = F.relu(h @ heads.fc1_weight[i] + heads.fc1_bias[i])
        torch.testing.assert_close(out[:, i], h @ heads.fc2_weight[i])
    x2 = x.clone()
    x2[:, 0] += 1.0
    out2 = heads(x2)
    torch.testing.assert_close(out2[:, 1:], out[:, 1:])
    assert not torch.allclose(out2[:, 0], out[:, 0])
    per_head = c * 6 * 9 + 6 + 6 * k * k * 4 + 4 + 4 * 2
    assert count_parameters(heads) == n * per_head


def test_shared_head_tells_landmarks_apart():
    torch.manual_seed(0)
    head = SharedRefinementHead(3, 8, 5, conv_channels=6, fc_channels=4)
    x = torch.randn(1, 1, 8, 5, 5).expand(2, 3, -1, -1, -1)  # the same crop for every landmark
    out = head(x)
    assert out.shape == (2, 3, 2)
    assert not torch.allclose(out[:, 0], out[:, 1])  # only the embedding differs
    assert count_parameters(head) == 3 * 8 + (8 * 6 * 9 + 6) + (6 * 25 * 4 + 4) + 4 * 2


def test_parameter_counts_paper_configuration():
    with torch.device("meta"):  # no memory for the ~257 M parameters
        net = CEPHMarkNet(n_landmarks=19, backbone="resnet50", input_size=(640, 800))
        shared = CEPHMarkNet(n_landmarks=19, backbone="resnet50", input_size=(640, 800), head="shared")
    head = (768 * 512 * 9 + 512) + (512 * 25 * 512 + 512) + 512 * 2
    assert count_parameters(net.ldm) == 2048 * 20 * 25 * 38
    assert count_parameters(net.lrm) == 19 * head
    assert count_parameters(shared.lrm) == head + 19 * 768
    assert 256e6 < count_parameters(net) < 258e6  # SPECS: ~257 M as coded



def test_ldm_bias_option_starts_at_the_image_centre():
    """``ldm_bias=True`` (non-paper): coarse points start at (0.5, 0.5) for any image; the paper's LDM has no bias."""
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=3, backbone="resnet18", input_size=(64, 96), head="shared", fusion_channels=16, ldm_bias=True)
    coarse, _ = net.eval().forward_pair(torch.rand(2, 1, 64, 96))
    torch.testing.assert_close(coarse, torch.full((2, 3, 2), 0.5))
    assert count_parameters(net.ldm) == 512 * 2 * 3 * 6 + 6
    paper = CEPHMarkNet(n_landmarks=3, backbone="resnet18", input_size=(64, 96), head="shared", fusion_channels=16)
    assert paper.ldm.bias is None
    groups = net.parameter_groups(1e-4)
    assert groups[1]["lr"] == 1e-4 and len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))


# ---------------------------------------------------------------- loss


def test_loss_values_by_hand():
    coarse = torch.tensor([[[0.1, 0.2], [0.5, 0.5]], [[0.3, 0.3], [0.9, 0.0]]])
    refined = torch.tensor([[[0.2, 0.2], [0.4, 0.5]], [[0.3, 0.4], [0.8, 0.1]]])
    target = torch.tensor([[[0.2, 0.1], [0.5, 0.7]], [[0.3, 0.3], [float("nan"), float("nan")]]])
    loss_fn = CEPHMarkLoss()
    loss = loss_fn((coarse, refined), target)
    # present: (0,0), (0,1), (1,0)
    det = ((0.01 + 0.01) / 2 + (0.0 + 0.04) / 2 + 0.0) / 3
    head0 = ((0.0 + 0.01) / 2 + (0.0 + 0.01) / 2) / 2
    head1 = (0.01 + 0.04) / 2 / 1
    assert loss_fn.last_parts["detection"].item() == pytest.approx(det, rel=1e-5)
    assert loss_fn.last_parts["refinement"].item() == pytest.approx(head0 + head1, rel=1e-5)
    assert loss.item() == pytest.approx(det + head0 + head1, rel=1e-5)
    weighted = CEPHMarkLoss(detection_weight=0.5, refinement_weight=2.0)((coarse, refined), target)
    assert weighted.item() == pytest.approx(0.5 * det + 2 * (head0 + head1), rel=1e-5)


@pytest.mark.parametrize("use_mask", [False, True])
def test_loss_masks_missing_landmarks(use_mask):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 2)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    if not use_mask:
        target[1, 2] = float("nan")
    coarse = torch.rand(2, 3, 2, requires_grad=True)
    refined = torch.rand(2, 3, 2, requires_grad=True)
    loss_fn = CEPHMarkLoss()
    loss = loss_fn((coarse, refined), target, mask if use_mask else None)
    loss.backward()
    assert torch.isfinite(loss)
    assert (coarse.grad[1, 2] == 0).all() and (refined.grad[1, 2] == 0).all()
    assert (coarse.grad[0, 2] != 0).all() and (refined.grad[0, 2] != 0).all()
    with torch.no_grad():
        c2, r2 = coarse.clone(), refined.clone()
        c2[1, 2] += 5.0
        r2[1, 2] -= 3.0
        assert loss_fn((c2, r2), target, mask if use_mask else None).item() == pytest.approx(loss.item())
        c2[0, 2] += 0.1  # a present landmark does change it
        assert loss_fn((c2, r2), target, mask if use_mask else None).item() != pytest.approx(loss.item())


def test_loss_accepts_the_network_output_tensor():
    torch.manual_seed(0)
    coarse, refined, target = torch.rand(2, 3, 2), torch.rand(2, 3, 2), torch.rand(2, 3, 2)
    loss_fn = CEPHMarkLoss()
    assert loss_fn(torch.cat([coarse, refined], dim=-1), target).item() == pytest.approx(loss_fn((coarse, refined), target).item())
    with pytest.raises(ValueError, match=r"\(B, N, 2 D\)"):
        loss_fn(torch.rand(2, 3, 6), target)


def test_loss_rejects_bad_shapes():
    t = torch.rand(2, 3, 2)
    with pytest.raises(ValueError, match="refined"):
        CEPHMarkLoss()((t, torch.rand(2, 4, 2)), t)
    with pytest.raises(ValueError, match="mask"):
        CEPHMarkLoss()((t, t), t, torch.ones(2, 4))
    with pytest.raises(ValueError, match="coarse, refined"):
        CEPHMarkLoss()((t,), t)


def test_refinement_loss_trains_the_ldm_by_default():
    """As in the original: boxes are gradient-stopped, but refined = coarse + offset with the UNdetached coarse
    prediction, so the refinement loss reaches the LDM (only through that sum, never through the crops)."""
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=N, backbone="resnet18", input_size=SMALL).train()
    assert net.detach_coarse is False
    x = torch.rand(2, 1, *SMALL)
    target = torch.rand(2, N, 2)
    coarse, refined = net.forward_pair(x)
    coarse.retain_grad()
    refined.retain_grad()
    CEPHMarkLoss(detection_weight=0.0)((coarse, refined), target).backward()  # refinement only
    assert net.ldm.weight.grad.abs().sum() > 0
    # d loss / d coarse is exactly d loss / d refined: nothing flows back through the crop boxes
    torch.testing.assert_close(coarse.grad, refined.grad)
    assert net.lrm.fc1_weight.grad.abs().sum() > 0
    assert net.sfb.lateral3[0].weight.grad.abs().sum() > 0
    assert net.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0  # the backbone learns through the crops
    net.zero_grad(set_to_none=True)
    CEPHMarkLoss(refinement_weight=0.0)(net(x), target).backward()  # detection only, on the (B, N, 4) output
    assert net.ldm.weight.grad.abs().sum() > 0
    assert net.lrm.fc1_weight.grad is None or (net.lrm.fc1_weight.grad == 0).all()


def test_detach_coarse_option_keeps_the_refinement_loss_off_the_ldm():
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=N, backbone="resnet18", input_size=SMALL, detach_coarse=True).train()
    x = torch.rand(2, 1, *SMALL)
    target = torch.rand(2, N, 2)
    CEPHMarkLoss(detection_weight=0.0)(net(x), target).backward()
    assert net.ldm.weight.grad is None or (net.ldm.weight.grad == 0).all()
    assert net.lrm.fc1_weight.grad.abs().sum() > 0
    assert net.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0
    # the forward values do not depend on the option
    undetached = CEPHMarkNet(n_landmarks=N, backbone="resnet18", input_size=SMALL)
    undetached.load_state_dict(net.state_dict())  # same keys: the option adds no parameters
    undetached.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), undetached(x))


def test_target_normalisation_and_zero_init():
    """``zero_init_heads``: every point starts at ``target_mean`` (0 for the paper's "none", the image centre for
    "centre", the training mean for "dataset", set from the targets); the LDM stays bias-free."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 96)
    kw = dict(n_landmarks=N, backbone="resnet18", input_size=(64, 96), fusion_channels=16, zero_init_heads=True)
    for head in ("per_landmark", "shared"):
        for norm, start in (("none", 0.0), ("centre", 0.5)):
            net = CEPHMarkNet(head=head, target_norm=norm, **kw).eval()
            assert net.ldm.bias is None and not net.set_target_statistics(torch.rand(4, N, 2))
            with torch.no_grad():
                torch.testing.assert_close(net(x), torch.full((2, N, 4), start))
    net = CEPHMarkNet(target_norm="dataset", **kw)
    points = torch.tensor([[[0.2, 0.4], [0.6, 0.5], [0.1, float("nan")]], [[0.4, 0.8], [0.6, 0.7], [0.3, 0.9]]])
    assert net.set_target_statistics(points)
    torch.testing.assert_close(net.target_mean, torch.tensor([[0.3, 0.6], [0.6, 0.6], [0.2, 0.9]]))
    # sample std; a constant coordinate gets the floor, a landmark seen once keeps scale 1
    torch.testing.assert_close(net.target_scale, torch.tensor([[0.1414214, 0.2828427], [1e-3, 0.1414214], [0.1414214, 1.0]]))
    with torch.no_grad():
        out = net.eval()(x)
    torch.testing.assert_close(out, torch.cat([net.target_mean, net.target_mean], -1).expand(2, N, 4))
    # the statistics are buffers: they travel in the state dict and through TorchScript
    assert {"target_mean", "target_scale"} <= set(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), out)
    with pytest.raises(ValueError, match="target_norm"):
        CEPHMarkNet(backbone="resnet18", target_norm="zscore")


def test_gradient_norm_clipping_handler():
    from types import SimpleNamespace

    net = nn.Linear(4, 3)
    for p in net.parameters():
        p.grad = torch.full_like(p, 10.0)
    clip = GradientNormClipping(net, max_norm=1.0)
    clip(SimpleNamespace(amp=False, scaler=None))
    assert clip.last_norm == pytest.approx(10.0 * (15**0.5), rel=1e-5)  # the norm before clipping
    assert torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item() == pytest.approx(1.0, rel=1e-4)
    events = []
    GradientNormClipping(net, max_norm=0.0).attach(SimpleNamespace(add_event_handler=lambda *a: events.append(a)))
    assert events == []  # 0 = off


# ---------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("head", ["per_landmark", "shared"])
def test_torchscript_matches_eager(head):
    torch.manual_seed(0)
    net = CEPHMarkNet(n_landmarks=N, backbone="resnet18", input_size=SMALL, head=head).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 1, *SMALL)
    with torch.no_grad():
        eager = net(x)
        out = scripted(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, N, 4)
    torch.testing.assert_close(out, eager)
    with pytest.raises(torch.jit.Error, match="input_size"):
        scripted(torch.rand(1, 1, 64, 64))
