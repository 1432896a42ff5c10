"""Export a trained bundle of this repository as a self-contained MONAI model-zoo bundle.

    python scripts/export_bundle.py bundles/<name> --ckpt MODELS/model.pt --out DIR [--metrics EVAL/metrics.json] [--onnx]

The exported folder runs with MONAI alone (``custom_monai`` need not be installed):
- ``scripts/custom_monai``: the package's code, as zoo bundles with custom code carry it in ``scripts/``;
  every config imports ``scripts`` first, which puts that copy in front of ``sys.path``;
- ``configs/``: the bundle's configs with ``bundle_root`` ``"."`` and the trained settings written into
  them (``"trained"``: the contents of ``model.json``), so no settings file travels beside the weights;
- ``models/model.pt`` (the ``network_def`` state dict), ``models/model.ts`` when the network scripts
  (``ckpt_export`` with its default arguments), ``models/model.onnx`` with ``--onnx`` when the network's ops
  allow it (checked against ONNX Runtime, 1e-4);
- ``large_files.yml`` (path, a url placeholder to fill when the weights are uploaded, sha256);
- ``configs/metadata.json`` with the installed ``monai``/``torch``/``numpy`` versions, every real dependency in
  ``required_packages_version``, a ``changelog`` entry and ``eval_metrics`` from ``--metrics``;
- ``docs/README.md`` in the zoo's sections, ``docs/data_license.txt``, ``LICENSE``; and ``DIR.zip``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "custom_monai"
CONFIGS = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
# what the copied custom_monai code imports at run time, by distribution name (custom_monai itself is copied)
RUNTIME_PACKAGES = ("pytorch-ignite", "nibabel", "itk", "pillow", "matplotlib", "scipy", "tqdm", "tensorboard", "fire")
SCRIPTS_INIT = '''"""Code this bundle needs besides MONAI: a copy of the custom_monai package (see ../docs/README.md).

