"""Build the label grid shipped for the default boundaries: ``geohf/geo/data/admin1.grid.npz``.

    python scripts/make_label_grid.py [BOUNDARY_FILE] [--output PATH]

Run it whenever ``geohf/geo/data/admin1.parquet`` (or :mod:`geohf.geo.grid`) changes: a grid
whose geometry key no longer matches is ignored, and labelling then builds and caches its own
on the first large query.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo.boundaries import load_boundaries, shipped_path  # noqa: E402
from geohf.geo.grid import SHIPPED_GRID, LabelGrid  # noqa: E402
from geohf.geo.index import PolygonIndex  # noqa: E402


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("boundaries", nargs="?", default=str(shipped_path()))
    parser.add_argument("--output", default=str(SHIPPED_GRID))
    args = parser.parse_args(argv)
    frame = load_boundaries(args.boundaries).reset_index(drop=True)
    index = PolygonIndex(frame.geometry.to_numpy())
    grid = LabelGrid.build(index.parts, index.part_row)
    grid.build_s = 0.0  # a property of the machine, not of the grid
    path = grid.save(args.output)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB on disk, {grid.nbytes / 1e6:.1f} MB in memory, key {grid.key}")
    return path


if __name__ == "__main__":
    main()
