"""Faults: kill -9 while ``geohf index build`` writes the index into a model folder.

The build kills itself with SIGKILL (no handler, no ``finally`` runs: what ``kill -9`` does) at the
worst moments, every file of the new index staged: just before the staging folder is renamed in,
and just before a previous index is moved aside. An external ``kill -9`` polled from here would
race a rename that takes microseconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from geohf.inference.retrieval import GeoIndex

KILL_AT_RENAME = """
import os, runpy, signal, sys
point, real = sys.argv[1], os.replace
def replace(src, dst, *args, **kwargs):
    staged = os.path.basename(str(src)).startswith(".index.")  # the new index, about to be renamed in
    aside = os.path.basename(str(dst)).startswith(".index.")  # the previous index, about to be moved aside
    if (point == "commit" and staged) or (point == "aside" and aside):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["geohf", *sys.argv[2:]]
runpy.run_module("geohf.cli", run_name="__main__")
"""


def index_build(tmp_path: Path, model: Path, dataset: Path, kill_at: str | None = None):
    script = tmp_path / "kill_at_rename.py"
    script.write_text(KILL_AT_RENAME)
    argv = ["index", "build", "--model", str(model), "--dataset", str(dataset), "--tune-split", "none"]
    command = [sys.executable, str(script), kill_at or "never", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_kill_9_during_index_build_leaves_no_half_index(tiny_model_dir, tiny_dataset, tmp_path, record):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    fresh = index_build(tmp_path, model, tiny_dataset, "commit")
    killed_fresh = fresh.returncode == -9
    staged = [p for p in model.glob(".index.*") if (p / "gallery-00000.safetensors").is_file()]
    nothing = not (model / "index").exists() and len(staged) == 1  # everything staged, nothing in place
    rerun = index_build(tmp_path, model, tiny_dataset)
    complete = rerun.returncode == 0 and len(GeoIndex.load(model / "index")) == 160
    cleaned = not list(model.glob(".index*"))
    before = _files(model / "index")
    over = index_build(tmp_path, model, tiny_dataset, "aside")
    killed_over = over.returncode == -9
    untouched = _files(model / "index") == before
    ok = killed_fresh and nothing and complete and cleaned and killed_over and untouched
    record(
        "faults",
        "kill -9 during `geohf index build` (new index staged, before its rename), into a model folder "
        "with and without an index",
        "geohf index build",
        "no index/ or the previous one; rerun complete",
        f"killed: {killed_fresh}, no index/ after: {nothing}; rerun exit {rerun.returncode}, loads 160 rows: "
        f"{complete}, staging cleaned: {cleaned}; killed over a previous index: {killed_over}, previous index "
        f"byte-identical: {untouched}",
        ok,
        fixed=True,
    )
    assert ok, rerun.stderr[-2000:] + over.stderr[-2000:]
