"""Ignite handlers (checkpoints, time budget, validation, reports) and file writers."""

from .checkpoint import (
    BestMetricCheckpoint,
    ResumableCheckpoint,
    atomic_torch_save,
    check_settings,
    load_checkpoint,
    load_model,
    save_model,
    settings_path,
    state_dicts,
    trained_settings,
)
from .decoding import select_decoding, trained_decoding
from .distributed import finalize_distributed
from .report import LandmarkReportHandler
from .schedule import ProgressAttributeSwitch, ProgressLRHandler, lr_factor
from .summary import log_training_summary
from .time_budget import TimeBudgetHandler
from .tracking import TrackingExtras, stage_handlers
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
    "ProgressAttributeSwitch",
    "ProgressLRHandler",
    "LandmarkReportHandler",
    "LandmarkValidationHandler",
    "ResumableCheckpoint",
    "TimeBudgetHandler",
    "atomic_torch_save",
    "finalize_distributed",
    "select_decoding",
    "trained_decoding",
    "check_settings",
    "load_checkpoint",
    "lr_factor",
    "load_model",
    "log_training_summary",
    "save_model",
    "settings_path",
    "stage_handlers",
    "trained_settings",
    "TrackingExtras",
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
