"""Geocell partitions: the classes a geolocation classifier predicts.

A :class:`CellPartition` is a set of polygons fitted on training samples only, with
per-cell centroids (spherical mean of the training samples inside), sample counts and the
majority country / region of those samples. It assigns *any* point to exactly one cell
(containing polygon first, nearest polygon otherwise), saves to and loads from one
GeoParquet file, and exports the light part a model needs (:meth:`to_config`) so that
inference needs no polygons at all.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely

from ..files import atomic_path
from .index import PolygonIndex, tile_parts
from .labelling import LABEL_COLUMNS
from .sphere import haversine_km, latlon_to_xyz, xyz_to_latlon

_META_KEY = b"geohf.cells"
ASSIGN_POINTS = 1 << 16
"""Points :meth:`CellPartition.assign` turns into geometries at once."""


@dataclass
class CellPartition:
    """Cells as polygons plus what a model needs to know about each one."""

    kind: str
    cells: gpd.GeoDataFrame
    params: dict = field(default_factory=dict)

    COLUMNS = ["name", "latitude", "longitude", "count", *LABEL_COLUMNS, "geometry"]

    def __post_init__(self):
        missing = [c for c in self.COLUMNS if c not in self.cells]
        if missing:
            raise ValueError(f"cell table is missing columns {missing}")
        self.cells = self.cells[self.COLUMNS].reset_index(drop=True)
        self._index: PolygonIndex | None = None

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def names(self) -> list[str]:
        return self.cells["name"].tolist()

    @property
    def centroids(self) -> np.ndarray:
        """(n_cells, 2) latitude, longitude of the cell centroids."""
        return self.cells[["latitude", "longitude"]].to_numpy(dtype=np.float64)

    def assign(self, lat, lon, dtype: type = np.int64) -> np.ndarray:
        """Cell id for every point: the cell holding it, else the nearest cell (``dtype``: ``np.int32`` for half
        the memory)."""
        if self._index is None:
            self._index = PolygonIndex(self.cells.geometry.to_numpy())
        return _assign(self._index, lat, lon, dtype)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the partition to one GeoParquet file (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.cells.to_parquet(tmp)
            table = pq.read_table(tmp)
            meta = dict(table.schema.metadata or {})
            meta[_META_KEY] = json.dumps({"kind": self.kind, "params": self.params}).encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CellPartition:
        meta = pq.read_schema(path).metadata or {}
        if _META_KEY not in meta:
            raise ValueError(f"{path} is not a geohf cell partition (no {_META_KEY.decode()} metadata)")
        info = json.loads(meta[_META_KEY])
        return cls(kind=info["kind"], cells=gpd.read_parquet(path), params=info["params"])

    def to_config(self) -> dict:
        """The polygon-free description stored in a model config."""
        out = {"kind": self.kind, "params": self.params}
        for col in ["name", "latitude", "longitude", "count", *LABEL_COLUMNS]:
            values = self.cells[col].tolist()
            out[col] = [round(v, 6) for v in values] if col in ("latitude", "longitude") else values
        return out

    # ---------------------------------------------------------------- building
    @classmethod
    def from_geometry(
        cls,
        kind: str,
        geometry: np.ndarray,
        lat: np.ndarray,
        lon: np.ndarray,
        labels: pd.DataFrame | None,
        params: dict,
        index: PolygonIndex | None = None,
        rows: np.ndarray | None = None,
    ) -> CellPartition:
        """Cells from polygons and the training samples that fall in them.

        Samples are assigned exactly as :meth:`assign` will assign them later; centroids
        are their spherical means (or, when that mean falls outside a multi-piece cell,
        the cell's sample nearest to it), labels their majority country and region.
        Cells without samples are dropped (points there go to the nearest cell). ``index``: a
        :class:`PolygonIndex` over ``geometry`` already built (a cached one), else one is built.
        ``rows``: the samples, as increasing positions into ``lat``, ``lon`` and ``labels`` (default: all of them).
        """
        geometry = np.asarray(geometry, dtype=object)
        built = index is None
        if built:
            index = PolygonIndex(geometry)
        sample_cell = _assign(index, lat, lon, np.int32, rows)
        counts = np.bincount(sample_cell, minlength=len(geometry))
        keep = np.flatnonzero(counts > 0)
        # the samples by cell, each cell's in sample order, as positions into lat, lon and labels
        order = positions(np.argsort(sample_cell, kind="stable"), len(lat))
        del sample_cell
        if rows is not None:
            order = rows[order]
        ends = np.cumsum(counts[keep])
        bounds = (ends - counts[keep], ends)  # each kept cell's samples: order[bounds[0][k] : bounds[1][k]]
        # spherical means of every cell at once: unit vectors summed per cell in sample order, a slice of
        # samples at a time; np.add.at adds one row at a time, as a per-cell ``spherical_mean`` does (same bits)
        sums = np.zeros((len(keep), 3))
        for start in range(0, len(order), ASSIGN_POINTS):
            sel = order[start : start + ASSIGN_POINTS]
            cell = np.searchsorted(ends, np.arange(start, start + len(sel)), side="right")  # the kept cell of each
            np.add.at(sums, cell, latlon_to_xyz(lat[sel], lon[sel]))
        centre = np.stack(xyz_to_latlon(sums), axis=1)
        # the mean of a cell made of several pieces (islands) can fall outside it:
        # take the cell's own sample nearest to that mean instead
        outside = np.flatnonzero(~shapely.intersects(geometry[keep], shapely.points(centre[:, 1], centre[:, 0])))
        for k in outside:
            sel = order[bounds[0][k] : bounds[1][k]]
            best = sel[np.argmin(haversine_km(centre[k, 0], centre[k, 1], lat[sel], lon[sel]))]
            centre[k] = lat[best], lon[best]
        frame = pd.DataFrame({"latitude": centre[:, 0], "longitude": centre[:, 1], "count": counts[keep]})
        row = _majority_rows(labels, order, bounds) if labels is not None else np.full(len(keep), -1)
        del order
        for col in LABEL_COLUMNS:
            values = labels[col].iloc[np.maximum(row, 0)].to_numpy(dtype=object) if labels is not None else row
            frame[col] = ["" if r < 0 else str(v) for r, v in zip(row, values)]
        frame["name"] = _cell_names(frame)
        cells = gpd.GeoDataFrame(frame, geometry=list(geometry[keep]), crs=4326)
        partition = cls(kind=kind, cells=cells, params=params)
        if built and len(keep) == len(geometry):  # the same polygons in the same order: assign() uses this index
            partition._index = index
        return partition


def _assign(index: PolygonIndex, lat, lon, dtype: type = np.int64, rows: np.ndarray | None = None) -> np.ndarray:
    """Containing polygon, else nearest polygon, for every point (of ``rows``, positions, when given); -1 for a
    point without coordinates (NaN)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if rows is not None or lat.size > ASSIGN_POINTS:  # in slices: a geometry per point of a slice, not of all
        n = lat.size if rows is None else len(rows)
        out = np.empty(n, dtype=dtype)
        for start in range(0, n, ASSIGN_POINTS):
            sel = slice(start, start + ASSIGN_POINTS) if rows is None else rows[start : start + ASSIGN_POINTS]
            out[start : start + ASSIGN_POINTS] = _assign(index, lat[sel], lon[sel], dtype)
        return out
    located = np.isfinite(lat) & np.isfinite(lon)
    if not located.all():
        out = np.full(lat.shape, -1, dtype=dtype)
        if located.any():
            out[located] = _assign(index, lat[located], lon[located], dtype)
        return out
    points = shapely.points(lon, lat)
    cell = index.containing(points)
    outside = np.flatnonzero(cell < 0)
    if outside.size:
        cell[outside] = index.nearest(points[outside], lat[outside])[0]
    return cell.astype(dtype, copy=False)


def position_dtype(length: int) -> type:
    """The integer type of positions into an array of ``length`` rows: int32 when they fit (half of int64)."""
    return np.int32 if length < 2**31 else np.int64


def positions(index: np.ndarray, length: int) -> np.ndarray:
    """``index``, positions into an array of ``length`` rows, as :func:`position_dtype` (no copy when it is)."""
    return index.astype(position_dtype(length), copy=False)


def _modes(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Most frequent ``value`` (codes ordered like the values) per ``group`` (0..n-1); ties go to
    the smallest code; -1 for a group without values."""
    n = int(group.max()) + 1 if group.size else 0
    out = np.full(n, -1, dtype=np.int64)
    if not group.size:
        return out
    width = int(value.max()) + 1
    key = np.int32 if n * width < 2**31 else np.int64
    pair, count = np.unique(group.astype(key) * key(width) + value.astype(key), return_counts=True)
    g, v = pair // width, pair % width
    first = np.lexsort((v, -count, g))
    g, v = g[first], v[first]
    head = np.r_[True, g[1:] != g[:-1]]
    out[g[head]] = v[head]
    return out


def _majority_rows(labels: pd.DataFrame, order: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """For each cell (its samples ``order[bounds[0][k] : bounds[1][k]]``, in sample order), the first sample
    labelled with the majority country among the cell's samples and the majority region within that country
    (ties: the smallest code); -1 for a cell without a labelled sample. The cell takes that sample's labels.

    Whole cells of about :data:`ASSIGN_POINTS` samples at a time: the memory of a slice, not of every sample.
    """
    country, region = labels["country_code"], labels["region_code"]
    starts, ends = bounds
    row = np.full(len(starts), -1, dtype=np.int64)
    k0 = 0
    while k0 < len(starts):
        k1 = max(k0 + 1, int(np.searchsorted(ends, starts[k0] + ASSIGN_POINTS, side="right")))
        s = order[starts[k0] : ends[k1 - 1]]  # the slice's samples, cell by cell
        cell = np.repeat(np.arange(k1 - k0, dtype=np.int32), ends[k0:k1] - starts[k0:k1])
        labelled = (country.iloc[s] != "").to_numpy(dtype=bool)
        s, cell = s[labelled], cell[labelled]
        for values in (country, region):  # the majority country, then the majority region within it
            code = _sorted_codes(values, s)
            inside = code == _modes(cell, code)[cell]
            s, cell = s[inside], cell[inside]
        first_cell, first = np.unique(cell, return_index=True)  # each cell's samples are increasing: its first
        row[k0 + first_cell] = s[first]
        k0 = k1
    return row


def _sorted_codes(values: pd.Series, rows: np.ndarray) -> np.ndarray:
    """A code per row of ``rows`` that orders as the values sort: a categorical's own codes when its categories
    are sorted (the labeller's are: no copy of the values), else ``pd.factorize(..., sort=True)``'s."""
    if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.is_monotonic_increasing:
        return values.cat.codes.to_numpy()[rows]
    return pd.factorize(values.iloc[rows], sort=True)[0]


def _cell_names(frame: pd.DataFrame) -> list[str]:
    """Readable unique names: ``"<region>, <country>"``, numbered when repeated."""
    regions = frame["region"] if "region" in frame else [""] * len(frame)
    countries = frame["country"] if "country" in frame else [""] * len(frame)
    base = []
    for i, (region, country) in enumerate(zip(regions, countries)):
        parts = [p for p in (region, country) if p]
        base.append(", ".join(dict.fromkeys(parts)) or f"cell {i}")
    seen: dict[str, int] = {}
    total = Counter(base)
    names = []
    for b in base:
        if total[b] > 1:
            seen[b] = seen.get(b, 0) + 1
            names.append(f"{b} #{seen[b]}")
        else:
            names.append(b)
    return names


def touching_pairs(geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``: every pair of distinct geometries that intersect (both orders)."""
    a, b = shapely.STRtree(geometry).query(geometry, predicate="intersects")
    other = a != b
    return a[other], b[other]


def merge_small_pieces(
    geometry: np.ndarray,
    counts: np.ndarray,
    min_count: float,
    groups: np.ndarray | None = None,
    nearest_fallback: bool = False,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    centres: np.ndarray | None = None,
) -> np.ndarray:
    """Merge pieces holding fewer than ``min_count`` samples (or any size measure) into a neighbour.

    Greedy from the smallest piece up: each small piece joins the touching piece (of the
    same group when ``groups`` is given, e.g. the same country) with the fewest samples,
    which keeps cells contiguous and balanced. With ``nearest_fallback`` a piece with no
    touching candidate (an island) joins the nearest piece of its group instead; otherwise
    it stays as it is. Returns, for each input piece, the index of its merged cell (0..k-1).

    ``pairs`` (:func:`touching_pairs` of ``geometry``) and ``centres`` (x, y of
    ``shapely.point_on_surface``) can be passed when already known (they depend on the
    geometry only, not on the counts).
    """
    n = len(geometry)
    geometry = np.asarray(geometry, dtype=object)
    counts = np.asarray(counts, dtype=np.float64).copy()
    alive = np.ones(n, bool)
    stuck = np.zeros(n, bool)
    a, b = touching_pairs(geometry) if pairs is None else pairs
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in zip(a.tolist(), b.tolist()):
        if i != j:
            neighbours[i].add(j)
    if nearest_fallback and centres is None:
        centres = shapely.get_coordinates(shapely.point_on_surface(geometry))
    # every alive, small, not stuck piece has an up-to-date (count, index) entry: the smallest valid
    # entry is the smallest such piece (ties: the lowest index), as a scan of all pieces would find
    heap = [(counts[i], i) for i in np.flatnonzero(counts < min_count).tolist()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap:
        c, i = heapq.heappop(heap)
        if not alive[i] or stuck[i] or c != counts[i]:
            continue  # merged, stuck, or an entry from before its count grew
        group = groups[i] if groups is not None else None
        cand = [j for j in neighbours[i] if alive[j] and (group is None or groups[j] == group)]
        if not cand and nearest_fallback:
            others = alive.copy()
            others[i] = False
            if group is not None:
                others &= groups == group
            others = np.flatnonzero(others)
            if others.size:
                d = haversine_km(centres[i, 1], centres[i, 0], centres[others, 1], centres[others, 0])
                cand = [int(others[int(np.argmin(d))])]
        if not cand:
            stuck[i] = True
            continue
        j = min(cand, key=lambda k: (counts[k], k))
        counts[j] += counts[i]
        alive[i] = False
        merges.append((i, j))
        neighbours[j] |= neighbours[i]
        neighbours[j] -= {i, j}
        for k in neighbours[i]:
            neighbours[k].discard(i)
            if k != j:
                neighbours[k].add(j)
        stuck[j] = False
        if counts[j] < min_count:
            heapq.heappush(heap, (counts[j], j))
    owner = np.arange(n)
    for i, j in reversed(merges):  # j's own later merges are resolved first
        owner[i] = owner[j]
    _, merged = np.unique(owner, return_inverse=True)
    return merged


def _collect(geometry: np.ndarray, membership: np.ndarray, dissolve: bool) -> np.ndarray:
    """One geometry per merged cell: dissolved (cheap boxes) or a multipolygon of the parts."""
    if not dissolve:
        parts, which = shapely.get_parts(geometry, return_index=True)
        cell = membership[which]
        order = np.argsort(cell, kind="stable")  # parts in input order within each cell
        return shapely.multipolygons(parts[order], indices=cell[order])
    out = []
    for m in range(membership.max() + 1):
        out.append(shapely.union_all(geometry[membership == m]))
    return np.array(out, dtype=object)


# ---------------------------------------------------------------- caches of the point-free work
# Fishnet cells and the admin-1 adjacency depend on the boundaries (and the fishnet
# parameters) only, not on the training points: they are computed once per boundary
# content, kept in memory, and the fishnet cells also on disk (``cache_dir()/cells``).
CACHE_VERSION = 1
_MEMORY: OrderedDict = OrderedDict()
_MEMORY_SIZE = 8


def _regions(boundaries) -> gpd.GeoDataFrame:
    from .boundaries import load_boundaries

    return boundaries if isinstance(boundaries, gpd.GeoDataFrame) else load_boundaries(boundaries)


def boundary_key(regions: gpd.GeoDataFrame) -> str:
    """Content hash of a boundary table (geometry and country codes) and of the GEOS version."""
    h = hashlib.sha256(f"{shapely.geos_version_string}|{CACHE_VERSION}".encode())
    h.update(b"".join(shapely.to_wkb(regions.geometry.to_numpy())))
    h.update("\0".join(regions["country_code"].astype(str)).encode() if "country_code" in regions else b"")
    return h.hexdigest()[:24]


def _memo(key: tuple, make):
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    value = make()
    _MEMORY[key] = value
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.popitem(last=False)
    return value


def clear_cache(disk: bool = False) -> None:
    """Forget the cached fishnet cells and region graphs (``disk``: the files too)."""
    _MEMORY.clear()
    if disk:
        for f in [*_disk_dir().glob("*.parquet"), *_disk_dir().glob("*.npz")]:
            f.unlink(missing_ok=True)


def _disk_dir() -> Path:
    from .boundaries import cache_dir

    return cache_dir() / "cells"


def _drop_degenerate_holes(geometry: np.ndarray, max_area: float = 1e-12) -> np.ndarray:
    """Remove zero-area holes (slivers of a union, area < ``max_area`` deg²) from polygons.

    They cover no point, but GEOS's rectangle clipping (the tiled index) fails on some of them.
    """
    parts, which = shapely.get_parts(geometry, return_index=True)
    holes = shapely.get_num_interior_rings(parts)
    fix = np.flatnonzero(holes > 0)
    changed = np.zeros(len(geometry), bool)
    for p in fix:
        rings = [parts[p].interiors[k] for k in range(holes[p])]
        keep = [r for r in rings if shapely.area(shapely.Polygon(r)) >= max_area]
        if len(keep) < len(rings):
            parts[p] = shapely.Polygon(parts[p].exterior, keep)
            changed[which[p]] = True
    out = np.array(geometry, dtype=object)
    for g in np.flatnonzero(changed):
        mine = parts[which == g]
        kind = shapely.get_type_id(geometry[g])
        if kind == 3:
            out[g] = mine[0]
        elif kind == 6:
            out[g] = shapely.multipolygons(mine)
        else:
            out[g] = shapely.geometrycollections(mine)
    return out


def _fishnet_geometry(regions: gpd.GeoDataFrame, cell_deg: float, min_area_fraction: float, simplify_deg: float):
    land = _land_parts(regions, simplify_deg)
    pieces, squares = grid_pieces(land, cell_deg)
    fraction = shapely.area(pieces) / shapely.area(squares)
    merged = merge_small_pieces(pieces, fraction, min_area_fraction)
    return _drop_degenerate_holes(_collect(pieces, merged, dissolve=True))


def _fishnet_cells(regions, cell_deg: float, min_area_fraction: float, simplify_deg: float):
    """(cells, index): the fishnet polygons for these boundaries and a :class:`PolygonIndex` over them."""
    key = ("fishnet", boundary_key(regions), float(cell_deg), float(min_area_fraction), float(simplify_deg))

    def make():
        path = _disk_dir() / ("-".join(str(k) for k in key) + ".parquet")
        try:
            geometry = shapely.from_wkb(pq.read_table(path).column("wkb").to_numpy(zero_copy_only=False))
        except (OSError, KeyError, ValueError, shapely.errors.GEOSException):
            geometry = _fishnet_geometry(regions, cell_deg, min_area_fraction, simplify_deg)
            try:
                import pyarrow as pa

                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    pq.write_table(pa.table({"wkb": shapely.to_wkb(geometry)}), tmp)
            except OSError:
                pass  # a read-only cache only costs time
        return geometry, PolygonIndex(geometry)

    return _memo(key, make)


def _region_tiles(regions: gpd.GeoDataFrame, bkey: str) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, row): the boundary polygons cut into 1° tiles (:func:`~geohf.geo.index.tile_parts`)."""
    key = ("tiles", bkey)

    def make():
        path = _disk_dir() / ("-".join(key) + ".parquet")
        try:
            table = pq.read_table(path)
            return shapely.from_wkb(table.column("wkb").to_numpy(zero_copy_only=False)), table.column("row").to_numpy()
        except (OSError, KeyError, ValueError, shapely.errors.GEOSException):
            pass
        parts, rows = shapely.get_parts(regions.geometry.to_numpy(), return_index=True)
        tiles, rows = tile_parts(parts, rows)
        try:
            import pyarrow as pa

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                pq.write_table(pa.table({"wkb": shapely.to_wkb(tiles), "row": rows}), tmp)
        except OSError:
            pass
        return tiles, rows

    return _memo(key, make)


def _region_graph(regions: gpd.GeoDataFrame, bkey: str):
    """(index, touching pairs, point-on-surface centres) of the boundary polygons (content hash
    ``bkey``); the index is built on their 1° tiles (as a large query would build it)."""
    key = ("regions", bkey)

    def make():
        geoms = regions.geometry.to_numpy()
        path = _disk_dir() / ("-".join(key) + ".npz")
        try:
            with np.load(path) as f:
                pairs, centres = (f["a"], f["b"]), f["centres"]
            if len(centres) != len(geoms):
                raise ValueError("stale cache")
        except (OSError, KeyError, ValueError):
            pairs = touching_pairs(geoms)
            centres = shapely.get_coordinates(shapely.point_on_surface(geoms))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, a=pairs[0], b=pairs[1], centres=centres)
            except OSError:
                pass
        tiles, rows = _region_tiles(regions, bkey)
        by_row = np.empty(len(geoms), dtype=object)
        order = np.argsort(rows, kind="stable")
        shapely.multipolygons(tiles[order], indices=rows[order], out=by_row)
        return PolygonIndex(by_row), pairs, centres

    return _memo(key, make)


def fit_quadtree(
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    max_samples: int = 100,
    min_samples: int = 10,
    max_depth: int = 12,
    rows: np.ndarray | None = None,
) -> CellPartition:
    """Quadtree cells on sample density (OSV-5M): split a box while it holds more than
    ``max_samples`` samples, then merge leaves with fewer than ``min_samples`` into a
    touching leaf. Boxes live in longitude/latitude; empty leaves are dropped (points
    there go to the nearest cell). ``rows``: the samples to fit on, increasing positions into
    ``lat``, ``lon`` and ``labels`` (default: all; no copy of their values is made).
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    rows = None if rows is None else positions(np.asarray(rows), lat.size)
    if (lat.size if rows is None else rows.size) == 0:
        raise ValueError("fit_quadtree needs training samples")
    leaves: list[tuple[float, float, float, float]] = []
    root = positions(np.arange(lat.size), lat.size) if rows is None else rows
    stack = [(-180.0, -90.0, 180.0, 90.0, root, 0)]
    while stack:
        x0, y0, x1, y1, idx, depth = stack.pop()
        if idx.size <= max_samples or depth >= max_depth:
            if idx.size:
                leaves.append((x0, y0, x1, y1))
            continue
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        east, north = lon[idx] >= xm, lat[idx] >= ym
        for (bx0, by0, bx1, by1), sel in (
            ((x0, y0, xm, ym), ~east & ~north),
            ((xm, y0, x1, ym), east & ~north),
            ((x0, ym, xm, y1), ~east & north),
            ((xm, ym, x1, y1), east & north),
        ):
            stack.append((bx0, by0, bx1, by1, idx[sel], depth + 1))
    leaves.sort(key=lambda b: (b[1], b[0]))
    boxes = shapely.box(*np.asarray(leaves).T)
    counts = np.bincount(_assign(PolygonIndex(boxes), lat, lon, np.int32, rows), minlength=len(boxes))
    merged = merge_small_pieces(boxes, counts, min_samples)
    params = {"max_samples": max_samples, "min_samples": min_samples, "max_depth": max_depth}
    return CellPartition.from_geometry("quadtree", _collect(boxes, merged, dissolve=True), lat, lon, labels, params,
                                       rows=rows)  # fmt: skip


def _land_parts(boundaries: gpd.GeoDataFrame, simplify_deg: float) -> np.ndarray:
    parts = shapely.get_parts(boundaries.geometry.to_numpy())
    if simplify_deg > 0:
        parts = shapely.simplify(parts, simplify_deg, preserve_topology=True)
    parts = parts[~shapely.is_empty(parts)]
    return shapely.make_valid(parts)


def grid_pieces(parts: np.ndarray, cell_deg: float, bounds=None) -> tuple[np.ndarray, np.ndarray]:
    """Squares of a ``cell_deg`` grid (aligned on multiples of ``cell_deg``) clipped to polygon ``parts``.

    Returns ``(pieces, squares)``: for every square that meets the parts, the union of the
    parts inside it, and the square itself; squares are ordered from the north-west.
    """
    x0, y0, x1, y1 = bounds if bounds is not None else shapely.total_bounds(parts)
    cols = np.arange(math.floor(x0 / cell_deg), math.ceil(x1 / cell_deg))
    rows = np.arange(math.ceil(y1 / cell_deg) - 1, math.floor(y0 / cell_deg) - 1, -1)
    r, c = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    squares = shapely.box(
        c * cell_deg, np.maximum(r * cell_deg, -90.0), (c + 1) * cell_deg, np.minimum((r + 1) * cell_deg, 90.0)
    )
    square_of, part_of = shapely.STRtree(parts).query(squares, predicate="intersects")
    order = np.argsort(square_of, kind="stable")
    square_of, part_of = square_of[order], part_of[order]
    clipped = shapely.intersection(squares[square_of], parts[part_of])
    used, start = np.unique(square_of, return_index=True)
    pieces = np.array([shapely.union_all(g) for g in np.split(clipped, start[1:])], dtype=object)
    keep = shapely.area(pieces) > 0
    return pieces[keep], squares[used][keep]


def fit_fishnet(
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    boundaries: gpd.GeoDataFrame | None = None,
    cell_deg: float = 2.0,
    min_area_fraction: float = 0.1,
    simplify_deg: float = 0.02,
) -> CellPartition:
    """Fishnet cells: a ``cell_deg`` grid clipped to land; pieces smaller than
    ``min_area_fraction`` of a full square are merged into a touching neighbour. Cells
    without training samples are dropped.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    geometry, index = _fishnet_cells(_regions(boundaries), cell_deg, min_area_fraction, simplify_deg)
    params = {"cell_deg": cell_deg, "min_area_fraction": min_area_fraction, "simplify_deg": simplify_deg}
    return CellPartition.from_geometry("fishnet", geometry, lat, lon, labels, params, index=index)


WORLD = (-180.0, -90.0, 180.0, 90.0)


def _bisect(geom, lat: np.ndarray, lon: np.ndarray, idx: np.ndarray, max_samples: int, rect=WORLD) -> list:
    """Split a cell at the median of its samples along its wider axis until each part is small enough
    (the cut runs halfway between the samples on either side of the median).

    Returns ``(piece, rect)`` pairs: ``piece`` is ``geom`` cut by the half-planes of the splits,
    whose intersection is the rectangle ``rect`` (x0, y0, x1, y1).
    """
    if idx.size <= max_samples:
        return [(geom, rect)]
    la, lo = lat[idx], lon[idx]
    wide_lon = (lo.max() - lo.min()) * np.cos(np.deg2rad(np.median(la))) >= la.max() - la.min()
    values = lo if wide_lon else la
    m = float(np.median(values))
    low = values < m
    if not low.any():  # the median sample is the smallest (repeated coordinates)
        low = values <= m
    high = ~low
    if not high.any():  # all samples on one line: cannot split further
        return [(geom, rect)]
    # cut halfway between the two sides, so that no sample lies on the cut (and could be assigned
    # to the other side later)
    m = (float(values[low].max()) + float(values[high].min())) / 2
    x0, y0, x1, y1 = rect
    if wide_lon:
        half_low, half_high = shapely.box(-180, -90, m, 90), shapely.box(m, -90, 180, 90)
        rect_low, rect_high = (x0, y0, min(x1, m), y1), (max(x0, m), y0, x1, y1)
    else:
        half_low, half_high = shapely.box(-180, -90, 180, m), shapely.box(-180, m, 180, 90)
        rect_low, rect_high = (x0, y0, x1, min(y1, m)), (x0, max(y0, m), x1, y1)
    return _bisect(shapely.intersection(geom, half_low), lat, lon, idx[low], max_samples, rect_low) + _bisect(
        shapely.intersection(geom, half_high), lat, lon, idx[high], max_samples, rect_high
    )


def _piece_tiles(
    tiles: np.ndarray, tile_cell: np.ndarray, piece_cell: np.ndarray, piece_rect: list, n_cells: int
) -> np.ndarray:
    """Per piece, a multipolygon of the cell's tiles clipped to the piece's rectangle: the same
    area as the piece in small polygons, for a fast :class:`PolygonIndex` (no re-tiling)."""
    order = np.argsort(tile_cell, kind="stable")
    bounds = np.searchsorted(tile_cell[order], np.arange(n_cells + 1))
    parts, owner = [], []
    for k, (c, rect) in enumerate(zip(piece_cell, piece_rect)):
        mine = tiles[order[bounds[c] : bounds[c + 1]]]
        if rect != WORLD:
            mine = shapely.get_parts(shapely.clip_by_rect(mine, *rect))
            mine = mine[~shapely.is_empty(mine) & (shapely.get_type_id(mine) == 3)]
        parts.append(mine)
        owner.append(np.full(len(mine), k))
    out = np.empty(len(piece_cell), dtype=object)
    if parts:
        shapely.multipolygons(np.concatenate(parts), indices=np.concatenate(owner), out=out)
    return out


def _merged_regions(lat: np.ndarray, lon: np.ndarray, boundaries, min_samples: int):
    """Admin-1 regions merged within their country up to ``min_samples`` samples (the semantic kinds' start):
    ``(regions, region geometries, boundary key, region -> cell, cell geometries, samples ordered by cell,
    each cell's start in that order)``."""
    regions = _regions(boundaries)
    geoms = regions.geometry.to_numpy()
    bkey = boundary_key(regions)
    index, pairs, centres = _region_graph(regions, bkey)
    row = _assign(index, lat, lon)
    merged = merge_small_pieces(
        geoms,
        np.bincount(row, minlength=len(geoms)),
        min_samples,
        groups=regions["country_code"].to_numpy(),
        nearest_fallback=True,
        pairs=pairs,
        centres=centres,
    )
    cells = _collect(geoms, merged, dissolve=False)
    sample_cell = merged[row]
    order = np.argsort(sample_cell, kind="stable")
    return regions, geoms, bkey, merged, cells, order, np.searchsorted(sample_cell[order], np.arange(len(cells) + 1))


def fit_semantic(
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    boundaries: gpd.GeoDataFrame | None = None,
    min_samples: int = 50,
    max_samples: int = 1000,
) -> CellPartition:
    """Semantic cells (PIGEON-style) from admin-1 regions.

    Regions with fewer than ``min_samples`` training samples merge into a touching
    region of the same country (an island into the nearest region of its country);
    cells with more than ``max_samples`` are split at the median of their samples along
    their wider axis, recursively (a simpler stand-in for PIGEON's clustering + Voronoi
    that keeps cells contiguous).
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    regions, geoms, bkey, merged, cells, order, bounds = _merged_regions(lat, lon, boundaries, min_samples)
    pieces, piece_cell, piece_rect = [], [], []
    for c, geom in enumerate(cells):
        for piece, rect in _bisect(geom, lat, lon, order[bounds[c] : bounds[c + 1]], max_samples):
            if not shapely.is_empty(piece):
                pieces.append(piece)
                piece_cell.append(c)
                piece_rect.append(rect)
    tiles, tile_row = _region_tiles(regions, bkey)
    index = PolygonIndex(_piece_tiles(tiles, merged[tile_row], np.array(piece_cell), piece_rect, len(cells)))
    params = {"min_samples": min_samples, "max_samples": max_samples}
    return CellPartition.from_geometry(
        "semantic", np.array(pieces, dtype=object), lat, lon, labels, params, index=index
    )


# PIGEON's OPTICS schedule: (min_samples as a fraction of the cell minimum, xi). Its GeoGuessr
# geocells (30 to 60 samples) use (8, 0.05), (10, 0.025), (15, 0.015): these fractions of 30.
OPTICS_ROUNDS = ((0.27, 0.05), (0.34, 0.025), (0.5, 0.015))


def _cell_shape(geoms: np.ndarray, members: np.ndarray):
    """One valid geometry for a merged cell (its regions dissolved) that overlays can cut."""
    shape = geoms[members[0]] if len(members) == 1 else shapely.union_all(geoms[members])
    return shape if shapely.is_valid(shape) else shapely.make_valid(shape)


def fit_semantic_optics(
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    boundaries: gpd.GeoDataFrame | None = None,
    min_samples: int = 50,
    max_samples: int = 1000,
    max_cluster_points: int = 1000,
) -> CellPartition:
    """Semantic cells as PIGEON (Haas et al., CVPR 2024) builds them, from admin-1 regions.

    Regions with fewer than ``min_samples`` training samples merge into a touching region of
    the same country (an island into the nearest region of its country), as in
    :func:`fit_semantic`. Cells with more than ``max_samples`` are split by OPTICS clustering
    of their samples' coordinates and a Voronoi tessellation of the clusters clipped to the
    cell (:func:`~geohf.geo.clusters.split_by_clusters`), in PIGEON's three rounds of OPTICS
    parameters (:data:`OPTICS_ROUNDS`), each round until no cell it can split is left. A cell
    OPTICS finds no structure in (uniform samples) is then split at the median of its samples
    (:func:`fit_semantic`'s bisection), so no cell ends above ``max_samples`` unless all its
    samples share one coordinate. OPTICS runs on at most ``max_cluster_points`` samples of a
    cell (a fixed random subset): it is quadratic in its points. Deterministic.
    """
    from .clusters import split_by_clusters

    if not 1 <= min_samples <= max_samples or max_cluster_points < min_samples:
        raise ValueError(
            f"semantic_optics needs 1 <= min_samples <= max_samples and max_cluster_points >= min_samples; "
            f"got min_samples={min_samples}, max_samples={max_samples}, max_cluster_points={max_cluster_points}"
        )
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    regions, geoms, bkey, merged, cells, order, bounds = _merged_regions(lat, lon, boundaries, min_samples)
    xy = np.stack([lon, lat], axis=1)
    whole, pieces, large = [], [], []  # cells kept as they are, pieces of split cells, cells to split
    for c in range(len(cells)):
        idx = order[bounds[c] : bounds[c + 1]]
        if idx.size > max_samples:
            large.append((_cell_shape(geoms, np.flatnonzero(merged == c)), idx))
        elif idx.size:
            whole.append(c)
    for fraction, xi in OPTICS_ROUNDS:
        optics_min = max(2, round(fraction * min_samples))
        stuck = []
        while large:
            todo, large = large, []
            for geom, idx in todo:
                split = split_by_clusters(
                    geom, xy[idx], min_samples, max_samples, optics_min, xi, max_points=max_cluster_points
                )
                if split is None:
                    stuck.append((geom, idx))
                    continue
                for k, piece in enumerate(split.pieces):
                    mine = idx[split.member == k]
                    if mine.size > max_samples:
                        large.append((piece, mine))
                    elif mine.size:
                        pieces.append(piece)
        large = stuck
    for geom, idx in large:  # no cluster structure: median bisection
        pieces.extend(p for p, _ in _bisect(geom, lat, lon, idx, max_samples) if not shapely.is_empty(p))
    # the index: whole cells from the cached admin-1 tiles, split pieces tiled afresh (few)
    tiles, tile_row = _region_tiles(regions, bkey)
    n_whole = len(whole)
    whole_tiles = _piece_tiles(tiles, merged[tile_row], np.array(whole, dtype=np.int64), [WORLD] * n_whole, len(cells))
    pieces = _drop_degenerate_holes(np.array(pieces, dtype=object))  # overlay slivers break clip_by_rect
    parts, owner = shapely.get_parts(pieces, return_index=True)
    parts, owner = tile_parts(parts, owner)
    keep = np.flatnonzero(shapely.get_type_id(parts) == 3)
    keep = keep[np.argsort(owner[keep], kind="stable")]
    piece_tiles = np.empty(len(pieces), dtype=object)
    shapely.multipolygons(parts[keep], indices=owner[keep], out=piece_tiles)
    geometry = np.array([*cells[whole], *pieces], dtype=object)
    index = PolygonIndex(np.concatenate([whole_tiles, piece_tiles]))
    params = {"min_samples": min_samples, "max_samples": max_samples, "max_cluster_points": max_cluster_points}
    return CellPartition.from_geometry("semantic_optics", geometry, lat, lon, labels, params, index=index)


CELL_FITTERS = {
    "quadtree": fit_quadtree,
    "fishnet": fit_fishnet,
    "semantic": fit_semantic,
    "semantic_optics": fit_semantic_optics,
}
NEEDS_BOUNDARIES = {"fishnet", "semantic", "semantic_optics"}
FITS_ROWS = {"quadtree"}
"""Kinds fitted on positions into the samples (no copy of the training rows' coordinates and labels)."""


def fit_cells(
    kind: str,
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    boundaries: gpd.GeoDataFrame | None = None,
    rows: np.ndarray | None = None,
    **params,
) -> CellPartition:
    """Fit a partition of the given ``kind`` (one of :data:`CELL_FITTERS`) on training samples: ``rows``
    (increasing positions into ``lat``, ``lon`` and ``labels``), default all of them."""
    if kind not in CELL_FITTERS:
        raise ValueError(f"unknown cell partition kind {kind!r}; choose one of {sorted(CELL_FITTERS)}")
    if (np.asarray(lat).size if rows is None else len(rows)) == 0:
        raise ValueError("cannot fit geocells without training samples")
    if kind in NEEDS_BOUNDARIES:
        params["boundaries"] = boundaries
    if kind in FITS_ROWS:
        return CELL_FITTERS[kind](lat, lon, labels, rows=rows, **params)
    if rows is not None:  # the other kinds take the samples' own copies
        lat, lon = np.asarray(lat, dtype=np.float64)[rows], np.asarray(lon, dtype=np.float64)[rows]
        labels = None if labels is None else labels.iloc[rows].reset_index(drop=True)
    return CELL_FITTERS[kind](lat, lon, labels, **params)
