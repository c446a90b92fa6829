"""One place predicted for the app: the record, its cell probabilities, top countries and regions, and a flow
head's likelihood grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..inference.inputs import ImageRef, PredictItem
from ..inference.maps import LikelihoodGrid, flow_likelihood
from ..inference.photos import ImageLoadError, load_image
from ..inference.predictions import CellTable
from ..inference.predictor import GeoPredictor
from ..inference.stream import iter_predictions

LIKELIHOOD_DEG = 10.0  # the app's likelihood grid: coarse, so that a request stays fast


@dataclass
class PlacePrediction:
    """What the app shows for one place (one image, or several views of it)."""

    record: dict[str, Any]
    probs: np.ndarray
    countries: dict[str, float]  # country name -> probability, best first
    country_codes: list[str]  # the named country first, then the others by summed probability
    regions: dict[str, float]  # "region, country" -> probability
    likelihood: LikelihoodGrid | None = None  # a flow head's log-density on a lat/lon grid


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


def predict_item(predictor: GeoPredictor, item: PredictItem, k: int = 5) -> PlacePrediction:
    """Predict one place (one image, or several views of it) through ``geohf predict``'s batch path
    (:func:`~geohf.inference.stream.iter_predictions`: decode, preprocess, forward, record) in the calling thread.

    Raises :class:`~geohf.inference.photos.ImageLoadError` for the first unreadable image.
    """
    errors: list[ImageLoadError] = []
    predictions = list(iter_predictions(predictor, [item], batch_size=1, on_error=errors.append, progress=False,
                                        streams=1))  # fmt: skip
    if errors:
        raise errors[0]
    (prediction,) = predictions
    record, probs, cells = prediction.record, prediction.probs, predictor.cells
    return PlacePrediction(
        record=record,
        probs=probs,
        countries=label_probabilities(probs, cells.country, k),
        country_codes=ranked_countries(probs, cells, record["pred_country_code"], k),
        regions=label_probabilities(probs, region_labels(cells), k),
    )


def predict_place(
    predictor: GeoPredictor, sources: list[str], k: int = 5, likelihood_deg: float | None = LIKELIHOOD_DEG
) -> PlacePrediction:
    """Predict one place from image files or URLs (several: views of it, fused by the model); EXIF
    orientation and GPS are read on the way. A flow head's likelihood grid comes too, every ``likelihood_deg``
    degrees (``None``: none).

    Raises :class:`~geohf.inference.photos.ImageLoadError` for an unreadable file.
    """
    location = "upload" if len(sources) > 1 else None
    item = PredictItem([ImageRef(str(s)) for s in sources], location_id=location)
    place = predict_item(predictor, item, k)
    if likelihood_deg is not None and place.probs.size == 0:  # a point head: a flow head has a likelihood
        views = [load_image(ref.name, ref.data).image for ref in item.images]
        place.likelihood = flow_likelihood(predictor, views, likelihood_deg)
    return place
