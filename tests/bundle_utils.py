"""Helpers for tests that run bundles through ``python -m monai.bundle`` (as a user does)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


# tiny global-to-local FCNN 2D settings: each bundle run takes seconds on one CPU thread
GLOBAL_LOCAL_2D_TINY = dict(
    global_channels=[8, 16, 32, 64],
    global_blocks=[1, 1, 1, 1],
    global_head_channels=16,
    global_scale=0.2,  # non-default preprocessing: evaluation and inference must take it from model.json
    chunk_size=[64, 64],
    local_channels=[8, 8],
    local_head_channels=8,
    patch_size=16,
    patches_per_image=1,
    batch_size=8,
    local_batch_size=8,
    val_interval=1,
)


def bundle_configs(name: str, *files: str) -> str:
    """The ``--config_file`` value for one or several config files of bundle ``name``."""
    paths = [str(REPO_ROOT / "bundles" / name / "configs" / f) for f in files]
    return paths[0] if len(paths) == 1 else json.dumps(paths).replace('"', "'")


def run_bundle(args: list[str], env: dict | None = None, timeout: int = 1500, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` (or under ``torchrun`` with that many processes) from the repo root.

    Raises with the tail of the output when the command fails.
    """
    full_env = dict(os.environ)
    # one thread per process: oversubscribed cores (pytest -n 2, torchrun) slow torch down by 10x or more
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "-m", "monai.bundle", *args]
    else:
        cmd = [sys.executable, "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def overrides(**kwargs) -> list[str]:
    """``--key value`` pairs; non-strings as Python literals, which is what ``fire`` parses."""
    out = []
    for k, v in kwargs.items():
        out += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return out


def train(bundle: str, root: Path, env: dict, *, configs: tuple[str, ...] = ("train.json",), torchrun: int = 0,
          timeout: int = 1500, **settings) -> str:
    """``run training`` of ``bundle`` with checkpoints in ``ROOT/models``, logs in ``ROOT/logs``; returns the log."""
    proc = run_bundle(
        ["run", "training", "--config_file", bundle_configs(bundle, *configs)]
        + overrides(ckpt_dir=str(root / "models"), log_dir=str(root / "logs"), **settings),
        env=env, timeout=timeout, torchrun=torchrun,
    )
    return proc.stdout + proc.stderr


def demo_datalist(env: dict, kind: str = "2d") -> Path:
    """The generated demo datalist under the cache of ``env`` (after a bundle run created it)."""
    from custom_monai.data import DEMO_VERSION

    path = Path(env["CUSTOM_MONAI_CACHE"]) / f"demo_{kind}_v{DEMO_VERSION}" / "datalist.json"
    assert path.is_file(), f"no demo datalist at {path}"
    return path


def last_metrics(log: str, *names: str) -> dict[str, float]:
    """The last ``name: value`` pairs that ``StatsHandler`` printed on a ``Metrics --`` line."""
    lines = [ln for ln in log.splitlines() if "Metrics --" in ln]
    assert lines, f"no metrics line in the log:\n{log[-3000:]}"
    out = {}
    for name in names:
        m = re.search(rf"\b{name}: ([0-9.eE+-]+)", lines[-1])
        assert m, f"{name} missing from {lines[-1]!r}"
        out[name] = float(m.group(1))
    return out


def mean_position_baseline(datalist: Path, section: str) -> float:
    """MRE (mm) of the mean training positions on ``section`` (:func:`custom_monai.metrics.mean_position_baseline`)."""
    from custom_monai.metrics import mean_position_baseline as baseline

    return baseline(datalist, section)


def hamedan_subset(data_dir: Path, out_dir: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """A Hamedan datalist from ``scripts/prepare_data.py`` (the user's command), trimmed to a few images."""
    full = out_dir / "hamedan.json"
    subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "hamedan", "--root", str(data_dir / "hamedan_ceph"), "--out", str(full)],
        cwd=REPO_ROOT, check=True, capture_output=True,
    )
    dl = json.loads(full.read_text())
    assert (len(dl["training"]), len(dl["validation"]), len(dl["test"])) == (60, 20, 20)
    small = out_dir / "small.json"
    small.write_text(json.dumps(dict(dl, training=dl["training"][:n_train], validation=dl["validation"][:n_val], test=[])))
    return small


