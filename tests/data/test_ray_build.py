"""``geohf dataset build`` / ``import`` with ``--engine ray``: the same folder as the local engine (rows, splits,
cells, skip list, card counts), on the robustness corpus and a lost-and-found set with bad files; a worker killed
mid-build (Ray, or a ``--num-proc`` process) changes nothing.

Ray runs locally (the session's ``ray_local`` fixture: 2 CPUs); each build runs under a bound.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from PIL import Image

from geohf.cli import main
from geohf.data.samples import land_points, make_lost_and_found

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the clone's root: tests.robustness.corpus
from tests.robustness.corpus import write_image_cases  # noqa: E402

pytest.importorskip("ray")

CELLS = ["quadtree:max_samples=20,min_samples=3"]
BOUND_S = 240


def _run(argv: list[str]) -> int:
    """``geohf`` in a thread with a bound: a build that hangs fails the test instead of waiting forever."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(main, argv).result(timeout=BOUND_S)


def _rows(folder: Path) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as cache:  # the datasets cache keys a local folder by name and card only
        ds = load_dataset(str(folder), cache_dir=cache)
        frames = [ds[s].to_pandas().assign(split=s) for s in ds]
    frame = pd.concat(frames).sort_values("source_file").reset_index(drop=True)
    frame["image"] = [img["bytes"] for img in frame["image"]]
    return frame


def _skipped(folder: Path) -> list[dict]:
    path = folder / "skipped.csv"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_same_folder(local: Path, ray: Path) -> None:
    """Same rows (image bytes included), splits, cells, skip list, files, report counts and card."""
    pd.testing.assert_frame_equal(_rows(local), _rows(ray))
    assert _skipped(local) == _skipped(ray)
    files = sorted(p.name for p in (local / "data").glob("*.parquet"))
    assert files == sorted(p.name for p in (ray / "data").glob("*.parquet")) and files
    for name in files:  # the same rows in the same file, in the same order
        a = pq.read_table(local / "data" / name, columns=["source_file"]).column(0).to_pylist()
        assert a == pq.read_table(ray / "data" / name, columns=["source_file"]).column(0).to_pylist()
    a, b = (json.loads((f / "build_report.json").read_text()) for f in (local, ray))
    for key in ("splits", "processing", "labelling", "partitions"):
        assert a[key] == b[key], key
    for name in (p.name for p in (local / "cells").glob("*.parquet")):
        assert (local / "cells" / name).read_bytes() == (ray / "cells" / name).read_bytes()
    card = (ray / "README.md").read_text().replace(f"--output {ray.name}", f"--output {local.name}")
    assert (local / "README.md").read_text() == card  # the engine is not in the card: it changes nothing
    assert not list(ray.parent.glob(f".{ray.name}.partial-*"))  # nothing half-written left behind


@pytest.fixture(scope="module")
def lost_and_found(tmp_path_factory, labeller):
    """A lost-and-found folder with some bad and unlabelled files: a corrupt, a dark and a blurry image, a JSON
    without coordinates, an image without JSON, a point at sea and a duplicate location."""
    root = make_lost_and_found(tmp_path_factory.mktemp("ray_laf") / "raw", land_points(30, labeller, seed=5))
    good = Image.open(root / "location_0.png")
    (root / "location_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    (root / "location_corrupt.json").write_text(json.dumps({"coordinates": [48.85, 2.35]}))
    Image.new("RGB", (320, 180), (3, 3, 3)).save(root / "location_dark.png")
    (root / "location_dark.json").write_text(json.dumps({"coordinates": [46.5, 7.5]}))
    blurred = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (180, 1, 3))
    Image.fromarray(blurred).save(root / "location_flat.png")
    (root / "location_flat.json").write_text(json.dumps({"coordinates": [46.7, 7.7]}))
    good.save(root / "location_nocoords.png")
    (root / "location_nocoords.json").write_text(json.dumps({"country_code": "FR"}))
    good.save(root / "location_nojson.png")
    good.save(root / "location_sea.png")
    (root / "location_sea.json").write_text(json.dumps({"coordinates": [0.0, -150.0]}))
    shutil.copy(root / "location_1.png", root / "location_dup.png")
    shutil.copy(root / "location_1.json", root / "location_dup.json")
    return root


