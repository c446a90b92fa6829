"""Nearest-neighbour search for retrieval refinement: exact matmul vs faiss-cpu vs usearch.

Synthetic embeddings (clustered: random centres plus noise, L2-normalised, so the neighbours are
meaningful; the numbers are about speed and size, not about geolocation): for each gallery size
and dimension, build time, index size, query latency for a batch of 64 and for 1 query,
recall@10 against exact search, and the peak resident memory of the process after the build.

    nice -n 10 python benchmarks/retrieval.py --sizes 10000 100000 1000000 --dims 1280 512

HNSW builds grow with n·log n and the dimension: ``--max-build-s`` skips an ANN build whose time,
projected linearly from the previous size, exceeds it (reported as skipped with the projection, never
filled in). ``--backends faiss`` measures one backend only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(n: int, dim: int, seed: int = 0, latent: int = 32, centres: int = 2000) -> np.ndarray:
    """``n`` L2-normalised float16 embeddings: clusters in a ``latent``-d space mapped linearly to ``dim``
    (low intrinsic dimension, as learned embeddings have) plus a little isotropic noise; made in chunks."""
    rng = np.random.default_rng(0)  # the same centres and map for the gallery and the queries
    c = rng.standard_normal((centres, latent), dtype=np.float32)
    w = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        z = c[rng.integers(0, centres, m)] + 0.5 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ w + 0.3 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim) * np.sqrt(latent)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 3) -> float:
    """Median seconds of ``repeat`` calls after one warm-up (one call when the warm-up took over 2 s)."""
    t = time.perf_counter()
    fn()
    repeat = 1 if time.perf_counter() - t > 2 else repeat
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def measure(n: int, dim: int, args, rate: dict[str, float], k: int = 10) -> list[dict]:
    """The rows of one gallery size and dimension: exact search, then each ANN backend."""
    import torch

    from geohf.inference.retrieval import AUTO_ANN_FROM, AnnIndex, exact_search

    gallery = synthetic(n, dim, seed=1)
    queries = synthetic(64, dim, seed=2).astype(np.float32)
    # what GeoIndex searches: a float32 copy below AUTO_ANN_FROM, float16 chunks above it
    tensor = torch.from_numpy(gallery).float() if n < AUTO_ANN_FROM else torch.from_numpy(gallery)
    q64, q1 = torch.from_numpy(queries), torch.from_numpy(queries[:1])
    truth = exact_search(tensor, q64, k)[1].numpy()
    row = {"n": n, "dim": dim, "backend": "exact", "build_s": 0.0, "size_mb": gallery.nbytes / 2**20}  # float16
    row["batch64_ms"] = 1000 * timed(lambda: exact_search(tensor, q64, k))
    row["single_ms"] = 1000 * timed(lambda: exact_search(tensor, q1, k), 10)
    row["recall10"], row["peak_mb"] = 1.0, peak_mb()
    print(json.dumps(row), flush=True)
    rows = [row]
    for backend in args.backends:
        projected = rate.get(backend, 0.0) * n * 1.2
        if projected > args.max_build_s:
            row = {"n": n, "dim": dim, "backend": backend, "skipped": f"build projected {projected:.0f} s"}
            print(json.dumps(row), flush=True)
            rows.append(row)
            continue
        t = time.perf_counter()
        index = AnnIndex.build(backend, gallery, threads=args.threads)
        build = time.perf_counter() - t
        rate[backend] = build / n
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "ann")
            index.save(path)
            size = path.stat().st_size / 2**20
        found = index.search(queries, k)[1]
        row = {"n": n, "dim": dim, "backend": backend, "build_s": build, "size_mb": size}
        row["batch64_ms"] = 1000 * timed(lambda index=index: index.search(queries, k))
        row["single_ms"] = 1000 * timed(lambda index=index: index.search(queries[:1], k), 10)
        row["recall10"], row["peak_mb"] = recall(found, truth), peak_mb()
        print(json.dumps(row), flush=True)
        rows.append(row)
        del index
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 512])
    parser.add_argument("--max-build-s", type=float, default=90.0, help="skip ANN builds projected to take longer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["faiss", "usearch"], help="ANN backends to measure")
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for dim in args.dims:
        rate: dict[str, float] = {}  # seconds per vector of the last ANN build, per backend
        for n in args.sizes:
            rows += measure(n, dim, args, rate)
    print()
    print("| n | dim | search | build s | size MB | batch 64 ms | 1 query ms | recall@10 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['n']:,} | {r['dim']} | {r['backend']} | {r['skipped']} | | | | | |")
            continue
        print(
            f"| {r['n']:,} | {r['dim']} | {r['backend']} | {r['build_s']:.1f} | {r['size_mb']:.0f} | "
            f"{r['batch64_ms']:.1f} | {r['single_ms']:.2f} | {r['recall10']:.3f} | {r['peak_mb']:,.0f} |"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
