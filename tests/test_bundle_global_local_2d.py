"""End-to-end runs of the global_local_fcnn_ceph2d bundle through ``python -m monai.bundle``.

Small networks and inputs keep each run to seconds on 2 CPU cores; the pipeline, the files written and
the command lines are the ones a user runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import REPO_ROOT, assert_scores_match, bundle_configs, demo_datalist, overrides, run_bundle, train

BUNDLE = "global_local_fcnn_ceph2d"
TINY = dict(
    global_channels=[8, 16, 32, 64],
    global_blocks=[1, 1, 1, 1],
    global_head_channels=16,
    chunk_size=[64, 64],
    local_channels=[8, 8],
    local_head_channels=8,
    patch_size=16,
    patches_per_image=1,
    batch_size=8,
    local_batch_size=8,
    val_interval=1,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_env):
    """One epoch per stage on the generated demo data (the README's command, plus small settings)."""
    root = tmp_path_factory.mktemp("noothout2d")
    return root, train(BUNDLE, root, demo_env, max_epochs=1, **TINY)


def test_training_writes_checkpoints_with_settings(trained):
    root, log = trained
    models = root / "models"
    for name in ("model.pt", "global.pt", "global_checkpoint.pt", "local_checkpoint.pt"):
        assert (models / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    ckpt = torch.load(models / "model.pt", map_location="cpu", weights_only=False)
    assert set(ckpt) >= {"global", "local", "_meta"}
    meta = ckpt["_meta"]
    assert meta["landmark_names"] == [f"L{i}" for i in range(1, 20)]
    assert meta["global_channels"] == TINY["global_channels"] and meta["patch_size"] == 16
    assert meta["local_shared"] is False and meta["global_scale"] == 0.25 and meta["local_scale"] == 0.5
    assert np.isfinite(meta["metric"])
    # 19 independent local nets (the paper's), as grouped convolutions: 8 filters per landmark, 1 input channel each
    first = next(v for k, v in ckpt["local"].items() if k.endswith("weight") and v.ndim == 4)
    assert tuple(first.shape) == (8 * 19, 1, 3, 3)
    assert log.count("Metrics -- val_mre") == 2  # one validation of each stage
    assert list((root / "logs").rglob("events.out.tfevents*")), "no TensorBoard logs"


def test_resume_continues_from_next_epoch(trained, tmp_path, demo_env):
    root, _ = trained
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    before = {n: torch.load(models / n, map_location="cpu", weights_only=False) for n in ("global_checkpoint.pt", "local_checkpoint.pt")}
    for ckpt in before.values():
        assert next(iter(ckpt["optimizer"]["state"].values()))["step"].item() == ckpt["trainer"]["iteration"] > 0
    proc = run_bundle(
        ["run", "training", "--config_file", bundle_configs(BUNDLE, "train.json")]
        + overrides(max_epochs=2, ckpt_dir=str(models), log_dir=str(tmp_path / "logs"), **TINY),
        env=demo_env,
    )
    log = proc.stdout + proc.stderr
    assert "global_checkpoint.pt at epoch 1" in log and "local_checkpoint.pt at epoch 1" in log, log[-3000:]
    for name, ckpt in before.items():
        after = torch.load(models / name, map_location="cpu", weights_only=False)
        assert after["trainer"]["iteration"] == 2 * ckpt["trainer"]["iteration"]
        # Adam's step count continued from epoch 1's: the optimizer state was restored, not re-created
        assert next(iter(after["optimizer"]["state"].values()))["step"].item() == after["trainer"]["iteration"]
    local = torch.load(models / "local_checkpoint.pt", map_location="cpu", weights_only=False)
    # the local cosine schedule with warm restarts steps per iteration and was saved with the optimizer
    assert local["lr_scheduler"]["last_epoch"] == local["trainer"]["iteration"]


def test_evaluate_and_score_agree(trained, tmp_path, demo_env):
    root, _ = trained
    out = tmp_path / "eval"
    run_bundle(
        ["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
        + overrides(ckpt_dir=str(root / "models"), output_dir=str(out), **TINY),
        env=demo_env,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 12 and metrics["n_points"] == 12 * 19
    assert set(metrics["sdr"]) == {"2.0", "2.5", "3.0", "4.0"} and len(metrics["per_landmark"]) == 19
    for f in ("predictions.csv", "errors_boxplot.png", "test_000.json", "test_000_overlay.png"):
        assert (out / f).is_file(), f
    pred = json.loads((out / "test_000.json").read_text())
    assert pred["stage"] == "full" and pred["method"] == BUNDLE
    datalist = demo_datalist(demo_env, "2d")
    assert_scores_match(datalist, out, metrics, tmp_path / "score")


def test_inference_on_folder_global_and_full(trained, tmp_path, demo_env):
    root, _ = trained
    images = demo_datalist(demo_env, "2d").parent / "images"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(images / "test_000.png", inp / "test_000.png")
    (inp / "broken.png").write_bytes((images / "test_001.png").read_bytes()[:1500])
    results = {}
    for stage in ("global", "full"):
        out = tmp_path / f"pred_{stage}"
        proc = run_bundle(
            ["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
            + overrides(input_dir=str(inp), output_dir=str(out), ckpt_dir=str(root / "models"), predict_stage=stage),
            env=demo_env,
        )
        assert "broken.png" in proc.stdout + proc.stderr
        pred = json.loads((out / "test_000.json").read_text())
        assert pred["stage"] == stage and [lm["index"] for lm in pred["landmarks"]] == list(range(1, 20))
        xy = np.array([[lm["x"], lm["y"]] for lm in pred["landmarks"]], dtype=float)
        assert np.all(np.isfinite(xy))
        results[stage] = xy
        assert (out / "test_000_overlay.png").is_file() and not (out / "broken.json").exists()
        errors = json.loads((out / "errors.json").read_text())["unreadable"]
        assert [Path(e["image"]).name for e in errors] == ["broken.png"]
    # the local stage moves each point by at most half a patch (16 px at local scale 0.5 = 16 original px)
    moved = np.abs(results["full"] - results["global"])
    assert np.all(moved <= 16 + 1e-3) and moved.max() > 0


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
         "--key_in_ckpt", "global", "--meta_file", meta, "--config_file", train_cfg]
        + overrides(**TINY),
        env=demo_env,
    )
    from custom_monai.networks import GlobalFCNN

    eager = GlobalFCNN(2, 19, channels=TINY["global_channels"], blocks=TINY["global_blocks"], head_channels=16)
    eager.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=False)["global"])
    eager.eval()
    scripted = torch.jit.load(str(ts)).eval()
    x = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        for a, b in zip(scripted(x), eager(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
