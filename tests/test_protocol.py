"""Evaluation protocol: three-way splits, annotators in datalists, the benchmark's section rule and human rows,
ISBI 2015 (both layouts, the papers' protocol), the real 3D CT datalist, and the mean-position baseline.

Fast unit tests on small fixtures first; then real-data tests on ``../shared/data`` (``LANDMARK_DATA_DIR``),
which must run in CI (the ``data_dir`` fixture fails there instead of skipping).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_utils import mean_position_baseline
from custom_monai.data.datalist import (
    datalist_section,
    load_datalist,
    split_items,
    validate_datalist,
    write_datalist,
)
from custom_monai.data.errors import DatalistError, LandmarkFileError
from custom_monai.data.hamedan import build_hamedan
from custom_monai.data.isbi2015 import build_isbi2015, read_isbi_csv
from custom_monai.data.markups import read_markups
from custom_monai.data.readers import ISBI_LANDMARK_NAMES, merge_annotators
from custom_monai.handlers.writers import prediction_record, write_prediction_json

NAMES = ["sella", "nasion", "menton"]
CMF_NAMES = [
    "S", "Gb", "Rh", "Fz-R", "Fz-L", "Ft-R", "Ft-L", "SOF-R", "SOF-L", "Ba", "FMP", "GFC-R", "GFC-L",
    "M-R", "M-L", "Po-R", "Po-L", "ANS", "IC", "PNS", "B", "Me", "Go-R", "Go-L",
]  # fmt: skip


def _load(repo_root: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", repo_root / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench(repo_root):
    return _load(repo_root, "benchmark")


@pytest.fixture(scope="module")
def prepare(repo_root):
    return _load(repo_root, "prepare_data")


# ============================================================================================ three-way split


def test_three_way_split_is_seeded_disjoint_and_complete():
    items = list(range(100))
    train, val, test = split_items(items, 0.2, seed=0, test_fraction=0.2)
    assert (len(train), len(val), len(test)) == (60, 20, 20)
    assert sorted(train + val + test) == items and not (set(train) & set(val) | set(train) & set(test) | set(val) & set(test))
    assert train == sorted(train) and val == sorted(val) and test == sorted(test)  # input order kept
    assert split_items(items, 0.2, seed=0, test_fraction=0.2) == (train, val, test)
    assert split_items(items, 0.2, seed=1, test_fraction=0.2)[2] != test
    # validation = the two-way split's validation: the test part never takes an image models were selected on
    assert split_items(items, 0.2, seed=0)[1] == val
    assert len(split_items(items, 0.2, 0)) == 2  # no test_fraction: the old two-way result
    assert [len(x) for x in split_items(items, 0.1, 3, test_fraction=0.3)] == [60, 10, 30]
    assert [len(x) for x in split_items(items, 0.2, 0, test_fraction=0.0)] == [80, 20, 0]
    assert [len(x) for x in split_items(items[:3], 0.01, 0, test_fraction=0.01)] == [1, 1, 1]  # at least one each
    assert [len(x) for x in split_items(items[:2], 0.4, 0, test_fraction=0.4)] == [1, 1, 0]  # training keeps one
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        split_items(items, 0.5, 0, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_items(items, 0.2, 0, test_fraction=-0.1)


# ============================================================================================ annotators


def _ann_items(tmp_path: Path) -> list[dict]:
    (tmp_path / "img").mkdir(exist_ok=True)
    out = []
    for k, name in enumerate(("a", "b")):
        p = tmp_path / "img" / f"{name}.png"
        p.write_bytes(b"x")
        a = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]) + k
        b = a + [3.0, 4.0]  # 5 px from A everywhere
        b[2] = np.nan if k == 0 else b[2]  # B did not place menton on image a
        out.append(
            {
                "image": str(p),
                "landmarks": merge_annotators([a, b]),
                "spacing": [0.5, 0.5],
                "annotators": {"A": a, "B": [None if not np.all(np.isfinite(r)) else list(r) for r in b]},
            }
        )
    return out


def test_annotators_round_trip_and_validation(tmp_path):
    items = _ann_items(tmp_path)
    path = write_datalist(tmp_path / "dl.json", NAMES, items[:1], [], items[1:])
    raw = json.loads(path.read_text())
    assert raw["training"][0]["annotators"]["B"][2] is None and raw["training"][0]["annotators"]["A"][0] == [10.0, 10.0]
    dl = load_datalist(path)
    assert math.isnan(dl["training"][0]["annotators"]["B"][2][0]) and dl["test"][0]["annotators"]["B"][2] == [34.0, 35.0]
    # the training pipeline does not see them (collation, transforms); the benchmark can ask for them
    assert "annotators" not in datalist_section(dl, "test")[0]
    arrays = datalist_section(dl, "training", annotators=True)[0]["annotators"]
    assert arrays["A"].shape == (3, 2) and arrays["A"].dtype == np.float32 and np.isnan(arrays["B"][2]).all()

    def bad(annotators, match):
        doc = {"landmark_names": NAMES, "test": [{"image": "x.png", "landmarks": [[1, 2]] * 3, "annotators": annotators}]}
        with pytest.raises(DatalistError, match=match):
            validate_datalist(doc)

    bad({"A": [[1, 2]] * 2}, r"'annotators'\['A'\]: has 2 landmarks, expected 3")
    bad({"A": [[1, 2], [1, 2], [1, 2, 3]]}, r"'annotators'\['A'\]: mixes 2D and 3D")
    bad({"A": [[1, 2, 3]] * 3}, r"'annotators'\['A'\] has 3D points, 'landmarks' has 2D")
    bad({"A": [[1, "x"]] * 3}, r"'annotators'\['A'\]: expected null or 2 finite numbers")
    bad([[1, 2]] * 3, "'annotators' must be a non-empty object")
    bad({}, "'annotators' must be a non-empty object")


# ============================================================================================ baseline helper


def test_mean_position_baseline_with_missing_landmarks(tmp_path):
    doc = {
        "landmark_names": NAMES,
        "training": [
            {"image": "t1.png", "landmarks": [[0, 0], None, [10, 10]], "spacing": [0.5, 0.5]},
            {"image": "t2.png", "landmarks": [[2, 0], [5, 5], None], "spacing": [0.5, 0.5]},
        ],
        "validation": [
            {"image": "v1.png", "landmarks": [[1, 4], None, [10, 13]], "spacing": [0.5, 0.5]},  # 4 and 3 px
            {"image": "v2.png", "landmarks": [[1, 0], [5, 15], None], "spacing": [0.25, 0.25]},  # 0 and 10 px
        ],
    }
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(doc))
    assert mean_position_baseline(path, "validation") == pytest.approx(np.mean([2.0, 1.5, 0.0, 2.5]))


# ============================================================================================ benchmark (unit)


def _bench_datalist(tmp_path: Path) -> Path:
    items = _ann_items(tmp_path)
    return write_datalist(tmp_path / "dl.json", NAMES, items[:1], items[:1], items)


def test_benchmark_refuses_the_selection_section(tmp_path, bench):
    path = _bench_datalist(tmp_path)
    dl = load_datalist(path)
    with pytest.raises(ValueError, match="refusing to report on 'validation': the bundles select model.pt on it"):
        bench.check_report_section(dl, "validation")
    assert len(bench.check_report_section(dl, "test")) == 2
    empty = write_datalist(tmp_path / "two_way.json", NAMES, _ann_items(tmp_path), _ann_items(tmp_path)[:1])
    with pytest.raises(ValueError, match="no 'test' items: write a three-way split"):
        bench.benchmark(str(empty), out=str(tmp_path / "b"), bundles="x")
    with pytest.raises(ValueError, match="refusing to report on 'validation'"):
        bench.benchmark(str(path), out=str(tmp_path / "b"), bundles="x", section="validation")
    assert not (tmp_path / "b").exists()  # refused before anything ran


def test_human_reference_rows(tmp_path, bench):
    h = bench.human_reference(_bench_datalist(tmp_path), "test")
    assert h["annotators"] == ["A", "B"] and h["n_images"] == 2
    rows = h["rows"]
    ab, third = rows["A vs B"], rows["third annotator vs mean (expected)"]
    assert ab["n_points"] == 5 and ab["n_missing_gt"] == 1  # menton of image a: only A placed it
    assert ab["mre_px"] == pytest.approx(5.0) and ab["mre_mm"] == pytest.approx(2.5)
    assert ab["sdr"]["2.5"] == pytest.approx(100.0) and ab["sdr"]["2.0"] == pytest.approx(0.0)
    for who in ("A", "B"):  # each annotator is half the distance from the mean, over the same pairs
        assert rows[f"{who} vs mean"]["mre_px"] == pytest.approx(2.5) and rows[f"{who} vs mean"]["n_points"] == 5
    assert third["mre_mm"] == pytest.approx(2.5 * math.sqrt(0.75)) and third["n_points"] == 5
    assert third["per_landmark"][2]["n"] == 1 and third["sdr"]["2.0"] == pytest.approx(0.0)
    assert third["sdr"]["2.5"] == pytest.approx(100.0)
    # no annotators: no human rows
    item = {"image": "x.png", "landmarks": [[1, 1]] * 3}
    plain = write_datalist(tmp_path / "plain.json", NAMES, [item], [], [item])
    assert bench.human_reference(plain, "test") is None


def _fake_predictions(folder: Path, dl: dict, shift: tuple[float, float]) -> None:
    for it in dl["test"]:
        pred = np.asarray(it["annotators"]["A"], dtype=float) + shift
        pred[np.isnan(pred)] = 0.0  # a prediction for every landmark
        write_prediction_json(folder, prediction_record(it["image"], it["spacing"], pred, NAMES, analysis=False))


def test_score_against_each_annotator(tmp_path, bench):
    path = _bench_datalist(tmp_path)
    preds = tmp_path / "preds"
    _fake_predictions(preds, load_datalist(path), (0.0, 0.0))  # predict annotator A exactly
    s = bench.score_against_annotators(path, "test", preds, tmp_path / "scores")
    assert set(s) == {bench.GROUND_TRUTH, "A", "B"}
    assert s["A"]["mre_px"] == pytest.approx(0.0) and s["A"]["n_points"] == 6
    assert s["B"]["mre_px"] == pytest.approx(5.0) and s["B"]["n_points"] == 5 and s["B"]["n_missing_gt"] == 1
    # ground truth = mean where both placed it (2.5 px), A's own point where only A did (0 px)
    assert s[bench.GROUND_TRUTH]["mre_px"] == pytest.approx((5 * 2.5 + 0) / 6)
    assert (tmp_path / "scores" / "vs_B" / "metrics.json").is_file()


def test_benchmark_run_reports_on_test_with_human_rows(tmp_path, bench, monkeypatch):
    """The benchmark's orchestration with the bundle phases replaced by fakes (no training in a unit test)."""
    path = _bench_datalist(tmp_path)
    dl = load_datalist(path)
    calls = []

    def fake_phase(config_file, run_id, overrides, log, time_forward=False, env_extra=None):
        if run_id == "training":
            assert env_extra == {"CUSTOM_MONAI_BUDGET_CLOCK": "process"}
        calls.append((run_id, overrides))
        if run_id == "evaluating":
            out = Path(overrides["output_dir"])
            out.mkdir(parents=True)
            per = [{"name": n, "mre_mm": 1.0 + i, "mre_px": 2.0 + 2 * i} for i, n in enumerate(NAMES)]
            (out / "metrics.json").write_text(json.dumps(
                {"n_images": 2, "mre_px": 2.0, "sd_px": 1.0, "mre_mm": 1.0, "sd_mm": 0.5, "median_mm": 1.0,
                 "sdr": {"2.0": 90.0, "2.5": 95.0, "3.0": 100.0, "4.0": 100.0}, "per_landmark": per}
            ))
        if run_id == "inference":
            assert sorted(p.name for p in Path(overrides["input_dir"]).iterdir()) == ["a.png", "b.png"]
            _fake_predictions(Path(overrides["output_dir"]), dl, (3.0, 4.0))
        return {"setup_s": 0.0, "run_s": 2.0, "max_rss_mb": 100.0, "forward_s": 1.0}

    monkeypatch.setattr(bench, "_phase", fake_phase)
    monkeypatch.setattr(bench, "_count_parameters", lambda ckpt: {"network": 1_000_000, "total": 1_000_000})
    res = bench.benchmark(str(path), out=str(tmp_path / "bench"), minutes=0.1, bundles="global_local_fcnn_ceph2d")
    evals = [o for r, o in calls if r == "evaluating"]
    assert evals and all(o["eval_section"] == "test" for o in evals)
    train = [o for r, o in calls if r == "training"][0]
    assert train["max_train_minutes"] == 0.1 and train["max_epochs"] == 100000
    row = res["bundles"]["global_local_fcnn_ceph2d"]
    assert row["vs_annotators"]["B"]["mre_px"] == pytest.approx(0.0)  # predicted A + (3, 4) = B
    assert row["vs_annotators"]["A"]["mre_px"] == pytest.approx(5.0)
    assert res["section"] == "test" and res["n_section"] == 2 and res["human"]["annotators"] == ["A", "B"]
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "reported on `test` (n = 2), model.pt selected on `validation` (n = 1)" in md
    assert "| human | A vs B | 5.00 | 2.50 (0.00) |" in md
    assert "| human | third annotator vs mean (expected) | 4.33 | 2.17 (0.00) |" in md
    assert "independent and identically distributed" in md
    assert "| bundle | vs ground truth | vs A | vs B |" in md
    assert "Per-landmark MRE (mm) on `test`" in md and "| 3 | menton | 3.00 | 2.50 | 2.17 |" in md
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["human"]["n_images"] == 2


