"""A precomputed two-level grid answering "which polygon holds this point" mostly by array lookup.

The globe is cut into 1° blocks and each block into ``fine`` × ``fine`` cells. A cell that
no polygon boundary touches lies wholly inside the same polygons as its centre, so its
answer (the lowest polygon row there, or none) is stored; a block without any boundary is
stored whole at the 1° level. A cell a boundary touches keeps the short list of polygon
parts that touch or contain it, and only points in such cells run point-in-polygon, on
those parts alone. Every point-in-polygon test is GEOS's own (the same predicate as
:meth:`~geohf.geo.index.PolygonIndex.containing`), "a boundary touches the cell" errs only
towards yes, and cells are widened by :data:`EPS` degrees, so rounding a point into a
neighbouring cell cannot change its answer: the grid agrees exactly with plain point-in-polygon.

Cell values (``int32``): ``>= 0`` a polygon row, ``-1`` no polygon, ``<= -2`` a pointer
``-(v + 2)``: at the 1° level to a block of fine cells, at the fine level to a candidate list.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

logger = logging.getLogger(__name__)

GRID_VERSION = 1
FINE = 16
"""Fine cells per degree: 0.0625° (~7 km). A power of two, so ``(lon + 180) * FINE`` scales exactly."""
EPS = 1e-9
"""Degrees every cell box is widened by when it is classified (float rounding of a point's cell is ~1e-13)."""
_SEA, _PTR = -1, -2


def geometry_key(parts: np.ndarray) -> str:
    """A hash of the polygon parts' rings and coordinates: what a cached grid is built from (~50 ms)."""
    h = hashlib.sha1(f"grid-v{GRID_VERSION}-fine{FINE}-eps{EPS}".encode(), usedforsecurity=False)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    h.update(ring_part.astype(np.int64).tobytes())
    h.update(shapely.get_num_coordinates(rings).astype(np.int64).tobytes())
    h.update(np.ascontiguousarray(shapely.get_coordinates(rings)).tobytes())
    return h.hexdigest()


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, value)`` for every integer in each closed range ``[lo[i], hi[i]]``."""
    count = hi - lo + 1
    owner = np.repeat(np.arange(len(lo)), count)
    start = np.repeat(np.cumsum(count) - count, count)
    return owner, lo[owner] + np.arange(owner.size) - start


def _segment_near_cell(a: np.ndarray, b: np.ndarray, gi: np.ndarray, gj: np.ndarray, per_deg: int) -> np.ndarray:
    """Whether segment ``a``-``b`` comes within ``2 * EPS`` of cell (gi, gj) (its bbox already does).

    The separating-axis test on the segment's normal. Float error (~1e-13°) is far below the
    margin, so it never misses a segment that touches the cell's box widened by :data:`EPS`;
    a cell it marks needlessly only takes the exact per-point path.
    """
    half = 0.5 / per_deg + 2 * EPS
    cx, cy = (gj + 0.5) / per_deg - 180.0, (gi + 0.5) / per_deg - 90.0
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    cross = np.abs(dx * (cy - a[:, 1]) - dy * (cx - a[:, 0]))
    return cross <= (np.abs(dx) + np.abs(dy)) * half


def _contains_centres(parts, gi, gj, per_deg, cell, part) -> np.ndarray:
    """Which (cell, part) pairs have the cell's centre inside (or on) the part."""
    d = 1.0 / per_deg
    return shapely.intersects_xy(parts[part], (gj[cell] + 0.5) * d - 180.0, (gi[cell] + 0.5) * d - 90.0)


