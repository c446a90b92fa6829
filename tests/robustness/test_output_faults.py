"""Outputs: one writer at a time (a second ``dataset build`` / ``dataset import`` / ``index build`` / ``predict
--output`` into an output being written is refused), and ``predict --output`` killed with SIGKILL or out of disk.

Every process here is real (``subprocess``, bounded by timeouts). The first ``geohf predict`` is held
mid-run by a URL input that a local server answers only when the test says so: it holds its output's
lock and has written some records when the second writer comes, or when it is killed.
"""

from __future__ import annotations

import errno
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from geohf.cli import main
from geohf.files import TMP_SUFFIX, exclusive_output, lock_path

TIMEOUT = 300

HOLD = """
import sys
from geohf.files import exclusive_output
with exclusive_output(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


@pytest.fixture(scope="module")
def tiles(tiny_dataset, tmp_path_factory) -> list[Path]:
    from datasets import load_dataset

    folder = tmp_path_factory.mktemp("output_tiles")
    paths = []
    for i, row in enumerate(load_dataset(str(tiny_dataset), split="test").select(range(12))):
        paths.append(folder / f"tile{i:02d}.png")
        row["image"].save(paths[-1])
    return paths


class Gate:
    """A local server whose ``/gate.png`` answers (a tile) only once :attr:`release` is set."""

    def __init__(self, image: Path):
        self.arrived, self.release = threading.Event(), threading.Event()
        gate, body = self, image.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                gate.arrived.set()
                gate.release.wait(TIMEOUT)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gate.png"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate(tiles):
    g = Gate(tiles[0])
    yield g
    g.close()


def predict_argv(model: Path, inputs: list, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geohf.cli", "predict", "--model", str(model), *map(str, inputs), "-o", str(out),
            "--batch-size", "4", "--workers", "0", "--quiet", *extra]  # fmt: skip


def start_held(argv: list[str], gate: Gate) -> subprocess.Popen:
    """Start ``argv`` and wait until it asks for the gated URL (lock held, earlier batches written)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIMEOUT
    while not gate.arrived.wait(0.2):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the first writer never reached the gate:\n{proc.communicate()[1][-2000:]}")
    return proc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def leftovers(out: Path) -> list[str]:
    """Temporary files and locks of ``out`` in its folder (hidden or not: ``pred.jsonl.tmp``)."""
    return sorted(p.name for pattern in (f".{out.name}*", f"{out.name}?*") for p in out.parent.glob(pattern))


def test_two_predictions_into_one_output(tiny_model_dir, tiles, gate, tmp_path, record):
    out, reference = tmp_path / "pred.jsonl", tmp_path / "reference.jsonl"
    inputs = [*tiles, gate.url]
    first = start_held(predict_argv(tiny_model_dir, inputs, out), gate)
    try:
        second = subprocess.run(predict_argv(tiny_model_dir, tiles, out), capture_output=True, text=True,
                                timeout=TIMEOUT)  # fmt: skip
    finally:
        gate.release.set()
        first_err = first.communicate(timeout=TIMEOUT)[1]
    lines = error_lines(second.stderr)
    refused = second.returncode == 2 and len(lines) == 1 and str(out) in lines[0] and f"pid {first.pid}" in lines[0]
    subprocess.run(predict_argv(tiny_model_dir, inputs, reference), check=True, capture_output=True, timeout=TIMEOUT)
    whole = first.returncode == 0 and out.read_bytes() == reference.read_bytes()
    clean = leftovers(out) == []
    ok = refused and whole and clean
    record(
        "outputs",
        "two `geohf predict --output` into one file at once (the first held mid-run by a slow URL)",
        "geohf predict",
        "the second refused in one line naming the owner's pid; the first's output whole",
        f"second: exit {second.returncode}, '{lines[0] if lines else second.stderr[-200:]}'; first: exit "
        f"{first.returncode}, output equals an undisturbed run: {whole}; nothing left beside it: {clean}",
        ok,
        fixed=True,
    )
    assert ok, (second.stderr[-2000:], first_err[-2000:], leftovers(out))


