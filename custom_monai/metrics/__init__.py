"""custom_monai.metrics: radial error, MRE/SD/median, SDR and per-landmark tables; Ignite wrappers."""

from custom_monai.metrics.baseline import mean_position_baseline
from custom_monai.metrics.ignite_metric import MeanRadialError, SuccessDetectionRate, lower_is_better
from custom_monai.metrics.landmark_metrics import (
    DEFAULT_THRESHOLDS,
    LandmarkErrorAccumulator,
    radial_errors,
    spearman,
    summarize_errors,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LandmarkErrorAccumulator",
    "MeanRadialError",
    "SuccessDetectionRate",
    "lower_is_better",
    "mean_position_baseline",
    "radial_errors",
    "summarize_errors",
    "spearman",
]
