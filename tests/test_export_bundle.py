"""``scripts/export_bundle.py``: a zoo bundle that MONAI alone runs and whose checks pass offline."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_utils import GLOBAL_LOCAL_2D_TINY, prediction_points, REPO_ROOT, bundle_configs, demo_datalist, overrides, run_bundle, train

BUNDLE = "global_local_fcnn_ceph2d"
TINY = GLOBAL_LOCAL_2D_TINY
# Runs monai.bundle with the installed custom_monai hidden: only the exported bundle's scripts/ copy can be imported.
HIDDEN_RUNNER = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != {repo!r}]
sys.argv = ["monai.bundle"] + sys.argv[1:]
try:
    runpy.run_module("monai.bundle", run_name="__main__")
finally:
    mod = sys.modules.get("custom_monai")
    print("CUSTOM_MONAI_FROM", getattr(mod, "__file__", None))
"""

pytestmark = pytest.mark.slow


def _run_hidden(bundle_dir: Path, *args: str, env: dict) -> str:
    cmd = [sys.executable, "-c", HIDDEN_RUNNER.format(repo=str(REPO_ROOT)), *args]
    proc = subprocess.run(cmd, cwd=bundle_dir, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out



@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_env):
    import os

    env = {**os.environ, **demo_env}
    root = tmp_path_factory.mktemp("export")
    train(BUNDLE, root, demo_env, max_epochs=1, **TINY)
    run_bundle(
        ["run", "evaluating", "--config_file", bundle_configs(BUNDLE, "train.json", "evaluate.json")]
        + overrides(ckpt_dir=str(root / "models"), output_dir=str(root / "eval"), write_overlays=False),
        env=demo_env,
    )
    out = root / "zoo" / BUNDLE
    subprocess.run(
        [sys.executable, "scripts/export_bundle.py", f"bundles/{BUNDLE}", "--ckpt", str(root / "models" / "model.pt"),
         "--out", str(out), "--metrics", str(root / "eval" / "metrics.json"), "--onnx", "True"],
        cwd=REPO_ROOT, env={**env, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, text=True, timeout=900,
    )
    return root, out, env


def test_export_layout_and_metadata(exported):
    root, out, env = exported
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
                "models/model.pt", "models/model.ts", "models/model.onnx", "large_files.yml", "LICENSE",
                "docs/README.md", "docs/data_license.txt", "scripts/__init__.py", "scripts/custom_monai/__init__.py"):
        assert (out / rel).is_file(), rel
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert "custom_monai" not in meta["required_packages_version"]
    assert {"pytorch-ignite", "nibabel", "itk"} <= set(meta["required_packages_version"])
    assert meta["monai_version"] and meta["pytorch_version"] and meta["numpy_version"] and meta["changelog"]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert meta["eval_metrics"]["mean_radial_error_mm"] == pytest.approx(metrics["mre_mm"])
    readme = (out / "docs" / "README.md").read_text()
    for section in ("Model overview", "Data", "Training configuration", "Performance", "MONAI bundle commands", "References", "License"):
        assert f"## {section}" in readme
    large = (out / "large_files.yml").read_text()
    assert "models/model.pt" in large and "hash_val" in large
    # the trained settings are written into the exported configs: no sidecar file is needed
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["trained"]["patch_size"] == TINY["patch_size"] and inference["bundle_root"] == "."
    assert inference["imports"][0] == "$import scripts"
    with zipfile.ZipFile(str(out) + ".zip") as z:
        assert f"{BUNDLE}/models/model.pt" in z.namelist()


def test_zoo_checks_pass_offline_without_custom_monai(exported):
    _, out, env = exported
    schema = str(REPO_ROOT / "scripts" / "bundle_meta_schema.json")
    log = _run_hidden(out, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", schema, env=env)
    assert "metadata is verified with no error" in log
    log = _run_hidden(out, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", env=env)
    assert "verified with no error" in log and str(out / "scripts" / "custom_monai") in log
    (out / "models" / "model.ts").unlink()
    _run_hidden(out, "ckpt_export", "network_def", "--bundle_root", ".", "--config_file", "configs/inference.json", env=env)
    assert (out / "models" / "model.ts").is_file()


def test_exported_inference_reproduces_repository_bundle(exported, tmp_path):
    root, out, env = exported
    images = demo_datalist(env).parent / "images"
    run_bundle(
        ["run", "inference", "--config_file", bundle_configs(BUNDLE, "inference.json")]
        + overrides(ckpt_path=str(root / "models" / "model.pt"), input_dir=str(images), output_dir=str(tmp_path / "repo"), write_overlays=False),
        env=env,
    )
    log = _run_hidden(out, "run", "inference", "--config_file", "configs/inference.json", "--input_dir", str(images),
                      "--output_dir", str(tmp_path / "zoo"), "--write_overlays", "False", env=env)
    assert f"CUSTOM_MONAI_FROM {out / 'scripts' / 'custom_monai' / '__init__.py'}" in log
    repo, zoo = prediction_points(tmp_path / "repo"), prediction_points(tmp_path / "zoo")
    assert repo.keys() == zoo.keys() and len(repo) >= 10
    for k in repo:
        np.testing.assert_allclose(zoo[k], repo[k], atol=1e-3, err_msg=k)


def test_onnx_matches_eager(exported):
    import onnxruntime as ort

    _, out, _ = exported
    from custom_monai.networks import GlobalToLocalFCNN

    settings = json.loads((out / "models" / "model.json").read_text())["settings"]
    net = GlobalToLocalFCNN(
        spatial_dims=2, n_landmarks=len(settings["landmark_names"]), global_channels=settings["global_channels"],
        global_blocks=settings["global_blocks"], global_stem_channels=settings["global_stem_channels"],
        global_head_channels=settings["global_head_channels"], global_stage_pools=settings["global_stage_pools"],
        global_downsample=settings["global_downsample"], local_shared=settings["local_shared"],
        local_channels=settings["local_channels"], local_head_channels=settings["local_head_channels"],
    )
    net.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))
    net.eval()
    session = ort.InferenceSession(str(out / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 64 for d in session.get_inputs()[0].shape]
    x = torch.rand(*shape)
    with torch.no_grad():
        eager = net(x).numpy()
    np.testing.assert_allclose(session.run(None, {name: x.numpy()})[0], eager, atol=1e-4, rtol=1e-4)
