"""The last line of a training run: the selected model's validation MRE next to the mean-position baseline."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ..metrics.baseline import mean_position_baseline
from .checkpoint import settings_path

__all__ = ["log_training_summary"]


def log_training_summary(ckpt_path: str | os.PathLike, datalist: str | os.PathLike | Mapping, section: str = "validation") -> str:
    """Print (and return) the selected model's metric from ``model.json`` beside ``ckpt_path`` and the MRE of the
    mean-position baseline on the same section, so a user sees at once whether the run learnt anything."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return ""
    path = settings_path(ckpt_path)
    if not path.is_file():  # e.g. no validation ran (val_interval > epochs): nothing was selected
        text = f"training done: no model was selected ({path} missing: did any validation run?)"
        print(text, flush=True)
        return text
    record = json.loads(path.read_text())
    metric, name, epoch = record.get("metric"), record.get("metric_name", "val_mre"), record.get("epoch")
    try:
        baseline = f"{mean_position_baseline(datalist, section):.2f} mm"
    except (ValueError, KeyError) as e:  # no section to score: say so rather than fail a finished run
        baseline = f"n/a ({e})"
    value = "n/a" if metric is None else f"{metric:.2f} mm"
    text = (
        f"training done: model {ckpt_path} has {name} {value} on '{section}' (epoch {epoch}); "
        f"mean-position baseline on the same images: {baseline}"
    )
    print(text, flush=True)
    return text
