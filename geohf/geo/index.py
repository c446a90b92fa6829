"""A spatial index over polygons: which polygon holds a point, or which one is nearest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import shapely

from .sphere import haversine_km

# search radii are in degrees; bound them per latitude band and check true km afterwards
_BAND_EDGES = np.array([0.0, 30.0, 50.0, 60.0, 70.0, 80.0, 90.01])


# large queries switch to polygons cut into 1° tiles: building them costs seconds once, and
# point-in-polygon on pieces of a few hundred vertices is ~15x faster than on 16k-vertex regions
TILE_QUERY_POINTS = 20_000
TILE_MIN_VERTICES = 256
TILE_DEG = 1.0
NEAREST_STAGES_DEG = (1.0, 4.0, None)  # an open nearest search, bounded first (see PolygonIndex._query_nearest)
TILES_VERSION = 1
logger = logging.getLogger(__name__)


def tile_parts(parts: np.ndarray, rows: np.ndarray, tile_deg: float = TILE_DEG, min_vertices: int = TILE_MIN_VERTICES):
    """Cut polygons with more than ``min_vertices`` vertices along a ``tile_deg`` grid.

    Returns ``(pieces, rows)``: the same coverage as ``parts`` in smaller polygons, each
    with the row of the polygon it came from.
    """
    big = shapely.get_num_coordinates(parts) > min_vertices
    if not big.any():
        return parts, rows
    gx, gy = np.meshgrid(np.arange(-180.0, 180.0, tile_deg), np.arange(-90.0, 90.0, tile_deg))
    x0, y0 = gx.ravel(), gy.ravel()
    squares = shapely.box(x0, y0, x0 + tile_deg, y0 + tile_deg)
    big_parts, big_rows = parts[big], rows[big]
    part_i, square_i = shapely.STRtree(squares).query(big_parts, predicate="intersects")
    pieces = np.empty(len(part_i), dtype=object)
    order = np.argsort(square_i, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(square_i[order])) + 1, len(order)]
    for a, b in zip(bounds[:-1], bounds[1:]):  # clip_by_rect takes one rectangle per call
        sel = order[a:b]
        q = square_i[sel[0]]
        try:
            pieces[sel] = shapely.clip_by_rect(big_parts[part_i[sel]], x0[q], y0[q], x0[q] + tile_deg, y0[q] + tile_deg)
        except shapely.errors.GEOSException:  # GEOS's rectangle clip rejects some valid polygons: a full overlay
            pieces[sel] = shapely.intersection(big_parts[part_i[sel]], squares[q])
    pieces, which = shapely.get_parts(np.concatenate([parts[~big], pieces]), return_index=True)
    area = shapely.get_type_id(pieces) == 3  # an overlay can leave lines and points on the tile edges
    return pieces[area], np.concatenate([rows[~big], big_rows[part_i]])[which][area]


class PolygonIndex:
    """STRtree over the parts of (multi)polygons, answering in the original polygon rows.

    ``cache_key`` (a hash of the polygons, :func:`~geohf.geo.grid.geometry_key`): the tiled pieces
    are cached on disk under it, so nearest searches can use them from the first query.
    """

    def __init__(self, geometries, cache_key: str | None = None):
        parts, self.part_row = shapely.get_parts(np.asarray(geometries, dtype=object), return_index=True)
        shapely.prepare(parts)
        self.parts = parts
        self.tree = shapely.STRtree(parts)
        self.size = len(geometries)
        self.cache_key = cache_key
        self._tiles: tuple | None = None

    def _index_for(self, n_points: int) -> tuple:
        """(tree, pieces, rows): the tiled index for large queries, the plain one otherwise."""
        return self.tiled() if n_points >= TILE_QUERY_POINTS else (self.tree, self.parts, self.part_row)

    def tiled(self) -> tuple:
        """(tree, pieces, rows) over the parts cut into :data:`TILE_DEG` tiles: built once (about a second
        for admin-1), read from the cache when the index has a ``cache_key``."""
        if self._tiles is None:
            cached = _load_tiles(self.cache_key) if self.cache_key else None
            pieces, rows = cached or tile_parts(self.parts, self.part_row)
            if self.cache_key and cached is None:
                _save_tiles(self.cache_key, pieces, rows)
            shapely.prepare(pieces)
            self._tiles = (shapely.STRtree(pieces), pieces, rows)
        return self._tiles

    def containing(self, points) -> np.ndarray:
        """Row of the polygon that contains or touches each point; -1 where none.

        A point on a shared border belongs to the lowest row, so every point gets at
        most one polygon.
        """
        index = np.full(len(points), -1, dtype=np.int64)
        tree, _, part_row = self._index_for(len(points))
        pt, part = tree.query(points, predicate="intersects")
        if pt.size:
            row = part_row[part]
            order = np.lexsort((row, pt))
            pt, row = pt[order], row[order]
            first = np.r_[True, pt[1:] != pt[:-1]]
            index[pt[first]] = row[first]
        return index

    @staticmethod
    def _query_nearest(tree, points, max_deg: float | None) -> tuple[np.ndarray, np.ndarray]:
        """``tree.query_nearest`` (point index, part index); without a limit, searched within 1° and 4° first:
        the same answers, and a bounded search is several times faster than an open one."""
        if max_deg is not None:
            return tree.query_nearest(points, max_distance=max_deg, all_matches=False)
        found_pt, found_part = [], []
        todo = np.arange(len(points))
        for limit in NEAREST_STAGES_DEG:
            m_idx, p_idx = tree.query_nearest(points[todo], max_distance=limit, all_matches=False)
            found_pt.append(todo[m_idx])
            found_part.append(p_idx)
            todo = np.delete(todo, m_idx)
            if not todo.size:
                break
        return np.concatenate(found_pt), np.concatenate(found_part)

    def nearest(self, points, lat, max_km: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row of the nearest polygon and the great-circle km to it (-1 / NaN: none within ``max_km``)."""
        return self.nearest_points(points, lat, max_km)[:2]

    def nearest_points(self, points, lat, max_km: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`nearest` and the (N, 2) lon, lat of the nearest point on that polygon (NaN where none)."""
        index = np.full(len(points), -1, dtype=np.int64)
        dist = np.full(len(points), np.nan)
        edge = np.full((len(points), 2), np.nan)
        if not len(points):
            return index, dist, edge
        if max_km is None:
            groups = [(np.arange(len(points)), None)]
        else:
            bands = np.digitize(np.abs(lat), _BAND_EDGES) - 1
            groups = []
            for b in np.unique(bands):
                cos = max(np.cos(np.deg2rad(_BAND_EDGES[b + 1])), 0.02)
                groups.append((np.flatnonzero(bands == b), max_km / 111.0 / cos))
        # on small pieces a nearest search is ~4x faster: used when they are cached on disk (built once) or pay off
        tree, parts, part_row = self.tiled() if self.cache_key else self._index_for(len(points))
        for sel, max_deg in groups:
            m_idx, p_idx = self._query_nearest(tree, points[sel], max_deg)
            if not m_idx.size:
                continue
            line = shapely.shortest_line(points[sel[m_idx]], parts[p_idx])
            xy = shapely.get_coordinates(line).reshape(-1, 2, 2)
            km = haversine_km(xy[:, 0, 1], xy[:, 0, 0], xy[:, 1, 1], xy[:, 1, 0])
            ok = np.ones(km.shape, bool) if max_km is None else km <= max_km
            index[sel[m_idx[ok]]] = part_row[p_idx[ok]]
            dist[sel[m_idx[ok]]] = km[ok]
            edge[sel[m_idx[ok]]] = xy[ok, 1]
        return index, dist, edge


def _tiles_path(key: str) -> Path:
    from .boundaries import cache_dir

    return cache_dir() / "polygon-tiles" / f"{key}-v{TILES_VERSION}-{TILE_DEG:g}deg-{TILE_MIN_VERTICES}.npz"


def _load_tiles(key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached pieces and rows of the polygons hashed ``key``, or ``None`` (missing or unreadable)."""
    try:
        with np.load(_tiles_path(key)) as z:
            blob, ends, rows = z["wkb"].tobytes(), z["ends"], z["rows"]
        starts = np.r_[0, ends[:-1]]
        return shapely.from_wkb([blob[a:b] for a, b in zip(starts, ends)]), rows
    except (OSError, KeyError, ValueError, shapely.errors.GEOSException):
        return None


def _save_tiles(key: str, pieces: np.ndarray, rows: np.ndarray) -> None:
    """Cache the pieces as WKB (a failed write only logs: the next process builds them again)."""
    path = _tiles_path(key)
    wkb = shapely.to_wkb(pieces)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            wkb=np.frombuffer(b"".join(wkb), dtype=np.uint8),
            ends=np.cumsum([len(w) for w in wkb]),
            rows=np.asarray(rows, dtype=np.int64),
        )
        tmp.replace(path)
    except OSError as err:
        logger.warning("polygon tiles built but not cached: %s", err)
