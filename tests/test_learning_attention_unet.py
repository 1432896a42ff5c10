"""The attention-guided U-Net learns: on demo data a short CPU run beats the mean-shape baseline by far.

Baseline: predict, for every validation image, the mean position of each landmark over the training
images (the best constant guess). Measured when this test was written (2-core CPU, ~3 min): baseline
8.3 mm; see the assertions for the margins required.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from custom_monai.data import DEMO_VERSION
from bundle_utils import bundle_configs, overrides, run_bundle

BUNDLE = "attention_unet_ceph2d"
LEARN = dict(
    global_epochs=80,
    local_epochs=8,
    val_interval=40,
    learning_rate=0.002,
    batch_size=4,
    features=[8, 16, 32, 64, 128, 8],
    global_size=[96, 96],
    sigma_global=4.0,
    patch_size=48,
    patch_offset=16,
    region_size=64,
    patches_per_image=8,
    local_batch_size=16,
    augment_prob=0.0,
)

pytestmark = pytest.mark.slow


def mean_position_baseline(datalist: Path, section: str) -> float:
    """MRE (mm) of predicting the training-set mean landmark positions for every image of ``section``."""
    dl = json.loads(datalist.read_text())
    train = np.array([it["landmarks"] for it in dl["training"]], dtype=float)
    items = dl[section]
    target = np.array([it["landmarks"] for it in items], dtype=float)
    spacing = np.array([it["spacing"] for it in items], dtype=float)[:, None, :]
    return float(np.linalg.norm((target - train.mean(0)) * spacing, axis=-1).mean())


def test_two_stage_unet_learns_on_demo_data(tmp_path):
    env = {"CUSTOM_MONAI_CACHE": str(tmp_path / "cache")}
    run_bundle(
        ["run", "training", "--config_file", bundle_configs(BUNDLE, "train.json")]
        + overrides(ckpt_dir=str(tmp_path / "models"), log_dir=str(tmp_path / "logs"), **LEARN),
        env=env,
    )
    results = {}
    for variant, extra in {"full": {}, "global": {"predict_stage": "global"}}.items():
        out = tmp_path / f"eval_{variant}"
        run_bundle(
            ["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
            + overrides(ckpt_dir=str(tmp_path / "models"), output_dir=str(out), write_overlays=False, **LEARN, **extra),
            env=env,
        )
        results[variant] = json.loads((out / "metrics.json").read_text())["mre_mm"]
    baseline = mean_position_baseline(tmp_path / "cache" / f"demo_2d_v{DEMO_VERSION}" / "datalist.json", "test")
    print(f"test MRE: two-stage {results['full']:.2f} mm, global only {results['global']:.2f} mm, mean-position baseline {baseline:.2f} mm")
    assert results["global"] < baseline
    assert results["full"] < 0.5 * baseline