def assert_scores_match(datalist: Path, predictions: Path, metrics: dict, out: Path, section: str = "test") -> None:
    """``scripts/score.py`` on the written prediction JSONs gives the evaluation's own ``metrics.json`` numbers."""
    subprocess.run(
        [sys.executable, "scripts/score.py", "--datalist", str(datalist), "--section", section,
         "--predictions", str(predictions), "--out", str(out / "metrics.json"), "--quiet"],
        cwd=REPO_ROOT, check=True, capture_output=True,
    )
    scored = json.loads((out / "metrics.json").read_text())
    for key in ("mre_mm", "sd_mm", "median_mm", "mre_px"):
        assert abs(scored[key] - metrics[key]) <= 1e-6 * abs(metrics[key]) + 1e-9, (key, scored[key], metrics[key])
    assert scored["sdr"].keys() == metrics["sdr"].keys()
    for k, v in metrics["sdr"].items():
        assert abs(scored["sdr"][k] - v) <= 1e-6 * abs(v) + 1e-9, ("sdr", k)


def corrupt_image_folder(images: Path, folder: Path, names: tuple[str, ...] = ("test_000.png", "test_001.png")) -> Path:
    """``folder`` with copies of ``names`` from ``images`` and ``broken.png``, a truncated PNG."""
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(images / name, folder / name)
    (folder / "broken.png").write_bytes((images / "test_002.png").read_bytes()[:1500])
    return folder


def infer(bundle: str, input_dir: Path, output_dir: Path, ckpt_dir: Path, env: dict, **settings) -> str:
    """``run inference`` of ``bundle`` on a folder; returns the log."""
    proc = run_bundle(
        ["run", "inference", "--config_file", bundle_configs(bundle, "inference.json")]
        + overrides(input_dir=str(input_dir), output_dir=str(output_dir), ckpt_dir=str(ckpt_dir), **settings),
        env=env,
    )
    return proc.stdout + proc.stderr


def evaluate(bundle: str, output_dir: Path, env: dict, **settings) -> dict:
    """``run evaluating`` of ``bundle`` (train.json + evaluate.json); returns the written ``metrics.json``."""
    run_bundle(
        ["run", "evaluating", "--config_file", bundle_configs(bundle, "train.json", "evaluate.json")]
        + overrides(output_dir=str(output_dir), **settings),
        env=env,
    )
    return json.loads((Path(output_dir) / "metrics.json").read_text())


def prediction_points(folder: Path) -> dict[str, np.ndarray]:
    """``{id: (N, D) points}`` of every prediction JSON in ``folder`` (NaN where a landmark was not found)."""
    out = {}
    for f in sorted(folder.glob("*.json")):
        record = json.loads(f.read_text())
        if f.name.endswith(".mrk.json") or "landmarks" not in record:  # markups, metrics.json, MLflow's config_*.json
            continue
        lms = record["landmarks"]
        out[f.stem] = np.array([[np.nan if lm.get(a) is None else lm[a] for a in "xyz" if a in lm] for lm in lms], float)
    assert out, f"no predictions in {folder}"
    return out


