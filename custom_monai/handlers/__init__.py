"""Ignite handlers (checkpoints, time budget, validation, reports) and file writers."""

from .checkpoint import BestMetricCheckpoint, ResumableCheckpoint, atomic_torch_save, checkpoint_meta, load_checkpoint, state_dicts
from .report import LandmarkReportHandler
from .schedule import EpochAttributeSwitch
from .time_budget import TimeBudgetHandler
from .validation import LandmarkValidationHandler
from .writers import (
    prediction_record,
    read_prediction_json,
    write_boxplot,
    write_evaluation_report,
    write_metrics_json,
    write_overlay_png,
    write_prediction_json,
    write_predictions_csv,
)

__all__ = [
    "BestMetricCheckpoint",
    "EpochAttributeSwitch",
    "LandmarkReportHandler",
    "LandmarkValidationHandler",
    "ResumableCheckpoint",
    "TimeBudgetHandler",
    "atomic_torch_save",
    "checkpoint_meta",
    "load_checkpoint",
    "prediction_record",
    "read_prediction_json",
    "state_dicts",
    "write_boxplot",
    "write_evaluation_report",
    "write_metrics_json",
    "write_overlay_png",
    "write_prediction_json",
    "write_predictions_csv",
]
