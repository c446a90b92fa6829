"""The one batch loop of geohf's inference: index chunks → (load →) a step per chunk → results in order, streamed.

Every prediction command runs through :func:`run_batches`: ``GeoPredictor.iter_dataset`` (``geohf
evaluate``, ``--benchmark``, ``tune_coordinate_rule``, ``geohf index build``) and ``geohf predict``'s files
and dataset rows (:func:`geohf.inference.stream.iter_batches`). A step decodes, preprocesses, runs the
forward and makes the batch's :class:`~geohf.inference.predictions.GeoPredictions`; consumers take them batch
by batch, so nothing of size N x classes is ever gathered. (``pipeline("image-geolocation")`` batches through
transformers' own iterator, its ``batch_size`` and ``num_workers``, with the same forward and answers.)

On a CPU two steps run at once (:func:`default_streams`), each in its own thread with half of torch's
intra-op threads: one batch's Python (decoding, resizing, answers, records) runs while the other's forward
has the cores, and a forward split over fewer threads waits less at OpenMP's barriers. A step's reading and
decoding can also run apart from it (``load``): in DataLoader processes, or in threads ahead of the steps
(with one stream, where an accelerator runs the forward).
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
L = TypeVar("L")


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


class _LoadedChunks(torch.utils.data.Dataset):
    """``load(chunk)`` per index chunk: what DataLoader worker processes run for :func:`load_ahead`."""

    def __init__(self, load: Callable[[list[int]], L], chunks: list[list[int]]):
        self.load, self.chunks = load, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> L:
        return self.load(self.chunks[k])


def _as_loaded(loaded: L) -> L:
    return loaded


def load_ahead(
    load: Callable[[list[int]], L], chunks: Iterable[list[int]], threads: int = 1, num_workers: int = 0
) -> Iterator[L]:
    """``load(chunk)`` for every chunk, in order, ahead of the caller: in ``num_workers`` DataLoader processes
    (``load`` is pickled to them), else in ``threads`` threads (:func:`in_streams`; libpng, PIL and torch release
    the GIL)."""
    if num_workers > 0:
        data = _LoadedChunks(load, list(chunks))
        yield from torch.utils.data.DataLoader(data, batch_size=None, num_workers=num_workers, collate_fn=_as_loaded)
        return
    yield from in_streams(load, chunks, max(1, threads))


def run_batches(
    step: Callable[[list[int]], R] | Callable[[L], R],
    n: int,
    batch_size: int,
    streams: int = 1,
    desc: str | None = None,
    progress: bool = True,
    unit: str = "img",
    load: Callable[[list[int]], L] | None = None,
    loaders: int = 0,
    num_workers: int = 0,
) -> Iterator[R]:
    """``step(indices)`` for consecutive chunks of ``range(n)`` of ``batch_size``, results in order, ``streams``
    steps at once (:func:`in_streams`), with a progress bar of ``n`` (left out for a single batch).

    With ``load``, a step gets ``load(indices)`` (the chunk read and decoded): in the step's own stream by
    default, in ``num_workers`` DataLoader processes or ``loaders`` threads ahead of the steps when asked
    (:func:`load_ahead`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    work: Iterator = chunks(range(n), batch_size)
    ahead = None
    if load is not None and (num_workers > 0 or loaders > 0):
        work = ahead = load_ahead(load, work, loaders, num_workers)
    elif load is not None:
        step = _then(load, step)
    results = in_streams(step, work, max(1, streams))
    try:
        with tqdm(total=n, desc=desc, unit=unit, disable=not progress or n <= batch_size, leave=False) as bar:
            done = 0
            for result in results:
                yield result
                counted = min(batch_size, n - done)
                done += counted
                bar.update(counted)
    finally:  # stopped early: the running steps finish, the rest is cancelled, then the loads
        results.close()
        if ahead is not None:
            ahead.close()


def _then(read: Callable[[list[int]], L], step: Callable[[L], R]) -> Callable[[list[int]], R]:
    def load_and_step(chunk: list[int]) -> R:
        return step(read(chunk))

    return load_and_step
