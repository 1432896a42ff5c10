"""Patches per landmark and the global-to-local predictor (Noothout et al.), checked with oracle networks.

The oracle networks are fakes with the real networks' output layout: the global one returns the
encoded cell targets of known points on the grid of the image it receives (so decoding must give the
points back), the local one finds the single bright pixel of each patch and returns its encoded targets
(so the predictor's patch placement and origin bookkeeping must put the result on that pixel).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, CopyItemsd, DivisiblePadd, Spacingd
from torch import nn

from custom_monai.inferers import GlobalLocalPredictor, grid_to_original, original_to_grid
from custom_monai.transforms import (
    LandmarkPatchesd,
    PatchCellTargetsd,
    PrepareLandmarksd,
    RescaleByFactord,
    decode_cells,
    encode_cells,
    extract_patches,
    to_grid,
)


def _logits(presence: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(presence > 0, 20.0, -20.0), dtype=torch.float32)


class OracleGlobal(nn.Module):
    """Returns the encoded targets of ``points`` (B, N, D), given in the original frame, on the input's grid."""

    def __init__(self, points: torch.Tensor, cell_size: int) -> None:
        super().__init__()
        self.points = points
        self.cell_size = cell_size
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        assert isinstance(x, MetaTensor), "the predictor must pass the MetaTensor (with its affines)"
        grid_pts = original_to_grid(self.points, x)
        shape = [s // self.cell_size for s in x.shape[2:]]
        logits, disps = [], []
        for b in range(x.shape[0]):
            presence, disp, _ = encode_cells(grid_pts[b].numpy(), shape, self.cell_size)
            logits.append(_logits(presence))
            disps.append(torch.as_tensor(disp))
        return torch.stack(logits), torch.stack(disps)


class BrightSpotLocal(nn.Module):
    """Local 'network': in landmark n's patch, the pixel of value n + 1 is the landmark (see ``_paint_local``)."""

    cell_size = 2

    def __init__(self, n_landmarks: int) -> None:
        super().__init__()
        self.n = n_landmarks
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x)
        b, spatial = x.shape[0], list(x.shape[2:])
        assert x.shape[1] == self.n, "one patch (channel) per landmark"
        grid = [s // 2 for s in spatial]
        logits, disps = [], []
        for i in range(b):
            codes = torch.arange(1, self.n + 1, dtype=x.dtype)[:, None]
            flat = (-(x[i].reshape(self.n, -1) - codes).abs()).argmax(-1)
            pts = np.stack(np.unravel_index(flat.numpy(), spatial), axis=-1).astype(np.float64)
            presence, disp, _ = encode_cells(pts, grid, 2)
            logits.append(_logits(presence))
            disps.append(torch.as_tensor(disp))
        return torch.stack(logits), torch.stack(disps)


def test_extract_patches_values_borders_and_missing():
    img = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(2, 10, 12) + 1
    centers = torch.tensor([[4.4, 5.6], [0.0, 0.0], [9.0, 11.0], [np.nan, 3.0], [40.0, 40.0]])
    patches, origins = extract_patches(img, centers, 4)
    assert patches.shape == (5, 2, 4, 4) and origins.shape == (5, 2)
    # rounded centre (4, 6) sits at index 2: the patch starts at (2, 4)
    assert origins[0].tolist() == [2.0, 4.0]
    torch.testing.assert_close(patches[0], img[:, 2:6, 4:8])
    # at the corner: zero padding before the image
    assert origins[1].tolist() == [-2.0, -2.0]
    torch.testing.assert_close(patches[1][:, 2:, 2:], img[:, :2, :2])
    assert patches[1][:, :2].abs().sum() == 0 and patches[1][:, :, :2].abs().sum() == 0
    torch.testing.assert_close(patches[2][:, :3, :3], img[:, 7:, 9:])
    assert patches[2][:, 3:].abs().sum() == 0
    # missing centre: zero patch, NaN origin; far outside: zero patch, finite origin
    assert patches[3].abs().sum() == 0 and torch.isnan(origins[3]).all()
    assert patches[4].abs().sum() == 0 and origins[4].tolist() == [38.0, 38.0]
    # 3D, anisotropic patch
    vol = torch.rand(1, 9, 8, 7)
    p3, o3 = extract_patches(vol, np.array([[4.0, 4.0, 3.0]]), (4, 2, 6))
    assert p3.shape == (1, 1, 4, 2, 6) and o3[0].tolist() == [2.0, 3.0, 0.0]
    torch.testing.assert_close(p3[0, :, :, :, :6], vol[:, 2:6, 3:5, 0:6])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        extract_patches(img, torch.zeros(3, 3), 4)


def _prepared_2d(points: np.ndarray, size=(90, 70)) -> dict:
    img = MetaTensor(torch.zeros(1, *size))
    for p in points:
        if np.all(np.isfinite(p)):
            img[(0, *np.round(p).astype(int))] = 1.0
    return PrepareLandmarksd()({"image": img, "landmarks": points.tolist()})


def test_landmark_patches_follow_the_affine_and_targets_roundtrip():
    pts = np.array([[10.0, 12.0], [44.0, 30.0], [np.nan, np.nan], [85.0, 3.0]], dtype=np.float32)
    d = _prepared_2d(pts)
    d = DivisiblePadd("image", k=32)(d)  # shifts the grid: the patches must still find the points
    t = Compose([LandmarkPatchesd("image", patch_size=8, max_offset=3), PatchCellTargetsd(cell_size=2)])
    t.set_random_state(0)
    seen_offsets = set()
    for _ in range(10):
        out = t(d)
        assert out["patches"].shape == (4, 8, 8)
        q = out["patch_points"]
        assert np.isnan(q[2]).all() and out["patches"][2].abs().sum() == 0
        assert out["landmark_mask"].tolist() == [1.0, 1.0, 0.0, 1.0]
        grid = to_grid(pts, out["image"])
        for n in (0, 1, 3):
            # the bright pixel of landmark n is where patch_points says, and origin + point = grid position
            assert out["patches"][n][tuple(np.round(q[n]).astype(int))] == 1.0
            np.testing.assert_allclose(q[n] + out["patch_origin"][n], grid[n], atol=1e-5)
            assert np.all((q[n] >= 0.5) & (q[n] <= 7.5))
            seen_offsets.add(tuple(out["patch_origin"][n]))
        found, _ = decode_cells(torch.as_tensor(out["presence"])[None], torch.as_tensor(out["displacement"])[None], 2)
        np.testing.assert_allclose(found[0].numpy()[[0, 1, 3]], q[[0, 1, 3]], atol=1e-3)
    assert len(seen_offsets) > 6  # random placement, not always centred


def _batch_2d(points_list, local_scale=0.5, global_scale=0.25, size=(150, 118)):
    pipeline = Compose(
        [
            PrepareLandmarksd(),
            CopyItemsd("image", names="image_local"),
            RescaleByFactord("image_local", local_scale),
            RescaleByFactord("image", global_scale),
            DivisiblePadd("image", k=32),
        ]
    )
    items = [pipeline({"image": MetaTensor(torch.rand(1, *size)), "landmarks": p.tolist()}) for p in points_list]
    return list_data_collate(items)


def _paint_local(batch: dict, points_original: torch.Tensor) -> torch.Tensor:
    """Zero the local image except one pixel of value n + 1 per landmark n; return those pixels in the original frame."""
    local = batch["image_local"]
    grid = original_to_grid(points_original, local)
    rounded = torch.round(grid)
    local.zero_()
    for b in range(grid.shape[0]):
        for n, p in enumerate(rounded[b]):
            local[(b, 0, *p.long().tolist())] = float(n + 1)
    return grid_to_original(rounded, local)


def test_predictor_recovers_encoded_points_2d():
    rng = np.random.default_rng(3)
    size = np.array([150, 118])
    truth = [rng.uniform(8, size - 9, size=(5, 2)).astype(np.float32) for _ in range(2)]
    batch = _batch_2d(truth)
    truth_t = torch.as_tensor(np.stack(truth))
    oracle = OracleGlobal(truth_t, 32)
    predictor = GlobalLocalPredictor(oracle, None, stage="global")
    pred, conf = predictor(batch, torch.device("cpu"))
    assert pred.shape == (2, 5, 2) and conf.shape == (2, 5)
    np.testing.assert_allclose(pred.numpy(), truth_t.numpy(), atol=2e-3)  # through 0.25 scale + padding
    assert torch.all(conf > 0.99)

    # the full stage lands on the bright local pixels, also from a global estimate a few pixels off
    on_pixels = _paint_local(batch, truth_t)
    local = BrightSpotLocal(5)
    for shift in (0.0, 5.0, -9.0):  # original px = 2.5 / 4.5 local px, inside the 16-px patch
        oracle.points = truth_t + shift
        for mode in ("weighted", "topk", "threshold"):
            full = GlobalLocalPredictor(oracle, local, stage="full", patch_size=16, local_decode_mode=mode)
            pred, conf = full(batch, torch.device("cpu"))
            np.testing.assert_allclose(pred.numpy(), on_pixels.numpy(), atol=2e-3)
    x = local.inputs[-1]
    assert x.shape == (2, 5, 16, 16)  # (B, N*C, *patch): one patch per landmark on channels


def test_predictor_3d_with_resampling_and_oblique_affine():
    rng = np.random.default_rng(5)
    theta = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) @ np.diag(
        [0.8, 0.8, 1.2]
    )
    affine[:3, 3] = [-20.0, 15.0, 7.0]
    shape = (40, 36, 30)
    truth = rng.uniform(6, np.array(shape) - 7, size=(4, 3)).astype(np.float32)
    pipeline = Compose(
        [
            PrepareLandmarksd(),
            CopyItemsd("image", names="image_local"),
            Spacingd("image_local", pixdim=(1.0, 1.0, 1.0)),
            Spacingd("image", pixdim=(1.5, 1.5, 1.5)),
            DivisiblePadd("image", k=8),
        ]
    )
    item = pipeline({"image": MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(affine)), "landmarks": truth.tolist()})
    batch = list_data_collate([item])
    assert all(s % 8 == 0 for s in batch["image"].shape[2:])
    truth_t = torch.as_tensor(truth)[None]
    oracle = OracleGlobal(truth_t, 8)
    pred, _ = GlobalLocalPredictor(oracle, stage="global")(batch, torch.device("cpu"))
    np.testing.assert_allclose(pred.numpy(), truth_t.numpy(), atol=2e-3)
    on_pixels = _paint_local(batch, truth_t)
    oracle.points = truth_t + torch.tensor([2.0, -1.5, 1.0])
    pred, _ = GlobalLocalPredictor(oracle, BrightSpotLocal(4), stage="full", patch_size=10)(batch, torch.device("cpu"))
    np.testing.assert_allclose(pred.numpy(), on_pixels.numpy(), atol=2e-3)


