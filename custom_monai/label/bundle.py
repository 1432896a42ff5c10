"""One bundle of this repository, ready to predict landmarks for MONAI Label (no MONAI Label import here).

:class:`LandmarkBundle` builds a bundle's parsed ``inference.json`` exactly as
``python -m monai.bundle run inference --config_file B/configs/inference.json --ckpt_path CKPT`` does
(``ConfigParser`` + ``metadata.json`` + overrides), runs the same checks and loading as the config's
``inference`` list (``check_settings``, ``load_model``), and then, per image, the bundle's own ``preprocessing``
and ``inferer`` (the method's ``LandmarkPredictor``) on a batch of one, collated as the bundle's data loader
does. The result is the bundle contract's prediction record (:func:`custom_monai.handlers.prediction_record`,
the same fields and ``extra`` as the bundle's ``report`` writes) and a 3D Slicer point list
(:func:`custom_monai.data.markups.write_mrk_json`).

Only the contract's ids are read (``network``, ``preprocessing``, ``inferer``, ``report``, ``landmark_names``,
``trained``, ``model_settings``, ``ckpt_path``, ``device``), so every bundle of the repository works.

Frames of the markups (``coordinateSystem: "LPS"``, millimetres):

* 3D: the world (ITK/LPS) coordinates that the bundle writes as ``"world"`` (from the MetaTensor affine).
* 2D: the plane as 3D Slicer shows a PNG/JPEG/BMP/MHA/... file. Slicer reads every non-DICOM volume file
  through ``vtkITKArchetypeImageSeriesReader`` (``Libs/vtkITK/vtkITKArchetypeImageSeriesReader.cxx``), which
  ``vtkMRMLVolumeArchetypeStorageNode::ReadDataInternal`` sets to native orientation and native origin
  (``SetDesiredCoordinateOrientationToNative``, ``SetUseNativeOriginOn``): the IJK-to-LPS matrix is ITK's
  ``direction * spacing`` with ITK's origin, then ``LpsToRasMatrix = diag(-1, -1, 1)`` turns it into IJK-to-RAS.
  For a PNG, ITK's ``PNGImageIO::ReadImageInformation`` (``Modules/IO/PNG/src/itkPNGImageIO.cxx``) gives origin
  0, identity direction and spacing 1 (unless the file has an ``sCAL`` chunk), so pixel (column i, row j) shows
  at RAS (-i, -j, 0), i.e. LPS (i, j, 0). Rather than hard-coding that, :func:`slicer_lps_2d` reads the same
  header through ITK (:func:`custom_monai.data.readers.image_header`), so spacing/origin/direction that ITK
  finds in an MHA/NRRD/JPEG header are applied as Slicer applies them. Our pixel (x, y) is that ITK index
  (i, j): MONAI loads 2D images indexed (x = column, y = row).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LandmarkBundle", "LandmarkInferenceError", "slicer_lps_2d", "lps_to_pixel_2d", "markups_datalist"]


class LandmarkInferenceError(ValueError):
    """An image that the bundle cannot read or process (the request's fault, not the server's)."""


def _frame_2d(image_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(A (3, 2), origin (3,)): pixel (x, y) -> LPS mm, as 3D Slicer places a 2D image file (see module doc)."""
    from custom_monai.data.readers import image_header

    size, spacing, origin, direction = image_header(image_path)
    n = len(size)
    if n < 2:
        raise LandmarkInferenceError(f"{image_path}: not a 2D image (header size {list(size)})")
    a = np.zeros((3, 2))
    o = np.zeros(3)
    m = min(n, 3)
    full = direction[:m, :m] @ np.diag(np.asarray(spacing[:m], dtype=np.float64))
    a[:m, :2] = full[:, :2]
    o[:m] = origin[:m]
    return a, o


def slicer_lps_2d(image_path: str | os.PathLike, points: np.ndarray) -> np.ndarray:
    """(N, 2) pixel points (x = column, y = row) of a 2D image file -> (N, 3) LPS mm in 3D Slicer's frame."""
    a, o = _frame_2d(image_path)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ a.T + o  # NaN rows stay NaN


