"""Choose a trained model's decoding on the validation images and keep it in ``model.json``.

How a network's output maps become points (one region or expansive exploration, the paper's mean of all
above-threshold pixels or a blob chosen by the global stage, a weighting by the global heatmap) changes the
error by more than a training schedule does, and which one is best depends on the model: on the ISBI 2015
model of the attention U-Net the global-weighted map scored 1.62 mm on the validation images against 2.63 mm
for the guided blob, on the demo model the order is reversed (0.91 against 0.83 mm). A fixed default is
therefore wrong for some model; the choice is made per model, at the end of training, on the section that
selected the model (never the one reported), and travels with ``model.pt`` like every other trained setting.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from ..atomic import atomic_write
from .checkpoint import load_model, settings_path

__all__ = ["select_decoding", "trained_decoding"]

logger = logging.getLogger(__name__)


def trained_decoding(trained: Mapping[str, Any], name: str, default: Any) -> Any:
    """The decoding setting ``name`` chosen for the model (``trained["decoding"]``), else ``default``."""
    decoding = trained.get("decoding") or {}
    return decoding.get(name, default)


def select_decoding(
    evaluator: Any,
    target: Any,
    candidates: Mapping[str, Mapping[str, Any]],
    ckpt_path: str | os.PathLike,
    metric: str | None = None,
    attributes: Mapping[str, str] | None = None,
    margin: float = 0.01,
) -> str:
    """Evaluate each candidate decoding on ``evaluator``'s images with the selected model and record the best.

    Args:
        evaluator: an evaluator on the validation images with a key metric where lower is better (MRE); it
            should carry no checkpoint handler (it would re-save the model with each candidate's score).
        target: the object whose attributes a candidate sets (e.g. the predictor's local inferer).
        candidates: ``{name: {setting: value}}``; the first one is the bundle's default: another replaces it only
            when it scores more than ``margin`` (relative) better, so that noise on a few validation images does
            not decide (on the demo model two decodings differed by 0.0003 mm).
        ckpt_path: the selected ``model.pt``: loaded into ``evaluator.network`` first; ``model.json`` beside it
            gains ``settings["decoding"]`` (the winner's settings) and ``decoding_selection`` (every score).
        metric: the key metric's name (default: the evaluator's key metric).
        attributes: setting name -> attribute of ``target`` where they differ (e.g. ``{"peak_component":
            "component"}``); the settings keep the bundle's config names, which read them back.

    Returns:
        the winner's name. ``target`` keeps the winner's settings afterwards. Under ``torchrun`` every process
        evaluates its share (the metric is gathered) and only rank 0 writes ``model.json``.
    """
    import torch.distributed as dist

    if not candidates:
        raise ValueError("select_decoding: no candidate decodings")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"select_decoding: margin must be in [0, 1), got {margin}")
    attributes = dict(attributes or {})
    path = settings_path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"select_decoding: {path} does not exist (no model was selected: did any validation run?)"
        )
    for name, settings in candidates.items():
        for key in settings:
            if not hasattr(target, attributes.get(key, key)):
                raise ValueError(
                    f"select_decoding: candidate {name!r} sets {key!r}, which {type(target).__name__} does not have"
                )
    load_model(ckpt_path, evaluator.network)
    scores: dict[str, float] = {}
    for name, settings in candidates.items():
        for key, value in settings.items():
            setattr(target, attributes.get(key, key), value)
        evaluator.run()
        key_metric = metric or evaluator.state.key_metric_name
        scores[name] = float(evaluator.state.metrics[key_metric])
    names = list(candidates)
    best = names[0]
    challenger = min(names[1:], key=lambda n: (scores[n], names.index(n)), default=None)
    if challenger is not None and scores[challenger] < scores[best] * (1.0 - margin):
        best = challenger
    for key, value in candidates[best].items():
        setattr(target, attributes.get(key, key), value)
    width = max(len(n) for n in scores)
    table = "\n".join(f"  {n:<{width}}  {s:.4f}{'  <- chosen' if n == best else ''}" for n, s in scores.items())
    logger.info(
        "decoding chosen on the validation images (%s, lower is better; another than %r must be %.0f%% better):\n%s",
        key_metric, names[0], 100 * margin, table,
    )
    print(f"decoding chosen on the validation images ({key_metric}): {best} {scores[best]:.4f}", flush=True)
    if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        record = json.loads(path.read_text())
        record.setdefault("settings", {})["decoding"] = dict(candidates[best])
        record["decoding_selection"] = {"metric": key_metric, "chosen": best, "margin": margin, "scores": scores}
        atomic_write(path, lambda f: f.write(json.dumps(record, indent=2)))
    return best
