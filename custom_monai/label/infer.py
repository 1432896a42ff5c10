"""MONAI Label infer task: one bundle of this repository, landmarks out as a 3D Slicer point list.

MONAI Label (0.8.5) has no landmark task type. Its ``detection`` type is the nearest precedent, and the one
this task declares: a detection task's result is not a label image but a 3D Slicer markups JSON
(``DetectionWriter`` -> ``create_slicer_detection_json``, LPS millimetres), which the Slicer module loads with
``slicer.util.loadMarkups`` when the result file ends in ``.json``, and MONAI Label's ``BundleTrainTask`` reads
markups JSON labels from the datastore for detection models. ``DetectionWriter`` itself is not used: it writes
ROI boxes (centre + size, a fixed orientation), and landmarks are named points. This task writes a point list
(markups type ``Fiducial``, one control point per landmark, named, ``positionStatus: "missing"`` for a landmark
that was not found) with the project's own writer :func:`custom_monai.data.markups.write_mrk_json`.

Nor is ``BasicInferTask``/``BundleInferTask`` used: they run ``network_def`` alone on one tensor
(``inferer(inputs, network)``), load ``checkpoint["model"]`` with ``torch.load`` and post-process a label image,
while a landmark method is a multi-stage ``LandmarkPredictor`` that needs the whole batch (several image keys
and their MetaTensor affines) to map points back to the original image. The task implements the
``InferTask`` interface over :class:`custom_monai.label.bundle.LandmarkBundle`, which runs the bundle's own
``preprocessing`` and ``inferer`` as ``python -m monai.bundle run inference`` does.

Result: the ``<id>.mrk.json`` point list (LPS mm: world for 3D, the frame 3D Slicer shows a 2D file in, see
:mod:`custom_monai.label.bundle`) as the result file, and in the response ``params`` the bundle contract's
prediction record (``image``, ``spacing``, ``landmarks`` [{``index``, ``name``, ``x``, ``y``, [``z``, ``world``],
``confidence``}], the bundle's extra fields), plus ``model``, ``label_names`` and ``latencies`` as MONAI Label's
tasks add them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from custom_monai.data.datalist import image_id
from custom_monai.data.markups import write_mrk_json

from .bundle import LandmarkBundle, LandmarkInferenceError

__all__ = ["LandmarkInferTask"]

logger = logging.getLogger(__name__)


class LandmarkInferTask(InferTask):
    """Serve ``bundle_dir`` with the newest of ``ckpt_paths`` (MONAI Label's convention: the last existing path wins).

    Args:
        bundle_dir: ``bundles/<name>``.
        ckpt_paths: candidate ``model.pt`` files in increasing priority, e.g. ``[--conf ckpt, app model trained
            by the train task]``; the task reloads when the chosen file changes (a training published a model).
        device: torch device name, or ``None`` for the bundle's default.
        overrides: more bundle overrides (``{id: value}``), as on the bundle command line.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        ckpt_paths: Sequence[str | os.PathLike],
        device: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.paths = [str(p) for p in ckpt_paths if p]
        self.device = device
        self.overrides = dict(overrides or {})
        self._lock = threading.Lock()
        self._bundle: LandmarkBundle | None = None
        self._out_root = Path(tempfile.mkdtemp(prefix=f"landmarks_{self.bundle_dir.name}_"))
        bundle = self.bundle()
        super().__init__(
            type=InferType.DETECTION,
            labels=list(bundle.landmark_names),
            dimension=bundle.spatial_dims,
            description=bundle.description,
            config={"device": device or str(bundle.device)},
        )

    # -- the model --------------------------------------------------------------------------------------
    def get_path(self, validate: bool = True) -> str | None:
        for path in reversed(self.paths):
            if not validate or os.path.isfile(path):
                return path
        return None

    def bundle(self) -> LandmarkBundle:
        """The loaded bundle, rebuilt when the newest checkpoint file is another one or was rewritten."""
        path = self.get_path()
        if path is None:
            raise FileNotFoundError(f"bundle {self.bundle_dir.name}: none of the checkpoints {self.paths} exists")
        with self._lock:
            b = self._bundle
            if b is None or str(b.ckpt_path) != str(Path(path).resolve()) or os.stat(path).st_mtime != b.mtime:
                logger.info(f"loading {self.bundle_dir.name} from {path}")
                b = LandmarkBundle(self.bundle_dir, path, device=self.device, overrides=self.overrides)
                self._bundle = b
                self.labels = list(b.landmark_names)
            return b

    def is_valid(self) -> bool:
        return self._bundle is not None

    def info(self) -> dict[str, Any]:
        b = self._bundle
        out = super().info()
        out.update(
            {
                "landmarks": list(b.landmark_names) if b else [],
                "bundle": self.bundle_dir.name,
                "bundle_dir": str(self.bundle_dir),
                "checkpoint": str(b.ckpt_path) if b else None,
                "version": b.version if b else None,
                "result": "3D Slicer point list (.mrk.json, LPS mm) + the bundle's prediction record in params",
            }
        )
        return out

    # -- inference --------------------------------------------------------------------------------------
    def _result_dir(self) -> Path:
        for d in self._out_root.iterdir():  # folders whose file the server already sent and removed
            if d.is_dir() and not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self._out_root))

    def __call__(self, request: Mapping[str, Any]) -> tuple[str, dict]:
        begin = time.time()
        image = request.get("image")
        if not isinstance(image, (str, os.PathLike)) or not str(image):
            raise LandmarkInferenceError("the request names no image file (image id unknown to the datastore?)")
        image = str(image)
        bundle = self.bundle()
        record, points, world = bundle.predict(image)
        t_infer = time.time() - begin
        path = self._result_dir() / f"{image_id(image)}.mrk.json"
        write_mrk_json(path, bundle.landmark_names, bundle.markups_lps(image, points, world))
        params = dict(record)
        params.update(
            {
                "model": request.get("model", bundle.name),
                "label_names": list(bundle.landmark_names),
                "latencies": {"infer": round(t_infer, 3), "total": round(time.time() - begin, 3)},
            }
        )
        logger.info(f"{bundle.name}: {len(points)} landmarks for {Path(image).name} in {time.time() - begin:.2f}s")
        return str(path), params
