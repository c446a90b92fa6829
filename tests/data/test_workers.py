"""The parallel image check when a worker dies: retried to the serial result, or one line; never a wait forever.

Each case runs in its own process (tests/data/worker_faults.py) under a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from geohf.data.workers import RETRIES

SCRIPT = Path(__file__).with_name("worker_faults.py")


def run_case(case: str, folder: Path, timeout: float = 180) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), case, str(folder)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_worker_killed_mid_check_is_retried_and_gives_the_serial_result(tmp_path):
    result = run_case("kill", tmp_path)
    assert result["killed"] == 1 and result["pools"] == 2, result  # the kill broke the pool; one fresh pool
    assert result["same"], "the retried check skipped other rows or reasons than the serial check"
    assert 0 < result["kept"] < result["of"]  # every kind of result: kept, dark, blurry, undecodable, missing
    assert result["seconds"] < 120, result


def test_workers_that_cannot_import_geohf_fail_in_one_line_at_once(tmp_path):
    result = run_case("unimportable", tmp_path)
    error = result["error"]
    assert error and "\n" not in error, result
    assert error.startswith("checking images: a worker process died before finishing any work"), error
    assert "--num-proc" in error
    assert result["seconds"] < 60, result


def test_a_chunk_that_kills_every_worker_stops_after_bounded_retries(tmp_path):
    result = run_case("always-dies", tmp_path)
    error = result["error"]
    assert error and "\n" not in error and error.startswith("squaring: ") and error.endswith(": do not square 7")
    assert "before finishing any work" in error or f"died {RETRIES + 1} times" in error, error
    assert result["seconds"] < 120, result


def test_pytest_does_not_put_the_folder_above_the_clone_on_sys_path():
    """The clone's root is collected as a folder (tests/conftest.py): in a clone named geohf, that folder first on
    sys.path made the root's guard shadow the package in every spawned worker."""
    root = Path(__file__).resolve().parents[2]
    assert str(root.parent) not in sys.path
