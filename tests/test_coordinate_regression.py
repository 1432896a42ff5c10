"""CoordinateRegressionPredictor: normalised regression targets -> points in the original image, exactly.

The training target is :class:`NormalizedCoordinatesd` on the resized network input; the predictor must undo
that normalisation and every resize back to the original pixels. A fake network that returns the target
itself (and a shifted "coarse" copy) makes the round trip checkable to float precision.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, Resized
from PIL import Image
from torch import nn

from custom_monai.engines import LandmarkEvaluator, landmark_metric_output
from custom_monai.inferers import CoordinateRegressionPredictor, SelectOutput
from custom_monai.losses import CEPHMarkLoss
from custom_monai.metrics import MeanRadialError
from custom_monai.transforms import NormalizedCoordinatesd, landmark_loading

W, H = 70, 90  # original image (x = columns, y = rows)
INPUT = (32, 64)  # network input (x, y): not aspect-preserving, 0.457 x 0.711
SHIFT = torch.tensor([0.05, -0.02])  # the fake coarse output's offset, normalised units


def _write_case(path, points, spacing=(0.5, 0.25)):
    img = np.zeros((H, W), np.uint8)  # PIL rows = y
    img[5:80, 10:60] = 40
    for x, y in points:
        if x is not None:
            img[int(round(y)), int(round(x))] = 255
    Image.fromarray(img).save(path)
    return {"image": str(path), "landmarks": [None if x is None else [x, y] for x, y in points], "spacing": list(spacing)}


@pytest.fixture
def items(tmp_path):
    a = [(3.0, 4.0), (62.5, 85.25), (None, None), (35.2, 47.9)]
    b = [(12.0, 80.0), (60.0, 7.5), (20.25, 30.75), (None, None)]
    return [_write_case(tmp_path / "a.png", a), _write_case(tmp_path / "b.png", b)]


def _pipeline(resize_mode="bilinear"):
    return Compose(
        landmark_loading("pixel")
        + [
            Resized("image", spatial_size=INPUT, mode=resize_mode),
            NormalizedCoordinatesd("landmarks", ref_key="image", out_key="coords"),
        ]
    )


class EchoTargets(nn.Module):
    """Returns ``(coords + SHIFT, coords)`` of the batch it is told about: a perfect 'refined' head."""

    def __init__(self) -> None:
        super().__init__()
        self.coords: torch.Tensor | None = None
        self.seen_shape: tuple | None = None

    def forward(self, x: torch.Tensor):
        self.seen_shape = tuple(x.shape)
        refined = torch.nan_to_num(self.coords.float(), nan=0.5)
        return refined + SHIFT, refined


def _batch(items):
    loader = DataLoader(Dataset(items, transform=_pipeline()), batch_size=2, shuffle=False)
    return next(iter(loader))


def test_target_convention_is_index_over_size(items):
    """NormalizedCoordinatesd uses grid index / grid size (no half-pixel shift); the predictor inverts that."""
    d = _pipeline()(items[0])
    assert tuple(d["image"].shape) == (1, *INPUT)
    scale = np.array(INPUT, np.float64) / np.array([W, H], np.float64)
    expected_grid = (np.array([3.0, 4.0]) + 0.5) * scale - 0.5  # MONAI resize: pixel centres align
    np.testing.assert_allclose(d["coords"][0] * np.array(INPUT), expected_grid, atol=1e-4)
    assert np.isnan(d["coords"][2]).all()
    np.testing.assert_array_equal(d["landmark_mask"], [1, 1, 0, 1])


def test_round_trip_refined_and_coarse(items):
    batch = _batch(items)
    net = EchoTargets()
    net.coords = torch.as_tensor(batch["coords"])
    predictor = CoordinateRegressionPredictor(net, output="refined", extra_outputs=["coarse"])
    points, conf, extra = predictor(batch, torch.device("cpu"))
    assert net.seen_shape == (2, 1, *INPUT) and conf is None
    gt = torch.as_tensor(batch["landmarks"]).float()
    present = torch.isfinite(gt).all(-1)
    assert present.tolist() == [[True, True, False, True], [True, True, True, False]]
    torch.testing.assert_close(points[present], gt[present], atol=2e-4, rtol=0)
    # the coarse output is the target shifted by SHIFT of the input size: SHIFT * original size in pixels
    shift_px = SHIFT * torch.tensor([W, H], dtype=torch.float32)
    torch.testing.assert_close(extra["pred_coarse"][present] - gt[present], shift_px.expand(int(present.sum()), 2), atol=2e-4, rtol=0)

    # output="coarse" predicts the coarse points; predict_grid stays on the input grid
    coarse_only = CoordinateRegressionPredictor(net, output="coarse")
    pts, _ = coarse_only(batch, torch.device("cpu"))
    torch.testing.assert_close(pts, extra["pred_coarse"])
    grid, _, key = coarse_only.predict_grid(batch, torch.device("cpu"))
    assert key == "image"
    torch.testing.assert_close(grid, (torch.nan_to_num(net.coords, nan=0.5) + SHIFT) * torch.tensor(INPUT, dtype=torch.float32))


def test_bright_pixels_land_on_target(tmp_path):
    """Nearest-neighbour x2 upsampling: the block drawn from a landmark pixel is centred on its grid target."""
    item = _write_case(tmp_path / "c.png", [(10.0, 20.0), (50.0, 70.0)])
    d = Compose(landmark_loading("pixel", normalize=False) + [Resized("image", spatial_size=(2 * W, 2 * H), mode="nearest"), NormalizedCoordinatesd("landmarks", out_key="coords")])(item)
    img = np.asarray(d["image"][0])
    for n in range(2):
        target = d["coords"][n] * np.array([2 * W, 2 * H])
        x0, y0 = np.floor(target).astype(int)
        window = img[x0 - 2 : x0 + 3, y0 - 2 : y0 + 3] == 255
        xs, ys = np.nonzero(window)
        centroid = np.array([xs.mean() + x0 - 2, ys.mean() + y0 - 2])
        np.testing.assert_allclose(centroid, target, atol=0.5)


def test_evaluator_reports_refined_and_coarse_metrics(items):
    """The third element of the predictor's result reaches the evaluator output and an extra metric."""
    batch = _batch(items)
    net = EchoTargets()
    net.coords = torch.as_tensor(batch["coords"])
    predictor = CoordinateRegressionPredictor(net, extra_outputs=("coarse",))
    evaluator = LandmarkEvaluator(
        device="cpu",
        val_data_loader=[batch],
        network=net,
        predictor=predictor,
        key_val_metric={"mre": MeanRadialError(output_transform=landmark_metric_output)},
        additional_metrics={
            "mre_coarse": MeanRadialError(output_transform=functools.partial(landmark_metric_output, pred_key="pred_coarse"))
        },
    )
    evaluator.run()
    assert "pred_coarse" in evaluator.state.output
    assert evaluator.state.metrics["mre"] == pytest.approx(0.0, abs=1e-4)
    # every present landmark is off by SHIFT * (W, H) pixels = (3.5, -1.8) px, spacing (0.5, 0.25) mm
    expected_mm = float(np.hypot(3.5 * 0.5, 1.8 * 0.25))
    assert evaluator.state.metrics["mre_coarse"] == pytest.approx(expected_mm, rel=1e-3)


