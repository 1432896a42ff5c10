"""Point-aware resize/pad/crop and augmentation presets (custom_monai.transforms.spatial), synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, RandAffined, RandFlipd, RandGaussianNoised, Zoom

from custom_monai.transforms import (
    LANDMARK_AFFINE,
    CropAroundPointd,
    CropBoxd,
    CropTopRowsd,
    PrepareLandmarksd,
    RandCropAroundLandmarkd,
    ResizeLongestPad,
    ResizeLongestPadd,
    gaussian_heatmaps,
    landmark_augmentations,
    to_grid,
    to_original,
)


def _ramp(shape=(60, 45), landmarks=((10.0, 12.0), None, (50.5, 40.25))) -> dict:
    """Channels = the x and y index of each pixel in the original frame (so values reveal the mapping)."""
    axes = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = MetaTensor(torch.from_numpy(np.stack(axes)))
    img.meta["filename_or_obj"] = "ramp.png"
    lm = [list(p) if p is not None else None for p in landmarks]
    return PrepareLandmarksd()({"image": img, "landmarks": lm})


def _check_ramp(img: MetaTensor, margin: int = 2, valid: torch.Tensor | None = None, atol: float = 1e-3) -> int:
    """Interior pixel values must equal the original coordinates that to_original gives for the pixel."""
    shape = img.shape[1:]
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    orig = to_original(grid, img.affine, img.meta[LANDMARK_AFFINE]).reshape(*shape, len(shape))
    vals = img.as_tensor().numpy().transpose(*range(1, len(shape) + 1), 0)
    sl = tuple(slice(margin, s - margin) for s in shape)
    ok = np.ones(shape, bool) if valid is None else np.asarray(valid)
    inside = np.all((orig > margin) & (orig < np.asarray(_ramp_shape(img)) - 1 - margin), axis=-1) & ok
    inside = inside[sl]
    diff = np.abs(vals[sl] - orig[sl])[inside]
    assert inside.sum() > 0
    assert diff.max() < atol, f"max deviation {diff.max()}"
    return int(inside.sum())


def _ramp_shape(img: MetaTensor) -> tuple[int, ...]:
    return tuple(int(s) for s in img.meta["original_spatial_shape"])


def test_resize_longest_pad_shape_and_mapping():
    d = _ramp((60, 45))
    out = ResizeLongestPadd("image", (32, 32), anti_aliasing=False)(d)
    img = out["image"]
    assert tuple(img.shape) == (2, 32, 32)
    assert ResizeLongestPad((32, 32)).fitted_size((60, 45)) == (32, 24)
    assert img[:, :, 24:].abs().max() == 0  # padding after the image ("end")
    _check_ramp(img, valid=torch.arange(32)[None, :].expand(32, 32) < 24)
    grid = to_grid(out["landmarks"], img)
    np.testing.assert_allclose(grid[0], (np.array([10.0, 12.0]) + 0.5) * 32 / 60 - 0.5, atol=1e-4)
    np.testing.assert_allclose(to_original(grid, img.affine, img.meta[LANDMARK_AFFINE]), out["landmarks"], atol=1e-4)
    # default anti-aliasing (a symmetric blur before shrinking) keeps the interior mapping
    smooth = ResizeLongestPadd("image", (32, 32))(_ramp((60, 45)))["image"]
    torch.testing.assert_close(smooth.affine, img.affine)
    _check_ramp(smooth, margin=4, valid=torch.arange(32)[None, :].expand(32, 32) < 20, atol=2e-3)


def test_resize_longest_pad_symmetric_upscale_3d():
    d = _ramp((10, 16, 8), landmarks=((2.0, 3.0, 4.0),))
    img = ResizeLongestPadd("image", (20, 20, 20), pad_method="symmetric")(d)["image"]
    assert tuple(img.shape) == (3, 20, 20, 20)
    valid = torch.zeros(20, 20, 20, dtype=torch.bool)
    valid[3:17, :, 5:15] = True  # 10->12 (x1.25 of 16->20), centred in x and z
    _check_ramp(img, valid=valid, atol=1e-3)


def test_crop_box_and_top_rows():
    d = _ramp((60, 45), landmarks=((10.0, 12.0), (50.0, 40.0)))
    out = CropBoxd("image", roi_start=(5, 10), roi_end=(55, 44))(d)
    assert tuple(out["image"].shape) == (2, 50, 34)
    np.testing.assert_allclose(to_grid(out["landmarks"], out["image"]), [[5.0, 2.0], [45.0, 30.0]], atol=1e-5)
    _check_ramp(out["image"], margin=0)
    with pytest.raises(ValueError, match=r"ramp\.png.*crop box"):
        CropBoxd("image", roi_start=(0, 0), roi_end=(61, 10))(_ramp((60, 45)))
    # ISBI 2015 recipe: 1935 x 2400 -> drop the top 465 rows -> 1935 x 1935, y - 465
    isbi = MetaTensor(torch.zeros(1, 1935, 2400, dtype=torch.uint8))
    di = PrepareLandmarksd()({"image": isbi, "landmarks": [[835.0, 996.0]]})
    oi = CropTopRowsd("image", rows=465)(di)
    assert tuple(oi["image"].shape) == (1, 1935, 1935)
    np.testing.assert_allclose(to_grid(oi["landmarks"], oi["image"]), [[835.0, 531.0]], atol=1e-4)
    with pytest.raises(ValueError, match="cannot drop"):
        CropTopRowsd("image", rows=45)(_ramp((60, 45)))


def test_crop_around_point_centre_and_padding():
    d = _ramp((60, 45), landmarks=((10.4, 12.0), (1.0, 43.0), None))
    out = CropAroundPointd("image", roi_size=(16, 15), index=0)(d)
    assert tuple(out["image"].shape) == (2, 16, 15) and out["landmark_index"] == 0
    np.testing.assert_allclose(to_grid(out["landmarks"], out["image"])[0], [8.4, 7.0], atol=1e-5)
    _check_ramp(out["image"], margin=0)
    # near the corner: padded with zeros where the box leaves the image; the point still at roi // 2
    out = CropAroundPointd("image", roi_size=12, index=1)(d)
    img = out["image"]
    assert tuple(img.shape) == (2, 12, 12)
    np.testing.assert_allclose(to_grid(out["landmarks"], img)[1], [6.0, 6.0], atol=1e-5)
    assert img[:, :5].abs().max() == 0 and img[:, :, 8:].abs().max() == 0
    valid = torch.zeros(12, 12, dtype=torch.bool)
    valid[5:, :8] = True
    _check_ramp(img, margin=0, valid=valid)
    with pytest.raises(ValueError, match=r"ramp\.png.*L3.*missing"):
        CropAroundPointd("image", roi_size=12, index=2)(d)


def test_rand_crop_around_landmark():
    d = _ramp((60, 45), landmarks=((10.0, 12.0), None, (40.0, 30.0), (30.0, 20.0)))
    t = RandCropAroundLandmarkd("image", roi_size=(20, 20), max_offset=(3, 5))
    t.set_random_state(0)
    chosen = set()
    for _ in range(40):
        out = t(d)
        k = out["landmark_index"]
        chosen.add(k)
        g = to_grid(out["landmarks"], out["image"])[k]
        off = g - 10.0  # centre of the box (index 10) minus the landmark
        assert abs(off[0]) <= 3.5 and abs(off[1]) <= 5.5
        assert tuple(out["image"].shape) == (2, 20, 20)
    assert chosen == {0, 2, 3}  # never the missing one
    # fixed seed -> same crop; given index is honoured
    a = RandCropAroundLandmarkd("image", 20, max_offset=4).set_random_state(7)(d)
    b = RandCropAroundLandmarkd("image", 20, max_offset=4).set_random_state(7)(d)
    assert torch.equal(a["image"].affine, b["image"].affine) and a["landmark_index"] == b["landmark_index"]
    c = RandCropAroundLandmarkd("image", 20, max_offset=0, index=3).set_random_state(1)(d)
    assert c["landmark_index"] == 3
    np.testing.assert_allclose(to_grid(c["landmarks"], c["image"])[3], [10.0, 10.0], atol=1e-5)
    empty = _ramp((60, 45), landmarks=(None, None))
    with pytest.raises(ValueError, match=r"ramp\.png.*no present landmark"):
        RandCropAroundLandmarkd("image", 20)(empty)


def test_invertd_restores_shape_and_affine():
    d = _ramp((60, 45), landmarks=((10.0, 12.0), (50.0, 40.0)))
    d["image"].meta["original_affine"] = d["image"].affine.clone()
    chain = Compose(
        [
            CropTopRowsd("image", rows=4),
            ResizeLongestPadd("image", (40, 40)),
            RandCropAroundLandmarkd("image", 24, max_offset=3),
            CropBoxd("image", roi_start=(2, 2), roi_end=(22, 20)),
        ]
    ).set_random_state(3)
    out = chain(d)
    assert tuple(out["image"].shape) == (2, 20, 18)
    inv = Invertd("image", chain, nearest_interp=False)(out)
    assert tuple(inv["image"].shape) == (2, 60, 45)
    torch.testing.assert_close(inv["image"].affine, d["image"].affine)
    assert len(inv["image"].applied_operations) == 0


def test_landmark_augmentations_preset():
    ops = landmark_augmentations("image", spatial_size=(64, 64), flip=True)
    kinds = [type(o) for o in ops]
    assert kinds[0] is RandAffined and RandFlipd in kinds and RandGaussianNoised in kinds
    # the sampled geometry stays within the requested ranges (rotation 15 deg, scale 0.1, shift 5 % of 64)
    rand_affine = ops[0]
    rand_affine.prob = 1.0
    img = MetaTensor(torch.zeros(1, 64, 64))
    angles, scales, shifts = [], [], []
    for seed in range(30):
        out = rand_affine.set_random_state(seed)({"image": img})["image"]
        m = np.linalg.inv(img.affine.numpy()) @ out.affine.numpy()  # output grid -> input grid
        angles.append(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
        scales.extend(np.linalg.svd(m[:2, :2], compute_uv=False))
        centre = np.array([31.5, 31.5])
        shifts.append(np.linalg.norm(m[:2, :2] @ centre + m[:2, 3] - centre))
    assert max(np.abs(angles)) <= 15.0 + 1e-6 and max(np.abs(angles)) > 7.0
    assert 0.9 - 1e-6 <= min(scales) and max(scales) <= 1.1 + 1e-6
    assert 0.5 < max(shifts) <= 3.2 * np.sqrt(2) * 1.1 + 1e-6
    assert [type(o) for o in landmark_augmentations("image", rotate=0, scale=0, translate=0, intensity=False)] == []
    with pytest.raises(ValueError, match="spatial_size"):
        landmark_augmentations("image", translate=0.05)


def test_rand_affine_3d_moves_points_with_the_blobs():
    img = MetaTensor(torch.zeros(1, 40, 36, 32))
    pts = [[15.3, 18.2, 14.7], [24.0, 12.5, 18.0]]
    d = PrepareLandmarksd()({"image": img, "landmarks": pts})
    d["image"] = MetaTensor(gaussian_heatmaps(np.asarray(pts), (40, 36, 32), sigma=1.5), meta=d["image"].meta)
    t = Compose(landmark_augmentations("image", spatial_dims=3, rotate=20, scale=0.1, translate=0.05,
                                       spatial_size=(40, 36, 32), intensity=False, prob=1.0))
    for seed in (0, 1):
        out = t.set_random_state(seed)(d)
        assert not torch.allclose(out["image"].affine, d["image"].affine)
        grid = to_grid(out["landmarks"], out["image"])
        h = out["image"].as_tensor().double()
        axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in h.shape[1:]], indexing="ij")
        cen = np.array([[(c * a).sum().item() / c.sum().item() for a in axes] for c in h])
        np.testing.assert_allclose(cen, grid, atol=0.1)


@pytest.mark.parametrize("keep_size", [True, False])
def test_monai_zoom_follows_points_in_bilinear_mode(keep_size):
    """MONAI Zoom/Resize default to mode="area", which is not a resampling at the affine's positions
    (up to ~0.4 px shifts); with "bilinear" the affine (hence to_grid) is exact."""
    d = _ramp((61, 45))
    for factor in (0.7, 1.3):
        img = Zoom(factor, mode="bilinear", keep_size=keep_size)(d["image"])
        _check_ramp(img, margin=3)


def test_resize_longest_pad_label_key_keeps_values():
    d = _ramp((60, 45), landmarks=((10.0, 12.0),))
    labels = torch.zeros(1, 60, 45)
    labels[0, 10:30, 5:25] = 3.0
    d["label"] = MetaTensor(labels, meta=dict(d["image"].meta))
    out = ResizeLongestPadd(["image", "label"], (30, 30), mode=["bilinear", "nearest"])(d)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 3.0}
    torch.testing.assert_close(out["label"].affine, out["image"].affine)


@pytest.mark.parametrize(
    "shape,size",
    [((1, 301, 257), (150, 100)), ((1, 40, 33, 29), (20, 11, 29)), ((2, 64, 48), (7, 48)), ((1, 50, 60), (80, 30))],
)
def test_fast_anti_aliasing_equals_monai_resize(shape, size):
    """anti_aliased_resize (and so RescaleByFactor / ResizeLongestPad) = MONAI Resize(anti_aliasing=True):
    same values up to float rounding, same affine; gaussian_smooth = MONAI GaussianSmooth (sigma 0 axes kept)."""
    from monai.data import MetaTensor
    from monai.transforms import GaussianSmooth, Resize

    from custom_monai.transforms.rescale import anti_aliased_resize, gaussian_smooth

    torch.manual_seed(0)
    x = MetaTensor(torch.rand(*shape), affine=torch.diag(torch.tensor([0.1] * (len(shape) - 1) + [1.0])))
    mode = "bilinear" if len(shape) == 3 else "trilinear"
    ref = Resize(size, mode=mode, anti_aliasing=True)(x)
    got = anti_aliased_resize(x, size, mode)
    assert isinstance(got, MetaTensor) and torch.allclose(got.affine, ref.affine)
    torch.testing.assert_close(got.as_tensor(), ref.as_tensor(), rtol=0, atol=1e-6)
    sigma = [0.7, 0.0, 2.3][: len(shape) - 1]
    torch.testing.assert_close(gaussian_smooth(x, sigma).as_tensor(), GaussianSmooth(sigma)(x).as_tensor(), rtol=0, atol=1e-6)
