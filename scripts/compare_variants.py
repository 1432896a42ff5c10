"""Per landmark, what a change of pipeline does to each point: how often it moves a correct point away and how
often it rescues a wrong one (e.g. expansive exploration vs a single centred region).

    python scripts/compare_variants.py --before bench/att/eval_no_expansion/predictions.csv \
        --after bench/att/eval_full/predictions.csv --threshold 2.0 --out bench/att/exploration.md

Reads two ``predictions.csv`` files written by the bundles' evaluation (or ``scripts/score.py``) on the same
images; errors in mm (``error_mm``, else ``error_px``). Per landmark: MRE before/after, "moved away" = correct
before (error <= threshold) and not after, "rescued" = the reverse, and the count of errors > ``outlier`` mm.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import fire

__all__ = ["compare"]


def _read(path: str | Path) -> dict[tuple[str, str], float]:
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value = row.get("error_mm") or row.get("error_px") or ""
            out[(row["id"], row["name"])] = float(value) if value not in ("", "nan", "None") else math.inf
    return out


def compare(before: str, after: str, threshold: float = 2.0, outlier: float = 4.0, out: str | None = None) -> dict:
    """Compare two prediction tables landmark by landmark; returns the per-landmark counts and writes a table."""
    a, b = _read(before), _read(after)
    if set(a) != set(b):
        raise ValueError(f"{before} and {after} do not score the same (image, landmark) pairs: {len(set(a) ^ set(b))} differ")
    names = list(dict.fromkeys(name for _, name in a))
    rows, total = [], {"moved_away": 0, "rescued": 0, "outliers_before": 0, "outliers_after": 0, "points": 0}
    for name in names:
        keys = [k for k in a if k[1] == name]
        ea, eb = [a[k] for k in keys], [b[k] for k in keys]
        row = {
            "landmark": name,
            "mre_before": sum(x for x in ea if math.isfinite(x)) / max(1, sum(math.isfinite(x) for x in ea)),
            "mre_after": sum(x for x in eb if math.isfinite(x)) / max(1, sum(math.isfinite(x) for x in eb)),
            "moved_away": sum(x <= threshold < y for x, y in zip(ea, eb)),
            "rescued": sum(y <= threshold < x for x, y in zip(ea, eb)),
            "outliers_before": sum(x > outlier for x in ea),
            "outliers_after": sum(y > outlier for y in eb),
            "points": len(keys),
        }
        rows.append(row)
        for k in total:
            total[k] += row[k]
    lines = [
        f"before: `{before}`; after: `{after}`; correct = error <= {threshold} mm; outlier = error > {outlier} mm",
        "",
        "| landmark | MRE before | MRE after | moved away | rescued | outliers before | outliers after |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['landmark']} | {r['mre_before']:.2f} | {r['mre_after']:.2f} | {r['moved_away']} | {r['rescued']} | "
        f"{r['outliers_before']} | {r['outliers_after']} |"
        for r in rows
    ]
    lines.append(
        f"| **all ({total['points']} points)** | | | **{total['moved_away']}** | **{total['rescued']}** | "
        f"**{total['outliers_before']}** | **{total['outliers_after']}** |"
    )
    text = "\n".join(lines) + "\n"
    if out:
        Path(out).write_text(text)
    print(text)
    return {"landmarks": rows, "total": total}


def _cli(before: str, after: str, threshold: float = 2.0, outlier: float = 4.0, out: str | None = None) -> None:
    """Command line: print (and write) the table only."""
    compare(before, after, threshold, outlier, out)


if __name__ == "__main__":
    fire.Fire(_cli)
