"""Human reference for the cephalometric analysis: how often two clinicians' landmarks give the same class.

    python scripts/analysis_agreement.py [--data_dir ../shared/data] [--out agreement.json]

For each of the eight ISBI 2015 measurements (``custom_monai.analysis.cephalometric``): the class agreement
(% of images where both annotators' landmarks give the same class) and the mean absolute difference of the
values, over every image where both annotators have the measurement.

- ISBI 2015: senior vs junior, all 400 images (``isbi2015_annotations/setup/all_{senior,junior}.csv``, mm;
  pixel = mm / 0.1).
- Hamedan: farhadifar vs mollabashi, 100 images (Labelme ``l1``..``l19``, read with the repository's reader;
  0.127 mm/px is an estimate, which only scales MW).

It also checks that Hamedan's ``l1``..``l19`` follow the ISBI order: in a frame fixed to S and N (S at 0, N at
1 along x), the one-to-one matching of Hamedan's mean landmark positions to ISBI's that minimises the total
distance must be the identity, and the mean angles must describe the same anatomy. A model's own figures come
from the same code (``metrics.json`` ``measurements``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from custom_monai.analysis.cephalometric import MEASUREMENTS, MeasurementAccumulator
from custom_monai.data.hamedan import HAMEDAN_ANNOTATORS, HAMEDAN_SPACING, read_hamedan_annotations
from custom_monai.data.isbi2015 import ISBI_SPACING, read_isbi_csv
from custom_monai.data.readers import ISBI_LANDMARK_NAMES

__all__ = ["annotator_agreement", "sn_frame_means", "run"]

_DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def annotator_agreement(first: dict[str, np.ndarray], second: dict[str, np.ndarray], spacing: float) -> dict:
    """Per measurement: ``n``, ``agreement`` (%), ``mad`` and both annotators' mean values (``second`` = reference)."""
    acc = MeasurementAccumulator(ISBI_LANDMARK_NAMES)
    for iid in sorted(set(first) & set(second)):
        acc.add(iid, first[iid], second[iid], spacing)
    summary = acc.summary()
    out: dict[str, Any] = {"n_images": len(acc)}
    for m in MEASUREMENTS:
        s = summary[m.key]
        matrix = np.asarray(s["confusion"]["matrix"])
        both = int(matrix.sum())
        out[m.key] = {
            "unit": m.unit,
            "n": both,
            "agreement": 100.0 * float(np.trace(matrix)) / both if both else None,
            "mad": s["mae"],
            "mean_first": s["mean_pred"],
            "mean_second": s["mean_gt"],
        }
    return out


def sn_frame_means(points: list[np.ndarray]) -> np.ndarray:
    """(19, 2) mean landmark positions in a frame with S at (0, 0) and N at (1, 0) (rows downwards stay down)."""
    frames = []
    for p in points:
        s, n = p[0], p[1]
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(n))):
            continue
        u = (n - s) / np.sum((n - s) ** 2)  # scales |SN| to 1
        rot = np.array([[u[0], u[1]], [-u[1], u[0]]])
        frames.append((p - s) @ rot.T)
    return np.nanmean(np.stack(frames), axis=0)


def run(data_dir: str | os.PathLike = _DEFAULT_DATA) -> dict[str, Any]:
    """Agreement tables for ISBI 2015 and Hamedan and the landmark-order check; returns them as a dict."""
    data_dir = Path(data_dir)
    setup = data_dir / "isbi2015_annotations" / "setup"
    senior = read_isbi_csv(setup / "all_senior.csv")
    junior = read_isbi_csv(setup / "all_junior.csv")
    ham_root = data_dir / "hamedan_ceph"
    ham = {a: {k: v[0] for k, v in read_hamedan_annotations(ham_root, a).items()} for a in HAMEDAN_ANNOTATORS}
    first, second = HAMEDAN_ANNOTATORS[1], HAMEDAN_ANNOTATORS[0]
    isbi_mean = sn_frame_means(list(senior.values()) + list(junior.values()))
    ham_mean = sn_frame_means(list(ham[first].values()) + list(ham[second].values()))
    dist = np.linalg.norm(ham_mean[:, None] - isbi_mean[None], axis=2)  # in |SN| units
    _, match = linear_sum_assignment(dist)
    return {
        "isbi2015": {"first": "junior", "second": "senior", **annotator_agreement(junior, senior, ISBI_SPACING)},
        "hamedan": {"first": first, "second": second, **annotator_agreement(ham[first], ham[second], HAMEDAN_SPACING)},
        "order_check": {
            "hamedan_matches_isbi_order": bool(np.array_equal(match, np.arange(len(match)))),
            "best_match": [ISBI_LANDMARK_NAMES[j] for j in match],
            "mean_position_offset_sn_units": {
                n: round(float(d), 4) for n, d in zip(ISBI_LANDMARK_NAMES, dist.diagonal())
            },
        },
    }


def _format(result: dict[str, Any]) -> str:
    isbi, ham = result["isbi2015"], result["hamedan"]
    lines = [
        f"class agreement % / mean absolute difference; ISBI senior vs junior ({isbi['n_images']} images), "
        f"Hamedan {ham['second']} vs {ham['first']} ({ham['n_images']} images)",
        f"{'':6}{'ISBI':>22}{'Hamedan':>22}   mean value ISBI senior / Hamedan {ham['second']}",
    ]
    for m in MEASUREMENTS:
        a, b = isbi[m.key], ham[m.key]
        digits = 3 if m.unit == "ratio" else 2
        cell = lambda r: f"{r['agreement']:.1f} % / {r['mad']:.{digits}f}"  # noqa: E731
        lines.append(
            f"{m.key:6}{cell(a):>22}{cell(b):>22}   {a['mean_second']:.{digits}f} / {b['mean_second']:.{digits}f} "
            f"{m.unit}  (n {a['n']}, {b['n']})"
        )
    oc = result["order_check"]
    worst = max(oc["mean_position_offset_sn_units"].items(), key=lambda kv: kv[1])
    lines.append(
        f"Hamedan l1..l19 mean positions (S-N frame, |SN| = 1) best matched to ISBI's in ISBI order: "
        f"{oc['hamedan_matches_isbi_order']} (largest offset {worst[1]:.3f}, {worst[0]})"
    )
    return "\n".join(lines)


def _cli(data_dir: str = str(_DEFAULT_DATA), out: str | None = None) -> None:
    """Print the agreement tables; with ``out``, also write them as JSON."""
    result = run(data_dir)
    print(_format(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    import fire

    fire.Fire(_cli)
