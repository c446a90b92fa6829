"""Regions to sample from: country and admin-1 codes, cities with radii, fishnet cells, GeoJSON.

A regions SPEC is one or more tokens, separated by commas (or given as several arguments):

* ``FR`` -- a country (ISO 3166-1 alpha-2), all of its admin-1 polygons;
* ``US-CA`` -- an admin-1 region (ISO 3166-2 code, as in Natural Earth);
* ``city:Paris@48.8566,2.3522,15km`` -- a disc of the given radius (``km`` or ``m``) around a point;
* ``cities.csv`` -- one disc per row (columns ``name, latitude, longitude, radius_km``);
* ``fishnet:US@2`` -- a country, admin-1 code or GeoJSON file cut into a fishnet of 2° cells, one
  region per cell, slivers merged into a neighbouring cell (a fishnet grid);
* ``area.geojson`` (or any file geopandas reads) -- one region per feature (name from a ``name``
  column).

Every region is a :class:`Region`: a name, a (multi)polygon in longitude/latitude and an optional
weight (a user-supplied column such as ``population``, read from city CSVs and GeoJSON files).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ..geo.cells import grid_pieces, merge_small_pieces
from ..geo.countries import is_country_code
from ..geo.sphere import EARTH_RADIUS_KM, destination_points
from .names import CITY_COLUMNS, SPEC_HELP  # noqa: F401  (defined there: the parser needs them without geopandas)

DEFAULT_CELL_DEG = 2.0
SLIVER_FRACTION = 0.1
"""Fishnet pieces smaller than this fraction of a full cell are merged into a neighbour."""

_TOKEN = re.compile(r"\s*(city:[^@,;]+@[^,;]+,[^,;]+,[^,;]+|[^,;]+)\s*")
_CITY = re.compile(r"city:(?P<name>[^@]+)@(?P<lat>[-+.\d]+),(?P<lon>[-+.\d]+),(?P<radius>[.\d]+)\s*(?P<unit>km|m)?$")
_ADMIN1 = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")
_FISHNET = re.compile(r"fishnet:(?P<area>[^@]+)(@(?P<deg>[.\d]+))?$")


@dataclass
class Region:
    """A named area to sample points in."""

    name: str
    geometry: shapely.Geometry
    weight: float | None = None

    def __post_init__(self):
        self.geometry = shapely.MultiPolygon(list(polygon_parts(self.geometry)))
        if self.geometry.is_empty:
            raise ValueError(f"region {self.name!r} has no polygon area")


def polygon_parts(geometry) -> np.ndarray:
    """The polygons of any (multi)polygon or collection, flattened; other geometry types dropped."""
    parts = np.atleast_1d(np.asarray(geometry, dtype=object))
    while np.isin(shapely.get_type_id(parts), (4, 5, 6, 7)).any():
        parts = shapely.get_parts(parts)
    return parts[(shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)]


def split_spec(spec: str | Sequence[str]) -> list[str]:
    """Tokens of a regions SPEC; city tokens keep their commas."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    return [m.group(1).strip() for part in parts for m in _TOKEN.finditer(part) if m.group(1).strip()]


def geodesic_disc(lat: float, lon: float, radius_km: float, vertices: int = 128) -> shapely.Polygon:
    """Polygon of the points within ``radius_km`` (great-circle) of a point."""
    if radius_km <= 0 or radius_km >= math.pi * EARTH_RADIUS_KM / 2:
        raise ValueError(f"a city radius must be in (0, {math.pi * EARTH_RADIUS_KM / 2:.0f}) km, got {radius_km}")
    plat, plon = destination_points(lat, lon, radius_km, np.linspace(0.0, 2 * np.pi, vertices, endpoint=False))
    return shapely.Polygon(np.column_stack([plon, plat]))


def equal_area(geometry):
    """Geometry mapped to (longitude in radians, sin latitude): Lambert's equal-area plane; areas in steradians."""
    return shapely.transform(geometry, lambda xy: np.column_stack([np.radians(xy[:, 0]), np.sin(np.radians(xy[:, 1]))]))


def city_regions(frame: pd.DataFrame, weight_column: str | None = None) -> list[Region]:
    """One disc per row of a table with :data:`CITY_COLUMNS`."""
    missing = [c for c in CITY_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"a cities table needs the columns {CITY_COLUMNS}; missing {missing}")
    weights = _weights(frame, weight_column)
    return [
        Region(str(row.name), geodesic_disc(row.latitude, row.longitude, row.radius_km), w)
        for row, w in zip(frame.itertuples(index=False), weights)
    ]