def test_predictor_argument_errors():
    net = OracleGlobal(torch.zeros(1, 1, 2), 32)
    with pytest.raises(ValueError, match="needs a local network"):
        GlobalLocalPredictor(net, None, stage="full")
    with pytest.raises(ValueError, match="stage"):
        GlobalLocalPredictor(net, None, stage="local")
    with pytest.raises(ValueError, match="decode_mode"):
        GlobalLocalPredictor(net, None, stage="global", decode_mode="vote")
    with pytest.raises(ValueError, match="cell_size"):
        GlobalLocalPredictor(nn.Identity(), None, stage="global")


def test_real_networks_run_through_the_predictor():
    """Shapes and frames with the real (untrained) GlobalFCNN and LocalFCNN, shared and per-landmark."""
    from custom_monai.networks import GlobalFCNN, LocalFCNN

    truth = [np.array([[20.0, 30.0], [100.0, 90.0], [np.nan, np.nan]], dtype=np.float32)]
    batch = _batch_2d(truth)
    g = GlobalFCNN(2, 3, channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1), head_channels=8).eval()
    for shared in (True, False):
        loc = LocalFCNN(2, 3, shared=shared, channels=(4, 4), head_channels=4).eval()
        with torch.no_grad():
            pred, conf = GlobalLocalPredictor(g, loc, patch_size=8)(batch, torch.device("cpu"))
        assert pred.shape == (1, 3, 2) and conf.shape == (1, 3)
        assert torch.isfinite(pred).all() and torch.all((conf >= 0) & (conf <= 1))
