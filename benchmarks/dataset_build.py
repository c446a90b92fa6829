"""Dataset building: images/s and peak memory per layout, each build in its own process.

    python benchmarks/dataset_build.py [--lost-and-found 3000] [--tiles 5000] [--num-proc 1 2]
    python benchmarks/dataset_build.py --rss 5000 20000   # peak memory against size only

Builds (1) the Blue Marble tiles and (2) a lost-and-found folder of generated street-size
images (320×180 PNG crops of Blue Marble at their true coordinates), with every filter on,
and reports images/s (wall clock, and per CPU-second of the building process: shared machines
steal wall time), the peak resident memory of the building process, and the goal beside it.

The first lost-and-found build runs with an empty geohf cache (``$GEOHF_CACHE`` points at a
folder of the benchmark's own), so it pays the one-time fishnet / admin-1 tile work; the
timed builds after it find that work in the cache, as every build after the first on a
machine does. ``--rss N ...`` builds lost-and-found folders of N images made from the
generated ones (hard links, coordinates jittered by ~1 km so none is a duplicate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_IMAGES_PER_S = 150.0  # lost-and-found, 320x180 PNG + JSON, every filter, --num-proc 1

BUILD = """
import json, resource, sys, time
from geohf.data.stages import BuildConfig, build_dataset
cfg = BuildConfig(**json.loads(sys.argv[1]))
def cpu():  # this process and its finished workers (--num-proc)
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))
start, cpu_start = time.perf_counter(), cpu()
report = build_dataset(cfg)
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
print(json.dumps({"images": sum(report.splits.values()), "seconds": seconds, "cpu_seconds": cpu_seconds,
                  "partitions": report.partitions, "processing": report.processing,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_build(config: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(config)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["images_per_s"] = out["images"] / out["seconds"]
    out["images_per_cpu_s"] = out["images"] / out["cpu_seconds"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["peak_rss_mb_with_workers"] = max(out["peak_rss_mb"], children)
    return out


def replicate(raw: Path, n: int, seed: int = 0) -> Path:
    """A lost-and-found folder of ``n`` pairs made from ``raw``'s: images hard-linked, coordinates jittered."""
    target = raw.parent / f"{raw.name}-x{n}"
    if target.is_dir():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    sources = sorted(raw.glob("location_*.json"))
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = sources[i % len(sources)]
        meta = json.loads(src.read_text())
        if i >= len(sources):
            lat, lon = meta["coordinates"]
            meta["coordinates"] = [lat + rng.normal(0, 0.01), lon + rng.normal(0, 0.01)]
        (partial / f"location_{i}.json").write_text(json.dumps(meta))
        try:
            os.link(src.with_suffix(".png"), partial / f"location_{i}.png")
        except OSError:
            shutil.copyfile(src.with_suffix(".png"), partial / f"location_{i}.png")
    partial.rename(target)
    return target


def laf_config(raw: Path, output: Path, num_proc: int) -> dict:
    return {
        "layout": "lost-and-found",
        "input": str(raw),
        "output": str(output),
        "overwrite": True,
        "num_proc": num_proc,
        "cells": ["semantic", "quadtree", "fishnet"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "build"))
    parser.add_argument("--lost-and-found", dest="laf", type=int, default=3000)
    parser.add_argument("--tiles", type=int, default=5000)
    parser.add_argument("--num-proc", dest="num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rss", type=int, nargs="+", default=None, help="only peak memory at these sizes")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GEOHF_CACHE"] = str(out / "cache")
    shutil.rmtree(out / "cache", ignore_errors=True)
    sys.path.insert(0, str(ROOT))
    from geohf.data.samples import land_points, make_lost_and_found
    from geohf.geo.labelling import PointLabeller

    raw = out / f"lost-and-found-{args.laf}"
    if not raw.is_dir():
        start = time.perf_counter()
        make_lost_and_found(raw.with_suffix(".partial"), land_points(args.laf, PointLabeller(), seed=1))
        raw.with_suffix(".partial").rename(raw)
        print(f"generated {args.laf} lost-and-found pairs in {time.perf_counter() - start:.0f} s", flush=True)
    results = {"args": vars(args), "goal_images_per_s": GOAL_IMAGES_PER_S}
    if args.rss:
        run_build(laf_config(raw, out / "ds-rss", 1))  # fill the cache first
        for n in args.rss:
            r = results[f"rss {n}"] = run_build(laf_config(replicate(raw, n), out / "ds-rss", 1))
            print(
                f"{n:,} pairs: {r['images']:,} images, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                f"{r['images_per_s']:.0f} img/s",
                flush=True,
            )
        (out / "build-rss.json").write_text(json.dumps(results, indent=2))
        return results
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
    shutil.rmtree(out / "cache", ignore_errors=True)  # the first lost-and-found build fills the cache
    first = results["lost-and-found, first build (empty cache, num_proc=1)"] = run_build(
        laf_config(raw, out / "ds-laf-first", 1)
    )
    print(f"lost-and-found, first build with an empty cache: {first['images_per_s']:.0f} images/s", flush=True)
    for n in args.num_proc:
        key = f"lost-and-found (num_proc={n})"
        r = results[key] = run_build(laf_config(raw, out / f"ds-laf-{n}", n))
        goal = ""
        if n == 1:
            r["goal_images_per_s"] = GOAL_IMAGES_PER_S
            r["meets_goal"] = r["images_per_s"] >= GOAL_IMAGES_PER_S
            goal = f" (goal >= {GOAL_IMAGES_PER_S:g}: {'met' if r['meets_goal'] else 'MISSED'})"
        print(
            f"{key}: {r['images_per_s']:.0f} images/s{goal}, {r['images_per_cpu_s']:.0f} per CPU-second, "
            f"peak {r['peak_rss_mb']:.0f} MB, cells {r['partitions']}",
            flush=True,
        )
    (out / "build.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