def _dataset_build(out: Path, tiny_dataset: Path) -> list[str]:
    return ["dataset", "build", "--layout", "bluemarble", "--output", str(out), "--train", "20", "--validation", "4",
            "--test", "4", "--tile-px", "32"]  # fmt: skip


def _dataset_import(out: Path, tiny_dataset: Path) -> list[str]:
    return ["dataset", "import", "table", str(tiny_dataset), "--output", str(out)]


def _index_build(out: Path, tiny_dataset: Path) -> list[str]:
    return ["index", "build", "--model", str(out.parent), "--dataset", str(tiny_dataset), "--tune-split", "none"]


WRITERS = {
    "geohf dataset build": (_dataset_build, "data"),
    "geohf dataset import": (_dataset_import, "imported"),
    "geohf index build": (_index_build, "model/index"),
}


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_second_writer_is_refused(what, tiny_model_dir, tiny_dataset, tmp_path, record):
    """A process holds the output's lock (as each of these commands does while it writes); the command is
    refused in one line and writes nothing."""
    argv, name = WRITERS[what]
    out = tmp_path / name
    if what == "geohf index build":
        shutil.copytree(tiny_model_dir, out.parent)
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    before = sorted(p.name for p in out.parent.iterdir())
    holder = subprocess.Popen([sys.executable, str(script), str(out), what], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [sys.executable, "-m", "geohf.cli", *argv(out, tiny_dataset)]
        second = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        holder.communicate("", timeout=TIMEOUT)
    lines = error_lines(second.stderr)
    named = len(lines) == 1 and str(out) in lines[0] and f"pid {holder.pid}" in lines[0] and what in lines[0]
    after = sorted(p.name for p in out.parent.iterdir() if p.name != lock_path(out).name)
    untouched = not out.exists() and after == before
    ok = second.returncode == 2 and named and untouched and not lock_path(out).exists()
    record(
        "outputs",
        f"`{what}` into an output another process is writing",
        what,
        "refused in one line naming the output and the owner's pid; nothing written",
        f"exit {second.returncode}: '{lines[0] if lines else second.stderr[-200:]}'; output untouched: {untouched}",
        ok,
        fixed=True,
    )
    assert ok, second.stderr[-2000:]


def test_stale_lock_is_taken_over(tmp_path, record):
    out = tmp_path / "out" / "pred.jsonl"
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    holder = subprocess.Popen([sys.executable, str(script), str(out), "geohf predict"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(TIMEOUT)
    stale = lock_path(out).is_file()
    taken = subprocess.run([sys.executable, str(script), str(out), "geohf predict"], input="", capture_output=True,
                           text=True, timeout=TIMEOUT)  # fmt: skip
    note = f"taking over the lock of geohf predict (pid {holder.pid}" in taken.stderr
    ok = stale and taken.returncode == 0 and note and not lock_path(out).exists()
    record(
        "outputs",
        "a writer killed with SIGKILL left its lock; the next writer comes",
        "geohf.files.exclusive_output",
        "the stale lock taken over with a note naming the dead pid",
        f"lock left: {stale}; next writer exit {taken.returncode}, note: {note}; lock removed after: "
        f"{not lock_path(out).exists()}",
        ok,
    )
    assert ok, taken.stderr


def test_lock_in_process_is_exclusive_and_folders_made_for_it_go(tmp_path):
    out = tmp_path / "a" / "b" / "pred.csv"
    with exclusive_output(out, "geohf predict"):
        assert lock_path(out).is_file()
        with pytest.raises(Exception, match=r"pid \d+ on .+ is writing this output"), exclusive_output(out, "again"):
            pass
    assert not (tmp_path / "a").exists()


# one format: the three share the temporary name, the sync and the rename (a full disk, below, tries each, since
# each writer's last flush differs)
@pytest.mark.parametrize("fmt", ["parquet"])
def test_kill_9_during_predict_output_then_rerun(fmt, tiny_model_dir, tiles, gate, tmp_path, record):
    out, reference = tmp_path / f"pred.{fmt}", tmp_path / f"reference.{fmt}"
    inputs = [*tiles, gate.url]
    previous = b"a previous run's output\n"
    out.write_bytes(previous)
    first = start_held(predict_argv(tiny_model_dir, inputs, out), gate)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=TIMEOUT)
    kept = out.read_bytes() == previous  # the previous output, never a part of the new one
    gate.release.set()
    rerun = subprocess.run(predict_argv(tiny_model_dir, inputs, out), capture_output=True, text=True, timeout=TIMEOUT)
    subprocess.run(predict_argv(tiny_model_dir, inputs, reference), check=True, capture_output=True, timeout=TIMEOUT)
    same = rerun.returncode == 0 and _rows(out) == _rows(reference)
    clean = leftovers(out) == []
    note = f"pid {first.pid}" in rerun.stderr
    ok = first.returncode == -9 and kept and same and clean and note
    record(
        "faults",
        f"kill -9 during `geohf predict --output pred.{fmt}` (mid-run, some records written), then the same command",
        "geohf predict",
        "the previous output untouched; the rerun equals an uninterrupted run; nothing left beside it",
        f"killed: {first.returncode == -9}; previous output byte-identical: {kept}; rerun exit {rerun.returncode}, "
        f"stale lock taken over: {note}, records equal an uninterrupted run's: {same}; nothing left: {clean}",
        ok,
    )
    assert ok, (rerun.stderr[-2000:], leftovers(out))


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return json.loads(frame.to_json(orient="records"))


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes free: writes beyond fail with ENOSPC (after a partial write)."""

    def __init__(self, path, room: int):
        super().__init__(path, "w")
        self.room = room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), self.room)
        self.room -= n
        return super().write(bytes(data)[:n])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_disk_full_during_predict_output_then_rerun(fmt, tiny_model_dir, tiles, tmp_path, monkeypatch, capsys,
                                                    record):  # fmt: skip
    import builtins

    from geohf.inference import writers

    out, reference = tmp_path / f"pred.{fmt}", tmp_path / f"reference.{fmt}"
    argv = ["predict", "--model", str(tiny_model_dir), *map(str, tiles), "--batch-size", "4", "--workers", "0",
            "--quiet", "-o"]  # fmt: skip
    assert main([*argv, str(reference)]) == 0
    previous = b"a previous run's output\n"
    out.write_bytes(previous)
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if Path(file).name.startswith(f".{out.name}") or Path(file).name.startswith(out.name):
            raw = FullDisk(file, room=2000)
            if "b" in mode:
                return io.BufferedWriter(raw)
            return io.TextIOWrapper(
                io.BufferedWriter(raw), encoding=kwargs.get("encoding"), newline=kwargs.get("newline")
            )
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(writers, "open", full_open, raising=False)
    capsys.readouterr()
    code = main([*argv, str(out)])
    err = capsys.readouterr().err
    monkeypatch.undo()
    lines = error_lines(err)
    one_line = code == 2 and len(lines) == 1 and "disk is full" in lines[0] and "Traceback" not in err
    kept, nothing_left = out.read_bytes() == previous, leftovers(out) == []
    rerun = main([*argv, str(out)])
    same = rerun == 0 and _rows(out) == _rows(reference)
    ok = one_line and kept and nothing_left and same
    record(
        "faults",
        f"disk full while `geohf predict --output pred.{fmt}` writes (2,000 bytes free), then the same command",
        "geohf predict",
        "one line; the previous output untouched, no temporary file left; the rerun equals an uninterrupted run",
        f"exit {code}: '{lines[0][:90] if lines else err[-120:]}'; previous output byte-identical: {kept}; "
        f"nothing left: {nothing_left}; rerun equals an uninterrupted run: {same}",
        ok,
        fixed=True,
    )
    assert ok, (err[-3000:], leftovers(out))


def test_temporary_names_are_hidden_and_unique(tmp_path):
    from geohf.inference.writers import open_writer, output_columns

    out = tmp_path / "pred.jsonl"
    with open_writer(out, "jsonl", output_columns(False, False)) as a, open_writer(out, "jsonl", []) as b:
        assert a.tmp != b.tmp and a.tmp.name.startswith(".pred.jsonl.") and a.tmp.name.endswith(TMP_SUFFIX)
        a.write([{"file": "x"}])
        b.write([{"file": "y"}])
    assert json.loads(out.read_text())["file"] in ("x", "y")
