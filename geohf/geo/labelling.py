"""Point → country / admin-1 region labelling with a spatial index."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from .boundaries import load_boundaries
from .grid import LabelGrid, build_and_cache, find_grid, geometry_key
from .index import PolygonIndex

LABEL_COLUMNS = ["country_code", "country", "region_code", "region"]
GRID_BUILD_POINTS = 20_000
"""Without a shipped or cached grid, the first query of at least this many points builds one (seconds, once)."""
LABEL_POINTS = 1 << 16
"""Points :meth:`PointLabeller.label` looks up at once."""
_MATCH = ["inside", "nearest", "none"]


class _StringTable:
    """Take rows of a small string table into DataFrame columns of pandas' default string dtype.

    With pandas' Arrow-backed ``str`` dtype (pandas 3) the take runs in Arrow (no Python
    string objects); otherwise columns are object arrays, as pandas would infer them.
    """

    def __init__(self, values):
        values = np.asarray(values, dtype=object)
        self.dtype = pd.Series(["a"]).dtype
        self.arrow = isinstance(self.dtype, pd.StringDtype) and self.dtype.storage == "pyarrow"
        self.values = values
        if self.arrow:
            import pyarrow as pa

            try:
                self.values = pa.array(values, type=pa.large_string())  # None -> missing, as pandas infers
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all strings: let pandas infer, as before
                self.arrow = False

    def take(self, index: np.ndarray, categorical: bool = False):
        """The rows ``index``; ``categorical``: as a :class:`pandas.Categorical` of the table's distinct values in
        sorted order (a small integer code per row, no string; sorting and factorizing it order as the strings do)."""
        if categorical:
            codes, categories = self._coded
            return pd.Categorical.from_codes(codes[index], categories=categories)
        if self.arrow:
            return pd.array(self.values.take(index), dtype=self.dtype)
        return self.values[index]

    @cached_property
    def _coded(self) -> tuple[np.ndarray, pd.Index]:
        """A code per table row (-1: missing) and the distinct values in text order, as strings sort."""
        values = pd.array(self.values, dtype=self.dtype) if self.arrow else self.values
        codes, uniques = pd.factorize(values, sort=True)
        small = next(t for t in (np.int8, np.int16, np.int32) if len(uniques) < np.iinfo(t).max)
        return codes.astype(small), uniques


@dataclass
class LabellingReport:
    """How the points of one :meth:`PointLabeller.label` call were labelled."""

    inside: int = 0
    nearest: int = 0
    unmatched: int = 0
    nearest_km: list[float] = field(default_factory=list)

    def __iadd__(self, other: LabellingReport) -> LabellingReport:
        """The counts of both calls (the points of ``other`` after these)."""
        self.inside += other.inside
        self.nearest += other.nearest
        self.unmatched += other.unmatched
        self.nearest_km += other.nearest_km
        return self

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

    Point-in-polygon runs through a :class:`~geohf.geo.grid.LabelGrid` (an array lookup
    for points away from any boundary; the same answers as the plain query): the one
    shipped for the default boundaries, or one built on the first query of
    :data:`GRID_BUILD_POINTS` points and cached in :func:`~geohf.geo.boundaries.cache_dir`.
    ``grid=False`` keeps the plain :class:`PolygonIndex` query.
    """

    def __init__(
        self, boundaries: gpd.GeoDataFrame | str | None = None, max_distance_km: float = 25.0, grid: bool = True
    ):
        if not isinstance(boundaries, gpd.GeoDataFrame):
            boundaries = load_boundaries(boundaries)
        self.boundaries = boundaries.reset_index(drop=True)
        self.max_distance_km = max_distance_km
        self.index = PolygonIndex(self.boundaries.geometry.to_numpy())
        # one extra empty row: label row -1 (no polygon) takes it
        self._labels = {c: _StringTable([*self.boundaries[c].to_numpy(dtype=object), ""]) for c in LABEL_COLUMNS}
        self._match = _StringTable(_MATCH)
        self.use_grid = grid
        self._grid_key = geometry_key(self.index.parts) if grid else None
        self.index.cache_key = self._grid_key  # its tiles (nearest searches) are cached beside the grid
        self.grid: LabelGrid | None = find_grid(self.index.parts, self._grid_key) if grid else None

    def _grid_for(self, n_points: int) -> LabelGrid | None:
        if self.grid is None and self.use_grid and n_points >= GRID_BUILD_POINTS:
            self.grid = build_and_cache(self.index.parts, self.index.part_row, self._grid_key)
        return self.grid

    def containing(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Boundary row holding each point (-1: none): :meth:`PolygonIndex.containing` on (lat, lon)."""
        grid = self._grid_for(lat.size)
        if grid is None:
            return self.index.containing(shapely.points(lon, lat))
        index, valid = grid.containing(lat, lon, self.index.parts, self.index.part_row)
        if not valid.all():  # NaN or outside [-90, 90] x [-180, 180]: the plain query, as without a grid
            off = np.flatnonzero(~valid)
            index[off] = self.index.containing(shapely.points(lon[off], lat[off]))
        return index

    @property
    def has_regions(self) -> bool:
        return bool((self.boundaries["region_code"] != "").any())

    def polygon_index(self, lat, lon) -> tuple[np.ndarray, np.ndarray, LabellingReport]:
        """Boundary row for each point (-1: none) and km to it (NaN: inside or none)."""
        lat, lon = np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()
        index = self.containing(lat, lon)
        dist = np.full(index.shape, np.nan)
        report = LabellingReport(inside=int((index >= 0).sum()))
        missing = np.flatnonzero(index < 0)
        if missing.size and self.max_distance_km > 0:
            points = shapely.points(lon[missing], lat[missing])
            near, km = self.index.nearest(points, lat[missing], self.max_distance_km)
            index[missing], dist[missing] = near, km
            report.nearest = int((near >= 0).sum())
            report.nearest_km = km[near >= 0].tolist()
        report.unmatched = int((index < 0).sum())
        return index, dist, report

    def label(self, lat, lon, categorical: bool = False) -> tuple[pd.DataFrame, LabellingReport]:
        """Label columns for each point, plus ``match`` (inside / nearest / none) and ``match_km``; ``categorical``:
        the label and match columns as categoricals (a code per row, no string per row: what a big build keeps)."""
        lat, lon = np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()
        index, dist = np.empty(lat.size, dtype=np.int64), np.empty(lat.size)
        report = LabellingReport()
        for start in range(0, lat.size, LABEL_POINTS):  # in slices: the lookups' arrays are a slice's
            part = slice(start, start + LABEL_POINTS)
            index[part], dist[part], done = self.polygon_index(lat[part], lon[part])
            report += done
        near = ~np.isnan(dist)
        rows = np.where(index < 0, len(self.boundaries), index)  # no polygon: the empty last row
        columns = {c: table.take(rows, categorical) for c, table in self._labels.items()}
        columns["match"] = self._match.take(np.where(index < 0, 2, near.view(np.int8)), categorical)
        columns["match_km"] = np.where(near, dist, 0.0)
        return pd.DataFrame(columns, copy=False), report

    def is_land(self, lat, lon) -> np.ndarray:
        """True where a point lies inside a boundary polygon (no nearest fallback)."""
        lat, lon = np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()
        return self.containing(lat, lon) >= 0
