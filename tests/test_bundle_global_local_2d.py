"""End-to-end runs of the global_local_fcnn_ceph2d bundle through ``python -m monai.bundle``.

Small networks and inputs keep each run to seconds on 2 CPU cores (the time-budget schedule test trains
for its 1-minute budget); the pipeline, the files written and the command lines are the ones a user runs.
The bundle contract (issue 9): ``model.pt`` is the plain state dict of ``network_def``, ``model.json``
the settings it was trained with, which evaluation and inference read, so they need no repeated overrides.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import GLOBAL_LOCAL_2D_TINY, assert_same_points, assert_tracked_evaluation, assert_tracked_training, bundle_fails, prediction_points, REPO_ROOT, assert_scores_match, bundle_configs, demo_datalist, evaluate, infer, overrides, run_bundle, train

BUNDLE = "global_local_fcnn_ceph2d"
TINY = GLOBAL_LOCAL_2D_TINY

pytestmark = pytest.mark.slow


def _tiny_network():
    from custom_monai.networks import GlobalToLocalFCNN

    return GlobalToLocalFCNN(2, 19, global_channels=TINY["global_channels"], global_blocks=TINY["global_blocks"],
                             global_head_channels=16, local_channels=TINY["local_channels"], local_head_channels=8)






@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_env):
    """One epoch per stage on the generated demo data (the README's command, plus small settings)."""
    root = tmp_path_factory.mktemp("noothout2d")
    return root, train(BUNDLE, root, demo_env, max_epochs=1, **TINY)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory, demo_env):
    """Evaluation of the trained model WITHOUT repeating any training setting, tracked with MLflow."""
    root, _ = trained
    out = tmp_path_factory.mktemp("noothout2d_eval")
    return out, evaluate(BUNDLE, out, demo_env, ckpt_dir=str(root / "models"), tracking="mlflow")


