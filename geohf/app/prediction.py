"""One place predicted for the app: the record, its cell probabilities, and top countries and regions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..inference.inputs import ImageRef, PredictItem
from ..inference.photos import LoadedImage, load_image
from ..inference.predictions import CellTable
from ..inference.predictor import GeoPredictor
from ..inference.stream import make_record


@dataclass
class PlacePrediction:
    """What the app shows for one place (one image, or several views of it)."""

    record: dict[str, Any]
    probs: np.ndarray
    countries: dict[str, float]  # country name -> probability, best first
    country_codes: list[str]  # the named country first, then the others by summed probability
    regions: dict[str, float]  # "region, country" -> probability


def label_probabilities(probs: np.ndarray, labels, k: int = 5) -> dict[str, float]:
    """Cell probabilities summed per label (country, region...), the ``k`` largest; empty labels left out."""
    series = pd.Series(np.asarray(probs, dtype=np.float64)).groupby(np.asarray(labels, dtype=object)).sum()
    series = series[series.index != ""]
    return {str(name): float(p) for name, p in series.nlargest(k).items()}


def ranked_countries(probs: np.ndarray, cells: CellTable, named: str, k: int = 5) -> list[str]:
    """The prediction's ``named`` country (the one ``geohf evaluate`` scores at top-1), then the other
    countries by the summed probability of their cells."""
    ranked = label_probabilities(probs, cells.country_code, len(cells.names) or 1)
    return [c for c in dict.fromkeys([named, *ranked]) if c][:k]


def region_labels(cells: CellTable) -> np.ndarray:
    """``region, country`` per cell (``""`` where the cell has no region)."""
    return np.asarray([f"{r}, {c}" if r else "" for r, c in zip(cells.region, cells.country)], dtype=object)


def predict_views(predictor: GeoPredictor, loaded: list[LoadedImage], names: list[str], k: int = 5) -> PlacePrediction:
    """Predict one place from decoded images (several: views of it, fused by the model)."""
    views = [x.image for x in loaded]
    pixel_values = predictor.processor([views] if len(views) > 1 else views, return_tensors="pt")["pixel_values"]
    predictions = predictor.predict_tensors(pixel_values)
    item = PredictItem([ImageRef(n) for n in names], location_id="upload" if len(names) > 1 else None)
    gps = next((x.gps for x in loaded if x.gps is not None), None)
    record = make_record(item, predictions.records()[0], list(names), gps)
    probs, cells = predictions.probs[0], predictor.cells
    return PlacePrediction(
        record=record,
        probs=probs,
        countries=label_probabilities(probs, cells.country, k),
        country_codes=ranked_countries(probs, cells, record["pred_country_code"], k),
        regions=label_probabilities(probs, region_labels(cells), k),
    )


def predict_place(predictor: GeoPredictor, sources: list[str], k: int = 5) -> PlacePrediction:
    """Predict one place from image files or URLs (EXIF orientation and GPS read on the way).

    Raises :class:`~geohf.inference.photos.ImageLoadError` for an unreadable file.
    """
    return predict_views(predictor, [load_image(s) for s in sources], [str(s) for s in sources], k)
