"""Deterministic synthetic landmark data: 2D cephalogram-like radiographs and 3D volumes.

The demo data lets every bundle command run on a fresh machine and lets tests check that a method
really learns: the landmarks move with a random pose and shape, so predicting the mean position is
poor, while every landmark sits on a local image structure (anatomy-like edges and corners plus a
small mark whose shape differs per landmark), so a detector can find it to sub-pixel accuracy.

Nothing but those structures tells where a landmark is: there are no coordinates, colour codes or
pixel patterns beyond them. Generation is vectorised numpy (a second or so for the default 2D set)
and deterministic: the same arguments give byte-identical files.

Datalists follow ``DESIGN.md``: ``{"landmark_names", "coordinate_space", "training", "validation",
"test"}``; 2D items hold pixel coordinates ``[x, y]`` (x = column, y = row) of the PNG, 3D items
hold ITK/LPS world millimetres ``[x, y, z]`` of the NIfTI volume (as ITK and 3D Slicer report them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CEPH_LANDMARK_NAMES",
    "CEPH_ANATOMY",
    "DEMO_VERSION",
    "generate_demo_2d",
    "generate_demo_3d",
    "demo_datalist",
    "demo_cache_dir",
]

#: bump when the generated content changes, so cached copies are regenerated under a new folder
DEMO_VERSION = 1

CEPH_LANDMARK_NAMES: tuple[str, ...] = tuple(f"L{i}" for i in range(1, 20))
#: the ISBI 2015 meaning of L1..L19, which the synthetic anatomy imitates
CEPH_ANATOMY: tuple[str, ...] = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale (A)",
    "supramentale (B)",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower incisal incision",
    "upper incisal incision",
    "upper lip",
    "lower lip",
    "subnasale",
    "soft-tissue pogonion",
    "posterior nasal spine",
    "anterior nasal spine",
    "articulare",
)

_SPLITS = (("training", "train"), ("validation", "val"), ("test", "test"))

# Mean-shape template in "template pixels" for a 320 x 384 (W x H) canvas, face to the right, y down.
# Derived from the mean of real lateral cephalograms, with the incisors and chin points spread a
# little so that every mark stays separate.
_CEPH_TEMPLATE = np.array(
    [
        [-65.0, -94.0],  # L1 sella
        [67.0, -114.0],  # L2 nasion
        [41.0, -57.0],  # L3 orbitale
        [-101.0, -50.0],  # L4 porion
        [66.0, -1.0],  # L5 A point
        [55.0, 78.0],  # L6 B point
        [58.0, 100.0],  # L7 pogonion
        [38.0, 117.0],  # L8 menton
        [52.0, 113.0],  # L9 gnathion
        [-75.0, 52.0],  # L10 gonion
        [66.0, 36.0],  # L11 lower incisal incision
        [76.0, 44.0],  # L12 upper incisal incision
        [101.0, 25.0],  # L13 upper lip
        [94.0, 58.0],  # L14 lower lip
        [98.0, -3.0],  # L15 subnasale
        [81.0, 100.0],  # L16 soft-tissue pogonion
        [-25.0, -12.0],  # L17 posterior nasal spine
        [78.0, -12.0],  # L18 anterior nasal spine
        [-92.0, -33.0],  # L19 articulare
    ]
)
_CEPH_CANVAS = (320.0, 384.0)
# landmarks carried by the mandible (B, Pog, Me, Gn, Go, lower incisor, lower lip, soft Pog)
_MANDIBLE = np.array([5, 6, 7, 8, 9, 10, 13, 15])
_AR = 18

MaskFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _rho(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v)


def _diag(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (u + v) * 0.70710678, (u - v) * 0.70710678


# Small 2D marks, one shape per landmark; (u, v) are template-pixel offsets from the landmark,
# r the mark radius. The landmark is the centre of the symmetric shapes, the corner of "corner",
# the vertex of "chevron", the junction of "tee".
_MARKS_2D: dict[str, MaskFn] = {
    "disk": lambda u, v, r: _rho(u, v) < 0.8 * r,
    "ring": lambda u, v, r: (_rho(u, v) > 0.55 * r) & (_rho(u, v) < r),
    "bullseye": lambda u, v, r: (_rho(u, v) < 0.35 * r) | ((_rho(u, v) > 0.7 * r) & (_rho(u, v) < 1.05 * r)),
    "plus": lambda u, v, r: ((np.abs(u) < 0.28 * r) & (np.abs(v) < r))
    | ((np.abs(v) < 0.28 * r) & (np.abs(u) < r)),
    "cross": lambda u, v, r: _MARKS_2D["plus"](*_diag(u, v), r),
    "square": lambda u, v, r: np.maximum(np.abs(u), np.abs(v)) < 0.7 * r,
    "hollow_square": lambda u, v, r: (np.maximum(np.abs(u), np.abs(v)) > 0.45 * r)
    & (np.maximum(np.abs(u), np.abs(v)) < 0.85 * r),
    "triangle": lambda u, v, r: (v < 0.5 * r) & (v > 2.0 * np.abs(u) - r),
    "diamond": lambda u, v, r: np.abs(u) + np.abs(v) < 0.9 * r,
    "corner": lambda u, v, r: ((u > -0.25 * r) & (u < 1.2 * r) & (np.abs(v) < 0.25 * r))
    | ((v > -0.25 * r) & (v < 1.2 * r) & (np.abs(u) < 0.25 * r)),
    "hbar": lambda u, v, r: (np.abs(u) < 1.1 * r) & (np.abs(v) < 0.25 * r),
    "vbar": lambda u, v, r: (np.abs(v) < 1.1 * r) & (np.abs(u) < 0.25 * r),
    "tee": lambda u, v, r: ((np.abs(u) < r) & (np.abs(v) < 0.25 * r))
    | ((v > 0) & (v < 1.1 * r) & (np.abs(u) < 0.25 * r)),
    "half_disk": lambda u, v, r: (_rho(u, v) < 0.9 * r) & (v < 0.1 * r),
    "two_dots": lambda u, v, r: (_rho(np.abs(u) - 0.55 * r, v) < 0.38 * r),
    "chevron": lambda u, v, r: (np.abs(np.abs(v) + u) < 0.25 * r) & (u > -r) & (u < 0.25 * r),
    "hourglass": lambda u, v, r: (np.abs(u) <= np.abs(v) + 0.1 * r) & (np.abs(v) < 0.9 * r),
}

# (mark, polarity) for L1..L19; dark marks on bright structures, bright ones elsewhere
_CEPH_MARKS: tuple[tuple[str, float], ...] = (
    ("bullseye", 1.0),  # L1 sella, in the sella cup
    ("chevron", 1.0),  # L2 nasion
    ("disk", -1.0),  # L3 orbitale, bottom of the orbit ring
    ("ring", 1.0),  # L4 porion, top of the ear rod
    ("plus", 1.0),  # L5 A point
    ("cross", 1.0),  # L6 B point
    ("square", 1.0),  # L7 pogonion
    ("triangle", 1.0),  # L8 menton
    ("diamond", -1.0),  # L9 gnathion
    ("corner", 1.0),  # L10 gonion
    ("hbar", 1.0),  # L11 lower incisor tip
    ("vbar", -1.0),  # L12 upper incisor tip
    ("tee", 1.0),  # L13 upper lip
    ("half_disk", 1.0),  # L14 lower lip
    ("two_dots", 1.0),  # L15 subnasale
    ("hollow_square", 1.0),  # L16 soft-tissue pogonion
    ("disk", 1.0),  # L17 PNS
    ("ring", -1.0),  # L18 ANS
    ("hourglass", 1.0),  # L19 articulare
)

# sub-pixel sample offsets used to anti-alias the marks (4 x 4 per pixel, 2 x 2 x 2 per voxel)
_SS2 = np.array([-0.375, -0.125, 0.125, 0.375])
_SS3 = np.array([-0.25, 0.25])


def _rot2(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _rot3(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], n_terms: int = 4) -> np.ndarray:
    """Low-frequency random field in about [-1, 1]: a sum of separable cosines (<= 1.5 cycles per axis)."""
    out = np.zeros(shape, dtype=np.float32)
    for _ in range(n_terms):
        term = np.float32(rng.uniform(-1.0, 1.0) / np.sqrt(n_terms))
        for d, n in enumerate(shape):
            axis = np.cos(2 * np.pi * rng.uniform(0.2, 1.5) * np.arange(n) / n + rng.uniform(0, 2 * np.pi))
            term = term * axis.astype(np.float32).reshape([-1 if i == d else 1 for i in range(len(shape))])
        out += term
    return out


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")


# ----------------------------------------------------------------------------------------------- 2D


def _capsule(p0: Sequence[float], p1: Sequence[float], half_width: float) -> Callable:
    """Mask of the points within ``half_width`` of the segment p0-p1 (a rounded bar)."""
    p0, d = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float) - np.asarray(p0, dtype=float)
    dd = max(float(d @ d), 1e-12)

    def fn(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        t = np.clip(((u - p0[0]) * d[0] + (v - p0[1]) * d[1]) / dd, 0.0, 1.0)
        return np.hypot(u - p0[0] - t * d[0], v - p0[1] - t * d[1]) < half_width

    return fn


def _polygon(vertices: Sequence) -> Callable:
    """Mask of the points inside a closed polygon."""
    from matplotlib.path import Path as MplPath

    path = MplPath(np.asarray(vertices, dtype=float))

    def fn(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return path.contains_points(np.stack([u.ravel(), v.ravel()], axis=1)).reshape(u.shape)

    return fn


class _Canvas2D:
    """A float image (H, W) drawn in template coordinates ``q``, pose ``x = origin + scale * R q``.

    Every primitive is evaluated only in the image window that covers it, so drawing costs in
    proportion to the drawn area.
    """

    def __init__(self, size: tuple[int, int], origin: np.ndarray, rot: np.ndarray, scale: float) -> None:
        self.w, self.h = size
        self.origin = np.asarray(origin, dtype=float)
        self.rot = np.asarray(rot, dtype=float)
        self.scale = float(scale)
        self.img = np.zeros((self.h, self.w), dtype=np.float32)

    def to_image(self, q: np.ndarray) -> np.ndarray:
        return self.origin + self.scale * np.asarray(q, dtype=float) @ self.rot.T

    def draw(
        self, value: float, mask: Callable, extent: Sequence, pad: float = 0.0, supersample: bool = False
    ) -> None:
        """Add ``value * mask(u, v)`` over the window of the template points ``extent`` (+- ``pad``)."""
        pts = self.to_image(np.clip(np.atleast_2d(np.asarray(extent, dtype=float)), -1e4, 1e4))
        r = pad * self.scale + 1.0
        x0, y0 = np.maximum(np.floor(pts.min(0) - r), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(pts.max(0) + r) + 1, (self.w, self.h)).astype(int)
        if x1 <= x0 or y1 <= y0:
            return
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        if supersample:  # 4 x 4 samples per pixel, averaged: anti-aliased edges for the small marks
            ys = ys[..., None, None] + _SS2.astype(np.float32)[:, None]
            xs = xs[..., None, None] + _SS2.astype(np.float32)[None, :]
        dx, dy = xs - np.float32(self.origin[0]), ys - np.float32(self.origin[1])
        (r00, r01), (r10, r11) = (self.rot / self.scale).astype(np.float32)
        u, v = r00 * dx + r10 * dy, r01 * dx + r11 * dy  # q = R^T (x - origin) / scale
        m = mask(u, v)
        m = m.mean(axis=(-2, -1)) if supersample else m
        self.img[y0:y1, x0:x1] += np.float32(value) * m


def _ceph_anatomy(canvas: _Canvas2D, p: np.ndarray) -> None:
    """Draw skull-like intensities (before contrast) for the landmarks ``p`` (template coordinates).

    The bone and soft-tissue outlines pass through or wrap around the landmarks, so that the local
    anatomy (edges, corners, the sella cup, orbit and ear-rod rings, teeth) follows each case's shape.
    """
    S, N, Or, Po, A, B, Pog, Me, Gn, Go, LI, UI, UL, LL, Sn, sPog, PNS, ANS, Ar = p
    far = 1e4

    # soft tissue: everything behind the facial profile, which runs through Sn, lips and soft pogonion
    stomion = (UL + LL) / 2 + (-7.0, 0.0)
    profile = [
        (-far, -far),
        (N[0] - 4, -far),
        (N[0] - 6, N[1] - 70),
        (N[0] + 8, N[1] + 4),
        (Sn[0] + 8, Sn[1] - 32),
        (Sn[0] + 17, Sn[1] - 11),
        (Sn[0] + 8, Sn[1] - 2),
        Sn,
        UL,
        stomion,
        LL,
        (B[0] + 16, B[1]),
        sPog,
        (Me[0] + 8, Me[1] + 12),
        (Me[0] - 30, Me[1] + 24),
        (Me[0] - 42, far),
        (-far, far),
    ]
    canvas.draw(0.22, _polygon(profile), profile)

    # cranial vault: an elliptic bone band whose front passes through nasion, brain case inside
    c = np.array([S[0] + 5.0, S[1] + 15.0])
    b = 85.0
    a = (N[0] + 2.0 - c[0]) / np.sqrt(max(1.0 - ((N[1] - c[1]) / b) ** 2, 0.1))
    low = S[1] + 8.0

    def vault(u, v):
        q = np.hypot((u - c[0]) / a, (v - c[1]) / b)
        return ((q < 1.0) & (v < low)) * (0.06 + 0.32 * (q > 1.0 - 7.0 / b))

    canvas.draw(1.0, vault, [(c[0] - a, c[1] - b), (c[0] + a, low)])
    # anterior cranial base plate from behind sella to nasion
    p0, p1 = S + (-10.0, 10.0), N + (-6.0, 8.0)
    canvas.draw(0.12, _capsule(p0, p1, 3.0), [p0, p1], pad=3.0)

    # sella turcica: a cup (lower half ring) around S
    def cup(u, v):
        rs = np.hypot(u - S[0], v - S[1])
        return (rs > 7.0) & (rs < 10.5) & (v > S[1] - 3.0)

    canvas.draw(0.3, cup, [S], pad=11.0)
    # orbit rim with orbitale at its lowest point, ear rod ring with porion on top
    for value, centre, rad, half in ((0.2, Or + (0.0, -12.0), 12.0, 1.6), (0.35, Po + (0.0, 7.0), 7.0, 2.0)):
        canvas.draw(
            value,
            lambda u, v, centre=centre, rad=rad, half=half: np.abs(np.hypot(u - centre[0], v - centre[1]) - rad) < half,
            [centre],
            pad=rad + half,
        )

    # maxilla: hard palate PNS-ANS and the alveolar process down to the upper incisor
    canvas.draw(0.25, _capsule(PNS, ANS, 3.5), [PNS, ANS], pad=3.5)
    alveolus = [ANS + (-10.0, 2.0), A, UI + (-6.0, -10.0), UI + (-12.0, -8.0), A + (-16.0, 10.0)]
    canvas.draw(0.25, _polygon(alveolus), alveolus)
    # incisors: long bright teeth ending exactly at the incisal points
    for tip, root in ((UI, UI + (-9.0, -26.0)), (LI, LI + (-11.0, 24.0))):
        start = tip + 3.0 * (root - tip) / np.linalg.norm(root - tip)
        canvas.draw(0.3, _capsule(start, root, 3.0), [start, root], pad=3.0)

    # mandible: posterior ramus border Ar-Go, lower border Go-Me, symphysis Me-Gn-Pog-B
    mandible = [
        Ar,
        Go,
        Me,
        Gn,
        Pog,
        B,
        LI + (-6.0, 12.0),
        B + (-14.0, 0.0),
        Me + (-8.0, -13.0),
        Go + (17.0, -14.0),
        Ar + (17.0, 2.0),
        Ar + (12.0, -8.0),
    ]
    canvas.draw(0.3, _polygon(mandible), mandible)
    # cervical vertebrae behind the mandible
    for k in range(3):
        c0 = Go + (-6.0, 24.0 + 24.0 * k)
        canvas.draw(0.18, lambda u, v, c0=c0: (np.abs(u - c0[0]) < 10.0) & (np.abs(v - c0[1]) < 8.0), [c0], pad=10.0)


def _ceph_case(rng: np.random.Generator, size: tuple[int, int], margin: float) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic cephalogram: uint8 array (H, W) and landmarks (19, 2) as (x, y) pixels."""
    from scipy.ndimage import gaussian_filter

    w, h = size
    k = min(w / _CEPH_CANVAS[0], h / _CEPH_CANVAS[1])

    # shape: mandible rotation about articulare, anisotropic face scale, per-landmark jitter
    p = _CEPH_TEMPLATE.copy()
    phi = np.deg2rad(rng.uniform(-1.5, 4.5))
    p[_MANDIBLE] = (p[_MANDIBLE] - p[_AR]) @ _rot2(phi).T + p[_AR]
    p *= rng.uniform(0.95, 1.05, size=2)
    p += np.clip(rng.normal(0.0, 1.5, size=p.shape), -4.0, 4.0)

    # pose: rotation +-10 deg, scale +-10 %, translation +-5 % of the image; redrawn until all fit
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    for _ in range(100):
        rot = _rot2(np.deg2rad(rng.uniform(-10.0, 10.0)))
        scale = k * rng.uniform(0.9, 1.1)
        origin = centre + rng.uniform(-0.05, 0.05, size=2) * np.array([w, h])
        pts = origin + scale * p @ rot.T
        if np.all(pts >= margin) and np.all(pts <= np.array([w - 1, h - 1]) - margin):
            break
    else:
        raise ValueError(f"image size {size} is too small to hold the 19 landmarks with a {margin} px margin")

    canvas = _Canvas2D((w, h), origin, rot, scale)
    _ceph_anatomy(canvas, p)
    # distinct marks at the landmarks, anti-aliased by supersampling
    radius = 4.0
    mark_gain = 0.4 * rng.uniform(0.75, 1.25)
    for j, (name, polarity) in enumerate(_CEPH_MARKS):
        fn = _MARKS_2D[name]
        canvas.draw(
            polarity * mark_gain * rng.uniform(0.8, 1.2),
            lambda u, v, j=j, fn=fn: fn(u - np.float32(p[j, 0]), v - np.float32(p[j, 1]), radius),
            [p[j]],
            pad=1.3 * radius,
            supersample=True,
        )

    # acquisition: slight blur, smooth background gradient and texture, contrast curve, noise
    img = gaussian_filter(canvas.img, sigma=0.6)
    g = rng.normal(size=2)
    g /= np.linalg.norm(g)
    ramp_x = (0.07 * g[0] * (np.arange(w) / w - 0.5)).astype(np.float32)
    ramp_y = (0.07 * g[1] * (np.arange(h) / h - 0.5) + 0.08).astype(np.float32)
    img += ramp_y[:, None] + ramp_x[None, :] + 0.035 * _smooth_field(rng, (h, w))
    img = np.clip(img, 0.0, None) ** np.float32(rng.uniform(0.75, 1.35))
    img = np.float32(rng.uniform(0.0, 0.08)) + np.float32(rng.uniform(0.8, 1.1)) * img
    img += rng.normal(0.0, rng.uniform(0.01, 0.035), size=img.shape).astype(np.float32)
    out = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out, pts