def test_training_writes_state_dict_and_settings(trained):
    root, log = trained
    models = root / "models"
    for name in ("model.pt", "model.json", "global.pt", "global.json", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (models / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    record = json.loads((models / "model.json").read_text())
    settings = record["settings"]
    assert settings["landmark_names"] == [f"L{i}" for i in range(1, 20)]
    assert settings["global_channels"] == TINY["global_channels"] and settings["patch_size"] == 16
    assert settings["local_shared"] is False and settings["global_scale"] == 0.2 and settings["local_scale"] == 0.5
    assert record["metric_name"] == "val_mre" and np.isfinite(record["metric"])
    assert json.loads((models / "global.json").read_text())["metric_name"] == "val_mre_global"
    # model.pt: the plain state dict of network_def (both stages), loadable with weights_only=True
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    _tiny_network().load_state_dict(state)
    # 19 independent local nets (the paper's), as grouped convolutions: 8 filters per landmark, 1 input channel each
    first = next(v for k, v in state.items() if k.startswith("local_net.") and k.endswith("weight") and v.ndim == 4)
    assert tuple(first.shape) == (8 * 19, 1, 3, 3)
    assert log.count("Metrics -- val_mre_global") == 1 and log.count("Metrics -- val_mre:") == 1
    assert list((root / "logs").rglob("events.out.tfevents*")), "no TensorBoard logs"


def test_resume_continues_from_next_epoch(trained, tmp_path, demo_env):
    root, _ = trained
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    names = ("global_checkpoint.pt", "local_checkpoint.pt")
    before = {n: torch.load(models / n, map_location="cpu", weights_only=True) for n in names}
    for ckpt in before.values():
        assert next(iter(ckpt["optimizer"]["state"].values()))["step"].item() == ckpt["trainer"]["iteration"] > 0
    # no settings repeated: the resumed run reads them from global.json (a contradicting one would stop it)
    log = train(BUNDLE, tmp_path, demo_env, max_epochs=2, val_interval=1, batch_size=8, local_batch_size=8)
    assert "global_checkpoint.pt at epoch 1" in log and "local_checkpoint.pt at epoch 1" in log, log[-3000:]
    for name, ckpt in before.items():
        after = torch.load(models / name, map_location="cpu", weights_only=True)
        assert after["trainer"]["iteration"] == 2 * ckpt["trainer"]["iteration"]
        # Adam's step count continued from epoch 1's: the optimizer state was restored, not re-created
        assert next(iter(after["optimizer"]["state"].values()))["step"].item() == after["trainer"]["iteration"]
        # the stage clock (the schedules' progress) continued too
        assert after["budget"]["elapsed"] > ckpt["budget"]["elapsed"] > 0
    local = torch.load(models / "local_checkpoint.pt", map_location="cpu", weights_only=True)
    assert local["optimizer"]["param_groups"][0]["initial_lr"] == 0.001  # the progress schedule's base lr


def test_evaluate_without_training_settings(trained, evaluated, tmp_path, demo_env):
    """Settings travel with model.pt: evaluating without the training overrides equals evaluating with them."""
    root, _ = trained
    out, metrics = evaluated
    assert metrics["n_images"] == 12 and metrics["n_points"] == 12 * 19
    assert set(metrics["sdr"]) == {"2.0", "2.5", "3.0", "4.0"} and len(metrics["per_landmark"]) == 19
    for f in ("predictions.csv", "errors_boxplot.png", "test_000.json", "test_000_overlay.png"):
        assert (out / f).is_file(), f
    pred = json.loads((out / "test_000.json").read_text())
    assert pred["stage"] == "full" and pred["method"] == BUNDLE
    assert_scores_match(demo_datalist(demo_env, "2d"), out, metrics, tmp_path / "score")
    with_settings = tmp_path / "eval_with"
    evaluate(BUNDLE, with_settings, demo_env, ckpt_dir=str(root / "models"), write_overlays=False, **TINY)
    assert_same_points(prediction_points(out), prediction_points(with_settings))
    msg = bundle_fails(["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
                 + overrides(output_dir=str(tmp_path / "bad"), ckpt_dir=str(root / "models"), global_scale=0.25), demo_env)
    assert re.search(r"setting 'global_scale': .* was trained with 0\.2, but this run asks for 0\.25", msg), msg[-2000:]


def test_inference_on_folder_global_and_full(trained, tmp_path, demo_env):
    root, _ = trained
    models = root / "models"
    images = demo_datalist(demo_env, "2d").parent / "images"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(images / "test_000.png", inp / "test_000.png")
    (inp / "broken.png").write_bytes((images / "test_001.png").read_bytes()[:1500])
    results = {}
    for stage in ("global", "full"):
        out = tmp_path / f"pred_{stage}"
        log = infer(BUNDLE, inp, out, models, demo_env, predict_stage=stage)
        assert "broken.png" in log
        pred = json.loads((out / "test_000.json").read_text())
        assert pred["stage"] == stage and [lm["index"] for lm in pred["landmarks"]] == list(range(1, 20))
        xy = prediction_points(out)["test_000"]
        assert np.all(np.isfinite(xy))
        results[stage] = xy
        assert (out / "test_000_overlay.png").is_file() and not (out / "broken.json").exists()
        errors = json.loads((out / "errors.json").read_text())["unreadable"]
        assert [Path(e["image"]).name for e in errors] == ["broken.png"]
    # the local stage moves each point by at most half a patch (8 px at local scale 0.5 = 16 original px)
    moved = np.abs(results["full"] - results["global"])
    assert np.all(moved <= 16 + 1e-3) and moved.max() > 0
    # the same points when the training settings are repeated; a contradicting one stops with both values
    infer(BUNDLE, inp, tmp_path / "pred_with", models, demo_env, **TINY)
    assert_same_points(prediction_points(tmp_path / "pred_full"), prediction_points(tmp_path / "pred_with"))
    msg = bundle_fails(["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
                 + overrides(input_dir=str(inp), output_dir=str(tmp_path / "bad"), ckpt_dir=str(models), chunk_size=[192, 192]),
                 demo_env)
    assert re.search(r"setting 'chunk_size': .* was trained with \[64, 64\], but this run asks for \[192, 192\]", msg), msg[-2000:]


def test_metadata_verify_net_and_export_with_defaults(trained, tmp_path, demo_env):
    """The model zoo's checks with their default arguments on a bundle folder holding configs + models."""
    root, _ = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundles" / BUNDLE / "configs", bundle / "configs")
    shutil.copytree(root / "models", bundle / "models")
    meta = str(bundle / "configs" / "metadata.json")
    infer_cfg = str(bundle / "configs" / "inference.json")
    run_bundle(["verify_metadata", "--meta_file", meta, "--filepath", str(REPO_ROOT / "scripts" / "bundle_meta_schema.json")])
    # num_channels = 19 landmarks x (1 presence + 2 displacements) = 57, network_def's single output
    assert json.loads(Path(meta).read_text())["network_data_format"]["outputs"]["pred"]["num_channels"] == 57
    run_bundle(["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", infer_cfg, "--bundle_root", str(bundle)], env=demo_env)
    run_bundle(["ckpt_export", "network_def", "--bundle_root", str(bundle), "--config_file", infer_cfg], env=demo_env)
    eager = _tiny_network()
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(bundle / "models" / "model.ts")).eval()
    x = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        out = scripted(x)
        assert out.shape == (1, 57, 3, 4)
        torch.testing.assert_close(out, eager.eval()(x), rtol=1e-5, atol=1e-5)


def test_mlflow_tracking_one_run_per_command(tmp_path, demo_env, evaluated):
    """``--tracking mlflow``: one run with params, train_loss and both stages' validation metrics; files still written."""
    log = train(BUNDLE, tmp_path, demo_env, max_epochs=1, tracking="mlflow", output_dir=str(tmp_path), **TINY)
    for name in ("model.pt", "model.json", "global.pt", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (tmp_path / "models" / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    assert_tracked_training(tmp_path / "mlruns.db", {"global_scale": "0.2", "local_lr_cycles": "5"}, n_train_loss=12)  # iterations of both stages
    # evaluation (the ``evaluated`` fixture ran with --tracking mlflow): metrics and metrics.json as an artifact
    out, metrics = evaluated
    assert_tracked_evaluation(out, metrics)
    assert (out / "test_000.json").is_file() and (out / "predictions.csv").is_file()


def test_two_processes_gloo(tmp_path, demo_env):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json on CPU (gloo)."""
    log = train(BUNDLE, tmp_path, demo_env, configs=("train.json", "multi_gpu_train.json"), torchrun=2, max_epochs=1, **TINY)
    assert log.count("Epoch[1] Complete") >= 4  # 2 ranks x (global trainer + local trainer)
    assert (tmp_path / "models" / "model.pt").is_file()
    _tiny_network().load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))
    # 48 training images split over 2 ranks, batch 8: 3 iterations per epoch on each rank, in both stages
    for name in ("global_checkpoint.pt", "local_checkpoint.pt"):
        ckpt = torch.load(tmp_path / "models" / name, map_location="cpu", weights_only=True)
        assert ckpt["trainer"]["iteration"] == 3, name


SCHEDULE_LINE = re.compile(
    r"schedule: cosine lr ran to progress ([0-9.]+) \(epoch (\d+), iteration (\d+)\); final lr ([0-9.eE+-]+)"
)


def test_local_lr_schedule_follows_time_budget(tmp_path, demo_env):
    """Issue 10: with ``max_train_minutes`` 1 and ``max_epochs`` 100000 the local cosine schedule still runs in full.

    The local stage (0.4 min) ends on its budget; its lr (5 cosine cycles, each twice the previous) reached
    the floor 0: the last iteration starts just before the budget is spent, so its lr is at most the
    schedule's value three (average) iterations before the end. An epoch-based schedule over 100000
    epochs would still be at about the initial lr.
    """
    from custom_monai.handlers import lr_factor

    log = train(BUNDLE, tmp_path, demo_env, max_train_minutes=1, max_epochs=100000, **dict(TINY, val_interval=100000))
    lines = SCHEDULE_LINE.findall(log)
    assert len(lines) == 1, log[-3000:]  # the local stage's ProgressLRHandler
    progress, epoch, iterations, lr = float(lines[0][0]), int(lines[0][1]), int(lines[0][2]), float(lines[0][3])
    assert re.search(r"time budget of 0\.4 min .*reached", log), log[-3000:]
    assert progress == 1.0 and epoch < 100000 and iterations > 20
    bound = lr_factor(1.0 - 3.0 / iterations, "cosine", 0.0, cycles=5, cycle_mult=2.0)
    assert bound < 0.01 and 0.0 <= lr <= 0.001 * bound, (lr, 0.001 * bound)
    assert (tmp_path / "models" / "model.pt").is_file()
