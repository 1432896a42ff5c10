"""Write a datalist JSON for a public landmark dataset (or your own 3D Slicer markups).

Usage (from the repository root)::

    python scripts/prepare_data.py hamedan --root ../shared/data/hamedan_ceph --out data/hamedan.json  # 60/20/20
    python scripts/prepare_data.py hamedan --root ../shared/data/hamedan_ceph --out d.json --val_fraction 0.2 --test_fraction 0.2
    python scripts/prepare_data.py isbi2015 --root ../shared/data/isbi2015 --annotations ../shared/data/isbi2015_annotations --out data/isbi.json
    python scripts/prepare_data.py isbi2015 --root ISBI2015_RELEASE --out data/isbi.json --ground_truth senior --protocol challenge
    python scripts/prepare_data.py markups --root ../shared/data/cmf_ct3d --out data/cmf_ct3d.json
    python scripts/prepare_data.py cldetection2023 --root labels --images images --spacing 0.1 --out data/cl.json
    python scripts/prepare_data.py markups --root my_landmarks --images my_volumes --out data/ct.json

DATASET is one of isbi2015, hamedan, hand, chest, cldetection2023, aariz, markups. Options that a dataset
does not take are refused.

Protocol: bundles select ``model.pt`` on ``validation``; results are reported on ``test``, which no model
selection sees. Hamedan and markups write a seeded three-way split (default 60/20/20; ``--test_fraction 0``
gives the old two-way split); ISBI 2015 follows the papers (``--protocol challenge``: training = 001-150 minus
a seeded validation part, test = Test1 151-300). Prints one summary line (items per section, missing landmarks, warnings); the
warnings themselves are stored in the datalist (``"warnings"``) and printed with ``--verbose``.
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

import fire

from custom_monai.data.datalist import summarize_datalist, write_datalist
from custom_monai.data.readers import DATASETS, get_builder


def prepare(
    dataset: str,
    root: str,
    out: str,
    annotator: str | None = None,
    ground_truth: str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int | None = None,
    annotations: str | None = None,
    protocol: str | None = None,
    images: str | None = None,
    spacing: float | None = None,
    tolerance: float | None = None,
    verbose: bool = False,
) -> str:
    """Build the datalist of ``dataset`` found under ``root`` and write it to ``out`` (atomically).

    Args:
        dataset: isbi2015, hamedan, hand, chest, cldetection2023, aariz or markups.
        root: the dataset folder.
        out: the datalist JSON to write (image paths are stored relative to its folder).
        annotator: hamedan (mean|farhadifar|mollabashi), aariz (mean|senior|junior); default mean.
        ground_truth: isbi2015 (mean|senior|junior); default mean, the papers' convention.
        val_fraction: share of the validation split where the dataset has no official one (default 0.2;
            isbi2015: share of the 150 training images, default 0.1 = 15).
        test_fraction: hamedan, markups: share of the test split (default 0.2; 0 = no test section).
        seed: seed of the split (default 0).
        annotations: isbi2015: folder of AnnotationsByMD/ or of setup/all_senior.csv (default: root, then
            root/../isbi2015_annotations).
        protocol: isbi2015: challenge (default; test = Test1) or official (validation = Test1, test = Test2).
        images: image/volume folder (cldetection2023 txt labels, markups).
        spacing: mm per pixel for cldetection2023 txt labels (not stored in them).
        tolerance: markups: how far (voxels) a point may lie beyond the edge voxel centres (default 0.5).
        verbose: also print every warning.

    Returns the summary line.
    """
    builder = get_builder(dataset)
    params = inspect.signature(builder).parameters
    given = {
        "annotator": annotator,
        "ground_truth": ground_truth,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "annotations": annotations,
        "protocol": protocol,
        "images": images,
        "spacing": spacing,
        "tolerance": tolerance,
    }
    kwargs = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in params:
            accepted = [f"--{p}" for p in params if p in given]
            raise ValueError(f"{dataset}: option --{key} does not apply; this dataset accepts {accepted}")
        kwargs[key] = value
    if "extract_dir" in params:
        kwargs["extract_dir"] = str(Path(out).resolve().parent / f"{Path(out).stem}_images")
    datalist = builder(root, **kwargs)
    warnings = list(datalist.pop("warnings", []))
    names = datalist.pop("landmark_names")
    space = datalist.pop("coordinate_space")
    sections = {s: datalist.pop(s, []) for s in ("training", "validation", "test")}
    write_datalist(out, names, coordinate_space=space, **sections, **datalist, warnings=warnings)
    summary = summarize_datalist({"landmark_names": names, "coordinate_space": space, **sections}, warnings)
    if verbose:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    return f"{dataset}: wrote {out}: {summary}"


@functools.wraps(prepare)
def main(*args, **kwargs) -> None:
    """Entry point for ``fire``: prints the summary line and exits non-zero with a clear message on error."""
    try:
        print(prepare(*args, **kwargs))
    except (ValueError, OSError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        if "unknown dataset" in str(e):
            print(f"datasets: {', '.join(sorted(DATASETS))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    fire.Fire(main)
