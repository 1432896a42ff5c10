"""The global_local_fcnn_3d bundle: commands on generated volumes, and 3D coordinates on real anatomy.

Bundle runs go through ``python -m monai.bundle`` with small networks (coarse 3 mm global grid) so each
takes seconds. The real-anatomy tests run the bundle's own inference config in-process with an *oracle*
global network that outputs the encoded cell targets of the true points: everything else (reading
NIfTI/MHA, reorienting, resampling, padding, decoding, mapping back, writing JSON and ``.mrk.json``) is
the real code, so the written points must come back to the input points.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import REPO_ROOT, bundle_configs, demo_datalist, overrides, run_bundle, train
from torch import nn

from custom_monai.data import read_markups, read_verse_centroids

BUNDLE = "global_local_fcnn_3d"
TINY = dict(
    global_channels=[8, 16, 32, 64],
    global_blocks=[1, 1, 1, 1],
    global_head_channels=16,
    global_spacing=[3.0, 3.0, 3.0],
    local_spacing=[1.5, 1.5, 1.5],
    chunk_size=[32, 32, 32],
    local_channels=[8, 8],
    local_head_channels=8,
    patch_size=8,
    patches_per_image=1,
    batch_size=4,
    local_batch_size=4,
    val_interval=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_env):
    root = tmp_path_factory.mktemp("noothout3d")
    return root, train(BUNDLE, root, demo_env, max_epochs=1, **TINY)


def _itk_index(path: Path, world_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel index of LPS points in a file, computed by ITK (independently of MONAI's loader)."""
    import itk

    img = itk.imread(str(path))
    return np.array(
        [img.TransformPhysicalPointToContinuousIndex(itk.Point[itk.D, 3]([float(v) for v in p])) for p in world_lps]
    )


