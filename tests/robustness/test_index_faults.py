"""Faults: kill -9 while ``geohf index build`` writes the index into a model folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from geohf.inference.retrieval import GeoIndex


def index_command(model: Path, dataset: Path) -> list[str]:
    return [sys.executable, "-m", "geohf.cli", "index", "build", "--model", str(model), "--dataset", str(dataset),
            "--tune-split", "none", "--batch-size", "32"]  # fmt: skip


def _kill_when_staged(command: list[str], model: Path) -> bool:
    """Run ``command``; kill -9 it as soon as its staging folder in ``model`` holds a file. Whether it was killed."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            staged = [p for p in model.glob(".index.*.tmp") if p.is_dir() and any(p.iterdir())]
            if staged:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        return proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_kill_9_during_index_build_leaves_no_half_index(tiny_model_dir, tiny_dataset, tmp_path, record):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    killed_fresh = any(_kill_when_staged(index_command(model, tiny_dataset), model) for _ in range(3))
    nothing = not (model / "index").exists()  # a hidden staging folder may stay, never index/
    rerun = subprocess.run(index_command(model, tiny_dataset), capture_output=True, text=True)
    complete = rerun.returncode == 0 and len(GeoIndex.load(model / "index")) == 160
    cleaned = not list(model.glob(".index*"))
    before = _files(model / "index")
    killed_over = any(_kill_when_staged(index_command(model, tiny_dataset), model) for _ in range(3))
    untouched = _files(model / "index") == before
    ok = killed_fresh and nothing and complete and cleaned and killed_over and untouched
    record(
        "faults",
        "kill -9 during `geohf index build` (while it writes the index), into a model folder with and without one",
        "geohf index build",
        "no index/ or the previous one; rerun complete",
        f"killed while staging: {killed_fresh}, no index/ after: {nothing}; rerun exit {rerun.returncode}, "
        f"loads 160 rows: {complete}, staging cleaned: {cleaned}; killed over a previous index: {killed_over}, "
        f"previous index byte-identical: {untouched}",
        ok,
        fixed=True,
    )
    assert ok, rerun.stderr[-2000:]
