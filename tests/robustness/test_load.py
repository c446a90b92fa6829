"""Load and concurrency: ``geohf app`` under 20 concurrent clients; the pipeline from 4 threads."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]  # the clone: benchmarks/app_load.py

CLIENTS, PER_CLIENT, WARMUP = 20, 10, 6
FLAT_MB = 50  # growth allowed between the warm-up round and the end of the load
LOAD: dict = {}  # the load run's figures, for the memory test


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def tiles(tiny_dataset, tmp_path_factory) -> list[Path]:
    from datasets import load_dataset

    folder = tmp_path_factory.mktemp("load")
    paths = []
    for i, row in enumerate(load_dataset(str(tiny_dataset), split="test").select(range(CLIENTS))):
        paths.append(folder / f"tile{i}.png")
        row["image"].save(paths[-1])  # 32 px tiles
    return paths


def _clients(url: str) -> list:
    """``CLIENTS`` gradio_clients, one session each (made in parallel: each fetches the app's config)."""
    from gradio_client import Client

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda _: Client(url, verbose=False), range(CLIENTS)))


def _round(clients: list, tiles: list[Path], per_client: int) -> tuple[list[float], list[str]]:
    """Each client in its own thread, ``per_client`` predictions each: latencies, failures (the benchmark's round,
    ``benchmarks/app_load.py``, so the suite and the benchmark load the app the same way)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.app_load import load_round

    return load_round(clients, tiles, per_client)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_app_under_20_concurrent_clients(geohf_app, tiles, record):
    pid = geohf_app.pid
    # the same 20 sessions warm up and then carry the load: what grows after the warm-up is per request,
    # not per session (new sessions' state is bounded by --max-sessions, tested in tests/app)
    clients = _clients(geohf_app.url)
    warm_latencies, warm_failures = _round(clients, tiles, WARMUP)
    after_warmup = rss_mb(pid)
    samples: list[float] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        latencies, failures = _round(clients, tiles, PER_CLIENT)
    finally:
        done.set()
        sampler.join()
    wall = time.perf_counter() - start
    time.sleep(1.0)
    after = rss_mb(pid)
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies else (float("nan"), float("nan"))
    peak = max(samples + [after])
    n = CLIENTS * PER_CLIENT
    answered = not failures and not warm_failures and len(latencies) == n
    ok = answered and after - after_warmup < FLAT_MB
    LOAD.update(growth=after - after_warmup, answered=answered)
    record(
        "load",
        f"`geohf app`: {CLIENTS} concurrent clients x {PER_CLIENT} predictions (gradio_client threads, 32 px tiles)",
        "geohf app",
        f"no failed request; server memory flat (< {FLAT_MB} MB growth after the warm-up)",
        f"{len(latencies)}/{n} answered in {wall:.0f} s; p50 {p50:.2f} s, p95 {p95:.2f} s (queued, one at a time); "
        f"RSS {after_warmup:.0f} MB after warm-up, peak {peak:.0f}, {after:.0f} after ({after - after_warmup:+.0f})",
        ok,
    )
    print(f"load: p50 {p50:.3f} s p95 {p95:.3f} s peak RSS {peak:.0f} MB, {after_warmup:.0f} -> {after:.0f} MB")
    assert answered, (failures + warm_failures)[:5]


def test_app_memory_flat_under_load(geohf_app):
    if "growth" not in LOAD:
        pytest.fail("test_app_under_20_concurrent_clients did not run")
    assert LOAD["growth"] < FLAT_MB, f"RSS grew {LOAD['growth']:.0f} MB after the warm-up"


def _same_record(a: dict, b: dict) -> bool:
    """Equal records, coordinates to 1e-4 degrees (concurrent forwards may differ in the last float bits,
    which flips the fifth decimal of a rounded coordinate now and then)."""
    coords = ("pred_latitude", "pred_longitude")
    close = all(abs(a[k] - b[k]) <= 1e-4 for k in coords)
    return close and {k: v for k, v in a.items() if k not in coords} == {k: v for k, v in b.items() if k not in coords}


def test_pipeline_from_4_threads_matches_serial(tiny_model_dir, tiles, record):
    """One ``pipeline("image-geolocation")`` object called from 4 threads at once gives the serial results."""
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))

    geo = pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")
    inputs = [str(p) for p in tiles[:16]]
    serial = [geo(x, bf16=False) for x in inputs]
    barrier = threading.Barrier(4)

    def work(k: int) -> list:
        barrier.wait()
        return [geo(x, bf16=False) for x in inputs[k::4]]

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(work, range(4)))
    threaded = [None] * len(inputs)
    for k, part in enumerate(parts):
        threaded[k::4] = part
    same = all(_same_record(a, b) for a, b in zip(threaded, serial))
    record(
        "load",
        '`pipeline("image-geolocation")` called from 4 threads at once (16 images)',
        'pipeline("image-geolocation")',
        "the serial results",
        f"{sum(_same_record(a, b) for a, b in zip(threaded, serial))}/{len(inputs)} results the serial run's "
        "(coordinates to 1e-4 degrees)",
        same,
    )
    assert same
