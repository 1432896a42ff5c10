"""MONAI Label train task: landmarks saved in the datastore -> a datalist -> the bundle's own training.

The images whose ``final`` label is a 3D Slicer point list (``<id>.mrk.json``, saved from Slicer with
``PUT /datastore/label?image=<id>&tag=final``) become a datalist of the bundle contract
(:func:`custom_monai.label.bundle.markups_datalist`: world LPS mm for 3D; for 2D the markups are mapped back to
pixels through the frame Slicer shows the image in). Landmarks are matched by name to the served model's
landmark names. The bundle then trains as a user runs it, in a subprocess::

    python -m monai.bundle run training --config_file bundles/<name>/configs/train.json \
        --bundle_root ... --datalist RUN/datalist.json --ckpt_dir RUN/models --log_dir RUN/logs ...

with the served model's settings (its ``model.json``: network sizes, preprocessing) so that the new model has
the same architecture, plus the request's values for any other top-level id of ``train.json`` (``max_epochs``,
``max_train_minutes``, ``batch_size``, ...). The network starts from scratch: the bundle contract has no
"initialise from weights" id (its ``resume`` continues an interrupted run in the same ``ckpt_dir``).

Each request trains in a new run folder ``<app>/model/<name>/runs/<time>/`` (datalist, log, checkpoints). On
success the run's ``model.pt`` and ``model.json`` are published as ``<app>/model/<name>/model.pt`` (+ ``.json``,
written atomically, settings first), the last of the infer task's checkpoint candidates: the server serves the
new model from its next request on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from custom_monai.data.datalist import write_datalist
from custom_monai.data.markups import MARKUP_EXTENSIONS

from .bundle import markups_datalist
from .infer import LandmarkInferTask

__all__ = ["LandmarkTrainTask"]

logger = logging.getLogger(__name__)

#: ids the task sets itself; a request cannot override them
_OWN_IDS = ("bundle_root", "datalist", "dataset_dir", "ckpt_dir", "log_dir", "output_dir", "landmark_names", "resume")


def _cli_value(v: Any) -> str:
    """A value for ``--id value`` on the bundle command line: strings as is, others as Python literals (fire)."""
    return v if isinstance(v, str) else repr(v)


class LandmarkTrainTask(TrainTask):
    """Train ``infer_task``'s bundle on the datastore's ``final`` landmark labels; publish into ``model_dir``.

    Args:
        infer_task: the bundle's infer task (its model gives the landmark names and settings; it serves the result).
        model_dir: ``<app>/model/<name>``; the published ``model.pt`` goes here.
        timeout: seconds before the training subprocess is stopped (``None``: no limit).
    """

    def __init__(self, infer_task: LandmarkInferTask, model_dir: str | os.PathLike, timeout: float | None = None) -> None:
        self.infer_task = infer_task
        self.bundle_dir = infer_task.bundle_dir
        self.model_dir = Path(model_dir)
        self.timeout = timeout
        self.train_config = self.bundle_dir / "configs" / "train.json"
        self.train_ids = set(json.loads(self.train_config.read_text())) if self.train_config.is_file() else set()
        super().__init__(f"Train {self.bundle_dir.name} on the landmarks (3D Slicer point lists) saved as final labels")

    def config(self) -> dict[str, Any]:
        return {"max_epochs": 10, "val_split": 0.2, "max_train_minutes": 0}

    def stats(self) -> dict[str, Any]:
        path = self.model_dir / "train_stats.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def is_valid(self) -> bool:
        return self.train_config.is_file()

    def _pairs(self, datastore: Datastore) -> list[tuple[str, str]]:
        pairs = []
        for d in datastore.datalist():
            label = str(d.get("label", ""))
            if label.lower().endswith(MARKUP_EXTENSIONS):
                pairs.append((str(d["image"]), label))
            else:
                logger.warning(f"{d.get('image')}: final label {label} is not a landmark file; skipped")
        return pairs

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        bundle = self.infer_task.bundle()
        run_dir = self.model_dir / "runs" / time.strftime("%Y%m%d_%H%M%S")
        n = 1
        while run_dir.exists():
            run_dir = run_dir.with_name(f"{run_dir.name.split('-')[0]}-{n}")
            n += 1
        run_dir.mkdir(parents=True)
        dl = markups_datalist(
            self._pairs(datastore), bundle.spatial_dims, bundle.landmark_names, float(request.get("val_split", 0.2))
        )
        for w in dl["warnings"]:
            logger.warning(w)
        datalist = write_datalist(
            run_dir / "datalist.json", dl["landmark_names"], dl["training"], dl["validation"], (),
            coordinate_space=dl["coordinate_space"], name="monailabel", warnings=dl["warnings"],
        )
        overrides: dict[str, Any] = {k: v for k, v in bundle.settings.items() if k in self.train_ids and k not in _OWN_IDS}
        for k, v in request.items():
            if k in self.train_ids and k not in _OWN_IDS and k != "device":
                overrides[k] = v
        device = request.get("device")
        device = device[0] if isinstance(device, (list, tuple)) and device else device
        if device:
            overrides["device"] = f"$torch.device({str(device)!r})"
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(self.train_config),
               "--bundle_root", str(self.bundle_dir), "--datalist", str(datalist), "--ckpt_dir", str(run_dir / "models"),
               "--log_dir", str(run_dir / "logs"), "--output_dir", str(run_dir / "eval")]
        for k, v in overrides.items():
            cmd += [f"--{k}", _cli_value(v)]
        logger.info(f"training {bundle.name} on {len(dl['training'])} + {len(dl['validation'])} images: {' '.join(cmd)}")
        log = run_dir / "train.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=str(run_dir), stdout=f, stderr=subprocess.STDOUT, timeout=self.timeout)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"training {bundle.name} failed ({proc.returncode}); log {log}:\n{tail}")
        trained = run_dir / "models" / "model.pt"
        if not trained.is_file():
            raise RuntimeError(f"training {bundle.name} wrote no {trained}; log {log}")
        record = json.loads(trained.with_suffix(".json").read_text())
        self._publish(trained)
        stats = {
            "bundle": bundle.name,
            "run_dir": str(run_dir),
            "model": str(self.model_dir / "model.pt"),
            "n_training": len(dl["training"]),
            "n_validation": len(dl["validation"]),
            "landmark_names": dl["landmark_names"],
            "metric_name": record.get("metric_name"),
            "best_metric": record.get("metric"),
            "total_time": round(time.time() - start, 1),
            "warnings": dl["warnings"],
        }
        tmp = self.model_dir / ".train_stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=2))
        os.replace(tmp, self.model_dir / "train_stats.json")
        logger.info(f"published {self.model_dir / 'model.pt'} ({stats['metric_name']} {stats['best_metric']})")
        return stats

    def _publish(self, trained: Path) -> None:
        """Copy ``model.json`` then ``model.pt`` into ``model_dir``, each by an atomic rename."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for src in (trained.with_suffix(".json"), trained):
            tmp = self.model_dir / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, self.model_dir / src.name)
