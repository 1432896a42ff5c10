"""Landmark detection metrics: radial error, MRE/SD/median, SDR and per-landmark tables.

This is the one implementation used by every bundle (through the Ignite metrics and the evaluation
writers) and by ``scripts/score.py``. Conventions, fixed here once:

- Points are (..., N, D) arrays in the **original** image frame, (x, y[, z]); a missing landmark is a
  row of NaN. Spacing is mm per pixel along each axis, in the same (x, y[, z]) order.
- Ground truth missing (any NaN coordinate): the pair is left out of every statistic and counted as
  ``n_missing_gt``.
- Ground truth present but prediction NaN ("not found"): the error is ``+inf``. It is counted as
  ``n_not_found``, left out of MRE/SD/median (a mean cannot hold an infinite value), and counted as a
  **failure** in SDR, whose denominator is every pair with ground truth. A method therefore cannot improve
  its SDR by declining to answer, and ``n_not_found`` shows how often it did.
- SD is the sample standard deviation (``ddof=1``), as reported in the ISBI 2015 challenge papers.
- SDR at threshold ``t`` is the percentage of pairs with error ``<= t`` (ties count as success; a
  tolerance of 1e-9 absorbs floating-point rounding of values that are exactly ``t`` on paper). The
  thresholds are millimetres; with no spacing the SDR fields are ``null``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS",
    "radial_errors",
    "summarize_errors",
    "spearman",
    "LandmarkErrorAccumulator",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
_TIE_TOL = 1e-9


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Float64 numpy copy of a numpy array, torch tensor (incl. MetaTensor) or nested sequence."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()  # also bf16/fp16 (AMP) outputs
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected an array of numbers, got {type(x).__name__} ({e})") from e


def radial_errors(pred: Any, gt: Any, spacing: Any = None) -> np.ndarray:
    """Euclidean distance between predicted and ground-truth points, optionally in millimetres.

    Args:
        pred: (..., N, D) predicted points (NaN row = not found).
        gt: (..., N, D) ground-truth points, same shape (NaN = missing).
        spacing: ``None`` (errors in pixels), (D,) for all images, or (B, D) per image of a (B, N, D) batch.

    Returns:
        (..., N) float64 errors: NaN where the ground truth is missing, ``inf`` where the ground truth exists
        but the prediction is NaN.
    """
    p = _to_numpy(pred, "pred")
    g = _to_numpy(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape (..., N, D), got {p.shape} and {g.shape}")
    if p.ndim < 2:
        raise ValueError(f"points must be (..., N, D), got shape {p.shape}")
    d = p.shape[-1]
    diff = p - g
    if spacing is not None:
        s = _to_numpy(spacing, "spacing")
        if s.ndim == 0:
            s = np.full((d,), float(s))
        if s.shape[-1] != d:
            raise ValueError(f"spacing must have {d} values per image (one per axis), got shape {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"spacing must be finite and positive, got {s.tolist()}")
        if s.ndim == 1:
            diff = diff * s
        elif s.ndim == 2 and p.ndim == 3 and s.shape[0] == p.shape[0]:
            diff = diff * s[:, None, :]
        else:
            raise ValueError(f"spacing of shape {s.shape} does not match points of shape {p.shape}: use (D,) or (B, D)")
    err = np.sqrt(np.sum(diff * diff, axis=-1))
    gt_missing = np.any(np.isnan(g), axis=-1)
    not_found = np.any(np.isnan(p), axis=-1) & ~gt_missing
    err[not_found] = np.inf
    err[gt_missing] = np.nan
    return err


def _f(x: float) -> float | None:
    """JSON-safe float: NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _stats(e: np.ndarray) -> dict[str, float | None]:
    """Mean, sample SD and median of the finite values of ``e`` (None where undefined)."""
    v = e[np.isfinite(e)]
    return {
        "mean": _f(v.mean()) if v.size else None,
        "sd": _f(v.std(ddof=1)) if v.size > 1 else None,
        "median": _f(np.median(v)) if v.size else None,
    }