# ============================================================================================ ISBI 2015 layouts


def _isbi_release(root: Path, senior: dict, junior: dict, numbers: list[int]) -> None:
    folders = {1: "TrainingData", 151: "Test1Data", 301: "Test2Data"}
    for number in numbers:
        folder = root / "RawImage" / folders[max(k for k in folders if k <= number)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("1", (1935, 2400)).save(folder / f"{number:03d}.bmp")
    for doctor, table in (("senior", senior), ("junior", junior)):
        d = root / "AnnotationsByMD" / f"400_{doctor}"
        d.mkdir(parents=True, exist_ok=True)
        for number in numbers:
            lines = [f"{int(x)},{int(y)}" for x, y in table[f"{number:03d}"]] + ["1", "3", "2", "1"]
            (d / f"{number:03d}.txt").write_text("\r\n".join(lines) + "\r\n")


def test_isbi_original_release_challenge_protocol(data_dir, tmp_path):
    setup = data_dir / "isbi2015_annotations" / "setup"
    senior, junior = read_isbi_csv(setup / "all_senior.csv"), read_isbi_csv(setup / "all_junior.csv")
    numbers = list(range(1, 11)) + [151, 152, 301]
    _isbi_release(tmp_path, senior, junior, numbers)
    dl = build_isbi2015(tmp_path, val_fraction=0.2, seed=1)  # challenge protocol, mean ground truth by default
    names = {s: [Path(it["image"]).stem for it in dl[s]] for s in ("training", "validation", "test")}
    assert (len(names["training"]), len(names["validation"]), names["test"]) == (8, 2, ["151", "152"])
    assert sorted(names["training"] + names["validation"]) == [f"{i:03d}" for i in range(1, 11)]
    assert dl["split"] == {"protocol": "challenge", "val_fraction": 0.2, "seed": 1}
    it = dl["test"][0]
    np.testing.assert_allclose(it["landmarks"], (senior["151"] + junior["151"]) / 2)
    np.testing.assert_array_equal(it["annotators"]["senior"], senior["151"])
    np.testing.assert_array_equal(it["annotators"]["junior"], junior["151"])
    absent = [w for w in dl["warnings"] if "not present" in w]
    assert len(absent) == 1 and "387 of the 400" in absent[0] and "test2 301-400: 99" in absent[0]
    assert any("1 Test2 images (301-400) present but not used" in w for w in dl["warnings"])
    junior_gt = build_isbi2015(tmp_path, ground_truth="junior")
    np.testing.assert_array_equal(junior_gt["test"][1]["landmarks"], junior["152"])
    official = build_isbi2015(tmp_path, protocol="official")
    assert [len(official[s]) for s in ("training", "validation", "test")] == [10, 2, 1]
    with pytest.raises(ValueError, match="protocol must be one of"):
        build_isbi2015(tmp_path, protocol="test1")
    with pytest.raises(LandmarkFileError, match="no ISBI 2015 annotations found"):
        build_isbi2015(tmp_path / "RawImage")


def test_isbi_shared_layout_and_senior_vs_junior_on_test1(data_dir, tmp_path, prepare, bench):
    out = tmp_path / "isbi.json"
    line = prepare.prepare(
        "isbi2015", str(data_dir / "isbi2015"), str(out), annotations=str(data_dir / "isbi2015_annotations")
    )
    assert "training=135 validation=15 test=150 landmarks=19" in line and "warnings=1" in line
    dl = load_datalist(out, check_images=True)
    assert dl["ground_truth"] == "mean" and dl["landmark_names"] == list(ISBI_LANDMARK_NAMES)
    assert dl["warnings"] == [f"{data_dir / 'isbi2015'}: 100 of the 400 ISBI 2015 images not present (test2 301-400: 100); skipped"]
    stems = {s: sorted(Path(it["image"]).stem for it in dl[s]) for s in ("training", "validation", "test")}
    assert stems["test"] == [f"{i:03d}" for i in range(151, 301)]  # Test1, as the papers report
    assert sorted(stems["training"] + stems["validation"]) == [f"{i:03d}" for i in range(1, 151)]
    it = dl["test"][0]
    assert it["spacing"] == [0.1, 0.1] and Path(it["image"]).name == "151.jpg"
    s, j = np.array(it["annotators"]["senior"]), np.array(it["annotators"]["junior"])
    np.testing.assert_allclose(it["landmarks"], (s + j) / 2)
    # the default finds the annotations beside the image folder
    assert "test=150" in prepare.prepare("isbi2015", str(data_dir / "isbi2015"), str(tmp_path / "b.json"), ground_truth="senior")
    assert load_datalist(tmp_path / "b.json")["test"][0]["landmarks"] == it["annotators"]["senior"]
    # senior vs junior on Test1: README says 2.36 mm, SDR2 55 %
    h = bench.human_reference(out, "test")
    ab = h["rows"]["senior vs junior"]
    assert ab["n_points"] == 150 * 19
    assert ab["mre_mm"] == pytest.approx(2.363, abs=0.002) and ab["sdr"]["2.0"] == pytest.approx(55.5, abs=0.1)
    with pytest.raises(ValueError, match="option --test_fraction does not apply"):
        prepare.prepare("isbi2015", str(data_dir / "isbi2015"), str(tmp_path / "c.json"), test_fraction=0.2)


# ============================================================================================ Hamedan (real)


def test_hamedan_three_way_split_and_annotators(data_dir, tmp_path, prepare, bench):
    out = tmp_path / "hamedan.json"
    line = prepare.prepare("hamedan", str(data_dir / "hamedan_ceph"), str(out))
    assert "training=60 validation=20 test=20 landmarks=19" in line
    dl = load_datalist(out, check_images=True)
    assert dl["split"] == {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
    stems = {s: {Path(it["image"]).stem for it in dl[s]} for s in ("training", "validation", "test")}
    assert set.union(*stems.values()) == {f"{i:03d}" for i in range(1, 101)} and sum(map(len, stems.values())) == 100
    # the validation images are the former 80/20 split's: the test images were never used for model selection
    two_way = build_hamedan(data_dir / "hamedan_ceph", test_fraction=0.0)
    assert stems["validation"] == {Path(it["image"]).stem for it in two_way["validation"]}
    for it in dl["test"]:
        assert set(it["annotators"]) == {"farhadifar", "mollabashi"}
        ann = [np.array(it["annotators"][a]) for a in ("farhadifar", "mollabashi")]
        np.testing.assert_allclose(it["landmarks"], merge_annotators(ann), atol=1e-6)
    # human rows over all 100 images: the README's inter-observer figure (11.4 px)
    all_items = [it for s in ("training", "validation", "test") for it in dl[s]]
    everything = write_datalist(tmp_path / "all.json", dl["landmark_names"], [], [], all_items)
    ab = bench.human_reference(everything, "test")["rows"]["farhadifar vs mollabashi"]
    assert ab["mre_px"] == pytest.approx(11.41, abs=0.01) and ab["n_points"] == 100 * 19 - 8
    h = bench.human_reference(out, "test")["rows"]
    third, ab_test = h["third annotator vs mean (expected)"], h["farhadifar vs mollabashi"]
    assert third["mre_px"] == pytest.approx(math.sqrt(0.75) * ab_test["mre_px"])


# ============================================================================================ real 3D CT (markups)


def test_cmf_ct3d_datalist_on_all_91_cases(data_dir, tmp_path, prepare):
    import nibabel as nib

    root = data_dir / "cmf_ct3d"
    out = tmp_path / "ct.json"
    line = prepare.prepare("markups", str(root), str(out))
    assert "training=55 validation=18 test=18 landmarks=24 space=world" in line and "warnings=2" in line
    dl = load_datalist(out, check_images=True)
    assert dl["landmark_names"] == CMF_NAMES and len(dl["test"]) >= 18
    items = [it for s in ("training", "validation", "test") for it in dl[s]]
    assert len(items) == 91 and len({it["image"] for it in items}) == 91
    # the two known defects: a warning naming the case and the point, then missing
    w = sorted(dl["warnings"])
    assert "case_30_cbct_patient.mrk.json: landmark 'Gb'" in w[0] and "outside the volume" in w[0]
    assert "case_40_cbct_patient.mrk.json: landmark 'Ft-R'" in w[1] and "set to missing" in w[1]
    n_missing = n_defined_in_files = 0
    for it in items:
        case = Path(it["image"]).name[: -len(".nii.gz")]
        names, raw = read_markups(root / f"{case}.mrk.json")
        assert names == CMF_NAMES, case
        img = nib.load(it["image"])  # header only; nibabel's affine maps voxels to RAS
        ras = np.asarray(raw) * [-1.0, -1.0, 1.0]  # LPS -> RAS
        ijk = (np.linalg.inv(img.affine) @ np.c_[ras, np.ones(len(ras))].T).T[:, :3]
        defined = np.all(np.isfinite(raw), axis=1)
        n_defined_in_files += int(defined.sum())
        inside = np.all((ijk > -0.5) & (ijk < np.asarray(img.shape[:3]) - 0.5), axis=1)
        lm = np.asarray(it["landmarks"])
        # every point the datalist keeps lies inside its volume; every other defined point is one of the defects
        np.testing.assert_allclose(lm[defined & inside], raw[defined & inside], atol=1e-6)
        assert np.isnan(lm[~(defined & inside)]).all()
        for k in np.flatnonzero(defined & ~inside):
            assert (case, CMF_NAMES[k]) in {("case_30_cbct_patient", "Gb"), ("case_40_cbct_patient", "Ft-R")}
            assert round(ijk[k, 2]) == img.shape[2]  # one slice past the last (z index 82 of 0-81)
        n_missing += int(np.isnan(lm[:, 0]).sum())
        assert np.allclose(it["spacing"], 1.6, atol=1e-4)
    assert n_missing == 91 * 24 - n_defined_in_files + 2
    assert 0.08 < n_missing / (91 * 24) < 0.12  # "about 10 % of all points"
