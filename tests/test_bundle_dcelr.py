"""End-to-end runs of the dcelr_ceph2d bundle through ``python -m monai.bundle``.

Small settings (a 96 x 128 input, 64-wide transformers with 4 heads on an 8 x 8 token grid) keep each run to
seconds on one CPU thread; the pipeline, the files written and the command lines are the ones a user runs.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from bundle_utils import (
    assert_label_predicts_as_inference,
    model_record,
    zoo_checks,
    assert_scripted_equals_eager,
    hamedan_round_trip,
    trained_network,
    assert_same_points,
    assert_scores_match,
    assert_tracked_training,
    bundle_configs,
    bundle_fails,
    demo_datalist,
    evaluate,
    infer,
    last_metrics,
    mean_position_baseline,
    overrides,
    prediction_points,
    run_bundle,
    train,
)

BUNDLE = "dcelr_ceph2d"
# network widths for CPU tests (the paper: 512 wide, 8 heads, 32 x 32 tokens; the ResNet-34 stays)
NET = dict(embed_dim=64, num_heads=4, token_size=8, head_hidden=64)
# the demo images are 320 x 384 px: the paper's 300 px box margin would crop nothing
DECODE = dict(crop_margin=24.0, crop_shift=[8.0, 0.0])
TINY = dict(NET, **DECODE, input_size=[96, 128], batch_size=8, val_interval=1)
VAL_METRICS = ("val_mre", "val_mre_reference", "val_mre_fine")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_env):
    """One epoch on the generated demo data with MLflow tracking. ``input_size`` [96, 128] and the widths are
    not the defaults: evaluation and inference must take them from the trained model."""
    root = tmp_path_factory.mktemp("dcelr")
    return root, train(BUNDLE, root, demo_env, max_epochs=1, output_dir=str(root / "eval"), tracking="mlflow", **TINY)


def test_training_writes_model_settings_and_one_tracked_run(trained):
    """model.pt = the plain state dict of network_def; model.json = its settings; the resumable checkpoint
    also holds the loss (the RLE flow is trained); one MLflow run with settings, losses and the 3 metrics."""
    root, log = trained
    models = root / "models"
    record = model_record(root, log)
    settings = record["settings"]
    assert {k: settings[k] for k in (*NET, *DECODE, "input_size")} == {**NET, **DECODE, "input_size": TINY["input_size"]}
    trained_network(BUNDLE, models)  # strict weights_only load into network_def built from model.json
    ckpt = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"network", "loss", "optimizer", "best", "budget", "trainer"}
    assert any(k.startswith("rle.flow.") for k in ckpt["loss"])
    logged = last_metrics(log, *VAL_METRICS)
    assert logged["val_mre"] == pytest.approx(record["metric"], abs=1e-3)
    assert "schedule: cosine lr ran to progress 1.000" in log
    # 48 images / batch 8 = 6 losses; one validation
    assert_tracked_training(root / "eval" / "mlruns.db", {"input_size": "[96, 128]", "embed_dim": "64"}, 6, VAL_METRICS)


def test_evaluate_variants_infer_and_settings_travel(trained, tmp_path, demo_env):
    """evaluate.json and inference.json WITHOUT repeating the settings: the same two-pass points; the three
    outputs (two_pass default, fine, reference) as ``predict_output``; sigma as each landmark's confidence;
    a contradicting override stops, naming the setting and both values."""
    root, _ = trained
    models = str(root / "models")
    out = tmp_path / "eval"
    metrics = evaluate(BUNDLE, out, demo_env, ckpt_dir=models)
    assert metrics["n_images"] == 12 and metrics["n_points"] == 12 * 19
    pred = json.loads((out / "test_000.json").read_text())
    assert pred["output"] == "two_pass" and pred["method"] == BUNDLE
    lm = pred["landmarks"][0]
    assert lm["confidence"] > 0 and set(lm["sigma"]) == {"x", "y"}
    assert lm["confidence"] == pytest.approx((lm["sigma"]["x"] + lm["sigma"]["y"]) / 2, rel=1e-5)
    assert (out / "test_000_overlay.png").is_file()
    assert_scores_match(demo_datalist(demo_env), out, metrics, tmp_path / "score")

    # the reference row, same model: its MRE is the one the default evaluation logged as mre_reference
    proc = run_bundle(["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
                      + overrides(ckpt_dir=models, output_dir=str(tmp_path / "ref"), predict_output="reference",
                                  write_overlays=False), env=demo_env)
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert json.loads((tmp_path / "ref" / "test_000.json").read_text())["output"] == "reference"
    logged = last_metrics(proc.stdout + proc.stderr, "mre", "mre_fine")
    assert ref["mre_mm"] == pytest.approx(logged["mre"], abs=1e-3)
    assert len({round(v, 4) for v in (metrics["mre_mm"], ref["mre_mm"], logged["mre_fine"])}) == 3

    images = demo_datalist(demo_env).parent / "images"
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("test_000.png", "test_003.png"):
        shutil.copy(images / name, inp / name)
    infer(BUNDLE, inp, tmp_path / "pred", root / "models", demo_env, write_overlays=False)
    evaluated = prediction_points(out)
    assert_same_points(prediction_points(tmp_path / "pred"), {k: evaluated[k] for k in ("test_000", "test_003")})

    msg = bundle_fails(["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
                       + overrides(input_dir=str(inp), output_dir=str(tmp_path / "bad"), ckpt_dir=models, crop_margin=300.0),
                       demo_env)
    assert "setting 'crop_margin'" in msg and "24.0" in msg and "300.0" in msg
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.json"))


def test_metadata_network_and_export(trained, tmp_path):
    """The zoo's checks with default arguments: verify_net_in_out on the bundle as cloned (the paper's network at
    1024 x 1024, 44.5 M parameters) and ckpt_export (TorchScript) on a bundle root holding the trained model."""
    root, _ = trained
    bundle = zoo_checks(BUNDLE, root / "models", tmp_path)
    assert_scripted_equals_eager(BUNDLE, bundle, root / "models", (2, 1, *TINY["input_size"]), (2, 19, 20))


def test_two_processes_gloo(tmp_path, demo_env):
    """``torchrun --nproc_per_node=2`` with multi_gpu_train.json on CPU (gloo); the RLE flow is in the DDP module."""
    log = train(BUNDLE, tmp_path, demo_env, configs=("train.json", "multi_gpu_train.json"), torchrun=2, max_epochs=1,
                **dict(TINY, batch_size=8))
    assert log.count("Epoch[1] Complete") >= 2  # one trainer per rank
    assert "Iter: 3/3" in log and "Iter: 4/" not in log  # each rank: 24 images / batch 8
    assert (tmp_path / "models" / "model.pt").is_file()


LEARN = dict(NET, **DECODE, input_size=[64, 64], batch_size=8, learning_rate=1e-3, train_crop_prob=0.5, augment_prob=0.0)
LEARN_EPOCHS = 60


def test_learning_on_demo_data(tmp_path, demo_env):
    """The method's network (ResNet-34, 4 + 4 ViT blocks; 64 wide) on a 64 x 64 input: after 60 epochs of 6
    batches (about 3 CPU-minutes on one thread, start-up and the one validation included) the fine-tune output
    beats the reference output and both beat the mean-position baseline. The resumable checkpoint is off.
    Measured (seed 0): see docs/README.md."""
    log = train(BUNDLE, tmp_path, demo_env, timeout=2400, max_epochs=LEARN_EPOCHS, val_interval=LEARN_EPOCHS,
                **LEARN, **{"train#stage_handlers#0#_disabled_": True})
    logged = last_metrics(log, *VAL_METRICS)
    baseline = mean_position_baseline(demo_datalist(demo_env), "validation")
    print(f"validation MRE (mm): two-pass {logged['val_mre']:.2f}, fine {logged['val_mre_fine']:.2f}, "
          f"reference {logged['val_mre_reference']:.2f}, mean-position baseline {baseline:.2f}")
    assert logged["val_mre_reference"] < baseline
    assert logged["val_mre_fine"] < logged["val_mre_reference"]
    assert logged["val_mre"] < 0.6 * baseline  # the two-pass prediction (the model selection metric) learnt too


@pytest.mark.realdata
def test_hamedan_train_evaluate_infer(data_dir, tmp_path, demo_env):
    """The same commands on real cephalograms (1340 x 1671 px): a datalist from prepare_data.py, trimmed to a
    few images; the pass-2 margin in Hamedan pixels (the ISBI 30 mm / 10 mm at 0.127 mm/px)."""
    settings = dict(TINY, input_size=[64, 64], batch_size=2, crop_margin=236.0, crop_shift=[79.0, 0.0])
    _, pred, _ = hamedan_round_trip(BUNDLE, data_dir, tmp_path, demo_env, **settings)
    assert pred["output"] == "two_pass"
    assert all(0 <= lm["x"] <= 1340 and 0 <= lm["y"] <= 1671 and lm["confidence"] > 0 for lm in pred["landmarks"])


def test_monai_label_serves_what_inference_writes(trained, tmp_path, demo_env):
    """The MONAI Label app's wrapper of this bundle predicts what ``run inference`` writes (points, names, fields)."""
    root, _ = trained
    assert_label_predicts_as_inference(BUNDLE, root / "models", tmp_path, demo_env)