def _sdr(e: np.ndarray, thresholds: Sequence[float]) -> dict[str, float | None]:
    """Percentage of pairs with ground truth (non-NaN, inf = failure) whose error is <= each threshold."""
    valid = e[~np.isnan(e)]
    out: dict[str, float | None] = {}
    for t in thresholds:
        out[_threshold_key(t)] = _f(100.0 * np.mean(valid <= t + _TIE_TOL)) if valid.size else None
    return out


def _threshold_key(t: float) -> str:
    """``2`` -> ``"2.0"``, ``2.5`` -> ``"2.5"`` (the metrics.json keys)."""
    return str(float(t))


def _as_errors(e: Any, name: str) -> np.ndarray | None:
    if e is None:
        return None
    a = _to_numpy(e, name)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (B, N) errors, got shape {a.shape}")
    return a


def summarize_errors(
    errors_mm: Any,
    errors_px: Any = None,
    landmark_names: Sequence[str] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The ``metrics.json`` summary of (B, N) radial errors (from :func:`radial_errors`).

    Args:
        errors_mm: (B, N) errors in millimetres, or ``None`` when the spacing is unknown (the mm fields and
            SDR are then ``null``).
        errors_px: (B, N) errors in pixels, or ``None`` (px fields ``null``, e.g. world-coordinate 3D data).
        landmark_names: N names for ``per_landmark`` (default ``L1``...``LN``).
        thresholds: SDR thresholds in mm.

    Returns:
        ``{n_images, n_landmarks, n_points, n_missing_gt, n_not_found, mre_mm, sd_mm, median_mm, mre_px, sd_px,
        median_px, sdr: {"2.0": %, ...}, per_landmark: [{index, name, n, n_not_found, mre_mm, sd_mm, median_mm,
        mre_px, sd_px, sdr}]}``. ``n_points`` counts the (image, landmark) pairs with ground truth (found or
        not), which is the SDR denominator; MRE/SD/median use the ``n_points - n_not_found`` found ones.
    """
    emm = _as_errors(errors_mm, "errors_mm")
    epx = _as_errors(errors_px, "errors_px")
    if emm is None and epx is None:
        raise ValueError("summarize_errors needs errors_mm or errors_px (or both)")
    if emm is not None and epx is not None:
        if emm.shape != epx.shape:
            raise ValueError(f"errors_mm {emm.shape} and errors_px {epx.shape} must have the same shape")
        if not np.array_equal(np.isnan(emm), np.isnan(epx)) or not np.array_equal(np.isinf(emm), np.isinf(epx)):
            raise ValueError("errors_mm and errors_px disagree on which pairs are missing or not found")
    ref = emm if emm is not None else epx
    b, n = ref.shape
    names = _landmark_names(landmark_names, n)

    def block(mm: np.ndarray | None, px: np.ndarray | None, r: np.ndarray) -> dict[str, Any]:
        s_mm = _stats(mm) if mm is not None else {"mean": None, "sd": None, "median": None}
        s_px = _stats(px) if px is not None else {"mean": None, "sd": None, "median": None}
        return {
            "n_points": int(np.sum(~np.isnan(r))),
            "n_missing_gt": int(np.sum(np.isnan(r))),
            "n_not_found": int(np.sum(np.isinf(r))),
            "mre_mm": s_mm["mean"],
            "sd_mm": s_mm["sd"],
            "median_mm": s_mm["median"],
            "mre_px": s_px["mean"],
            "sd_px": s_px["sd"],
            "median_px": s_px["median"],
            "sdr": _sdr(mm, thresholds) if mm is not None else {_threshold_key(t): None for t in thresholds},
        }

    out: dict[str, Any] = {"n_images": int(b), "n_landmarks": int(n)}
    out.update(block(emm, epx, ref))
    per = []
    for i in range(n):
        col = block(None if emm is None else emm[:, i], None if epx is None else epx[:, i], ref[:, i])
        per.append(
            {
                "index": i + 1,
                "name": names[i],
                "n": col["n_points"],
                "n_not_found": col["n_not_found"],
                "mre_mm": col["mre_mm"],
                "sd_mm": col["sd_mm"],
                "median_mm": col["median_mm"],
                "mre_px": col["mre_px"],
                "sd_px": col["sd_px"],
                "sdr": col["sdr"],
            }
        )
    out["per_landmark"] = per
    return out


def _landmark_names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"L{i + 1}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise ValueError(f"got {len(names)} landmark names for {n} landmarks")
    return names


def spearman(a: Any, b: Any) -> float | None:
    """Spearman rank correlation of ``a`` and ``b`` over the entries where both are finite (ties: mean rank).

    Used to ask whether a model's per-landmark confidence ranks its errors: positive for an uncertainty
    (σ grows with the error), negative for a confidence (peak value drops). ``None`` with < 3 pairs.
    """
    from scipy.stats import spearmanr

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman: {x.shape} and {y.shape} values")
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return None
    return float(spearmanr(x[keep], y[keep]).statistic)


class LandmarkErrorAccumulator:
    """Collect per-image predictions and ground truth; produce the summary and per-row records.

    Used by the evaluation writers and by ``scripts/score.py`` so that both report the same numbers.

    Args:
        landmark_names: names in landmark order (default ``L1``...``LN``).
        thresholds: SDR thresholds in mm.

    Each image is added with its spacing (errors in mm and px), without spacing (``None`` or all NaN: px
    only), or with ``world=True`` when ``pred``/``gt`` are already millimetre coordinates (mm only, e.g. the
    3D world frame). The summary has mm statistics only if every image has them, and px statistics only if
    every image has them; mixing is reported with a warning rather than averaging different units.
    """

    def __init__(self, landmark_names: Sequence[str] | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
        self.landmark_names = None if landmark_names is None else [str(x) for x in landmark_names]
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.ids: list[str] = []
        self._pred: list[np.ndarray] = []
        self._gt: list[np.ndarray] = []
        self._mm: list[np.ndarray | None] = []
        self._px: list[np.ndarray | None] = []
        self._conf: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(
        self, image_id: str, pred: Any, gt: Any, spacing: Any = None, world: bool = False, confidence: Any = None
    ) -> np.ndarray:
        """Add one image's (N, D) ``pred`` and ``gt``; return its (N,) errors (mm if known, else px).

        ``confidence`` (N,), optional: the model's per-landmark confidence (or uncertainty, e.g. D-CeLR's σ);
        the summary then says how well it ranks the errors (:func:`spearman`).
        """
        p = _to_numpy(pred, f"pred of {image_id}")
        g = _to_numpy(gt, f"gt of {image_id}")
        if p.ndim != 2 or p.shape != g.shape:
            raise ValueError(f"{image_id}: pred and gt must both be (N, D), got {p.shape} and {g.shape}")
        n_expected = len(self.landmark_names) if self.landmark_names is not None else None
        if self._pred:
            n_expected = self._pred[0].shape[0]
            if p.shape[1] != self._pred[0].shape[1]:
                raise ValueError(
                    f"{image_id}: points have {p.shape[1]} coordinates, earlier images {self._pred[0].shape[1]}"
                )
        if n_expected is not None and p.shape[0] != n_expected:
            raise ValueError(f"{image_id}: {p.shape[0]} landmarks, expected {n_expected}")
        if spacing is not None:
            spacing = _to_numpy(spacing, f"spacing of {image_id}")
            if spacing.size and np.all(np.isnan(spacing)):
                spacing = None  # unknown (collated as NaN by the loading transforms)
        if world:
            if spacing is not None:
                raise ValueError(f"{image_id}: world coordinates are already in mm; do not pass a spacing")
            mm, px = radial_errors(p, g), None
        else:
            px = radial_errors(p, g)
            mm = None if spacing is None else radial_errors(p, g, spacing)
        self.ids.append(str(image_id))
        self._pred.append(p)
        self._gt.append(g)
        self._mm.append(mm)
        self._px.append(px)
        conf = None
        if confidence is not None:
            conf = _to_numpy(confidence, f"confidence of {image_id}").astype(np.float64).reshape(-1)
            if conf.size != p.shape[0]:
                raise ValueError(f"{image_id}: {p.shape[0]} points but {conf.size} confidence values")
        self._conf.append(conf)
        return mm if mm is not None else px

    def add_batch(self, image_ids: Sequence[str], pred: Any, gt: Any, spacing: Any = None) -> None:
        """Add a (B, N, D) batch; ``spacing`` is ``None``, (D,) or (B, D)."""
        p = _to_numpy(pred, "pred")
        g = _to_numpy(gt, "gt")
        if p.ndim != 3 or len(image_ids) != p.shape[0]:
            raise ValueError(f"add_batch: pred must be (B, N, D) with B = {len(image_ids)} ids, got {p.shape}")
        s = None if spacing is None else _to_numpy(spacing, "spacing")
        for i, image_id in enumerate(image_ids):
            si = None if s is None else (s[i] if s.ndim == 2 else s)
            self.add(image_id, p[i], g[i], si)

    def _stack(self, rows: list[np.ndarray | None], unit: str) -> np.ndarray | None:
        if not rows:
            return None
        have = [r is not None for r in rows]
        if all(have):
            return np.stack(rows)
        if any(have):
            lacking = [i for i, h in zip(self.ids, have) if not h]
            warnings.warn(
                f"{len(lacking)} of {len(rows)} images have no errors in {unit} (e.g. {lacking[:3]}); "
                f"{unit} statistics are left out (null) instead of mixing units",
                stacklevel=3,
            )
        return None

    @property
    def errors_mm(self) -> np.ndarray | None:
        """(B, N) errors in mm, or ``None`` unless every image has them."""
        return self._stack(self._mm, "mm")

    @property
    def errors_px(self) -> np.ndarray | None:
        """(B, N) errors in pixels, or ``None`` unless every image has them."""
        return self._stack(self._px, "px")

    def summary(self) -> dict[str, Any]:
        """The metrics.json dictionary (see :func:`summarize_errors`)."""
        if not self.ids:
            raise ValueError("no images were added to the accumulator")
        emm, epx = self.errors_mm, self.errors_px
        if emm is None and epx is None:
            raise ValueError("images mix world-mm and pixel-only errors; no common unit to summarize")
        summary = summarize_errors(emm, epx, self.landmark_names, self.thresholds)
        if self._conf and all(c is not None for c in self._conf):
            errors = emm if emm is not None else epx
            summary["confidence_error_spearman"] = spearman(np.stack(self._conf), errors)
        return summary

    def records(self) -> list[dict[str, Any]]:
        """One dict per (image, landmark): id, index, name, pred_x/y(/z), gt_x/y(/z), error_px, error_mm, status.

        Coordinates are in the frame the points were added in (pixels, or world mm for ``world=True``); NaN
        marks missing values; ``status`` is ``ok``, ``not_found`` or ``missing_gt``.
        """
        out = []
        axes = "xyz"
        for k, image_id in enumerate(self.ids):
            p, g, mm, px = self._pred[k], self._gt[k], self._mm[k], self._px[k]
            names = _landmark_names(self.landmark_names, p.shape[0])
            ref = mm if mm is not None else px
            for i in range(p.shape[0]):
                row: dict[str, Any] = {"id": image_id, "index": i + 1, "name": names[i]}
                for a in range(p.shape[1]):
                    row[f"pred_{axes[a]}"] = float(p[i, a])
                for a in range(g.shape[1]):
                    row[f"gt_{axes[a]}"] = float(g[i, a])
                row["error_px"] = float(px[i]) if px is not None else float("nan")
                row["error_mm"] = float(mm[i]) if mm is not None else float("nan")
                row["status"] = "missing_gt" if np.isnan(ref[i]) else ("not_found" if np.isinf(ref[i]) else "ok")
                out.append(row)
        return out