def lps_to_pixel_2d(image_path: str | os.PathLike, points_lps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`slicer_lps_2d`: (N, 3) LPS mm of points placed on the image in Slicer -> (N, 2) pixels."""
    a, o = _frame_2d(image_path)
    p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    return (np.linalg.pinv(a) @ (p - o).T).T


class LandmarkBundle:
    """A bundle folder + a ``model.pt`` (with its ``model.json``), parsed once, predicting one image per call.

    Args:
        bundle_dir: ``bundles/<name>`` (holds ``configs/inference.json`` and ``configs/metadata.json``).
        ckpt_path: the trained ``model.pt``; its ``model.json`` gives the settings (landmark names, sizes, ...).
        device: ``"cpu"``, ``"cuda"``, ... (default: the bundle's own default).
        overrides: more ``{id: value}`` overrides, as ``--id value`` on the bundle command line.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike,
        device: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        import custom_monai  # noqa: F401 - the configs' "$import custom_monai"
        from custom_monai.handlers import check_settings, load_model

        self.bundle_dir = Path(bundle_dir).resolve()
        self.name = self.bundle_dir.name
        self.ckpt_path = Path(ckpt_path).resolve()
        config = self.bundle_dir / "configs" / "inference.json"
        meta = self.bundle_dir / "configs" / "metadata.json"
        if not config.is_file():
            raise FileNotFoundError(f"{self.bundle_dir} is not a bundle of this repository: no {config}")
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(f"checkpoint {self.ckpt_path} for bundle {self.name} does not exist")
        self.metadata = json.loads(meta.read_text()) if meta.is_file() else {}
        parser = ConfigParser()
        parser.read_config(str(config))
        if meta.is_file():
            parser.read_meta(str(meta))
        pairs: dict[str, Any] = {
            "bundle_root": str(self.bundle_dir),
            "ckpt_dir": str(self.ckpt_path.parent),
            "ckpt_path": str(self.ckpt_path),
        }
        if device:
            pairs["device"] = f"$torch.device({device!r})"
        pairs.update(overrides or {})
        parser.update(pairs)
        self.parser = parser
        self.device = torch.device(parser.get_parsed_content("device"))
        self.amp = bool(parser.get_parsed_content("amp")) if "amp" in parser else False
        self.landmark_names = [str(n) for n in parser.get_parsed_content("landmark_names")]
        self.spatial_dims = self._spatial_dims()
        trained = parser.get_parsed_content("trained")
        # the config's "inference" list, minus the evaluator run: the same checks and loading
        check_settings(trained, parser.get_parsed_content("model_settings"), str(self.ckpt_path))
        self.settings = dict(trained)
        self.network = parser.get_parsed_content("network")
        load_model(self.ckpt_path, self.network)
        self.network.eval()
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        self.extra = parser.get_parsed_content("report#extra") if "report#extra" in parser else None
        fields = parser.get_parsed_content("report#landmark_fields") if "report#landmark_fields" in parser else ()
        self.landmark_fields = [str(k) for k in fields]  # per-landmark outputs of the inferer (e.g. sigma)
        self.mtime = self.ckpt_path.stat().st_mtime
        self._lock = threading.Lock()

    def _spatial_dims(self) -> int:
        if "spatial_dims" in self.parser:
            return int(self.parser.get_parsed_content("spatial_dims"))
        inputs = (self.metadata.get("network_data_format") or {}).get("inputs") or {}
        shape = next(iter(inputs.values()), {}).get("spatial_shape") if inputs else None
        return len(shape) if shape else 2

    @property
    def description(self) -> str:
        return str(self.metadata.get("description") or self.metadata.get("name") or self.name)

    @property
    def version(self) -> str | None:
        return self.metadata.get("version")

    def predict(self, image_path: str | os.PathLike) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """``(record, points (N, D) original pixels/voxels, world (N, 3) LPS mm or None)`` for one image file.

        ``record`` is the bundle contract's prediction dictionary (what ``run inference`` writes as
        ``<id>.json``). Raises :class:`LandmarkInferenceError` when the image cannot be read or processed.
        """
        from custom_monai.data.safe import collate_skip_none
        from custom_monai.handlers.writers import prediction_record
        from custom_monai.transforms.landmarks import index_to_world_lps

        path = str(image_path)
        if not path or not Path(path).exists():
            raise LandmarkInferenceError(f"image file {path!r} does not exist")
        try:
            item = self.preprocessing({"image": path})
        except Exception as e:  # noqa: BLE001 - the image is at fault: report it to the client
            cause = e.__cause__ or e
            raise LandmarkInferenceError(f"cannot read or preprocess {Path(path).name}: {type(cause).__name__}: {cause}") from e
        batch = collate_skip_none([item])
        with self._lock, torch.no_grad():
            self.network.eval()
            if self.amp and self.device.type == "cuda":
                with torch.autocast("cuda"):
                    result = self.inferer(batch, self.device)
            else:
                result = self.inferer(batch, self.device)
        pred = result[0].detach().float().cpu()[0].numpy()
        conf = None if result[1] is None else result[1].detach().float().cpu()[0].numpy()
        image = batch["image"]
        meta = getattr(image, "meta", {})
        spacing = batch.get("spacing")
        sp = None if spacing is None else torch.as_tensor(spacing).float().cpu()[0].numpy().astype(np.float64)
        if sp is not None and not np.all(np.isfinite(sp)):
            sp = None
        world = None
        if pred.shape[-1] == 3 and meta.get("landmark_affine") is not None:
            affine = torch.as_tensor(meta["landmark_affine"]).float().cpu()[0].numpy().astype(np.float64)
            world = np.asarray(index_to_world_lps(pred, affine))
        extra_out = result[2] if len(result) > 2 and result[2] else {}
        fields = {k: extra_out[k].detach().float().cpu()[0] for k in self.landmark_fields if extra_out.get(k) is not None}
        record = prediction_record(path, sp, pred, self.landmark_names, conf, world, self.extra, landmark_fields=fields)
        return record, pred, world

    def markups_lps(self, image_path: str | os.PathLike, points: np.ndarray, world: np.ndarray | None) -> np.ndarray:
        """(N, 3) LPS mm of the predicted points in 3D Slicer's frame of ``image_path`` (see module doc)."""
        if world is not None:
            return np.asarray(world, dtype=np.float64)
        return slicer_lps_2d(image_path, points)


def markups_datalist(
    pairs: Sequence[tuple[str, str]],
    spatial_dims: int,
    landmark_names: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """A datalist (DESIGN.md format) from ``(image, markups file)`` pairs saved by 3D Slicer.

    3D: ``coordinate_space "world"`` with the markups' LPS millimetres. 2D: ``"pixel"``, the markups points
    mapped back to pixels with the inverse of :func:`slicer_lps_2d` (the frame Slicer shows the image in).
    Landmarks are matched by name: ``landmark_names`` (e.g. the served model's) gives the order, else the
    union of the files' names in first-seen order; a name missing from a file (or placed twice) is ``None``.
    Images of size one in a split keep at least one training item (:func:`~custom_monai.data.datalist.split_items`).
    """
    from custom_monai.data.datalist import split_items
    from custom_monai.data.markups import read_markups

    cases = []
    for image, label in pairs:
        names, pts = read_markups(label)
        cases.append((image, [str(n) for n in names], np.asarray(pts, dtype=np.float64)))
    if not cases:
        raise ValueError("no labelled images: save landmarks (a 3D Slicer point list) for some images first")
    order: list[str] = list(landmark_names) if landmark_names else []
    if not order:
        for _, names, _ in cases:
            order += [n for n in names if n not in order]
    warnings: list[str] = []
    items = []
    for image, names, pts in cases:
        out = np.full((len(order), 3), np.nan)
        for j, n in enumerate(order):
            rows = [i for i, m in enumerate(names) if m == n]
            if len(rows) == 1:
                out[j] = pts[rows[0]]
            elif rows:
                warnings.append(f"{image}: landmark {n!r} placed {len(rows)} times; set to missing")
        extra = sorted(set(names) - set(order))
        if extra:
            warnings.append(f"{image}: landmarks {extra} are not landmarks of the model; ignored")
        if spatial_dims == 2:
            pix = lps_to_pixel_2d(image, out)
            landmarks = [None if not np.all(np.isfinite(p)) else [float(v) for v in p] for p in pix]
        else:
            landmarks = [None if not np.all(np.isfinite(p)) else [float(v) for v in p] for p in out]
        items.append({"image": os.path.abspath(image), "landmarks": landmarks})
    if len(items) > 1 and val_fraction > 0:
        train, val = split_items(items, val_fraction, seed)
    else:
        train, val = items, list(items)  # one labelled image: validate on it (there is nothing else)
    return {
        "landmark_names": order,
        "coordinate_space": "world" if spatial_dims == 3 else "pixel",
        "training": train,
        "validation": val,
        "test": [],
        "warnings": warnings,
    }
