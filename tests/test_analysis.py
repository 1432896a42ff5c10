"""Cephalometric analysis: the ISBI 2015 measurements, their classes, the writers and the human reference."""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from custom_monai.analysis import (
    ISBI_SYMBOLS,
    MEASUREMENTS,
    MeasurementAccumulator,
    cephalometric_measurements,
    classify,
    is_isbi_landmark_set,
    landmark_roles,
)
from custom_monai.data.aariz import AARIZ_LANDMARK_NAMES
from custom_monai.data.cldetection import CLDETECTION_LANDMARK_NAMES
from custom_monai.data.demo import CEPH_LANDMARK_NAMES
from custom_monai.data.readers import ISBI_LANDMARK_NAMES
from custom_monai.handlers import LandmarkReportHandler
from custom_monai.handlers.writers import (
    MEASUREMENTS_CSV,
    METRICS_JSON,
    prediction_record,
    write_evaluation_report,
    write_overlay_png,
    write_prediction_json,
)
from custom_monai.metrics import LandmarkErrorAccumulator

NAMES = list(ISBI_LANDMARK_NAMES)
KEYS = [m.key for m in MEASUREMENTS]
# ISBI 2015 image 001, senior doctor (all_senior.csv, mm): a real landmark set as the base geometry, in pixels
BASE = np.array(
    [83.5, 99.6, 147.3, 102.9, 128.9, 127.9, 60.4, 122.8, 137.5, 165.4, 138.6, 201.9, 133.3, 220, 126.3, 227.2,
     130.5, 225.2, 69.4, 180.5, 146, 187, 145, 186.4, 158.8, 175.3, 156.9, 201.3, 151.4, 162, 138.2, 231, 94.4,
     150.6, 143.6, 156.9, 66.4, 134]  # fmt: skip
).reshape(19, 2) / 0.1
SP = 0.1
IDX = {s: i for i, s in enumerate(ISBI_SYMBOLS)}


def values(points, names=NAMES, spacing=SP) -> dict[str, float | None]:
    return {k: v["value"] for k, v in cephalometric_measurements(points, names, spacing).items()}


def test_table_matches_the_paper_and_covers_every_value():
    assert KEYS == ["ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"]
    for m in MEASUREMENTS:
        assert [c.number for c in m.classes] == list(range(1, len(m.classes) + 1))
        for v in np.linspace(-200, 200, 4001):  # exactly one class for every value
            assert sum(c.contains(v) for c in m.classes) == 1, (m.key, v)
        assert set(s for seg in m.lines for s in seg) <= set(m.landmarks) | {"S", "N"}


# (measurement, value, expected class): each threshold of Wang et al. 2016 from just below to just above
EPS = 1e-6
THRESHOLDS = [
    ("ANB", 3.2 - EPS, 3), ("ANB", 3.2, 1), ("ANB", 5.7, 1), ("ANB", 5.7 + EPS, 2), ("ANB", -4.0, 3),
    ("SNB", 74.6 - EPS, 2), ("SNB", 74.6, 1), ("SNB", 78.7, 1), ("SNB", 78.7 + EPS, 3),
    ("SNA", 79.4 - EPS, 3), ("SNA", 79.4, 1), ("SNA", 83.2, 1), ("SNA", 83.2 + EPS, 2),
    ("ODI", 68.4 - EPS, 3), ("ODI", 68.4, 1), ("ODI", 80.5, 1), ("ODI", 80.5 + EPS, 2),
    ("APDI", 77.6 - EPS, 2), ("APDI", 77.6, 1), ("APDI", 85.2, 1), ("APDI", 85.2 + EPS, 3),
    ("FHI", 0.65 - EPS, 3), ("FHI", 0.65, 1), ("FHI", 0.75, 1), ("FHI", 0.75 + EPS, 2),
    ("FMA", 26.8 - EPS, 3), ("FMA", 26.8, 1), ("FMA", 31.4, 1), ("FMA", 31.4 + EPS, 2),
    ("MW", -EPS, 3), ("MW", 0.0, 2), ("MW", 2.0 - EPS, 2), ("MW", 2.0, 1), ("MW", 4.5, 1), ("MW", 4.5 + EPS, 4),
]  # fmt: skip


