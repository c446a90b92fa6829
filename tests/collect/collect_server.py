"""A loopback emulator of the Street View Static API and Mapillary API v4, for the collector tests.

It follows the public documentation: Street View's metadata endpoint answers JSON with
``status`` (OK, ZERO_RESULTS, REQUEST_DENIED, OVER_QUERY_LIMIT, ...), ``pano_id``,
``location{lat,lng}``, ``date`` ("YYYY-MM") and ``copyright``; its image endpoint answers a
JPEG (``return_error_code=true``: 404 where there is no imagery, 403 for a bad key).
Mapillary's ``/images`` search answers ``{"data": [...]}`` with the requested ``fields``
for the images in a ``bbox``, authorised by ``Authorization: OAuth <token>``; thumbnails live
at their own URLs and need no token.

The world is deterministic: panoramas / photos sit on a grid of ``grid_deg`` degrees, a
hash of the grid cell decides whether a node has imagery. Faults are scripted per endpoint
(:meth:`ProviderEmulator.inject`): HTTP statuses (429 with ``Retry-After``, 5xx, 403),
``"timeout"`` (answers after ``slow_seconds``), ``"truncated"`` (half a body, then the
connection closes), ``"html"`` (an HTML page instead of a JPEG), ``"over_query_limit"``.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import zlib
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

ROUTES = {
    "/maps/api/streetview/metadata": "metadata",
    "/maps/api/streetview": "image",
    "/images": "search",
}


def _hash(*parts) -> int:
    return zlib.crc32(",".join(map(str, parts)).encode())


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    x = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return 6_371_008.8 * math.hypot(x, math.radians(lat2 - lat1))


class ProviderEmulator:
    """Both providers on one ``ThreadingHTTPServer`` at ``127.0.0.1:<random port>``."""

    def __init__(
        self,
        google_key: str = "google-test-key",
        mapillary_token: str = "MLY|test|token",
        grid_deg: float = 0.002,
        coverage: float = 0.8,
        image_px: int = 32,
    ):
        self.google_key, self.mapillary_token = google_key, mapillary_token
        self.grid_deg, self.coverage, self.image_px = grid_deg, coverage, image_px
        self.delay = 0.0
        self.slow_seconds = 1.0
        self.retry_after: str | None = None
        self.quota: dict[str, int] = {}
        self.counts: Counter = Counter()
        self.answered: Counter = Counter()
        self.log: list[dict] = []
        self._faults: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()
        self._jpegs: dict[tuple, bytes] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.emulator = self
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ProviderEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, endpoint: str, *actions) -> None:
        """Script the next answers of an endpoint (metadata, image, search, thumb)."""
        with self._lock:
            self._faults[endpoint].extend(actions)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.answered.clear()
            self.log.clear()
            self._faults.clear()
            self.quota.clear()
        self.delay, self.retry_after = 0.0, None

    def _next_fault(self, endpoint: str):
        with self._lock:
            self.counts[endpoint] += 1
            queue = self._faults[endpoint]
            return queue.popleft() if queue else None

    def _over_quota(self, endpoint: str) -> bool:
        with self._lock:
            if endpoint in self.quota and self.answered[endpoint] >= self.quota[endpoint]:
                return True
            self.answered[endpoint] += 1
            return False

    # ------------------------------------------------------------------ the world
    def node(self, lat: float, lon: float) -> tuple[int, int]:
        return round(lat / self.grid_deg), round(lon / self.grid_deg)

    def has_imagery(self, i: int, j: int) -> bool:
        return _hash("node", i, j) % 1000 < self.coverage * 1000

    def pano(self, i: int, j: int) -> dict:
        h = _hash("pano", i, j)
        return {
            "pano_id": f"CAoS{h:08x}{i & 0xFFFFFF:06x}{j & 0xFFFFFF:06x}",
            "lat": i * self.grid_deg,
            "lng": j * self.grid_deg,
            "date": f"{2008 + h % 16}-{1 + (h >> 4) % 12:02d}",
        }

    def pano_near(self, lat: float, lon: float, radius_m: float) -> dict | None:
        i, j = self.node(lat, lon)
        if not self.has_imagery(i, j) or _metres(lat, lon, i * self.grid_deg, j * self.grid_deg) > radius_m:
            return None
        return self.pano(i, j)

    def pano_by_id(self, pano_id: str) -> dict | None:
        try:
            i, j = (int(pano_id[12:18], 16), int(pano_id[18:24], 16))
        except ValueError:
            return None
        i, j = (i - (1 << 24) if i >= 1 << 23 else i), (j - (1 << 24) if j >= 1 << 23 else j)
        found = self.pano(i, j)
        return found if found["pano_id"] == pano_id and self.has_imagery(i, j) else None

    def photo(self, i: int, j: int) -> dict:
        h = _hash("photo", i, j)
        return {
            "id": f"{(i & 0xFFFFFF) * (1 << 24) + (j & 0xFFFFFF)}",
            "computed_geometry": {"type": "Point", "coordinates": [j * self.grid_deg, i * self.grid_deg]},
            "captured_at": 1_400_000_000_000 + (h % 300_000_000) * 1000,
            "compass_angle": (h % 36000) / 100.0,
            "thumb_1024_url": f"{self.base_url}/thumbs/{i}_{j}.jpg",
        }

    def photos_in(self, x0: float, y0: float, x1: float, y1: float, limit: int) -> list[dict]:
        g = self.grid_deg
        nodes = [
            (i, j)
            for i in range(math.ceil(y0 / g), math.floor(y1 / g) + 1)
            for j in range(math.ceil(x0 / g), math.floor(x1 / g) + 1)
            if self.has_imagery(i, j)
        ]
        return [self.photo(i, j) for i, j in nodes[:limit]]

    def jpeg(self, *key, size: tuple[int, int] | None = None) -> bytes:
        size = size or (self.image_px, self.image_px)
        with self._lock:
            if (key, size) not in self._jpegs:
                h = _hash(*key)
                im = Image.new("RGB", size, (h & 255, (h >> 8) & 255, (h >> 16) & 255))
                im.putpixel((0, 0), ((h >> 24) & 255, 0, 0))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                self._jpegs[(key, size)] = buf.getvalue()
            return self._jpegs[(key, size)]

    # ------------------------------------------------------------------ answers
    def answer(self, endpoint: str, q: dict, headers) -> tuple[int, dict, bytes]:
        if endpoint == "metadata":
            return self._metadata(q)
        if endpoint == "image":
            return self._image(q)
        if endpoint == "search":
            return self._search(q, headers)
        if endpoint == "thumb":
            return self._thumb(q)
        return 404, {"Content-Type": "text/plain"}, b"not found"

    @staticmethod
    def _json(status: int, body: dict) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(body).encode()

    def _metadata(self, q: dict) -> tuple[int, dict, bytes]:
        if q.get("key") != self.google_key:
            message = f"The provided API key is invalid: {q.get('key', '')}"  # echoes the key: tests redaction
            return self._json(200, {"status": "REQUEST_DENIED", "error_message": message})
        lat, lon = map(float, q["location"].split(","))
        found = self.pano_near(lat, lon, float(q.get("radius", 50)))
        if found is None:
            return self._json(200, {"status": "ZERO_RESULTS"})
        body = {"copyright": "© Google", "date": found["date"], "pano_id": found["pano_id"]}
        body |= {"location": {"lat": found["lat"], "lng": found["lng"]}, "status": "OK"}
        return self._json(200, body)

    def _image(self, q: dict) -> tuple[int, dict, bytes]:
        if q.get("key") != self.google_key:
            return (
                403,
                {"Content-Type": "text/plain"},
                f"The Google Maps Platform server rejected key {q.get('key')}".encode(),
            )
        if self._over_quota("image"):
            return 403, {"Content-Type": "text/plain"}, b"Daily quota exceeded for Street View Static API"
        if "pano" in q:
            found = self.pano_by_id(q["pano"])
        else:
            found = self.pano_near(*map(float, q["location"].split(",")), float(q.get("radius", 50)))
        if found is None:
            return 404, {"Content-Type": "text/plain"}, b"no imagery"
        w, h = map(int, q.get("size", "640x640").split("x"))
        size = (min(w, self.image_px), min(h, self.image_px))
        return 200, {"Content-Type": "image/jpeg"}, self.jpeg(found["pano_id"], q.get("heading"), size=size)

    def _search(self, q: dict, headers) -> tuple[int, dict, bytes]:
        if headers.get("Authorization") != f"OAuth {self.mapillary_token}":
            error = {"message": "Invalid OAuth access token - Cannot parse access token", "type": "OAuthException"}
            return self._json(403, {"error": {**error, "code": 190}})
        x0, y0, x1, y1 = map(float, q["bbox"].split(","))
        fields = q.get("fields", "id").split(",")
        photos = self.photos_in(x0, y0, x1, y1, int(q.get("limit", 2000)))
        return self._json(200, {"data": [{k: p[k] for k in fields if k in p} for p in photos]})

    def _thumb(self, q: dict) -> tuple[int, dict, bytes]:
        return 200, {"Content-Type": "image/jpeg"}, self.jpeg("thumb", q["node"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        em: ProviderEmulator = self.server.emulator
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        endpoint = ROUTES.get(url.path)
        if url.path.startswith("/thumbs/"):
            endpoint, q["node"] = "thumb", url.path.rsplit("/", 1)[-1]
        with em._lock:
            em.log.append({"endpoint": endpoint, "query": q, "authorization": self.headers.get("Authorization")})
        if em.delay:
            time.sleep(em.delay)
        fault = em._next_fault(endpoint)
        try:
            if fault is None or not self._fault(fault, em):
                self._send(*em.answer(endpoint, q, self.headers))
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            self.close_connection = True

    def _send(self, status: int, headers: dict, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _fault(self, fault, em: ProviderEmulator) -> bool:
        """Answer a scripted fault; False lets the normal answer through (after a delay)."""
        if isinstance(fault, int):
            headers = {"Content-Type": "text/plain"}
            if fault == 429 and em.retry_after is not None:
                headers["Retry-After"] = em.retry_after
            self._send(fault, headers, f"scripted {fault}".encode())
        elif fault == "timeout":
            time.sleep(em.slow_seconds)
            return False
        elif fault == "truncated":
            body = em.jpeg("truncated")
            self._send(200, {"Content-Type": "image/jpeg"}, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        elif fault == "html":
            self._send(200, {"Content-Type": "image/jpeg"}, b"<html><body>Service Unavailable</body></html>")
        elif fault in ("over_query_limit", "unknown_error"):
            body = json.dumps({"status": fault.upper(), "error_message": "scripted"}).encode()
            self._send(200, {"Content-Type": "application/json"}, body)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        return True
