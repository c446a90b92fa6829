"""The one batch loop of geohf's inference: index chunks → a step per chunk → results in order, streamed.

Every prediction command runs through :func:`run_batches`: ``GeoPredictor.iter_dataset`` (``geohf
evaluate``, ``--benchmark``, ``tune_coordinate_rule``, ``geohf index build``), ``geohf predict``'s files and
dataset rows (:func:`geohf.inference.stream.iter_predictions`) and the pipeline's batches. A step decodes,
preprocesses, runs the forward and makes the batch's :class:`~geohf.inference.predictions.GeoPredictions`;
consumers take them batch by batch, so nothing of size N x classes is ever gathered.

On a CPU two steps run at once (:func:`default_streams`), each in its own thread with half of torch's
intra-op threads: one batch's Python (decoding, resizing, answers, records) runs while the other's forward
has the cores, and a forward split over fewer threads waits less at OpenMP's barriers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from tqdm.auto import tqdm

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


def run_batches(
    step: Callable[[list[int]], R],
    n: int,
    batch_size: int,
    streams: int = 1,
    desc: str | None = None,
    progress: bool = True,
    unit: str = "img",
) -> Iterator[R]:
    """``step(indices)`` for consecutive chunks of ``range(n)`` of ``batch_size``, results in order, ``streams``
    steps at once (:func:`in_streams`), with a progress bar of ``n`` (left out for a single batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results = in_streams(step, chunks(range(n), batch_size), max(1, streams))
    with tqdm(total=n, desc=desc, unit=unit, disable=not progress or n <= batch_size, leave=False) as bar:
        done = 0
        for result in results:
            yield result
            counted = min(batch_size, n - done)
            done += counted
            bar.update(counted)