def generate_demo_2d(
    out_dir: str | os.PathLike,
    n_train: int = 48,
    n_val: int = 12,
    n_test: int = 12,
    size: Sequence[int] = (320, 384),
    seed: int = 0,
    spacing: Sequence[float] = (0.5, 0.5),
) -> Path:
    """Write cephalogram-like 8-bit PNGs with 19 landmarks and their ``datalist.json``.

    Each image is a lateral-skull-like radiograph (cranial vault, sella cup, orbit, ear rod, maxilla,
    incisors, mandible, vertebrae, soft-tissue profile) drawn through the case's landmarks, with a
    distinct small mark at each landmark, a random pose (rotation +-10 deg, scale +-10 %, shift),
    shape variation (mandible rotation, face proportions, per-landmark jitter), contrast curve,
    background gradient and noise. Case ``i`` of a split depends only on ``(seed, split, i)``.

    Args:
        out_dir: folder to write ``images/*.png`` and ``datalist.json`` into (created if needed).
        n_train, n_val, n_test: number of images in the training, validation and test sections.
        size: image size (W, H) in pixels; the anatomy scales with it (reference 320 x 384).
        seed: random seed; the same seed gives byte-identical files.
        spacing: pixel spacing (x, y) in mm written into every item (the default gives a 160 x 192 mm
            field of view, about a real cephalogram's).

    Returns:
        path of the datalist JSON.
    """
    _check_counts(n_train=n_train, n_val=n_val, n_test=n_test)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 64:
        raise ValueError(f"size must be (W, H) with both at least 64 pixels, got {size}")
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive mm-per-pixel values, got {spacing}")
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    datalist: dict = {"landmark_names": list(CEPH_LANDMARK_NAMES), "coordinate_space": "pixel"}
    for split_id, ((section, prefix), n) in enumerate(zip(_SPLITS, (n_train, n_val, n_test))):
        items = []
        for i in range(n):
            rng = np.random.default_rng([int(seed), 2, split_id, i])
            img, pts = _ceph_case(rng, size, margin=8.0 * min(size) / 320.0)
            rel = f"images/{prefix}_{i:03d}.png"
            Image.fromarray(img).save(out / rel, format="PNG")
            items.append(
                {
                    "image": rel,
                    "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in pts],
                    "spacing": [float(s) for s in spacing],
                }
            )
        datalist[section] = items
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- 3D

