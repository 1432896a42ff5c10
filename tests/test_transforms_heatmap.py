"""Heatmap / coordinate targets and heatmap decoders (custom_monai.transforms.heatmap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize

from custom_monai.transforms import (
    LANDMARK_AFFINE,
    LandmarkHeatmap,
    LandmarkHeatmapd,
    NormalizedCoordinatesd,
    PrepareLandmarksd,
    gaussian_heatmaps,
    heatmap_argmax,
    heatmap_threshold_mean,
    normalized_to_grid,
    to_grid,
)


def _centroid(hm: torch.Tensor) -> np.ndarray:
    """Intensity centroid of each channel: (N, *spatial) -> (N, D)."""
    h = torch.as_tensor(hm, dtype=torch.float64)
    d = h.ndim - 1
    out = []
    for c in h:
        axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in c.shape], indexing="ij")
        out.append([(c * a).sum().item() / c.sum().item() for a in axes])
    return np.asarray(out).reshape(-1, d)


def _prepared(shape=(1, 64, 48), landmarks=((10.0, 12.0), None, (40.3, 30.7))):
    img = MetaTensor(torch.zeros(shape))
    img.meta["filename_or_obj"] = "synthetic.png"
    return PrepareLandmarksd()({"image": img, "landmarks": [list(p) if p is not None else None for p in landmarks]})


def test_heatmap_shapes_dtype_nan_and_mask():
    d = LandmarkHeatmapd(sigma=2.0)(_prepared())
    hm, mask = d["heatmap"], d["landmark_mask"]
    assert isinstance(hm, MetaTensor) and hm.dtype == torch.float32 and tuple(hm.shape) == (3, 64, 48)
    assert torch.equal(hm.affine, d["image"].affine) and LANDMARK_AFFINE in hm.meta
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [1, 0, 1])
    assert hm[1].abs().sum() == 0  # missing -> all-zero channel
    assert np.isnan(d["landmarks"][1]).all()  # the landmark array itself keeps its NaN


def test_heatmap_peak_at_integer_and_subpixel_points():
    pts = np.array([[10.0, 12.0], [40.3, 30.7], [25.62, 7.41]])
    hm = gaussian_heatmaps(pts, (64, 48), sigma=2.5)
    # integer point: the sampled maximum is exactly 1, at the point
    assert hm[0, 10, 12].item() == pytest.approx(1.0)
    assert heatmap_argmax(hm[None])[0, 0].tolist() == [10.0, 12.0]
    # sub-pixel points: the value at the point is 1 analytically; the centroid recovers it
    np.testing.assert_allclose(_centroid(hm), pts, atol=0.05)
    expected = np.exp(-((40 - 40.3) ** 2 + (31 - 30.7) ** 2) / (2 * 2.5**2))
    assert hm[1, 40, 31].item() == pytest.approx(expected, rel=1e-5)


def test_heatmap_sigma_per_axis_and_per_landmark():
    pts = np.array([[32.0, 24.0], [20.0, 20.0]])
    sig = np.array([[1.5, 3.0], [2.0, 2.0]])
    hm = gaussian_heatmaps(pts, (64, 48), sigma=sig).double()
    for k in range(2):
        c = hm[k] / hm[k].sum()
        x = torch.arange(64, dtype=torch.float64)[:, None]
        y = torch.arange(48, dtype=torch.float64)[None, :]
        var_x = (c * (x - pts[k, 0]) ** 2).sum().item()
        var_y = (c * (y - pts[k, 1]) ** 2).sum().item()
        np.testing.assert_allclose([var_x, var_y], sig[k] ** 2, rtol=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(pts, (64, 48), sigma=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        gaussian_heatmaps(pts, (64, 48), sigma=0.0)


def test_heatmap_normalize_modes_and_truncate():
    pts = np.array([[20.4, 18.8], [np.nan, np.nan]])
    mx = gaussian_heatmaps(pts, (40, 36), sigma=2.0, normalize="max")
    assert mx[0].max().item() == pytest.approx(1.0) and mx[1].abs().sum() == 0
    sm = gaussian_heatmaps(pts, (40, 36), sigma=2.0, normalize="sum")
    assert sm[0].sum().item() == pytest.approx(1.0, rel=1e-5) and sm[1].abs().sum() == 0
    tr = gaussian_heatmaps(pts, (40, 36), sigma=2.0, truncate=3.0)
    xs = torch.arange(40)
    assert tr[0][(xs - 20.4).abs() > 6.0].abs().max() == 0  # beyond 3 sigma along x
    assert tr[0][(xs - 20.4).abs() <= 6.0].abs().max() > 0
    with pytest.raises(ValueError, match="normalize"):
        gaussian_heatmaps(pts, (40, 36), normalize="peak1")


def test_heatmap_background_channel():
    d = LandmarkHeatmapd(sigma=2.0, background=True)(_prepared())
    hm = d["heatmap"]
    assert tuple(hm.shape) == (4, 64, 48)
    total = hm.sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)  # blobs far apart
    assert hm[-1].min() >= 0 and hm[-1, 10, 12] == pytest.approx(0.0, abs=1e-6)
    # overlapping blobs: the background is clipped at 0, never negative
    hb = LandmarkHeatmap(sigma=3.0, background=True)(np.array([[10.0, 10.0], [11.0, 10.0]]), (20, 20))
    assert hb[-1].min() == 0 and hb[-1, 10, 10] == 0
    with pytest.raises(ValueError, match="background"):
        LandmarkHeatmap(background=True, normalize="sum")


def test_heatmap_outside_point_mask_zero():
    d = _prepared(landmarks=((10.0, 12.0), (60.0, 40.0)))
    d["image"] = Resize((32, 24), mode="bilinear")(d["image"])  # points halve
    img = d["image"]
    # move the frame so that landmark 2 falls off the grid: crop the first 16 columns via the affine
    from monai.transforms import SpatialCrop

    d["image"] = SpatialCrop(roi_start=(0, 0), roi_end=(20, 24))(img)
    out = LandmarkHeatmapd(sigma=1.5)(d)
    np.testing.assert_array_equal(out["landmark_mask"], [1, 0])
    grid = to_grid(d["landmarks"], d["image"])
    assert grid[1, 0] > 19.5  # outside the 20-pixel-wide grid
    np.testing.assert_allclose(_centroid(out["heatmap"][:1]), grid[:1], atol=0.05)


def test_heatmap_3d():
    img = MetaTensor(torch.zeros(1, 24, 20, 16))
    d = PrepareLandmarksd()({"image": img, "landmarks": [[5.3, 10.6, 7.2], None, [18.0, 8.0, 11.0]]})
    out = LandmarkHeatmapd(sigma=(1.5, 2.0, 1.2), background=True)(d)
    hm = out["heatmap"]
    assert tuple(hm.shape) == (4, 24, 20, 16)
    np.testing.assert_array_equal(out["landmark_mask"], [1, 0, 1])
    np.testing.assert_allclose(_centroid(hm[[0, 2]]), np.array([[5.3, 10.6, 7.2], [18.0, 8.0, 11.0]]), atol=0.05)
    assert hm[1].abs().sum() == 0
    assert heatmap_argmax(hm[None, :3])[0, 2].tolist() == [18.0, 8.0, 11.0]
    torch.testing.assert_close(hm.sum(0), torch.ones(24, 20, 16), atol=1e-5, rtol=0)


def test_heatmap_follows_resize():
    d = _prepared(shape=(1, 120, 90), landmarks=((30.0, 40.0), (90.2, 70.9)))
    d["image"] = Resize((48, 36), mode="bilinear")(d["image"])
    out = LandmarkHeatmapd(sigma=1.5)(d)
    expected = (np.asarray(d["landmarks"], np.float64) + 0.5) * 0.4 - 0.5
    np.testing.assert_allclose(_centroid(out["heatmap"]), expected, atol=0.05)


def test_normalized_coordinates_round_trip():
    d = _prepared()
    d["image"] = Resize((32, 96), mode="bilinear")(d["image"])
    out = NormalizedCoordinatesd()(d)
    coords, mask = out["coords"], out["landmark_mask"]
    assert coords.dtype == np.float32 and coords.shape == (3, 2)
    grid = to_grid(d["landmarks"], d["image"])
    np.testing.assert_allclose(coords[[0, 2]], grid[[0, 2]] / np.array([32, 96]), atol=1e-6)
    assert np.isnan(coords[1]).all()
    np.testing.assert_array_equal(mask, [1, 0, 1])
    np.testing.assert_allclose(normalized_to_grid(coords, (32, 96))[[0, 2]], grid[[0, 2]], atol=1e-4)
    batch = torch.as_tensor(np.stack([coords, coords]))
    back = normalized_to_grid(batch, torch.tensor([[32, 96], [64, 48]]))
    np.testing.assert_allclose(back[1, 0].numpy(), coords[0] * np.array([64, 48]), atol=1e-4)


def test_heatmap_argmax_batched():
    hm = torch.zeros(2, 3, 10, 12)
    positions = [[(1, 2), (9, 11), (4, 0)], [(0, 0), (5, 5), (7, 3)]]
    for b, row in enumerate(positions):
        for n, (x, y) in enumerate(row):
            hm[b, n, x, y] = 2.0 + n
    coords, val = heatmap_argmax(hm, return_value=True)
    assert coords.dtype == torch.float32 and tuple(coords.shape) == (2, 3, 2)
    assert coords.tolist() == [[list(map(float, p)) for p in row] for row in positions]
    assert val[0].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="heatmaps"):
        heatmap_argmax(torch.zeros(3, 10, 12))


def test_heatmap_threshold_mean():
    hm = torch.zeros(2, 2, 20, 16)
    hm[0, 0, 3:6, 4:9] = 1.0  # a plateau: mean of x in 3..5 and y in 4..8
    hm[0, 0, 15, 15] = 0.4  # below half of the range after min-max: dropped
    hm[0, 1] = 7.0  # a constant channel has no peak
    g = gaussian_heatmaps(np.array([[12.0, 6.0]]), (20, 16), sigma=2.0)[0]
    hm[1, 0] = 5.0 + 3.0 * g  # offset and scale do not matter (min-max)
    hm[1, 1] = torch.from_numpy(np.random.default_rng(1).random((20, 16)).astype(np.float32))
    out = heatmap_threshold_mean(hm, thr=0.5)
    assert tuple(out.shape) == (2, 2, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), [4.0, 6.0], atol=1e-6)
    assert torch.isnan(out[0, 1]).all()
    np.testing.assert_allclose(out[1, 0].numpy(), [12.0, 6.0], atol=1e-5)  # symmetric support
    keep = (hm[1, 1] - hm[1, 1].min()) / (hm[1, 1].max() - hm[1, 1].min()) >= 0.5
    ix, iy = torch.nonzero(keep, as_tuple=True)
    np.testing.assert_allclose(out[1, 1].numpy(), [ix.float().mean(), iy.float().mean()], atol=1e-4)
    hm3 = torch.zeros(1, 1, 8, 9, 10)
    hm3[0, 0, 2:5, 6, 1:4] = 1.0
    np.testing.assert_allclose(heatmap_threshold_mean(hm3)[0, 0].numpy(), [3.0, 6.0, 2.0], atol=1e-6)