@pytest.mark.parametrize("key,value,expected", THRESHOLDS)
def test_classify_thresholds(key, value, expected):
    assert classify(key, value)[0] == expected
    assert classify(key, None) == (None, None) and classify(key, math.nan) == (None, None)


def _with_sna(theta: float) -> np.ndarray:
    """BASE with A moved so that the angle S-N-A is exactly ``theta`` degrees (A keeps its distance to N)."""
    p = BASE.copy()
    s, n = p[IDX["S"]], p[IDX["N"]]
    back = (s - n) / np.linalg.norm(s - n)
    t = math.radians(theta)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    down = max((rot @ back, rot.T @ back), key=lambda v: v[1])  # of the two turns, the one below SN (rows down)
    p[IDX["A"]] = n + np.linalg.norm(p[IDX["A"]] - n) * down
    return p


def _with_overjet(mm: float) -> np.ndarray:
    """BASE with the upper incisor tip ``mm`` in front of the lower one (same row)."""
    p = BASE.copy()
    p[IDX["UIT"]] = p[IDX["LIT"]] + [mm / SP, 0.0]
    return p


@pytest.mark.parametrize("theta,expected", [(79.35, 3), (79.45, 1), (83.15, 1), (83.25, 2)])
def test_end_to_end_sna_class(theta, expected):
    m = cephalometric_measurements(_with_sna(theta), NAMES, SP)["SNA"]
    assert m["value"] == pytest.approx(theta, abs=1e-9) and m["class"] == expected and m["unit"] == "deg"
    anb = cephalometric_measurements(_with_sna(theta), NAMES, SP)
    assert anb["ANB"]["value"] == pytest.approx(anb["SNA"]["value"] - anb["SNB"]["value"], abs=1e-9)


@pytest.mark.parametrize("mm,expected", [(-0.05, 3), (0.05, 2), (1.95, 2), (2.05, 1), (4.45, 1), (4.55, 4)])
def test_end_to_end_mw_class(mm, expected):
    m = cephalometric_measurements(_with_overjet(mm), NAMES, SP)["MW"]
    assert m["value"] == pytest.approx(mm, abs=1e-9) and m["class"] == expected and m["unit"] == "mm"


def test_real_geometry_values_and_record_format():
    out = cephalometric_measurements(torch.as_tensor(BASE), NAMES, [SP, SP])
    assert list(out) == KEYS
    for k, v in out.items():
        assert set(v) == {"value", "unit", "class", "class_name"} and isinstance(v["class"], int), k
    assert 75 < out["SNA"]["value"] < 90 and 70 < out["SNB"]["value"] < 90 and 0.5 < out["FHI"]["value"] < 0.9


