"""2D dataset readers on the real data (Hamedan, ISBI CSV, hand, chest, CL-Detection) and on written fixtures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom_monai.data.chest import build_chest, read_normalised_points
from custom_monai.data.cldetection import (
    CLDETECTION_LANDMARK_NAMES,
    build_cldetection2023,
    read_cldetection_gt_csv,
    read_cldetection_txt,
)
from custom_monai.data.datalist import load_datalist
from custom_monai.data.errors import LandmarkFileError
from custom_monai.data.hamedan import build_hamedan, read_hamedan_annotations, read_labelme_points
from custom_monai.data.hand import build_hand
from custom_monai.data.isbi2015 import build_isbi2015, read_isbi_csv, read_isbi_txt
from custom_monai.data.readers import ISBI_LANDMARK_NAMES, get_builder, image_header, image_size_2d, merge_annotators

HAMEDAN_DEFECTS = {
    ("farhadifar", "002"): {"'l17' appears 2 times", "'l18' missing"},
    ("mollabashi", "002"): {"'l11' appears 2 times"},
    ("mollabashi", "009"): {"'l15' appears 2 times"},
    ("mollabashi", "010"): {"'l12' appears 2 times"},
    ("mollabashi", "064"): {"'l7' appears 2 times"},
    ("mollabashi", "086"): {"'l16' missing"},
    ("mollabashi", "098"): {"'l5' appears 2 times"},
}


def _load_script(repo_root: Path):
    spec = importlib.util.spec_from_file_location("prepare_data", repo_root / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------- Hamedan (real)


def test_hamedan_reports_exactly_the_known_defects(data_dir):
    root = data_dir / "hamedan_ceph"
    per = {a: read_hamedan_annotations(root, a) for a in ("farhadifar", "mollabashi")}
    assert all(len(v) == 100 for v in per.values())
    found = {}
    for a, table in per.items():
        for key, (pts, warns) in table.items():
            assert pts.shape == (19, 2)
            if warns:
                assert all(w.startswith(str(root / "annotations" / a / f"{key}.json")) for w in warns)
                found[(a, key)] = warns
    assert set(found) == set(HAMEDAN_DEFECTS)
    for k, expected in HAMEDAN_DEFECTS.items():
        assert len(found[k]) == len(expected)
        for frag in expected:
            assert any(frag in w for w in found[k]), (k, frag, found[k])
    # the defective labels are NaN, nothing else is
    f002 = per["farhadifar"]["002"][0]
    assert np.isnan(f002[16]).all() and np.isnan(f002[17]).all() and np.isfinite(np.delete(f002, [16, 17], 0)).all()
    assert np.isnan(per["mollabashi"]["086"][0][15]).all()
    n_nan = sum(int(np.isnan(p[:, 0]).sum()) for t in per.values() for p, _ in t.values())
    assert n_nan == 8


def test_hamedan_mean_datalist(data_dir, tmp_path):
    root = data_dir / "hamedan_ceph"
    dl = build_hamedan(root)  # mean, 0.2 + 0.2, seed 0
    assert (len(dl["training"]), len(dl["validation"]), len(dl["test"])) == (60, 20, 20)
    assert len(dl["warnings"]) == 8
    items = {Path(it["image"]).stem: it for s in ("training", "validation", "test") for it in dl[s]}
    assert sorted(items) == [f"{i:03d}" for i in range(1, 101)]
    f = read_labelme_points(root / "annotations" / "farhadifar" / "086.json")[0]
    m = read_labelme_points(root / "annotations" / "mollabashi" / "086.json")[0]
    lm = items["086"]["landmarks"]
    np.testing.assert_allclose(lm[15], f[15])  # only farhadifar placed l16 on 086
    np.testing.assert_allclose(lm[0], (f[0] + m[0]) / 2)
    assert items["001"]["spacing"] == [0.127, 0.127]
    # deterministic, and different seeds give different splits
    assert [it["image"] for it in build_hamedan(root)["validation"]] == [it["image"] for it in dl["validation"]]
    assert {it["image"] for it in build_hamedan(root, seed=1)["validation"]} != {it["image"] for it in dl["validation"]}
    single = build_hamedan(root, annotator="mollabashi", val_fraction=0.0, test_fraction=0.0)
    assert len(single["training"]) == 100 and len(single["warnings"]) == 6


def test_prepare_data_cli_hamedan(data_dir, tmp_path, repo_root):
    mod = _load_script(repo_root)
    out = tmp_path / "lists" / "hamedan.json"
    line = mod.prepare("hamedan", str(data_dir / "hamedan_ceph"), str(out))
    assert "training=60 validation=20 test=20 landmarks=19" in line and "warnings=8" in line and "missing=0" in line
    dl = load_datalist(out, check_images=True)
    assert dl["landmark_names"] == list(ISBI_LANDMARK_NAMES) and len(dl["warnings"]) == 8
    line = mod.prepare(
        "hamedan", str(data_dir / "hamedan_ceph"), str(out), annotator="farhadifar", val_fraction=0.1, seed=3,
        test_fraction=0.0,
    )
    assert "training=90 validation=10 test=0" in line and "missing=2" in line
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        mod.prepare("nope", str(tmp_path), str(out))
    with pytest.raises(ValueError, match="hand: option --annotator does not apply"):
        mod.prepare("hand", str(tmp_path), str(out), annotator="mean")


def test_prepare_data_command_line(data_dir, tmp_path, repo_root, capsys):
    """The fire command line (parsed in-process: a subprocess would re-import torch and MONAI)."""
    import fire

    mod = _load_script(repo_root)
    out = tmp_path / "dl.json"
    fire.Fire(mod.main, command=["chest", "--root", str(data_dir / "chest_shenzhen"), "--out", str(out), "--seed", "1"])
    assert f"chest: wrote {out}: training=9 validation=2 test=0 landmarks=6" in capsys.readouterr().out
    assert load_datalist(out)["split"] == {"val_fraction": 0.2, "seed": 1}

    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        fire.Fire(mod.main, command=["hamedan", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    assert f"{tmp_path / 'empty' / 'images'}: empty Hamedan image folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        fire.Fire(mod.main, command=["mri", str(tmp_path), "x.json"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown dataset 'mri'" in err and "hamedan" in err
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------------------------- ISBI 2015


def test_isbi_csv_real(data_dir):
    senior = read_isbi_csv(data_dir / "isbi2015_annotations" / "setup" / "all_senior.csv")
    junior = read_isbi_csv(data_dir / "isbi2015_annotations" / "setup" / "all_junior.csv")
    assert len(senior) == len(junior) == 400
    np.testing.assert_array_equal(senior["001"][0], [835.0, 996.0])
    np.testing.assert_array_equal(senior["001"][1], [1473.0, 1029.0])
    assert all(np.all(p == np.round(p)) for p in senior.values())  # integers once the mm are undone
    assert all(np.all((p >= 0) & (p < [1935, 2400])) for p in senior.values())


def _write_isbi_fixture(root: Path, senior: dict, junior: dict, numbers: list[int], n_points: int = 19) -> None:
    folders = {1: "TrainingData", 151: "Test1Data", 301: "Test2Data"}
    for number in numbers:
        folder = folders[max(k for k in folders if k <= number)]
        (root / "RawImage" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("1", (1935, 2400)).save(root / "RawImage" / folder / f"{number:03d}.bmp")
    for doctor, table in (("senior", senior), ("junior", junior)):
        d = root / "AnnotationsByMD" / f"400_{doctor}"
        d.mkdir(parents=True, exist_ok=True)
        for number in numbers:
            pts = table[f"{number:03d}"][:n_points]
            lines = [f"{int(x)},{int(y)}" for x, y in pts] + ["1", "3", "2", "1", "2", "3", "1", "2"]
            (d / f"{number:03d}.txt").write_text("\r\n".join(lines) + "\r\n")


def test_isbi_original_layout_fixture(data_dir, tmp_path):
    senior = read_isbi_csv(data_dir / "isbi2015_annotations" / "setup" / "all_senior.csv")
    junior = read_isbi_csv(data_dir / "isbi2015_annotations" / "setup" / "all_junior.csv")
    _write_isbi_fixture(tmp_path, senior, junior, [1, 2, 151, 301])
    np.testing.assert_array_equal(read_isbi_txt(tmp_path / "AnnotationsByMD" / "400_senior" / "001.txt"), senior["001"])
    dl = build_isbi2015(tmp_path, protocol="official")
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [2, 1, 1]
    assert Path(dl["validation"][0]["image"]).name == "151.bmp" and Path(dl["test"][0]["image"]).name == "301.bmp"
    np.testing.assert_allclose(dl["training"][0]["landmarks"], (senior["001"] + junior["001"]) / 2)
    assert dl["training"][0]["spacing"] == [0.1, 0.1]
    assert len(dl["warnings"]) == 1 and "396 of the 400" in dl["warnings"][0]
    only_senior = build_isbi2015(tmp_path, ground_truth="senior", protocol="official")
    np.testing.assert_array_equal(only_senior["test"][0]["landmarks"], senior["301"])
    np.testing.assert_array_equal(only_senior["training"][0]["landmarks"][0], [835, 996])


def test_isbi_txt_with_18_points_is_an_error(data_dir, tmp_path):
    senior = read_isbi_csv(data_dir / "isbi2015_annotations" / "setup" / "all_senior.csv")
    _write_isbi_fixture(tmp_path, senior, senior, [5], n_points=18)
    bad = tmp_path / "AnnotationsByMD" / "400_senior" / "005.txt"
    with pytest.raises(LandmarkFileError) as e:
        read_isbi_txt(bad)
    assert (
        str(bad) in str(e.value)
        and "found 18 'x,y' point lines, expected 19" in str(e.value)
        and "line 19" in str(e.value)
    )
    with pytest.raises(LandmarkFileError, match="found 18 'x,y' point lines"):
        build_isbi2015(tmp_path)


# --------------------------------------------------------------------------------------------- hand, chest


def test_hand_spacing_from_each_mha(data_dir):
    root = data_dir / "hand_xray"
    dl = build_hand(root, val_fraction=0.0)
    items = dl["training"]
    assert len(items) == 9 and dl["landmark_names"][-1] == "L37" and dl["warnings"] == []
    spacings = []
    for it in items:
        header = image_header(it["image"])
        assert it["spacing"] == list(header[1][:2])
        spacings.append(it["spacing"][0])
        lm = it["landmarks"]
        assert lm.shape == (37, 2) and np.isfinite(lm).all()
        assert np.all(lm.max(0) <= np.asarray(header[0][:2]) - 0.5)
    assert 0.108 <= min(spacings) and max(spacings) <= 0.166 and len(set(spacings)) == 9
    first = next(it for it in items if Path(it["image"]).stem == "3167")
    row = (root / "setup" / "all.csv").read_text().splitlines()[22].split(",")
    assert row[0] == "3167"
    np.testing.assert_array_equal(first["landmarks"][0], [float(row[1]), float(row[2])])


def test_chest_normalised_to_pixels(data_dir):
    root = data_dir / "chest_shenzhen"
    # CHNCXR_0001_0: 750 x 730 px, first label line "0.41625 0.14375"
    pts = read_normalised_points(root / "labels" / "CHNCXR_0001_0.txt", (750, 730))
    np.testing.assert_allclose(pts[0], [0.41625 * 750, 0.14375 * 730])
    np.testing.assert_allclose(pts[0], [312.1875, 104.9375])
    dl = build_chest(root, val_fraction=0.0)
    assert len(dl["training"]) == 11 and dl["landmark_names"] == [f"L{i}" for i in range(1, 7)]
    item = next(it for it in dl["training"] if Path(it["image"]).stem == "CHNCXR_0001_0")
    np.testing.assert_allclose(item["landmarks"], pts)
    assert "spacing" not in item


# --------------------------------------------------------------------------------------------- CL-Detection


def test_cldetection_txt_real_files(data_dir):
    files = sorted((data_dir / "cldetection2023_annotations" / "train").glob("*_landmark.txt"))
    assert len(files) == 400
    for f in files:
        pts = read_cldetection_txt(f)
        assert pts.shape == (38, 2) and np.isfinite(pts).all()
    np.testing.assert_array_equal(read_cldetection_txt(files[0])[:2], [[835, 996], [1473, 1029]])


def test_cldetection_txt_layout_with_images(data_dir, tmp_path):
    src = data_dir / "cldetection2023_annotations" / "train"
    labels, images = tmp_path / "train", tmp_path / "imgs"
    labels.mkdir()
    images.mkdir()
    for key in ("001", "003", "004"):
        (labels / f"{key}_landmark.txt").write_text((src / f"{key}_landmark.txt").read_text())
    for key in ("001", "003"):
        Image.new("L", (1935, 2400)).save(images / f"{key}.png")
    dl = build_cldetection2023(tmp_path, images=images, spacing=0.1, val_fraction=0.0)
    assert [Path(it["image"]).name for it in dl["training"]] == ["001.png", "003.png"]
    assert len(dl["warnings"]) == 1 and "004_landmark.txt" in dl["warnings"][0]
    assert dl["landmark_names"] == list(CLDETECTION_LANDMARK_NAMES) and dl["training"][0]["spacing"] == [0.1, 0.1]
    np.testing.assert_array_equal(dl["training"][1]["landmarks"], read_cldetection_txt(src / "003_landmark.txt"))
    with pytest.raises(LandmarkFileError, match="no images folder"):
        build_cldetection2023(tmp_path)


def _official_points(z: int) -> np.ndarray:
    rng = np.random.default_rng(z)
    return np.round(rng.uniform([0, 0], [17, 11], size=(38, 2)), 0)


def test_cldetection_official_stack_and_json(tmp_path):
    import itk

    # three images of different sizes, zero-padded to the largest (right/bottom), RGB like the release
    sizes = [(24, 16), (20, 30), (18, 12)]  # (W, H)
    stack = np.zeros((3, 30, 24, 3), np.uint8)
    for z, (w, h) in enumerate(sizes):
        stack[z, :h, :w] = 10 + 40 * z
        stack[z, 0, 0] = 255  # a marker pixel at the origin
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    itk.imwrite(
        itk.image_from_array(stack, is_vector=True), str(tmp_path / "images" / "train_stack.mha"), compression=True
    )
    points = []
    for z in (1, 2, 3):
        pts = _official_points(z)
        for k, (x, y) in enumerate(pts, start=1):
            points.append({"name": k, "point": [int(x), int(y), z], "scale": ["0.1", "0.125", "0.1"][z - 1]})
    (tmp_path / "labels" / "train-gt.json").write_text(json.dumps({"name": "Orthodontic landmarks", "points": points}))
    dl = build_cldetection2023(tmp_path, extract_dir=tmp_path / "out", val_fraction=0.0)
    items = dl["training"]
    assert [Path(it["image"]).name for it in items] == ["001.png", "002.png", "003.png"]
    for z, it in enumerate(items):
        with Image.open(it["image"]) as im:
            assert im.size == sizes[z] and im.mode == "L"
            arr = np.asarray(im)
        assert arr[0, 0] == 255 and arr[-1, -1] == 10 + 40 * z  # padding cut, origin kept
        np.testing.assert_array_equal(it["landmarks"], _official_points(z + 1))
    assert [it["spacing"][0] for it in items] == [0.1, 0.125, 0.1]
    with pytest.raises(LandmarkFileError, match="extract_dir is required"):
        build_cldetection2023(tmp_path)


def test_cldetection_gt_csv(tmp_path):
    header = ["file", "scale"] + [f"p{k}{a}" for k in range(1, 39) for a in "xy"]
    (tmp_path / "images").mkdir()
    rows = [",".join(header)]
    for key in ("1", "2"):
        Image.new("L", (40, 30)).save(tmp_path / "images" / f"{key}.bmp")
        vals = [str(v) for v in _official_points(int(key)).ravel()]
        if key == "2":
            vals[4:6] = ["", ""]  # landmark 3 missing
        rows.append(",".join([f"./somewhere/{key}.bmp", "0.1", *vals]))
    (tmp_path / "train-gt.csv").write_text("\n".join(rows) + "\n")
    records = read_cldetection_gt_csv(tmp_path / "train-gt.csv")
    assert [r[0] for r in records] == ["./somewhere/1.bmp", "./somewhere/2.bmp"]
    assert np.isnan(records[1][1][2]).all() and np.isfinite(records[0][1]).all()
    dl = build_cldetection2023(tmp_path, val_fraction=0.0)
    assert [Path(it["image"]).name for it in dl["training"]] == ["1.bmp", "2.bmp"]
    np.testing.assert_array_equal(dl["training"][0]["landmarks"], _official_points(1))


# --------------------------------------------------------------------------------------------- bad input


def _hamedan_fixture(root: Path, n: int = 2) -> None:
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "farhadifar").mkdir(parents=True)
    for i in range(1, n + 1):
        Image.new("L", (60, 50)).save(root / "images" / f"{i:03d}.png")
        shapes = [{"label": f"l{k}", "points": [[k * 2.0, k + 1.0]], "shape_type": "point"} for k in range(1, 20)]
        (root / "annotations" / "farhadifar" / f"{i:03d}.json").write_text(json.dumps({"shapes": shapes}))


def test_corrupt_png_is_named(tmp_path):
    _hamedan_fixture(tmp_path)
    png = tmp_path / "images" / "002.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated mid-file
    with pytest.raises(LandmarkFileError) as e:
        build_hamedan(tmp_path, annotator="farhadifar")
    assert str(png) in str(e.value) and "corrupt" in str(e.value)
    png.write_bytes(b"not a png at all")
    with pytest.raises(LandmarkFileError, match=r"002\.png: not a readable image"):
        build_hamedan(tmp_path, annotator="farhadifar")
    bmp = tmp_path / "x.bmp"
    Image.new("L", (64, 48)).save(bmp)
    assert image_size_2d(bmp) == (64, 48)
    bmp.write_bytes(bmp.read_bytes()[:-100])  # uncompressed: no checksum, but the length is known
    with pytest.raises(LandmarkFileError, match=r"x\.bmp: corrupt image: truncated"):
        image_size_2d(bmp)


def test_truncated_json_is_named(tmp_path):
    _hamedan_fixture(tmp_path)
    js = tmp_path / "annotations" / "farhadifar" / "001.json"
    js.write_text(js.read_text()[:-30])
    with pytest.raises(LandmarkFileError) as e:
        read_labelme_points(js)
    assert str(js) in str(e.value) and "not valid JSON" in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(LandmarkFileError, match=r"001\.json"):
        build_hamedan(tmp_path, annotator="farhadifar")


def test_cldetection_file_with_18_points_is_named(tmp_path):
    f = tmp_path / "007_landmark.txt"
    f.write_text("\n".join(f"{k},{k * 10},{k * 20}" for k in range(1, 19)) + "\n")
    with pytest.raises(LandmarkFileError) as e:
        read_cldetection_txt(f)
    assert str(f) in str(e.value) and "has 18 landmark lines, expected 38" in str(e.value)
    f.write_text("\n".join(f"{k if k != 5 else 4},{k},{k}" for k in range(1, 39)))
    with pytest.raises(LandmarkFileError, match=r"007_landmark\.txt, line 5: landmark 4 appears twice"):
        read_cldetection_txt(f)


def test_empty_folders_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "farhadifar").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    with pytest.raises(LandmarkFileError, match=r"images: empty Hamedan image folder"):
        build_hamedan(tmp_path)
    with pytest.raises(LandmarkFileError, match=r"images: empty chest X-ray image folder"):
        build_chest(tmp_path)
    with pytest.raises(LandmarkFileError, match="empty CL-Detection folder"):
        build_cldetection2023(tmp_path)
    with pytest.raises(LandmarkFileError, match="Hamedan root folder not found"):
        get_builder("hamedan")(tmp_path / "nowhere")


def test_point_outside_image_is_named(tmp_path):
    _hamedan_fixture(tmp_path, n=1)
    js = tmp_path / "annotations" / "farhadifar" / "001.json"
    doc = json.loads(js.read_text())
    doc["shapes"][4]["points"] = [[60.2, 10.0]]  # image is 60 px wide: x must be <= 59.5
    js.write_text(json.dumps(doc))
    with pytest.raises(LandmarkFileError) as e:
        build_hamedan(tmp_path, annotator="farhadifar")
    assert str(js) in str(e.value) and "'subspinale'" in str(e.value) and "outside the image" in str(e.value)


def test_labelme_defects_synthetic(tmp_path):
    _hamedan_fixture(tmp_path, n=1)
    js = tmp_path / "annotations" / "farhadifar" / "001.json"
    doc = json.loads(js.read_text())
    doc["shapes"].append({"label": "l3", "points": [[1.0, 1.0]], "shape_type": "point"})
    doc["shapes"] = [s for s in doc["shapes"] if s["label"] != "l9"] + [{"label": "foo", "points": [[1, 1]]}]
    js.write_text(json.dumps(doc))
    pts, warns = read_labelme_points(js)
    assert np.isnan(pts[2]).all() and np.isnan(pts[8]).all() and np.isfinite(np.delete(pts, [2, 8], 0)).all()
    np.testing.assert_array_equal(pts[3], [8.0, 5.0])  # labels after the defect are not shifted
    assert len(warns) == 3 and all(w.startswith(str(js)) for w in warns)


def test_merge_annotators():
    a = np.array([[0.0, 0.0], [np.nan, np.nan], [np.nan, np.nan]])
    b = np.array([[2.0, 4.0], [1.0, 1.0], [np.nan, np.nan]])
    m = merge_annotators([a, b])
    np.testing.assert_array_equal(m[:2], [[1.0, 2.0], [1.0, 1.0]])
    assert np.isnan(m[2]).all()


# --------------------------------------------------------------------------------------------- Aariz (fixture)


def _aariz_payload(order, offset: float) -> dict:
    from custom_monai.data.aariz import AARIZ_LANDMARKS

    index = {s: i for i, (s, _) in enumerate(AARIZ_LANDMARKS)}
    return {
        "ceph_id": "x",
        "landmarks": [
            {
                "landmark_id": f"id{index[s]}",
                "title": t,
                "symbol": s,
                "value": {"x": 10 + index[s] + offset, "y": 5 + offset},
            }
            for s, t in order
        ],
    }


def test_aariz_fixture(tmp_path):
    from custom_monai.data.aariz import AARIZ_LANDMARK_NAMES, AARIZ_LANDMARKS, build_aariz, read_aariz_json

    cases = {"Train": ["ceph_a", "ceph_b"], "Valid": ["ceph_c"]}
    for split, ids in cases.items():
        img_dir = tmp_path / split / "Cephalograms"
        img_dir.mkdir(parents=True)
        base = tmp_path / split / "Annotations" / "Cephalometric Landmarks"
        (base / "Senior Orthodontists").mkdir(parents=True)
        (base / "Junior Orthodontists").mkdir(parents=True)
        for i in ids:
            Image.new("L", (64, 48)).save(img_dir / f"{i}.png")
            # senior in reversed order, junior in the dataset order: matched by symbol, not position
            (base / "Senior Orthodontists" / f"{i}.json").write_text(
                json.dumps(_aariz_payload(AARIZ_LANDMARKS[::-1], 1.0))
            )
            junior = _aariz_payload(AARIZ_LANDMARKS, 0.0)
            if i == "ceph_b":
                junior["landmarks"].append(dict(junior["landmarks"][3]))  # Menton twice
                del junior["landmarks"][0]["symbol"]  # matched by title instead
            (base / "Junior Orthodontists" / f"{i}.json").write_text(json.dumps(junior))
    (tmp_path / "cephalogram_machine_mappings.csv").write_text(
        "cephalogram_id,machine,pixel_size,image_format,mode\nceph_a,M1,0.1,png,x\nceph_b,M2,0.127,png,x\n"
    )
    pts, warns = read_aariz_json(
        tmp_path / "Train" / "Annotations" / "Cephalometric Landmarks" / "Junior Orthodontists" / "ceph_b.json"
    )
    assert np.isnan(pts[3]).all() and len(warns) == 1 and "'Me' appears 2 times" in warns[0]
    np.testing.assert_array_equal(pts[0], [10, 5])  # 'A' found by its title

    dl = build_aariz(tmp_path)
    assert dl["landmark_names"] == list(AARIZ_LANDMARK_NAMES) and len(dl["landmark_names"]) == 29
    assert [len(dl[s]) for s in ("training", "validation", "test")] == [2, 1, 0]
    a = dl["training"][0]
    np.testing.assert_allclose(a["landmarks"][:, 0], np.arange(29) + 10.5)  # mean of senior (+1) and junior (+0)
    np.testing.assert_allclose(dl["training"][1]["landmarks"][3], [14.0, 6.0])  # Menton: senior only
    assert a["spacing"] == [0.1, 0.1] and dl["training"][1]["spacing"] == [0.127, 0.127]
    assert "spacing" not in dl["validation"][0]
    assert any("ceph_c" in w and "no spacing" in w for w in dl["warnings"])
    senior = build_aariz(tmp_path, annotator="senior")
    np.testing.assert_allclose(senior["training"][0]["landmarks"][:, 0], np.arange(29) + 11.0)
