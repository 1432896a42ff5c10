"""Datalist JSON: round trip, validation errors, deterministic split, MONAI items."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from custom_monai.data.datalist import (
    count_missing,
    datalist_section,
    load_datalist,
    split_items,
    summarize_datalist,
    write_datalist,
)
from custom_monai.data.errors import DatalistError

NAMES = ["sella", "nasion", "menton"]


def _items(tmp_path: Path) -> list[dict]:
    (tmp_path / "img").mkdir(exist_ok=True)
    a = tmp_path / "img" / "a.png"
    b = tmp_path / "img" / "b.nii.gz"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    return [
        {"image": str(a), "landmarks": np.array([[1.5, 2.0], [np.nan, np.nan], [10.0, 20.25]]), "spacing": [0.1, 0.1]},
        {"image": str(b), "landmarks": [[3.0, 4.0], [5.0, 6.0], None], "site": "x"},
    ]


def test_write_then_load_round_trip(tmp_path):
    items = _items(tmp_path)
    out = tmp_path / "lists" / "dl.json"
    write_datalist(out, NAMES, items[:1], validation=items[1:], name="demo", warnings=["w1"])
    raw = json.loads(out.read_text())
    # stored relative to the datalist's folder, NaN as null, extra keys kept
    assert raw["training"][0]["image"] == "../img/a.png"
    assert raw["training"][0]["landmarks"][1] is None
    assert raw["validation"][0]["landmarks"][2] is None
    assert raw["name"] == "demo" and raw["warnings"] == ["w1"] and raw["test"] == []
    assert raw["validation"][0]["site"] == "x"
    assert not [p for p in out.parent.iterdir() if p.name != "dl.json"], "temporary file left behind"

    dl = load_datalist(out)
    assert dl["training"][0]["image"] == str((tmp_path / "img" / "a.png").resolve())
    assert dl["training"][0]["landmarks"][0] == [1.5, 2.0]
    assert all(math.isnan(v) for v in dl["training"][0]["landmarks"][1])
    assert dl["training"][0]["spacing"] == [0.1, 0.1]
    assert "spacing" not in dl["validation"][0]
    assert count_missing(dl) == 2
    assert summarize_datalist(dl) == "training=1 validation=1 test=0 landmarks=3 space=pixel missing=2 warnings=1"


def test_datalist_section_items(tmp_path):
    out = tmp_path / "dl.json"
    write_datalist(out, NAMES, _items(tmp_path))
    items = datalist_section(out, "training")
    assert [it["id"] for it in items] == ["a", "b"]  # .nii.gz stripped whole
    lm = items[0]["landmarks"]
    assert lm.dtype == np.float32 and lm.shape == (3, 2)
    np.testing.assert_array_equal(lm[2], [10.0, 20.25])
    assert np.isnan(lm[1]).all() and np.isnan(items[1]["landmarks"][2]).all()
    assert items[0]["spacing"].tolist() == [0.1, 0.1] and items[1]["spacing"] is None
    assert os.path.isabs(items[0]["image"])
    assert datalist_section(load_datalist(out), "validation") == []
    with pytest.raises(DatalistError, match="unknown section 'train'"):
        datalist_section(out, "train")


def _write_raw(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_load_errors_name_file_item_and_landmark(tmp_path):
    good = {"landmark_names": NAMES, "training": [{"image": "a.png", "landmarks": [[1, 2], [3, 4], None]}]}
    p = _write_raw(tmp_path / "ok.json", good)
    assert load_datalist(p)["training"][0]["image"] == str(tmp_path / "a.png")

    trunc = _write_raw(tmp_path / "trunc.json", json.dumps(good)[:-7])
    with pytest.raises(DatalistError, match=r"trunc\.json: not valid JSON.*line 1"):
        load_datalist(trunc)

    bad = json.loads(json.dumps(good))
    bad["training"].append({"image": "b.png", "landmarks": [[1, 2], [3, 4]]})
    with pytest.raises(DatalistError) as e:
        load_datalist(_write_raw(tmp_path / "count.json", bad))
    msg = str(e.value)
    assert "count.json" in msg and "training[1]" in msg and "'b.png'" in msg and "has 2 landmarks, expected 3" in msg

    bad = json.loads(json.dumps(good))
    bad["training"][0]["landmarks"][1] = [1, 2, 3, 4]
    with pytest.raises(
        DatalistError, match=r"coords\.json: training\[0\] \(image 'a.png'\): landmark 'nasion': expected null"
    ):
        load_datalist(_write_raw(tmp_path / "coords.json", bad))

    bad = json.loads(json.dumps(good))
    bad["training"][0]["landmarks"][0] = [1, None]
    with pytest.raises(DatalistError, match="landmark 'sella'.*partly missing"):
        load_datalist(_write_raw(tmp_path / "partial.json", bad))

    bad = json.loads(json.dumps(good))
    bad["training"][0]["landmarks"][2] = [1, 2, 3]
    with pytest.raises(DatalistError, match="mixes 2D and 3D"):
        load_datalist(_write_raw(tmp_path / "mixed.json", bad))

    with pytest.raises(DatalistError, match="'landmark_names' must be unique"):
        load_datalist(_write_raw(tmp_path / "dup.json", {**good, "landmark_names": ["a", "a", "b"]}))
    with pytest.raises(DatalistError, match="coordinate_space"):
        load_datalist(_write_raw(tmp_path / "space.json", {**good, "coordinate_space": "mm"}))
    with pytest.raises(DatalistError, match="world.*needs \\[x, y, z\\]"):
        load_datalist(_write_raw(tmp_path / "world.json", {**good, "coordinate_space": "world"}))
    with pytest.raises(DatalistError, match="no item section"):
        load_datalist(_write_raw(tmp_path / "nosec.json", {"landmark_names": NAMES}))
    with pytest.raises(DatalistError, match="'spacing' must be"):
        bad = json.loads(json.dumps(good))
        bad["training"][0]["spacing"] = [0.1, -1]
        load_datalist(_write_raw(tmp_path / "sp.json", bad))
    with pytest.raises(DatalistError, match="image file not found"):
        load_datalist(p, check_images=True)
    with pytest.raises(DatalistError, match=r"missing\.json: cannot read"):
        load_datalist(tmp_path / "missing.json")


def test_write_refuses_invalid_and_keeps_old_file(tmp_path):
    items = _items(tmp_path)
    out = tmp_path / "dl.json"
    write_datalist(out, NAMES, items)
    before = out.read_text()
    with pytest.raises(DatalistError, match="has 2 landmarks, expected 3"):
        write_datalist(out, NAMES, [{"image": items[0]["image"], "landmarks": [[1, 2], [3, 4]]}])
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.json", "img"]


def test_split_items_deterministic():
    items = [f"{i:03d}" for i in range(100)]
    tr, va = split_items(items, 0.2, seed=0)
    assert len(tr) == 80 and len(va) == 20
    assert sorted(tr + va) == items and not set(tr) & set(va)
    assert tr == sorted(tr) and va == sorted(va)  # input order kept
    assert split_items(items, 0.2, seed=0) == (tr, va)
    assert split_items(items, 0.2, seed=1)[1] != va
    assert split_items(items, 0.0, seed=0) == (items, [])
    assert [len(x) for x in split_items(items[:3], 0.01, 0)] == [2, 1]  # at least one validation item
    with pytest.raises(ValueError, match="val_fraction"):
        split_items(items, 1.0)