def _check_prediction_files(out: Path, image: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``<id>.json`` and ``<id>.mrk.json``; check that voxel, world and markups agree with ITK's geometry."""
    stem = image.name.split(".")[0]
    pred = json.loads((out / f"{stem}.json").read_text())
    assert len(pred["landmarks"]) == n and pred["landmarks"][0]["index"] == 1
    voxel = np.array([[lm[a] if lm[a] is not None else np.nan for a in "xyz"] for lm in pred["landmarks"]], dtype=float)
    world = np.array([[lm["world"][a] if lm["world"][a] is not None else np.nan for a in "xyz"] for lm in pred["landmarks"]], dtype=float)
    names, mrk = read_markups(out / f"{stem}.mrk.json")
    assert len(names) == n
    ok = np.all(np.isfinite(world), axis=1)
    np.testing.assert_allclose(mrk[ok], world[ok], atol=1e-4)
    # the voxel coordinates are those of the input file: ITK maps the written world points back onto them
    np.testing.assert_allclose(_itk_index(image, world[ok]), voxel[ok], atol=1e-3)
    return voxel, world, mrk


@pytest.mark.slow
def test_training_writes_checkpoints(trained):
    root, log = trained
    for name in ("model.pt", "global.pt", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (root / "models" / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    meta = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=False)["_meta"]
    assert meta["landmark_names"] == [f"L{i}" for i in range(1, 7)]
    assert meta["global_spacing"] == [3.0] * 3 and meta["local_spacing"] == [1.5] * 3 and meta["orientation"] == "RAS"
    assert meta["spatial_dims"] == 3 and np.isfinite(meta["metric"])


@pytest.mark.slow
def test_evaluate_writes_metrics_and_world_coordinates(trained, tmp_path, demo_env):
    root, _ = trained
    out = tmp_path / "eval"
    run_bundle(
        ["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
        + overrides(ckpt_dir=str(root / "models"), output_dir=str(out), **TINY),
        env=demo_env,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["n_points"] == 4 * 6 and metrics["mre_mm"] is not None
    images = demo_datalist(demo_env, "3d").parent / "images"
    _check_prediction_files(out, images / "test_000.nii.gz", 6)


@pytest.mark.slow
def test_inference_on_folder_nifti_and_mha(trained, tmp_path, demo_env):
    import itk

    root, _ = trained
    images = demo_datalist(demo_env, "3d").parent / "images"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(images / "test_000.nii.gz", inp / "test_000.nii.gz")
    itk.imwrite(itk.imread(str(images / "test_001.nii.gz")), str(inp / "test_001.mha"))
    out = tmp_path / "pred"
    run_bundle(
        ["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
        + overrides(input_dir=str(inp), output_dir=str(out), ckpt_dir=str(root / "models")),
        env=demo_env,
    )
    for name in ("test_000.nii.gz", "test_001.mha"):
        voxel, _, _ = _check_prediction_files(out, inp / name, 6)
        assert np.all(np.isfinite(voxel))


@pytest.mark.slow
def test_metadata_network_and_export(trained, tmp_path, demo_env):
    root, _ = trained
    meta = str(REPO_ROOT / "bundles" / BUNDLE / "configs" / "metadata.json")
    train_cfg = bundle_configs(BUNDLE, "train.json")
    run_bundle(["verify_metadata", "--meta_file", meta, "--filepath", str(REPO_ROOT / "scripts" / "bundle_meta_schema.json")])
    run_bundle(["verify_net_in_out", "presence_network", "--meta_file", meta, "--config_file", train_cfg, "--n", "4"]
               + overrides(**TINY), env=demo_env)
    ts = tmp_path / "global.ts"
    run_bundle(
        ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(root / "models" / "model.pt"),
         "--key_in_ckpt", "global", "--meta_file", meta, "--config_file", train_cfg] + overrides(**TINY),
        env=demo_env,
    )
    from custom_monai.networks import GlobalFCNN

    eager = GlobalFCNN(3, 6, channels=TINY["global_channels"], blocks=TINY["global_blocks"], head_channels=16)
    assert eager.cell_size == 8
    eager.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=False)["global"])
    scripted = torch.jit.load(str(ts)).eval()
    x = torch.rand(1, 1, 32, 24, 16)
    with torch.no_grad():
        for a, b in zip(scripted(x), eager.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_gloo(tmp_path, demo_env):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json on CPU (gloo)."""
    log = train(BUNDLE, tmp_path, demo_env, configs=("train.json", "multi_gpu_train.json"), torchrun=2, max_epochs=1, **TINY)
    assert log.count("Epoch[1] Complete") >= 4  # 2 ranks x (global trainer + local trainer)
    assert (tmp_path / "models" / "model.pt").is_file()
    ckpt = torch.load(tmp_path / "models" / "global_checkpoint.pt", map_location="cpu", weights_only=False)
    # 16 training volumes split over 2 ranks, batch 4: 2 iterations per epoch on each rank
    assert ckpt["trainer"]["iteration"] == 2


# ------------------------------------------------------------------------------ real anatomy, oracle


class WorldOracle(nn.Module):
    """Global 'network' that knows the world (LPS mm) points and returns their encoded cells on its input grid."""

    cell_size = 8

    def __init__(self, world_lps: np.ndarray) -> None:
        super().__init__()
        self.world = torch.as_tensor(world_lps, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from custom_monai.inferers import original_to_grid
        from custom_monai.transforms import encode_cells, world_lps_to_index

        load_affine = torch.as_tensor(x.meta["landmark_affine"]).reshape(-1, 4, 4)
        original = torch.stack([torch.as_tensor(world_lps_to_index(self.world, a)) for a in load_affine]).float()
        grid = original_to_grid(original, x)
        shape = [s // self.cell_size for s in x.shape[2:]]
        logits, disps = [], []
        for b in range(x.shape[0]):
            presence, disp, _ = encode_cells(grid[b].numpy(), shape, self.cell_size)
            logits.append(torch.as_tensor(np.where(presence > 0, 20.0, -20.0), dtype=torch.float32))
            disps.append(torch.as_tensor(disp))
        return torch.stack(logits), torch.stack(disps)


def _oracle_inference(tmp_path: Path, image: Path, names: list[str], world: np.ndarray) -> Path:
    """Run the bundle's inference.json in-process on ``image`` with the oracle as global network."""
    from monai.bundle import ConfigWorkflow

    from custom_monai.networks import LocalFCNN

    meta = {
        "landmark_names": names, "spatial_dims": 3, "orientation": "RAS", "global_spacing": [1.0] * 3,
        "local_spacing": [1.0] * 3, "local_shared": True, "local_channels": [4, 4], "local_head_channels": 4,
        "patch_size": 8, "decode_mode": "weighted", "decode_k": 9, "decode_threshold": 0.5, "local_decode_mode": "weighted",
    }
    oracle = WorldOracle(world)
    local = LocalFCNN(3, len(names), shared=True, channels=(4, 4), head_channels=4)
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"global": oracle.state_dict(), "local": local.state_dict(), "_meta": meta}, ckpt)
    out = tmp_path / "pred"
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "bundles" / BUNDLE / "configs" / "inference.json"),
        workflow_type=None,
        run_id="inference",
        ckpt_path=str(ckpt),
        input_dir=str(image.parent),
        output_dir=str(out),
        device="$torch.device('cpu')",
        predict_stage="global",
        global_network_def=oracle,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return out


