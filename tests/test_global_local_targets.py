"""Cell targets of the global-to-local FCNN: encoding, decoding, and the dictionary transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Flipd, Rotate90d, SpatialPadd

from custom_monai.transforms.cell_targets import (
    CellTargets,
    CellTargetsd,
    cell_centers,
    cell_index,
    decode_cells,
    encode_cells,
    signed_exp10,
    signed_log10,
)


def test_signed_log_transform_and_inverse():
    d = np.array([-1000.0, -3.5, -0.25, 0.0, 0.25, 9.0, 999.0])
    np.testing.assert_allclose(signed_log10(d), np.sign(d) * np.log10(np.abs(d) + 1))
    np.testing.assert_allclose(signed_exp10(signed_log10(d)), d, atol=1e-9)
    t = torch.tensor(d, dtype=torch.float64)
    torch.testing.assert_close(signed_exp10(signed_log10(t)), t)
    assert signed_log10(9.0) == pytest.approx(1.0)


def test_cell_convention():
    c = cell_centers((2, 3), 32)
    assert c.shape == (2, 3, 2)
    assert c[1, 2].tolist() == [32 + 15.5, 64 + 15.5]
    assert cell_centers((1, 1, 2), 8)[0, 0, 1].tolist() == [3.5, 3.5, 11.5]
    # pixel k covers [k - 0.5, k + 0.5): cell i covers [i*c - 0.5, (i+1)*c - 0.5)
    pts = np.array([[31.49, 31.5], [-0.5, -0.51], [0.0, 63.0]])
    assert cell_index(pts, 32).tolist() == [[0, 1], [0, -1], [0, 1]]
    assert cell_index(np.array([[np.nan, 3.0]]), 32).tolist() == [[-1, 0]]


def test_encode_values():
    pts = np.array([[40.25, 10.0], [np.nan, np.nan], [70.0, 5.0], [-3.0, 5.0]], dtype=np.float32)
    presence, disp, mask = encode_cells(pts, (2, 2), 32)
    assert presence.shape == (4, 2, 2) and disp.shape == (4, 2, 2, 2) and mask.shape == (4,)
    assert presence.dtype == disp.dtype == mask.dtype == np.float32
    assert presence[0].tolist() == [[0, 0], [1, 0]]
    np.testing.assert_allclose(disp[0, :, 0, 0], signed_log10(np.array([40.25 - 15.5, 10.0 - 15.5])), rtol=1e-6)
    np.testing.assert_allclose(disp[0, :, 1, 1], signed_log10(np.array([40.25 - 47.5, 10.0 - 47.5])), rtol=1e-6)
    assert mask.tolist() == [1, 0, 0, 0]  # missing, beyond the grid (x=70 > 63.5), before it (x=-3)
    assert presence[1:].sum() == 0 and np.all(disp[1] == 0)
    _, disp_k, mask_k = encode_cells(pts, (2, 2), 32, keep_outside=True)
    assert mask_k.tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(disp_k[2, 0, 1, 0], signed_log10(70.0 - 47.5), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        encode_cells(pts, (2, 2, 2), 32)


def _points(ndim: int, grid: tuple[int, ...], cell: int, rng: np.random.Generator) -> np.ndarray:
    size = np.array(grid) * cell
    pts = [rng.uniform(-0.5, size - 0.5) for _ in range(5)]  # sub-pixel
    pts += [np.full(ndim, cell - 0.5), np.full(ndim, -0.5), size - 0.5 - 1e-3]  # cell borders, grid edges
    pts += [np.round(rng.uniform(0, size - 1))]  # integer pixel
    return np.stack(pts).astype(np.float32)


@pytest.mark.parametrize("ndim, grid, cell", [(2, (5, 7), 32), (3, (4, 3, 5), 8), (2, (8, 8), 2)])
@pytest.mark.parametrize("mode", ["weighted", "topk", "threshold"])
def test_encode_decode_roundtrip(ndim, grid, cell, mode):
    rng = np.random.default_rng(ndim * 100 + cell)
    pts = _points(ndim, grid, cell, rng)
    presence, disp, mask = encode_cells(pts, grid, cell)
    assert mask.tolist() == [1.0] * len(pts)
    assert np.all(presence.reshape(len(pts), -1).sum(1) == 1)
    disp_t = torch.as_tensor(disp)[None]
    # one-hot presence used as probabilities
    found, conf = decode_cells(torch.as_tensor(presence)[None], disp_t, cell, mode=mode, k=3)
    assert found.shape == (1, len(pts), ndim) and conf.shape == (1, len(pts))
    np.testing.assert_allclose(found[0].numpy(), pts, atol=2e-3)
    assert torch.all(conf == 1)
    # any probabilities: every cell votes for the true point, so any weighting recovers it
    prob = torch.rand(1, len(pts), *grid, generator=torch.Generator().manual_seed(0))
    found, _ = decode_cells(prob, disp_t, cell, mode=mode, k=4)
    np.testing.assert_allclose(found[0].numpy(), pts, atol=2e-3)


def test_decode_weighting_modes():
    grid, cell = (2, 2), 32
    centres = cell_centers(grid, cell)  # (2, 2, 2)
    votes = torch.tensor([[[10.0, 10.0], [10.0, 50.0]], [[50.0, 10.0], [50.0, 50.0]]])  # one vote per cell
    disp = signed_log10(votes - centres).permute(2, 0, 1)[None, None]  # (1, 1, 2, 2, 2)
    prob = torch.tensor([[0.9, 0.6], [0.3, 0.0]])[None, None]
    pts, conf = decode_cells(prob, disp, cell)  # weighted over all cells
    expected = (0.9 * votes[0, 0] + 0.6 * votes[0, 1] + 0.3 * votes[1, 0]) / 1.8
    torch.testing.assert_close(pts[0, 0], expected)
    assert conf.item() == pytest.approx(0.9)
    pts, _ = decode_cells(prob, disp, cell, mode="topk", k=2)
    torch.testing.assert_close(pts[0, 0], (0.9 * votes[0, 0] + 0.6 * votes[0, 1]) / 1.5)
    pts, _ = decode_cells(prob, disp, cell, mode="topk", k=1)
    torch.testing.assert_close(pts[0, 0], votes[0, 0])
    pts, _ = decode_cells(prob, disp, cell, mode="threshold", threshold=0.5)
    torch.testing.assert_close(pts[0, 0], (0.9 * votes[0, 0] + 0.6 * votes[0, 1]) / 1.5)
    # nothing above the threshold: fall back to the most probable cell
    low = torch.tensor([[0.1, 0.2], [0.4, 0.3]])[None, None]
    pts, conf = decode_cells(low, disp, cell, mode="threshold")
    torch.testing.assert_close(pts[0, 0], votes[1, 0])
    assert conf.item() == pytest.approx(0.4)
    pts, _ = decode_cells(torch.zeros_like(low), disp, cell)  # all-zero probabilities: no NaN
    assert torch.isfinite(pts).all()
    wild = disp.clone()
    wild[..., 1, 1] = 100.0  # 10**100 overflows float32; that cell has probability 0
    pts, _ = decode_cells(prob, wild, cell)
    torch.testing.assert_close(pts[0, 0], expected)
    with pytest.raises(ValueError, match="mode"):
        decode_cells(prob, disp, cell, mode="vote")
    with pytest.raises(ValueError, match="does not match"):
        decode_cells(prob, disp[:, :, :, :1], cell)


def test_array_transform_requires_divisible_shape():
    presence, disp, mask = CellTargets(cell_size=32)(np.array([[3.0, 4.0]]), (64, 96))
    assert presence.shape == (1, 2, 3) and disp.shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="DivisiblePadd"):
        CellTargets(cell_size=32)(np.array([[3.0, 4.0]]), (64, 100))


def _image_with_dots(shape: tuple[int, ...], pts: np.ndarray) -> MetaTensor:
    img = torch.zeros(1, *shape)
    for k, p in enumerate(pts):
        img[(0, *[int(v) for v in p])] = k + 1.0
    affine = torch.diag(torch.tensor([0.5, 0.7, 1.2, 1.0], dtype=torch.float64))  # anisotropic, shifted
    affine[0, 3], affine[1, 3] = 10.0, -4.0
    return MetaTensor(img, affine=affine, meta={"landmark_affine": affine.clone()})


@pytest.mark.parametrize("ndim", [2, 3])
def test_dict_transform_follows_spatial_transforms(ndim):
    """Bright voxels at the landmarks; flip/rotate/pad the image; targets must decode onto the voxels."""
    shape = (40, 30) if ndim == 2 else (20, 12, 14)
    cell = 8
    pts = np.array([[5.0, 7.0, 3.0], [33.0, 2.0, 9.0], [12.0, 25.0, 11.0]])[:, :ndim]
    pts = np.minimum(pts, np.array(shape) - 1).astype(np.float32)
    missing = np.full((1, ndim), np.nan, dtype=np.float32)
    data = {"image": _image_with_dots(shape, pts), "landmarks": np.concatenate([pts, missing])}
    pad_to = (64, 48) if ndim == 2 else (24, 24, 16)
    xform = Compose(
        [
            Flipd("image", spatial_axis=0),
            Rotate90d("image", k=1, spatial_axes=(0, 1)),
            SpatialPadd("image", spatial_size=pad_to, method="symmetric"),
            CellTargetsd("landmarks", ref_key="image", cell_size=cell),
        ]
    )
    out = xform(data)
    img = out["image"]
    grid = tuple(s // cell for s in img.shape[1:])
    assert out["presence"].shape == (4, *grid)
    assert out["displacement"].shape == (4, ndim, *grid)
    assert out["landmark_mask"].tolist() == [1, 1, 1, 0]
    found, _ = decode_cells(
        torch.as_tensor(out["presence"])[None], torch.as_tensor(out["displacement"])[None], cell, mode="weighted"
    )
    for k in range(3):
        where = torch.nonzero(img[0] == k + 1)[0].double()
        np.testing.assert_allclose(found[0, k].numpy(), where.numpy(), atol=1e-3)


def test_dict_transform_errors():
    image = MetaTensor(torch.zeros(1, 32, 64), meta={"landmark_affine": torch.eye(4, dtype=torch.float64)})
    out = CellTargetsd(cell_size=32, out_keys=("p", "d"), mask_key="m")({"image": image, "landmarks": [[3.0, 40.0]]})
    assert out["p"][0].tolist() == [[0, 1]] and out["m"].tolist() == [1]
    with pytest.raises(ValueError, match="landmark_affine"):  # the points' frame is unknown
        CellTargetsd(cell_size=32)({"image": torch.zeros(1, 32, 64), "landmarks": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        CellTargetsd(cell_size=32)({"image": image, "landmarks": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="DivisiblePadd"):
        CellTargetsd(cell_size=32)({"image": image[:, :, :40], "landmarks": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="one landmark key"):
        CellTargetsd(keys=["a", "b"])
    with pytest.raises(KeyError, match="reference image"):
        CellTargetsd(cell_size=32)({"landmarks": np.zeros((2, 2))})
