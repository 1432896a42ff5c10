"""Benchmark bundles on one real split under the same CPU time budget; write one results table.

For each bundle: train (``run training`` with ``--max_train_minutes``), evaluate on the datalist's
validation section (plus the bundle's ablation variants), then time inference file -> JSON on those
images and compare it with the networks' bare forward time. Peak memory (max RSS) is measured per
phase in a fresh process. Results go to ``OUT/results.json`` and ``OUT/results.md``.

Usage::

    python scripts/prepare_data.py hamedan --root ../shared/data/hamedan_ceph --out data/hamedan.json
    python scripts/benchmark.py --datalist data/hamedan.json --minutes 30 --out bench/ --bundles attention_unet_ceph2d
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]

#: evaluation variants per bundle: name -> config overrides (the papers' ablation rows)
VARIANTS = {
    "attention_unet_ceph2d": {
        "full": {},
        "no_expansion": {"expand": False},
        "global_only": {"predict_stage": "global"},
    },
    "cephmarknet_ceph2d": {"refined": {}, "coarse_only": {"predict_output": "coarse"}},
    "global_local_fcnn_ceph2d": {"global_local": {}, "global_only": {"predict_stage": "global"}},
    "global_local_fcnn_3d": {"global_local": {}, "global_only": {"predict_stage": "global"}},
}

_PHASE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from monai.bundle import ConfigWorkflow
args = json.loads(sys.argv[1])
wf = ConfigWorkflow(config_file=args["config_file"], workflow_type=None, run_id=args["run_id"], **args["overrides"])
wf.initialize()
timing = {}
if args.get("time_forward"):
    import torch
    network = wf.parser.get_parsed_content("evaluator").network
    top = list(network.children()) if isinstance(network, torch.nn.ModuleList) else [network]
    timing["forward_s"] = 0.0
    def pre(mod, inp): mod._t = time.perf_counter()
    def post(mod, inp, out): timing["forward_s"] += time.perf_counter() - mod._t
    for m in top:
        m.register_forward_pre_hook(pre); m.register_forward_hook(post)
t1 = time.perf_counter()
wf.run()
t2 = time.perf_counter()
wf.finalize()
print("PHASE_RESULT " + json.dumps({"setup_s": t1 - t0, "run_s": t2 - t1, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **timing}))
"""


