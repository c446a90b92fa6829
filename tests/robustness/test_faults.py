"""Faults: kill -9 during a dataset build, memory while predicting many images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from geohf.inference.inputs import Inputs
from geohf.inference.predictor import GeoPredictor
from geohf.inference.stream import PredictOptions, run_prediction


def build_command(out: Path, admin1_path: str) -> list[str]:
    return [sys.executable, "-m", "geohf.cli", "dataset", "build", "--layout", "bluemarble", "--output", str(out),
            "--boundaries", admin1_path, "--train", "600", "--validation", "60", "--test", "60", "--tile-px", "32",
            "--cells", "quadtree:max_samples=80,min_samples=5"]  # fmt: skip


def content(folder: Path) -> dict[str, str]:
    """Split → digest of its rows (images included), independent of how Parquet laid them out."""
    out = {}
    for split in ("train", "validation", "test"):
        frames = [pd.read_parquet(p) for p in sorted((folder / "data").glob(f"{split}-*.parquet"))]
        frame = pd.concat(frames, ignore_index=True)
        frame["image"] = frame["image"].map(lambda im: hashlib.sha1(im["bytes"]).hexdigest())
        out[split] = hashlib.sha1(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()
    return out


def test_kill_9_during_dataset_build_then_rerun(tmp_path, admin1_path, record):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(build_command(reference, admin1_path), check=True, capture_output=True)
    proc = subprocess.Popen(build_command(killed, admin1_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # kill once the build has started writing
            partial = list(tmp_path.glob(".killed.partial-*/*"))
            if partial:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    left = list(tmp_path.glob(".killed.partial-*"))
    not_finished = not killed.exists() and len(left) == 1
    rerun = subprocess.run(build_command(killed, admin1_path), capture_output=True, text=True)
    same = rerun.returncode == 0 and content(killed) == content(reference)
    cleaned = not list(tmp_path.glob(".killed.partial-*"))
    record(
        "faults",
        "kill -9 during `geohf dataset build`, then the same command again",
        "geohf dataset build",
        "no finished-looking output; rerun gives the same dataset",
        f"after the kill: output absent, {len(left)} hidden partial folder; rerun exit {rerun.returncode}, "
        f"rows identical to an uninterrupted build: {same}; partial folder removed: {cleaned}",
        not_finished and same and cleaned,
    )
    assert not_finished and same and cleaned, rerun.stderr[-2000:]


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_predicting_many_images_keeps_memory_flat(tiny_model_dir, tiny_dataset, tmp_path, record, lazy_items):
    from datasets import load_dataset

    paths = []
    for i, row in enumerate(load_dataset(str(tiny_dataset), split="test").select(range(16))):
        paths.append(tmp_path / f"tile{i}.png")
        row["image"].save(paths[-1])
    predictor = GeoPredictor(str(tiny_model_dir), bf16=False)
    samples: list[tuple[int, float]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((len(samples), rss_mb()))
            time.sleep(0.05)

    n = 4000
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        run = run_prediction(
            predictor,
            Inputs(items=lazy_items(paths, n)),
            PredictOptions(batch_size=32, output=str(tmp_path / "p.jsonl"), progress=False),
        )
    finally:
        done.set()
        thread.join()
    rss = [r for _, r in samples]
    quarter = max(1, len(rss) // 4)
    early, late = max(rss[quarter : 2 * quarter]), max(rss[-quarter:])
    growth = late - early
    ok = run.predicted == n and growth < 30
    record(
        "faults",
        f"predict {n:,} images (streamed to JSON lines)",
        "geohf predict",
        "resident memory flat",
        f"RSS {early:.0f} MB after a quarter, {late:.0f} MB at the end "
        f"(+{growth:.1f} MB); {run.predicted} records, none kept in memory",
        ok,
    )
    assert ok and run.records == []


def evaluate_command(model: Path, dataset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "geohf.cli", "evaluate", "--model", str(model), "--dataset", str(dataset),
            "--output", str(out), "--batch-size", "4"]  # fmt: skip


def _kill_when_staged(command: list[str], out: Path) -> bool:
    """Run ``command``; kill -9 it once its staging folder in ``out`` holds a file. Whether it was killed."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any(p.is_file() for p in out.glob(".evaluate-partial-*/*")):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait()
        return proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def test_kill_9_during_evaluate_leaves_no_half_written_report(tiny_model_dir, tiny_dataset, tmp_path, record):
    """``geohf evaluate`` stages its files and renames them in at the end: a kill leaves the folder as it was."""
    previous = tmp_path / "previous"
    subprocess.run(evaluate_command(tiny_model_dir, tiny_dataset, previous), check=True, capture_output=True)
    before = _files(previous)
    killed_over = _kill_when_staged(evaluate_command(tiny_model_dir, tiny_dataset, previous), previous)
    untouched = _files(previous) == before
    fresh = tmp_path / "fresh"
    killed_fresh = _kill_when_staged(evaluate_command(tiny_model_dir, tiny_dataset, fresh), fresh)
    nothing = _files(fresh) == {}
    rerun = subprocess.run(evaluate_command(tiny_model_dir, tiny_dataset, fresh), capture_output=True, text=True)
    metrics = json.loads((fresh / "metrics.json").read_text()) if rerun.returncode == 0 else {}
    same = metrics.get("results") == json.loads(before["metrics.json"])["results"]
    complete = set(_files(fresh)) == set(before) and not list(fresh.glob(".*"))
    ok = killed_over and killed_fresh and untouched and nothing and same and complete
    record(
        "faults",
        "kill -9 during `geohf evaluate` (while it writes its files), into a previous report and into a new folder",
        "geohf evaluate",
        "previous report untouched / no report; rerun complete",
        f"previous folder byte-identical: {untouched}; new folder: no visible file: {nothing}; rerun exit "
        f"{rerun.returncode}, same metrics: {same}, all {len(before)} files and no leftovers: {complete}",
        ok,
        fixed=True,
    )
    assert ok, rerun.stderr[-2000:]


LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["geohf", *sys.argv[2:]]
runpy.run_module("geohf.cli", run_name="__main__")
"""


def run_with_file_limit(tmp_path: Path, limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    """``geohf ARGV`` in a process whose files cannot grow past ``limit`` bytes (SIGXFSZ ignored: EFBIG)."""
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    return subprocess.run([sys.executable, str(script), str(limit), *argv], capture_output=True, text=True)


def test_disk_full_during_dataset_build_then_rerun(tmp_path, admin1_path, record):
    out = tmp_path / "full"
    argv = build_command(out, admin1_path)[3:]  # after "python -m geohf.cli"
    full = run_with_file_limit(tmp_path, 64_000, argv)  # the image shards are larger
    errors = re.findall(r"^error: .*", full.stderr, re.M)
    clear = full.returncode == 2 and len(errors) == 1 and "disk is full" in errors[0] and "Traceback" not in full.stderr
    nothing = not out.exists() and not list(tmp_path.glob(".full.partial-*"))
    rerun = subprocess.run(build_command(out, admin1_path), capture_output=True, text=True)
    ok = clear and nothing and rerun.returncode == 0 and (out / "data").is_dir()
    record(
        "faults",
        "disk full during `geohf dataset build` (RLIMIT_FSIZE 64 kB, writes fail with EFBIG), then the command again",
        "geohf dataset build",
        "one clear line; no output folder; the rerun builds it",
        f"exit {full.returncode}: {(errors or [full.stderr[-200:]])[0]}; output absent and no partial folder: "
        f"{nothing}; rerun exit {rerun.returncode}",
        ok,
        fixed=True,
    )
    assert ok, full.stderr[-3000:] + rerun.stderr[-2000:]


def test_disk_full_while_saving_a_checkpoint_then_rerun(tiny_dataset, tmp_path, record):
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tiny_dataset), "--output_dir", str(out), "--max_steps", "2",
            "--save_strategy", "steps", "--save_steps", "1", "--per_device_train_batch_size", "8",
            "--image_size", "32", "--crop_pct", "1.0", "--use_cpu", "--report_to", "none", "--eval_strategy", "no",
            "--disable_tqdm", "true"]  # fmt: skip
    full = run_with_file_limit(tmp_path, 4_000_000, argv)  # model.safetensors is about 14 MB
    errors = re.findall(r"^error: .*", full.stderr, re.M)
    clear = full.returncode == 2 and len(errors) == 1 and "disk is full" in errors[0] and "Traceback" not in full.stderr
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    no_checkpoint = not list(out.glob("checkpoint-*")) and not list(out.rglob("*.safetensors"))
    rerun = subprocess.run([sys.executable, "-m", "geohf.cli", *argv], capture_output=True, text=True)
    done = rerun.returncode == 0 and (out / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    ok = clear and no_checkpoint and done
    record(
        "faults",
        "disk full while `geohf train` saves its first checkpoint (RLIMIT_FSIZE 4 MB), then the command again",
        "geohf train",
        "one clear line; no checkpoint or weights left to resume from; the rerun trains and saves",
        f"exit {full.returncode}: {(errors or [full.stderr[-200:]])[0]}; left: {left or 'nothing'}; "
        f"rerun exit {rerun.returncode}, checkpoint-2 and model.safetensors written: {done}",
        ok,
        fixed=True,
    )
    assert ok, full.stderr[-3000:] + rerun.stderr[-2000:]
