"""Peak memory, disk and search quality of ``geohf index build`` at 100k and 1M rows.

The model's forward on a million images is out of reach of a small machine, so the build after the
forward is measured on synthetic embedding batches (clustered, L2-normalised, as in benchmarks/retrieval.py)
with random coordinates whose cells come from a partition of ``--classes`` quadtree cells, one batch at a
time: what ``build_index`` does with each batch of ``GeoPredictor.iter_dataset`` (cells per batch, then
``write_index`` and ``GeoIndex.save``). ``--main DIR`` runs the same rows through the code of another
checkout (``build_index`` before the shards: one float16 array of every row, ``AnnIndex.build``, then
``GeoIndex.save``). Each build runs in its own process; its resident memory (anonymous and file-backed) is
sampled every 0.1 s. Then recall@10 and latency of the built index against exact search.

    python benchmarks/index_memory.py --rows 100000 1000000 [--main /path/to/main] [--cli-rows 3000]

``--cli-rows N`` also runs the real ``geohf index build`` on N synthetic images with a ``--classes`` head
(benchmarks/stream_memory.py's dataset and model), from this checkout and from ``--main``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 256


def batches(n: int, dim: int, seed: int = 1):
    """``(embeddings, latitude, longitude)`` batches of ``BATCH`` rows (as the forward yields them), made on the fly."""
    rng0 = np.random.default_rng(0)
    latent, centres = 32, 2000
    c = rng0.standard_normal((centres, latent), dtype=np.float32)
    w = rng0.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    rng = np.random.default_rng(seed)
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        z = c[rng.integers(0, centres, m)] + 0.5 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ w + 0.3 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim) * np.sqrt(latent)
        lat = np.rad2deg(np.arcsin(rng.uniform(-0.9, 0.95, m)))
        yield x, lat, rng.uniform(-180, 180, m)


def partition_file(out: Path, classes: int) -> Path:
    from geohf.geo.cells import fit_cells

    path = out / f"cells-{classes}.parquet"
    if not path.is_file():
        rng = np.random.default_rng(0)
        points = classes * 24
        lat = np.rad2deg(np.arcsin(rng.uniform(-0.9, 0.95, points)))
        partition = fit_cells("quadtree", lat, rng.uniform(-180, 180, points), max_samples=40)
        partition.save(path)
    return path


def child(args) -> None:
    """One build in this process (``--child new|main``), printing one JSON line."""
    from geohf.geo.cells import CellPartition

    partition = CellPartition.load(args.cells)
    folder = Path(args.folder)
    start = time.perf_counter()
    if args.child == "new":
        from geohf.inference.gallery import GalleryBatch
        from geohf.inference.retrieval import IndexInfo, write_index

        def rows():
            for x, lat, lon in batches(args.n, args.dim):
                yield GalleryBatch(x, lat, lon, np.asarray(partition.assign(lat, lon), dtype=np.int64))

        info = IndexInfo("synthetic", args.dim, "0" * 16, "haversine", len(partition), 0, args.search)
        index = write_index(rows(), info, folder, threads=args.threads)
        index.save(folder)
    else:  # the code before shards (another checkout): build_index's loop, then AnnIndex.build and save
        import torch

        from geohf.inference.retrieval import AnnIndex, GeoIndex, IndexInfo, normalise, resolve_search

        embeddings = torch.empty((args.n, args.dim), dtype=torch.float16)
        lat_all, lon_all, at = np.empty(args.n), np.empty(args.n), 0
        for x, lat, lon in batches(args.n, args.dim):
            embeddings[at : at + len(x)] = normalise(torch.from_numpy(x)).to(torch.float16)
            lat_all[at : at + len(x)], lon_all[at : at + len(x)] = lat, lon
            at += len(x)
        cells = np.asarray(partition.assign(lat_all, lon_all))  # gallery_cells: every row's cell at once
        kind = resolve_search(args.search, args.n)
        info = IndexInfo("synthetic", args.dim, "0" * 16, "haversine", len(partition), args.n, kind)
        ann = AnnIndex.build(kind, embeddings.numpy(), args.threads) if kind != "exact" else None
        GeoIndex(embeddings, lat_all, lon_all, cells, info, ann=ann).save(folder)
    import resource

    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def sample_rss(pid: int) -> tuple[int, int]:
    """``(anonymous, file-backed)`` resident bytes of a process, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values.get("RssAnon", 0), values.get("RssFile", 0)


