"""Ignite engines for landmark workflows (MONAI ``Evaluator`` subclasses)."""

from .landmark_evaluator import LandmarkEvaluator, landmark_metric_output
from .prepare_batch import PrepareLandmarkBatch

__all__ = ["LandmarkEvaluator", "PrepareLandmarkBatch", "landmark_metric_output"]
