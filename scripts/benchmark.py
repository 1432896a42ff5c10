"""Benchmark bundles on one real split under the same CPU time budget; write one results table.

Protocol: every bundle selects ``model.pt`` on the datalist's ``validation`` section (best validation MRE);
the benchmark reports on another section, ``test`` by default (``--section``), which no model selection saw,
and refuses to report on ``validation``. For each bundle: train (``run training`` with
``--max_train_minutes``), evaluate on the reported section (``eval_section``; plus the bundle's ablation
variants), then time inference file -> JSON on those images, compare it with the networks' bare forward time,
and score those prediction files (``scripts/score.py``) against each single annotator when the datalist
carries two (``"annotators"`` in its items). Peak memory (max RSS) is measured per phase in a fresh process.

Human reference rows (datalists with two annotators A and B, on the reported section, over the landmarks that
both placed): A vs B; A vs their mean; B vs their mean (each exactly half of A vs B, pair by pair); and the
expected error of an independent third annotator vs the mean of A and B, sqrt(3/4) x (A vs B). The last one
is the row to compare a model with when the ground truth is the mean of the two annotators.

Results go to ``OUT/results.json`` and ``OUT/results.md`` (main table, human rows, scores against each
annotator, per-landmark MRE).

Usage::

    python scripts/prepare_data.py hamedan --root ../shared/data/hamedan_ceph --out data/hamedan.json
    python scripts/benchmark.py --datalist data/hamedan.json --minutes 30 --out bench/ --bundles attention_unet_ceph2d
    python scripts/benchmark.py --datalist data/hamedan.json --out bench/ --skip_training --human_only
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fire
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as ``python scripts/benchmark.py`` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from custom_monai.data.datalist import SECTIONS, image_id, load_datalist  # noqa: E402
from custom_monai.data.errors import DatalistError  # noqa: E402
from custom_monai.metrics.landmark_metrics import LandmarkErrorAccumulator, summarize_errors  # noqa: E402

#: the section on which every bundle selects ``model.pt`` (best validation MRE): never reported on
SELECTION_SECTION = "validation"
#: key of the datalist's own ground truth (usually the annotators' mean) in :func:`score_against_annotators`
GROUND_TRUTH = "ground truth"
#: expected error of an independent third annotator vs the mean of two, relative to annotator-vs-annotator
THIRD_ANNOTATOR_FACTOR = math.sqrt(3.0 / 4.0)
HUMAN_FOOTNOTE = (
    "Human rows: over the landmarks that both annotators placed. Each annotator is exactly half the "
    "annotator-vs-annotator distance from their mean. 'third annotator (expected)' = sqrt(3/4) x (A vs B) "
    "(≈ 0.87 x), assuming the annotators' errors are independent and identically distributed (then "
    "E|C - (A+B)/2|^2 = 3/4 E|A - B|^2: exact for the root-mean-square error, approximate for the MRE; the "
    "SD, median and SDR columns of that row also assume isotropic Gaussian errors, under which the whole "
    "error distribution scales by sqrt(3/4)). That row, not A vs B, is the human figure to compare a model "
    "with when the ground truth is the mean of the two annotators."
)


def _decoding_candidates(bundle: str) -> dict:
    """The bundle's ``decoding_candidates`` (train.json), the decodings its training chooses among."""
    config = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "train.json").read_text())
    return dict(config.get("decoding_candidates", {}))