Importing ``scripts`` (the first import of every config) puts this folder first on ``sys.path``.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)
'''
log = logging.getLogger("export_bundle")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _export_configs(src: Path, dst: Path, trained: dict) -> None:
    """Copy the configs; bundle_root "." , the trained settings written in, ``scripts`` imported first."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in CONFIGS:
        if not (src / name).is_file():
            continue
        config = json.loads((src / name).read_text())
        if "imports" in config:
            config["imports"] = ["$import scripts"] + [i for i in config["imports"] if i != "$import scripts"]
        if "bundle_root" in config:
            config["bundle_root"] = "."
        if "trained" in config:
            config["trained"] = trained
        _write_json(dst / name, config)
    shutil.copy2(src / "logging.conf", dst / "logging.conf")


def _metadata(src: Path, version: str, changelog: str, metrics: dict | None, settings: dict) -> dict:
    import monai
    import numpy
    import torch

    meta = json.loads((src / "metadata.json").read_text())
    old_version = meta.get("version", "0.0.0")
    meta["version"] = version
    meta["changelog"] = {version: changelog, **{k: v for k, v in meta.get("changelog", {}).items() if k != version}}
    if old_version != version and old_version not in meta["changelog"]:
        meta["changelog"][old_version] = "repository version"
    meta["monai_version"] = monai.__version__
    meta["pytorch_version"] = torch.__version__.split("+")[0]
    meta["numpy_version"] = numpy.__version__
    meta["required_packages_version"] = {d: v for d in RUNTIME_PACKAGES if (v := _version(d))}
    if metrics:
        meta["eval_metrics"] = {
            "mean_radial_error_mm": metrics.get("mre_mm"),
            "sd_mm": metrics.get("sd_mm"),
            "mean_radial_error_px": metrics.get("mre_px"),
            **{f"sdr_{k}mm_percent": v for k, v in (metrics.get("sdr") or {}).items()},
            "n_images": metrics.get("n_images"),
        }
    names = settings.get("landmark_names")
    if names:
        meta["landmark_names"] = list(names)
    # a network built for a fixed input size (trained setting "input_size"): the metadata states that size,
    # so that verify_net_in_out and onnx_export feed the network what it was trained on
    size = settings.get("input_size")
    image = ((meta.get("network_data_format") or {}).get("inputs") or {}).get("image")
    if size and image and len(image.get("spatial_shape") or []) == len(size):
        image["spatial_shape"] = [int(v) for v in size]
    return meta


def _readme(name: str, meta: dict, docs: str, metrics: dict | None, settings: dict) -> str:
    perf = "No evaluation was given to the export (`--metrics`)."
    if metrics:
        sdr = metrics.get("sdr") or {}
        perf = (
            f"On {metrics.get('n_images')} evaluation images: MRE {metrics.get('mre_mm')} mm (SD {metrics.get('sd_mm')}), "
            + ", ".join(f"SDR {k} mm {v} %" for k, v in sdr.items())
            + ". Measured with the bundle's `evaluating` command (below)."
        )
    refs = "\n".join(f"- {r}" for r in meta.get("references", []))
    shown = {k: v for k, v in settings.items() if k != "landmark_names"}
    return f"""# {meta.get('name', name)}

## Model overview
{meta.get('description', '')}

Task: {meta.get('task', '')}. Landmarks: {', '.join(settings.get('landmark_names', []))}.

## Data
{meta.get('data_source', '')}. Datalist format: `{{"landmark_names", "coordinate_space", "training", "validation", "test"}}`,
each item `{{"image", "landmarks": [[x, y(, z)], ...] (null = missing), "spacing"}}`, 2D points in pixels of the
original image, 3D in world mm (LPS). See `docs/data_license.txt` for the terms of the data the weights were trained on.

## Training configuration
Trained settings (also in `configs/*.json` as `trained`): `{json.dumps(shown)}`.
Installed versions at export: MONAI {meta['monai_version']}, PyTorch {meta['pytorch_version']}, NumPy {meta['numpy_version']}.

## Performance
{perf}

## MONAI bundle commands
Run from this folder (MONAI and the packages in `required_packages_version` installed; nothing else):
```bash
python -m monai.bundle run inference --config_file configs/inference.json --input_dir IMAGES --output_dir OUT
python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir DATA
python -m monai.bundle run training --config_file configs/train.json --dataset_dir DATA
python -m monai.bundle verify_metadata --meta_file configs/metadata.json
python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file configs/inference.json
python -m monai.bundle ckpt_export network_def --bundle_root . --config_file configs/inference.json
```

## References
{refs}

## License
Code: Apache-2.0 (`LICENSE`). Weights: trained on the data described in `docs/data_license.txt`; research use only.

---
The repository bundle's own documentation follows.

{docs}
"""


def export_bundle(
    bundle: str,
    ckpt: str,
    out: str,
    metrics: str | None = None,
    version: str | None = None,
    changelog: str = "exported from the custom_monai repository",
    data_license: str = "The weights were trained on the data named in docs/README.md; that data's own terms apply (research use; the public landmark data sets used here do not allow redistribution of the images).",
    onnx: bool = False,
    zip_file: bool = True,
) -> Path:
    """Write the self-contained bundle ``out`` (see the module docstring) and return its path."""
    from custom_monai.handlers import settings_path, trained_settings

    src, out_dir, ckpt_path = Path(bundle), Path(out), Path(ckpt)
    if not (src / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{src} is not a bundle folder (no configs/inference.json)")
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    trained = trained_settings(ckpt_path)
    evaluation = json.loads(Path(metrics).read_text()) if metrics else None
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "models").mkdir(parents=True)
    (out_dir / "docs").mkdir()
    _export_configs(src / "configs", out_dir / "configs", trained)
    meta = _metadata(src / "configs", version or json.loads((src / "configs" / "metadata.json").read_text())["version"], changelog, evaluation, trained)
    _write_json(out_dir / "configs" / "metadata.json", meta)
    shutil.copytree(PACKAGE, out_dir / "scripts" / "custom_monai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out_dir / "scripts" / "__init__.py").write_text(SCRIPTS_INIT)
    shutil.copy2(ckpt_path, out_dir / "models" / "model.pt")
    shutil.copy2(settings_path(ckpt_path), out_dir / "models" / "model.json")
    shutil.copy2(src / "LICENSE", out_dir / "LICENSE")
    docs = (src / "docs" / "README.md").read_text() if (src / "docs" / "README.md").is_file() else ""
    (out_dir / "docs" / "README.md").write_text(_readme(src.name, meta, docs, evaluation, trained))
    (out_dir / "docs" / "data_license.txt").write_text(data_license + "\n")
    (out_dir / "large_files.yml").write_text(
        "large_files:\n"
        "  - path: \"models/model.pt\"\n"
        "    url: \"<upload the weights and put their URL here>\"\n"
        f"    hash_val: \"{_sha256(out_dir / 'models' / 'model.pt')}\"\n"
        "    hash_type: \"sha256\"\n"
    )
    _monai_bundle(out_dir, "ckpt_export", "network_def", "--bundle_root", ".", "--config_file", "configs/inference.json", what="TorchScript (models/model.ts)")
    if onnx:
        _monai_bundle(
            out_dir, "onnx_export", "network_def", "--filepath", "models/model.onnx", "--ckpt_file", "models/model.pt",
            "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", ".",
            what="ONNX (models/model.onnx)",
        )
    if zip_file:
        shutil.make_archive(str(out_dir), "zip", root_dir=out_dir.parent, base_dir=out_dir.name)
    log.info(f"exported {src} -> {out_dir}")
    return out_dir


def _monai_bundle(bundle_dir: Path, *args: str, what: str) -> bool:
    """Run ``python -m monai.bundle ARGS`` in the exported folder (so only its own ``scripts`` code is used)."""
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning(f"{what} not written: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
        return False
    return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire(export_bundle)