def test_missing_landmarks_masked_in_loss(items):
    """NaN targets (missing annotations) give a finite loss and no gradient to the missing rows."""
    batch = _batch(items)
    target = torch.as_tensor(batch["coords"]).float()
    coarse = torch.full_like(target, 0.5).requires_grad_(True)
    refined = torch.full_like(target, 0.5).requires_grad_(True)
    loss = CEPHMarkLoss()((coarse, refined), target, torch.as_tensor(batch["landmark_mask"]))
    assert torch.isfinite(loss)
    loss.backward()
    missing = ~torch.isfinite(target).all(-1)
    assert missing.sum() == 2
    assert (coarse.grad[missing] == 0).all() and (refined.grad[missing] == 0).all()
    assert (coarse.grad[~missing] != 0).any() and (refined.grad[~missing] != 0).any()


def test_bad_arguments_and_outputs(items):
    net = EchoTargets()
    with pytest.raises(ValueError, match="output 'middle' is not one of"):
        CoordinateRegressionPredictor(net, output="middle")
    with pytest.raises(ValueError, match="extra_outputs 'fine'"):
        CoordinateRegressionPredictor(net, extra_outputs=["fine"])
    batch = _batch(items)
    net.coords = torch.as_tensor(batch["coords"])
    with pytest.raises(ValueError, match="returned 2 output"):
        CoordinateRegressionPredictor(net, output="only", output_names=["only"])(batch, torch.device("cpu"))

    class Flat(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 8)

    with pytest.raises(ValueError, match=r"must be \(B, N, 2\)"):
        CoordinateRegressionPredictor(Flat(), output="p", output_names=["p"])(batch, torch.device("cpu"))


def test_single_output_network_and_select_output(items):
    batch = _batch(items)
    net = EchoTargets()
    net.coords = torch.as_tensor(batch["coords"])
    refined_only = SelectOutput(net, index=1)
    x = torch.zeros(2, 1, *INPUT)
    torch.testing.assert_close(refined_only(x), net(x)[1])
    torch.testing.assert_close(SelectOutput(net, index=0)(x), net(x)[0])
    # a network returning a single tensor: one output name
    points, _ = CoordinateRegressionPredictor(refined_only, output="points", output_names=["points"])(batch, torch.device("cpu"))
    reference, _ = CoordinateRegressionPredictor(net)(batch, torch.device("cpu"))
    torch.testing.assert_close(points, reference)


def test_one_tensor_with_the_outputs_side_by_side(items):
    """CEPHMark-Net's ``(B, N, 4)`` output: ``("coarse", "refined")`` along the last axis, as the tuple."""
    batch = _batch(items)
    net = EchoTargets()
    net.coords = torch.as_tensor(batch["coords"])

    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat(net(x), dim=-1)

    a = CoordinateRegressionPredictor(Cat(), extra_outputs=["coarse"])(batch, torch.device("cpu"))
    b = CoordinateRegressionPredictor(net, extra_outputs=["coarse"])(batch, torch.device("cpu"))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2]["pred_coarse"], b[2]["pred_coarse"])
    # a (B, N, 4) tensor for one output name is not split: it is rejected as not (B, N, 2)
    with pytest.raises(ValueError, match=r"must be \(B, N, 2\)"):
        CoordinateRegressionPredictor(Cat(), output="p", output_names=["p"])(batch, torch.device("cpu"))


def test_points_outside_the_image_are_clamped(items):
    """Regression can overshoot; as every predictor, the points end on the image border ([-0.5, size - 0.5])."""
    batch = _batch(items)

    class Overshoot(nn.Module):
        def forward(self, x):
            c = torch.tensor([[1.3, -0.2], [0.5, 0.5]]).expand(x.shape[0], 2, 2)
            return c, c

    points, _, extra = CoordinateRegressionPredictor(Overshoot(), extra_outputs=["coarse"])(batch, torch.device("cpu"))
    torch.testing.assert_close(points[:, 0], torch.tensor([[W - 0.5, -0.5]] * 2))
    torch.testing.assert_close(extra["pred_coarse"], points)
    assert (points[:, 1] > 0).all() and (points[:, 1] < torch.tensor([W - 0.5, H - 0.5])).all()
