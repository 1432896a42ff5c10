"""The MONAI Label app: every bundle of this repository, served from its folder and a checkpoint.

Start it with the thin app folder ``scripts/label_app/`` of the repository (its ``main.py`` imports
:class:`LandmarkLabelApp`)::

    monailabel start_server --app scripts/label_app --studies IMAGES \
        --conf bundles "global_local_fcnn_ceph2d,global_local_fcnn_3d" \
        --conf ckpt_global_local_fcnn_ceph2d runs/2d/models/model.pt \
        --conf ckpt_global_local_fcnn_3d runs/3d/models/model.pt

``--conf`` keys:

* ``bundles``: comma-separated bundle names (folders of ``bundles_dir``) or bundle folders; default: every
  bundle that has a checkpoint.
* ``ckpt_<name>``: the bundle's ``model.pt`` (its ``model.json`` beside it gives the settings);
  ``models``: a folder with ``<name>/model.pt`` per bundle (used when ``ckpt_<name>`` is not given).
  A model that the train task published into ``<app>/model/<name>/model.pt`` takes precedence.
* ``bundles_dir``: where bundle names are looked up (default: the ``bundles/`` folder of this repository).
* ``device``: torch device for inference (default: each bundle's default, CUDA when available).
* ``train_timeout``: seconds a training subprocess may run (default: no limit).

``GET /info/`` lists each bundle as a model of type ``detection`` whose ``labels`` (and ``landmarks``) are its
landmark names; ``POST /infer/<name>?image=<id>`` returns the landmarks (see :mod:`custom_monai.label.infer`);
``POST /train/<name>`` trains on the landmark labels in the datastore (see :mod:`custom_monai.label.train`).

The datastore is MONAI Label's local one, with the image types the bundles read (PNG, JPEG, BMP, TIFF, MHA/MHD,
NRRD, NIfTI) and 3D Slicer point lists (``.mrk.json``) as labels. A request for an image id the datastore does not
know gets 404 and an image that cannot be read 422, with a message naming it; the server keeps serving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore

import custom_monai
from custom_monai.data.markups import MARKUP_EXTENSIONS
from custom_monai.data.safe import IMAGE_EXTENSIONS

from .bundle import LandmarkInferenceError
from .infer import LandmarkInferTask
from .train import LandmarkTrainTask

__all__ = ["LandmarkLabelApp", "LandmarkDatastore", "default_bundles_dir"]

logger = logging.getLogger(__name__)

#: the datastore's patterns: images the bundles read, and landmark labels (3D Slicer point lists)
IMAGE_PATTERNS = tuple(f"*{e}" for e in IMAGE_EXTENSIONS if e != ".dcm")
LABEL_PATTERNS = ("*.mrk.json",)


def default_bundles_dir() -> Path:
    """``bundles/`` of the repository this package is installed from (an editable install)."""
    return Path(custom_monai.__file__).resolve().parents[1] / "bundles"


class LandmarkDatastore(LocalDatastore):
    """MONAI Label's local datastore, where ``.mrk.json`` files are labels only, never images."""

    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        if os.path.realpath(path) == os.path.realpath(self._datastore.image_path()):
            files = {k: v for k, v in files.items() if not k.lower().endswith(MARKUP_EXTENSIONS)}
        return files


class LandmarkLabelApp(MONAILabelApp):
    """One infer task (and one train task) per bundle named in ``--conf bundles``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundles_dir = Path(conf.get("bundles_dir") or default_bundles_dir())
        self.model_root = Path(app_dir) / "model"
        self.bundle_dirs = self._bundle_dirs(conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="custom_monai landmarks",
            description="Anatomical landmark detection bundles (custom_monai): landmarks as 3D Slicer point lists",
            version=custom_monai.__version__,
        )

    # -- configuration ----------------------------------------------------------------------------------
    def _bundle_dirs(self, conf: dict[str, str]) -> dict[str, Path]:
        names = [n.strip() for n in str(conf.get("bundles", "")).split(",") if n.strip()]
        if not names:  # every bundle that has a checkpoint
            names = sorted(p.name for p in self.bundles_dir.iterdir() if (p / "configs" / "inference.json").is_file())
            names = [n for n in names if self._ckpt_candidates(conf, n)]
        out = {}
        for n in names:
            d = Path(n) if ("/" in n or os.sep in n) else self.bundles_dir / n
            if not (d / "configs" / "inference.json").is_file():
                raise ValueError(f"--conf bundles: {n!r} is not a bundle folder (no {d / 'configs' / 'inference.json'})")
            out[d.name] = d
        if not out:
            raise ValueError("no bundle to serve: pass --conf bundles NAME[,NAME] and --conf ckpt_NAME PATH")
        return out

    def _ckpt_candidates(self, conf: dict[str, str], name: str) -> list[str]:
        """Existing-or-not checkpoint candidates in increasing priority (the last existing one is served)."""
        given = conf.get(f"ckpt_{name}")
        if not given and conf.get("models"):
            given = str(Path(conf["models"]) / name / "model.pt")
        published = self.model_root / name / "model.pt"
        candidates = [given] if given else []
        candidates.append(str(published))
        return candidates if any(os.path.isfile(c) for c in candidates) else []

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LandmarkDatastore(
            self.studies,
            extensions=list(IMAGE_PATTERNS + LABEL_PATTERNS),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, LandmarkInferTask]:
        infers = {}
        for name, bundle_dir in self.bundle_dirs.items():
            candidates = self._ckpt_candidates(self.conf, name)
            if not candidates:
                raise FileNotFoundError(
                    f"bundle {name}: no checkpoint; pass --conf ckpt_{name} PATH/model.pt (or --conf models DIR with "
                    f"{name}/model.pt), or train one with POST /train/{name}"
                )
            infers[name] = LandmarkInferTask(bundle_dir, candidates, device=self.conf.get("device") or None)
        return infers

    def init_trainers(self) -> dict[str, LandmarkTrainTask]:
        timeout = float(self.conf["train_timeout"]) if self.conf.get("train_timeout") else None
        return {
            name: LandmarkTrainTask(task, self.model_root / name, timeout=timeout)
            for name, task in self._infers.items()
            if isinstance(task, LandmarkInferTask)
        }

    def init_scoring_methods(self) -> dict:
        return {}

    # -- requests ---------------------------------------------------------------------------------------
    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's ``infer``, with client errors as HTTP errors that name the model or image."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"no model {model!r}; models: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
        try:
            return super().infer(request, datastore)
        except LandmarkInferenceError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