def run(argv: list[str], env: dict, cwd: str | None = None) -> dict:
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total = peak_anon = peak_file = 0
    while proc.poll() is None:
        try:
            anon, file = sample_rss(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        peak_total, peak_anon, peak_file = max(peak_total, anon + file), max(peak_anon, anon), max(peak_file, file)
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{err[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result.update(peak_rss_mib=peak_total / 2**20, peak_anon_mib=peak_anon / 2**20, peak_file_mib=peak_file / 2**20)
    return result


def disk_mib(folder: Path) -> dict:
    sizes = {}
    for p in folder.iterdir():
        kind = "gallery" if p.name.startswith("gallery") else "ann" if p.name.startswith("ann") else "other"
        sizes[kind] = sizes.get(kind, 0) + p.stat().st_size / 2**20
    return sizes


def quality(folder: Path, dim: int, queries: int = 64, k: int = 10) -> dict:
    """Recall@k of the index's search against exact search over its own gallery, and latency."""
    import torch

    from geohf.inference.retrieval import GeoIndex, exact_search

    index = GeoIndex.load(folder)
    q = np.concatenate([x for x, _, _ in batches(queries, dim, seed=2)])
    q = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    vectors = index.vectors if index.vectors is not None else index.embeddings
    t = time.perf_counter()
    truth = exact_search(vectors, q, k)[1].numpy()
    exact_ms = 1000 * (time.perf_counter() - t)
    found = index.search(q, k)[1]
    timings = {}
    for name, batch in (("batch64_ms", q), ("single_ms", q[:1])):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            index.search(batch, k)
            times.append(1000 * (time.perf_counter() - t))
        timings[name] = float(np.median(times))
    recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
    return {"search": index.info.search, "recall10": recall, "exact_batch64_ms": exact_ms, **timings}


def cli_run(args, out: Path) -> dict:
    """The real ``geohf index build`` (forward included) on ``--cli-rows`` images with a ``--classes`` head."""
    sys.path.insert(0, str(HERE))
    from stream_memory import make_dataset, make_model

    data = make_dataset(out / f"cli-data-{args.cli_rows}", args.cli_rows)
    model = make_model(out / f"cli-model-{args.classes}", args.classes)
    results = {}
    for name, repo in (("new", str(HERE.parent)), ("main", args.main)):
        if repo is None:
            continue
        folder = out / f"cli-indexed-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(model, folder)
        env = {**os.environ, "PYTHONPATH": repo}
        code = "import sys; from geohf.cli import main; sys.exit(main())"
        argv = [sys.executable, "-c", code, "index", "build", "--model", str(folder), "--dataset", str(data),
                "--split", "train", "--tune-split", "none", "--search", "faiss"]  # fmt: skip
        t = time.perf_counter()
        results[name] = run(argv, env, cwd=repo)
        results[name]["seconds"] = time.perf_counter() - t
        print(json.dumps({"cli": name, **results[name]}), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--search", default="faiss")
    p.add_argument("--main", default=None, help="also run the builds with the code of this checkout")
    p.add_argument("--main-rows", type=int, nargs="*", default=None, help="rows for --main (default: --rows)")
    p.add_argument("--cli-rows", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="faiss threads (1: steadiest on a shared machine)")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--output", default="runs/bench/index_memory")
    p.add_argument("--child", choices=["new", "main"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--cells", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.child:
        return child(args)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cells = partition_file(out, args.classes)
    rows = []
    plan = [("new", n, str(HERE.parent)) for n in args.rows]
    if args.main:
        plan += [("main", n, args.main) for n in (args.main_rows if args.main_rows is not None else args.rows)]
    for code, n, repo in plan:
        folder = out / f"{code}-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        env = {**os.environ, "PYTHONPATH": repo}
        argv = [sys.executable, str(HERE / "index_memory.py"), "--child", code, "--n", str(n), "--folder", str(folder),
                "--cells", str(cells), "--dim", str(args.dim), "--search", args.search,
                "--threads", str(args.threads)]  # fmt: skip
        row = {"code": code, "rows": n, "dim": args.dim, "classes": args.classes, **run(argv, env, cwd=repo)}
        row["disk_mib"] = disk_mib(folder / "index")
        if code == "new" and not args.no_quality:
            row.update(quality(folder / "index", args.dim))
        print(json.dumps(row), flush=True)
        rows.append(row)
        if code == "new":
            shutil.rmtree(folder, ignore_errors=True)
    result = {"synthetic": rows}
    if args.cli_rows:
        result["cli"] = cli_run(args, out)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