@pytest.mark.realdata
def test_oracle_dental_cbct_crop_as_mha(data_dir, tmp_path):
    """Dental CBCT (0.3 mm, 85 landmarks in a 260^3-voxel crop written as MHA) through the 1 mm inference path."""
    import itk

    case = data_dir / "geometry3d" / "dental_cbct_case67"
    names, world = read_markups(case / "case_67_landmarks_world_mm.csv")
    mask = itk.imread(str(case / "case_67_mandible_mask.nii.gz"))
    lo, hi = np.array([130, 130, 60]), np.array([390, 390, 320])  # (i, j, k)
    arr = itk.array_view_from_image(mask)  # (k, j, i)
    crop = itk.image_from_array(np.ascontiguousarray(arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]))
    crop.SetSpacing(mask.GetSpacing())
    crop.SetDirection(mask.GetDirection())
    crop.SetOrigin(mask.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    (tmp_path / "img").mkdir()
    image = tmp_path / "img" / "case67_crop.mha"
    itk.imwrite(crop, str(image))
    index = _itk_index(image, np.nan_to_num(world))
    keep = np.all(np.isfinite(world), axis=1) & np.all((index >= 0) & (index <= hi - lo - 1), axis=1)
    assert keep.sum() == 85
    names = [n for n, k in zip(names, keep) if k]
    world = world[keep]

    out = _oracle_inference(tmp_path, image, names, world)
    voxel, written, mrk = _check_prediction_files(out, image, len(names))
    half_voxel = 0.5 * np.array(mask.GetSpacing())
    err = np.abs(mrk - world)
    assert np.all(err < half_voxel), f"max error {err.max(0)} mm"
    assert err.max() < 0.01  # in fact exact up to float precision
    np.testing.assert_allclose(voxel, index[keep], atol=0.05)
    assert json.loads((out / "case67_crop.json").read_text())["spacing"] == pytest.approx([0.3] * 3)


@pytest.mark.realdata
def test_oracle_verse_oblique_nifti(data_dir, tmp_path):
    """VerSe mask with an oblique direction (1 x 1 x 2 mm): centroids survive reorientation and resampling."""
    case = data_dir / "geometry3d" / "verse_sub-verse004"
    image = case / "sub-verse004_seg-vert_msk.nii.gz"
    labels, world = read_verse_centroids(case / "sub-verse004_seg-subreg_ctd.json", image, units="voxel")
    out = _oracle_inference(tmp_path, image, [f"vertebra_{v}" for v in labels], world)
    voxel, _, mrk = _check_prediction_files(out, image, len(labels))
    import nibabel as nib

    zooms = np.array(nib.load(str(image)).header.get_zooms()[:3])
    # half a voxel along every voxel axis (the grid is oblique, so compare in voxel units)
    err_vox = np.abs(voxel - _itk_index(image, world))
    assert np.all(err_vox < 0.5), err_vox.max(0)
    assert np.linalg.norm(mrk - world, axis=1).max() < 0.5 * zooms.min()
    # and each centroid still lies in its own vertebra's label
    seg = np.asarray(nib.load(str(image)).dataobj)
    for lab, v in zip(labels, np.round(voxel).astype(int)):
        assert seg[tuple(v)] == int(lab)
