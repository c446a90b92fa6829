"""glibc malloc settings for geohf's long runs: a server's memory flat, a batch job's free of page faults.

``mallopt`` applies to the whole process, so only geohf's own commands call it (``geohf app``,
``geohf predict``, ``geohf dataset build`` and ``import``), never the library. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import functools
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8

SERVER = {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: 128 * 1024}
"""``geohf app``: Gradio runs each request on a worker thread, and with one arena per thread the server's
memory creeps up under concurrent clients although nothing is kept; and glibc's dynamic mmap threshold
rises after the first large free, then serves each request's image and figure buffers from the heap,
which it rarely gives back. Two arenas, and blocks of 128 KiB or more mapped (returned when freed)."""

BATCH = {M_TOP_PAD: 64 * 1024 * 1024, M_TRIM_THRESHOLD: 256 * 1024 * 1024, M_MMAP_THRESHOLD: 32 * 1024 * 1024}
"""``geohf predict``: every batch allocates and frees megabytes (decoded tiles, resized and normalised
batches, the forward's activations). Setting any of these turns off glibc's dynamic thresholds, so all
three are set: blocks up to 32 MiB come from the heap (at the fixed 128 KiB threshold each activation
was a fresh mapping, hundreds of page faults per image), and the heap is neither trimmed nor regrown
between batches (up to 256 MiB of freed memory stays with the process). Measured in
``benchmarks/throughput.py`` (docs/benchmarks.md): the raw forward 545-686 → 872-899 img/s with no
page faults, streamed decode + preprocess 6,400 → 9,150 img/s with the decoder's own changes."""


BUILD = {M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024}
"""``geohf dataset build`` / ``import``: the plan's stages each make and drop whole columns (a copy of the
coordinates, codes, a sort order). With glibc's dynamic threshold those land in the heap after the first
large free and stay with the process when freed; mapped at 128 KiB and up, and the heap trimmed, they go
back. Applied with :func:`use_system_arrow_pool` (see there)."""


def use_build_allocators() -> None:
    """``geohf dataset build`` / ``import``'s allocators: :data:`BUILD` and :func:`use_system_arrow_pool`."""
    set_malloc(BUILD)
    use_system_arrow_pool()


def use_system_arrow_pool() -> bool:
    """Make pyarrow allocate with the system allocator (``geohf dataset build`` / ``import``, like ``mallopt``:
    for the whole process); whether it changed. pyarrow's default mimalloc pool keeps the pages of freed
    buffers (a plan's read, hashing and sorting of string columns) and the build's resident memory grew with
    every column it ever held; the system allocator returns them, under :data:`BUILD`."""
    import pyarrow as pa

    if pa.default_memory_pool().backend_name == "system":
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``); whether it could. No setting
    changes: a long stage's small blocks (geometries, short arrays) are freed all through the heap, and only
    its top is returned by itself; the plan of a dataset build calls this between its stages."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return malloc_trim is not None and malloc_trim(0) >= 0


def set_malloc(settings: dict[int, int]) -> bool:
    """Apply ``settings`` (``{M_*: value}``) with glibc's ``mallopt``, before the threads that allocate
    start; whether all applied."""
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and all([bool(mallopt(option, value)) for option, value in settings.items()])


@functools.cache
def _libc():
    """glibc, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
