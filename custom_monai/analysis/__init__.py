"""Cephalometric analysis: the ISBI 2015 measurements and their classes, computed from landmarks."""

from .cephalometric import (
    ISBI_SYMBOLS,
    MEASUREMENTS,
    Measurement,
    MeasurementAccumulator,
    MeasurementClass,
    cephalometric_measurements,
    classify,
    is_isbi_landmark_set,
    landmark_roles,
    summary_line,
)

__all__ = [
    "ISBI_SYMBOLS",
    "MEASUREMENTS",
    "Measurement",
    "MeasurementAccumulator",
    "MeasurementClass",
    "cephalometric_measurements",
    "classify",
    "is_isbi_landmark_set",
    "landmark_roles",
    "summary_line",
]
