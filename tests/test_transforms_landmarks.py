"""Landmark preparation and coordinate mapping (custom_monai.transforms.landmarks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Flip, Resize, Rotate

from custom_monai.transforms import (
    LANDMARK_AFFINE,
    ORIGINAL_SPATIAL_SHAPE,
    LandmarksToGridd,
    PrepareLandmarksd,
    index_to_world_lps,
    landmarks_to_array,
    to_grid,
    to_original,
    world_lps_to_index,
)


def _image(shape=(1, 40, 30), name="case_07.png", affine=None) -> MetaTensor:
    img = MetaTensor(torch.zeros(shape), affine=affine)
    img.meta["filename_or_obj"] = name
    return img


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_landmarks_to_array_missing_rows():
    arr = landmarks_to_array([[1, 2], None, [3.5, None], [np.nan, 4], [5, 6]], 2)
    assert arr.dtype == np.float32 and arr.shape == (5, 2)
    np.testing.assert_array_equal(arr[0], [1, 2])
    np.testing.assert_array_equal(arr[4], [5, 6])
    assert np.isnan(arr[1:4]).all()


def test_prepare_sets_meta_and_nan():
    d = PrepareLandmarksd()({"image": _image(), "landmarks": [[3.25, 4.5], None, [39.4, 29.4]]})
    lm = d["landmarks"]
    assert lm.dtype == np.float32 and lm.shape == (3, 2)
    assert np.isnan(lm[1]).all() and np.allclose(lm[0], [3.25, 4.5])
    la = d["image"].meta[LANDMARK_AFFINE]
    assert tuple(la.shape) == (4, 4) and la.dtype == torch.float64
    assert list(d["image"].meta[ORIGINAL_SPATIAL_SHAPE]) == [40, 30]


def test_prepare_wraps_plain_array_and_inference_without_landmarks():
    d = PrepareLandmarksd()({"image": np.zeros((1, 8, 9), np.float32), "landmarks": [[1, 1]]})
    assert isinstance(d["image"], MetaTensor) and LANDMARK_AFFINE in d["image"].meta
    d = PrepareLandmarksd(allow_missing_keys=True)({"image": _image()})
    assert LANDMARK_AFFINE in d["image"].meta and "landmarks" not in d


def test_prepare_errors_name_image_and_landmark():
    with pytest.raises(ValueError, match=r"case_07\.png.*L2.*3 coordinates.*expected 2"):
        PrepareLandmarksd()({"image": _image(), "landmarks": [[1, 2], [1, 2, 3]]})
    with pytest.raises(ValueError, match=r"case_07\.png.*outside.*L2 at \[40\.6"):
        PrepareLandmarksd()({"image": _image(), "landmarks": [[1, 2], [40.6, 3]]})
    with pytest.raises(ValueError, match=r"case_07\.png.*L1"):
        PrepareLandmarksd()({"image": _image(), "landmarks": [[-0.7, 2]]})
    # within the 0.5 px tolerance: accepted as is
    d = PrepareLandmarksd()({"image": _image(), "landmarks": [[-0.4, 29.45]]})
    np.testing.assert_allclose(d["landmarks"][0], [-0.4, 29.45], atol=1e-6)
    d = PrepareLandmarksd(on_outside="missing")({"image": _image(), "landmarks": [[1, 2], [40.6, 3]]})
    assert np.isnan(d["landmarks"][1]).all() and not np.isnan(d["landmarks"][0]).any()


def test_prepare_world_coordinates_3d():
    spacing = np.array([0.8, 0.5, 1.2])
    origin_lps = np.array([-30.0, 12.0, 5.0])
    direction = _rotation(0.2, -0.3, 0.5)
    # ITK: world_lps = origin + direction @ (spacing * index); MONAI's affine is the RAS version of it
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = direction @ np.diag(spacing)
    lps_affine[:3, 3] = origin_lps
    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine
    idx = np.array([[3.0, 4.5, 6.0], [np.nan, np.nan, np.nan], [10.0, 0.0, 7.25]])
    world = idx @ lps_affine[:3, :3].T + origin_lps
    img = _image((1, 12, 10, 9), name="ct.nii.gz", affine=torch.as_tensor(ras_affine))
    d = PrepareLandmarksd(coordinate_space="world")({"image": img, "landmarks": world.tolist()})
    np.testing.assert_allclose(d["landmarks"], idx, atol=1e-4)


def test_world_index_round_trip_oblique_3d():
    rng = np.random.default_rng(0)
    aff = np.eye(4)
    aff[:3, :3] = _rotation(0.4, 0.1, -0.7) @ np.diag([0.7, 1.1, 2.5])
    aff[:3, 3] = [12.0, -40.0, 3.0]
    pts = rng.uniform(-50, 50, size=(7, 3))
    pts[2] = np.nan
    idx = world_lps_to_index(pts, aff)
    back = index_to_world_lps(idx, aff)
    np.testing.assert_allclose(back, pts, atol=1e-4)
    assert np.isnan(idx[2]).all()
    # torch input keeps its type
    idx_t = world_lps_to_index(torch.as_tensor(pts), torch.as_tensor(aff))
    assert isinstance(idx_t, torch.Tensor)
    np.testing.assert_allclose(idx_t.numpy(), idx, atol=1e-8)


def test_world_lps_matches_itk_physical_points(tmp_path):
    itk = pytest.importorskip("itk")
    from monai.transforms import LoadImage

    arr = np.zeros((6, 7, 8), np.float32)  # ITK array order (z, y, x)
    img = itk.image_from_array(arr)
    img.SetSpacing([0.6, 0.9, 1.7])
    img.SetOrigin([10.0, -20.0, 30.0])
    direction = _rotation(0.3, -0.2, 0.6)
    img.SetDirection(itk.matrix_from_array(direction))
    path = str(tmp_path / "oblique.mha")
    itk.imwrite(img, path)
    loaded = LoadImage(image_only=True, ensure_channel_first=True, reader="ITKReader")(path)
    assert tuple(loaded.shape[1:]) == (8, 7, 6)  # MONAI: (x, y, z)
    index = [[1, 2, 3], [7, 0, 5], [0, 6, 0]]
    world = np.array([list(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in i))) for i in index])
    np.testing.assert_allclose(world_lps_to_index(world, loaded.affine), index, atol=1e-4)
    np.testing.assert_allclose(index_to_world_lps(np.array(index, float), loaded.affine), world, atol=1e-4)


def test_to_grid_and_to_original_after_monai_transforms():
    d = PrepareLandmarksd()({"image": _image((1, 40, 30)), "landmarks": [[3.0, 4.0], None, [20.5, 10.25]]})
    img = Flip(spatial_axis=0)(Resize((80, 45), mode="bilinear")(d["image"]))
    grid = to_grid(d["landmarks"], img)
    # Resize 40 -> 80 (x2) and 30 -> 45 (x1.5), pixel centres aligned; then flip x on a width of 80
    exp_x = 79 - ((d["landmarks"][:, 0] + 0.5) * 2 - 0.5)
    exp_y = (d["landmarks"][:, 1] + 0.5) * 1.5 - 0.5
    np.testing.assert_allclose(grid[[0, 2]], np.stack([exp_x, exp_y], 1)[[0, 2]], atol=1e-4)
    assert np.isnan(grid[1]).all() and grid.dtype == np.float32
    back = to_original(grid, img.affine, img.meta[LANDMARK_AFFINE])
    np.testing.assert_allclose(back, d["landmarks"], atol=1e-4)


def test_to_original_batched_after_collate():
    items = []
    for angle, lm in ((0.3, [[10.0, 12.0], [25.0, 5.0]]), (-0.5, [[30.0, 20.0], None])):
        d = PrepareLandmarksd()({"image": _image((1, 40, 30)), "landmarks": lm})
        d["image"] = Rotate(angle, keep_size=True)(d["image"])
        d["grid"] = to_grid(d["landmarks"], d["image"])
        items.append(d)
    batch = list_data_collate(items)
    assert tuple(batch["image"].affine.shape) == (2, 4, 4)
    la = batch["image"].meta[LANDMARK_AFFINE]
    assert tuple(la.shape) == (2, 4, 4)
    back = to_original(batch["grid"], batch["image"].affine, la)
    assert isinstance(back, torch.Tensor) and tuple(back.shape) == (2, 2, 2)
    np.testing.assert_allclose(back.numpy(), np.stack([it["landmarks"] for it in items]), atol=1e-4)
    # the two items really are in different frames
    assert not np.allclose(items[0]["grid"][0], items[1]["grid"][0])


def test_to_grid_requires_prepared_image():
    with pytest.raises(ValueError, match="PrepareLandmarksd"):
        to_grid(np.zeros((2, 2), np.float32), _image())


def test_landmarks_to_grid_d():
    d = PrepareLandmarksd()({"image": _image((1, 40, 30)), "landmarks": [[3.0, 4.0], None]})
    d["image"] = Resize((20, 15), mode="bilinear")(d["image"])
    out = LandmarksToGridd()(d)
    np.testing.assert_allclose(out["landmarks_grid"][0], [(3.5 / 2) - 0.5, (4.5 / 2) - 0.5], atol=1e-5)
    assert np.isnan(out["landmarks_grid"][1]).all()
    assert np.allclose(out["landmarks"][0], [3.0, 4.0])  # the original-frame array is left alone
