"""geohf.malloc: the batch settings keep a batch job's large buffers free of page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from geohf import malloc
settings = {"batch": malloc.BATCH, "top pad only": {malloc.M_TOP_PAD: 64 * 1024 * 1024}}[sys.argv[1]]
assert malloc.set_malloc(settings)
for _ in range(100):  # warm up: the heap and the threads settle
    torch.empty(1024 * 1024).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # a batch's 4 MiB activation, allocated, written and freed
    torch.empty(1024 * 1024).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(settings: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, settings], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_batch_settings_keep_large_buffers_in_the_heap():
    """Setting the top pad alone fixes glibc's mmap threshold at 128 KiB: every large buffer is then a fresh
    mapping, 1,024 page faults per 4 MiB. ``BATCH`` sets the thresholds too: the heap serves them again."""
    assert _faults("top pad only") > 50 * 500
    assert _faults("batch") < 500


BUILD_SCRIPT = """
import sys, psutil, pyarrow as pa, pyarrow.compute as pc
from geohf import malloc
if sys.argv[1] == "build":
    assert malloc.set_malloc(malloc.BUILD)
    malloc.use_system_arrow_pool()
me = psutil.Process()
strings = pa.array([f"images/{i:07d}.jpg" for i in range(300_000)])
held = me.memory_info().rss
for _ in range(3):  # a plan stage's hashing of a path column: buffers made and freed
    encoded = pc.dictionary_encode(strings)
    del encoded
print((me.memory_info().rss - held) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_build_settings_give_freed_arrow_buffers_back():
    """``geohf dataset build``'s settings: pyarrow's buffers come from the system allocator and large ones are
    mapped, so a freed column leaves the process (pyarrow's default pool kept ~57 MB of these pages)."""
    out = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, "build"], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 10


TRIM_SCRIPT = """
import psutil, numpy as np
from geohf import malloc
assert malloc.set_malloc(malloc.BUILD)
me = psutil.Process()
blocks = [np.ones(100) for _ in range(100_000)]  # a stage's small blocks, all through the heap (~90 MB)
held = blocks[::8]  # every eighth stays: the heap's top is not free, so it is not given back by itself
del blocks
before = me.memory_info().rss
assert malloc.trim()
print((before - me.memory_info().rss) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_back_the_free_pages_inside_the_heap():
    """Between a plan's stages: the free blocks between those still held go back to the system."""
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) > 10
