"""An HTTP answer's body read within a size cap and a total deadline.

A time-out bounds the connection and each socket read only: a server that sends one byte every few
seconds never trips it. :func:`read_body` reads at most one socket read at a time and checks the
clock between reads, so a download ends within ``deadline + timeout`` seconds, and never holds more
than ``max_bytes`` (after decompression) in memory.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
DOWNLOAD_DEADLINE = 120.0  # seconds for a whole download


class DownloadRefused(Exception):
    """A body that was not read to its end; the message says why in words a user can act on."""


class BodyTooLarge(DownloadRefused):
    """The body is (or says it is) larger than the cap."""


class BodyTooSlow(DownloadRefused):
    """The body did not arrive before the deadline."""


def read_body(response: requests.Response, max_bytes: int, end: float) -> bytes:
    """The body of a ``stream=True`` ``response``, decompressed: :class:`BodyTooLarge` beyond ``max_bytes``,
    :class:`BodyTooSlow` once ``time.monotonic()`` passes ``end``. Transport errors (urllib3's, unwrapped)
    propagate; closing the response is the caller's."""
    too_large = f"larger than {max_bytes / (1 << 20):g} MiB"
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(too_large)
    data = bytearray()
    while chunk := response.raw.read1(1 << 16, decode_content=True):  # one socket read at most
        data += chunk
        if len(data) > max_bytes:
            raise BodyTooLarge(too_large)
        if time.monotonic() > end:
            raise BodyTooSlow(f"not finished in time ({len(data):,} bytes received)")
    return bytes(data)