def _vol_template(n: int) -> np.ndarray:
    """``n`` well spread template points (units of half the smallest field of view).

    A golden-angle spiral on a flattened sphere of radius 0.4 with a fixed irregular perturbation,
    so the layout does not depend on the seed; neighbours stay about 0.45 apart for ``n`` <= 10.
    """
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    pts = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], axis=1)
    pts *= 0.4 * np.array([1.0, 0.88, 0.95])
    return pts + np.random.default_rng(1234).uniform(-0.04, 0.04, size=pts.shape)


def _sphere_rho(u, v, w):
    return np.sqrt(u * u + v * v + w * w)


def _bars(u, v, w, r, half_width, length, positive=False):
    lo = -half_width if positive else -length
    out = np.zeros(np.broadcast(u, v, w).shape, dtype=bool)
    for a, b, c in ((u, v, w), (v, w, u), (w, u, v)):
        out |= (a > lo) & (a < length) & (np.abs(b) < half_width) & (np.abs(c) < half_width)
    return out


# 3D structures: (u, v, w) offsets in mm from the landmark in the anatomy frame, r the radius in mm
_MARKS_3D: tuple[tuple[str, Callable], ...] = (
    ("sphere", lambda u, v, w, r: _sphere_rho(u, v, w) < 0.8 * r),
    ("shell", lambda u, v, w, r: (_sphere_rho(u, v, w) > 0.5 * r) & (_sphere_rho(u, v, w) < r)),
    ("cross", lambda u, v, w, r: _bars(u, v, w, r, 0.35 * r, r)),
    ("cube", lambda u, v, w, r: np.maximum(np.maximum(np.abs(u), np.abs(v)), np.abs(w)) < 0.65 * r),
    ("dark_sphere", lambda u, v, w, r: _sphere_rho(u, v, w) < 0.8 * r),
    ("disk", lambda u, v, w, r: (np.hypot(u, v) < r) & (np.abs(w) < 0.35 * r)),
    ("corner", lambda u, v, w, r: _bars(u, v, w, r, 0.35 * r, 1.3 * r, positive=True)),
    ("torus", lambda u, v, w, r: (np.hypot(u, v) - 0.65 * r) ** 2 + w * w < (0.35 * r) ** 2),
)
_DARK_3D = {"dark_sphere"}


