"""scripts/score.py end to end: a temporary datalist and prediction folder in the bundle format."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from custom_monai.handlers.writers import BOXPLOT_PNG, PREDICTIONS_CSV, prediction_record, write_prediction_json

NAMES = ["Sella", "Nasion", "Menton"]
NAN = np.nan


@pytest.fixture(scope="module")
def score_module(repo_root):
    spec = importlib.util.spec_from_file_location("score_script", repo_root / "scripts" / "score.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pixel_case(tmp_path):
    """Three test images: 'a' (spacing 0.5), 'b' (no spacing in the datalist), 'c' (no prediction file)."""
    datalist = {
        "landmark_names": NAMES,
        "coordinate_space": "pixel",
        "training": [{"image": "images/t.png", "landmarks": [[0, 0], [0, 0], [0, 0]]}],
        "test": [
            {"image": "images/a.png", "landmarks": [[10, 10], [20, 20], None], "spacing": [0.5, 0.5]},
            {"image": "images/b.png", "landmarks": [[0, 0], [5, 5], [7, 7]]},
            {"image": "images/c.png", "landmarks": [[1, 1], [2, 2], [3, 3]]},
        ],
    }
    dl = tmp_path / "data" / "datalist.json"
    dl.parent.mkdir()
    dl.write_text(json.dumps(datalist))
    pred_dir = tmp_path / "preds"
    # a: errors 5 px (3-4-5), 0 px, gt missing; b: 10 px (6-8-10), not found, 1 px
    write_prediction_json(pred_dir, prediction_record("/in/a.png", None, [[13, 14], [20, 20], [1, 1]], NAMES))
    write_prediction_json(pred_dir, prediction_record("/in/b.png", None, [[6, 8], [NAN, NAN], [7, 8]], NAMES))
    write_prediction_json(pred_dir, prediction_record("/in/zzz.png", None, [[0, 0]] * 3, NAMES))  # not in the datalist
    return dl, pred_dir


def test_score_pixel_datalist(tmp_path, score_module):
    dl, pred_dir = _pixel_case(tmp_path)
    out = tmp_path / "report" / "metrics.json"
    with pytest.warns(UserWarning, match="no prediction file"):
        s = score_module.score(str(dl), "test", str(pred_dir), str(out), spacing=0.1, quiet=True)
    assert s["missing_predictions"] == ["c"]
    assert s["n_images"] == 3 and s["n_points"] == 8 and s["n_missing_gt"] == 1
    assert s["n_not_found"] == 1 + 3  # b's Nasion and all of c
    found_px = np.array([5.0, 0.0, 10.0, 1.0])
    found_mm = np.array([2.5, 0.0, 1.0, 0.1])  # a at 0.5 mm/px (its own), b at the --spacing 0.1
    assert s["mre_px"] == pytest.approx(found_px.mean()) and s["mre_mm"] == pytest.approx(found_mm.mean())
    assert s["sd_mm"] == pytest.approx(np.std(found_mm, ddof=1))
    assert s["sdr"]["2.0"] == pytest.approx(100 * 3 / 8) and s["sdr"]["2.5"] == pytest.approx(100 * 4 / 8)
    assert s["per_landmark"][0]["name"] == "Sella" and s["per_landmark"][0]["mre_mm"] == pytest.approx(1.75)

    on_disk = json.loads(out.read_text())
    assert on_disk["mre_mm"] == pytest.approx(s["mre_mm"]) and on_disk["coordinate_space"] == "pixel"
    assert (out.parent / BOXPLOT_PNG).stat().st_size > 1000
    with open(out.parent / PREDICTIONS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["id"] for r in rows} == {"a", "b", "c"}
    assert [r["status"] for r in rows if r["id"] == "c"] == ["not_found"] * 3


def test_score_without_spacing_is_px_only(tmp_path, score_module):
    dl, pred_dir = _pixel_case(tmp_path)
    data = json.loads(dl.read_text())
    for it in data["test"]:
        it.pop("spacing", None)
    data["test"] = data["test"][:2]
    dl.write_text(json.dumps(data))
    s = score_module.score(str(dl), "test", str(pred_dir), str(tmp_path / "m.json"), quiet=True)
    assert s["mre_mm"] is None and s["sdr"]["2.0"] is None and s["mre_px"] == pytest.approx(4.0)
    assert s["missing_predictions"] == []


def test_score_world_datalist_3d(tmp_path, score_module):
    names = ["p1", "p2"]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({
        "landmark_names": names,
        "coordinate_space": "world",
        "test": [{"image": "vols/case1.nii.gz", "landmarks": [[-10.0, 5.0, 30.0], [0.0, 0.0, 0.0]]}],
    }))
    pred_dir = tmp_path / "p"
    rec = prediction_record(
        "case1.nii.gz", [0.5, 0.5, 0.5], [[100.0, 100.0, 100.0], [1.0, 1.0, 1.0]], names,
        world_points=[[-10.0, 5.0, 33.0], [0.0, 2.0, 0.0]],
    )
    write_prediction_json(pred_dir, rec)
    s = score_module.score(str(dl), "test", str(pred_dir), str(tmp_path / "m.json"), quiet=True)
    # errors from the world coordinates (3 mm and 2 mm), not from the voxel indices
    assert s["mre_mm"] == pytest.approx(2.5) and s["mre_px"] is None
    assert s["sdr"] == {"2.0": 50.0, "2.5": 50.0, "3.0": 100.0, "4.0": 100.0}


def test_score_bad_inputs_name_the_problem(tmp_path, score_module):
    dl, pred_dir = _pixel_case(tmp_path)
    data = json.loads(dl.read_text())
    data["test"][1]["landmarks"] = [[0, 0], [5, 5]]
    dl.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"datalist\.json \[test\]\[1\].*3 points"):
        score_module.score(str(dl), "test", str(pred_dir), str(tmp_path / "m.json"), quiet=True)
    with pytest.raises(ValueError, match="no section 'validation'"):
        score_module.score(str(dl), "validation", str(pred_dir), str(tmp_path / "m.json"), quiet=True)
    data["test"][1]["landmarks"] = [[0, 0], [5, 5], [1, 1]]
    data["test"].append({"image": "other/a.png", "landmarks": None})
    dl.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="id 'a' already used"):
        score_module.score(str(dl), "test", str(pred_dir), str(tmp_path / "m.json"), quiet=True)


@pytest.mark.slow  # a fresh interpreter importing torch: ~4 s
def test_score_command_line(tmp_path, repo_root):
    dl, pred_dir = _pixel_case(tmp_path)
    out = tmp_path / "cli" / "metrics.json"
    r = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "score.py"), "--datalist", str(dl), "--section", "test",
         "--predictions", str(pred_dir), "--out", str(out), "--spacing", "0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "MRE 0.900 mm" in r.stdout and "SDR 2.0 mm: 37.50%" in r.stdout
    assert "no prediction file" in r.stderr
    assert json.loads(out.read_text())["missing_predictions"] == ["c"]


def test_compare_variants_counts_moved_and_rescued(tmp_path):
    """scripts/compare_variants.py: per landmark, correct->wrong and wrong->correct counts and outliers."""
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("compare_variants", Path(__file__).parents[1] / "scripts" / "compare_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    header = "id,index,name,pred_x,pred_y,gt_x,gt_y,error_px,error_mm,status\n"
    before = {("a", "S"): 1.0, ("b", "S"): 3.0, ("c", "S"): 5.0, ("a", "N"): 1.5, ("b", "N"): 0.5, ("c", "N"): ""}
    after = {("a", "S"): 2.5, ("b", "S"): 1.0, ("c", "S"): 1.9, ("a", "N"): 4.5, ("b", "N"): 0.4, ("c", "N"): 0.3}
    for name, table in (("before", before), ("after", after)):
        rows = "".join(f"{i},1,{n},0,0,0,0,,{e},ok\n" for (i, n), e in table.items())
        (tmp_path / f"{name}.csv").write_text(header + rows)
    res = mod.compare(str(tmp_path / "before.csv"), str(tmp_path / "after.csv"), threshold=2.0, outlier=4.0, out=str(tmp_path / "t.md"))
    by = {r["landmark"]: r for r in res["landmarks"]}
    assert (by["S"]["moved_away"], by["S"]["rescued"], by["S"]["outliers_before"], by["S"]["outliers_after"]) == (1, 2, 1, 0)
    assert (by["N"]["moved_away"], by["N"]["rescued"], by["N"]["outliers_before"], by["N"]["outliers_after"]) == (1, 1, 1, 1)
    assert res["total"]["moved_away"] == 2 and res["total"]["rescued"] == 3
    assert "| S | 3.00 | 1.80 | 1 | 2 | 1 | 0 |" in (tmp_path / "t.md").read_text()
    (tmp_path / "short.csv").write_text(header + "a,1,S,0,0,0,0,0,1.0,ok\n")
    with pytest.raises(ValueError, match="same"):
        mod.compare(str(tmp_path / "before.csv"), str(tmp_path / "short.csv"))


def test_error_groups_splits_by_id(tmp_path):
    """scripts/error_groups.py: MRE/SDR per group of image ids; missing ground truth left out, not-found = miss."""
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("error_groups", Path(__file__).parents[1] / "scripts" / "error_groups.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    header = "id,index,name,pred_x,pred_y,gt_x,gt_y,error_px,error_mm,status\n"
    rows = [("c1_ct_x", "1.0", "ok"), ("c1_ct_x", "3.0", "ok"), ("c2_cbct_y", "5.0", "ok"), ("c2_cbct_y", "", "not_found"),
            ("c2_cbct_y", "", "missing_gt"), ("odd", "2.0", "ok")]
    (tmp_path / "p.csv").write_text(header + "".join(f"{i},1,S,0,0,0,0,,{e},{s}\n" for i, e, s in rows))
    res = mod.error_groups(str(tmp_path / "p.csv"), '{"CBCT": "_cbct", "CT": "_ct_"}')
    assert res["CT"]["mre"] == pytest.approx(2.0) and res["CT"]["sdr"]["2.0"] == pytest.approx(50.0)
    assert (res["CBCT"]["n_points"], res["CBCT"]["n_not_found"], res["CBCT"]["mre"]) == (2, 1, 5.0)
    assert res["CBCT"]["sdr"]["4.0"] == 0.0 and res["other"]["n_images"] == 1