def assert_same_points(a: dict, b: dict, tol: float = 1e-3) -> None:
    """Two :func:`prediction_points` results hold the same images and points (``tol`` pixels)."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=tol, rtol=0, err_msg=k)


def bundle_fails(args: list[str], env: dict) -> str:
    """Run a bundle command that must fail; return its output."""
    import pytest

    with pytest.raises(AssertionError) as info:
        run_bundle(args, env=env)
    return str(info.value)


def mlflow_runs(db: Path) -> tuple:
    """An MLflow client on the sqlite store ``db`` and all runs in it."""
    from mlflow.tracking import MlflowClient

    assert db.is_file(), f"no MLflow store at {db}"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def assert_tracked_training(db: Path, params: dict, n_train_loss: int, val_metrics: tuple = ("val_mre_global", "val_mre")) -> None:
    """One MLflow run in ``db`` with ``params`` (as strings), ``n_train_loss`` losses and one value per stage metric."""
    client, runs = mlflow_runs(db)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    for k, v in params.items():
        assert run.data.params[k] == v, (k, run.data.params.get(k), v)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == n_train_loss
    for m in val_metrics:
        assert len(client.get_metric_history(run.info.run_id, m)) == 1, m


def assert_tracked_evaluation(out: Path, metrics: dict) -> None:
    """The evaluation's MLflow run in ``out/mlruns.db`` holds its MRE and ``metrics.json`` as an artifact."""
    client, runs = mlflow_runs(out / "mlruns.db")
    assert len(runs) == 1
    assert abs(runs[0].data.metrics["mre"] - metrics["mre_mm"]) <= 1e-6 * abs(metrics["mre_mm"])
    assert "metrics.json" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]



def trained_network(bundle: str, models: Path) -> torch.nn.Module:
    """``network_def`` of ``bundle`` built from ``models/model.json`` by the bundle's inference.json (the settings
    travel with the model), loaded strictly from ``models/model.pt`` with ``weights_only``, in eval mode."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(REPO_ROOT / "bundles" / bundle), "ckpt_dir": str(models)})
    net = parser.get_parsed_content("network_def", lazy=False)
    net.load_state_dict(torch.load(Path(models) / "model.pt", map_location="cpu", weights_only=True))
    return net.eval()


def assert_scripted_equals_eager(bundle: str, bundle_dir: Path, models: Path, input_shape: tuple, output_shape: tuple) -> None:
    """``bundle_dir/models/model.ts`` (from ``ckpt_export``) gives the eager ``network_def``'s output on random input."""
    eager = trained_network(bundle, models)
    scripted = torch.jit.load(str(Path(bundle_dir) / "models" / "model.ts")).eval()
    x = torch.rand(*input_shape)
    with torch.no_grad():
        out = scripted(x)
        assert tuple(out.shape) == tuple(output_shape)
        torch.testing.assert_close(out, eager(x), rtol=1e-5, atol=1e-5)


def hamedan_round_trip(bundle: str, data_dir: Path, root: Path, env: dict, **settings) -> tuple[dict, dict, Path]:
    """Train one epoch on a small Hamedan datalist (``hamedan_subset``), evaluate it, and infer one validation image.

    Checks what every 2D bundle must do on real cephalograms: 2 evaluated images, errors in mm from the
    datalist's 0.127 mm spacing, and the inference of the image equal to its evaluation (same preprocessing,
    settings read from model.json). Returns the evaluation metrics, the prediction JSON and the image path.
    """
    small = hamedan_subset(data_dir, root)
    train(bundle, root, env, max_epochs=1, datalist=str(small), **settings)
    metrics = evaluate(bundle, root / "eval", env, write_overlays=False, datalist=str(small), ckpt_dir=str(root / "models"))
    assert metrics["n_images"] == 2 and metrics["mre_mm"] is not None  # spacing 0.127 mm from the datalist
    assert abs(metrics["mre_mm"] - metrics["mre_px"] * 0.127) <= 1e-6 * metrics["mre_mm"]
    first = Path(json.loads(small.read_text())["validation"][0]["image"])
    src = first if first.is_absolute() else small.parent / first
    inp = root / "in"
    inp.mkdir()
    shutil.copy(src, inp / src.name)
    infer(bundle, inp, root / "pred", root / "models", env, write_overlays=False)
    pred = json.loads((root / "pred" / f"{src.stem}.json").read_text())
    assert len(pred["landmarks"]) == 19
    np.testing.assert_allclose(prediction_points(root / "pred")[src.stem], prediction_points(root / "eval")[src.stem], atol=1e-3)
    return metrics, pred, src


