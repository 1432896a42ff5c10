"""3D landmark files (Slicer .mrk.json / .fcsv, CSV, VerSe centroids) and the 3D datalist builder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from custom_monai.data.datalist import datalist_section, load_datalist
from custom_monai.data.errors import LandmarkFileError
from custom_monai.data.markups import (
    build_markups,
    index_to_lps,
    lps_to_index,
    read_markups,
    read_verse_centroids,
    volume_affine_lps,
    write_fcsv,
    write_mrk_json,
    write_points_csv,
)

NAMES = ["N", "S", "Me, left", "Pog"]
POINTS = np.array([[12.345678, -45.5, 101.25], [-3.0, 7.125, -0.5], [np.nan] * 3, [88.0, 0.0, -12.000001]])


@pytest.mark.parametrize("writer", [write_mrk_json, write_fcsv])
def test_round_trip_and_lps_ras_pair(tmp_path, writer):
    ext = ".mrk.json" if writer is write_mrk_json else ".fcsv"
    lps, ras = tmp_path / f"lps{ext}", tmp_path / f"ras{ext}"
    writer(lps, NAMES, POINTS, coordinate_system="LPS")
    writer(ras, NAMES, POINTS, coordinate_system="RAS")
    for path in (lps, ras):
        names, pts = read_markups(path)
        assert names == NAMES
        np.testing.assert_allclose(pts, POINTS, atol=1e-4)  # NaN row compares equal to NaN
        assert np.isnan(pts[2]).all()
    # the RAS file really stores RAS: x and y negated
    if ext == ".mrk.json":
        doc = json.loads(ras.read_text())["markups"][0]
        assert doc["coordinateSystem"] == "RAS"
        assert doc["controlPoints"][0]["position"] == [-12.345678, 45.5, 101.25]
        assert doc["controlPoints"][2]["positionStatus"] == "missing"
    else:
        text = ras.read_text()
        assert "# CoordinateSystem = RAS" in text and "-12.345678,45.5,101.25" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_slicer_style_files(tmp_path):
    mrk = tmp_path / "a.mrk.json"
    mrk.write_text(
        json.dumps(
            {
                "@schema": "x",
                "markups": [
                    {
                        "type": "Fiducial",
                        "coordinateSystem": "RAS",
                        "coordinateUnits": "mm",
                        "controlPoints": [
                            {"id": "1", "label": "F-1", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
                            {"id": "2", "label": "F-2", "position": [0.0, 0.0, 0.0], "positionStatus": "missing"},
                            {"id": "3", "label": "F-3", "positionStatus": "undefined"},
                        ],
                    }
                ],
            }
        )
    )
    names, pts = read_markups(mrk)
    assert names == ["F-1", "F-2", "F-3"]
    np.testing.assert_array_equal(pts[0], [-1.0, -2.0, 3.0])
    assert np.isnan(pts[1:]).all()
    for header, expected in (("0", [-1.5, 2.5, 3.5]), ("1", [1.5, -2.5, 3.5]), ("LPS", [1.5, -2.5, 3.5])):
        f = tmp_path / f"old_{header}.fcsv"
        f.write_text(
            "# Markups fiducial file version = 4.6\n"
            f"# CoordinateSystem = {header}\n"
            "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
            "vtkMRMLMarkupsFiducialNode_0,1.5,-2.5,3.5,0,0,0,1,1,1,0,Sella,,vtkMRMLScalarVolumeNode1\n"
        )
        names, pts = read_markups(f)
        assert names == ["Sella"]
        np.testing.assert_array_equal(pts[0], expected)


def test_csv_points(tmp_path, data_dir):
    names, pts = read_markups(data_dir / "geometry3d" / "dental_cbct_case67" / "case_67_landmarks_world_mm.csv")
    assert len(names) == 137 and pts.shape == (137, 3)
    missing = [n for n, p in zip(names, pts) if np.isnan(p).all()]
    assert missing == ["FMP", "Ft-R", "M-L", "M-R", "OrS-R", "SOr-L", "SOr-R"]  # the 0,0,0 rows
    np.testing.assert_allclose(pts[names.index("A")], [84.34977067890537, 48.46613497994266, 69.62385303286221])
    f = tmp_path / "p.csv"
    write_points_csv(f, NAMES, POINTS)
    n2, p2 = read_markups(f)
    assert n2 == NAMES
    np.testing.assert_allclose(p2, POINTS)
    f.write_text("a,1,2,3\nb,0,0,0\n")  # no header; 0,0,0 = missing
    n3, p3 = read_markups(f)
    assert n3 == ["a", "b"] and np.isnan(p3[1]).all()
    assert np.isfinite(read_markups(f, zero_is_missing=False)[1]).all()
    np.testing.assert_array_equal(read_markups(f, coordinate_system="RAS")[1][0], [-1, -2, 3])


def test_bad_markup_files_are_named(tmp_path):
    mrk = tmp_path / "cut.mrk.json"
    write_mrk_json(mrk, NAMES, POINTS)
    mrk.write_text(mrk.read_text()[:200])
    with pytest.raises(LandmarkFileError, match=r"cut\.mrk\.json.*not valid JSON"):
        read_markups(mrk)
    f = tmp_path / "bad.fcsv"
    f.write_text("# CoordinateSystem = XYZ\n1,1,2,3,0,0,0,1,1,1,0,A,,\n")
    with pytest.raises(LandmarkFileError, match=r"bad\.fcsv.*unsupported coordinate system 'XYZ'"):
        read_markups(f)
    c = tmp_path / "bad.csv"
    c.write_text("name,x,y,z\nA,1,2,3\nB,1,oops,3\n")
    with pytest.raises(LandmarkFileError, match=r"bad\.csv, line 3: landmark 'B'"):
        read_markups(c)


def _surface_distances(mask: np.ndarray, index: np.ndarray, spacing, radius: int = 12) -> np.ndarray:
    """Distance (mm) from each point's nearest voxel to the other class, in a box around the point."""
    from scipy import ndimage

    out = []
    for p in index:
        c = np.clip(np.round(p).astype(int), 0, np.array(mask.shape) - 1)
        lo, hi = np.maximum(c - radius, 0), np.minimum(c + radius + 1, mask.shape)
        box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        q = tuple(c - lo)
        if box.all() or not box.any():
            out.append(np.inf)
            continue
        edt = ndimage.distance_transform_edt(box if box[q] else ~box, sampling=spacing)
        out.append(edt[q])
    return np.asarray(out)


