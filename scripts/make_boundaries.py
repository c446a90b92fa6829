#!/usr/bin/env python
"""Build the compact admin-1 boundary file that geohf ships (``geohf/geo/data/admin1.parquet``).

    python scripts/make_boundaries.py SOURCE [--output geohf/geo/data/admin1.parquet] [--tolerance 0.01]

SOURCE is the full Natural Earth 1:10m admin-1 file (``ne_10m_admin_1_states_provinces``
as GeoParquet, GeoJSON, Shapefile or a zip of it). The output is in geohf's normalised
schema (``country_code, country, region_code, region, geometry``, see
:func:`geohf.geo.boundaries.normalise_boundaries`: ISO codes, Kosovo = XK, Natural Earth's
-99 codes fixed), with

* coverage simplification (``shapely.coverage_simplify``, GEOS >= 3.12): neighbouring
  regions are simplified together, so shared borders stay shared (no gaps, no overlaps);
  ``simplify(preserve_topology=True)`` per region where it is unavailable;
* coordinates snapped to a binary grid (``--grid``, default 2^-13 degrees ≈ 14 m): the
  trailing mantissa bits of every coordinate are zero, which zstd compresses well;
* every polygon part kept: a tiny island that the simplification or the grid removes is put
  back from the source;
* valid geometries (``make_valid``, polygonal parts only), rows sorted by country and region
  code, zstd compression: the same source and versions give the same file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo.boundaries import COLUMNS, SHIPPED_PATH, normalise_boundaries  # noqa: E402

DEFAULT_TOLERANCE = 0.01
DEFAULT_GRID = 2.0**-13


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Valid geometries, keeping only their polygonal parts (make_valid can add lines and points)."""
    geoms = shapely.make_valid(geoms)
    out = geoms.copy()
    for i in np.flatnonzero(~np.isin(shapely.get_type_id(geoms), [3, 6])):  # not (Multi)Polygon
        parts = [p for p in shapely.get_parts(geoms[i]) if shapely.get_type_id(p) in (3, 6)]
        out[i] = shapely.union_all(parts) if parts else shapely.Polygon()
    return out


def simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0:
        return geoms
    if hasattr(shapely, "coverage_simplify"):
        return shapely.coverage_simplify(geoms, tolerance)
    return shapely.simplify(geoms, tolerance, preserve_topology=True)


def restore_lost_parts(source: np.ndarray, simplified: np.ndarray, grid: float) -> tuple[np.ndarray, int]:
    """Put back every source polygon part that no longer overlaps its row's simplified geometry.

    Returns the geometries and the number of parts restored (from the source, on a 256x finer grid).
    """
    parts, row = shapely.get_parts(source, return_index=True)
    lost = ~shapely.intersects(simplified[row], parts)
    out = simplified.copy()
    for i in np.unique(row[lost]):
        mine = parts[lost & (row == i)]
        fine = shapely.set_precision(mine, grid / 256)
        fine = np.where(shapely.is_empty(fine), mine, fine)
        out[i] = shapely.union_all([out[i], *fine])
    return out, int(lost.sum())


def build(source: str, tolerance: float = DEFAULT_TOLERANCE, grid: float = DEFAULT_GRID) -> gpd.GeoDataFrame:
    """The shipped table from a full Natural Earth admin-1 file."""
    path = Path(source)
    frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    frame = normalise_boundaries(frame)
    frame = frame.sort_values(["country_code", "region_code", "region"], kind="stable").reset_index(drop=True)
    full = polygonal(frame.geometry.to_numpy())
    geoms = simplify(full, tolerance)
    if grid > 0:
        geoms = shapely.set_precision(geoms, grid)
    geoms = polygonal(geoms)
    geoms, restored = restore_lost_parts(full, geoms, grid or 1e-9)
    geoms = polygonal(geoms)
    geoms = shapely.normalize(geoms)  # canonical ring order and starting points
    out = gpd.GeoDataFrame(frame[COLUMNS[:-1]], geometry=geoms, crs=4326)
    out.attrs["restored_parts"] = restored
    out.attrs["source_geometry"] = full
    return out


def counts(geoms: np.ndarray) -> dict:
    return {
        "rows": len(geoms),
        "parts": int(shapely.get_num_geometries(geoms).sum()),
        "vertices": int(shapely.get_num_coordinates(geoms).sum()),
    }


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="Natural Earth 1:10m admin-1 (ne_10m_admin_1_states_provinces)")
    parser.add_argument("--output", default=str(SHIPPED_PATH))
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="simplification tolerance in degrees (0: none)"
    )
    parser.add_argument("--grid", type=float, default=DEFAULT_GRID, help="coordinate grid in degrees (0: none)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    table = build(args.source, args.tolerance, args.grid)
    geoms = table.geometry.to_numpy()
    before, after = counts(table.attrs.pop("source_geometry")), counts(geoms)
    restored = table.attrs.pop("restored_parts")
    if not shapely.is_valid(geoms).all() or shapely.is_empty(geoms).any():
        raise SystemExit("invalid or empty geometries in the output")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    table.to_parquet(tmp, compression="zstd", index=False, schema_version="1.0.0")
    tmp.replace(out)

    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - start:.0f} s")
    print(f"  tolerance {args.tolerance:g} deg, grid {args.grid:g} deg, {restored} lost parts restored")
    for key in before:
        print(f"  {key:<9} {before[key]:>10,} -> {after[key]:>10,}")
    print(
        f"  {table['country_code'].nunique()} countries, {table['region_code'].nunique()} region codes, "
        f"{int((table['region_code'] == '').sum())} rows without a region code"
    )
    return out


if __name__ == "__main__":
    main()
