"""Evaluation above inference: metrics, model-vs-baselines evaluation, reports, the game's human row."""

from .evaluation import Evaluation, evaluate, tune_coordinate_rule

__all__ = ["Evaluation", "evaluate", "tune_coordinate_rule"]