def _rotate(p: np.ndarray, deg: float, centre=(900.0, 1100.0)) -> np.ndarray:
    t = math.radians(deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (p - centre) @ rot.T + centre


@pytest.mark.parametrize("deg,shift", [(0.0, (250.0, -80.0)), (17.0, (0.0, 0.0)), (-33.0, (-400.0, 120.5))])
def test_invariant_to_rotation_and_translation(deg, shift):
    ref = values(BASE)
    moved = values(_rotate(BASE, deg) + shift)
    for k in KEYS:  # MW's sign follows the image x axis (the paper's rule); its size is a distance
        assert moved[k] == pytest.approx(ref[k], abs=1e-9) if k != "MW" else abs(moved[k]) == pytest.approx(abs(ref[k]))
    assert values(BASE + shift)["MW"] == pytest.approx(ref["MW"])


def test_scaling_and_spacing():
    ref = values(BASE)
    scaled = values(BASE * 1.7)
    for k in KEYS:  # angles and FHI do not change; MW is a length in mm
        assert scaled[k] == pytest.approx(ref[k] * (1.7 if k == "MW" else 1.0), abs=1e-9), k
    # non-square pixels: measured in mm, so (0.1, 0.2) mm/px equals pre-stretched rows at 0.1 mm/px
    aniso = values(BASE, spacing=[0.1, 0.2])
    stretched = values(BASE * [1.0, 2.0], spacing=0.1)
    assert aniso == pytest.approx(stretched)
    no_sp = cephalometric_measurements(BASE, NAMES, None)
    assert no_sp["MW"]["value"] is None and "spacing" in no_sp["MW"]["reason"]
    assert no_sp["SNA"]["value"] == pytest.approx(ref["SNA"])


def test_mirrored_image_gives_the_same_values():
    mirrored = BASE * [-1.0, 1.0] + [1935.0, 0.0]  # face looking left
    assert values(mirrored) == pytest.approx(values(BASE))


@pytest.mark.parametrize("k", range(19))
def test_missing_landmark_nulls_exactly_its_measurements(k):
    p = BASE.copy()
    p[k] = np.nan
    out = cephalometric_measurements(p, NAMES, SP)
    uses = {m.key for m in MEASUREMENTS if ISBI_SYMBOLS[k] in m.landmarks}
    assert {key for key, v in out.items() if v["value"] is None} == uses
    for key in uses:
        assert out[key]["class"] is None and out[key]["class_name"] is None
        assert out[key]["reason"] == f"missing landmark: {NAMES[k]}"
    for key in set(KEYS) - uses:
        assert "reason" not in out[key]


def test_gonion_missing_example():
    p = BASE.copy()
    p[IDX["Go"]] = np.nan
    nulls = [k for k, v in values(p).items() if v is None]
    assert nulls == ["ODI", "FHI", "FMA"]


def test_names_in_any_order_and_spelling():
    ref = values(BASE)
    perm = np.random.default_rng(0).permutation(19)
    assert values(BASE[perm], [NAMES[i] for i in perm]) == pytest.approx(ref)
    spellings = [
        list(ISBI_SYMBOLS),
        [f"l{i}" for i in range(1, 20)],  # Hamedan
        list(CEPH_LANDMARK_NAMES),  # demo data, L1..L19
        ["Sella", "Nasion", "Orbitale", "Porion", "Subspinale/A", "Supramentale/B", "Pogonion", "Menton",
         "Gnathion", "Gonion", "lower incisal incision", "upper incisal incision", "upper lip", "lower lip",
         "subnasale", "soft-tissue pogonion", "PNS", "ANS", "Articulare"],
    ]  # fmt: skip
    for names in spellings:
        assert values(BASE, names) == pytest.approx(ref), names
    numbered = [f"L{i + 1}" for i in perm]  # numbers name the ISBI roles, whatever the list order
    assert values(BASE[perm], numbered) == pytest.approx(ref)


def test_landmark_set_detection():
    for names in (NAMES, CEPH_LANDMARK_NAMES, AARIZ_LANDMARK_NAMES, CLDETECTION_LANDMARK_NAMES):
        assert is_isbi_landmark_set(names), names[:3]
    aariz = landmark_roles(AARIZ_LANDMARK_NAMES)
    assert AARIZ_LANDMARK_NAMES[aariz["soft_tissue_pogonion"]] == "Pog`"
    assert AARIZ_LANDMARK_NAMES[aariz["lower_incisal_incision"]] == "LIT"
    assert not is_isbi_landmark_set(["Sella", "Nasion", "Menton"])
    assert not is_isbi_landmark_set([f"L{i}" for i in range(1, 25)])
    with pytest.raises(ValueError, match="sella"):
        landmark_roles(["S", "Sella", "N"])
    partial = cephalometric_measurements(BASE[[0, 1, 4]], ["S", "N", "A"], SP)
    assert partial["SNA"]["value"] == pytest.approx(values(BASE)["SNA"])
    assert partial["SNB"]["value"] is None and "not in the landmark set: supramentale" in partial["SNB"]["reason"]


def test_accumulator_accuracy_and_mae():
    acc = MeasurementAccumulator(NAMES)
    acc.add("a", BASE, BASE, SP)
    acc.add("b", _with_overjet(3.0), _with_overjet(5.0), SP)  # MW class 1 vs 4: one miss, error 2 mm
    missing = BASE.copy()
    missing[IDX["Go"]] = np.nan
    acc.add("c", missing, BASE, SP)  # no predicted FHI: counted as not found and wrong
    s = acc.summary()
    assert s["n_images"] == 3
    assert s["MW"]["accuracy"] == pytest.approx(200 / 3) and s["MW"]["mae"] == pytest.approx(2 / 3)
    assert s["MW"]["confusion"]["matrix"][3][0] == 1  # reference class 4, predicted class 1
    assert s["FHI"]["n"] == 3 and s["FHI"]["n_not_found"] == 1 and s["FHI"]["accuracy"] == pytest.approx(200 / 3)
    assert s["SNA"]["accuracy"] == 100.0 and s["SNA"]["mae"] == 0.0
    assert len(acc.records()) == 3 * 8
    off = MeasurementAccumulator(["Sella", "Nasion", "Menton"])
    off.add("x", BASE[:3], BASE[:3], SP)
    assert not off.enabled and len(off) == 0


def test_writers_json_png_and_metrics(tmp_path):
    pred = _with_overjet(3.0)
    pred[IDX["Go"]] = np.nan
    rec = prediction_record("in/007.png", [SP, SP], pred, NAMES)
    path = write_prediction_json(tmp_path, rec)
    raw = json.loads(path.read_text())
    assert list(raw["measurements"]) == KEYS
    assert raw["measurements"]["MW"] == {"value": pytest.approx(3.0), "unit": "mm", "class": 1, "class_name": "normal"}
    assert raw["measurements"]["FMA"]["value"] is None and "gonion" in raw["measurements"]["FMA"]["reason"]
    assert "measurements" not in prediction_record("x.png", None, BASE[:3], ["Sella", "Nasion", "Menton"])
    assert "measurements" not in prediction_record("x.nii.gz", None, np.zeros((19, 3)), NAMES)

    image = np.zeros((400, 500), np.float32)  # (W, H) as MONAI loads it; points scaled into it
    small = pred * 0.15
    png = write_overlay_png(tmp_path / "007_overlay.png", image, small, BASE * 0.15, NAMES,
                            measurements=raw["measurements"], gt_measurements=rec["measurements"])  # fmt: skip
    with Image.open(png) as im:
        assert im.size[1] == 500 and im.size[0] > 400  # the image keeps its frame; the panel is added on the right
        assert np.asarray(im)[:, 400:].any()

    errors = LandmarkErrorAccumulator(NAMES)
    meas = MeasurementAccumulator(NAMES)
    for iid, p, g in (("a", pred, BASE), ("b", BASE, BASE)):
        errors.add(iid, p, g, [SP, SP])
        meas.add(iid, p, g, [SP, SP])
    summary = write_evaluation_report(tmp_path / "eval", errors, measurements=meas)
    saved = json.loads((tmp_path / "eval" / METRICS_JSON).read_text())
    assert saved["measurements"]["FMA"]["n_not_found"] == 1 and saved["measurements"]["SNA"]["accuracy"] == 100.0
    assert summary["files"]["measurements_csv"] == MEASUREMENTS_CSV
    assert len((tmp_path / "eval" / MEASUREMENTS_CSV).read_text().splitlines()) == 1 + 2 * 8


def test_score_script_and_report_handler_share_the_measurements(tmp_path, repo_root):
    spec = importlib.util.spec_from_file_location("score_script", repo_root / "scripts" / "score.py")
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    gt = {"a": BASE, "b": _with_overjet(5.0)}
    pred = {"a": _with_sna(83.3), "b": _with_overjet(3.0)}
    items = [{"image": f"{k}.png", "landmarks": v.tolist(), "spacing": [SP, SP]} for k, v in gt.items()]
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"landmark_names": NAMES, "coordinate_space": "pixel", "test": items}))
    for k, p in pred.items():
        write_prediction_json(tmp_path / "pred", prediction_record(f"{k}.png", [SP, SP], p, NAMES))
    scored = score.score(str(dl), "test", str(tmp_path / "pred"), str(tmp_path / "s" / "metrics.json"), quiet=True)

    handler = LandmarkReportHandler(str(tmp_path / "h"), NAMES)
    grid = MetaTensor(torch.zeros(2, 1, 484, 600), affine=torch.diag(torch.tensor([4.0, 4.0, 1.0])))
    grid.meta["landmark_affine"] = torch.eye(3)  # the image grid is the original at 1/4 resolution
    engine = SimpleNamespace(data_loader=None, state=SimpleNamespace(batch={"image": grid}, output={
        "pred": torch.as_tensor(np.stack(list(pred.values()))),
        "label": torch.as_tensor(np.stack(list(gt.values()))),
        "spacing": torch.full((2, 2), SP, dtype=torch.float64),
        "image_path": ["a.png", "b.png"],
    }))  # fmt: skip
    handler._started(engine)
    handler._iteration(engine)
    handler._completed(engine)
    assert handler.summary["measurements"] == scored["measurements"]
    mw = scored["measurements"]["MW"]
    assert mw["accuracy"] == 50.0 and mw["mae"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "h" / "a.json").read_text())["measurements"]["SNA"]["class"] == 2
    with Image.open(tmp_path / "h" / "b_overlay.png") as im:
        assert im.size[1] == 600 and im.size[0] > 484


