"""A polite HTTP client: a rate limit, retries with exponential backoff, time-outs, a request budget.

Every answer is read within a size cap and a total deadline (:func:`geohf.downloads.read_body`): a
server that trickles its answer a byte at a time cannot keep a worker waiting.

Secrets (API keys, tokens) never leave through it: error messages are built from the endpoint
kind and status only, response snippets are redacted, and a logging filter redacts urllib3's
debug lines (which print request URLs, Street View keys included).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import urllib3.exceptions

from ..downloads import MAX_DOWNLOAD_BYTES, BodyTooLarge, BodyTooSlow, read_body

T = TypeVar("T")
URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.response")


class CollectError(Exception):
    """Base class of the collector's errors."""


class StopCollect(CollectError):
    """Nothing more can be collected in this run (bad key, quota, request budget)."""


class AccessDenied(StopCollect):
    """The provider refused the key (HTTP 401/403, REQUEST_DENIED)."""


class QuotaExceeded(StopCollect):
    """The provider kept answering 429 / OVER_QUERY_LIMIT after every retry."""


class BudgetExhausted(StopCollect):
    """``--max-requests`` requests have been sent."""


class RequestFailed(CollectError):
    """One request failed for good (retries used up, or an answer that retrying cannot fix)."""

    def __init__(self, kind: str, reason: str, detail: str = ""):
        self.kind, self.reason = kind, reason
        super().__init__(f"{kind} request failed: {reason}{f' ({detail})' if detail else ''}")


class Retry(CollectError):
    """Raised by a response parser: the answer is transient, try again (after ``retry_after`` s if given)."""

    def __init__(self, reason: str, retry_after: float | None = None, quota: bool = False):
        self.reason, self.retry_after, self.quota = reason, retry_after, quota
        super().__init__(reason)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that removes secrets from records (formats the message first)."""

    def __init__(self, secrets: Sequence[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class RateLimiter:
    """At most ``rate`` calls per second over all threads (evenly spaced); ``rate <= 0``: no limit."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


@dataclass
class HttpConfig:
    """How politely to ask."""

    rate: float = 10.0
    """Requests per second over all workers (0: no limit)."""
    retries: int = 5
    """Retries of a request after a 429, 5xx, time-out or transient answer."""
    backoff: float = 1.0
    """First wait before a retry, in seconds; doubled at every retry (plus up to 25% jitter)."""
    max_backoff: float = 60.0
    timeout: float = 10.0
    """Seconds to wait for a connection and for each read."""
    deadline: float = 60.0
    """Seconds for a whole answer: a slower one is retried like a time-out."""
    max_bytes: int = MAX_DOWNLOAD_BYTES
    """The largest answer read; a larger one fails the request (not retried)."""
    max_requests: int | None = None
    """Send at most this many requests in the run (retries included)."""


@dataclass
class HttpStats:
    """What was sent and what came back, by endpoint kind."""

    requests: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    """2xx answers: what a provider bills."""
    bad: Counter = field(default_factory=Counter)
    retries: int = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, its body read whole within the client's cap and deadline."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` when it is not)."""
        return json.loads(self.content)


class HttpClient:
    """GET with a shared rate limit, retries and a request budget; one ``requests.Session`` per thread."""

    def __init__(self, config: HttpConfig | None = None, secrets: Sequence[str] = ()):
        self.config = config or HttpConfig()
        self.secrets = [s for s in secrets if s]
        self.stats = HttpStats()
        self.limiter = RateLimiter(self.config.rate)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._jitter = random.Random()
        self._filter = RedactSecrets(self.secrets)
        for name in URLLIB3_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        for name in URLLIB3_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(self._local.session)
        return self._local.session

    def count_bad(self, kind: str, reason: str) -> None:
        with self._lock:
            self.stats.bad[f"{kind}: {reason}"] += 1

    def _reserve(self, kind: str) -> None:
        with self._lock:
            if self.config.max_requests is not None and self.stats.total >= self.config.max_requests:
                raise BudgetExhausted(f"the request budget (--max-requests {self.config.max_requests}) is used up")
            self.stats.requests[kind] += 1
        self.limiter.wait()

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.backoff * 2**attempt, self.config.max_backoff)
        return base * (1.0 + 0.25 * self._jitter.random())

    def snippet(self, response: Answer) -> str:
        """The start of a response body, secrets removed (for error messages)."""
        return redact(response.text[:200], self.secrets).strip()

    def _fetch(self, url: str, params: dict | None, headers: dict | None) -> Answer:
        """One GET, its body read within the cap and the deadline (the connection closed on any failure)."""
        end = time.monotonic() + self.config.deadline
        wait = min(self.config.timeout, self.config.deadline)
        with self.session.get(url, params=params, headers=headers, timeout=(wait, wait), stream=True) as response:
            return Answer(response.status_code, response.headers, read_body(response, self.config.max_bytes, end))

    def _check_status(self, kind: str, response: Answer) -> None:
        status = response.status_code
        if status in (401, 403):
            raise AccessDenied(f"{kind} request refused with HTTP {status}: {self.snippet(response)}")
        if status == 429 or status >= 500:
            raise Retry(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")), quota=status == 429)
        if status >= 400:
            raise RequestFailed(kind, f"HTTP {status}", self.snippet(response))

    def get(
        self,
        kind: str,
        url: str,
        parse: Callable[[Answer], T],
        params: dict | None = None,
        headers: dict | None = None,
    ) -> T:
        """GET ``url`` and ``parse`` the answer, retrying transient failures (a time-out, an answer slower
        than the deadline).

        ``parse`` may raise :class:`Retry` for an answer that is transient (Street View's
        ``OVER_QUERY_LIMIT``). Raises :class:`RequestFailed` when retries are used up,
        :class:`AccessDenied` on 401/403, :class:`QuotaExceeded` when 429s never stop and
        :class:`BudgetExhausted` when the request budget is spent. No message holds the URL.
        """
        for attempt in range(self.config.retries + 1):
            self._reserve(kind)
            try:
                response = self._fetch(url, params, headers)
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                failure = Retry("time-out")
            except BodyTooSlow:
                failure = Retry(f"answer not finished after {self.config.deadline:g} s")
            except BodyTooLarge as err:
                self.count_bad(kind, "answer too large")
                raise RequestFailed(kind, f"answer {err}") from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                # the message holds the URL: keep the class name only (urllib3's body errors come unwrapped)
                failure = Retry(type(err).__name__)
            else:
                try:
                    self._check_status(kind, response)
                    with self._lock:
                        self.stats.answers[kind] += 1
                    return parse(response)
                except Retry as retry:
                    failure = retry
                except CollectError as err:  # parsers may quote the answer, and answers may quote the key
                    err.args = tuple(redact(a, self.secrets) if isinstance(a, str) else a for a in err.args)
                    raise
            self.count_bad(kind, failure.reason)
            if attempt == self.config.retries:
                if failure.quota:
                    raise QuotaExceeded(f"{kind} requests still refused ({failure.reason}) after {attempt + 1} tries")
                raise RequestFailed(kind, failure.reason, f"after {attempt + 1} tries")
            with self._lock:
                self.stats.retries += 1
            time.sleep(failure.retry_after if failure.retry_after is not None else self._backoff(attempt))
        raise AssertionError("unreachable")
