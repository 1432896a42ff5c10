"""Predictors (batch -> landmarks in the original frame) and multi-stage inference."""

from .attention_guided import AttentionGuidedPredictor, sample_prior
from .coordinate_regression import CoordinateRegressionPredictor, SelectOutput
from .two_pass import DCeLRPredictor
from .global_local import GlobalLocalPredictor
from .expansive_exploration import ExpansiveExplorationInferer, coarse_from_global, crop_regions, decode_threshold_mean, expansive_regions
from .predictor import LandmarkPredictor, grid_to_original, original_to_grid

__all__ = [
    "AttentionGuidedPredictor",
    "sample_prior",
    "CoordinateRegressionPredictor",
    "DCeLRPredictor",
    "ExpansiveExplorationInferer",
    "GlobalLocalPredictor",
    "LandmarkPredictor",
    "coarse_from_global",
    "crop_regions",
    "decode_threshold_mean",
    "expansive_regions",
    "grid_to_original",
    "original_to_grid",
    "SelectOutput",
]