def _csr(owner: np.ndarray, value: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((value, owner))
    owner, value = owner[order], value[order]
    keep = np.r_[True, (owner[1:] != owner[:-1]) | (value[1:] != value[:-1])]
    owner, value = owner[keep], value[keep]
    start = np.searchsorted(owner, np.arange(n + 1))
    return start, value


@dataclass
class LabelGrid:
    """The arrays of a built grid (see the module docstring); ``parts`` are a PolygonIndex's."""

    coarse: np.ndarray  # (180, 360) int32
    fine: np.ndarray  # (n_blocks, FINE, FINE) int32
    cand_start: np.ndarray  # (n_border + 1,) int32
    cand: np.ndarray  # polygon part numbers, each list in ascending polygon row
    n_parts: int
    key: str
    build_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.coarse, self.fine, self.cand_start, self.cand))

    @classmethod
    def build(cls, parts: np.ndarray, part_row: np.ndarray, key: str | None = None) -> LabelGrid:
        """Classify every cell against ``parts`` (prepared shapely polygons) with rows ``part_row``."""
        start_t = time.perf_counter()
        K = FINE
        shapely.prepare(parts)
        # 1. boundary segments -> fine cells they touch (bbox range, then a separating-axis test)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        xy, ring_of = shapely.get_coordinates(rings, return_index=True)
        same = ring_of[1:] == ring_of[:-1]
        a, b = xy[:-1][same], xy[1:][same]
        seg_part = ring_part[ring_of[:-1][same]]
        lo = np.minimum(a, b) - 2 * EPS  # wider than the boxes: the range may round, the test is exact
        hi = np.maximum(a, b) + 2 * EPS
        ncol, nrow = 360 * K, 180 * K
        j0 = np.clip(np.floor((lo[:, 0] + 180.0) * K), 0, ncol - 1).astype(np.int64)
        j1 = np.clip(np.floor((hi[:, 0] + 180.0) * K), 0, ncol - 1).astype(np.int64)
        i0 = np.clip(np.floor((lo[:, 1] + 90.0) * K), 0, nrow - 1).astype(np.int64)
        i1 = np.clip(np.floor((hi[:, 1] + 90.0) * K), 0, nrow - 1).astype(np.int64)
        # a chunk of segments at a time: bounded memory
        count = np.cumsum((j1 - j0 + 1) * (i1 - i0 + 1))
        cuts = np.searchsorted(count, np.arange(_PAIR_CHUNK, count[-1], _PAIR_CHUNK))
        touch_cell, touch_part = [], []
        for s0, s1 in zip(np.r_[0, cuts], np.r_[cuts, len(a)]):
            seg_i, gj = _ranges(j0[s0:s1], j1[s0:s1])
            seg_ii, gi = _ranges(i0[s0:s1][seg_i], i1[s0:s1][seg_i])
            seg, gj = s0 + seg_i[seg_ii], gj[seg_ii]
            hit = _segment_near_cell(a[seg], b[seg], gi, gj, K)
            touch_cell.append(gi[hit] * ncol + gj[hit])
            touch_part.append(seg_part[seg[hit]])
        touch_cell, touch_part = np.concatenate(touch_cell), np.concatenate(touch_part)
        # unique (cell, part) pairs
        pair = np.unique(touch_cell * len(parts) + touch_part)
        touch_cell, touch_part = pair // len(parts), pair % len(parts)

        # 2. 1° blocks: a block no boundary touches is inside exactly the parts holding its centre
        block_of = (touch_cell // ncol) // K * 360 + (touch_cell % ncol) // K
        border_blocks = np.unique(block_of)
        coarse = np.full(180 * 360, _SEA, dtype=np.int32)
        tree = shapely.STRtree(parts)
        plain = np.setdiff1d(np.arange(180 * 360), border_blocks)
        bi, bj = plain // 360, plain % 360
        centres = shapely.points(bj + 0.5 - 180.0, bi + 0.5 - 90.0)
        c_i, c_p = tree.query(centres)
        inside = _contains_centres(parts, bi, bj, 1, c_i, c_p)
        _assign_lowest(coarse, plain[c_i[inside]], part_row[c_p[inside]])

        # candidates of a border block: parts touching any of its cells, or holding its centre
        bbi, bbj = border_blocks // 360, border_blocks % 360
        c_i, c_p = tree.query(shapely.points(bbj + 0.5 - 180.0, bbi + 0.5 - 90.0))
        inside = _contains_centres(parts, bbi, bbj, 1, c_i, c_p)
        blk_idx = np.searchsorted(border_blocks, block_of)
        blk_start, blk_cand = _csr(np.r_[blk_idx, c_i[inside]], np.r_[touch_part, c_p[inside]], len(border_blocks))

        # 3. fine cells of border blocks, a chunk of blocks at a time (bounded memory)
        nb = len(border_blocks)
        fine = np.full(nb * K * K, _SEA, dtype=np.int32)
        by_block = np.argsort(blk_idx, kind="stable")
        t_blk = blk_idx[by_block]
        lists, n_border = [], 0
        for b0 in range(0, nb, _BLOCK_CHUNK):
            b1 = min(b0 + _BLOCK_CHUNK, nb)
            sel = by_block[np.searchsorted(t_blk, b0) : np.searchsorted(t_blk, b1)]
            owner, value = _fine_cells(
                parts, part_row, fine, bbi, bbj, b0, b1, blk_start, blk_cand, touch_cell[sel], touch_part[sel], n_border
            )
            lists.append((owner, value))
            n_border = int(owner.max()) + 1 if owner.size else n_border
        owner = np.concatenate([o for o, _ in lists])
        value = np.concatenate([v for _, v in lists])
        cand_start = np.searchsorted(owner, np.arange(n_border + 1)).astype(np.int32)

        coarse[border_blocks] = _PTR - np.arange(nb, dtype=np.int32)
        return cls(
            coarse=coarse.reshape(180, 360),
            fine=fine.reshape(nb, K, K),
            cand_start=cand_start,
            cand=value.astype(np.int32),
            n_parts=len(parts),
            key=key or geometry_key(parts),
            build_s=time.perf_counter() - start_t,
        )

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez_compressed(
            tmp,
            coarse=self.coarse,
            fine=self.fine,
            cand_start=self.cand_start,
            cand=self.cand,
            meta=np.array([GRID_VERSION, FINE, self.n_parts], dtype=np.int64),
            key=np.array(self.key),
            build_s=np.array(self.build_s),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, key: str | None = None) -> LabelGrid | None:
        """The grid saved at ``path``, or ``None`` when it is missing, stale or for other polygons."""
        try:
            with np.load(path) as z:
                version, fine, n_parts = (int(v) for v in z["meta"])
                if version != GRID_VERSION or fine != FINE or (key is not None and str(z["key"]) != key):
                    return None
                return cls(
                    z["coarse"], z["fine"], z["cand_start"], z["cand"], n_parts, str(z["key"]), float(z["build_s"])
                )
        except (OSError, KeyError, ValueError):
            return None

    def lookup(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(value, valid)``: the cell value of each point (see module doc) and whether it is on the grid.

        Points with NaN or out-of-range coordinates are not valid (value ``-1``).
        """
        K = FINE
        valid = (lat >= -90.0) & (lat <= 90.0) & (lon >= -180.0) & (lon <= 180.0)
        with np.errstate(invalid="ignore"):
            gi = np.clip(((lat + 90.0) * K).astype(np.int32), 0, 180 * K - 1)  # NaN lands anywhere: not valid
            gj = np.clip(((lon + 180.0) * K).astype(np.int32), 0, 360 * K - 1)
        ci, cj = gi // K, gj // K
        value = self.coarse.ravel()[ci * 360 + cj]
        value[~valid] = _SEA
        ptr = np.flatnonzero(value <= _PTR)
        if ptr.size:
            block = (_PTR - value[ptr]).astype(np.int64) * (K * K)
            value[ptr] = self.fine.ravel()[block + (gi[ptr] - ci[ptr] * K) * K + (gj[ptr] - cj[ptr] * K)]
        return value, valid

    def containing(self, lat, lon, parts: np.ndarray, part_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polygon row per point (-1: none), as :meth:`PolygonIndex.containing`; and the grid-valid mask."""
        value, valid = self.lookup(lat, lon)
        index = value.astype(np.int64)
        border = np.flatnonzero(value <= _PTR)
        if border.size:
            # each border point tries its cell's parts in ascending row until one holds it
            cell = _PTR - value[border]
            index[border] = -1
            slot = self.cand_start[cell].astype(np.int64)
            end = self.cand_start[cell + 1]
            todo = np.arange(border.size)
            while todo.size:
                pt = border[todo]
                part = self.cand[slot[todo]]
                hit = shapely.intersects_xy(parts[part], lon[pt], lat[pt])
                index[pt[hit]] = part_row[part[hit]]
                slot[todo] += 1
                todo = todo[~hit & (slot[todo] < end[todo])]
        return index, valid


SHIPPED_GRID = Path(__file__).resolve().parent / "data" / "admin1.grid.npz"
"""The grid of the shipped boundaries (``admin1.parquet``), built by ``scripts/make_label_grid.py``."""


def cache_path(key: str) -> Path:
    """Where the grid of polygons with geometry key ``key`` is cached."""
    from .boundaries import cache_dir

    return cache_dir() / "label-grids" / f"{key}.npz"


_LOADED: dict[str, LabelGrid] = {}  # grids are read-only: labellers of the same polygons share one


def find_grid(parts: np.ndarray, key: str | None = None) -> LabelGrid | None:
    """The shipped or cached grid for ``parts`` (checked by :func:`geometry_key`), else ``None``."""
    key = key or geometry_key(parts)
    if key in _LOADED:
        return _LOADED[key]
    for path in (SHIPPED_GRID, cache_path(key)):
        if path.is_file():
            grid = LabelGrid.load(path, key)
            if grid is not None and grid.n_parts == len(parts):
                return _remember(grid)
    return None


def _remember(grid: LabelGrid) -> LabelGrid:
    if len(_LOADED) >= 4:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[grid.key] = grid
    return grid


def build_and_cache(parts: np.ndarray, part_row: np.ndarray, key: str | None = None) -> LabelGrid:
    """Build the grid for ``parts`` and save it in the cache (a failed write only logs)."""
    grid = _remember(LabelGrid.build(parts, part_row, key))
    try:
        path = grid.save(cache_path(grid.key))
        logger.info("label grid built in %.1f s, cached at %s", grid.build_s, path)
    except OSError as err:
        logger.warning("label grid built in %.1f s but not cached: %s", grid.build_s, err)
    return grid


_BLOCK_CHUNK = 1024
_PAIR_CHUNK = 200_000


def _fine_cells(parts, part_row, fine, bbi, bbj, b0, b1, blk_start, blk_cand, touch_cell, touch_part, first_ptr):
    """Fill ``fine`` for border blocks ``b0:b1``; return their border cells' candidate lists.

    Returns ``(owner, value)``: candidate part ``value`` of border cell ``owner`` (numbered
    from ``first_ptr`` in cell order), sorted by cell, then row, then part.
    """
    K, ncol = FINE, 360 * FINE
    nb = b1 - b0
    local = np.arange(K * K)
    cell_blk = np.repeat(np.arange(b0, b1), K * K)
    fgi = bbi[cell_blk] * K + np.tile(local // K, nb)
    fgj = bbj[cell_blk] * K + np.tile(local % K, nb)
    # each cell against its block's candidates: which hold the cell's centre
    pc, slot = _ranges(blk_start[cell_blk], blk_start[cell_blk + 1] - 1)
    p_part = blk_cand[slot]
    inside = _contains_centres(parts, fgi, fgj, K, pc, p_part)
    cells = fgi.astype(np.int64) * ncol + fgj
    order = np.argsort(cells)
    sorted_cells = cells[order]
    t_local = order[np.searchsorted(sorted_cells, touch_cell)]
    touched = np.zeros(cells.size, bool)
    touched[t_local] = True
    out = fine[b0 * K * K : b1 * K * K]
    # untouched cells: the lowest row holding the centre (every part there covers the cell or misses it)
    ok = inside & ~touched[pc]
    _assign_lowest(out, pc[ok], part_row[p_part[ok]])
    # touched cells: the parts touching them plus those holding the centre, ascending row
    border = np.flatnonzero(touched)
    ptr = np.full(cells.size, -1, dtype=np.int64)
    ptr[border] = first_ptr + np.arange(border.size)
    out[border] = _PTR - ptr[border]
    c_ok = inside & touched[pc]
    owner = np.r_[ptr[t_local], ptr[pc[c_ok]]]
    value = np.r_[touch_part, p_part[c_ok]]
    order = np.lexsort((value, part_row[value], owner))
    owner, value = owner[order], value[order]
    keep = np.r_[True, (owner[1:] != owner[:-1]) | (value[1:] != value[:-1])]
    return owner[keep], value[keep]


def _assign_lowest(target: np.ndarray, cell: np.ndarray, row: np.ndarray) -> None:
    """``target[cell] = min(row)`` per cell."""
    if not cell.size:
        return
    order = np.lexsort((row, cell))
    cell, row = cell[order], row[order]
    first = np.r_[True, cell[1:] != cell[:-1]]
    target[cell[first]] = row[first]
