"""Grey conversion and the intensity augmentation preset (custom_monai.transforms.intensity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from custom_monai.transforms import (
    LANDMARK_AFFINE,
    EnsureGrey,
    EnsureGreyd,
    PrepareLandmarksd,
    ToGreyd,
    intensity_augmentations,
)


def _rgb(c: int) -> MetaTensor:
    rng = np.random.default_rng(c)
    img = MetaTensor(torch.from_numpy(rng.integers(0, 256, size=(c, 7, 5)).astype(np.uint8)))
    img.meta["filename_or_obj"] = f"img_{c}ch.png"
    return img


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_ensure_grey_channels(channels):
    img = _rgb(channels)
    d = PrepareLandmarksd()({"image": img, "landmarks": [[1.0, 2.0]]})
    out = EnsureGreyd("image")(d)["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and tuple(out.shape) == (1, 7, 5)
    assert LANDMARK_AFFINE in out.meta and torch.equal(out.affine, img.affine)
    src = img.as_tensor().double()
    if channels >= 3:  # BT.601 luma, alpha dropped
        expected = 0.299 * src[0] + 0.587 * src[1] + 0.114 * src[2]
    else:  # grey (+ alpha dropped)
        expected = src[0]
    np.testing.assert_allclose(out[0].numpy(), expected.numpy(), atol=1e-3)


def test_ensure_grey_numpy_and_errors():
    arr = np.stack([np.full((3, 3), 10.0), np.full((3, 3), 20.0), np.full((3, 3), 30.0)])
    out = EnsureGrey()(arr)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.299 * 10 + 0.587 * 20 + 0.114 * 30, rtol=1e-6)
    with pytest.raises(ValueError, match=r"img_5ch\.png.*5 channels"):
        EnsureGrey()(_rgb(5))
    with pytest.raises(ValueError, match="channel-first"):
        EnsureGrey()(np.zeros(4))
    assert ToGreyd is EnsureGreyd


def test_intensity_augmentations_change_values_not_geometry():
    img = MetaTensor(torch.linspace(0, 1, 32 * 24).reshape(1, 32, 24))
    d = PrepareLandmarksd()({"image": img, "landmarks": [[3.0, 4.0]]})
    ops = intensity_augmentations("image", prob=1.0)
    assert len(ops) == 5
    out = Compose(ops).set_random_state(0)(d)
    assert not torch.allclose(out["image"].as_tensor(), img.as_tensor())
    torch.testing.assert_close(out["image"].affine, img.affine)
    assert tuple(out["image"].shape) == (1, 32, 24)
    assert len(intensity_augmentations("image", scale=0, shift=0, noise_std=0, gamma=(1.0, 1.0), histogram_shift=False)) == 0
