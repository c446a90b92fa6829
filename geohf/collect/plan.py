"""Sampling plans: the points where the collector looks for street-level images.

Points are uniform *on the sphere* inside each region: longitude uniform, latitude drawn
through its sine (the Lambert equal-area plane), with vectorised rejection sampling inside the
bounds of each polygon part, parts chosen in proportion to their area. Every region draws from
its own generator seeded by ``(seed, region name)``: a plan is reproducible, and adding a region
does not move the points of the others.

Samplers:

* ``uniform`` -- ``per_region`` uniform points in every region;
* ``fishnet`` -- stratified: an equal-area fishnet with about ``per_region`` cells inside the
  region and one uniform point per cell (a jittered grid: even coverage, no clumps);
* ``population`` -- ``per_region x regions`` points shared between regions in proportion to a
  user-supplied weight column (``population`` in a cities CSV or GeoJSON). geohf ships no
  population raster, so country and admin-1 codes carry no weight and are refused.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from ..files import atomic_path
from ..geo.sphere import wrap_longitude
from .regions import Region, equal_area, polygon_parts

PLAN_COLUMNS = ["location_id", "region", "latitude", "longitude"]
_META_KEY = b"geohf.collect.plan"


def named_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends on the seed and a name only (a region, a location)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _sample_part(part: shapely.Polygon, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the sphere inside one polygon (rejection in its bounds)."""
    x0, y0, x1, y1 = part.bounds
    s0, s1 = np.sin(np.radians([y0, y1]))
    acceptance = max(shapely.area(equal_area(part)) / (np.radians(x1 - x0) * (s1 - s0)), 1e-4)
    shapely.prepare(part)
    lats, lons, got = [], [], 0
    while got < n:
        m = max(64, math.ceil((n - got) / acceptance * 1.25))
        lon = rng.uniform(x0, x1, m)
        lat = np.degrees(np.arcsin(rng.uniform(s0, s1, m)))
        inside = shapely.contains_xy(part, lon, lat)
        lats.append(lat[inside])
        lons.append(lon[inside])
        got += int(inside.sum())
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def uniform_points(geometry, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the sphere inside a (multi)polygon, as (latitude, longitude)."""
    parts = polygon_parts(geometry)
    areas = shapely.area(equal_area(parts))
    counts = rng.multinomial(n, areas / areas.sum())
    drawn = [_sample_part(p, k, rng) for p, k in zip(parts, counts) if k]
    lat = np.concatenate([d[0] for d in drawn]) if drawn else np.empty(0)
    lon = np.concatenate([d[1] for d in drawn]) if drawn else np.empty(0)
    order = rng.permutation(n)
    return lat[order], wrap_longitude(lon[order])


def fishnet_points(geometry, n: int, rng: np.random.Generator, max_tries: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points from a jittered equal-area grid: one uniform point per fishnet cell inside the region.

    The plane is Lambert's cylindrical equal-area projection with its standard parallel at the
    region's centre, so cells are squares of equal area there. The cell size starts at
    ``sqrt(area / n)`` and shrinks until at least ``n`` points fall inside; any surplus is dropped
    at random.
    """
    if n == 0:
        return np.empty(0), np.empty(0)
    geometry = shapely.MultiPolygon(list(polygon_parts(geometry)))
    shapely.prepare(geometry)
    projected = equal_area(geometry)
    c = math.cos(math.asin(max(-1.0, min(1.0, projected.centroid.y))))
    x0, y0, x1, y1 = geometry.bounds
    u0, u1 = math.radians(x0) * c, math.radians(x1) * c
    v0, v1 = math.sin(math.radians(y0)) / c, math.sin(math.radians(y1)) / c
    size = math.sqrt(projected.area / n)
    for _ in range(max_tries):
        ou, ov = rng.uniform(0, size, 2)
        uu, vv = np.meshgrid(np.arange(u0 - ou, u1, size), np.arange(v0 - ov, v1, size))
        u = uu.ravel() + rng.uniform(0, size, uu.size)
        v = vv.ravel() + rng.uniform(0, size, vv.size)
        lon = np.degrees(u / c)
        lat = np.degrees(np.arcsin(np.clip(v * c, -1.0, 1.0)))
        inside = np.flatnonzero(shapely.contains_xy(geometry, lon, lat))
        if inside.size >= n:
            pick = rng.permutation(rng.choice(inside, n, replace=False))
            return lat[pick], wrap_longitude(lon[pick])
        size *= 0.95 * math.sqrt(max(inside.size, 1) / n)
    raise RuntimeError(f"fishnet sampler could not place {n} points after {max_tries} grids")


def allocate(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder; ties to the first)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero")
    quota = w / w.sum() * total
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


PointSampler = Callable[[shapely.Geometry, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
SAMPLERS: dict[str, PointSampler] = {"uniform": uniform_points, "fishnet": fishnet_points, "population": uniform_points}


def region_counts(regions: Sequence[Region], per_region: int, sampler: str) -> np.ndarray:
    """Points per region: ``per_region`` each, or shared by weight for the population sampler."""
    if sampler != "population":
        return np.full(len(regions), per_region, dtype=np.int64)
    unweighted = [r.name for r in regions if r.weight is None]
    if unweighted:
        raise ValueError(
            "the population sampler needs a weight for every region (a `population` column in a cities CSV or "
            f"GeoJSON file, or --weight-column); geohf ships no population raster. Unweighted: {unweighted[:5]}"
        )
    return allocate([r.weight for r in regions], per_region * len(regions))


def make_plan(regions: Sequence[Region], per_region: int, sampler: str = "uniform", seed: int = 0) -> pd.DataFrame:
    """The plan table (:data:`PLAN_COLUMNS`), regions in order, ``location_id = <region>-NNNNN``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if per_region < 1:
        raise ValueError(f"--per-region must be at least 1, got {per_region}")
    frames = []
    for region, n in zip(regions, region_counts(regions, per_region, sampler)):
        lat, lon = SAMPLERS[sampler](region.geometry, int(n), named_rng(seed, region.name))
        ids = [f"{region.name}-{i:05d}" for i in range(int(n))]
        frames.append(pd.DataFrame({"location_id": ids, "region": region.name, "latitude": lat, "longitude": lon}))
    return pd.concat(frames, ignore_index=True)[PLAN_COLUMNS]


def save_plan(plan: pd.DataFrame, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write a plan to Parquet (atomically), with how it was made in the schema metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(plan[PLAN_COLUMNS], preserve_index=False)
    meta = {**(table.schema.metadata or {}), _META_KEY: json.dumps(info or {}).encode()}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


def plan_info(path: str | os.PathLike) -> dict:
    """How a saved plan was made (regions, sampler, seed, ...), or ``{}``."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else {}


def load_plan(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a plan: the columns of :data:`PLAN_COLUMNS`, unique ids, valid coordinates."""
    plan = pd.read_parquet(path)
    missing = [c for c in PLAN_COLUMNS if c not in plan]
    if missing:
        raise ValueError(
            f"{path} is not a collect plan: missing columns {missing} (make one with `geohf collect plan`)"
        )
    plan = plan[PLAN_COLUMNS].astype({"location_id": str, "region": str, "latitude": float, "longitude": float})
    if plan["location_id"].duplicated().any():
        raise ValueError(f"{path}: location_id values must be unique")
    bad = ~plan["latitude"].between(-90, 90) | ~plan["longitude"].between(-180, 180)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} rows have coordinates out of range")
    return plan.reset_index(drop=True)
