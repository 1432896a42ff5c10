"""Writers: prediction JSON (format and round trip), predictions CSV, overlay PNG, box plot, metrics.json."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from custom_monai.handlers.writers import (
    BOXPLOT_PNG,
    METRICS_JSON,
    PREDICTIONS_CSV,
    image_id,
    prediction_record,
    read_prediction_json,
    write_boxplot,
    write_evaluation_report,
    write_metrics_json,
    write_overlay_png,
    write_prediction_json,
    write_predictions_csv,
)
from custom_monai.metrics import LandmarkErrorAccumulator

NAN = np.nan


@pytest.mark.parametrize(
    "path,expected",
    [
        ("data/images/001.png", "001"),
        ("/x/ct_scan.nii.gz", "ct_scan"),
        ("case.NII.GZ", "case"),
        ("points.mrk.json", "points"),
        ("CHNCXR_0001_0.png", "CHNCXR_0001_0"),
        ("vol.v2.nrrd", "vol.v2"),
        ("noext", "noext"),
    ],
)
def test_image_id(path, expected):
    assert image_id(path) == expected


def test_prediction_json_2d_format_and_round_trip(tmp_path):
    pts = np.array([[10.5, 20.25], [NAN, NAN], [3.0, 4.0]])
    rec = prediction_record(
        "in/001.png", [0.1, 0.1], torch.as_tensor(pts), ["Sella", "Nasion", "Orbitale"],
        confidence=np.array([0.9, 0.05, NAN]), extra={"method": "test", "time_s": np.float32(1.5)},
    )
    path = write_prediction_json(tmp_path / "out", rec)
    assert path == tmp_path / "out" / "001.json"
    raw = json.loads(path.read_text())
    assert raw["image"] == "in/001.png" and raw["spacing"] == [0.1, 0.1] and raw["method"] == "test"
    assert raw["time_s"] == 1.5
    assert raw["landmarks"][0] == {"index": 1, "name": "Sella", "x": 10.5, "y": 20.25, "confidence": 0.9}
    assert raw["landmarks"][1] == {"index": 2, "name": "Nasion", "x": None, "y": None, "confidence": 0.05}
    assert raw["landmarks"][2]["confidence"] is None and "z" not in raw["landmarks"][2]
    assert not list((tmp_path / "out").glob("*.tmp"))  # temp file renamed away

    image, back, names = read_prediction_json(path)
    assert image == "in/001.png" and names == ["Sella", "Nasion", "Orbitale"]
    np.testing.assert_array_equal(back, pts)  # NaN in the same place, values exact


def test_prediction_json_3d_world(tmp_path):
    vox = np.array([[1.0, 2.0, 3.0], [NAN, NAN, NAN]])
    world = np.array([[-10.0, 20.0, 30.5], [0.0, 0.0, 0.0]])
    rec = prediction_record("ct.nii.gz", (0.5, 0.5, 1.0), vox, ["a", "b"], world_points=world)
    path = write_prediction_json(tmp_path, rec)
    assert path.name == "ct.json"
    raw = json.loads(path.read_text())
    assert raw["landmarks"][0]["z"] == 3.0 and raw["landmarks"][0]["world"] == {"x": -10.0, "y": 20.0, "z": 30.5}
    assert raw["landmarks"][1]["world"] == {"x": None, "y": None, "z": None}  # not found: no world point either
    _, p, _ = read_prediction_json(path)
    np.testing.assert_array_equal(p, vox)
    _, w, _ = read_prediction_json(path, world=True)
    np.testing.assert_array_equal(w[0], world[0])
    assert np.isnan(w[1]).all()


def test_prediction_record_and_read_errors(tmp_path):
    with pytest.raises(ValueError, match="2 points but 3 landmark names"):
        prediction_record("a.png", None, np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="overwrite"):
        prediction_record("a.png", None, np.zeros((1, 2)), ["a"], extra={"landmarks": []})
    bad = tmp_path / "bad.json"
    twice = {"index": 1, "x": 1, "y": 2}
    bad.write_text(json.dumps({"image": "x", "landmarks": [twice, twice]}))
    with pytest.raises(ValueError, match=r"bad\.json.*index 1 appears more than once"):
        read_prediction_json(bad)
    bad.write_text(json.dumps({"image": "x", "landmarks": [{"index": 1, "x": "1", "y": 2}]}))
    with pytest.raises(ValueError, match=r"bad\.json.*index 1.*numbers"):
        read_prediction_json(bad)
    bad.write_text(json.dumps({"image": "x", "landmarks": [{"index": 1, "x": 1.0, "y": 2.0}]}))
    with pytest.raises(ValueError, match="no 'world'"):
        read_prediction_json(bad, world=True)


def test_predictions_csv_columns_and_values(tmp_path):
    acc = LandmarkErrorAccumulator(["A", "B", "C"])
    acc.add("001", [[3.0, 4.0], [NAN, NAN], [1.0, 1.0]], [[0.0, 0.0], [5.0, 5.0], [NAN, NAN]], spacing=[0.1, 0.1])
    path = write_predictions_csv(tmp_path / PREDICTIONS_CSV, acc.records())
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = ["id", "index", "name", "pred_x", "pred_y", "gt_x", "gt_y", "error_px", "error_mm", "status"]
    assert list(rows[0]) == cols
    assert rows[0]["id"] == "001" and rows[0]["index"] == "1" and rows[0]["name"] == "A"
    assert float(rows[0]["error_px"]) == 5.0 and float(rows[0]["error_mm"]) == pytest.approx(0.5)
    assert rows[1]["pred_x"] == "" and rows[1]["error_mm"] == "inf" and rows[1]["status"] == "not_found"
    assert rows[2]["gt_x"] == "" and rows[2]["error_px"] == "" and rows[2]["status"] == "missing_gt"


def _red(rgb):
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)


def _green(rgb):
    return (rgb[..., 1] > 180) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)


def test_overlay_png_orientation_and_colours(tmp_path):
    # MONAI's (W, H) array: W = 300 columns, H = 200 rows; a gradient along x so the image is not flat
    img = np.tile(np.linspace(0, 1000, 300, dtype=np.float32)[:, None], (1, 200))
    pred = np.array([[250.0, 50.0], [NAN, NAN]])
    gt = np.array([[40.0, 160.0], [100.0, 100.0]])
    path = write_overlay_png(tmp_path / "o.png", torch.as_tensor(img)[None], pred, gt, names=["Sella", "Nasion"])
    png = Image.open(path)
    assert png.size == (300, 200)  # PIL size is (width, height)
    rgb = np.asarray(png.convert("RGB")).astype(int)  # (rows, cols, 3)
    assert _red(rgb[45:56, 245:256]).any()  # row 50, column 250
    assert not _red(rgb[150:171, 30:51]).any()
    assert _green(rgb[155:166, 35:46]).any()
    assert _green(rgb[95:106, 95:106]).any()  # gt of the not-found landmark still drawn
    # grey background keeps the intensity gradient along columns (x)
    assert rgb[190, 5, 0] < rgb[190, 150, 0] < rgb[190, 295, 0]


def test_overlay_png_downscales_large_images(tmp_path):
    img = np.zeros((2000, 1000), np.uint8)  # W=2000, H=1000
    pred = np.array([[1800.0, 600.0]])
    path = write_overlay_png(tmp_path / "big.png", img, pred)
    png = Image.open(path)
    assert png.size == (1024, 512)
    rgb = np.asarray(png.convert("RGB")).astype(int)
    x, y = round(1800.5 * 0.512 - 0.5), round(600.5 * 0.512 - 0.5)
    assert _red(rgb[y - 3 : y + 4, x - 3 : x + 4]).any()
    assert not _red(rgb[:, : x - 20]).any()


def test_boxplot_png(tmp_path):
    rng = np.random.default_rng(1)
    e = rng.gamma(2.0, 1.0, (20, 5))
    e[0, 0], e[1, 1] = NAN, np.inf
    e[:, 4] = NAN  # a landmark without any ground truth is an empty column, not a crash
    path = write_boxplot(tmp_path / BOXPLOT_PNG, e, ["Sella", "Nasion", "Orbitale", "Porion", "A"], unit="mm")
    png = Image.open(path)
    assert png.format == "PNG" and png.size[0] >= 600 and png.size[1] >= 400
    assert np.asarray(png.convert("L")).std() > 5  # something was drawn


def test_metrics_json_and_evaluation_report(tmp_path):
    summary = {"mre_mm": float("nan"), "sdr": {"2.0": np.float64(50.0)}, "n": np.int64(3)}
    p = write_metrics_json(tmp_path / "m.json", summary)
    assert json.loads(p.read_text()) == {"mre_mm": None, "sdr": {"2.0": 50.0}, "n": 3}

    acc = LandmarkErrorAccumulator(["A", "B"])
    acc.add("1", [[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], spacing=[0.5, 0.5])
    acc.add("2", [[0.0, 2.0], [NAN, NAN]], [[0.0, 0.0], [0.0, 0.0]], spacing=[0.5, 0.5])
    s = write_evaluation_report(tmp_path / "eval", acc, extra={"missing_predictions": []})
    for name in (METRICS_JSON, PREDICTIONS_CSV, BOXPLOT_PNG):
        assert (tmp_path / "eval" / name).is_file()
    on_disk = json.loads((tmp_path / "eval" / METRICS_JSON).read_text())
    assert on_disk == json.loads(json.dumps(s))
    assert on_disk["mre_mm"] == pytest.approx((2.5 + 0.5 + 1.0) / 3) and on_disk["n_not_found"] == 1
    assert on_disk["missing_predictions"] == [] and math.isclose(on_disk["per_landmark"][0]["mre_px"], 3.5)
