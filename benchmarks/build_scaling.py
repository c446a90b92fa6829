"""Build throughput with 1 and 2 workers, local processes and Ray, measured side by side in one run.

    python benchmarks/build_scaling.py [--images 1500] [--repeats 3]

Builds one lost-and-found folder of generated street-size images (320×180 PNG crops of Blue Marble
at their true coordinates, every filter on) with each engine and worker count, the configurations
interleaved and repeated, each build in its own process; reports the median images/s of each, the
2-worker / 1-worker ratio of each engine, images per CPU-second (the build's process, its finished
workers and its live descendants: Ray's workers and daemons) and the plan stage's share of the time. Ray is started,
and its workers import geohf, before the clock starts (that time is reported beside); the local
engine's worker processes start within the build, as they do for a user. The geocell / boundary cache is filled
by a first build that is not timed. The unit of parallel work is a block (one Parquet file of the
plan); ``--rows-per-file`` keeps the small set's blocks many, as a large set's are (a split of 40k
rows or more has at least 8 files at the default 5,000 rows per file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import json, sys, time
cfg, workers = json.loads(sys.argv[1]), int(sys.argv[2])
ray_start = 0.0
if cfg.get("engine") == "ray":
    import ray
    t = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    # a cluster's workers are long-lived: have each import geohf before the clock starts
    warm = ray.remote(num_cpus=1)(lambda: __import__("geohf.data.blocks") and 0)
    ray.get([warm.remote() for _ in range(2 * workers)])
    ray_start = time.perf_counter() - t
import geohf.data.stages as stages
from geohf.data.stages import BuildConfig, build_dataset
plan_seconds = []
plan_build = stages.plan_build
def timed_plan(c):
    t = time.perf_counter()
    out = plan_build(c)
    plan_seconds.append(time.perf_counter() - t)
    return out
stages.plan_build = timed_plan
import resource, psutil
def cpu():  # this process, its finished workers (--num-proc) and its live descendants (Ray's workers and daemons)
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    done = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))
    live = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            live += t.user + t.system
        except psutil.Error:
            pass
    return done + live
start, cpu_start = time.perf_counter(), cpu()
report = build_dataset(BuildConfig(**cfg))
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
print(json.dumps({"images": sum(report.splits.values()), "seconds": seconds, "plan_seconds": plan_seconds[0],
                  "ray_start_seconds": ray_start, "cpu_seconds": cpu_seconds}))
"""


def run(cfg: dict, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(cfg), str(workers)], capture_output=True,
                          text=True, env=env, timeout=900)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["images_per_s"] = out["images"] / out["seconds"]
    out["images_per_cpu_s"] = out["images"] / out["cpu_seconds"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "build-scaling"))
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument(
        "--rows-per-file", dest="rows_per_file", type=int, default=50,
        help="a block (one Parquet file) is the unit of work: small files here so a small set has many blocks, "
        "as a large set has with the default 5,000",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GEOHF_CACHE"] = str(out / "cache")
    sys.path.insert(0, str(ROOT))
    from geohf.data.samples import land_points, make_lost_and_found
    from geohf.geo.labelling import PointLabeller

    raw = out / f"lost-and-found-{args.images}"
    if not raw.is_dir():
        make_lost_and_found(raw.with_suffix(".partial"), land_points(args.images, PointLabeller(), seed=1))
        raw.with_suffix(".partial").rename(raw)

    def cfg(engine: str, workers: int) -> dict:
        return {"layout": "lost-and-found", "input": str(raw), "output": str(out / f"ds-{engine}-{workers}"),
                "overwrite": True, "num_proc": workers, "engine": engine, "cells": ["quadtree"],
                "rows_per_file": args.rows_per_file}  # fmt: skip

    run(cfg("local", 1), 1)  # fills the cache; not timed
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for engine in args.engines:
            for workers in (1, 2):
                r = run(cfg(engine, workers), workers)
                runs.setdefault(f"{engine}, {workers} worker(s)", []).append(r)
                print(f"{engine} x{workers}: {r['images_per_s']:.1f} img/s ({r['seconds']:.1f} s, plan "
                      f"{r['plan_seconds']:.1f} s, {r['images_per_cpu_s']:.1f} img per CPU-s)", flush=True)  # fmt: skip
    summary = {}
    for key, rs in runs.items():
        summary[key] = {
            "median_images_per_s": round(statistics.median(r["images_per_s"] for r in rs), 1),
            "all_images_per_s": [round(r["images_per_s"], 1) for r in rs],
            "median_images_per_cpu_s": round(statistics.median(r["images_per_cpu_s"] for r in rs), 1),
            "median_plan_share": round(statistics.median(r["plan_seconds"] / r["seconds"] for r in rs), 3),
            "median_ray_start_s": round(statistics.median(r["ray_start_seconds"] for r in rs), 1),
        }
    ratios = {}
    for engine in args.engines:
        one = summary[f"{engine}, 1 worker(s)"]["median_images_per_s"]
        two = summary[f"{engine}, 2 worker(s)"]["median_images_per_s"]
        ratios[engine] = round(two / one, 2)
    result = {"args": vars(args), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "runs": summary,
              "ratio_2_over_1": ratios, "when": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"runs": summary, "ratio_2_over_1": ratios, "load_avg_at_end": os.getloadavg()}, indent=2))
    return result


if __name__ == "__main__":
    main()
