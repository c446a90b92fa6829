"""Work on worker processes that stops with an error, never waits forever, when a worker dies.

:func:`map_chunks` runs a function over chunks of work on a spawn-started
:class:`~concurrent.futures.ProcessPoolExecutor`. A worker that dies (the out-of-memory killer, a crash, a
start that cannot import geohf) breaks the pool at once, where ``multiprocessing.Pool`` lost its task and
waited for it forever: the chunks not done yet run again in a fresh pool, a bounded number of times, and
then the run stops with one line naming what died and the fix.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ..errors import UserError

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 2
"""Fresh pools after a worker died, each only after a pool that finished at least one chunk."""


def start_pool(num_proc: int, module: str) -> ProcessPoolExecutor:
    """A spawn pool of ``num_proc`` workers for work not known yet (while a build plans): as many as there are CPUs
    beside this process start now, each importing ``module``, so their start-up runs beside the plan (more would
    slow the plan as much); the others start with the work. Give it to :func:`map_chunks`, which shuts it down."""
    pool = ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"))
    for _ in range(max(1, min(num_proc, (os.cpu_count() or 1) - 1))):  # a spawn pool starts one per task
        pool.submit(_import, module)
    return pool


def _import(module: str) -> None:
    importlib.import_module(module)


def map_chunks(
    fn: Callable[[T], R],
    chunks: Sequence[T],
    num_proc: int,
    what: str,
    fix: str,
    pool: ProcessPoolExecutor | None = None,
) -> Iterator[tuple[int, R]]:
    """Yield ``(i, fn(chunks[i]))`` for every chunk, in the order they finish, computed on ``num_proc`` processes.

    ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one) and give the same
    result when run again. At most ``2 * num_proc`` chunks are in flight. When a worker dies, the chunks not
    yielded yet run again in a fresh pool, up to :data:`RETRIES` times; a pool that dies before finishing any
    chunk (its workers cannot start, or the same chunk kills them) is not retried. Then
    :class:`~geohf.errors.UserError` says that ``what`` failed, why, and ``fix``. ``pool``: the first pool, started
    already (:func:`start_pool`); it is shut down at the end.
    """
    todo = list(range(len(chunks)))
    deaths = 0
    while todo:
        done: set[int] = set()
        try:
            for i, result in _run_pool(fn, chunks, todo, num_proc, pool):
                done.add(i)
                yield i, result
            return
        except BrokenProcessPool:
            pool = None
            deaths += 1
            todo = [i for i in todo if i not in done]
            if not done:
                raise UserError(
                    f"{what}: a worker process died before finishing any work (it could not start, its error is "
                    f"above, or it was killed): {fix}"
                ) from None
            if deaths > RETRIES:
                raise UserError(
                    f"{what}: worker processes died {deaths} times (killed by the system, e.g. out of memory, or "
                    f"crashed): {fix}"
                ) from None


def _run_pool(
    fn: Callable[[T], R], chunks: Sequence[T], todo: list[int], num_proc: int, pool: ProcessPoolExecutor | None = None
) -> Iterator[tuple[int, R]]:
    """One pool (``pool``, else a new one) over the chunks ``todo``; raises ``BrokenProcessPool`` when one of its
    workers dies."""
    pool = pool or ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"))
    queue = iter(todo)
    running: dict[Future[R], int] = {}
    try:
        for i in itertools.islice(queue, 2 * num_proc):
            running[pool.submit(fn, chunks[i])] = i
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i = running.pop(future)
                yield i, future.result()
                for j in itertools.islice(queue, 1):
                    running[pool.submit(fn, chunks[j])] = j
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
