"""D-CeLR: network (custom_monai.networks.dcelr), RLE loss (custom_monai.losses.rle), two-pass geometry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialCrop

from custom_monai.inferers.two_pass import (
    crop_normalized_to_original,
    crop_resize,
    landmark_box,
    original_to_crop_normalized,
    second_pass,
    sigma_to_original,
)
from custom_monai.losses import DCeLRLoss, RealNVP, RLELoss
from custom_monai.losses.rle import gaussian_targets
from custom_monai.networks import DCeLR
from custom_monai.networks.cephmarknet import count_parameters
from custom_monai.networks.dcelr import inverse_sigmoid, sincos_embedding_1d

K = 3
SMALL = (128, 96)  # (S0, S1) = (W, H)


def _small(**kw) -> DCeLR:
    torch.manual_seed(0)
    args = dict(input_size=SMALL, embed_dim=64, num_heads=4, token_size=8, head_hidden=64)
    args.update(kw)
    return DCeLR(K, **args)


@pytest.fixture(scope="module")
def full_net() -> DCeLR:
    """Paper widths (512, 8 heads, 32x32 tokens, 4 + 4 blocks) at a 128x128 input to stay fast."""
    torch.manual_seed(0)
    return DCeLR(19, in_channels=1, input_size=(128, 128))


# ---------------------------------------------------------------- network


def test_parameter_count(full_net):
    n = count_parameters(full_net)
    assert 43e6 < n < 47e6, n  # SPECS: ~45 M (44.52 M with these defaults)
    assert count_parameters(DCeLR(19, input_size=(1024, 1024))) == n  # does not depend on the input size


def test_token_and_query_shapes(full_net):
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        feats, pos = full_net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 512, 32, 32)] * 4
    assert [tuple(p.shape) for p in pos] == [(1, 512, 32, 32)] * 4
    tokens = torch.cat([feats[3].flatten(2).transpose(1, 2), full_net.query_fixed[None].expand(2, -1, -1)], 1)
    assert tokens.shape == (2, 32 * 32 + 19, 512)
    # queries: fixed (a buffer, not learnt), the 1-D sinusoid, all distinct
    assert "query_fixed" not in dict(full_net.named_parameters())
    assert torch.equal(full_net.query_fixed, sincos_embedding_1d(19, 512))
    assert torch.cdist(full_net.query_fixed, full_net.query_fixed).add(torch.eye(19)).min() > 0.5
    # the fixed position embeddings are not saved (rebuilt from input_size)
    assert not any("pos_fixed" in k or "query_fixed" in k for k in full_net.state_dict())


def test_forward_backward_full_width(full_net):
    full_net.train()
    x = torch.rand(1, 1, 128, 128)
    out = full_net.forward_all(x)
    assert out["reference"].shape == (1, 19, 4)
    assert out["fine"].shape == (4, 1, 19, 4)
    assert out["refs"].shape == (5, 1, 19, 2)
    assert out["heatmap"].shape == (1, 1, 32, 32)
    target = torch.rand(1, 19, 2) * 0.8 + 0.1
    target[0, 4] = float("nan")  # a missing landmark
    loss_fn = DCeLRLoss()
    loss = loss_fn(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in list(full_net.parameters()) + list(loss_fn.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert full_net.backbone.conv1.weight.grad.abs().sum() > 0
    assert full_net.fine_layers[-1].sigma[-1].weight.grad.abs().sum() > 0
    assert loss_fn.rle.flow.couplings[0].scale[0].weight.grad.abs().sum() > 0
    full_net.zero_grad(set_to_none=True)
    full_net.eval()


def test_forward_is_last_fine_layer_and_starts_at_reference():
    net = _small().eval()
    x = torch.rand(2, 1, *SMALL)
    with torch.no_grad():
        out = net.forward_all(x)
        y = net(x)
    assert y.shape == (2, K, 4 * (1 + 4))  # reference, then the 4 fine-tune layers, each (p0, p1, s0, s1)
    assert net.output_names() == ["reference", "fine1", "fine2", "fine3", "fine4"]
    assert torch.equal(y[..., :4], out["reference"])
    for i in range(4):
        assert torch.equal(y[..., 4 * (i + 1) : 4 * (i + 2)], out["fine"][i])
    assert ((y[..., 2::4] > 0) & (y[..., 2::4] < 1)).all() and ((y[..., 3::4] > 0) & (y[..., 3::4] < 1)).all()
    # zero-initialised deltas: every layer starts exactly at the (clamped) reference point
    ref = out["reference"][..., :2].clamp(1e-4, 1 - 1e-4)
    for layer in range(out["fine"].shape[0]):
        torch.testing.assert_close(out["fine"][layer, ..., :2], ref, atol=1e-5, rtol=0)


def test_iterative_update_is_inverse_sigmoid_and_stays_in_unit_interval():
    net = _small().eval()
    x = torch.rand(2, 1, *SMALL)
    with torch.no_grad():
        for i, layer in enumerate(net.fine_layers):  # a constant shift in logit space per layer
            layer.delta_ref[-1].bias.fill_(0.5 if i % 2 else -0.3)
        out = net.forward_all(x)
    refs = out["refs"]
    for i in range(len(net.fine_layers)):
        expect = torch.sigmoid(inverse_sigmoid(refs[i]) + (0.5 if i % 2 else -0.3))
        torch.testing.assert_close(refs[i + 1], expect.clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=0)
    # extreme updates saturate the sigmoid, the points still stay strictly inside (0, 1)
    for big in (80.0, -80.0):
        with torch.no_grad():
            for layer in net.fine_layers:
                layer.delta_ref[-1].bias.fill_(big)
            refs = net.forward_all(x)["refs"]
        assert torch.isfinite(refs).all() and (refs > 0).all() and (refs < 1).all()


def test_trace_and_script():
    net = _small().eval()
    x = torch.rand(2, 1, *SMALL)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, x)
        scripted = torch.jit.script(net)
        x1 = torch.rand(1, 1, *SMALL)  # another batch size
        torch.testing.assert_close(traced(x1), net(x1))
        torch.testing.assert_close(scripted(x1), net(x1))
    with pytest.raises(ValueError, match="input_size"):
        net(torch.rand(1, 1, 96, 128))


# ---------------------------------------------------------------- RLE and the loss


def _rle_value(loss: RLELoss, mu: float, sigma: float, gt: float) -> float:
    pred = torch.tensor([[[mu, mu, sigma, sigma]]])
    with torch.no_grad():
        return float(loss(pred, torch.tensor([[[gt, gt]]])))


def test_rle_sigma_behaviour():
    torch.manual_seed(0)
    loss = RLELoss(RealNVP())
    sigmas = [0.2, 0.1, 0.05, 0.02, 0.01]
    right = [_rle_value(loss, 0.5, s, 0.5) for s in sigmas]
    wrong = [_rle_value(loss, 0.5, s, 0.8) for s in sigmas]
    assert all(b < a for a, b in zip(right, right[1:])), right  # correct point: shrinking sigma helps
    assert all(b > a for a, b in zip(wrong, wrong[1:])), wrong  # wrong point: shrinking sigma hurts
    # at a fixed sigma, a closer prediction costs less
    assert _rle_value(loss, 0.5, 0.05, 0.52) < _rle_value(loss, 0.5, 0.05, 0.6)


def test_rle_mask_and_missing():
    torch.manual_seed(0)
    loss = RLELoss(RealNVP(), reduction="mean")
    pred = torch.rand(2, 4, 4, requires_grad=True)
    target = torch.rand(2, 4, 2)
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]])
    target_nan = target.clone()
    target_nan[0, 2] = float("nan")
    target_nan[1, 1] = float("nan")
    a = loss(pred, target, mask)
    b = loss(pred, target_nan)
    torch.testing.assert_close(a, b)
    keep = mask.bool()
    torch.testing.assert_close(a, loss.nll(pred, target)[keep].mean())
    b.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0, 2].abs().sum() == 0 and pred.grad[1, 1].abs().sum() == 0


def test_flow_log_density_integrates_to_one():
    torch.manual_seed(1)
    flow = RealNVP(hidden=64, n_couplings=6).double()
    with torch.no_grad():  # a clearly non-Gaussian flow, not the near-identity initialisation
        for c in flow.couplings:
            for net in (c.scale, c.shift):
                for layer in net:
                    if isinstance(layer, nn.Linear):
                        nn.init.normal_(layer.weight, std=0.15)
                        nn.init.normal_(layer.bias, std=0.1)
    step = 0.05
    axis = torch.arange(-10.0, 10.0 + step / 2, step, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        logp = flow.log_prob(grid)
    integral = float(logp.exp().sum() * step * step)
    assert abs(integral - 1.0) < 1e-3, integral
    gauss = -0.5 * (grid**2).sum(-1) - math.log(2 * math.pi)
    assert float((logp.exp() - gauss.exp()).abs().sum() * step * step) > 0.1  # really not the base density


def test_gaussian_targets_peak_at_cell():
    pts = torch.tensor([[[(3 + 0.5) / 8, (5 + 0.5) / 6], [float("nan"), 0.5]]])
    hm = gaussian_targets(pts, (8, 6), 0.625)
    assert hm.shape == (1, 2, 8, 6)
    assert float(hm[0, 0, 3, 5]) == pytest.approx(1.0)
    assert hm[0, 0].argmax() == 3 * 6 + 5
    assert hm[0, 1].abs().sum() == 0


def test_dcelr_loss_parts_and_mask():
    net = _small().train()
    x = torch.rand(2, 1, *SMALL)
    out = net.forward_all(x)
    target = torch.rand(2, K, 2)
    loss_fn = DCeLRLoss()
    parts = loss_fn.parts(out, target)
    assert parts["rle_fine"].shape == (4,)
    total = parts["rle_reference"] + parts["rle_fine"].sum() + parts["heatmap_mse"] + parts["heatmap_dice"]
    torch.testing.assert_close(parts["loss"], total)
    # mask == 0 and NaN give the same loss
    mask = torch.ones(2, K)
    mask[1, 0] = 0
    t_nan = target.clone()
    t_nan[1, 0] = float("nan")
    torch.testing.assert_close(loss_fn(out, target, mask), loss_fn(out, t_nan))
    assert set(loss_fn.last_parts) == {"rle_reference", "rle_fine", "heatmap_mse", "heatmap_dice"}


# ---------------------------------------------------------------- two-pass geometry


def test_landmark_box():
    pts = torch.tensor([[500.0, 700.0], [1200.0, 1800.0], [float("nan"), float("nan")]])
    start, end = landmark_box(pts, (1935, 2400), margin=300, shift=(100, 0))
    assert start.tolist() == [300, 400] and end.tolist() == [1601, 2101]
    start, end = landmark_box(pts, (1500, 2400), margin=300, shift=(100, 0))
    assert start.tolist() == [300, 400] and end.tolist() == [1500, 2101]  # x end clamped to the width
    start, end = landmark_box(pts, (1935, 2400), margin=200, shift=0)
    assert start.tolist() == [300, 500] and end.tolist() == [1401, 2001]
    start, end = landmark_box(pts[None].expand(2, -1, -1), (1935, 2400), margin=(10, 20), shift=0)
    assert start.shape == (2, 2) and start[1].tolist() == [490, 680]
    start, end = landmark_box(torch.full((3, 2), float("nan")), (64, 48))
    assert start.tolist() == [0, 0] and end.tolist() == [64, 48]


def test_crop_maps_back_exactly():
    w, h = 301, 257
    xs, ys = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="ij")
    image = torch.stack([xs, ys])  # channel c holds the original coordinate along axis c
    pts = torch.tensor([[60.3, 80.0], [150.0, 120.7], [90.0, 170.2]], dtype=torch.float64)
    start, end = landmark_box(pts, (w, h), margin=(25, 30), shift=(7, 0))
    for size in [(64, 48), (160, 200)]:  # shrinking and enlarging, different per-axis scales
        crop = crop_resize(image, start, end, size, mode="bilinear", anti_aliasing=False)
        assert crop.shape == (2, *size)
        j = torch.stack(torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij"), -1).double()
        mapped = crop_normalized_to_original(j.reshape(-1, 2) / torch.tensor(size), start, end, size)
        values = crop.double().permute(1, 2, 0).reshape(-1, 2)
        n = (end - start).double()
        # bilinear resampling reproduces a linear ramp exactly wherever it does not clamp at the crop border
        src = (j.reshape(-1, 2) + 0.5) * n / torch.tensor(size) - 0.5
        inside = ((src >= 0) & (src <= n - 1)).all(-1)
        assert inside.float().mean() > 0.9
        torch.testing.assert_close(values[inside], mapped[inside], atol=1e-4, rtol=0)
        # same as MONAI's own affine bookkeeping for SpatialCrop + Resize
        mt = MetaTensor(image.clone(), affine=torch.eye(3, dtype=torch.float64))
        mt = Resize(list(size), mode="bilinear")(SpatialCrop(roi_start=start.tolist(), roi_end=end.tolist())(mt))
        aff = torch.as_tensor(mt.affine, dtype=torch.float64)
        monai_mapped = (aff[:2, :2] @ j.reshape(-1, 2).T + aff[:2, 2:]).T
        torch.testing.assert_close(monai_mapped, mapped)
        # exact round trip
        back = crop_normalized_to_original(original_to_crop_normalized(pts, start, end, size), start, end, size)
        torch.testing.assert_close(back, pts, atol=1e-10, rtol=0)


class _Const(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1, -1)


def test_second_pass_maps_network_output_back():
    pts = torch.tensor([[60.0, 80.0], [150.0, 120.0]])
    image = torch.rand(1, 301, 257)
    size = (64, 48)
    net = _Const(torch.tensor([[[0.25, 0.75, 0.1, 0.2], [0.5, 0.5, 0.05, 0.05]]]))
    points, sigma, (start, end) = second_pass(net, image, pts, size, margin=20, shift=(5, 0))
    assert start.tolist() == [45, 60] and end.tolist() == [176, 141]
    expect = crop_normalized_to_original(net.value[0, :, :2].double(), start, end, size).float()
    torch.testing.assert_close(points, expect)
    torch.testing.assert_close(sigma, sigma_to_original(net.value[0, :, 2:], start, end))
    torch.testing.assert_close(sigma[0], torch.tensor([0.1 * 131, 0.2 * 81]))
    s = torch.tensor(size, dtype=torch.float64)
    centre = start + (0.5 * s + 0.5) * (end - start) / s - 0.5  # p = 0.5: the crop centre, up to half a pixel
    np.testing.assert_allclose(points[1].numpy(), centre.numpy(), atol=1e-4)


# ---------------------------------------------------------------- predictor (whole pipeline geometry)


class _ConstGroups(nn.Module):
    """A stand-in DCeLR: returns fixed (reference, fine) groups (B, K, 8) whatever the input."""

    def __init__(self, reference: torch.Tensor, fine: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.cat([reference, fine], dim=-1)[None], requires_grad=False)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.value.expand(x.shape[0], -1, -1)


@pytest.mark.parametrize("crop_box", [None, [[10, 6], [190, 140]]])
def test_predictor_outputs_map_to_the_original_image(tmp_path, crop_box):
    """reference / fine / two_pass through the bundle's own preprocessing (load, optional fixed crop, keep the
    full image, resize): every output lands where the geometry says, in original pixels, sigma included."""
    from monai.data import list_data_collate
    from monai.transforms import Compose, CopyItemsd, Resized
    from PIL import Image

    from custom_monai.inferers import DCeLRPredictor
    from custom_monai.transforms import landmark_loading

    w, h = 200, 150
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    size = (64, 32)
    pre = Compose(
        landmark_loading("pixel", crop_box, labelled=False)
        + [CopyItemsd("image", names="image_full"), Resized("image", spatial_size=size, mode="bilinear", anti_aliasing=True)]
    )
    batch = list_data_collate([pre({"image": str(tmp_path / "img.png")})])
    reference = torch.tensor([[0.25, 0.5, 0.1, 0.2], [0.75, 0.25, 0.05, 0.05]])
    fine = torch.tensor([[0.3, 0.6, 0.02, 0.04], [0.7, 0.2, 0.01, 0.03]])
    net = _ConstGroups(reference, fine)
    off = torch.zeros(2, dtype=torch.float64) if crop_box is None else torch.tensor(crop_box[0], dtype=torch.float64)
    full = torch.tensor([w, h], dtype=torch.float64) - off if crop_box is None else torch.tensor(
        [crop_box[1][0] - crop_box[0][0], crop_box[1][1] - crop_box[0][1]], dtype=torch.float64
    )
    s = torch.tensor(size, dtype=torch.float64)

    def resized_to_original(p):  # MONAI Resize: index j on the resized grid sits at (j + 0.5) n / S - 0.5
        return off + (p.double() * s + 0.5) * full / s - 0.5

    pred = DCeLRPredictor(net, output="two_pass", extra_outputs=("reference", "fine"), margin=12.0, shift=(5.0, 0.0))
    points, conf, extra = pred(batch, torch.device("cpu"))
    assert net.calls == 2  # pass 1 and pass 2, one image
    np.testing.assert_allclose(extra["pred_reference"][0], resized_to_original(reference[:, :2]), atol=1e-4)
    np.testing.assert_allclose(extra["pred_fine"][0], resized_to_original(fine[:, :2]), atol=1e-4)
    # pass 2: the box around the pass-1 (fine) points on the kept full image, the crop's prediction mapped back
    first = resized_to_original(fine[:, :2]) - off
    start, end = landmark_box(first, [int(v) for v in full], margin=12.0, shift=(5.0, 0.0))
    expect = off + crop_normalized_to_original(fine[:, :2].double(), start, end, size)
    np.testing.assert_allclose(points[0], expect, atol=1e-4)
    # sigma in original pixels: times the crop size (pass 2); the confidence is its mean over the axes
    n = (end - start).double()
    np.testing.assert_allclose(extra["sigma"][0], fine[:, 2:].double() * n, rtol=1e-5)
    np.testing.assert_allclose(conf[0], (fine[:, 2:].double() * n).mean(-1), rtol=1e-5)

    ref_only = DCeLRPredictor(net, output="reference")
    points, conf, extra = ref_only({k: v for k, v in batch.items() if k != "image_full"}, torch.device("cpu"))
    np.testing.assert_allclose(points[0], resized_to_original(reference[:, :2]), atol=1e-4)
    np.testing.assert_allclose(extra["sigma"][0], reference[:, 2:].double() * full, rtol=1e-5)  # x W, x H
    assert set(extra) == {"sigma"}
    with pytest.raises(KeyError, match="image_full"):
        DCeLRPredictor(net)({k: v for k, v in batch.items() if k != "image_full"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="not one of"):
        DCeLRPredictor(net, output="coarse")


def test_prediction_record_landmark_fields():
    from custom_monai.handlers.writers import prediction_record

    pts = np.array([[1.0, 2.0], [np.nan, np.nan]])
    rec = prediction_record("a.png", [0.1, 0.1], pts, ["A", "B"], confidence=[3.0, 4.0],
                            landmark_fields={"sigma": [[2.0, 4.0], [1.0, 1.0]]}, analysis=False)
    assert rec["landmarks"][0]["sigma"] == {"x": 2.0, "y": 4.0} and rec["landmarks"][0]["confidence"] == 3.0
    assert rec["landmarks"][1]["sigma"] == {"x": None, "y": None}
    assert "sigma" not in prediction_record("a.png", None, pts, ["A", "B"], analysis=False)["landmarks"][0]
    with pytest.raises(ValueError, match="overwrite"):
        prediction_record("a.png", None, pts, ["A", "B"], landmark_fields={"x": [1.0, 2.0]}, analysis=False)


def test_training_wrapper_holds_network_and_flow():
    from custom_monai.networks import DCeLRTraining

    net = _small().train()
    loss = DCeLRLoss()
    wrapper = DCeLRTraining(net, loss)
    names = {n for n, _ in wrapper.named_parameters()}
    assert any(n.startswith("loss.rle.flow.") for n in names) and any(n.startswith("network.backbone.") for n in names)
    out = wrapper(torch.rand(2, 1, *SMALL))
    assert set(out) == {"reference", "fine", "refs", "heatmap"}
    loss(out, torch.rand(2, K, 2)).backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert set(net.state_dict()) == {k[len("network."):] for k in wrapper.state_dict() if k.startswith("network.")}


def test_training_crop_keeps_every_landmark_with_margin():
    """RandLandmarkBoxCropd: random boxes that keep all present landmarks >= margin inside; points follow."""
    from custom_monai.transforms import PrepareLandmarksd, RandLandmarkBoxCropd, to_grid

    img = MetaTensor(torch.rand(1, 120, 90), affine=torch.eye(3, dtype=torch.float64))
    pts = np.array([[30.0, 20.0], [80.0, 60.0], [np.nan, np.nan]], dtype=np.float32)
    d = PrepareLandmarksd("landmarks", ref_key="image")({"image": img, "landmarks": pts})
    crop = RandLandmarkBoxCropd("image", margin=10.0, prob=1.0)
    crop.set_random_state(0)
    sizes = set()
    for _ in range(30):
        out = crop(d)
        shape = out["image"].shape[1:]
        sizes.add(tuple(shape))
        grid = np.asarray(to_grid(np.asarray(out["landmarks"]), out["image"]))
        assert np.isnan(grid[2]).all()
        assert (grid[:2] >= 10).all() and (grid[:2] <= np.array(shape) - 1 - 10).all(), (grid, shape)
        start = np.asarray(out["image"].affine)[:2, 2]  # identity scale: the translation is the box start
        np.testing.assert_allclose(grid[:2], pts[:2] - start, atol=1e-5)
    assert len(sizes) > 10  # really random
    never = RandLandmarkBoxCropd("image", margin=10.0, prob=0.0)(d)
    assert never["image"].shape == img.shape