#: evaluation variants per bundle: name -> config overrides (the papers' ablation rows)
VARIANTS = {
    "attention_unet_ceph2d": {
        # the default: the decoding chosen on the validation images at the end of training (model.json)
        "chosen_decoding": {},
        # every candidate of that choice (guided blob, paper, weighted maps; one region or exploration), then the
        # paper's full pipeline (its decoding over the five regions of expansive exploration) and stage 1 alone
        **_decoding_candidates("attention_unet_ceph2d"),
        "paper_exploration": {"expand": True, "peak_component": False, "prior_power": 0.0},
        "global_only": {"predict_stage": "global"},
    },
    "cephmarknet_ceph2d": {"refined": {}, "coarse_only": {"predict_output": "coarse"}},
    "dcelr_ceph2d": {"two_pass": {}, "fine": {"predict_output": "fine"}, "reference": {"predict_output": "reference"}},
    "global_local_fcnn_ceph2d": {"global_local": {}, "global_only": {"predict_stage": "global"}},
    "global_local_fcnn_3d": {"global_local": {}, "global_only": {"predict_stage": "global"}},
    "htc_multires_ceph2d": {"mean_of_heads": {}, "quarter_head": {"predict_head": "quarter"}, "half_head": {"predict_head": "half"}},
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
    # forward time of the networks: network_def's own forward, or its stage submodules when the inferer calls
    # them directly (counted only outside the whole module's forward, so nothing is counted twice)
    network = wf.parser.get_parsed_content("evaluator").network
    timing["forward_s"] = 0.0
    depth = {"n": 0}
    def pre(mod, inp):
        depth["n"] += 1
        if depth["n"] == 1:
            mod._t = time.perf_counter()
    def post(mod, inp, out):
        if depth["n"] == 1:
            timing["forward_s"] += time.perf_counter() - mod._t
        depth["n"] -= 1
    for m in [network, *network.children()]:
        m.register_forward_pre_hook(pre); m.register_forward_hook(post)
t1 = time.perf_counter()
wf.run()
t2 = time.perf_counter()
wf.finalize()
print("PHASE_RESULT " + json.dumps({"setup_s": t1 - t0, "run_s": t2 - t1, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **timing}))
"""


def _phase(config_file, run_id: str, overrides: dict, log: Path, time_forward: bool = False, env_extra: dict | None = None) -> dict:
    args = {"config_file": config_file, "run_id": run_id, "overrides": overrides, "time_forward": time_forward}
    env = {**os.environ, **(env_extra or {})}
    with open(log, "w") as f:  # stderr (progress bars) and stdout (the handlers' metric lines) both kept
        proc = subprocess.run([sys.executable, "-c", _PHASE, json.dumps(args)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    with open(log.with_suffix(".out"), "w") as f:
        f.write(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PHASE_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{run_id} failed (exit {proc.returncode}); see {log}")
    return json.loads(lines[-1][len("PHASE_RESULT "):])


def _count_parameters(ckpt: Path) -> dict:
    """Parameters of ``model.pt`` (network_def's state dict) per stage submodule, and in total."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    counts: dict = {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        stage = key.split(".", 1)[0]
        counts[stage] = counts.get(stage, 0) + int(value.numel())
    counts["total"] = sum(counts.values())
    return counts


def check_report_section(datalist: dict, section: str, path: str | os.PathLike | None = None) -> list:
    """The items of ``section``, or a clear error when it must not or cannot be reported on.

    ``validation`` is refused: the bundles select ``model.pt`` on it, so a figure measured there is optimistic
    by construction. An empty or absent section is refused too (write one with ``scripts/prepare_data.py``).
    """
    where = f"{path}: " if path else ""
    if section == SELECTION_SECTION:
        raise ValueError(
            f"{where}refusing to report on '{SELECTION_SECTION}': the bundles select model.pt on it (best "
            f"validation MRE), so its figures are optimistic by construction. Report on 'test' (a section no "
            "model selection saw; scripts/prepare_data.py writes one, e.g. --test_fraction 0.2)."
        )
    if section not in SECTIONS:
        raise ValueError(f"{where}unknown section {section!r}; expected one of {[s for s in SECTIONS if s != SELECTION_SECTION]}")
    items = datalist.get(section) or []
    if not items:
        raise ValueError(
            f"{where}the datalist has no '{section}' items: write a three-way split with scripts/prepare_data.py "
            "(e.g. --val_fraction 0.2 --test_fraction 0.2), or choose another --section"
        )
    return items


def _load_score_module():
    spec = importlib.util.spec_from_file_location("score_script", REPO_ROOT / "scripts" / "score.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _annotator_names(items: list) -> list[str] | None:
    """The two annotators' names when every item of the section carries the same two, else ``None``."""
    names = None
    for it in items:
        ann = it.get("annotators")
        if not isinstance(ann, dict) or len(ann) != 2:
            return None
        if names is None:
            names = list(ann)
        elif set(ann) != set(names):
            return None
    return names


def human_reference(datalist: str | os.PathLike, section: str = "test") -> dict | None:
    """Human reference rows on ``section`` of a datalist whose items carry two annotators, else ``None``.

    Returns ``{"annotators": [A, B], "section", "n_images", "rows": {label: metrics summary}}`` with the rows
    ``"A vs B"``, ``"A vs mean"``, ``"B vs mean"`` and ``"third annotator vs mean (expected)"``, each the
    :func:`~custom_monai.metrics.summarize_errors` dictionary (MRE/SD/median in mm and px, SDR, per landmark),
    computed over the (image, landmark) pairs that both annotators placed. The third-annotator row is the
    A-vs-B errors times sqrt(3/4) (see ``HUMAN_FOOTNOTE`` for the assumption).
    """
    dl = load_datalist(datalist)
    items = dl.get(section) or []
    names = _annotator_names(items)
    if not items or names is None:
        return None
    a, b = names
    world = dl["coordinate_space"] == "world"
    landmark_names = dl["landmark_names"]
    accs = {k: LandmarkErrorAccumulator(landmark_names) for k in (f"{a} vs {b}", f"{a} vs mean", f"{b} vs mean")}
    for it in items:
        pa = np.asarray(it["annotators"][a], dtype=np.float64)
        pb = np.asarray(it["annotators"][b], dtype=np.float64)
        if pa.shape != pb.shape:  # one annotator has no point at all in this item (all-missing rows of width 1)
            d = max(pa.shape[1], pb.shape[1])
            pa = pa if pa.shape[1] == d else np.full((len(pa), d), np.nan)
            pb = pb if pb.shape[1] == d else np.full((len(pb), d), np.nan)
        both = np.all(np.isfinite(pa), axis=1) & np.all(np.isfinite(pb), axis=1)
        pa = np.where(both[:, None], pa, np.nan)
        pb = np.where(both[:, None], pb, np.nan)
        mean = (pa + pb) / 2.0
        iid = image_id(it["image"])
        sp = None if world else it.get("spacing")
        for acc, (pred, gt) in zip(accs.values(), ((pa, pb), (pa, mean), (pb, mean))):
            acc.add(iid, pred, gt, sp, world=world)
    rows = {k: acc.summary() for k, acc in accs.items()}
    ab = accs[f"{a} vs {b}"]
    f = THIRD_ANNOTATOR_FACTOR
    emm, epx = ab.errors_mm, ab.errors_px
    rows["third annotator vs mean (expected)"] = summarize_errors(
        None if emm is None else emm * f, None if epx is None else epx * f, landmark_names
    )
    return {"annotators": [a, b], "section": section, "n_images": len(items), "rows": rows}


def score_against_annotators(
    datalist: str | os.PathLike, section: str, predictions: str | os.PathLike, out_dir: str | os.PathLike
) -> dict:
    """Score prediction JSONs (``scripts/score.py``'s format) against each single annotator of ``section``.

    For each annotator a datalist whose ``landmarks`` are that annotator's points is written to
    ``out_dir/vs_<annotator>/datalist.json`` and scored with ``scripts/score.py``'s :func:`score` (the same
    metric code as every evaluation); the datalist's own ground truth is scored too, under ``GROUND_TRUTH``.
    Returns ``{GROUND_TRUTH: summary, annotator: summary, ...}`` (empty without two annotators).
    """
    dl = load_datalist(datalist)
    items = dl.get(section) or []
    names = _annotator_names(items)
    if not items or names is None:
        return {}
    score = _load_score_module().score
    gt_dir = Path(out_dir) / "vs_ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    out = {GROUND_TRUTH: score(str(datalist), section, str(predictions), str(gt_dir / "metrics.json"), quiet=True)}
    for who in names:
        folder = Path(out_dir) / f"vs_{who}"
        folder.mkdir(parents=True, exist_ok=True)
        doc = {k: v for k, v in dl.items() if k not in SECTIONS and k != "warnings"}
        doc[section] = [
            {
                **{k: v for k, v in it.items() if k not in ("landmarks", "annotators")},
                "landmarks": [None if not all(map(math.isfinite, r)) else r for r in it["annotators"][who]],
            }
            for it in items
        ]
        (folder / "datalist.json").write_text(json.dumps(doc, allow_nan=False))
        out[who] = score(str(folder / "datalist.json"), section, str(predictions), str(folder / "metrics.json"), quiet=True)
    return out


def _metric_row(metrics: dict) -> dict:
    row = {k: metrics.get(k) for k in ("n_images", "n_points", "mre_px", "sd_px", "mre_mm", "sd_mm", "median_mm", "sdr", "n_not_found", "confidence_error_spearman")}
    row["per_landmark"] = [
        {"name": p.get("name"), "mre_mm": p.get("mre_mm"), "mre_px": p.get("mre_px")} for p in metrics.get("per_landmark") or []
    ]
    if metrics.get("measurements"):  # cephalometric analysis (ISBI 19-landmark sets): class accuracy and MAE
        row["measurements"] = {
            k: {"accuracy": v.get("accuracy"), "mae": v.get("mae"), "unit": v.get("unit")} for k, v in metrics["measurements"].items() if isinstance(v, dict)
        }
    return row


def benchmark(
    datalist: str,
    out: str = "bench",
    minutes: float = 30.0,
    bundles: str | list = ("attention_unet_ceph2d",),
    max_epochs: int = 100000,
    overrides: dict | None = None,
    skip_training: bool = False,
    section: str = "test",
    human_only: bool = False,
    clock: str = "process",
    threads: int = 1,
) -> dict:
    """Train, evaluate and time each bundle; see the module docstring.

    Args:
        datalist: datalist JSON; bundles select ``model.pt`` on its ``validation`` section.
        out: output folder.
        minutes: training budget per bundle (``max_train_minutes``).
        bundles: bundle names (comma-separated string or list).
        max_epochs: upper bound on epochs (the time budget normally ends training first).
        overrides: extra config overrides for every bundle, e.g. ``{"features": [32, 64, 128, 256, 512, 32]}``.
        skip_training: reuse ``OUT/<bundle>/models`` from an earlier run.
        section: the section reported on (default ``test``); ``validation`` is refused (model selection).
        human_only: only the human reference rows (no bundle is run).
        clock: what the training budget counts: ``"process"`` (CPU time of the training process, default:
            every bundle gets the same compute even when other work shares the machine) or ``"wall"``.
        threads: torch/OpenMP threads of every phase (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``). One by default:
            with process CPU time as the budget, idle-spinning OpenMP threads on a shared machine would spend
            the budget without computing (measured: 252 instead of 1504 global-stage iterations of the attention U-Net).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by every phase's process
        os.environ[var] = str(int(threads))
    bundles = [] if human_only else ([b.strip() for b in bundles.split(",") if b.strip()] if isinstance(bundles, str) else list(bundles))
    datalist = str(Path(datalist).resolve())
    try:
        dl = load_datalist(datalist)
    except DatalistError as e:
        raise ValueError(str(e)) from e
    items = check_report_section(dl, section, datalist)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    human = human_reference(datalist, section)
    results = {
        "datalist": datalist,
        "minutes": minutes,
        "clock": clock,
        "threads": int(threads),
        "section": section,
        "n_section": len(items),
        "selection_section": SELECTION_SECTION,
        "n_validation": len(dl.get(SELECTION_SECTION) or []),
        "human": human,
        "bundles": {},
    }
    for name in bundles:
        cfg = REPO_ROOT / "bundles" / name / "configs"
        work = out_dir / name
        work.mkdir(exist_ok=True)
        common = {"datalist": datalist, "ckpt_dir": str(work / "models"), **(overrides or {})}
        row: dict = {}
        if not skip_training:
            shutil.rmtree(work / "models", ignore_errors=True)  # a fresh run: never resume an earlier run's budget
            print(f"[{name}] training for {minutes} min (model.pt selected on '{SELECTION_SECTION}') ...", flush=True)
            row["train"] = _phase(
                str(cfg / "train.json"), "training",
                {**common, "max_train_minutes": minutes, "max_epochs": max_epochs, "log_dir": str(work / "logs")},
                work / "train.log",
                env_extra={"CUSTOM_MONAI_BUDGET_CLOCK": clock},
            )
        row["parameters"] = _count_parameters(work / "models" / "model.pt")
        row["variants"] = {}
        for variant, extra in VARIANTS.get(name, {"default": {}}).items():
            print(f"[{name}] evaluating {variant} on '{section}' ...", flush=True)
            eval_dir = work / f"eval_{variant}"
            phase = _phase(
                [str(cfg / "train.json"), str(cfg / "evaluate.json")], "evaluating",
                {**common, **extra, "output_dir": str(eval_dir), "write_overlays": False, "eval_section": section},
                work / f"eval_{variant}.log",
            )
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            row["variants"][variant] = _metric_row(metrics) | {"eval_run_s": phase["run_s"]}
        # inference file -> JSON on the reported section's images, with the networks' forward time
        images = work / "infer_in"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir()
        for item in items:
            src = Path(item["image"])  # absolute (load_datalist)
            os.symlink(src, images / src.name)
        print(f"[{name}] timing inference on {len(items)} images ...", flush=True)
        infer_out = work / "infer_out"
        inf = _phase(
            str(cfg / "inference.json"), "inference",
            {"input_dir": str(images), "output_dir": str(infer_out), "ckpt_dir": str(work / "models"), "write_overlays": False},
            work / "inference.log",
            time_forward=True,
        )
        n = max(len(items), 1)
        row["inference"] = {
            "seconds_per_image": inf["run_s"] / n,
            "forward_seconds_per_image": inf.get("forward_s", float("nan")) / n,
            "overhead_ratio": inf["run_s"] / inf["forward_s"] if inf.get("forward_s") else None,
            "max_rss_mb": inf["max_rss_mb"],
        }
        # the inference output (default variant) scored against each single annotator
        row["vs_annotators"] = {
            who: _metric_row(m) for who, m in score_against_annotators(datalist, section, infer_out, work / "scores").items()
        }
        results["bundles"][name] = row
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    _write_table(results, out_dir / "results.md")
    print((out_dir / "results.md").read_text())
    return results


def _fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def _sdr_cell(m: dict) -> str:
    sdr = m.get("sdr") or {}
    return " / ".join(_fmt(sdr.get(k), 1) for k in ("2.0", "2.5", "3.0", "4.0"))


def _mre_cell(m: dict) -> str:
    """``MRE mm (SD)``, or ``MRE px (SD) px`` when there is no spacing."""
    if m.get("mre_mm") is not None:
        return f"{_fmt(m['mre_mm'])} ({_fmt(m.get('sd_mm'))})"
    return f"{_fmt(m.get('mre_px'))} px ({_fmt(m.get('sd_px'))})"


def _write_table(results: dict, path: Path) -> None:
    section = results.get("section", "validation")
    human = results.get("human")
    lines = [
        f"Datalist `{Path(results['datalist']).name}`: reported on `{section}` (n = {results.get('n_section', '?')}), "
        f"model.pt selected on `{results.get('selection_section', 'validation')}` (n = {results['n_validation']}), "
        f"training budget {results['minutes']} min ({results.get('clock', 'wall')} clock).",
        "",
        "| bundle | variant | MRE px | MRE mm (SD) | SDR 2 / 2.5 / 3 / 4 mm % | params | infer s/img (forward) | train peak MB | infer peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["bundles"].items():
        params = f"{row['parameters']['total'] / 1e6:.2f}M"
        inf = row["inference"]
        train_mb = row.get("train", {}).get("max_rss_mb")
        for variant, m in row["variants"].items():
            lines.append(
                f"| {name} | {variant} | {_fmt(m['mre_px'])} | {_fmt(m['mre_mm'])} ({_fmt(m['sd_mm'])}) | {_sdr_cell(m)} | {params} | "
                f"{_fmt(inf['seconds_per_image'])} ({_fmt(inf['forward_seconds_per_image'])}) | {_fmt(train_mb, 0)} | {_fmt(inf['max_rss_mb'], 0)} |"
            )
    if human:
        for label, m in human["rows"].items():
            lines.append(f"| human | {label} | {_fmt(m['mre_px'])} | {_fmt(m['mre_mm'])} ({_fmt(m['sd_mm'])}) | {_sdr_cell(m)} | | | | |")
        lines += ["", HUMAN_FOOTNOTE]
        a, b = human["annotators"]
        scored = {n: r for n, r in results["bundles"].items() if r.get("vs_annotators")}
        if scored:
            lines += [
                "",
                f"Scored against each single annotator (inference output files, default variant; `{section}`): "
                "MRE mm (SD); SDR 2 / 2.5 / 3 / 4 mm %.",
                "",
                f"| bundle | vs ground truth | vs {a} | vs {b} |",
                "|---|---|---|---|",
            ]
            for n, r in scored.items():
                cells = [r["vs_annotators"].get(w, {}) for w in (GROUND_TRUTH, a, b)]
                lines.append(f"| {n} | " + " | ".join(f"{_mre_cell(c)}; {_sdr_cell(c)}" for c in cells) + " |")
    ranked = [
        f"{name} / {variant}: {_fmt(m['confidence_error_spearman'])}"
        for name, row in results["bundles"].items()
        for variant, m in row["variants"].items()
        if m.get("confidence_error_spearman") is not None
    ]
    if ranked:
        lines += ["", "Spearman correlation of the per-landmark `confidence` with the error (positive: an uncertainty "
                  "such as σ that grows with the error; negative: a confidence that drops): " + "; ".join(ranked) + "."]
    lines += _measurement_table(results)
    lines += _per_landmark_table(results)
    path.write_text("\n".join(lines) + "\n")


def _measurement_table(results: dict) -> list[str]:
    """Cephalometric classification accuracy % (and MAE) per measurement, each bundle's first variant."""
    rows = []
    for name, row in results["bundles"].items():
        variant, m = next(iter(row["variants"].items()))
        if m.get("measurements"):
            rows.append((f"{name} ({variant})", m["measurements"]))
    if not rows:
        return []
    keys = list(rows[0][1])
    out = ["", f"Cephalometric measurements on `{results.get('section', 'validation')}`: class accuracy % / mean absolute "
           "error (degrees; FHI ratio; MW mm), predicted vs ground-truth landmarks:", "",
           "| bundle | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label, meas in rows:
        out.append(f"| {label} | " + " | ".join(f"{_fmt(meas[k].get('accuracy'), 1)} / {_fmt(meas[k].get('mae'))}" for k in keys) + " |")
    return out


def _per_landmark_table(results: dict) -> list[str]:
    """Per-landmark MRE (mm, else px) of each bundle's first variant, and the human rows A vs B / third annotator."""
    cols: list[tuple[str, list]] = []
    for name, row in results["bundles"].items():
        variant, m = next(iter(row["variants"].items()))
        cols.append((f"{name} ({variant})", m.get("per_landmark") or []))
    human = results.get("human")
    if human:
        a, b = human["annotators"]
        for label in (f"{a} vs {b}", "third annotator vs mean (expected)"):
            cols.append((f"human: {label}", human["rows"][label].get("per_landmark") or []))
    if not cols:
        return []
    n = max(len(c) for _, c in cols)
    names = next((c for _, c in cols if len(c) == n), [])
    mm = all(p.get("mre_mm") is not None for _, c in cols for p in c)
    unit = "mm" if mm else "px"
    out = ["", f"Per-landmark MRE ({unit}) on `{results.get('section', 'validation')}`:", "",
           "| # | landmark | " + " | ".join(label for label, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for i in range(n):
        cells = [_fmt(c[i].get(f"mre_{unit}")) if i < len(c) else "–" for _, c in cols]
        out.append(f"| {i + 1} | {names[i].get('name', '')} | " + " | ".join(cells) + " |")
    return out


@functools.wraps(benchmark)
def _cli(*args, **kwargs) -> None:
    """Command line: :func:`benchmark`, exiting with status 2 and one clear line on a refused datalist/section."""
    try:
        benchmark(*args, **kwargs)
    except ValueError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    fire.Fire(_cli)
