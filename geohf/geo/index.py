"""A spatial index over polygons: which polygon holds a point, or which one is nearest."""

from __future__ import annotations

import numpy as np
import shapely

from .sphere import haversine_km

# search radii are in degrees; bound them per latitude band and check true km afterwards
_BAND_EDGES = np.array([0.0, 30.0, 50.0, 60.0, 70.0, 80.0, 90.01])


class PolygonIndex:
    """STRtree over the parts of (multi)polygons, answering in the original polygon rows."""

    def __init__(self, geometries):
        parts, self.part_row = shapely.get_parts(np.asarray(geometries, dtype=object), return_index=True)
        shapely.prepare(parts)
        self.parts = parts
        self.tree = shapely.STRtree(parts)
        self.size = len(geometries)

    def containing(self, points) -> np.ndarray:
        """Row of the polygon that contains or touches each point; -1 where none.

        A point on a shared border belongs to the lowest row, so every point gets at
        most one polygon.
        """
        index = np.full(len(points), -1, dtype=np.int64)
        pt, part = self.tree.query(points, predicate="intersects")
        if pt.size:
            row = self.part_row[part]
            order = np.lexsort((row, pt))
            pt, row = pt[order], row[order]
            first = np.r_[True, pt[1:] != pt[:-1]]
            index[pt[first]] = row[first]
        return index

    def nearest(self, points, lat, max_km: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row of the nearest polygon and the great-circle km to it (-1 / NaN: none within ``max_km``)."""
        index = np.full(len(points), -1, dtype=np.int64)
        dist = np.full(len(points), np.nan)
        if not len(points):
            return index, dist
        if max_km is None:
            groups = [(np.arange(len(points)), None)]
        else:
            bands = np.digitize(np.abs(lat), _BAND_EDGES) - 1
            groups = []
            for b in np.unique(bands):
                cos = max(np.cos(np.deg2rad(_BAND_EDGES[b + 1])), 0.02)
                groups.append((np.flatnonzero(bands == b), max_km / 111.0 / cos))
        for sel, max_deg in groups:
            m_idx, p_idx = self.tree.query_nearest(points[sel], max_distance=max_deg, all_matches=False)
            if not m_idx.size:
                continue
            line = shapely.shortest_line(points[sel[m_idx]], self.parts[p_idx])
            xy = shapely.get_coordinates(line).reshape(-1, 2, 2)
            km = haversine_km(xy[:, 0, 1], xy[:, 0, 0], xy[:, 1, 1], xy[:, 1, 0])
            ok = np.ones(km.shape, bool) if max_km is None else km <= max_km
            index[sel[m_idx[ok]]] = self.part_row[p_idx[ok]]
            dist[sel[m_idx[ok]]] = km[ok]
        return index, dist
