"""Batches predicted a few at a time on a CPU, so one batch's Python work hides behind another's forward.

``geohf predict`` and ``pipeline("image-geolocation")`` spend most of a batch in the model's forward,
which keeps every core busy, and the rest (decoding, resizing, turning logits into answers and
records) in Python on one core. Run one batch after the other and the other cores idle during that
rest; run two at once, each in its own thread with half of torch's intra-op threads, and one batch's
Python runs while the other's forward has the cores. A forward split over fewer threads also waits
less at OpenMP's barriers. Measured side by side in ``benchmarks/throughput.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def default_streams(device: torch.device | str) -> int:
    """Batches in flight at once: two on a CPU with at least two intra-op threads, one on an accelerator
    (its forward does not share the cores)."""
    return 2 if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1


def chunks(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    """``iterable`` in lists of ``size`` (the last one shorter), taken lazily."""
    batch: list[T] = []
    for x in iterable:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def in_streams(fn: Callable[[T], R], chunks: Iterable[T], streams: int) -> Iterator[R]:
    """``fn(chunk)`` for every chunk in order, ``streams`` of them running at once in threads.

    torch's intra-op thread count belongs to a thread once it has used it: each call sets its share of
    the caller's count and puts the caller's count back when done (the count new threads start from), so
    the caller and threads made later keep theirs. An exception in ``fn`` is raised here, in order;
    stopping early cancels what has not started.
    """
    threads = torch.get_num_threads()
    share = max(1, threads // streams)

    def job(chunk: T) -> R:
        # a thread's first use copies the count from the shared setting, which another job may be changing:
        # use it first, then set ours
        torch.get_num_threads()
        torch.set_num_threads(share)
        try:
            return fn(chunk)
        finally:
            torch.set_num_threads(threads)

    pool = ThreadPoolExecutor(streams, thread_name_prefix="geohf-stream")
    pending: deque = deque()
    try:
        for chunk in chunks:
            if len(pending) == streams:
                done = pending.popleft().result()
                pending.append(pool.submit(job, chunk))
                yield done
            else:
                pending.append(pool.submit(job, chunk))
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
