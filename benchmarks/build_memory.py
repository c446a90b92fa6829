"""Memory curve of a big ``geohf dataset build``: resident memory against images processed.

    python benchmarks/build_memory.py --images 1000000 [--num-proc 1] [--engine local|ray]
                                      [--cells quadtree] [--allocator build|default]

Generates an ``imagefolder`` layout of N tiny images (32×32 JPEG noise, ~1.5 KB, which pass
every filter) with a ``metadata.csv`` of land coordinates (10k random land points, jittered by
~1 km so no two coincide), then runs the build in a child process that samples its own
resident memory (the driver's) and that of its largest worker (a ``--num-proc`` process or a Ray
task's worker; psutil, every 0.25 s) together with the stage it is in and how many images it has
checked and written (``--engine ray``: Ray is started before the clock, with ``--num-proc`` CPUs). The
child applies the allocator settings ``geohf dataset build`` applies (``--allocator default``: the library's).
Writes ``memory.json`` (the samples, RSS at 10%…100% of the images written, the peak per stage)
and ``memory.png`` (the curve).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import psutil
import geohf.data.stages as pipeline, geohf.data.build as build, geohf.data.execute as execute
from geohf.data.stages import BuildConfig, build_dataset

cfg_dict, samples_path = json.loads(sys.argv[1]), sys.argv[2]
if cfg_dict.pop("allocator", "build") == "build":  # what geohf dataset build sets (geohf.malloc.BUILD)
    from geohf.malloc import use_build_allocators
    use_build_allocators()
if cfg_dict.get("engine") == "ray":  # started before the clock, as a cluster would be
    import ray
    ray.init(num_cpus=max(cfg_dict.get("num_proc", 1), 1), include_dashboard=False, log_to_driver=False)
state = {"stage": "start", "checked": 0, "written": 0}
me = psutil.Process()

def rss() -> tuple[int, int]:
    # (the driver's own RSS, the largest worker's: a --num-proc process or a Ray task's worker)
    worker = 0
    for child in me.children(recursive=True):
        try:
            name = " ".join(child.cmdline()[:1])
            if name.startswith("ray::") or "multiprocessing" in " ".join(child.cmdline()):
                worker = max(worker, child.memory_info().rss)
        except psutil.Error:
            pass
    return me.memory_info().rss, worker

def staged(name, fn):
    def wrapper(*a, **k):
        state["stage"] = name
        return fn(*a, **k)
    return wrapper

for mod, name in ((pipeline, "read_layout"), (pipeline, "validate_coordinates"),
                  (pipeline, "drop_duplicate_locations"), (pipeline, "assign_splits"),
                  (build, "fit_partitions"), (build, "run_blocks")):
    setattr(mod, name, staged(name, getattr(mod, name)))
results = execute._engine_results
def counted_results(*args):
    for result in results(*args):
        state["written"] += result.rows
        state["checked"] += result.rows + len(result.skips)
        yield result
execute._engine_results = counted_results

samples, start, done = [], time.perf_counter(), threading.Event()
def sample():  # every 0.25 s; the samples so far are saved every 10 s, so a run cut short still tells
    last = time.perf_counter()
    while not done.is_set():
        now = round(time.perf_counter() - start, 2)
        driver, worker = rss()
        samples.append([now, driver, state["stage"], state["checked"], state["written"], worker])
        if time.perf_counter() - last > 10:
            Path(samples_path + ".partial").write_text(json.dumps({"samples": samples}))
            last = time.perf_counter()
        done.wait(0.25)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
report = build_dataset(BuildConfig(**cfg_dict))
done.set(); thread.join()
driver, worker = rss()
samples.append([round(time.perf_counter() - start, 2), driver, "done", state["checked"], state["written"], worker])
Path(samples_path).write_text(json.dumps({"samples": samples, "splits": report.splits,
                                          "processing": report.processing, "partitions": report.partitions,
                                          "seconds": time.perf_counter() - start}))
"""


