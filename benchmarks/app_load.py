"""``geohf app`` under concurrent clients: latency (p50 / p95), peak server memory, growth after the warm-up.

    python benchmarks/app_load.py [--clients 50] [--requests 10] [--warmup 6] [--model DIR] [--diagnose]

Starts ``geohf app`` in its own process on 127.0.0.1 (the tiny Blue Marble model of the test suite, built
once into ``--workdir``, unless ``--model``), opens ``--clients`` gradio_client sessions, and has each predict
one 32-px tile ``--warmup`` times (the warm-up), then ``--requests`` times more while the server's resident
memory is sampled every 50 ms. Prints one JSON line: latencies of the load round, the server's RSS after the
warm-up, its peak, after the load (a second after the last answer) and the growth.

``--diagnose`` runs the server under a wrapper that reads glibc's ``mallinfo2`` (the malloc heap, mmapped
blocks, free memory malloc keeps), pymalloc's statistics (Python's own arenas) and counts Python objects by
type after the warm-up and after the load; ``--trace`` also traces Python allocations (``tracemalloc``) during
the load: what is still alive at its end, by line. Latencies are not comparable with either on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DIAGNOSE = r"""
import ctypes, gc, json, os, signal, sys, tempfile, tracemalloc
from collections import Counter
out, state = sys.argv[1], {}

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

def mallinfo():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    m = libc.mallinfo2()
    return {"heap_mb": m.arena / 2**20, "in_use_mb": m.uordblks / 2**20, "free_kept_mb": m.fordblks / 2**20,
            "mmapped_mb": m.hblkhd / 2**20, "mmapped_blocks": m.hblks}

def pymalloc():
    fd, tmp = os.dup(2), tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(fd, 2)
    tmp.seek(0)
    stats = dict(line.split("=") for line in tmp.read().decode().splitlines() if line.startswith("# ") and "=" in line)
    value = lambda key: int(stats[key].strip().replace(",", ""))
    return {"arenas_mb": value("# arenas allocated current         ") * (1 if sys.version_info >= (3, 10) else 0.25),
            "objects_mb": value("# bytes in allocated blocks        ") / 2**20,
            "pool_free_mb": value("# bytes in available blocks        ") / 2**20}

def dump(signum, frame):
    # with --trace, the first signal (after the warm-up) starts tracing: what the second finds traced was
    # allocated during the load and is still alive
    gc.collect()
    types = Counter(type(o).__name__ for o in gc.get_objects())
    entry = {"malloc": mallinfo(), "pymalloc": pymalloc(), "objects": sum(types.values())}
    if "types" in state:
        entry["top_types"] = sorted(((k, v - state["types"].get(k, 0)) for k, v in types.items()),
                                    key=lambda kv: -kv[1])[:8]
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        entry["python_alive_from_load_mb"] = sum(s.size for s in snap.statistics("filename")) / 2**20
        entry["top_lines"] = [str(s) for s in snap.statistics("traceback")[:8]]
    elif os.environ.get("GEOHF_TRACE"):
        tracemalloc.start(5)
    state["types"] = types
    with open(out, "a") as f:
        f.write(json.dumps(entry) + "\n")

signal.signal(signal.SIGUSR1, dump)
sys.argv = ["geohf", *sys.argv[2:]]
from geohf.cli import main
sys.exit(main())
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tiny_model(workdir: Path) -> tuple[Path, Path]:
    """The test suite's tiny model: 200 Blue Marble tiles, 2 training steps (built once)."""
    from geohf.data.bluemarble import TileSpec, build_bluemarble
    from geohf.data.transforms import AugmentConfig
    from geohf.geo.boundaries import resolve_boundaries
    from geohf.training.train import DataArguments, ModelArguments, run_training
    from geohf.training.trainer import GeoTrainingArguments

    data, model = workdir / "bluemarble", workdir / "model"
    if not (data / "README.md").is_file():
        build_bluemarble(
            data,
            {"train": 160, "validation": 20, "test": 20},
            TileSpec(tile_px=32, block_px=64, seed=0),
            cells=["quadtree:max_samples=20,min_samples=4"],
            boundaries=str(resolve_boundaries(None)),
        )
    if not (model / "config.json").is_file():
        args = GeoTrainingArguments(
            output_dir=str(model),
            max_steps=2,
            per_device_train_batch_size=8,
            use_cpu=True,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        run_training(
            ModelArguments(image_size=32, crop_pct=1.0), DataArguments(dataset=str(data)), AugmentConfig(), args
        )
    return model, data


def tiles(data: Path, folder: Path, n: int) -> list[Path]:
    from datasets import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    rows = load_dataset(str(data), split="test")
    paths = []
    for i in range(n):
        paths.append(folder / f"tile{i}.png")
        if not paths[-1].is_file():
            rows[i % len(rows)]["image"].save(paths[-1])
    return paths


def start_app(model: Path, workdir: Path, diagnose: Path | None, trace: bool = False) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["app", "--model", str(model), "--port", str(port)]
    if diagnose is not None:
        wrapper = workdir / "diagnose_app.py"
        wrapper.write_text(DIAGNOSE)
        command = [sys.executable, str(wrapper), str(diagnose), *argv]
    else:
        command = [sys.executable, "-m", "geohf.cli", *argv]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if trace:
        env["GEOHF_TRACE"] = "1"
    log = open(workdir / "app.log", "wb")  # noqa: SIM115 - the server's own log, kept for a failed start
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"geohf app did not start:\n{(workdir / 'app.log').read_text()[-3000:]}") from None
            time.sleep(0.5)