def file_regions(path: Path, weight_column: str | None = None) -> list[Region]:
    """Regions from a cities CSV or a vector file (one region per feature)."""
    if path.suffix.lower() == ".csv":
        return city_regions(pd.read_csv(path), weight_column)
    frame = gpd.read_file(path)
    frame = frame.to_crs(4326) if frame.crs is not None else frame.set_crs(4326)
    name_col = next((c for c in ("name", "NAME", "region", "id") if c in frame), None)
    names = frame[name_col].astype(str).tolist() if name_col else [f"{path.stem}-{i}" for i in range(len(frame))]
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    weights = _weights(frame, weight_column)
    return [Region(n, shapely.make_valid(g), w) for n, g, w in zip(names, frame.geometry, weights)]


def _weights(frame: pd.DataFrame, column: str | None) -> list[float | None]:
    if column is None or column not in frame:
        return [None] * len(frame)
    values = pd.to_numeric(frame[column], errors="coerce")
    if values.isna().any() or (values < 0).any():
        raise ValueError(f"weight column {column!r} must hold non-negative numbers")
    return values.astype(float).tolist()


class BoundaryRegions:
    """Country and admin-1 regions from geohf's boundary table, loaded on first use."""

    def __init__(self, boundaries: str | None = None):
        self.source = boundaries
        self._frame: gpd.GeoDataFrame | None = None

    @property
    def frame(self) -> gpd.GeoDataFrame:
        if self._frame is None:
            from ..geo.boundaries import load_boundaries

            self._frame = load_boundaries(self.source)
        return self._frame

    def get(self, code: str) -> Region:
        column = "region_code" if _ADMIN1.match(code) else "country_code"
        rows = self.frame[self.frame[column] == code]
        if rows.empty:
            kind = "admin-1 region" if column == "region_code" else "country"
            raise ValueError(f"no {kind} {code!r} in the boundary table (source: {self.source or 'default'})")
        return Region(code, shapely.GeometryCollection(list(rows.geometry)))


def fishnet(region: Region, cell_deg: float = DEFAULT_CELL_DEG, sliver: float = SLIVER_FRACTION) -> list[Region]:
    """Cut a region into ``cell_deg`` longitude/latitude squares (aligned on multiples of ``cell_deg``).

    Pieces smaller than ``sliver`` of a full cell (equal-area measure) are merged into a touching
    piece, or the nearest one for small islands. Cells are named ``<region>-cellNNN``, numbered
    from the north-west. (:func:`geohf.geo.cells.fit_fishnet` fits a fishnet *partition* to
    training samples over all land; this cuts one region, with no samples needed.)
    """
    if not 0 < cell_deg <= 90:
        raise ValueError(f"fishnet cell size must be in (0, 90] degrees, got {cell_deg}")
    pieces, boxes = grid_pieces(polygon_parts(region.geometry), cell_deg, region.geometry.bounds)
    fraction = shapely.area(equal_area(pieces)) / shapely.area(equal_area(boxes))
    merged = merge_small_pieces(pieces, fraction, sliver, nearest_fallback=True)
    return [
        Region(f"{region.name}-cell{k:03d}", shapely.union_all(pieces[merged == k]), region.weight)
        for k in range(merged.max() + 1 if merged.size else 0)
    ]


def parse_regions(
    spec: str | Sequence[str], boundaries: str | None = None, weight_column: str | None = "population"
) -> list[Region]:
    """Regions for a SPEC (see the module docstring)."""
    lookup = BoundaryRegions(boundaries)
    regions = [r for token in split_spec(spec) for r in _parse_token(token, lookup, weight_column)]
    if not regions:
        raise ValueError(f"empty regions SPEC; give {SPEC_HELP}")
    names = [r.name for r in regions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"regions must have unique names; repeated: {repeated}")
    return regions


def _parse_token(token: str, lookup: BoundaryRegions, weight_column: str | None) -> Iterable[Region]:
    if m := _FISHNET.match(token):
        deg = float(m.group("deg")) if m.group("deg") else DEFAULT_CELL_DEG
        return [cell for area in _parse_token(m.group("area"), lookup, weight_column) for cell in fishnet(area, deg)]
    if token.startswith("city:"):
        m = _CITY.match(token)
        if not m:
            raise ValueError(f"bad city token {token!r}; expected city:NAME@LAT,LON,RADIUS(km|m)")
        radius_km = float(m.group("radius")) / (1000.0 if m.group("unit") == "m" else 1.0)
        return [Region(m.group("name"), geodesic_disc(float(m.group("lat")), float(m.group("lon")), radius_km))]
    if Path(token).suffix and Path(token).is_file():
        return file_regions(Path(token), weight_column)
    if _ADMIN1.match(token.upper()) or is_country_code(token.upper()):
        return [lookup.get(token.upper())]
    raise ValueError(f"cannot read region {token!r}: not a file, country or admin-1 code; give {SPEC_HELP}")
