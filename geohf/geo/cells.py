"""Geocell partitions: the classes a geolocation classifier predicts.

A :class:`CellPartition` is a set of polygons fitted on training samples only, with
per-cell centroids (spherical mean of the training samples inside), sample counts and the
majority country / region of those samples. It assigns *any* point to exactly one cell
(containing polygon first, nearest polygon otherwise), saves to and loads from one
GeoParquet file, and exports the light part a model needs (:meth:`to_config`) so that
inference needs no polygons at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely

from .index import PolygonIndex
from .labelling import LABEL_COLUMNS
from .sphere import spherical_mean

_META_KEY = b"geohf.cells"


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

    def assign(self, lat, lon) -> np.ndarray:
        """Cell id for every point: the cell holding it, else the nearest cell."""
        if self._index is None:
            self._index = PolygonIndex(self.cells.geometry.to_numpy())
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        points = shapely.points(lon, lat)
        cell = self._index.containing(points)
        outside = np.flatnonzero(cell < 0)
        if outside.size:
            cell[outside] = self._index.nearest(points[outside], lat[outside])[0]
        return cell

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the partition to one GeoParquet file (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        self.cells.to_parquet(tmp)
        table = pq.read_table(tmp)
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps({"kind": self.kind, "params": self.params}).encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, path)
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
    def from_assignment(
        cls,
        kind: str,
        geometry: np.ndarray,
        sample_cell: np.ndarray,
        lat: np.ndarray,
        lon: np.ndarray,
        labels: pd.DataFrame | None,
        params: dict,
    ) -> CellPartition:
        """Cells from polygons and the training samples' cell ids.

        Centroids are spherical means of the samples in each cell; labels are their
        majority country and region. Cells without samples are dropped.
        """
        n = len(geometry)
        counts = np.bincount(sample_cell, minlength=n)
        keep = np.flatnonzero(counts > 0)
        rows = []
        for c in keep:
            sel = sample_cell == c
            clat, clon = spherical_mean(lat[sel], lon[sel])
            row = {"latitude": float(clat), "longitude": float(clon), "count": int(counts[c])}
            row.update(_majority_labels(labels[sel] if labels is not None else None))
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame["name"] = _cell_names(frame)
        cells = gpd.GeoDataFrame(frame, geometry=list(geometry[keep]), crs=4326)
        return cls(kind=kind, cells=cells, params=params)


def _mode(values: pd.Series) -> str:
    """Most frequent value; ties go to the smallest value (deterministic)."""
    counts = values.value_counts()
    return min(counts.index[counts == counts.max()])


def _majority_labels(labels: pd.DataFrame | None) -> dict[str, str]:
    """Majority country among the samples, then the majority region within that country."""
    out = dict.fromkeys(LABEL_COLUMNS, "")
    if labels is None:
        return out
    labels = labels[labels["country_code"] != ""]
    if labels.empty:
        return out
    country = _mode(labels["country_code"])
    inside = labels[labels["country_code"] == country]
    region = _mode(inside["region_code"])
    first = inside[inside["region_code"] == region].iloc[0]
    return {c: str(first[c]) for c in LABEL_COLUMNS}


def _cell_names(frame: pd.DataFrame) -> list[str]:
    """Readable unique names: ``"<region>, <country>"``, numbered when repeated."""
    base = []
    for i, row in frame.iterrows():
        parts = [p for p in (row.get("region", ""), row.get("country", "")) if p]
        base.append(", ".join(dict.fromkeys(parts)) or f"cell {i}")
    seen: dict[str, int] = {}
    total = pd.Series(base).value_counts()
    names = []
    for b in base:
        if total[b] > 1:
            seen[b] = seen.get(b, 0) + 1
            names.append(f"{b} #{seen[b]}")
        else:
            names.append(b)
    return names


def merge_small_pieces(
    geometry: np.ndarray, counts: np.ndarray, min_count: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Merge pieces holding fewer than ``min_count`` samples into a touching neighbour.

    Greedy from the smallest piece up: each small piece joins the touching piece (of the
    same group when ``groups`` is given, e.g. the same country) with the fewest samples,
    which keeps cells contiguous and balanced. Pieces with no eligible neighbour stay.
    Returns, for each input piece, the index of the merged cell it belongs to (0..k-1).
    """
    n = len(geometry)
    owner = np.arange(n)
    geoms = list(geometry)
    counts = counts.astype(np.int64).copy()
    alive = np.ones(n, bool)
    tree = shapely.STRtree(np.asarray(geometry, dtype=object))
    neighbours = [set() for _ in range(n)]
    a, b = tree.query(np.asarray(geometry, dtype=object), predicate="intersects")
    for i, j in zip(a, b):
        if i != j:
            neighbours[i].add(j)
    stuck: set[int] = set()
    while True:
        small = [i for i in np.flatnonzero(alive & (counts < min_count)) if i not in stuck]
        if not small:
            break
        i = min(small, key=lambda k: (counts[k], k))
        cand = [j for j in neighbours[i] if alive[j] and (groups is None or groups[j] == groups[i])]
        if not cand:
            stuck.add(i)
            continue
        j = min(cand, key=lambda k: (counts[k], k))
        geoms[j] = shapely.union(geoms[j], geoms[i])
        counts[j] += counts[i]
        alive[i] = False
        owner[owner == i] = j
        neighbours[j] |= neighbours[i]
        neighbours[j].discard(j)
        neighbours[j].discard(i)
        for k in neighbours[i]:
            neighbours[k].discard(i)
            if k != j:
                neighbours[k].add(j)
        stuck.discard(j)
    _, merged = np.unique(owner, return_inverse=True)
    return merged


def fit_quadtree(
    lat,
    lon,
    labels: pd.DataFrame | None = None,
    max_samples: int = 100,
    min_samples: int = 10,
    max_depth: int = 12,
) -> CellPartition:
    """Quadtree cells on sample density (OSV-5M): split a box while it holds more than
    ``max_samples`` samples, then merge leaves with fewer than ``min_samples`` into a
    touching leaf. Boxes live in longitude/latitude; empty leaves are dropped (points
    there go to the nearest cell).
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("fit_quadtree needs training samples")
    leaves: list[tuple[float, float, float, float]] = []
    stack = [(-180.0, -90.0, 180.0, 90.0, np.arange(lat.size), 0)]
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
    leaf_of = PolygonIndex(boxes).containing(shapely.points(lon, lat))
    counts = np.bincount(leaf_of, minlength=len(boxes))
    merged = merge_small_pieces(boxes, counts, min_samples)
    geometry = np.array([shapely.union_all(boxes[merged == m]) for m in range(merged.max() + 1)], dtype=object)
    params = {"max_samples": max_samples, "min_samples": min_samples, "max_depth": max_depth}
    return CellPartition.from_assignment("quadtree", geometry, merged[leaf_of], lat, lon, labels, params)


CELL_FITTERS = {"quadtree": fit_quadtree}


def fit_cells(kind: str, lat, lon, labels: pd.DataFrame | None = None, **params) -> CellPartition:
    """Fit a partition of the given ``kind`` (one of :data:`CELL_FITTERS`)."""
    if kind not in CELL_FITTERS:
        raise ValueError(f"unknown cell partition kind {kind!r}; choose one of {sorted(CELL_FITTERS)}")
    return CELL_FITTERS[kind](lat, lon, labels, **params)
