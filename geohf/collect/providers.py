"""Street-level image providers: Google Street View Static API and Mapillary API v4.

A provider answers two questions for the runner: which captures lie near a point (nearest
first; Street View's metadata endpoint, free, or Mapillary's image search in a bounding box),
and which image files to download for a chosen capture (N headings of a Street View
panorama, or Mapillary's 1024-px thumbnail). Keys travel only in request parameters or
headers, never in a returned object.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import ClassVar

from PIL import Image

from ..geo.sphere import haversine_km
from .http import AccessDenied, Answer, HttpClient, RequestFailed, Retry
from .names import STREETVIEW_SOURCES

IMAGES_DIR = "images"


class MissingKeyError(ValueError):
    """No key was given for a provider."""


@dataclass
class ViewOptions:
    """What to request at each location (the same for a whole output folder)."""

    headings: int = 3
    """Street View images per panorama, evenly spaced from a random start heading (e.g. 3 x 120°: a full turn)."""
    fov: float = 120.0
    size: str = "640x640"
    pitch: float = 0.0
    radius_m: float = 50.0
    """Search radius around each planned point (Street View ``radius``; half the side of Mapillary's bbox)."""
    source: str = "outdoor"
    """Street View panorama source: ``outdoor`` (official outdoor imagery) or ``default``."""

    def __post_init__(self):
        if not re.fullmatch(r"\d+x\d+", self.size) or 0 in map(int, self.size.split("x")):
            raise ValueError(f"--size must look like 640x640, got {self.size!r}")
        if not 0 < self.fov <= 120:
            raise ValueError(f"--fov must be in (0, 120] degrees (the Street View Static API maximum), got {self.fov}")
        if not 1 <= self.headings <= 36:
            raise ValueError(f"--headings must be between 1 and 36, got {self.headings}")
        if self.radius_m <= 0:
            raise ValueError(f"--radius must be positive, got {self.radius_m}")
        if self.source not in STREETVIEW_SOURCES:
            raise ValueError(f"--source must be {' or '.join(STREETVIEW_SOURCES)}, got {self.source!r}")


@dataclass
class Capture:
    """One panorama / photo found near a planned point."""

    provider_id: str
    latitude: float
    longitude: float
    capture_date: str
    heading: float | None = None
    image_url: str | None = None


@dataclass
class ImageRequest:
    """One image file to download: where it goes and how to ask for it."""

    file_name: str
    heading: float
    url: str
    params: dict | None = field(default=None, repr=False)  # holds the Street View key


def safe_name(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def check_jpeg(data: bytes) -> None:
    """Raise :class:`Retry` unless ``data`` is a complete JPEG (a truncated or HTML answer is transient)."""
    if not data.startswith(b"\xff\xd8"):
        raise Retry("not a JPEG")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError):
        raise Retry("broken JPEG") from None


def _json(response: Answer) -> dict:
    try:
        body = response.json()
    except ValueError:
        raise Retry("invalid JSON") from None
    if not isinstance(body, dict):
        raise Retry("unexpected JSON")
    return body


class Provider:
    """The interface the runner uses; subclasses fill in the endpoints."""

    name: ClassVar[str]
    key_env: ClassVar[str]
    default_base_url: ClassVar[str]
    price_per_image: ClassVar[float]
    lookup_kind: ClassVar[str]
    image_kind: ClassVar[str] = "image"

    def __init__(self, http: HttpClient, key: str, view: ViewOptions, base_url: str | None = None):
        self.http, self._key, self.view = http, key, view
        self.base_url = (base_url or self.default_base_url).rstrip("/")

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, view={self.view!r})"

    @classmethod
    def images_per_location(cls, view: ViewOptions) -> int:
        raise NotImplementedError

    def candidates(self, lat: float, lon: float) -> list[Capture]:
        """Captures near a point, nearest first (empty: no imagery there)."""
        raise NotImplementedError

    def image_requests(self, capture: Capture, start_heading: float) -> list[ImageRequest]:
        raise NotImplementedError

    def fetch(self, request: ImageRequest) -> bytes:
        """The checked JPEG bytes of one image."""
        return self.http.get(self.image_kind, request.url, self._image_bytes, params=request.params)

    @staticmethod
    def _image_bytes(response: Answer) -> bytes:
        check_jpeg(response.content)
        return response.content