# measured by scripts/analysis_agreement.py: class agreement (%) of the ISBI senior vs junior landmarks, 400 images
ISBI_AGREEMENT = {
    "ANB": 78.0, "SNB": 82.0, "SNA": 67.8, "ODI": 77.0, "APDI": 82.2, "FHI": 84.2, "FMA": 82.0, "MW": 84.2
}  # fmt: skip


@pytest.mark.realdata
def test_human_agreement_on_real_annotations(data_dir, repo_root):
    spec = importlib.util.spec_from_file_location("agreement_script", repo_root / "scripts" / "analysis_agreement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.run(data_dir)
    isbi, ham = result["isbi2015"], result["hamedan"]
    assert isbi["n_images"] == 400 and ham["n_images"] == 100
    for k, expected in ISBI_AGREEMENT.items():
        assert isbi[k]["n"] == 400
        assert isbi[k]["agreement"] == pytest.approx(expected, abs=0.5), k  # the definitions did not drift
        assert 60.0 <= ham[k]["agreement"] <= 95.0, k
    for r in (isbi, ham):  # plausible anatomy: the same landmarks in both sets
        assert 79.0 < r["SNA"]["mean_second"] < 85.0 and 76.0 < r["SNB"]["mean_second"] < 82.0
        assert 0.6 < r["FHI"]["mean_second"] < 0.72 and 1.0 < r["MW"]["mean_second"] < 5.0
    assert result["order_check"]["hamedan_matches_isbi_order"]


def test_degenerate_geometry_is_null_with_reason():
    p = BASE.copy()
    p[IDX["Me"]] = p[IDX["N"]]  # anterior face height 0
    out = cephalometric_measurements(p, NAMES, SP)
    assert out["FHI"]["value"] is None and out["FHI"]["reason"].startswith("degenerate geometry")
    assert out["SNA"]["value"] is not None
