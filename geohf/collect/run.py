"""The resumable collector: a plan in, an ``imagefolder`` out.

Locations are processed in batches, in plan order. In each batch the free look-ups run in
parallel (``workers`` threads sharing one rate limit), captures are then chosen in plan order
(the nearest capture not collected yet: de-duplication is deterministic), the images missing
from disk are downloaded in parallel, and the batch is committed in plan order (images renamed
into place, metadata appended, state checkpointed). A killed run loses at most the work since
the last checkpoint, and even that is found again on disk: an image is never paid for twice.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..geo.sphere import haversine_km
from .folder import OutputFolder, Recovery
from .http import AccessDenied, BudgetExhausted, CollectError, HttpClient, HttpConfig, QuotaExceeded, StopCollect
from .plan import named_rng
from .providers import Capture, ImageRequest, ViewOptions, provider_class
from .state import CollectState


@dataclass
class CollectConfig:
    """Everything ``geohf collect run`` needs besides the plan, the output folder and the key."""

    provider: str = "streetview"
    view: ViewOptions = field(default_factory=ViewOptions)
    http: HttpConfig = field(default_factory=HttpConfig)
    seed: int = 0
    """Seeds the random start heading of every location."""
    price_per_image: float | None = None
    """USD per image for the cost estimate (default: the provider's, $0.007 for Street View)."""
    workers: int = 4
    max_consecutive_failures: int = 20
    """Stop after this many locations in a row failed (the provider is down)."""
    base_url: str | None = None
    checkpoint_seconds: float = 2.0
    """Save the state at most this often (and always at the end)."""
    progress: bool = True

    @property
    def provider_class(self):
        return provider_class(self.provider)

    @property
    def price(self) -> float:
        return self.provider_class.price_per_image if self.price_per_image is None else self.price_per_image

    @property
    def requests_per_location(self) -> int:
        """At most one look-up and the images of one capture (retries aside)."""
        return 1 + self.provider_class.images_per_location(self.view)

    def options(self) -> dict:
        """The options that fix what lands in a folder: a re-run must repeat them."""
        view = asdict(self.view) if self.provider == "streetview" else {"radius_m": self.view.radius_m}
        return {"provider": self.provider, "seed": self.seed, **view}


@dataclass
class Estimate:
    """What a run would request and cost (``--dry-run``)."""

    provider: str
    planned: int
    finished: int
    locations: int
    lookups: int
    images: int
    images_per_location: int
    price_per_image: float
    rate: float

    @property
    def cost(self) -> float:
        return self.images * self.price_per_image

    def summary(self) -> str:
        todo = self.planned - self.finished
        lines = [f"dry run: {self.provider}, {self.planned} planned locations, {self.finished} already finished"]
        if self.locations < todo:
            lines.append(f"  --max-requests limits this run to {self.locations} of the {todo} remaining locations")
        lines += [
            f"  look-up requests: {self.lookups} (free)",
            f"  image requests:   up to {self.images} ({self.images_per_location} per location; fewer where there "
            "is no imagery or a duplicate)",
            f"  requests in all:  up to {self.lookups + self.images}, plus retries",
            f"  estimated cost:   up to ${self.cost:,.2f} at ${self.price_per_image:g} per image",
        ]
        if self.rate > 0:
            lines.append(
                f"  time at {self.rate:g} requests/s: at least {(self.lookups + self.images) / self.rate:,.0f} s"
            )
        lines.append("nothing was requested")
        return "\n".join(lines)


@dataclass
class CollectReport:
    """What one run did; ``bad_responses`` counts every 429, 5xx, time-out and broken answer."""

    provider: str
    output: str
    planned: int
    finished_before: int
    ok: int = 0
    no_imagery: int = 0
    duplicates: int = 0
    failed: Counter = field(default_factory=Counter)
    images_downloaded: int = 0
    images_reused: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    bad_responses: dict[str, int] = field(default_factory=dict)
    paid_images: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    remaining: int = 0
    stopped: str | None = None
    stop_kind: str | None = None
    recovery: Recovery = field(default_factory=Recovery)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def requests_per_second(self) -> float:
        return self.total_requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def finished(self) -> int:
        return self.planned - self.remaining

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (a run stopped by its request budget is fine), else 1."""
        return 1 if sum(self.failed.values()) or self.stop_kind not in (None, "budget") else 0

    def summary(self) -> str:
        lines = [
            f"{self.provider} -> {self.output}: {self.finished} of {self.planned} locations finished "
            f"({self.finished_before} before this run)",
            f"  this run: {self.ok} collected, {self.no_imagery} without imagery, {self.duplicates} duplicates, "
            f"{sum(self.failed.values())} failed",
            f"  images: {self.images_downloaded} downloaded, {self.images_reused} found on disk",
            f"  requests: {self.total_requests} ({', '.join(f'{k} {v}' for k, v in sorted(self.requests.items()))}), "
            f"{self.retries} retries, {self.requests_per_second:.1f} requests/s",
            f"  spend: {self.paid_images} paid images, ${self.cost_usd:,.2f}",
        ]
        if self.bad_responses:
            lines.append("  bad responses: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.bad_responses.items())))
        if self.failed:
            lines.append("  failed locations: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.failed.items())))
            lines.append("  failed locations are not finished: re-run the same command to retry them")
        if self.recovery:
            r = self.recovery
            lines.append(
                f"  resumed after an interruption: {r.metadata_bytes_dropped} uncommitted metadata bytes dropped, "
                f"{r.images_unpublished} uncommitted images kept for reuse, {r.temp_files} temp files removed"
            )
        if self.stopped:
            lines.append(f"STOPPED: {self.stopped}")
        return "\n".join(lines)


@dataclass
class LocationResult:
    """The outcome of one planned location within a batch."""

    location_id: str
    requested: tuple[float, float]
    status: str = "ok"
    capture: Capture | None = None
    images: list[ImageRequest] = field(default_factory=list)
    error: CollectError | None = None

    def fail(self, error: CollectError) -> None:
        self.status, self.error = ("stopped" if isinstance(error, StopCollect) else "failed"), error


def _attempt(fn: Callable, *args):
    """``(value, None)`` or ``(None, error)`` for the collector's errors (workers never raise)."""
    try:
        return fn(*args), None
    except CollectError as err:
        return None, err


def estimate(plan: pd.DataFrame, output: str | os.PathLike, config: CollectConfig) -> Estimate:
    """The dry run: requests and cost of collecting the unfinished part of ``plan`` (sends nothing)."""
    state = CollectState.for_folder(output, config.options())
    todo = len(state.todo(plan))
    per_location = config.provider_class.images_per_location(config.view)
    locations = todo
    if config.http.max_requests is not None:
        locations = min(todo, config.http.max_requests // config.requests_per_location)
    return Estimate(
        provider=config.provider,
        planned=len(plan),
        finished=len(plan) - todo,
        locations=locations,
        lookups=locations,
        images=locations * per_location,
        images_per_location=per_location,
        price_per_image=config.price,
        rate=config.http.rate,
    )


class Collector:
    """One run of the collector over a plan (see the module docstring)."""

    def __init__(self, plan: pd.DataFrame, output: str | os.PathLike, config: CollectConfig, key: str):
        self.plan, self.config = plan, config
        self.folder = OutputFolder(output)
        self.state = CollectState.for_folder(output, config.options())
        self.http = HttpClient(config.http, secrets=[key])
        self.provider = config.provider_class(self.http, key, config.view, config.base_url)
        self.report = CollectReport(config.provider, str(output), len(plan), 0)
        self._base_totals = dict(self.state.totals)
        self._last_save = 0.0
        self._consecutive_failures = 0
        self._committing = False  # the state is half-updated: do not save it

    def _open_folder(self) -> None:
        """Create or recover the folder; refuse a folder that geohf collect did not make."""
        fresh = not self.state.path.is_file()
        if fresh and (self.folder.metadata.is_file() or any(self.folder.images.glob("*"))):
            raise ValueError(
                f"{self.folder.root} already holds images or a metadata.jsonl that geohf collect did not write "
                "(no .collect/state.json): choose a new --output folder"
            )
        self.folder.create()
        self.report.recovery = self.folder.recover(self.state.metadata_bytes)
        if fresh:
            self.state.save()

    def run(self) -> CollectReport:
        todo = self.state.todo(self.plan)
        self._open_folder()
        self.report.finished_before = len(self.plan) - len(todo)
        self.seen = self.state.seen()
        start = time.perf_counter()
        bar = tqdm(
            total=len(todo), unit="loc", desc=f"collect {self.config.provider}", disable=not self.config.progress
        )
        try:
            with ThreadPoolExecutor(max(1, self.config.workers)) as self.pool:
                self._loop(todo, bar)
        finally:
            bar.close()
            self.http.close()
            self.report.seconds = time.perf_counter() - start
            self._fill_report()
            if not self._committing:
                self._save()
        if not self.report.remaining:
            self.folder.clear_pending()
        return self.report

    def _loop(self, todo: pd.DataFrame, bar) -> None:
        batch_size = max(8, 4 * self.config.workers)
        position = 0
        while position < len(todo) and self.report.stopped is None:
            size = min(batch_size, len(todo) - position)
            if self.config.http.max_requests is not None:
                left = self.config.http.max_requests - self.http.stats.total
                size = min(size, left // self.config.requests_per_location)
                if size <= 0:
                    self._stop(BudgetExhausted(f"the request budget (--max-requests {self.config.http.max_requests})"))
                    break
            results = self._process(todo.iloc[position : position + size])
            self._commit(results)
            position += size
            bar.update(len(results))
            bar.set_postfix(images=self.report.images_downloaded, failed=sum(self.report.failed.values()))

    def _process(self, rows: pd.DataFrame) -> list[LocationResult]:
        """Look up, choose and download one batch; stops cut the batch at the first stopped location."""
        results = [LocationResult(r.location_id, (r.latitude, r.longitude)) for r in rows.itertuples(index=False)]
        found = list(self.pool.map(lambda r: _attempt(self.provider.candidates, *r.requested), results))
        taken: set[str] = set()  # chosen earlier in this batch
        for res, (captures, error) in zip(results, found):
            if error is not None:
                res.fail(error)
                continue
            fresh = (c for c in captures if c.provider_id not in self.seen and c.provider_id not in taken)
            res.capture = next(fresh, None)
            if res.capture is None:
                res.status = "duplicate" if captures else "no_imagery"
                continue
            taken.add(res.capture.provider_id)
            start = float(named_rng(self.config.seed, res.location_id).integers(0, 360))
            res.images = self.provider.image_requests(res.capture, start)
        results = self._until_stop(results)
        jobs = [(res, req) for res in results if res.status == "ok" for req in res.images]
        missing = [(res, req) for res, req in jobs if not self.folder.has_image(req.file_name)]
        self.report.images_reused += len(jobs) - len(missing)
        for (res, _), (_, error) in zip(missing, self.pool.map(lambda job: _attempt(self._download, job[1]), missing)):
            self.report.images_downloaded += error is None
            if error is not None and res.status == "ok":
                res.fail(error)
        return self._until_stop(results)

    def _until_stop(self, results: list[LocationResult]) -> list[LocationResult]:
        """The results before the first stopped location (the rest are redone by the next run)."""
        for i, res in enumerate(results):
            if res.status == "stopped":
                self._stop(res.error)
                return results[:i]
        return results

    def _download(self, request: ImageRequest) -> None:
        self.folder.write_pending(request.file_name, self.provider.fetch(request))

    def _records(self, res: LocationResult) -> list[dict]:
        cap = res.capture
        return [
            {
                "file_name": req.file_name,
                "latitude": round(cap.latitude, 7),
                "longitude": round(cap.longitude, 7),
                "location_id": res.location_id,
                "heading": float(req.heading),
                "capture_date": cap.capture_date,
                "provider": self.config.provider,
                "provider_id": cap.provider_id,
            }
            for req in res.images
        ]

    def _commit(self, results: list[LocationResult]) -> None:
        """Publish images, append metadata, record the finished locations, in plan order."""
        records, done = [], {}
        for res in results:
            if res.status == "failed":
                self.report.failed[f"{res.error.kind}: {res.error.reason}"] += 1
                self._consecutive_failures += 1
                continue
            self._consecutive_failures = 0
            entry = {"status": res.status, "requested": list(res.requested)}
            if res.capture is not None:
                cap = res.capture
                km = float(haversine_km(*res.requested, cap.latitude, cap.longitude))
                entry |= {"provider_id": cap.provider_id, "actual": [cap.latitude, cap.longitude]}
                entry |= {"distance_m": round(km * 1000, 1), "images": len(res.images)}
                self.folder.publish([req.file_name for req in res.images])
                records += self._records(res)
                self.seen.add(cap.provider_id)
            done[res.location_id] = entry
            self.report.ok += res.status == "ok"
            self.report.no_imagery += res.status == "no_imagery"
            self.report.duplicates += res.status == "duplicate"
        size = self.folder.append_metadata(records)
        self._committing = True
        self.state.done.update(done)
        self.state.metadata_bytes = size
        self._committing = False
        if self._consecutive_failures >= self.config.max_consecutive_failures:
            self._stop(None, f"{self._consecutive_failures} locations in a row failed (is the provider down?)")
        if time.monotonic() - self._last_save >= self.config.checkpoint_seconds:
            self._save()

    def _stop(self, error: CollectError | None, message: str | None = None) -> None:
        if self.report.stopped is not None:
            return
        kind = {AccessDenied: "denied", QuotaExceeded: "quota", BudgetExhausted: "budget"}.get(type(error), "failures")
        finished = len(self.state.done)
        text = f"{message or error} -- {finished} of {len(self.plan)} locations finished"
        if kind in ("denied", "quota"):
            text += f"; check the key in {self.config.provider_class.key_env} and the quota, then re-run to resume"
        self.report.stopped, self.report.stop_kind = text, kind

    def _fill_report(self) -> None:
        stats = self.http.stats
        self.report.requests = dict(stats.requests)
        self.report.retries = stats.retries
        self.report.bad_responses = dict(stats.bad)
        self.report.paid_images = self._paid_images()
        self.report.cost_usd = self.report.paid_images * self.config.price
        self.report.remaining = int((~self.plan["location_id"].isin(list(self.state.done))).sum())

    def _paid_images(self) -> int:
        """Images answered by a provider that bills them (a 200 is billed, even if the JPEG was broken)."""
        return self.http.stats.answers[self.provider.image_kind] if self.config.price else 0

    def _save(self) -> None:
        paid = self._paid_images()
        run = {"requests": self.http.stats.total, "paid_images": paid, "cost_usd": paid * self.config.price}
        self.state.totals = {k: self._base_totals.get(k, 0) + v for k, v in run.items()}
        self.state.save()
        self._last_save = time.monotonic()


def collect(plan: pd.DataFrame, output: str | os.PathLike, config: CollectConfig, key: str) -> CollectReport:
    """Collect the unfinished locations of ``plan`` into ``output`` (see :class:`Collector`)."""
    Path(output).mkdir(parents=True, exist_ok=True)
    return Collector(plan, output, config, key).run()