def test_ray_build_of_a_lost_and_found_set_equals_the_local_build(ray_local, lost_and_found, tmp_path, admin1_path):
    common = ["dataset", "build", "--layout", "lost-and-found", "--input", str(lost_and_found), "--boundaries",
              admin1_path, "--cells", *CELLS, "--max-side", "200"]  # fmt: skip
    assert _run([*common, "--output", str(tmp_path / "local")]) == 0
    assert _run([*common, "--output", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert_same_folder(tmp_path / "local", tmp_path / "ray")
    reasons = " ".join(r["reason"] for r in _skipped(tmp_path / "ray"))
    for words in ("undecodable image", "dark or blank", "blurry", "no coordinates", "no JSON beside", "at sea",
                  "duplicate coordinates"):  # fmt: skip
        assert words in reasons, words
    report = json.loads((tmp_path / "ray" / "build_report.json").read_text())
    assert report["processing"]["kept"] == 30 == sum(report["splits"].values())
    assert max(Image.open(_image(tmp_path / "ray")).size) <= 200  # shrunk on the Ray workers


def _image(folder: Path):
    import io

    table = pq.read_table(next((folder / "data").glob("train-*.parquet")), columns=["image"])
    return io.BytesIO(table.column(0)[0].as_py()["bytes"])


def test_ray_build_of_the_robustness_corpus_equals_the_local_build(ray_local, tmp_path, admin1_path):
    root = tmp_path / "corpus"
    files = write_image_cases(root)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "latitude", "longitude"])
        for i, name in enumerate(files):
            w.writerow([name, 46.0 + i * 0.5, 2.0 + i * 0.5])
        w.writerow(["ok.png", 46.0, 2.0])  # listed twice
    common = ["dataset", "build", "--layout", "imagefolder", "--input", str(root), "--boundaries", admin1_path,
              "--cells", "quadtree:max_samples=20,min_samples=2", "--no-filter",
              "--fractions", "0.6", "0.2", "0.2"]  # fmt: skip
    assert _run([*common, "--output", str(tmp_path / "local")]) == 0
    assert _run([*common, "--output", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert_same_folder(tmp_path / "local", tmp_path / "ray")
    skipped = {r["item"] for r in _skipped(tmp_path / "ray") if "undecodable image" in r["reason"]}
    assert {"zero.jpg", "truncated.jpg", "notes.jpg", "bomb.png"} <= skipped


def test_ray_import_equals_the_local_import(ray_local, tmp_path, labeller):
    points = land_points(24, labeller, seed=3)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, p in enumerate(points.itertuples()):
        Image.new("RGB", (16, 16), (i * 9 % 255, 40, 90)).save(images / f"{i}.jpg")
        rows.append({"IMG_ID": f"{i}.jpg", "LAT": p.latitude, "LON": p.longitude, "AUTHOR": f"a{i % 3}"})
    rows.append({"IMG_ID": "missing.jpg", "LAT": 1.0, "LON": 2.0, "AUTHOR": "x"})  # a row without an image
    pd.DataFrame(rows).to_csv(tmp_path / "im2gps3k_places365.csv", index=False)
    common = ["dataset", "import", "im2gps3k", str(tmp_path), "--images", str(images), "--cells", CELLS[0]]
    assert _run([*common, "--output", str(tmp_path / "local")]) == 0
    assert _run([*common, "--output", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert_same_folder(tmp_path / "local", tmp_path / "ray")
    assert any("row without an image" in r["reason"] for r in _skipped(tmp_path / "ray"))


def test_ray_build_runs_part_of_a_saved_plan(ray_local, lost_and_found, tmp_path, admin1_path):
    """--plan PLAN --shard K/N on Ray, merged with a part written locally: the local build's folder."""
    common = ["--layout", "lost-and-found", "--input", str(lost_and_found), "--boundaries", admin1_path,
              "--cells", *CELLS]  # fmt: skip
    assert _run(["dataset", "build", *common, "--output", str(tmp_path / "local")]) == 0
    assert _run(["dataset", "build", *common, "--output", str(tmp_path / "plan"), "--plan-only"]) == 0
    plan = str(tmp_path / "plan")
    assert _run(["dataset", "build", "--plan", plan, "--shard", "1/2", "--output", str(tmp_path / "p1"),
                 "--engine", "ray"]) == 0  # fmt: skip
    assert _run(["dataset", "build", "--plan", plan, "--shard", "2/2", "--output", str(tmp_path / "p2")]) == 0
    assert _run(["dataset", "merge", str(tmp_path / "merged"), str(tmp_path / "p1"), str(tmp_path / "p2")]) == 0
    pd.testing.assert_frame_equal(_rows(tmp_path / "local"), _rows(tmp_path / "merged"))
    assert _skipped(tmp_path / "local") == _skipped(tmp_path / "merged")


@pytest.mark.parametrize("engine", ["ray", "local"])
def test_a_worker_killed_mid_build_gives_the_same_folder(engine, request, tmp_path, labeller, admin1_path):
    """SIGKILL a worker once it has written a block: the blocks it had not finished run again (Ray's task retry;
    the local engine's fresh pool) and the folder is the one-process build's."""
    import os
    import signal
    import threading
    import time

    import psutil

    from geohf.data.stages import BuildConfig, build_dataset

    if engine == "ray":
        request.getfixturevalue("ray_local")
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    points = land_points(24, labeller, seed=9)
    rng = np.random.default_rng(0)
    for i in range(len(points)):  # large enough that a block of 4 takes a while to check and shrink
        Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
    pd.DataFrame({"file_name": [f"images/{i}.jpg" for i in range(len(points))], "latitude": points["latitude"],
                  "longitude": points["longitude"]}).to_csv(root / "metadata.csv", index=False)  # fmt: skip

    def config(out, engine, num_proc=1):
        return BuildConfig(layout="imagefolder", input=str(root), output=str(tmp_path / out), boundaries=admin1_path,
                           cells=CELLS, max_side=256, rows_per_file=4, engine=engine, num_proc=num_proc)  # fmt: skip

    build_dataset(config("one", "local"))
    killed: list[int] = []
    done = threading.Event()

    def victim() -> int | None:
        if engine == "ray":  # a Ray worker while it runs a block
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if proc.info["cmdline"] and proc.info["cmdline"][0].startswith("ray::write_block"):
                    return proc.info["pid"]
            return None
        if not list(tmp_path.glob(".many.partial-*/data/*.parquet")):  # a pool that finished nothing is not retried
            return None
        workers = [p for p in psutil.Process().children() if "multiprocessing" in " ".join(p.cmdline())]
        return workers[0].pid if workers else None

    def kill_one() -> None:
        while not done.is_set() and not killed:
            pid = victim()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(build_dataset, config("many", engine, num_proc=2)).result(timeout=BOUND_S)
    finally:
        done.set()
        killer.join(5)
    assert killed, "no running worker was found to kill"
    assert_same_folder(tmp_path / "one", tmp_path / "many")