def generate(root: Path, n: int, seed: int = 0) -> Path:
    """An imagefolder of ``n`` 32×32 JPEGs (256 distinct noise images, each written as its own file)."""
    import io

    import pandas as pd
    from PIL import Image

    from geohf.data.samples import land_points
    from geohf.geo.labelling import PointLabeller

    done = root / "metadata.csv"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(256):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
        blobs.append(buf.getvalue())
    base = land_points(min(n, 10_000), PointLabeller(), seed=seed + 1)
    pick = np.where(np.arange(n) < len(base), np.arange(n) % len(base), rng.integers(0, len(base), n))
    lat = base["latitude"].to_numpy()[pick] + np.where(np.arange(n) < len(base), 0, rng.normal(0, 0.01, n))
    lon = base["longitude"].to_numpy()[pick] + np.where(np.arange(n) < len(base), 0, rng.normal(0, 0.01, n))
    names = [f"images/{i // 1000:04d}/img_{i:07d}.jpg" for i in range(n)]
    start = time.perf_counter()
    for i, name in enumerate(names):
        if i % 1000 == 0:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blobs[i % 256])
    pd.DataFrame({"file_name": names, "latitude": lat, "longitude": lon}).to_csv(root / "metadata.csv.tmp", index=False)
    os.replace(root / "metadata.csv.tmp", done)
    print(f"generated {n:,} images in {time.perf_counter() - start:.0f} s", flush=True)
    return root


def summarize(samples: list, n_images: int) -> dict:
    """RSS at each 10% of the images written (then, and the peak until then), and the peak per stage (MB)."""
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    written = np.array([s[4] for s in samples])
    rss = np.array([s[1] for s in samples])
    total = max(int(written.max()), 1)
    curve = {}
    for pct in range(10, 101, 10):
        reached = np.flatnonzero(written >= total * pct / 100)
        if reached.size:
            i = reached[0]
            curve[f"{pct}%"] = {
                "written": int(written[i]),
                "rss_mb": mb(rss[i]),
                "peak_so_far_mb": mb(rss[: i + 1].max()),
            }
    stages: dict[str, float] = {}
    for s in samples:
        stages[s[2]] = max(stages.get(s[2], 0.0), mb(s[1]))
    return {
        "images": n_images,
        "written": total,
        "peak_rss_mb": mb(rss.max()),
        "peak_worker_rss_mb": mb(max(s[5] for s in samples)),
        "curve_written": curve,
        "peak_by_stage_mb": stages,
    }


def plot(samples: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples]) / 2**20
    checked = np.array([s[3] for s in samples])
    written = np.array([s[4] for s in samples])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.plot(t, rss, lw=1)
    a.set_xlabel("seconds")
    a.set_ylabel("RSS of the driver (MB)")
    for stage in dict.fromkeys(s[2] for s in samples):
        first = next(s[0] for s in samples if s[2] == stage)
        a.axvline(first, color="grey", lw=0.5)
        a.text(first, rss.max() * 0.98, stage, rotation=90, fontsize=7, va="top")
    a.set_title(title)
    progress = checked + written
    b.plot(progress, rss, lw=1)
    b.set_xlabel("images checked + written (2 × N at the end)")
    b.set_ylabel("RSS (MB)")
    b.set_ylim(0, rss.max() * 1.1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench" / "build-memory"))
    parser.add_argument("--num-proc", dest="num_proc", type=int, default=1)
    parser.add_argument("--cells", nargs="+", default=["quadtree"])
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument(
        "--allocator",
        default="build",
        choices=["build", "default"],
        help="build: the allocator settings geohf dataset build applies; default: the library's",
    )
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    raw = generate(out / f"raw-{args.images}", args.images)
    cfg = {
        "layout": "imagefolder",
        "input": str(raw),
        "output": str(out / f"ds-{args.images}"),
        "overwrite": True,
        "num_proc": args.num_proc,
        "cells": args.cells,
        "engine": args.engine,
        "allocator": args.allocator,
    }
    tag = f"{args.images}-{args.engine}-np{args.num_proc}" + ("" if args.allocator == "build" else "-default")
    samples_path = out / f"samples-{tag}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(samples_path)], env=env)
    if proc.returncode:
        raise SystemExit(f"build failed (exit {proc.returncode})")
    run = json.loads(samples_path.read_text())
    result = {
        "args": vars(args),
        **summarize(run["samples"], args.images),
        "seconds": round(run["seconds"], 1),
        "images_per_s": round(sum(run["splits"].values()) / run["seconds"], 1),
        "splits": run["splits"],
        "processing": run["processing"],
        "partitions": run["partitions"],
    }
    (out / f"memory-{tag}.json").write_text(json.dumps({**result, "samples": run["samples"]}))
    plot(run["samples"], out / f"memory-{tag}.png", f"geohf dataset build, {args.images:,} images")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
