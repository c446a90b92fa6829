"""The game's results file: one JSON line per guess, appended atomically (read by :mod:`geohf.evaluation.human`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: appends of one short line are still atomic in practice
    fcntl = None


def append_result(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single ``write`` under an exclusive lock, then fsync.

    Concurrent players (or app processes) never interleave or half-write a line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
