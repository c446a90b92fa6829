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
