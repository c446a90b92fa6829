"""Hostile web servers (a local server thread): every download ends in bounded time and memory, in one line.

``geohf predict URL``, the pipeline and the app read URLs through :func:`geohf.images.fetch_url`, and ``geohf
collect`` through its HTTP client: both read a body with :func:`geohf.downloads.read_body`, a size cap, a time-out
per read and a total deadline (the per-read time-out alone let a server that sends one byte every few seconds keep
them waiting for as long as it liked).
"""

from __future__ import annotations

import gzip
import io
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from geohf.collect.http import HttpClient, HttpConfig, RequestFailed
from geohf.images import ImageLoadError, decode_image, fetch_url

TIMEOUT, DEADLINE, CAP = 1.0, 1.5, 2 << 20
DRIP = 0.25  # seconds between the bytes of a slow answer


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _head(self, status: int = 200, length: int | None = None, **headers) -> None:
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()

    def _drip(self, data: bytes, chunked: bool = False) -> None:
        for byte in data:
            piece = bytes([byte])
            self.wfile.write(b"1\r\n" + piece + b"\r\n" if chunked else piece)
            self.wfile.flush()
            time.sleep(DRIP)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path
        try:
            if path == "/ok.png":
                data = _png()
                self._head(200, len(data), Content_Type="image/png")
                self.wfile.write(data)
            elif path == "/missing.png":
                self._head(404, 0)
            elif path == "/slow":
                self._head(200, 1000)
                self._drip(b"x" * 1000)
            elif path == "/slow-chunked":
                self._head(200, None, Transfer_Encoding="chunked")
                self._drip(b"x" * 1000, chunked=True)
            elif path == "/silent":
                self._head(200, 1000)
                time.sleep(30)
            elif path == "/big-declared":
                self._head(200, 100 << 20)
                self.wfile.write(b"\0" * (1 << 16))
            elif path == "/big-chunked":
                self._head(200, None, Transfer_Encoding="chunked")
                block = b"\0" * (1 << 16)
                for _ in range(1000):
                    self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
            elif path == "/cut":
                self._head(200, 1000)
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif path == "/gzip-bomb":
                body = self.server.gzip_bomb
                self._head(200, len(body), Content_Encoding="gzip", Content_Type="image/jpeg")
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client gave up: what the cases want


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that gave up: expected here
        pass


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        block = b"\0" * (1 << 20)
        for _ in range(256):  # 256 MiB of zeros in ~250 kB
            gz.write(block)
    httpd.gzip_bomb = buf.getvalue()
    # a listening socket that never answers: the connection is accepted by the kernel, nothing is sent
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", f"http://127.0.0.1:{mute.getsockname()[1]}"
    httpd.shutdown()
    mute.close()


# path -> (what the server does, expected words of the error or "ok", whether geohf needed a fix)
URL_CASES = {
    "/ok.png": ("a PNG", "ok", False),
    "/missing.png": ("HTTP 404", "download failed (404", False),
    "/slow": ("1 byte every 0.25 s, Content-Length 1000 (250 s in all)", "not finished after", True),
    "/slow-chunked": ("1 byte every 0.25 s, chunked", "not finished after", True),
    "/silent": ("headers, then nothing for 30 s", "download failed", False),
    "/big-declared": ("Content-Length 100 MiB", "larger than 2 MiB", True),
    "/big-chunked": ("64 MiB chunked, no Content-Length", "larger than 2 MiB", False),
    "/cut": ("Content-Length 1000, 10 bytes, then the connection closed", "download failed", False),
    "/gzip-bomb": ("Content-Encoding gzip: 256 MiB of zeros in 250 kB", "larger than 2 MiB", False),
    "mute": ("a port that accepts the connection and never answers", "download failed", False),
}


@pytest.mark.parametrize("path", list(URL_CASES))
def test_url_cases(server, path, record):
    base, mute = server
    url = mute + "/x.jpg" if path == "mute" else base + path
    what, expected, fixed = URL_CASES[path]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        data = fetch_url(url, timeout=TIMEOUT, max_bytes=CAP, deadline=DEADLINE)
        outcome, ok = f"{len(data):,} bytes", expected == "ok"
        if ok:
            assert decode_image(url, data).image.size == (32, 24)
    except ImageLoadError as err:
        outcome, ok = err.reason, expected != "ok" and expected in err.reason
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    bounded = seconds < DEADLINE + TIMEOUT + 1.0 and peak < 4 * CAP
    record("urls", f"server: {what}", "geohf predict URL (fetch_url)", f"{expected} within {DEADLINE + TIMEOUT:g} s "
           "and 8 MiB", f"{outcome} after {seconds:.1f} s, peak {peak / 2**20:.1f} MiB", ok and bounded,
           fixed=fixed)  # fmt: skip
    assert ok, outcome
    assert bounded, (seconds, peak)


# path -> expected words of the collector's error ("ok": the answer's bytes), whether the client needed a fix
COLLECT_CASES = {
    "/ok.png": ("ok", False),
    "/missing.png": ("HTTP 404", False),
    "/slow": ("not finished after 1.5 s", True),
    "/slow-chunked": ("not finished after 1.5 s", True),
    "/silent": ("time-out", False),
    "/big-declared": ("larger than 2 MiB", True),
    "/big-chunked": ("larger than 2 MiB", True),
    "/cut": ("ProtocolError", False),
    "/gzip-bomb": ("larger than 2 MiB", True),
    "mute": ("time-out", False),
}


@pytest.mark.parametrize("path", list(COLLECT_CASES))
def test_collector_client_cases(server, path, record):
    """The collector's client: one retry per case, each try within the deadline and the cap."""
    base, mute = server
    url = mute + "/x.jpg" if path == "mute" else base + path
    expected, fixed = COLLECT_CASES[path]
    config = HttpConfig(rate=0, retries=1, backoff=0.01, timeout=TIMEOUT, deadline=DEADLINE, max_bytes=CAP)
    tracemalloc.start()
    start = time.perf_counter()
    with HttpClient(config) as client:
        try:
            outcome = f"{len(client.get('image', url, lambda answer: answer.content)):,} bytes"
            ok = expected == "ok"
        except RequestFailed as err:
            outcome, ok = str(err), expected != "ok" and expected in str(err)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    bounded = seconds < 2 * (DEADLINE + TIMEOUT) + 1.0 and peak < 4 * CAP
    record("urls", f"server: {URL_CASES[path][0]}", "geohf collect run (its HTTP client, 1 retry)",
           f"{expected} within {2 * (DEADLINE + TIMEOUT):g} s and 8 MiB",
           f"{outcome} after {seconds:.1f} s, peak {peak / 2**20:.1f} MiB", ok and bounded, fixed=fixed)  # fmt: skip
    assert ok, outcome
    assert bounded, (seconds, peak)
