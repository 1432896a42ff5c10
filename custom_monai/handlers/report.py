"""Write what an evaluation or inference run produced: per-image files and the metrics report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from custom_monai.analysis.cephalometric import MeasurementAccumulator, summary_line
from custom_monai.metrics import LandmarkErrorAccumulator

from .writers import (
    image_id,
    measurements_for,
    prediction_record,
    write_evaluation_report,
    write_overlay_png,
    write_prediction_json,
)

__all__ = ["LandmarkReportHandler"]


class LandmarkReportHandler:
    """Attach to a :class:`custom_monai.engines.LandmarkEvaluator`; writes into ``output_dir``.

    Per image: ``<id>.json`` (the bundle contract's prediction format, original-image coordinates;
    3D also world LPS mm) and ``<id>_overlay.png`` (2D) or ``<id>.mrk.json`` (3D Slicer markups).
    With ground truth: ``metrics.json``, ``predictions.csv`` and the per-landmark box plot at the end
    (the same code as ``scripts/score.py``). Items that could not be read are listed in ``errors.json``.
    2D ISBI-19 landmark sets also get the cephalometric analysis (:mod:`custom_monai.analysis.cephalometric`):
    ``measurements`` in each JSON, lines and values on the overlay, MAE and class accuracy in ``metrics.json``.

    Args:
        output_dir: output folder.
        landmark_names: names in landmark order.
        write_predictions: write ``<id>.json`` (and markups for 3D).
        write_overlays: write ``<id>_overlay.png`` for 2D images.
        overlay_key: batch key of the image drawn under the points (any resolution: points are mapped to it).
        metrics: write the metrics report when ground truth is present.
        extra: constant fields added to each prediction JSON (e.g. ``{"method": ...}``).
        landmark_fields: keys of the evaluator's output holding more per-landmark values, ``(B, N)`` or
            ``(B, N, D)``, written into each landmark of the JSON under the same name (e.g. ``["sigma"]``).
    """

    def __init__(
        self,
        output_dir: str,
        landmark_names: Sequence[str],
        write_predictions: bool = True,
        write_overlays: bool = True,
        overlay_key: str = "image",
        metrics: bool = True,
        extra: dict | None = None,
        name: str | None = None,
        landmark_fields: Sequence[str] = (),
    ) -> None:
        self.output_dir = Path(output_dir)
        self.landmark_names = [str(n) for n in landmark_names]
        self.write_predictions = write_predictions
        self.write_overlays = write_overlays
        self.overlay_key = overlay_key
        self.metrics = metrics
        self.extra = extra
        self.landmark_fields = [str(k) for k in ([landmark_fields] if isinstance(landmark_fields, str) else landmark_fields)]
        self.logger = logging.getLogger(name or __name__)
        self.accumulator = LandmarkErrorAccumulator(self.landmark_names)
        self.measurements = MeasurementAccumulator(self.landmark_names)
        self.summary: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.accumulator.reset()
        self.measurements.reset()
        self.summary = None
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _iteration(self, engine: Engine) -> None:
        out = engine.state.output
        if not out:
            return
        batch = engine.state.batch
        pred = out["pred"].numpy()
        label = out.get("label")
        spacing = out.get("spacing")
        conf = out.get("confidence")
        affines = out.get("landmark_affine")
        for b, path in enumerate(out["image_path"]):
            sp = None if spacing is None else spacing[b].numpy().astype(np.float64)
            if sp is not None and not np.all(np.isfinite(sp)):
                sp = None
            points = pred[b]
            world = None
            if points.shape[-1] == 3 and affines is not None:
                from custom_monai.transforms.landmarks import index_to_world_lps

                world = np.asarray(index_to_world_lps(points, affines[b].numpy().astype(np.float64)))
            gt = None if label is None else label[b].numpy()
            if self.write_predictions:  # the record carries the cephalometric measurements (ISBI-19, 2D)
                fields = {k: out[k][b] for k in self.landmark_fields if out.get(k) is not None}
                record = prediction_record(
                    path, sp, points, self.landmark_names, None if conf is None else conf[b], world, self.extra,
                    landmark_fields=fields,
                )
                write_prediction_json(self.output_dir, record)
                if world is not None:
                    from custom_monai.data.markups import write_mrk_json

                    write_mrk_json(self.output_dir / f"{image_id(path)}.mrk.json", self.landmark_names, world)
            if self.write_overlays and points.shape[-1] == 2 and batch is not None and self.overlay_key in batch:
                meas = measurements_for(points, self.landmark_names, sp)
                gt_meas = None if gt is None or meas is None else measurements_for(gt, self.landmark_names, sp)
                self._overlay(batch[self.overlay_key], b, path, points, gt, meas, gt_meas)
            if self.metrics and gt is not None:
                self.accumulator.add(image_id(path), points, gt, sp, confidence=None if conf is None else conf[b])
                self.measurements.add(image_id(path), points, gt, sp)

    def _overlay(
        self,
        image: Any,
        b: int,
        path: str,
        points: np.ndarray,
        gt: np.ndarray | None,
        measurements: dict | None = None,
        gt_measurements: dict | None = None,
    ) -> None:
        from custom_monai.inferers.predictor import original_to_grid

        img = image[b : b + 1]
        grid = lambda p: original_to_grid(torch.as_tensor(p, dtype=torch.float32)[None], img)[0].numpy()  # noqa: E731
        write_overlay_png(
            self.output_dir / f"{image_id(path)}_overlay.png",
            np.asarray(img[0, 0].detach().cpu().float()),
            grid(points),
            None if gt is None else grid(gt),
            self.landmark_names,
            measurements=measurements,
            gt_measurements=gt_measurements,
        )

    def _completed(self, engine: Engine) -> None:
        errors = getattr(engine.data_loader, "errors", None) or getattr(
            getattr(engine.data_loader, "dataset", None), "errors", None
        )
        if errors:
            text = json.dumps({"unreadable": errors}, indent=2)
            (self.output_dir / "errors.json").write_text(text + "\n")
            for e in errors:
                self.logger.error(f"could not process {e['image']}: {e['error']}")
        if self.metrics and len(self.accumulator):
            self.summary = write_evaluation_report(self.output_dir, self.accumulator, measurements=self.measurements)
            mm = self.summary.get("mre_mm")
            px = self.summary.get("mre_px")
            sdr = self.summary.get("sdr") or {}
            self.logger.info(
                f"{len(self.accumulator)} images: MRE {mm if mm is None else round(mm, 3)} mm, "
                f"{px if px is None else round(px, 2)} px; SDR {sdr}; report in {self.output_dir}"
            )
            if "measurements" in self.summary:
                self.logger.info(summary_line(self.summary["measurements"]))
