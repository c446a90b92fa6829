"""Worker deaths during the parallel image check, one case per run (tests/data/test_workers.py runs it with a timeout).

    python tests/data/worker_faults.py kill|unimportable|always-dies <folder>

Prints one JSON line: what happened.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geohf.data import filters, workers
from geohf.data.quality import ImageFilter
from geohf.data.skips import SkipLog
from geohf.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def images(folder: Path, n: int = 160) -> pd.DataFrame:
    """Noise, dark, blurry, corrupt and missing images: every kind of result of the check."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.png"
        kind = i % 8
        if kind == 5:
            path.write_bytes(b"not an image")
        elif kind != 6:  # 6: missing
            side = 96 + 8 * (i % 5)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            if kind == 3:
                pixels = np.full_like(pixels, 3)
            elif kind == 4:
                pixels = np.full_like(pixels, 120) + (np.arange(side) // 24).astype(np.uint8)[:, None, None]
            Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return pd.DataFrame({"source_file": paths, "row": np.arange(n)})


def check(frame: pd.DataFrame, num_proc: int) -> tuple[pd.DataFrame, list]:
    log = SkipLog()
    return filters.filter_images(frame, ImageFilter(), log, num_proc=num_proc), log.entries


def kill(folder: Path) -> dict:
    """SIGKILL a worker once the first chunk is back: the lost chunks run again, the result is the serial one."""
    frame = images(folder)
    serial, serial_log = check(frame, 1)
    pools, killed = [], []
    run_pool = workers._run_pool

    def counted(*args):
        pools.append(1)
        return run_pool(*args)

    class KillingBar(filters.tqdm):
        def update(self, n=1):
            if not killed:
                child = mp.active_children()[0]
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
            return super().update(n)

    workers._run_pool, filters.tqdm = counted, KillingBar
    start = time.perf_counter()
    parallel, parallel_log = check(frame, 2)
    seconds = time.perf_counter() - start
    pd.testing.assert_frame_equal(parallel, serial)
    return {"same": parallel_log == serial_log, "killed": len(killed), "pools": len(pools), "seconds": seconds,
            "kept": len(serial), "of": len(frame)}  # fmt: skip


def unimportable(folder: Path) -> dict:
    """Workers that import the clone-root guard as ``geohf`` (the folder above a clone named geohf first on
    sys.path) die at start: one line, no retry, no wait."""
    (folder / "geohf").mkdir(parents=True)
    shutil.copy(ROOT / "__init__.py", folder / "geohf" / "__init__.py")
    frame = images(folder / "images", 40)
    sys.path.insert(0, str(folder))  # the parent already imported the real package; spawned workers cannot
    return failure(lambda: check(frame, 2))


def _dies_on_seven(k: int) -> int:
    if k == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return k * k


def always_dies(folder: Path) -> dict:
    """A chunk that kills its worker every time: a bounded number of fresh pools, then one line."""
    return failure(lambda: dict(workers.map_chunks(_dies_on_seven, range(40), 2, "squaring", "do not square 7")))


def failure(run) -> dict:
    start = time.perf_counter()
    try:
        run()
    except UserError as err:
        return {"error": str(err), "seconds": time.perf_counter() - start}
    return {"error": None}


if __name__ == "__main__":
    case, folder = sys.argv[1], Path(sys.argv[2])
    result = {"kill": kill, "unimportable": unimportable, "always-dies": always_dies}[case](folder)
    print(json.dumps(result))
