"""Geography speed: labelling points and fitting geocells, and how they grow.

    python benchmarks/labelling.py [--sizes 10000 100000 1000000] [--output runs/bench/labelling]

* country + region labelling points/s on random land points, vs ``reverse_geocoder`` (what
  a common choice; nearest GeoNames city) on the same points, and their country agreement;
* geocell fitting time per partition kind (quadtree, fishnet, semantic) at each size, and
  the growth exponent (slope of log time over log size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo.cells import fit_cells  # noqa: E402
from geohf.geo.labelling import PointLabeller  # noqa: E402

KINDS = {
    "quadtree": {"max_samples": 500, "min_samples": 50},
    "fishnet": {"cell_deg": 2.0},
    "semantic": {"min_samples": 50, "max_samples": 2000},
}


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


def exponent(sizes, seconds) -> float:
    """Slope of log(seconds) over log(size): 1 is linear."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "labelling"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

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
            start = time.perf_counter()
            part = fit_cells(kind, lat, lon, labels, boundaries=labeller.boundaries, **params)
            seconds = time.perf_counter() - start
            results["cells"][kind][n] = {"seconds": seconds, "cells": len(part)}
            print(f"    {kind:<9} {len(part):>5} cells in {seconds:,.1f} s", flush=True)
    if len(args.sizes) > 1:
        for kind in KINDS:
            secs = [results["cells"][kind][n]["seconds"] for n in args.sizes]
            results["cells"][kind]["growth_exponent"] = exponent(args.sizes, secs)
        secs = [n / results["labelling"][n]["geohf_points_s"] for n in args.sizes]
        results["labelling"]["growth_exponent"] = exponent(args.sizes, secs)
    (out / "labelling.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v.get("growth_exponent") for k, v in results["cells"].items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
