"""Points follow a real cephalogram through every geometric transform (Hamedan image 001).

Each landmark gets its own blob channel (a copy of the downsampled image is channel 0); after a transform
the intensity centroid of a blob channel must sit where ``to_grid`` puts the landmark (< 0.5 px), and
``to_original`` must bring grid points back to the annotation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, LoadImage

from custom_monai.transforms import (
    LANDMARK_AFFINE,
    CropBoxd,
    CropTopRowsd,
    EnsureGreyd,
    PrepareLandmarksd,
    RandCropAroundLandmarkd,
    ResizeLongestPadd,
    gaussian_heatmaps,
    landmark_augmentations,
    to_grid,
    to_original,
)

pytestmark = pytest.mark.realdata

WORK_SIZE = (336, 420)  # about 1/4 of 1340 x 1671
BLOB_SIGMA = 1.2


def _read_labelme(path) -> list[list[float] | None]:
    shapes = json.loads(path.read_text())["shapes"]
    points: dict[int, list[float]] = {}
    for s in shapes:
        points[int(s["label"].lstrip("lL"))] = [float(v) for v in s["points"][0]]
    return [points.get(i) for i in range(1, 20)]


@pytest.fixture(scope="module")
def blob_sample(data_dir) -> dict:
    ceph = data_dir / "hamedan_ceph"
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(ceph / "images" / "001.png"))
    d = PrepareLandmarksd()({"image": img, "landmarks": _read_labelme(ceph / "annotations" / "farhadifar" / "001.json")})
    d = EnsureGreyd("image")(d)
    d = ResizeLongestPadd("image", WORK_SIZE)(d)
    small = d["image"]
    grid = to_grid(d["landmarks"], small)
    blobs = gaussian_heatmaps(grid, small.shape[1:], sigma=BLOB_SIGMA)
    picture = torch.maximum(small.as_tensor() / 255.0, blobs.sum(0, keepdim=True))  # the image with bright blobs
    d["image"] = MetaTensor(torch.cat([picture, blobs]), meta=dict(small.meta))
    return d


def _centroids(img: MetaTensor) -> np.ndarray:
    h = img.as_tensor()[1:].double()
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in h.shape[1:]], indexing="ij")
    mass = h.sum(dim=(1, 2)).clamp_min(1e-12)
    return torch.stack([(h * a).sum(dim=(1, 2)) / mass for a in axes], -1).numpy()


def _check(out: dict, before: dict, min_checked: int) -> None:
    img = out["image"]
    assert not torch.allclose(img.affine, before["image"].affine), "the transform did not change the geometry"
    grid = to_grid(out["landmarks"], img)
    size = np.asarray(img.shape[1:])
    inside = np.all((grid >= 5 * BLOB_SIGMA) & (grid <= size - 1 - 5 * BLOB_SIGMA), axis=1)
    assert inside.sum() >= min_checked
    err = np.linalg.norm(_centroids(img)[inside] - grid[inside], axis=1)
    assert err.max() < 0.5, f"blob centroid vs to_grid: max {err.max():.3f} px ({np.round(err, 3)})"
    lm = out["landmarks"]
    back = to_original(grid, img.affine, img.meta[LANDMARK_AFFINE])
    assert np.abs(back - lm).max() < 0.1
    # measured blob positions mapped back land on the annotation (grid error x pixel size of ~4 px)
    measured = to_original(_centroids(img)[inside], img.affine, img.meta[LANDMARK_AFFINE])
    assert np.linalg.norm(measured - lm[inside], axis=1).max() < 0.5 * 1340 / WORK_SIZE[0]


AUGMENT_KW = dict(spatial_size=WORK_SIZE, intensity=False, prob=1.0)
CASES = {
    "rand_affine": lambda: Compose(landmark_augmentations("image", rotate=15, scale=0.1, translate=0.05, **AUGMENT_KW)),
    "flip": lambda: Compose(landmark_augmentations("image", rotate=0, scale=0, translate=0, flip=True, **AUGMENT_KW)),
    "resize_pad": lambda: ResizeLongestPadd("image", (260, 260), pad_method="symmetric"),
    "crop_box": lambda: CropBoxd("image", roi_start=(20, 30), roi_end=(300, 400)),
    "crop_around_landmark": lambda: RandCropAroundLandmarkd("image", roi_size=96, max_offset=16),
    "chain": lambda: Compose(
        [
            CropTopRowsd("image", rows=20),
            ResizeLongestPadd("image", (256, 256)),
            *landmark_augmentations("image", rotate=15, scale=0.1, translate=0.05, flip=True, **{**AUGMENT_KW, "spatial_size": (256, 256)}),
            RandCropAroundLandmarkd("image", roi_size=128, max_offset=10),
        ]
    ),
}
MIN_CHECKED = {"crop_around_landmark": 1, "chain": 1}


@pytest.mark.parametrize("name", list(CASES))
def test_points_follow_real_image(blob_sample, name):
    for seed in (0, 1):
        t = CASES[name]()
        if hasattr(t, "set_random_state"):
            t.set_random_state(seed)
        out = t(dict(blob_sample))
        _check(out, blob_sample, MIN_CHECKED.get(name, 15))


def test_to_original_on_collated_batch(blob_sample):
    items = []
    for seed in (3, 4, 5):
        out = CASES["chain"]().set_random_state(seed)(dict(blob_sample))
        out["pred"] = to_grid(out["landmarks"], out["image"])  # a perfect "prediction" on the network grid
        items.append(out)
    batch = list_data_collate(items)
    back = to_original(batch["pred"], batch["image"].affine, batch["image"].meta[LANDMARK_AFFINE])
    assert tuple(back.shape) == (3, 19, 2)
    np.testing.assert_allclose(back.numpy(), batch["landmarks"].numpy(), atol=0.1)
    assert not torch.allclose(batch["image"].affine[0], batch["image"].affine[1])