def _vol_mark_radius(size: Sequence[int], spacing: np.ndarray) -> float:
    """Radius (mm) of the landmark structures: 9 % of the half field of view, at least 2.5 voxels."""
    half = 0.5 * float(np.min(np.asarray(spacing) * (np.asarray(size) - 1)))
    return max(2.5 * float(np.max(spacing)), 0.09 * half)


def _vol_geometry(
    size: tuple[int, int, int], spacing: np.ndarray, oblique: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction (3x3), origin and world centre (LPS mm) of the demo volumes."""
    direction = _rot3(np.deg2rad(15.0), np.deg2rad(-10.0), np.deg2rad(25.0)) if oblique else np.eye(3)
    centre = np.array([12.5, -31.0, 47.25])  # a non-trivial LPS position of the volume centre
    origin = centre - direction @ (spacing * (np.asarray(size) - 1) / 2.0)
    return direction, origin, centre


def _vol_case(
    rng: np.random.Generator,
    size: tuple[int, int, int],
    spacing: np.ndarray,
    direction: np.ndarray,
    origin: np.ndarray,
    centre: np.ndarray,
    template: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One volume (int16, CT-like HU, indexed [i, j, k]) and its landmarks in LPS world mm (n, 3)."""
    from scipy.ndimage import gaussian_filter

    half = 0.5 * float(np.min(spacing * (np.asarray(size) - 1)))
    radius = _vol_mark_radius(size, spacing)
    m = direction * spacing  # index -> world (columns scaled by spacing)
    m_inv = np.linalg.inv(m)
    hi = np.asarray(size, dtype=float) - 1.0
    margin = 1.4 * radius / float(np.min(spacing)) + 1.0

    p = template * half
    p = p + np.clip(rng.normal(0.0, 0.02 * half, size=p.shape), -0.05 * half, 0.05 * half)
    for _ in range(100):
        rot = _rot3(*np.deg2rad(rng.uniform(-10.0, 10.0, size=3)))
        scale = rng.uniform(0.9, 1.1)
        shift = rng.uniform(-0.06, 0.06, size=3) * half
        world = centre + shift + scale * p @ rot.T
        idx = (world - origin) @ m_inv.T
        if np.all(idx >= margin) and np.all(idx <= hi - margin):
            break
    else:
        raise ValueError(f"volume size {size} with spacing {tuple(spacing)} is too small for {len(p)} landmarks")

    def anatomy_frame(ii, jj, kk):
        # q = R^T (x_world - c - t) / s for index arrays
        wx = origin[0] + m[0, 0] * ii + m[0, 1] * jj + m[0, 2] * kk - centre[0] - shift[0]
        wy = origin[1] + m[1, 0] * ii + m[1, 1] * jj + m[1, 2] * kk - centre[1] - shift[1]
        wz = origin[2] + m[2, 0] * ii + m[2, 1] * jj + m[2, 2] * kk - centre[2] - shift[2]
        return [(rot[0, a] * wx + rot[1, a] * wy + rot[2, a] * wz) / scale for a in range(3)]

    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij", sparse=True)
    u, v, w = anatomy_frame(ii, jj, kk)
    # body ellipsoid of soft tissue with a bony shell, in air
    body = np.sqrt((u / (0.98 * half)) ** 2 + (v / (0.9 * half)) ** 2 + (w / (0.95 * half)) ** 2)
    vol = np.where(body < 1.0, 40.0, -1000.0).astype(np.float32)
    shell_w = max(1.5 * float(np.max(spacing)), 0.06 * half) / half
    vol += 650.0 * ((body < 0.97) & (body > 0.97 - shell_w))
    vol += (body < 1.0) * (35.0 * _smooth_field(rng, size))

    # one structure per landmark, anti-aliased by 2 x 2 x 2 supersampling in a small window
    reach = int(np.ceil(1.6 * radius * scale / float(np.min(spacing)))) + 1
    offs = np.stack(np.meshgrid(_SS3, _SS3, _SS3, indexing="ij"), axis=-1).reshape(-1, 3)
    for j in range(len(p)):
        name, fn = _MARKS_3D[j % len(_MARKS_3D)]
        dark = (name in _DARK_3D) != bool((j // len(_MARKS_3D)) % 2)
        c = np.round(idx[j]).astype(int)
        lo = np.maximum(c - reach, 0)
        up = np.minimum(c + reach + 1, size)
        gi, gj, gk = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, up)], indexing="ij")
        cover = np.zeros(gi.shape)
        for o in offs:
            qu, qv, qw = anatomy_frame(gi + o[0], gj + o[1], gk + o[2])
            cover += fn(qu - p[j, 0], qv - p[j, 1], qw - p[j, 2], radius)
        amp = (-380.0 if dark else 620.0) * rng.uniform(0.85, 1.15)
        vol[lo[0] : up[0], lo[1] : up[1], lo[2] : up[2]] += amp * cover / len(offs)

    vol = gaussian_filter(vol, sigma=0.5)
    vol += rng.normal(0.0, rng.uniform(10.0, 30.0), size=vol.shape).astype(np.float32)
    return np.round(np.clip(vol, -1024, 3071)).astype(np.int16), world


