"""``geohf predict --dataset --engine ray`` throughput on CPU: 1 model actor vs 2, side by side in one run.

Writes N Blue Marble tiles (64 px PNG) into a dataset folder in geohf's layout (``data/test-00000-of-00001.parquet``,
row groups of ``--row-group`` rows: a read task each), starts one local Ray with ``--cpus`` CPUs, and runs
:func:`geohf.inference.ray.predict_split_ray` with 1 actor (``--cpus`` torch threads) and with 2 actors (half the
threads each), interleaved for ``--rounds`` rounds. Each run is timed end to end (actor start and model load
included), and its model stage from the first batch an actor starts to the last one it ends (``model_img_per_s``:
the rate once the actors are up; actor start costs a fixed ~10-30 s here); its CPU-seconds are summed over this
process and every Ray process (sampled every 0.2 s, so a process that lives less than that is missed). Prints the
medians and writes JSON.

    python benchmarks/ray_predict.py --images 768 --rounds 3 --output benchmarks/ray_predict.json

The model is predict_throughput's (tf_efficientnet_lite0 at 96 px, ImageNet backbone weights, a random head).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.predict_throughput import make_model, make_tiles
from geohf.inference.ray import GeoPredictorUDF


class TimedUDF(GeoPredictorUDF):
    """:class:`GeoPredictorUDF` that appends each batch's start and end times to ``times`` (a JSON-lines file)."""

    times = ""

    def __call__(self, batch):
        start = time.time()
        out = super().__call__(batch)
        with open(self.times, "a", encoding="utf-8") as f:
            f.write(json.dumps([start, time.time(), len(batch["row"])]) + "\n")
        return out


def make_split(folder: Path, tiles: list[str], row_group: int, seed: int = 0) -> str:
    """A dataset folder with a ``test`` split of ``tiles`` (random coordinates as the truth)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n = len(tiles)
    table = pa.table(
        {
            "image": [{"bytes": Path(t).read_bytes(), "path": Path(t).name} for t in tiles],
            "latitude": rng.uniform(-60, 70, n),
            "longitude": rng.uniform(-180, 180, n),
        }
    )
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data" / "test-00000-of-00001.parquet", row_group_size=row_group)
    return str(folder)


class CpuSeconds:
    """CPU-seconds (user + system) of this process and all its descendants (Ray's raylet, workers, actors),
    sampled every ``interval`` seconds; each process counts from its first sample (or the start)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.root, self.interval = psutil.Process(), interval
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self):
        return [self.root, *self.root.children(recursive=True)]

    def _sample(self, first: bool = False) -> None:
        import psutil

        for p in self._processes():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            used = t.user + t.system
            if first:
                self.start[p.pid] = used
            self.start.setdefault(p.pid, 0.0)
            self.last[p.pid] = used

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSeconds:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.start[pid] for pid in self.last)


def run_once(model: str, dataset: str, out: Path, actors: int, cpus: int, batch_size: int) -> dict:
    from geohf.inference.ray import RayPredictOptions, predict_split_ray

    shutil.rmtree(out, ignore_errors=True)
    options = RayPredictOptions(
        batch_size=batch_size,
        actors=actors,
        actor_cpus=round(cpus / (2 * actors), 2),
        threads=max(1, cpus // actors),
        decode_cpus=0.25,
        predictor={"bf16": False},
    )
    times = out.with_name("times.jsonl")
    times.unlink(missing_ok=True)
    udf = type("TimedUDF", (TimedUDF,), {"times": str(times)})
    with CpuSeconds() as cpu:
        start = time.perf_counter()
        run = predict_split_ray(model, dataset, str(out), "test", options=options, udf=udf)
        wall = time.perf_counter() - start
    assert run.predicted == run.images and not run.errors
    batches = [json.loads(line) for line in times.read_text().splitlines()]
    model_s = max(b[1] for b in batches) - min(b[0] for b in batches)
    return {
        "actors": actors, "wall_s": wall, "img_per_s": run.predicted / wall, "model_img_per_s": run.predicted / model_s,
        "cpu_s": cpu.seconds,
    }  # fmt: skip


def summarise(runs: list[dict], images: int) -> dict[int, dict[str, float]]:
    """Per actor count, the medians of the runs' rates, wall time and CPU-seconds."""
    summary = {}
    for actors in (1, 2):
        mine = [x for x in runs if x["actors"] == actors]
        keys = ("img_per_s", "model_img_per_s", "wall_s", "cpu_s")
        summary[actors] = {key: statistics.median(x[key] for x in mine) for key in keys}
        summary[actors]["img_per_cpu_s"] = statistics.median(images / x["cpu_s"] for x in mine)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--row-group", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=None, help="a model folder (default: predict_throughput's)")
    parser.add_argument("--work", default=None, help="folder for tiles, dataset and model (default: a temp folder)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from geohf.engines import connect_ray

    work = Path(args.work or tempfile.mkdtemp(prefix="geohf-ray-predict-"))
    tiles = make_tiles(work / "tiles", args.images)
    dataset = make_split(work / "dataset", tiles, args.row_group)
    model = args.model or make_model(work / "model")
    connect_ray(None, num_cpus=args.cpus)
    runs = []
    for r in range(args.rounds):
        for actors in (1, 2):
            result = run_once(model, dataset, work / "out", actors, args.cpus, args.batch_size)
            runs.append({"round": r, **result})
            print(json.dumps(runs[-1]), flush=True)
    summary = summarise(runs, args.images)
    ratio = summary[2]["img_per_s"] / summary[1]["img_per_s"]
    model_ratio = summary[2]["model_img_per_s"] / summary[1]["model_img_per_s"]
    print(f"\n{args.images} images, {args.cpus} Ray CPUs, {args.rounds} rounds (medians; actor start included)")
    print("actors | img/s | model stage img/s | wall s | CPU-s | img per CPU-s")
    for actors, s in summary.items():
        rate, model_rate, wall, cpu = s["img_per_s"], s["model_img_per_s"], s["wall_s"], s["cpu_s"]
        print(f"{actors:>6} | {rate:5.1f} | {model_rate:17.1f} | {wall:6.1f} | {cpu:5.1f} | {s['img_per_cpu_s']:.2f}")
    print(f"2 actors / 1 actor: {ratio:.2f}x img/s end to end, {model_ratio:.2f}x in the model stage")
    result = {
        "images": args.images, "cpus": args.cpus, "runs": runs, "summary": summary, "ratio": ratio,
        "model_ratio": model_ratio,
    }  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
