"""Errors of one evaluation split by groups of images, e.g. CT vs CBCT volumes, from its ``predictions.csv``.

    python scripts/error_groups.py --predictions bench/ct/global_local_fcnn_3d/eval_default/predictions.csv \
        --groups '{"CBCT": "_cbct", "CT": "_ct_"}'

``groups`` maps a name to a substring of the image id; an image goes to the first group whose substring its id
holds (the rest to "other"). Per group: images, points, MRE (SD), median and SDR at 2 / 2.5 / 3 / 4 mm (errors in
mm, ``error_mm``, else px), over the points with ground truth; a point the model did not find counts as a miss.
"""

from __future__ import annotations

import csv
import json
import math

import fire
import numpy as np

__all__ = ["error_groups"]


def error_groups(predictions: str, groups: str | dict, thresholds: tuple = (2.0, 2.5, 3.0, 4.0)) -> dict:
    """Print a markdown table of the errors per group and return ``{group: {n_images, n_points, mre, ...}}``."""
    spec = json.loads(groups) if isinstance(groups, str) else dict(groups)
    errors: dict[str, list[float]] = {name: [] for name in [*spec, "other"]}
    images: dict[str, set] = {name: set() for name in errors}
    unit = "mm"
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not rows[0].get("error_mm"):
        unit = "px"
    for row in rows:
        if row.get("status") == "missing_gt":
            continue
        group = next((g for g, key in spec.items() if key in row["id"]), "other")
        value = row.get(f"error_{unit}") or ""
        errors[group].append(float(value) if value not in ("", "nan", "None") else math.inf)
        images[group].add(row["id"])
    out = {}
    print(f"| group | images | points | MRE {unit} (SD) | median | SDR " + " / ".join(f"{t:g}" for t in thresholds) + " % |")
    print("|---|---|---|---|---|---|")
    for group, values in errors.items():
        if not values:
            continue
        e = np.asarray(values)
        found = e[np.isfinite(e)]
        sdr = [100.0 * float(np.mean(e <= t)) for t in thresholds]
        out[group] = {
            "n_images": len(images[group]), "n_points": int(e.size), "n_not_found": int(e.size - found.size),
            "mre": float(found.mean()) if found.size else None, "sd": float(found.std()) if found.size else None,
            "median": float(np.median(found)) if found.size else None, "sdr": dict(zip(map(str, thresholds), sdr)),
        }
        r = out[group]
        print(f"| {group} | {r['n_images']} | {r['n_points']} | {r['mre']:.2f} ({r['sd']:.2f}) | {r['median']:.2f} | "
              + " / ".join(f"{s:.1f}" for s in sdr) + " |")
    return out


def _cli(predictions: str, groups: str, thresholds: tuple = (2.0, 2.5, 3.0, 4.0)) -> None:
    """Command line: print the table only (the returned dictionary is for callers)."""
    error_groups(predictions, groups, thresholds)


if __name__ == "__main__":
    fire.Fire(_cli)