class StreetView(Provider):
    """Google Street View Static API: the free metadata endpoint, then N headings per panorama."""

    name = "streetview"
    key_env = "GOOGLE_MAPS_API_KEY"
    default_base_url = "https://maps.googleapis.com"
    price_per_image = 0.007
    lookup_kind = "metadata"
    METADATA_PATH = "/maps/api/streetview/metadata"
    IMAGE_PATH = "/maps/api/streetview"

    @classmethod
    def images_per_location(cls, view: ViewOptions) -> int:
        return view.headings

    def candidates(self, lat: float, lon: float) -> list[Capture]:
        params = {
            "location": f"{lat:.6f},{lon:.6f}",
            "radius": f"{self.view.radius_m:g}",
            "source": self.view.source,
            "key": self._key,
        }
        return self.http.get(self.lookup_kind, self.base_url + self.METADATA_PATH, self._parse_metadata, params=params)

    def _parse_metadata(self, response: Answer) -> list[Capture]:
        body = _json(response)
        status = body.get("status")
        if status in ("ZERO_RESULTS", "NOT_FOUND"):
            return []
        if status == "REQUEST_DENIED":
            raise AccessDenied(f"Street View refused the key (REQUEST_DENIED): {body.get('error_message', '')}")
        if status == "OVER_QUERY_LIMIT":
            raise Retry("OVER_QUERY_LIMIT", quota=True)
        if status == "UNKNOWN_ERROR":
            raise Retry("UNKNOWN_ERROR")
        location = body.get("location") or {}
        if status != "OK" or not body.get("pano_id") or "lat" not in location or "lng" not in location:
            raise RequestFailed(self.lookup_kind, f"status {status!r}" if status != "OK" else "incomplete metadata")
        return [Capture(str(body["pano_id"]), float(location["lat"]), float(location["lng"]), body.get("date", ""))]

    def image_requests(self, capture: Capture, start_heading: float) -> list[ImageRequest]:
        n = self.view.headings
        headings = [round(start_heading + k * 360.0 / n) % 360 for k in range(n)]
        common = {"size": self.view.size, "pano": capture.provider_id, "fov": f"{self.view.fov:g}"}
        common |= {"pitch": f"{self.view.pitch:g}", "return_error_code": "true"}
        return [
            ImageRequest(
                f"{IMAGES_DIR}/{safe_name(capture.provider_id)}_{h:03d}.jpg",
                h,
                self.base_url + self.IMAGE_PATH,
                {**common, "heading": str(h), "key": self._key},
            )
            for h in headings
        ]


class Mapillary(Provider):
    """Mapillary API v4: images in a bounding box around the point, nearest first, 1024-px thumbnails."""

    name = "mapillary"
    key_env = "MAPILLARY_ACCESS_TOKEN"
    default_base_url = "https://graph.mapillary.com"
    price_per_image = 0.0
    lookup_kind = "search"
    SEARCH_PATH = "/images"
    FIELDS = "id,thumb_1024_url,computed_geometry,captured_at,compass_angle"
    LIMIT = 50

    @classmethod
    def images_per_location(cls, view: ViewOptions) -> int:
        return 1

    def candidates(self, lat: float, lon: float) -> list[Capture]:
        dlat = self.view.radius_m / 111_320.0
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        bbox = ",".join(f"{v:.6f}" for v in (lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        params = {"fields": self.FIELDS, "bbox": bbox, "limit": str(self.LIMIT)}
        headers = {"Authorization": f"OAuth {self._key}"}
        found = self.http.get(self.lookup_kind, self.base_url + self.SEARCH_PATH, _json, params=params, headers=headers)
        captures = [c for c in map(self._capture, found.get("data") or []) if c is not None]
        return sorted(captures, key=lambda c: float(haversine_km(lat, lon, c.latitude, c.longitude)))

    def _capture(self, item: dict) -> Capture | None:
        try:
            lon, lat = item["computed_geometry"]["coordinates"][:2]
            when = datetime.fromtimestamp(int(item["captured_at"]) / 1000, tz=timezone.utc)
            return Capture(
                str(item["id"]),
                float(lat),
                float(lon),
                when.date().isoformat(),
                round(float(item.get("compass_angle") or 0.0), 2),
                str(item["thumb_1024_url"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            self.http.count_bad(self.lookup_kind, "incomplete image record")
            return None

    def image_requests(self, capture: Capture, start_heading: float) -> list[ImageRequest]:
        # the thumbnail URL is signed by Mapillary's CDN: no token goes with it
        return [ImageRequest(f"{IMAGES_DIR}/{safe_name(capture.provider_id)}.jpg", capture.heading, capture.image_url)]


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (StreetView, Mapillary)}


def provider_class(name: str) -> type[Provider]:
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose one of {sorted(PROVIDERS)}")
    return PROVIDERS[name]


def resolve_key(name: str, key: str | None = None) -> str:
    """The key for a provider: ``key`` if given, else its environment variable; the error names the variable."""
    cls = provider_class(name)
    key = key or os.environ.get(cls.key_env, "")
    if not key.strip():
        raise MissingKeyError(
            f"{cls.name} needs an API key: set the environment variable {cls.key_env} (or pass --key)"
        )
    return key.strip()