def wait_for_line(report: Path, n: int, timeout: float = 300.0) -> None:
    """Until the server has written its ``n``-th diagnosis line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if report.is_file() and len(report.read_text().splitlines()) >= n:
            return
        time.sleep(0.5)


def load_round(clients: list, tiles: list[Path], per_client: int) -> tuple[list[float], list[str]]:
    """Every client in its own thread, ``per_client`` predictions each: latencies in s, failures."""
    from gradio_client import handle_file

    latencies, failures, lock = [], [], threading.Lock()

    def run(i: int) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            try:
                out = clients[i].predict([handle_file(str(tiles[i % len(tiles)]))], api_name="/predict")
                assert -90 <= out[4]["pred_latitude"] <= 90
            except Exception as err:  # noqa: BLE001 - counted and shown
                with lock:
                    failures.append(f"client {i}: {type(err).__name__}: {err}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, range(len(clients))))
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10, help="predictions per client after the warm-up")
    parser.add_argument("--warmup", type=int, default=6, help="predictions per client before the measure")
    parser.add_argument("--model", type=Path, default=None, help="default: the tiny test model, built once")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "geohf-app-load")
    parser.add_argument("--diagnose", action="store_true", help="mallinfo2 and pymalloc statistics in the server")
    parser.add_argument("--trace", action="store_true", help="with --diagnose: tracemalloc during the load (slow)")
    args = parser.parse_args()
    from gradio_client import Client

    args.workdir.mkdir(parents=True, exist_ok=True)
    model, data = (args.model, None) if args.model else tiny_model(args.workdir)
    images = tiles(data or (args.workdir / "bluemarble"), args.workdir / "tiles", min(args.clients, 20))
    report = args.workdir / "diagnose.jsonl" if args.diagnose else None
    if report is not None:
        report.unlink(missing_ok=True)
    proc, url = start_app(model, args.workdir, report, args.trace)
    try:
        started = rss_mb(proc.pid)
        with ThreadPoolExecutor(min(args.clients, 20)) as pool:
            clients = list(pool.map(lambda _: Client(url, verbose=False), range(args.clients)))
        warm, warm_failures = load_round(clients, images, args.warmup)
        time.sleep(1.0)
        dumps = 0
        if report is not None:
            proc.send_signal(signal.SIGUSR1)
            wait_for_line(report, dumps := dumps + 1)
        after_warmup = rss_mb(proc.pid)
        samples, done = [], threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(rss_mb(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        latencies, failures = load_round(clients, images, args.requests)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        time.sleep(1.0)
        after = rss_mb(proc.pid)
        if report is not None:
            proc.send_signal(signal.SIGUSR1)
            wait_for_line(report, dumps := dumps + 1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"),) * 2
    result = {
        "clients": args.clients,
        "requests": len(latencies),
        "failures": len(failures) + len(warm_failures),
        "wall_s": round(wall, 1),
        "throughput_per_s": round(len(latencies) / wall, 2),
        "p50_s": round(float(p50), 3),
        "p95_s": round(float(p95), 3),
        "max_s": round(max(latencies), 3) if latencies else None,
        "warmup_p50_s": round(float(np.median(warm)), 3) if warm else None,
        "rss_started_mb": round(started),
        "rss_after_warmup_mb": round(after_warmup),
        "rss_peak_mb": round(max([*samples, after])),
        "rss_after_mb": round(after),
        "growth_mb": round(after - after_warmup, 1),
    }
    print(json.dumps(result))
    for line in (failures + warm_failures)[:5]:
        print(line, file=sys.stderr)
    if report is not None and report.is_file():
        for entry in map(json.loads, report.read_text().splitlines()):
            print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
