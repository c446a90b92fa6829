"""Inference: batched prediction into :class:`GeoPredictions`, ``pipeline("image-geolocation")``, ``geohf predict``."""

from .predictions import CellTable, GeoPredictions
from .predictor import GeoPredictor, predict

__all__ = ["CellTable", "GeoPredictions", "GeoPredictor", "predict"]