def _phase(config_file, run_id: str, overrides: dict, log: Path, time_forward: bool = False) -> dict:
    args = {"config_file": config_file, "run_id": run_id, "overrides": overrides, "time_forward": time_forward}
    env = dict(os.environ)
    with open(log, "w") as f:  # stderr (progress bars) and stdout (the handlers' metric lines) both kept
        proc = subprocess.run([sys.executable, "-c", _PHASE, json.dumps(args)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    with open(log.with_suffix(".out"), "w") as f:
        f.write(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PHASE_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{run_id} failed (exit {proc.returncode}); see {log}")
    return json.loads(lines[-1][len("PHASE_RESULT "):])


def _count_parameters(ckpt: Path) -> dict:
    import torch

    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {k: int(sum(v.numel() for v in sd.values())) for k, sd in data.items() if k != "_meta" and isinstance(sd, dict)}


def benchmark(
    datalist: str,
    out: str = "bench",
    minutes: float = 30.0,
    bundles: str | list = ("attention_unet_ceph2d",),
    max_epochs: int = 100000,
    overrides: dict | None = None,
    skip_training: bool = False,
) -> dict:
    """Train, evaluate and time each bundle; see the module docstring.

    Args:
        datalist: datalist JSON (its validation section is the benchmark's evaluation set).
        out: output folder.
        minutes: training budget per bundle (``max_train_minutes``).
        bundles: bundle names (comma-separated string or list).
        max_epochs: upper bound on epochs (the time budget normally ends training first).
        overrides: extra config overrides for every bundle, e.g. ``{"features": [32, 64, 128, 256, 512, 32]}``.
        skip_training: reuse ``OUT/<bundle>/models`` from an earlier run.
    """
    bundles = [b.strip() for b in bundles.split(",")] if isinstance(bundles, str) else list(bundles)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    datalist = str(Path(datalist).resolve())
    dl = json.loads(Path(datalist).read_text())
    val = dl.get("validation") or []
    results = {"datalist": datalist, "minutes": minutes, "n_validation": len(val), "bundles": {}}
    for name in bundles:
        cfg = REPO_ROOT / "bundles" / name / "configs"
        work = out_dir / name
        work.mkdir(exist_ok=True)
        common = {"datalist": datalist, "ckpt_dir": str(work / "models"), **(overrides or {})}
        row: dict = {}
        if not skip_training:
            print(f"[{name}] training for {minutes} min ...", flush=True)
            row["train"] = _phase(
                str(cfg / "train.json"), "training",
                {**common, "max_train_minutes": minutes, "max_epochs": max_epochs, "log_dir": str(work / "logs")},
                work / "train.log",
            )
        row["parameters"] = _count_parameters(work / "models" / "model.pt")
        row["variants"] = {}
        for variant, extra in VARIANTS.get(name, {"default": {}}).items():
            print(f"[{name}] evaluating {variant} ...", flush=True)
            eval_dir = work / f"eval_{variant}"
            phase = _phase(
                [str(cfg / "train.json"), str(cfg / "evaluate.json")], "evaluating",
                {**common, **extra, "output_dir": str(eval_dir), "write_overlays": False, "eval_section": "validation"},
                work / f"eval_{variant}.log",
            )
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            row["variants"][variant] = {
                k: metrics.get(k) for k in ("n_images", "mre_px", "sd_px", "mre_mm", "sd_mm", "median_mm", "sdr", "n_not_found")
            } | {"eval_run_s": phase["run_s"]}
        # inference file -> JSON on the validation images, with the networks' forward time
        images = work / "infer_in"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir()
        base = Path(datalist).parent
        for item in val:
            src = Path(item["image"]) if Path(item["image"]).is_absolute() else base / item["image"]
            os.symlink(src, images / src.name)
        print(f"[{name}] timing inference on {len(val)} images ...", flush=True)
        inf = _phase(
            str(cfg / "inference.json"), "inference",
            {"input_dir": str(images), "output_dir": str(work / "infer_out"), "ckpt_dir": str(work / "models"), "write_overlays": False},
            work / "inference.log",
            time_forward=True,
        )
        n = max(len(val), 1)
        row["inference"] = {
            "seconds_per_image": inf["run_s"] / n,
            "forward_seconds_per_image": inf.get("forward_s", float("nan")) / n,
            "overhead_ratio": inf["run_s"] / inf["forward_s"] if inf.get("forward_s") else None,
            "max_rss_mb": inf["max_rss_mb"],
        }
        results["bundles"][name] = row
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    _write_table(results, out_dir / "results.md")
    print((out_dir / "results.md").read_text())
    return results


def _fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _write_table(results: dict, path: Path) -> None:
    lines = [
        f"Datalist `{Path(results['datalist']).name}`, validation n = {results['n_validation']}, training budget {results['minutes']} min (CPU).",
        "",
        "| bundle | variant | MRE px | MRE mm (SD) | SDR 2 / 2.5 / 3 / 4 mm % | params | infer s/img (forward) | train peak MB | infer peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["bundles"].items():
        params = "+".join(f"{v / 1e6:.2f}M" for v in row["parameters"].values())
        inf = row["inference"]
        train_mb = row.get("train", {}).get("max_rss_mb")
        for variant, m in row["variants"].items():
            sdr = m.get("sdr") or {}
            sdr_s = " / ".join(_fmt(sdr.get(k), 1) for k in ("2.0", "2.5", "3.0", "4.0"))
            lines.append(
                f"| {name} | {variant} | {_fmt(m['mre_px'])} | {_fmt(m['mre_mm'])} ({_fmt(m['sd_mm'])}) | {sdr_s} | {params} | "
                f"{_fmt(inf['seconds_per_image'])} ({_fmt(inf['forward_seconds_per_image'])}) | {_fmt(train_mb, 0)} | {_fmt(inf['max_rss_mb'], 0)} |"
            )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    fire.Fire(benchmark)