def test_dental_cbct_landmarks_on_bone_surface(data_dir):
    import nibabel as nib

    case = data_dir / "geometry3d" / "dental_cbct_case67"
    names, pts = read_markups(case / "case_67_landmarks_world_mm.csv")
    pts = pts[np.isfinite(pts[:, 0])]
    affine, size, spacing = volume_affine_lps(case / "case_67_mandible_mask.nii.gz")
    mask = np.asarray(nib.load(case / "case_67_mandible_mask.nii.gz").dataobj) > 0
    mask |= np.asarray(nib.load(case / "case_67_midface_mask.nii.gz").dataobj) > 0
    assert mask.shape == tuple(size)
    # nibabel reports the same file in RAS: its affine is the LPS one with x, y negated
    np.testing.assert_allclose(
        np.diag([-1, -1, 1, 1]) @ affine, nib.load(case / "case_67_mandible_mask.nii.gz").affine, atol=1e-6
    )

    d = _surface_distances(mask, lps_to_index(pts, affine), spacing)
    # most landmarks are on the bone surface; root apices, sella and a few others are not (see report)
    assert np.median(d) <= 0.6
    assert np.mean(d <= 1.0) >= 0.75
    # controls: the same points read as RAS fall outside the volume; shifted by 3 mm along any axis or
    # mirrored left-right they are clearly off the surface (measured: median >= 1.0 mm, <= 50 % within 1 mm)
    ras_index = lps_to_index(pts * [-1, -1, 1], affine)
    assert np.all(ras_index[:, :2] < -0.5)
    mirrored = lps_to_index(pts, affine)
    mirrored[:, 0] = size[0] - 1 - mirrored[:, 0]
    for wrong in [lps_to_index(pts + s, affine) for s in np.eye(3) * 3.0] + [mirrored]:
        dw = _surface_distances(mask, wrong, spacing)
        assert np.median(dw) > 0.9 and np.mean(dw <= 1.0) < 0.55


def test_verse_centroids_inside_their_vertebra(data_dir):
    import nibabel as nib

    case = data_dir / "geometry3d" / "verse_sub-verse004"
    mask_path = case / "sub-verse004_seg-vert_msk.nii.gz"
    labels, pts = read_verse_centroids(case / "sub-verse004_seg-subreg_ctd.json", mask_path)
    assert labels == [str(v) for v in range(16, 25)]
    affine, size, _ = volume_affine_lps(mask_path)  # ITK header: oblique direction, LPS
    mask = np.asarray(nib.load(mask_path).dataobj)
    for label, idx in zip(labels, lps_to_index(pts, affine)):
        assert mask[tuple(np.round(idx).astype(int))] == int(label), label
    # the same through MONAI's loader (RAS affine) lands on the same voxels
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True)(str(mask_path))
    ras = np.c_[pts * [-1, -1, 1], np.ones(len(pts))]
    monai_idx = (np.linalg.inv(np.asarray(img.affine, dtype=np.float64)) @ ras.T).T[:, :3]
    arr = np.asarray(img)
    for label, idx in zip(labels, monai_idx):
        assert arr[tuple(np.round(idx).astype(int))] == int(label), label


