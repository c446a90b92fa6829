"""Geography speed: labelling points and fitting geocells, and how they grow.

    python benchmarks/labelling.py [--sizes 10000 100000 1000000] [--runs 3] [--no-cells | --cells-only]
                                   [--kinds quadtree fishnet semantic semantic_optics] [--output runs/bench/labelling]

* country + region labelling points/s on random land points, vs ``reverse_geocoder`` (what
  a common choice; nearest GeoNames city, ``mode=1``) on the same points: the median of
  ``--runs`` runs each, interleaved, after one warm-up call each; their ratio; and their
  country agreement;
* the label grid (:mod:`geohf.geo.grid`): its build time, size on disk and in memory, and
  how many of the largest size's points get the same polygon from the grid as from plain
  point-in-polygon (:meth:`PolygonIndex.containing`, 1° tiles at that size): must be all;
* in a fresh process: ``PointLabeller()`` load time, the first (cold) 10k call, and peak RSS
  labelling the largest size;
* geocell fitting time per partition kind (quadtree, fishnet, semantic, semantic_optics) at each size, and
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
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo import cells as cells_module  # noqa: E402
from geohf.geo.cells import fit_cells  # noqa: E402
from geohf.geo.grid import SHIPPED_GRID, LabelGrid  # noqa: E402
from geohf.geo.labelling import PointLabeller  # noqa: E402

KINDS = {
    "quadtree": {"max_samples": 500, "min_samples": 50},
    "fishnet": {"cell_deg": 2.0},
    "semantic": {"min_samples": 50, "max_samples": 2000},
    "semantic_optics": {"min_samples": 50, "max_samples": 2000},
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


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(points: str, grid: bool = True) -> dict:
    """In a fresh process: load time, a cold first 10k call, and peak RSS labelling the saved points."""
    lat, lon = np.load(points)
    n = lat.size
    start = time.perf_counter()
    labeller = PointLabeller(grid=grid)
    load_s = time.perf_counter() - start
    base = rss_mb()
    start = time.perf_counter()
    labeller.label(lat[:10_000], lon[:10_000])
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    labeller.label(lat, lon)
    return {
        f"first_{n}_call_s": time.perf_counter() - start,
        "labeller_load_s": load_s,
        "grid_loaded": labeller.grid is not None,
        "first_10k_call_s": first_s,
        "rss_before_mb": base,
        "peak_rss_labelling_mb": rss_mb(),
    }


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "labelling"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side and size (median)")
    parser.add_argument("--no-cells", action="store_true", help="skip the geocell fitting part")
    parser.add_argument("--cells-only", action="store_true", help="only the geocell fitting part (to cells.json)")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS), help="geocell kinds to fit")
    parser.add_argument(
        "--untiled-reference",
        action="store_true",
        help="check the grid against the untiled STRtree query (slow: ~1 min per 1M points) as well",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help="geohf cache folder for the cells (default: a new empty one)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, grid=not args.probe_plain)))
        return {}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None if args.cache else tempfile.mkdtemp(prefix="geohf-bench-cache-")
    os.environ["GEOHF_CACHE"] = args.cache or scratch

    results = {"process": {}, "labelling": {}, "cells": {}}
    if args.cells_only:
        labeller = PointLabeller()
    else:
        # fresh processes first: load time and RSS without this process's other work; with and without the grid
        saved = out / "land_points.npy"
        start = time.perf_counter()
        np.save(saved, np.stack(land_points(PointLabeller(), max(args.sizes), seed=max(args.sizes))))
        print(f"{max(args.sizes):,} land points in {time.perf_counter() - start:.1f} s", flush=True)
        for name, extra in (("grid", []), ("plain", ["--probe-plain"])):
            cmd = [sys.executable, __file__, "--probe", str(saved), *extra]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results["process"][name] = json.loads(line)
            print(f"fresh process, {name}: {line}", flush=True)

        start = time.perf_counter()
        labeller = PointLabeller()
        results["load_boundaries_s"] = time.perf_counter() - start
        grid = LabelGrid.build(labeller.index.parts, labeller.index.part_row)
        load_s = min(timed(LabelGrid.load, SHIPPED_GRID) for _ in range(3))
        results["grid"] = {
            "build_s": grid.build_s,
            "shipped_file_mb": SHIPPED_GRID.stat().st_size / 1e6,
            "memory_mb": grid.nbytes / 1e6,
            "load_s": load_s,
            "same_as_shipped": labeller.grid is not None and grid.key == labeller.grid.key,
            "blocks_1deg_with_fine_cells": int(grid.fine.shape[0]),
            "border_cells": int(len(grid.cand_start) - 1),
        }
        print(f"grid: {json.dumps(results['grid'])}", flush=True)
        import reverse_geocoder as rg

        rg.search([(0.0, 0.0)], mode=1, verbose=False)  # build its k-d tree once
        for n in args.sizes:
            lat, lon = land_points(labeller, n, seed=n)
            coords = list(zip(lat.tolist(), lon.tolist()))
            labels, _ = labeller.label(lat, lon)  # warm-up, both sides
            found = rg.search(coords, mode=1, verbose=False)
            ours, theirs = [], []
            for _ in range(args.runs):  # interleaved, so load from other work hits both sides alike
                ours.append(timed(labeller.label, lat, lon))
                theirs.append(timed(rg.search, coords, mode=1, verbose=False))
            ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
            agree = float(np.mean(labels["country_code"].to_numpy() == np.array([f["cc"] for f in found])))
            in_border = int((labeller.grid.lookup(lat, lon)[0] <= -2).sum()) if labeller.grid is not None else None
            results["labelling"][n] = {
                "geohf_points_s": n / ours_s,
                "reverse_geocoder_points_s": n / theirs_s,
                "ratio": theirs_s / ours_s,
                "geohf_runs_s": ours,
                "reverse_geocoder_runs_s": theirs,
                "country_agreement": agree,
                "points_in_border_cells": in_border,
            }
            print(
                f"{n:>9,} points: geohf {n / ours_s:,.0f}/s, reverse_geocoder {n / theirs_s:,.0f}/s, "
                f"ratio {theirs_s / ours_s:.2f}, agreement {agree:.2%}, in border cells {in_border}",
                flush=True,
            )
        # grid vs plain point-in-polygon on the largest size
        n = max(args.sizes)
        lat, lon = land_points(labeller, n, seed=n)
        plain = PointLabeller(labeller.boundaries, grid=False)
        ours = labeller.containing(lat, lon)
        same = int((ours == plain.containing(lat, lon)).sum())
        results["grid_agreement"] = {"points": n, "same_polygon_as_tiled": same}
        print(f"grid vs plain point-in-polygon (1° tiles): {same:,} of {n:,} points agree", flush=True)
        if args.untiled_reference:
            chunks = np.array_split(np.arange(n), -(-n // 10_000))  # < TILE_QUERY_POINTS: the untiled STRtree
            start = time.perf_counter()
            same = sum(int((ours[c] == plain.index.containing(shapely.points(lon[c], lat[c]))).sum()) for c in chunks)
            results["grid_agreement"]["same_polygon_as_untiled"] = same
            results["grid_agreement"]["untiled_s"] = time.perf_counter() - start
            print(f"grid vs plain point-in-polygon (untiled): {same:,} of {n:,} points agree", flush=True)
        del plain

    for n in [] if args.no_cells else args.sizes:
        lat, lon = land_points(labeller, n, seed=n)
        labels, _ = labeller.label(lat, lon)
        for kind in args.kinds:
            params, row = KINDS[kind], {}

            fit = (kind, lat, lon, labels, labeller.boundaries, params)
            if n == args.sizes[0]:
                if kind == args.kinds[0]:
                    cells_module.clear_cache(disk=True)  # once: the kinds cache different things
                cells_module.clear_cache()
                row["cold_seconds"], _ = timed_fit(*fit)
            cells_module.clear_cache()  # a new process: the disk cache only
            row["seconds"], part = timed_fit(*fit)
            row["warm_seconds"], _ = timed_fit(*fit)
            row["cells"] = len(part)
            row["max_cell_samples"] = int(part.cells["count"].max())
            if n == GOAL_POINTS:
                row["goal_seconds"] = GOAL_SECONDS
                row["meets_goal"] = row["seconds"] <= GOAL_SECONDS
            results["cells"].setdefault(kind, {})[n] = row
            cold = f", cold {row['cold_seconds']:.1f} s" if "cold_seconds" in row else ""
            goal = (
                f"  (goal <= {GOAL_SECONDS:g} s: {'met' if row['meets_goal'] else 'MISSED'})"
                if n == GOAL_POINTS
                else ""
            )
            warm = f"warm {row['warm_seconds']:,.2f} s{cold}"
            print(f"    {kind:<15} {len(part):>5} cells in {row['seconds']:,.2f} s ({warm}){goal}", flush=True)
    if len(args.sizes) > 1:
        for kind in results["cells"]:
            secs = [results["cells"][kind][n]["seconds"] for n in args.sizes]
            results["cells"][kind]["growth_exponent"] = exponent(args.sizes, secs)
        if results["labelling"]:
            secs = [n / results["labelling"][n]["geohf_points_s"] for n in args.sizes]
            results["labelling"]["growth_exponent"] = exponent(args.sizes, secs)
    (out / ("cells.json" if args.cells_only else "labelling.json")).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v.get("growth_exponent") for k, v in results["cells"].items()}, indent=2))
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