def generate_demo_3d(
    out_dir: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 4,
    size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    n_landmarks: int = 6,
    seed: int = 0,
    oblique: bool = False,
) -> Path:
    """Write CT-like NIfTI volumes with ``n_landmarks`` landmarks and a world-coordinate datalist.

    Each volume is a soft-tissue ellipsoid with a bony shell in air (int16 Hounsfield-like values),
    with a distinct structure at each landmark (sphere, shell, bar cross, cube, dark sphere, disk,
    corner of three bars, torus; repeated with inverted contrast beyond eight), random pose
    (rotation +-10 deg about each axis, scale +-10 %, shift), per-landmark jitter, a smooth bias
    field and noise. The header holds spacing, a non-zero origin and, with ``oblique=True``, a
    rotated direction matrix. Datalist points are ITK/LPS physical coordinates (mm) of the
    structures' centres, i.e. what ``TransformContinuousIndexToPhysicalPoint`` gives for their
    voxel positions; nibabel reports the same file in RAS (x and y negated).

    Args:
        out_dir: folder to write ``images/*.nii.gz`` and ``datalist.json`` into (created if needed).
        n_train, n_val, n_test: number of volumes in the training, validation and test sections.
        size: volume size in voxels (i, j, k).
        spacing: voxel spacing in mm along i, j, k.
        n_landmarks: number of landmarks (named L1..Ln).
        seed: random seed; the same arguments give byte-identical files.
        oblique: write a rotated (non-axis-aligned) direction matrix.

    Returns:
        path of the datalist JSON.
    """
    import nibabel as nib

    _check_counts(n_train=n_train, n_val=n_val, n_test=n_test)
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 16:
        raise ValueError(f"size must be three voxel counts, each at least 16, got {size}")
    spacing_arr = np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    if int(n_landmarks) != n_landmarks or n_landmarks < 1:
        raise ValueError(f"n_landmarks must be a positive integer, got {n_landmarks!r}")

    direction, origin, centre = _vol_geometry(size, spacing_arr, bool(oblique))
    template = _vol_template(int(n_landmarks))
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing_arr
    affine_lps[:3, 3] = origin
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = [f"L{i}" for i in range(1, int(n_landmarks) + 1)]
    datalist: dict = {"landmark_names": names, "coordinate_space": "world"}
    for split_id, ((section, prefix), n) in enumerate(zip(_SPLITS, (n_train, n_val, n_test))):
        items = []
        for i in range(n):
            rng = np.random.default_rng([int(seed), 3, split_id, i])
            vol, world = _vol_case(rng, size, spacing_arr, direction, origin, centre, template)
            nii = nib.Nifti1Image(vol, affine_ras)
            nii.header.set_xyzt_units("mm")
            nii.set_qform(affine_ras, code=1)
            nii.set_sform(affine_ras, code=1)
            rel = f"images/{prefix}_{i:03d}.nii.gz"
            nib.save(nii, str(out / rel))
            items.append(
                {
                    "image": rel,
                    "landmarks": [[round(float(c), 4) for c in pt] for pt in world],
                    "spacing": [float(s) for s in spacing_arr],
                }
            )
        datalist[section] = items
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------ cache


def demo_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$CUSTOM_MONAI_CACHE``, else ``~/.cache/custom_monai``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CUSTOM_MONAI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "custom_monai"


def demo_datalist(kind: str = "2d", root: str | os.PathLike | None = None) -> str:
    """Path of the default demo datalist (``"2d"`` or ``"3d"``), generated on first use.

    The data live in ``<cache>/demo_<kind>_v<DEMO_VERSION>`` (see :func:`demo_cache_dir`). Several
    processes may call this at once (e.g. torchrun ranks): each generates into its own temporary
    folder and renames it into place atomically; whoever loses the race discards its copy and uses
    the winner's, so readers never see a half-written dataset.
    """
    generators = {"2d": generate_demo_2d, "3d": generate_demo_3d}
    if kind not in generators:
        raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")
    parent = demo_cache_dir(root)
    final = parent / f"demo_{kind}_v{DEMO_VERSION}"
    datalist = final / "datalist.json"
    if datalist.is_file():
        return str(datalist)
    if final.exists() and not datalist.is_file():
        raise RuntimeError(f"{final} exists but has no datalist.json; delete the folder to regenerate it")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        generators[kind](tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process already put its copy there
        except OSError:
            if not datalist.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(datalist)
