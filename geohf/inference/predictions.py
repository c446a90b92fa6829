"""``GeoPredictions``: the one prediction type of geohf (predictor, pipeline, ``geohf predict``, evaluation).

Predicted values are ``pred_*``, ground truth (when known) ``true_*``; probabilities and
embeddings are fields, not side channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from ..geo.countries import country_name
from ..geo.places import AreaTable
from ..geo.sphere import haversine_km


@dataclass
class CellTable:
    """What the primary head's classes mean on the map (NaN coordinates: a class without a centroid)."""

    names: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    country_code: np.ndarray
    country: np.ndarray
    region: np.ndarray
    region_code: np.ndarray

    @classmethod
    def from_spec(cls, spec) -> CellTable:
        """From a :class:`~geohf.modeling.HeadSpec`: classes with ``cells`` carry centroids and majority
        labels; country and region heads map their classes to countries (``label_country`` for regions)."""
        names = list(spec.labels or [])
        n = len(names)
        cells = spec.cells or {}

        def col(key, default):
            return np.asarray(cells.get(key) or default, dtype=object)

        if cells:
            country_code = col("country_code", [""] * n)
        elif spec.label_column == "country_code":
            country_code = np.asarray(names, dtype=object)
        else:
            country_code = np.asarray(spec.label_country or [""] * n, dtype=object)
        region_code = col("region_code", names if spec.label_column == "region_code" else [""] * n)
        nan = [np.nan] * n
        return cls(
            names=names,
            latitude=np.asarray(cells.get("latitude") or nan, dtype=np.float64),
            longitude=np.asarray(cells.get("longitude") or nan, dtype=np.float64),
            country_code=country_code,
            country=np.asarray(
                [c if cells else country_name(cc) for cc, c in zip(country_code, col("country", country_code))],
                dtype=object,
            ),
            region=col("region", [""] * n),
            region_code=region_code,
        )

    def lookup(self, column: str, index: np.ndarray) -> np.ndarray:
        """``column`` of each class in ``index`` ('' where the index is -1: no class)."""
        values = np.asarray(getattr(self, column), dtype=object)
        out = np.full(index.shape, "", dtype=object)
        known = index >= 0
        out[known] = values[index[known]]
        return out


