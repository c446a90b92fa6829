"""Point → country / admin-1 region labelling with a spatial index."""

from __future__ import annotations

from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .boundaries import load_boundaries
from .index import PolygonIndex

LABEL_COLUMNS = ["country_code", "country", "region_code", "region"]


@dataclass
class LabellingReport:
    """How the points of one :meth:`PointLabeller.label` call were labelled."""

    inside: int = 0
    nearest: int = 0
    unmatched: int = 0
    nearest_km: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "inside_polygon": self.inside,
            "nearest_polygon": self.nearest,
            "unmatched": self.unmatched,
            "max_nearest_km": round(max(self.nearest_km), 2) if self.nearest_km else 0.0,
        }


class PointLabeller:
    """Label points with the boundary polygon that contains them.

    Points in no polygon (1:10m coast lines miss piers, beaches and small islands) take
    the nearest polygon within ``max_distance_km``; the rest stay unlabelled (empty
    strings). Both cases are counted in the report.
    """

    def __init__(self, boundaries: gpd.GeoDataFrame | str | None = None, max_distance_km: float = 25.0):
        if not isinstance(boundaries, gpd.GeoDataFrame):
            boundaries = load_boundaries(boundaries)
        self.boundaries = boundaries.reset_index(drop=True)
        self.max_distance_km = max_distance_km
        self.index = PolygonIndex(self.boundaries.geometry.to_numpy())
        self._labels = self.boundaries[LABEL_COLUMNS].to_numpy(dtype=object)

    @property
    def has_regions(self) -> bool:
        return bool((self.boundaries["region_code"] != "").any())

    def polygon_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray, LabellingReport]:
        """Boundary row for each point (-1: none) and km to it (NaN: inside or none)."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        points = shapely.points(lon, lat)
        index = self.index.containing(points)
        dist = np.full(index.shape, np.nan)
        report = LabellingReport(inside=int((index >= 0).sum()))
        missing = np.flatnonzero(index < 0)
        if missing.size and self.max_distance_km > 0:
            near, km = self.index.nearest(points[missing], lat[missing], self.max_distance_km)
            index[missing], dist[missing] = near, km
            report.nearest = int((near >= 0).sum())
            report.nearest_km = km[near >= 0].tolist()
        report.unmatched = int((index < 0).sum())
        return index, dist, report

    def label(self, lat, lon) -> tuple[pd.DataFrame, LabellingReport]:
        """Label columns for each point, plus ``match`` (inside / nearest / none) and ``match_km``."""
        index, dist, report = self.polygon_index(lat, lon)
        labels = np.full((index.size, len(LABEL_COLUMNS)), "", dtype=object)
        hit = index >= 0
        labels[hit] = self._labels[index[hit]]
        frame = pd.DataFrame(labels, columns=LABEL_COLUMNS)
        near = hit & ~np.isnan(dist)
        frame["match"] = np.where(near, "nearest", np.where(hit, "inside", "none"))
        frame["match_km"] = np.where(near, dist, 0.0)
        return frame, report

    def is_land(self, lat, lon) -> np.ndarray:
        """True where a point lies inside a boundary polygon (no nearest fallback)."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        return self.index.containing(shapely.points(lon, lat)) >= 0
