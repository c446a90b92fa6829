"""Dataset building: images/s and peak memory per layout, each build in its own process.

    python benchmarks/dataset_build.py [--lost-and-found 3000] [--tiles 5000] [--num-proc 1 2]

Builds (1) the Blue Marble tiles and (2) a lost-and-found folder of generated street-size
images (320×180 PNG crops of Blue Marble at their true coordinates), with every filter on,
and reports images/s and the peak resident memory of the building process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, resource, sys, time
from geohf.data.pipeline import BuildConfig, build_dataset
cfg = BuildConfig(**json.loads(sys.argv[1]))
start = time.perf_counter()
report = build_dataset(cfg)
seconds = time.perf_counter() - start
print(json.dumps({"images": sum(report.splits.values()), "seconds": seconds, "partitions": report.partitions,
                  "processing": report.processing,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_build(config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(config)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["images_per_s"] = out["images"] / out["seconds"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["peak_rss_mb_with_workers"] = max(out["peak_rss_mb"], children)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "build"))
    parser.add_argument("--lost-and-found", dest="laf", type=int, default=3000)
    parser.add_argument("--tiles", type=int, default=5000)
    parser.add_argument("--num-proc", dest="num_proc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from geohf.data.samples import land_points, make_lost_and_found
    from geohf.geo.labelling import PointLabeller

    raw = out / f"lost-and-found-{args.laf}"
    if not raw.is_dir():
        start = time.perf_counter()
        make_lost_and_found(raw.with_suffix(".partial"), land_points(args.laf, PointLabeller(), seed=1))
        raw.with_suffix(".partial").rename(raw)
        print(f"generated {args.laf} lost-and-found pairs in {time.perf_counter() - start:.0f} s", flush=True)
    results = {"args": vars(args)}
    n_val = max(args.tiles // 10, 1)
    results["bluemarble"] = run_build(
        {
            "layout": "bluemarble",
            "output": str(out / "ds-bluemarble"),
            "overwrite": True,
            "tiles": {"train": args.tiles - 2 * n_val, "validation": n_val, "test": n_val},
            "cells": ["quadtree:max_samples=60,min_samples=15"],
        }
    )
    print(f"bluemarble: {results['bluemarble']['images_per_s']:.0f} images/s", flush=True)
    for n in args.num_proc:
        key = f"lost-and-found (num_proc={n})"
        results[key] = run_build(
            {
                "layout": "lost-and-found",
                "input": str(raw),
                "output": str(out / f"ds-laf-{n}"),
                "overwrite": True,
                "num_proc": n,
                "cells": ["semantic", "quadtree", "fishnet"],
            }
        )
        print(
            f"{key}: {results[key]['images_per_s']:.0f} images/s, peak {results[key]['peak_rss_mb']:.0f} MB, "
            f"cells {results[key]['partitions']}",
            flush=True,
        )
    (out / "build.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
