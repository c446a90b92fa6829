"""Geography speed: labelling points and fitting geocells, and how they grow.

    python benchmarks/labelling.py [--sizes 10000 100000 1000000] [--output runs/bench/labelling]

* country + region labelling points/s on random land points, vs ``reverse_geocoder`` (what
  seed 004 used; nearest GeoNames city) on the same points, and their country agreement;
* geocell fitting time per partition kind (quadtree, fishnet, semantic) at each size, and
  the growth exponent (slope of log time over log size). The point-free polygon work of
  fishnet and semantic (grid clipped to land, admin-1 tiles and adjacency) is cached per
  boundary content, in memory and in ``cache_dir()/cells``; the benchmark points
  ``$GEOHF_CACHE`` at an empty folder and times each fit three ways: ``cold`` (first fit ever
  with these boundaries, at the first size only), ``seconds`` (a new process: memory cache
  cleared, disk cache warm; what the goal is judged on) and ``warm_seconds`` (again in the
  same process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo import cells as cells_module  # noqa: E402
from geohf.geo.cells import fit_cells  # noqa: E402
from geohf.geo.labelling import PointLabeller  # noqa: E402

KINDS = {
    "quadtree": {"max_samples": 500, "min_samples": 50},
    "fishnet": {"cell_deg": 2.0},
    "semantic": {"min_samples": 50, "max_samples": 2000},
}
GOAL_POINTS = 100_000
GOAL_SECONDS = 3.0  # each kind at GOAL_POINTS (issue "Performance at the limit")


def land_points(labeller: PointLabeller, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random points on land, uniform on the sphere (containment test only: fast)."""
    rng = np.random.default_rng(seed)
    lat_parts, lon_parts, have = [], [], 0
    while have < n:
        lat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 200_000)))
        lon = rng.uniform(-180, 180, 200_000)
        land = labeller.is_land(lat, lon)
        lat_parts.append(lat[land])
        lon_parts.append(lon[land])
        have += int(land.sum())
    return np.concatenate(lat_parts)[:n], np.concatenate(lon_parts)[:n]


def timed_fit(kind, lat, lon, labels, boundaries, params):
    start = time.perf_counter()
    part = fit_cells(kind, lat, lon, labels, boundaries=boundaries, **params)
    return time.perf_counter() - start, part


def exponent(sizes, seconds) -> float:
    """Slope of log(seconds) over log(size): 1 is linear."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "labelling"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cache", default=None, help="geohf cache folder for the cells (default: a new empty one)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if args.cache else tempfile.mkdtemp(prefix="geohf-bench-cache-")
    os.environ["GEOHF_CACHE"] = args.cache or scratch

    start = time.perf_counter()
    labeller = PointLabeller()
    results = {"load_boundaries_s": time.perf_counter() - start, "labelling": {}, "cells": {k: {} for k in KINDS}}
    import reverse_geocoder as rg

    rg.search([(0.0, 0.0)], mode=1, verbose=False)  # build its k-d tree once
    for n in args.sizes:
        lat, lon = land_points(labeller, n, seed=n)
        start = time.perf_counter()
        labels, _ = labeller.label(lat, lon)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        found = rg.search(list(zip(lat.tolist(), lon.tolist())), mode=1, verbose=False)
        theirs = time.perf_counter() - start
        agree = float(np.mean(labels["country_code"].to_numpy() == np.array([f["cc"] for f in found])))
        results["labelling"][n] = {
            "geohf_points_s": n / ours,
            "reverse_geocoder_points_s": n / theirs,
            "country_agreement": agree,
        }
        print(
            f"{n:>9,} points: geohf {n / ours:,.0f}/s, reverse_geocoder {n / theirs:,.0f}/s, agreement {agree:.2%}",
            flush=True,
        )
        for kind, params in KINDS.items():
            row = {}

            fit = (kind, lat, lon, labels, labeller.boundaries, params)
            if n == args.sizes[0]:
                if kind == next(iter(KINDS)):
                    cells_module.clear_cache(disk=True)  # once: the kinds cache different things
                cells_module.clear_cache()
                row["cold_seconds"], _ = timed_fit(*fit)
            cells_module.clear_cache()  # a new process: the disk cache only
            row["seconds"], part = timed_fit(*fit)
            row["warm_seconds"], _ = timed_fit(*fit)
            row["cells"] = len(part)
            if n == GOAL_POINTS:
                row["goal_seconds"] = GOAL_SECONDS
                row["meets_goal"] = row["seconds"] <= GOAL_SECONDS
            results["cells"][kind][n] = row
            cold = f", cold {row['cold_seconds']:.1f} s" if "cold_seconds" in row else ""
            goal = (
                f"  (goal <= {GOAL_SECONDS:g} s: {'met' if row['meets_goal'] else 'MISSED'})"
                if n == GOAL_POINTS
                else ""
            )
            warm = f"warm {row['warm_seconds']:,.2f} s{cold}"
            print(f"    {kind:<9} {len(part):>5} cells in {row['seconds']:,.2f} s ({warm}){goal}", flush=True)
    if len(args.sizes) > 1:
        for kind in KINDS:
            secs = [results["cells"][kind][n]["seconds"] for n in args.sizes]
            results["cells"][kind]["growth_exponent"] = exponent(args.sizes, secs)
        secs = [n / results["labelling"][n]["geohf_points_s"] for n in args.sizes]
        results["labelling"]["growth_exponent"] = exponent(args.sizes, secs)
    (out / "labelling.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v.get("growth_exponent") for k, v in results["cells"].items()}, indent=2))
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