def _volume(path, size=(20, 24, 16), spacing=(0.5, 0.75, 1.25), origin=(10.0, -20.0, 5.0), angle=0.3):
    import itk

    arr = np.zeros(size[::-1], np.uint8)
    img = itk.image_from_array(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    c, s = np.cos(angle), np.sin(angle)
    img.SetDirection(itk.matrix_from_array(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)))
    itk.imwrite(img, str(path))


def test_build_markups_world_datalist(tmp_path, repo_root):
    lm, vol = tmp_path / "lm", tmp_path / "vol"
    lm.mkdir()
    vol.mkdir()
    _volume(vol / "case1.nii.gz")
    _volume(vol / "case2.mha", origin=(0.0, 0.0, 0.0), angle=-0.2)
    aff1, size1, sp1 = volume_affine_lps(vol / "case1.nii.gz")
    aff2, _, _ = volume_affine_lps(vol / "case2.mha")
    vox = np.array([[3.0, 4.0, 5.0], [10.5, 2.0, 7.25], [19.0, 23.0, 15.0]])
    write_mrk_json(lm / "case1.mrk.json", ["A", "B", "C"], index_to_lps(vox, aff1), coordinate_system="RAS")
    p2 = index_to_lps(vox, aff2)
    write_fcsv(lm / "case2.fcsv", ["B", "A", "A", "D"], np.r_[p2[[1, 0, 0]], p2[[2]]])  # 'A' twice, no 'C'
    (lm / "case3.csv").write_text("A,1,2,3\n")  # no volume

    dl = build_markups(lm, images=vol, val_fraction=0.0, test_fraction=0.0)
    assert dl["coordinate_space"] == "world" and dl["landmark_names"] == ["A", "B", "C", "D"]
    c1, c2 = dl["training"]
    np.testing.assert_allclose(lps_to_index(c1["landmarks"][:3], aff1), vox, atol=1e-6)
    assert np.isnan(c1["landmarks"][3]).all()
    np.testing.assert_allclose(c1["spacing"], [0.5, 0.75, 1.25], rtol=1e-6)
    assert np.isnan(c2["landmarks"][[0, 2]]).all()
    np.testing.assert_allclose(lps_to_index(c2["landmarks"][[1, 3]], aff2), vox[1:], atol=1e-6)
    w = "\n".join(dl["warnings"])
    assert "case3.csv: no volume" in w and "case2.fcsv: landmark 'A' appears 2 times" in w
    assert "case2.fcsv: landmark 'C' missing" in w and "case1.mrk.json: landmark 'D' missing" in w

    spec = importlib.util.spec_from_file_location("prepare_data", repo_root / "scripts" / "prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "world.json"
    line = mod.prepare("markups", str(lm), str(out), images=str(vol), val_fraction=0.0, test_fraction=0.0)
    assert "training=2" in line and "space=world" in line and "missing=3" in line
    items = datalist_section(load_datalist(out), "training")
    assert items[0]["id"] == "case1" and items[0]["landmarks"].shape == (4, 3)

    # a point outside its volume is missing, with a warning naming the file and the landmark
    write_mrk_json(lm / "case1.mrk.json", ["A", "B", "C"], index_to_lps(np.r_[[[19.8, 1.0, 1.0]], vox[1:]], aff1))
    dl = build_markups(lm, images=vol, val_fraction=0.0, test_fraction=0.0)
    case1 = next(it for it in dl["training"] if Path(it["image"]).name == "case1.nii.gz")
    assert np.isnan(case1["landmarks"][0]).all() and np.isfinite(case1["landmarks"][1:3]).all()
    outside = [w for w in dl["warnings"] if "outside the volume" in w]
    assert len(outside) == 1 and "case1.mrk.json: landmark 'A': point" in outside[0] and "set to missing" in outside[0]
    dl = build_markups(lm, images=vol, val_fraction=0.0, test_fraction=0.0, tolerance=1.0)  # 19.8 <= 19 + 1
    assert not [w for w in dl["warnings"] if "outside the volume" in w]
    # most points outside: the file does not belong to that volume (or its frame is wrong): an error
    write_mrk_json(lm / "case1.mrk.json", ["A", "B"], index_to_lps(np.array([[19.8, 1, 1], [1, 40, 1]]), aff1))
    with pytest.raises(LandmarkFileError, match=r"case1\.mrk\.json: 2 of 2 points lie outside the volume"):
        build_markups(lm, images=vol)


def test_build_markups_empty_folder(tmp_path):
    with pytest.raises(LandmarkFileError, match="empty folder: no landmark files"):
        build_markups(tmp_path)