def _rounded(values, digits: int = 5) -> list:
    """Every value of an array rounded to ``digits`` as a Python float (``None`` where not finite), as a list:
    one conversion for the whole array."""
    return [round(v, digits) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


@dataclass
class GeoPredictions:
    """Predictions for N images (or places), every array aligned by row.

    Attributes:
        pred_latitude, pred_longitude: (N,) predicted coordinates in degrees (NaN: none).
        top_index, top_score: (N, k) the primary head's best classes and probabilities (k = 0 for a
            regression-only model).
        cells: what the classes mean (names, centroids, countries, regions).
        radius_km: (N,) km around the prediction holding ``mass`` of the probability.
        probs: (N, C) the primary head's probabilities; embeddings: (N, D) pooled embeddings.
        true_latitude, true_longitude: (N,) ground truth, where known (NaN per unknown row).
        area_row, areas: (N,) the admin area (row of ``areas``, -1: none) the coordinates lie in: the
            country and region the prediction names (see :mod:`geohf.inference.answers`). Without them
            (raw head outputs) the best class's majority country and region are named.
        country_score: (N,) the probability of the named country, the sum over its classes.
    """

    pred_latitude: np.ndarray
    pred_longitude: np.ndarray
    top_index: np.ndarray
    top_score: np.ndarray
    cells: CellTable
    radius_km: np.ndarray | None = None
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    true_latitude: np.ndarray | None = None
    true_longitude: np.ndarray | None = None
    area_row: np.ndarray | None = None
    country_score: np.ndarray | None = None
    areas: AreaTable | None = None

    def __len__(self) -> int:
        return int(self.pred_latitude.shape[0])

    @property
    def pred_class(self) -> np.ndarray:
        """(N,) the best class of the primary head (-1: a regression-only model names none)."""
        if self.top_index.shape[1] == 0:
            return np.full(len(self), -1, dtype=np.int64)
        return self.top_index[:, 0].astype(np.int64)

    @property
    def score(self) -> np.ndarray:
        """(N,) the best class's probability (NaN without classes)."""
        return self.top_score[:, 0] if self.top_score.shape[1] else np.full(len(self), np.nan)

    def _named(self, column: str) -> np.ndarray:
        if self.areas is not None and self.area_row is not None:
            return self.areas.lookup(column, self.area_row)
        return self.cells.lookup(column, self.pred_class)

    @property
    def pred_country_code(self) -> np.ndarray:
        return self._named("country_code")

    @property
    def pred_country(self) -> np.ndarray:
        return self._named("country")

    @property
    def pred_region_code(self) -> np.ndarray:
        return self._named("region_code")

    @property
    def pred_region(self) -> np.ndarray:
        return self._named("region")

    @property
    def error_km(self) -> np.ndarray | None:
        """(N,) great-circle error where the truth is known (NaN elsewhere), ``None`` without truth."""
        if self.true_latitude is None:
            return None
        return haversine_km(self.true_latitude, self.true_longitude, self.pred_latitude, self.pred_longitude)

    def with_truth(self, latitude, longitude) -> GeoPredictions:
        """The same predictions with ground-truth coordinates attached."""
        lat = np.asarray(latitude, dtype=np.float64)
        lon = np.asarray(longitude, dtype=np.float64)
        if lat.shape != (len(self),) or lon.shape != (len(self),):
            raise ValueError(f"truth must have one latitude and longitude per prediction ({len(self)})")
        return replace(self, true_latitude=lat, true_longitude=lon)

    def select(self, index) -> GeoPredictions:
        """The rows in ``index`` (indices or a boolean mask)."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v[index] if isinstance(v, np.ndarray) else v
        return GeoPredictions(**values)

    @classmethod
    def concat(cls, parts: list[GeoPredictions]) -> GeoPredictions:
        """Row-wise concatenation of predictions of one model."""
        if not parts:
            raise ValueError("no predictions to concatenate")
        values = {}
        for f in fields(cls):
            items = [getattr(p, f.name) for p in parts]
            if f.name in ("cells", "areas"):
                values[f.name] = items[0]
            elif any(v is None for v in items):
                values[f.name] = None
            else:
                values[f.name] = np.concatenate(items)
        return cls(**values)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able dict per row: ``pred_*``, ``score``, ``radius_km``, ``top_k`` and, with truth,
        ``true_*`` and ``error_km``."""
        codes, countries = self.pred_country_code, self.pred_country
        region_codes, regions = self.pred_region_code, self.pred_region
        n, has_class = len(self), self.top_index.shape[1] > 0
        error = self.error_km
        lat, lon = _rounded(self.pred_latitude), _rounded(self.pred_longitude)
        score = _rounded(self.top_score[:, 0]) if has_class else [None] * n
        country_score = None if self.country_score is None else _rounded(self.country_score)
        radius = None if self.radius_km is None else _rounded(self.radius_km, 1)
        if error is not None:
            true_lat, true_lon = _rounded(self.true_latitude, 6), _rounded(self.true_longitude, 6)
            error_km = _rounded(error, 1)
        # the top-k classes: each class's name and rounded centroid looked up once
        used = np.unique(self.top_index)
        rounded = zip(_rounded(self.cells.latitude[used]), _rounded(self.cells.longitude[used]))
        centroid = dict(zip(used.tolist(), rounded))
        names, top_index, top_score = self.cells.names, self.top_index.tolist(), [_rounded(r) for r in self.top_score]
        out = []
        for i in range(n):
            record: dict[str, Any] = {
                "pred_latitude": lat[i],
                "pred_longitude": lon[i],
                "pred_country_code": str(codes[i]),
                "pred_country": str(countries[i]),
                "pred_region_code": str(region_codes[i]),
                "pred_region": str(regions[i]),
                "score": score[i],
            }
            if country_score is not None:
                record["country_score"] = country_score[i]
            if radius is not None:
                record["radius_km"] = radius[i]
            if error is not None and true_lat[i] is not None:
                record["true_latitude"], record["true_longitude"] = true_lat[i], true_lon[i]
                record["error_km"] = error_km[i]
            record["top_k"] = [
                {"label": names[j], "score": s, "latitude": centroid[j][0], "longitude": centroid[j][1]}
                for j, s in zip(top_index[i], top_score[i])
            ]
            out.append(record)
        return out

    def to_pandas(self) -> pd.DataFrame:
        """A row per prediction: ``pred_*``, ``pred_class``, ``score``, ``radius_km``, ``top_index``,
        ``top_score`` and, with truth, ``true_*`` and ``error_km`` (probabilities and embeddings stay
        on the object)."""
        frame = pd.DataFrame(
            {
                "pred_latitude": self.pred_latitude,
                "pred_longitude": self.pred_longitude,
                "pred_class": self.pred_class,
                "pred_country_code": self.pred_country_code,
                "pred_country": self.pred_country,
                "pred_region_code": self.pred_region_code,
                "pred_region": self.pred_region,
                "score": self.score,
                "top_index": [list(map(int, t)) for t in self.top_index],
                "top_score": [list(map(float, t)) for t in self.top_score],
            }
        )
        if self.country_score is not None:
            frame["country_score"] = self.country_score
        if self.radius_km is not None:
            frame["radius_km"] = self.radius_km
        if self.true_latitude is not None:
            frame["true_latitude"], frame["true_longitude"] = self.true_latitude, self.true_longitude
            frame["error_km"] = self.error_km
        return frame


class PredictionsBuffer:
    """Rows of :class:`GeoPredictions` gathered batch by batch into arrays allocated once for all ``n`` rows:
    what a consumer of :meth:`~geohf.inference.predictor.GeoPredictor.iter_dataset` keeps. Probabilities and
    embeddings are left out unless asked for (``keep``), so memory grows with N by a few scalars and the top-k
    per row, whatever the number of classes; one allocation per field also keeps the heap from fragmenting
    between the batches' large transient arrays (gathering small per-batch arrays grew a 30,000-row
    evaluation by gigabytes)."""

    def __init__(self, n: int, keep: tuple[str, ...] = ()):
        self.n, self.keep, self.filled = n, set(keep), 0
        self._values: dict[str, Any] | None = None

    def add(self, batch: GeoPredictions) -> None:
        rows = slice(self.filled, self.filled + len(batch))
        if rows.stop > self.n:
            raise ValueError(f"more than the {self.n} rows this buffer was made for")
        if self._values is None:
            self._values = {}
            for f in fields(GeoPredictions):
                v = getattr(batch, f.name)
                if isinstance(v, np.ndarray) and (f.name not in ("probs", "embeddings") or f.name in self.keep):
                    self._values[f.name] = np.empty((self.n, *v.shape[1:]), dtype=v.dtype)
                elif not isinstance(v, np.ndarray):
                    self._values[f.name] = v  # cells, areas (shared by every batch), or None
        for name, array in self._values.items():
            if isinstance(array, np.ndarray):
                array[rows] = getattr(batch, name)
        self.filled = rows.stop

    def result(self) -> GeoPredictions:
        """The predictions of every row added (all ``n`` of them)."""
        if self._values is None or self.filled != self.n:
            raise ValueError(f"{self.filled} of {self.n} rows were added")
        values = {f.name: self._values.get(f.name) for f in fields(GeoPredictions)}
        return GeoPredictions(**values)
