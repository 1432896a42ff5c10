"""Synthetic demo data: determinism, datalist format, structures at the landmarks, world coordinates,
the mean-position baseline, and the concurrency-safe cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from custom_monai.data import demo
from custom_monai.data.demo import demo_datalist, generate_demo_2d, generate_demo_3d

SECTIONS = ("training", "validation", "test")


def _tree_digest(root: Path) -> dict[str, str]:
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _load_png_wh(path: Path) -> np.ndarray:
    """A PNG as MONAI reads it: (W, H), indexed [x, y]."""
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(str(path)), dtype=np.float64)


def _local_std(img: np.ndarray, pts: np.ndarray, r: int = 4) -> np.ndarray:
    out = []
    for x, y in np.round(pts).astype(int):
        out.append(img[max(x - r, 0) : x + r + 1, max(y - r, 0) : y + r + 1].std())
    return np.asarray(out)


def _window_contrast(arr: np.ndarray, c: np.ndarray, half: np.ndarray, level: float) -> float:
    lo, hi = np.maximum(c - half, 0), c + half + 1
    return float(np.abs(arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] - level).mean())


def _itk_cindex(values) -> object:
    import itk

    ci = itk.ContinuousIndex[itk.D, 3]()
    for a, c in enumerate(values):
        ci.SetElement(a, float(c))
    return ci


@pytest.fixture(scope="module")
def demo2d(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo2d")
    t0 = time.perf_counter()
    path = generate_demo_2d(out)
    print(f"\n2D demo set (48/12/12 images, 320x384) generated in {time.perf_counter() - t0:.2f} s")
    return path


# ------------------------------------------------------------------------------------------------ 2D


def test_2d_deterministic(tmp_path):
    a = generate_demo_2d(tmp_path / "a", n_train=3, n_val=1, n_test=1)
    b = generate_demo_2d(tmp_path / "b", n_train=3, n_val=1, n_test=1)
    c = generate_demo_2d(tmp_path / "c", n_train=3, n_val=1, n_test=1, seed=1)
    da, db, dc = _tree_digest(a.parent), _tree_digest(b.parent), _tree_digest(c.parent)
    assert len(da) == 6 and da == db
    assert da.keys() == dc.keys()
    assert all(da[k] != dc[k] for k in da)  # another seed changes every image and the datalist
    # case i of a split does not depend on how many cases the other splits have
    d = generate_demo_2d(tmp_path / "d", n_train=1, n_val=0, n_test=2)
    dd = _tree_digest(d.parent)
    assert dd["images/train_000.png"] == da["images/train_000.png"]
    assert dd["images/test_000.png"] == da["images/test_000.png"]


def test_2d_datalist_format(demo2d):
    from PIL import Image

    dl = json.loads(demo2d.read_text())
    assert set(dl) == {"landmark_names", "coordinate_space", *SECTIONS}
    assert dl["landmark_names"] == [f"L{i}" for i in range(1, 20)]
    assert dl["coordinate_space"] == "pixel"
    assert [len(dl[s]) for s in SECTIONS] == [48, 12, 12]
    images = [it["image"] for s in SECTIONS for it in dl[s]]
    assert len(set(images)) == len(images)
    for s in SECTIONS:
        for it in dl[s]:
            assert set(it) == {"image", "landmarks", "spacing"}
            assert not Path(it["image"]).is_absolute()
            with Image.open(demo2d.parent / it["image"]) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (320, 384)
            pts = np.asarray(it["landmarks"], dtype=float)
            assert pts.shape == (19, 2) and np.isfinite(pts).all()
            assert (pts >= 5).all() and (pts[:, 0] <= 319 - 5).all() and (pts[:, 1] <= 383 - 5).all()
            assert it["spacing"] == [0.5, 0.5]


def test_2d_structures_at_landmarks(demo2d):
    """Through MONAI's loader ([x, y] indexing) the landmarks sit on local structure, random points
    and transposed coordinates do not."""
    dl = json.loads(demo2d.read_text())
    rng = np.random.default_rng(0)
    at_lm, at_rand, swapped = [], [], []
    for it in dl["validation"]:
        img = _load_png_wh(demo2d.parent / it["image"])
        assert img.shape == (320, 384)
        pts = np.asarray(it["landmarks"])
        at_lm.append(_local_std(img, pts))
        at_rand.append(_local_std(img, rng.uniform([10, 10], [310, 374], size=(200, 2))))
        sw = pts[:, ::-1]
        sw = sw[(sw[:, 0] < 315) & (sw[:, 1] < 379)]
        swapped.append(_local_std(img, sw))
    lm, rand, sw = (float(np.mean(np.concatenate(v))) for v in (at_lm, at_rand, swapped))
    print(f"\nmean local std (9x9): landmarks {lm:.1f}, random points {rand:.1f}, transposed landmarks {sw:.1f}")
    assert lm > 2.5 * rand
    assert lm > 2.5 * sw
    # every landmark, not only on average, carries structure in most images
    per_lm = np.stack(at_lm).mean(0)
    assert (per_lm > 1.5 * rand).all(), per_lm


def test_2d_marks_centred_on_landmarks(demo2d):
    """Symmetric marks (isolated by subtracting a median filter, which keeps edges) are centred on
    the written coordinates: no half-pixel shift and no x/y swap."""
    from scipy.ndimage import median_filter

    dl = json.loads(demo2d.read_text())
    symmetric = [k for k, (name, _) in enumerate(demo._CEPH_MARKS) if name in {"disk", "ring", "square", "diamond"}]
    assert len(symmetric) >= 5
    offsets = []
    for it in dl["test"][:6]:
        img = _load_png_wh(demo2d.parent / it["image"])
        for k in symmetric:
            x, y = it["landmarks"][k]
            cx, cy, r, m = int(round(x)), int(round(y)), 5, 13
            crop = img[cx - m : cx + m + 1, cy - m : cy + m + 1]
            res = np.abs(crop - median_filter(crop, size=15))[m - r : m + r + 1, m - r : m + r + 1]
            gx, gy = np.mgrid[cx - r : cx + r + 1, cy - r : cy + r + 1]
            wgt = res * ((gx - x) ** 2 + (gy - y) ** 2 <= r * r)
            offsets.append(((wgt * gx).sum() / wgt.sum() - x, (wgt * gy).sum() / wgt.sum() - y))
    offsets = np.asarray(offsets)
    mean, med = offsets.mean(0), np.median(np.hypot(*offsets.T))
    print(f"\nmark centroid - landmark: mean {np.round(mean, 3)} px, median radial {med:.3f} px")
    assert np.abs(mean).max() < 0.25
    assert med < 0.5


def test_2d_landmarks_distinguishable(demo2d):
    """A nearest-mean-patch classifier trained on the training images tells the 19 landmarks apart
    on validation images from their local appearance alone."""
    dl = json.loads(demo2d.read_text())
    r = 6

    def patches(items):
        out = []
        for it in items:
            img = _load_png_wh(demo2d.parent / it["image"])
            ps = []
            for x, y in np.round(np.asarray(it["landmarks"])).astype(int):
                p = img[x - r : x + r + 1, y - r : y + r + 1].ravel()
                p = p - p.mean()
                ps.append(p / (np.linalg.norm(p) + 1e-6))
            out.append(ps)
        return np.asarray(out)  # (images, 19, (2r+1)^2)

    train, val = patches(dl["training"]), patches(dl["validation"])
    centroids = train.mean(0)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    pred = np.argmax(val @ centroids.T, axis=-1)
    acc = float((pred == np.arange(19)).mean())
    print(f"\nlandmark identity from a {2 * r + 1}x{2 * r + 1} patch: accuracy {acc:.3f} (chance {1 / 19:.3f})")
    assert acc > 0.9


def test_2d_mean_position_baseline(demo2d):
    """Predicting the training-set mean landmark is poor, so learning can be demonstrated."""
    dl = json.loads(demo2d.read_text())
    train = np.asarray([it["landmarks"] for it in dl["training"]], dtype=float)
    val = np.asarray([it["landmarks"] for it in dl["validation"]], dtype=float)
    spacing = np.asarray(dl["validation"][0]["spacing"])
    err_px = np.linalg.norm(val - train.mean(0), axis=-1)
    err_mm = np.linalg.norm((val - train.mean(0)) * spacing, axis=-1)
    print(
        f"\nmean-position baseline on validation: MRE {err_px.mean():.2f} px = {err_mm.mean():.2f} mm, "
        f"per landmark {np.round(err_px.mean(0), 1).tolist()}"
    )
    assert err_px.mean() > 10.0
    assert err_px.mean(0).min() > 4.0
    assert (train.std(0) > 3.0).all()  # every landmark moves between images


# ------------------------------------------------------------------------------------------------ 3D


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"oblique": True, "size": (48, 56, 40), "spacing": (1.5, 1.2, 2.0), "n_landmarks": 9},
    ],
    ids=["axis_aligned", "oblique_anisotropic"],
)
def test_3d_world_coordinates(tmp_path, kwargs):
    """Written LPS world points are where the structures are, checked with ITK, nibabel and MONAI."""
    import itk
    import nibabel as nib
    from monai.transforms import LoadImage

    path = generate_demo_3d(tmp_path, n_train=2, n_val=1, n_test=1, **kwargs)
    dl = json.loads(path.read_text())
    n_lm = kwargs.get("n_landmarks", 6)
    size = kwargs.get("size", (64, 64, 64))
    spacing = np.asarray(kwargs.get("spacing", (1.5, 1.5, 1.5)))
    assert set(dl) == {"landmark_names", "coordinate_space", *SECTIONS}
    assert dl["coordinate_space"] == "world"
    assert dl["landmark_names"] == [f"L{i}" for i in range(1, n_lm + 1)]
    assert [len(dl[s]) for s in SECTIONS] == [2, 1, 1]

    symmetric = {"sphere", "shell", "cross", "cube", "dark_sphere", "disk", "torus"}
    loader = LoadImage(image_only=True)
    centroid_err, contrast_lm, contrast_rand = [], [], []
    rng = np.random.default_rng(0)
    for it in (it for s in SECTIONS for it in dl[s]):
        f = str(path.parent / it["image"])
        pts = np.asarray(it["landmarks"], dtype=float)
        assert pts.shape == (n_lm, 3) and it["spacing"] == pytest.approx(list(spacing))
        image = itk.imread(f)
        arr = itk.array_from_image(image).transpose(2, 1, 0).astype(float)  # -> [i, j, k]
        assert arr.shape == tuple(size)
        assert np.allclose(image.GetSpacing(), spacing)
        direction = itk.array_from_matrix(image.GetDirection())
        assert np.allclose(direction, np.eye(3)) != kwargs.get("oblique", False)
        assert np.abs(np.asarray(image.GetOrigin())).max() > 1.0  # a non-trivial origin

        # nibabel's RAS affine = ITK's LPS geometry with x and y negated
        aff_ras = nib.load(f).affine
        aff_lps = np.eye(4)
        aff_lps[:3, :3] = direction * spacing
        aff_lps[:3, 3] = np.asarray(image.GetOrigin())
        assert np.allclose(np.diag([-1, -1, 1, 1]) @ aff_lps, aff_ras, atol=1e-4)

        # MONAI: RAS affine in the meta data, array indexed [i, j, k] like ITK
        mt = loader(f)
        assert tuple(mt.shape) == tuple(size)
        ras = np.c_[pts * [-1, -1, 1], np.ones(len(pts))]
        idx_monai = (np.linalg.inv(np.asarray(mt.affine, dtype=float)) @ ras.T).T[:, :3]

        body = np.median(arr[arr > -500])
        radius = demo._vol_mark_radius(size, spacing)
        reach = np.ceil(1.4 * radius / spacing).astype(int) + 1
        half_win = np.ceil(0.6 * radius / spacing).astype(int)
        for j, p in enumerate(pts):
            ci = np.asarray(image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]))
            assert np.allclose(ci, idx_monai[j], atol=1e-3)
            assert (ci > 2).all() and (ci < np.asarray(size) - 3).all()
            nearest = np.round(ci).astype(int)
            back = np.asarray(image.TransformIndexToPhysicalPoint([int(c) for c in nearest]))
            assert np.linalg.norm(back - p) <= 0.5 * np.linalg.norm(spacing) + 1e-6
            contrast_lm.append(_window_contrast(arr, nearest, half_win, body))
            name = demo._MARKS_3D[j % len(demo._MARKS_3D)][0]
            if name in symmetric:
                # centroid of the structure (|value - soft tissue| above noise, within 1.4 radii) -> physical point
                lo, hi = nearest - reach, nearest + reach + 1
                win = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
                grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
                near = np.linalg.norm((grid - ci) * spacing, axis=-1) < 1.4 * radius
                wgt = np.abs(win - body) * (np.abs(win - body) > 150) * near
                c_idx = (wgt[..., None] * grid).sum((0, 1, 2)) / wgt.sum()
                c_world = np.asarray(image.TransformContinuousIndexToPhysicalPoint(_itk_cindex(c_idx)))
                centroid_err.append(np.linalg.norm(c_world - p))
        # random points in the ball that holds the landmarks, away from every landmark structure
        idx = np.asarray([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in pts])
        centre, ball = idx.mean(0), np.linalg.norm((idx - idx.mean(0)) * spacing, axis=1).max()
        accepted = 0
        for _ in range(2000):
            d = rng.normal(size=3)
            q = centre + d / np.linalg.norm(d) * ball * rng.uniform() ** (1 / 3) / spacing
            if np.linalg.norm((idx - q) * spacing, axis=1).min() > 2.4 * radius:
                contrast_rand.append(_window_contrast(arr, np.round(q).astype(int), half_win, body))
                accepted += 1
                if accepted == 20:
                    break
    centroid_err = np.asarray(centroid_err)
    print(
        f"\n3D {kwargs or 'default'}: structure centroid vs world point max {centroid_err.max():.3f} mm "
        f"(median {np.median(centroid_err):.3f}); mean |v - tissue| landmarks {np.mean(contrast_lm):.0f} HU, "
        f"random body points {np.mean(contrast_rand):.0f} HU"
    )
    assert len(centroid_err) >= 4 * 5 and len(contrast_rand) >= 20
    assert centroid_err.max() < 0.5 * spacing.min()
    assert np.min(contrast_lm) > 2 * np.median(contrast_rand)


def test_3d_deterministic(tmp_path):
    a = generate_demo_3d(tmp_path / "a", n_train=2, n_val=1, n_test=0, oblique=True)
    b = generate_demo_3d(tmp_path / "b", n_train=2, n_val=1, n_test=0, oblique=True)
    c = generate_demo_3d(tmp_path / "c", n_train=2, n_val=1, n_test=0, oblique=True, seed=5)
    da, db, dc = _tree_digest(a.parent), _tree_digest(b.parent), _tree_digest(c.parent)
    assert len(da) == 4 and da == db
    assert all(da[k] != dc[k] for k in da)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_val"):
        generate_demo_2d(tmp_path, n_val=-1)
    with pytest.raises(ValueError, match="size"):
        generate_demo_2d(tmp_path, size=(32, 400))
    with pytest.raises(ValueError, match="spacing"):
        generate_demo_2d(tmp_path, spacing=(0.5,))
    with pytest.raises(ValueError, match="n_landmarks"):
        generate_demo_3d(tmp_path, n_landmarks=0)
    with pytest.raises(ValueError, match="size"):
        generate_demo_3d(tmp_path, size=(64, 64))
    with pytest.raises(ValueError, match="kind"):
        demo_datalist("4d", root=tmp_path)


# ------------------------------------------------------------------------------------------- cache


def test_demo_datalist_cache(tmp_path, monkeypatch, demo2d):
    monkeypatch.setenv("CUSTOM_MONAI_CACHE", str(tmp_path / "env_cache"))
    path = Path(demo_datalist("2d"))
    assert path == tmp_path / "env_cache" / f"demo_2d_v{demo.DEMO_VERSION}" / "datalist.json"
    # the default set is exactly generate_demo_2d's output
    assert _tree_digest(path.parent) == _tree_digest(demo2d.parent)
    mtime = path.stat().st_mtime_ns
    assert Path(demo_datalist("2d")) == path and path.stat().st_mtime_ns == mtime  # reused, not rewritten
    # an explicit root wins over the environment, and an existing dataset there is used as it is
    existing = tmp_path / "explicit" / f"demo_2d_v{demo.DEMO_VERSION}" / "datalist.json"
    existing.parent.mkdir(parents=True)
    existing.write_text("{}")
    assert Path(demo_datalist("2d", root=tmp_path / "explicit")) == existing
    assert existing.read_text() == "{}"
    # a folder without a datalist is reported, not silently reused
    (tmp_path / "broken" / f"demo_2d_v{demo.DEMO_VERSION}").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no datalist.json"):
        demo_datalist("2d", root=tmp_path / "broken")


def test_demo_datalist_3d(tmp_path):
    path = Path(demo_datalist("3d", root=tmp_path))
    dl = json.loads(path.read_text())
    assert dl["coordinate_space"] == "world" and len(dl["landmark_names"]) == 6
    assert [len(dl[s]) for s in SECTIONS] == [16, 4, 4]
    assert all((path.parent / it["image"]).is_file() for s in SECTIONS for it in dl[s])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"demo_3d_v{demo.DEMO_VERSION}"]


def test_demo_datalist_concurrent(tmp_path, demo2d):
    """Two processes asking for the demo data at once get one complete, correct dataset."""
    root = tmp_path / "cache"
    # demo.py is loaded on its own (it needs numpy/scipy/PIL/matplotlib only), so the two processes
    # do not spend their time importing monai; both start generating once both are ready.
    script = (
        "import importlib.util, pathlib, sys, time\n"
        "spec = importlib.util.spec_from_file_location('demo_standalone', sys.argv[1])\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "import scipy.ndimage, matplotlib.path, PIL.Image\n"
        "tmp = pathlib.Path(sys.argv[2])\n"
        "(tmp / ('ready_' + sys.argv[4])).touch()\n"
        "while not (tmp / 'go').exists(): time.sleep(0.005)\n"
        "print(mod.demo_datalist('2d', root=sys.argv[3]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUSTOM_MONAI_CACHE"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, demo.__file__, str(tmp_path), str(root), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready_{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.005)
    (tmp_path / "go").touch()  # both start generating at (almost) the same moment
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in results}
    assert paths == {str(root / f"demo_2d_v{demo.DEMO_VERSION}" / "datalist.json")}
    assert sorted(p.name for p in root.iterdir()) == [f"demo_2d_v{demo.DEMO_VERSION}"]  # no temp folders left
    assert _tree_digest(root / f"demo_2d_v{demo.DEMO_VERSION}") == _tree_digest(demo2d.parent)