def zoo_checks(bundle: str, models: Path, tmp_path: Path, spatial_shape: list | None = None) -> Path:
    """The model zoo's checks with their default arguments; returns the bundle root that holds the trained model.

    ``verify_metadata`` against the kept schema; ``verify_net_in_out`` on the bundle as cloned (no models/: the
    network from the configs' defaults); then, on a bundle root with ``models/model.pt`` + ``model.json``:
    ``verify_net_in_out`` (its metadata given the trained ``spatial_shape``, when given) and ``ckpt_export``.
    """
    meta = str(REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json")
    run_bundle(["verify_metadata", "--meta_file", meta, "--filepath", str(REPO_ROOT / "scripts" / "bundle_meta_schema.json")])
    fresh = tmp_path / "fresh"  # the repository bundle as cloned: no models/ (a local training run may have one)
    shutil.copytree(REPO_ROOT / "bundles" / bundle / "configs", fresh / "configs")
    run_bundle(["verify_net_in_out", "network_def", "--meta_file", str(fresh / "configs" / "metadata.json"),
                "--config_file", str(fresh / "configs" / "inference.json"), "--bundle_root", str(fresh)])
    root = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "bundles" / bundle / "configs", root / "configs")
    (root / "models").mkdir()
    for name in ("model.pt", "model.json"):
        shutil.copy(Path(models) / name, root / "models" / name)
    config = str(root / "configs" / "inference.json")
    if spatial_shape is not None:
        metadata = json.loads((root / "configs" / "metadata.json").read_text())
        metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] = list(spatial_shape)
        (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
        run_bundle(["verify_net_in_out", "network_def", "--meta_file", str(root / "configs" / "metadata.json"),
                    "--config_file", config, "--bundle_root", str(root)])
    run_bundle(["ckpt_export", "network_def", "--bundle_root", str(root), "--config_file", config])
    return root


def model_record(root: Path, log: str) -> dict:
    """``ROOT/models`` after a training run: model.pt, model.json and the resumable checkpoint exist; model.json
    names the demo landmarks and the selection metric. Returns model.json's content."""
    models = root / "models"
    for name in ("model.pt", "model.json", "checkpoint.pt"):
        assert (models / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    record = json.loads((models / "model.json").read_text())
    assert record["settings"]["landmark_names"] == [f"L{i}" for i in range(1, 20)]
    assert record["metric_name"] == "val_mre" and np.isfinite(record["metric"])
    return record


def assert_label_predicts_as_inference(bundle: str, models: Path, tmp_path: Path, env: dict, image: str = "test_000.png") -> dict:
    """MONAI Label's wrapper of ``bundle`` (``custom_monai.label.LandmarkBundle``, what the label app serves) predicts
    the points, names and per-landmark fields that ``run inference`` writes for the same image and ``model.pt``.

    The wrapper imports no MONAI Label, so this runs in the main environment; ``tests/test_label.py`` serves it over
    HTTP in MONAI Label's own. Returns the served record.
    """
    from custom_monai.label.bundle import LandmarkBundle

    inp, out = tmp_path / "label_in", tmp_path / "label_out"
    inp.mkdir()
    shutil.copy(demo_datalist(env).parent / "images" / image, inp / image)
    infer(bundle, inp, out, models, env)
    want = json.loads((out / f"{Path(image).stem}.json").read_text())
    served = LandmarkBundle(REPO_ROOT / "bundles" / bundle, Path(models) / "model.pt", device="cpu")
    record, points, world = served.predict(inp / image)
    assert world is None and points.shape == (len(want["landmarks"]), 2)
    assert [lm["name"] for lm in record["landmarks"]] == [lm["name"] for lm in want["landmarks"]]
    for got_lm, want_lm in zip(record["landmarks"], want["landmarks"]):
        assert set(got_lm) == set(want_lm), (got_lm, want_lm)
        for key, value in want_lm.items():
            pairs = value.items() if isinstance(value, dict) else [(None, value)]  # e.g. D-CeLR's sigma {x, y}
            for sub, v in pairs:
                got = got_lm[key] if sub is None else got_lm[key][sub]
                if isinstance(v, (int, float)):
                    assert got == pytest.approx(v, abs=1e-3), (key, got_lm, want_lm)
                else:
                    assert got == v, (key, got_lm, want_lm)
    return record
