"""Admin areas as answers: which country and region a point names, and points moved into an area.

A prediction is coherent when its coordinates lie in the country and region it names.
:class:`AdminAreas` holds the boundary table (one row per admin-1 region) and answers in its
rows: :meth:`AdminAreas.locate` names the row a point lies in (a point at sea moves to the
nearest land first), :meth:`AdminAreas.place` moves each point into the rows allowed for it
(the nearest point of those polygons, just inside), so naming and placing agree by construction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
import shapely

from .labelling import LABEL_COLUMNS, PointLabeller

_INSIDE_DEG = 0.05
"""A point moved onto an area's border is pulled this far (degrees, about 5 km) inside it."""


@dataclass(frozen=True)
class AreaTable:
    """The label columns of each boundary row (``country_code, country, region_code, region``)."""

    country_code: np.ndarray
    country: np.ndarray
    region_code: np.ndarray
    region: np.ndarray

    def __len__(self) -> int:
        return int(self.country_code.shape[0])

    def lookup(self, column: str, rows: np.ndarray) -> np.ndarray:
        """``column`` of each row in ``rows`` ('' where the row is -1: no area)."""
        values = getattr(self, column)
        out = np.full(np.shape(rows), "", dtype=object)
        rows = np.asarray(rows)
        known = rows >= 0
        out[known] = values[rows[known]]
        return out


