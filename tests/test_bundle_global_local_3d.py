"""The global_local_fcnn_3d bundle: commands on generated volumes, and 3D coordinates on real anatomy.

Bundle runs go through ``python -m monai.bundle`` with small networks (coarse 3 mm global grid) so each
takes seconds (the time-budget schedule test trains for its 1-minute budget). The real-anatomy tests run the bundle's own inference config in-process with an *oracle*
global network that outputs the encoded cell targets of the true points: everything else (reading
NIfTI/MHA, reorienting, resampling, padding, decoding, mapping back, writing JSON and ``.mrk.json``) is
the real code, so the written points must come back to the input points.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import assert_same_points, assert_tracked_evaluation, assert_tracked_training, bundle_fails, prediction_points, REPO_ROOT, bundle_configs, demo_datalist, evaluate, infer, overrides, run_bundle, train
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
    """One epoch per stage; TINY includes a non-default ``global_spacing`` (3 mm), which later runs must not repeat."""
    root = tmp_path_factory.mktemp("noothout3d")
    return root, train(BUNDLE, root, demo_env, max_epochs=1, **TINY)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory, demo_env):
    """Evaluation of the trained model WITHOUT repeating any training setting, tracked with MLflow."""
    root, _ = trained
    out = tmp_path_factory.mktemp("noothout3d_eval")
    return out, evaluate(BUNDLE, out, demo_env, ckpt_dir=str(root / "models"), tracking="mlflow")


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
def test_training_writes_state_dict_and_settings(trained):
    root, log = trained
    models = root / "models"
    for name in ("model.pt", "model.json", "global.pt", "global.json", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (models / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    # model.pt: the plain state dict of network_def (both stages), loadable with weights_only=True
    from custom_monai.networks import GlobalToLocalFCNN

    record = json.loads((models / "model.json").read_text())
    settings = record["settings"]
    assert settings["landmark_names"] == [f"L{i}" for i in range(1, 7)] and settings["spatial_dims"] == 3
    assert settings["global_spacing"] == [3.0] * 3 and settings["local_spacing"] == [1.5] * 3 and settings["orientation"] == "RAS"
    assert record["metric_name"] == "val_mre" and np.isfinite(record["metric"])
    assert json.loads((models / "global.json").read_text())["metric_name"] == "val_mre_global"
    net = GlobalToLocalFCNN(3, 6, global_channels=TINY["global_channels"], global_blocks=TINY["global_blocks"],
                            global_head_channels=16, local_channels=TINY["local_channels"], local_head_channels=8)
    net.load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    for name in ("global_checkpoint.pt", "local_checkpoint.pt"):
        ckpt = torch.load(models / name, map_location="cpu", weights_only=True)
        assert ckpt["budget"]["elapsed"] > 0  # the stage clock resumes with the checkpoint
    assert log.count("Metrics -- val_mre_global") == 1 and log.count("Metrics -- val_mre:") == 1


@pytest.mark.slow
def test_evaluate_without_training_settings(trained, evaluated, tmp_path, demo_env):
    """Settings travel with model.pt: evaluating without the training overrides equals evaluating with them."""
    root, _ = trained
    out, metrics = evaluated
    assert metrics["n_images"] == 4 and metrics["n_points"] == 4 * 6 and metrics["mre_mm"] is not None
    images = demo_datalist(demo_env, "3d").parent / "images"
    _check_prediction_files(out, images / "test_000.nii.gz", 6)
    with_settings = tmp_path / "eval_with"
    evaluate(BUNDLE, with_settings, demo_env, ckpt_dir=str(root / "models"), **TINY)
    assert_same_points(prediction_points(out), prediction_points(with_settings))


@pytest.mark.slow
def test_inference_settings_travel_and_contradictions_stop(trained, tmp_path, demo_env):
    import itk

    root, _ = trained
    images = demo_datalist(demo_env, "3d").parent / "images"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(images / "test_000.nii.gz", inp / "test_000.nii.gz")
    itk.imwrite(itk.imread(str(images / "test_001.nii.gz")), str(inp / "test_001.mha"))
    models = root / "models"
    infer(BUNDLE, inp, tmp_path / "pred", models, demo_env)
    for name in ("test_000.nii.gz", "test_001.mha"):
        voxel, _, _ = _check_prediction_files(tmp_path / "pred", inp / name, 6)
        assert np.all(np.isfinite(voxel))
    infer(BUNDLE, inp, tmp_path / "pred_with", models, demo_env, **TINY)
    assert_same_points(prediction_points(tmp_path / "pred"), prediction_points(tmp_path / "pred_with"))
    # an override that contradicts the trained value stops, naming the setting and both values
    msg = bundle_fails(["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
                 + overrides(input_dir=str(inp), output_dir=str(tmp_path / "bad"), ckpt_dir=str(models), global_spacing=[2.0, 2.0, 2.0]),
                 demo_env)
    assert "setting 'global_spacing'" in msg and "[3.0, 3.0, 3.0]" in msg and "[2.0, 2.0, 2.0]" in msg, msg[-2000:]
    msg = bundle_fails(["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
                 + overrides(output_dir=str(tmp_path / "bad_eval"), ckpt_dir=str(models), patch_size=12), demo_env)
    assert re.search(r"setting 'patch_size': .* was trained with 8, but this run asks for 12", msg), msg[-2000:]
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.json"))


@pytest.mark.slow
def test_metadata_verify_net_and_export_with_defaults(trained, tmp_path, demo_env):
    """The model zoo's checks with their default arguments on a bundle folder holding configs + models."""
    root, _ = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundles" / BUNDLE / "configs", bundle / "configs")
    shutil.copytree(root / "models", bundle / "models")
    meta = str(bundle / "configs" / "metadata.json")
    infer_cfg = str(bundle / "configs" / "inference.json")
    run_bundle(["verify_metadata", "--meta_file", meta, "--filepath", str(REPO_ROOT / "scripts" / "bundle_meta_schema.json")])
    # num_channels = 6 landmarks x (1 presence + 3 displacements) = 24, from network_def's single output
    assert json.loads(Path(meta).read_text())["network_data_format"]["outputs"]["pred"]["num_channels"] == 24
    run_bundle(["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", infer_cfg, "--bundle_root", str(bundle)], env=demo_env)
    run_bundle(["ckpt_export", "network_def", "--bundle_root", str(bundle), "--config_file", infer_cfg], env=demo_env)
    from custom_monai.networks import GlobalToLocalFCNN

    eager = GlobalToLocalFCNN(3, 6, global_channels=TINY["global_channels"], global_blocks=TINY["global_blocks"],
                              global_head_channels=16, local_channels=TINY["local_channels"], local_head_channels=8)
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(bundle / "models" / "model.ts")).eval()
    x = torch.rand(1, 1, 32, 24, 16)
    with torch.no_grad():
        out = scripted(x)
        assert out.shape == (1, 24, 4, 3, 2)
        torch.testing.assert_close(out, eager.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_monai_workflow_properties(trained, tmp_path, demo_env, monkeypatch):
    """MONAI's own ``check_properties`` (TrainProperties / InferProperties) finds every id where it looks."""
    from monai.bundle import ConfigWorkflow

    root, _ = trained
    monkeypatch.setenv("CUSTOM_MONAI_CACHE", demo_env["CUSTOM_MONAI_CACHE"])
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(demo_datalist(demo_env, "3d").parent / "images" / "test_000.nii.gz", inp)
    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        workflow = ConfigWorkflow(config_file=bundle_configs(BUNDLE, config), workflow_type=kind,
                                  ckpt_dir=str(root / "models"), log_dir=str(tmp_path / "logs"), input_dir=str(inp),
                                  output_dir=str(tmp_path / "out"), device="$torch.device('cpu')")
        workflow.initialize()
        assert workflow.check_properties() == [], config


@pytest.mark.slow
def test_mlflow_tracking_one_run_per_command(tmp_path, demo_env, evaluated):
    """``--tracking mlflow``: one run with params, train_loss and both stages' validation metrics; files still written."""
    log = train(BUNDLE, tmp_path, demo_env, max_epochs=1, tracking="mlflow", output_dir=str(tmp_path), **TINY)
    for name in ("model.pt", "model.json", "global.pt", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (tmp_path / "models" / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    assert_tracked_training(tmp_path / "mlruns.db", {"global_spacing": "[3.0, 3.0, 3.0]", "local_lr_cycles": "5"}, n_train_loss=8)  # iterations of both stages
    # evaluation (the ``evaluated`` fixture ran with --tracking mlflow): metrics and metrics.json as an artifact
    out, metrics = evaluated
    assert_tracked_evaluation(out, metrics)
    assert (out / "test_000.json").is_file() and (out / "test_000.mrk.json").is_file()


@pytest.mark.slow
def test_two_processes_gloo(tmp_path, demo_env):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json on CPU (gloo)."""
    log = train(BUNDLE, tmp_path, demo_env, configs=("train.json", "multi_gpu_train.json"), torchrun=2, max_epochs=1, **TINY)
    assert log.count("Epoch[1] Complete") >= 4  # 2 ranks x (global trainer + local trainer)
    assert (tmp_path / "models" / "model.pt").is_file()
    # 16 training volumes split over 2 ranks, batch 4: 2 iterations per epoch on each rank, in both stages
    for name in ("global_checkpoint.pt", "local_checkpoint.pt"):
        ckpt = torch.load(tmp_path / "models" / name, map_location="cpu", weights_only=True)
        assert ckpt["trainer"]["iteration"] == 2, name


SCHEDULE_LINE = re.compile(
    r"schedule: cosine lr ran to progress ([0-9.]+) \(epoch (\d+), iteration (\d+)\); final lr ([0-9.eE+-]+)"
)


def check_budget_schedule(log: str, initial_lr: float, local_minutes: float) -> tuple[int, float]:
    """The local stage ended on its time budget and its cosine lr (5 warm restarts) reached the floor.

    The last iteration starts before the budget is spent, so its lr is just above the floor: at most the
    schedule's value three (average) iterations before the end; an epoch-based schedule over
    ``max_epochs`` 100000 would still be at ~ the initial lr.
    """
    from custom_monai.handlers import lr_factor

    lines = SCHEDULE_LINE.findall(log)
    assert len(lines) == 1, log[-3000:]  # the local stage's ProgressLRHandler
    progress, epoch, iterations, lr = float(lines[0][0]), int(lines[0][1]), int(lines[0][2]), float(lines[0][3])
    assert re.search(rf"time budget of {local_minutes:.1f} min .*reached", log), log[-3000:]
    assert progress == 1.0 and epoch < 100000 and iterations > 20
    floor = 0.0  # min_factor of the bundle's ProgressLRHandler
    bound = lr_factor(1.0 - 3.0 / iterations, "cosine", floor, cycles=5, cycle_mult=2.0)
    assert bound < 0.01
    assert floor * initial_lr <= lr <= initial_lr * bound, (lr, initial_lr * bound)
    return iterations, lr


@pytest.mark.slow
def test_local_lr_schedule_follows_time_budget(tmp_path, demo_env):
    """Issue 10: with ``max_train_minutes`` 1 and ``max_epochs`` 100000 the local cosine schedule still runs in full."""
    log = train(BUNDLE, tmp_path, demo_env, max_train_minutes=1, max_epochs=100000, **dict(TINY, val_interval=100000))
    check_budget_schedule(log, initial_lr=0.001, local_minutes=0.4)
    assert (tmp_path / "models" / "model.pt").is_file()


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

    from custom_monai.handlers import save_model
    from custom_monai.networks import GlobalToLocalFCNN

    settings = {
        "landmark_names": names, "spatial_dims": 3, "orientation": "RAS", "global_spacing": [1.0] * 3,
        "local_spacing": [1.0] * 3, "local_shared": True, "local_channels": [4, 4], "local_head_channels": 4,
        "patch_size": 8, "decode_mode": "weighted", "decode_k": 9, "decode_threshold": 0.5, "local_decode_mode": "weighted",
    }
    # network_def with the oracle as its global stage; model.pt + model.json written as training writes them
    network = GlobalToLocalFCNN(3, len(names), global_channels=(4, 4, 4, 4), global_blocks=(1, 1, 1, 1), global_head_channels=4,
                                local_shared=True, local_channels=(4, 4), local_head_channels=4)
    network.global_net = WorldOracle(world)
    assert network.cell_size == WorldOracle.cell_size
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    save_model(network, ckpt, settings)
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
        network_def=network,
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