class AdminAreas:
    """Country / admin-1 boundaries answering "where is this point" and "move it into that area"."""

    def __init__(self, labeller: PointLabeller):
        self.labeller = labeller
        frame = labeller.boundaries
        self.table = AreaTable(*(frame[c].to_numpy(dtype=object).astype(str) for c in LABEL_COLUMNS))
        self.geometry = frame.geometry.to_numpy()
        self._by_country = _groups(self.table.country_code)
        self._by_region = _groups(self.table.region_code)
        # the labeller's lazily built indexes and grid are not safe to share between threads (a pipeline
        # called from several threads): one query at a time
        self._lock = threading.RLock()

    @classmethod
    def default(cls) -> AdminAreas:
        """The areas of geohf's default boundaries (the shipped admin-1 file, or ``$GEOHF_BOUNDARIES``), cached."""
        return _default_areas()

    def rows_of_country(self, code: str) -> np.ndarray:
        return self._by_country.get(code, _NONE)

    def rows_of_region(self, code: str) -> np.ndarray:
        return self._by_region.get(code, _NONE) if code else _NONE

    def containing(self, lat, lon) -> np.ndarray:
        """(N,) the row each point lies in, -1 at sea."""
        lat, lon = _points(lat, lon)
        with self._lock:
            return self.labeller.containing(lat, lon)

    def locate(self, lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lat, lon, row)``: points on land unchanged with the row they lie in; points at sea
        moved just inside the nearest land (NaN points stay NaN, row -1)."""
        return self.place(lat, lon, [_NONE] * np.size(lat))

    def place(self, lat, lon, allowed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lat, lon, row)``: each point moved into one of its ``allowed`` rows (the nearest point of
        their polygons, pulled just inside) unless it already lies in one; for an empty ``allowed``
        entry, a point at sea moves into the nearest land and a point on land stays."""
        with self._lock:
            return self._place(lat, lon, allowed)

    def _place(self, lat, lon, allowed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lat, lon = _points(lat, lon)
        lat, lon = lat.copy(), lon.copy()
        rows = self.containing(lat, lon)
        finite = np.isfinite(lat) & np.isfinite(lon)
        free = np.array([a.size == 0 for a in allowed], dtype=bool)
        # only the points to move need Python: at sea with no area asked for, or outside the asked ones
        sea = np.flatnonzero(finite & (rows < 0) & free)
        nearest, _, edge = self.labeller.index.nearest_points(shapely.points(lon[sea], lat[sea]), lat[sea], None)
        near_land = nearest >= 0
        sea, nearest, edge = sea[near_land], nearest[near_land], edge[near_land]
        # all at once (the pulled-in point may lie in the neighbouring region of a coast); the rest one by one
        found, inside = self._pulled_in(lat[sea], lon[sea], edge)
        moved = found >= 0
        lat[sea[moved]], lon[sea[moved]], rows[sea[moved]] = inside[moved, 1], inside[moved, 0], found[moved]
        for i, row, at in zip(sea[~moved], nearest[~moved], edge[~moved]):
            lat[i], lon[i], rows[i] = self._move_into(lat[i], lon[i], np.array([row]), at)
        for i in np.flatnonzero(finite & ~free):
            if rows[i] not in allowed[i]:
                lat[i], lon[i], rows[i] = self._move_into(lat[i], lon[i], allowed[i])
        return lat, lon, rows

    def _pulled_in(self, lat: np.ndarray, lon: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, inside)``: each point's nearest border point ``edge`` (lon, lat) pulled further along the way
        from the point (``inside``: lon, lat) by :data:`_INSIDE_DEG`, or a fifth or a 25th of it for a small
        island, and the row it then lies in (-1 where none does: :meth:`_move_into` looks closer there)."""
        step = edge - np.stack([lon, lat], axis=1)
        length = np.hypot(step[:, 0], step[:, 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = step / length[:, None]
        found = np.full(len(lat), -1, dtype=np.int64)
        inside = np.full_like(edge, np.nan)
        for pull in (_INSIDE_DEG, _INSIDE_DEG / 5, _INSIDE_DEG / 25):
            moved = edge + unit * pull
            todo = np.flatnonzero(
                (found < 0) & (length > 0) & np.isfinite(moved).all(axis=1) & (np.abs(moved[:, 1]) <= 90)
            )
            if not todo.size:
                break
            found[todo] = self.containing(moved[todo, 1], moved[todo, 0])
            inside[todo] = moved[todo]
        return found, inside

    def _move_into(
        self, lat: float, lon: float, rows: np.ndarray, edge: np.ndarray | None = None
    ) -> tuple[float, float, int]:
        """The point of the polygons ``rows`` nearest ``(lat, lon)``, pulled just inside; its row. ``edge``:
        that nearest point (lon, lat) when known (a single row)."""
        point = shapely.Point(lon, lat)
        j = 0 if len(rows) == 1 else int(np.argmin(shapely.distance(point, self.geometry[rows])))
        geom = self.geometry[rows[j]]
        if edge is None:
            edge = shapely.Point(shapely.shortest_line(point, geom).coords[-1])
        else:
            edge = shapely.Point(edge)
        disc = edge.buffer(_INSIDE_DEG)
        # the polygon cut to the disc's box first: the same intersection, on a few vertices instead of thousands
        near = shapely.intersection(shapely.clip_by_rect(geom, *disc.bounds), disc)
        # the pulled-in border point, else (a sliver thinner than the pull) a point surely inside the area
        for p in ([] if near.is_empty else [near.representative_point()]) + [geom.representative_point()]:
            row = self.containing(np.array([p.y]), np.array([p.x]))[0]
            if row in rows:
                return float(p.y), float(p.x), int(row)
        p = geom.representative_point()
        return float(p.y), float(p.x), int(rows[j])


_NONE = np.zeros(0, dtype=np.int64)


def _groups(codes: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(codes, kind="stable")
    keys, starts = np.unique(codes[order], return_index=True)
    return {k: part for k, part in zip(keys, np.split(order, starts[1:])) if k}


def _points(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()


_DEFAULT_LOCK = threading.Lock()


@cache
def _cached_default_areas() -> AdminAreas:
    return AdminAreas(PointLabeller())


def _default_areas() -> AdminAreas:
    with _DEFAULT_LOCK:  # built once, not by several threads at the same time
        return _cached_default_areas()
