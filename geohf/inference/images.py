"""Opening user images robustly: one clear error per bad file, never a crash of the batch.

Images come from local files, URLs or encoded bytes (dataset rows); they are decoded
fully into RGB with their EXIF orientation applied, and their EXIF GPS location is read
on the way. HEIC/HEIF needs ``pillow-heif`` (used when installed).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..files import HEIF_SUFFIXES
from ..modeling.image_processing_geohf import to_rgb_image
from .exif import GpsFix, read_gps

HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
URL_SCHEMES = ("http://", "https://")
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class LoadedImage:
    """A decoded RGB image and the location its EXIF carries (if any)."""

    image: Image.Image
    gps: GpsFix | None = None


@lru_cache(maxsize=1)
def heif_available() -> bool:
    """Register pillow-heif's opener with PIL when it is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def is_url(source: str | os.PathLike) -> bool:
    return str(source).startswith(URL_SCHEMES)


def _looks_like_heif(name: str, head: bytes) -> bool:
    return name.lower().endswith(HEIF_SUFFIXES) or (head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS)


def fetch_url(url: str, timeout: float = 30.0, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """The bytes at ``url``; :class:`ImageLoadError` on any failure or beyond ``max_bytes``."""
    import requests

    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            response.raise_for_status()
            data = bytearray()
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > max_bytes:
                    raise ImageLoadError(url, f"larger than {max_bytes >> 20} MiB; download and shrink it first")
            return bytes(data)
    except requests.RequestException as err:
        raise ImageLoadError(url, f"download failed ({err}); check the URL and the network") from err


def _decode(fp, name: str) -> LoadedImage:
    heif_available()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                im.load()
                gps = read_gps(im.getexif())
                return LoadedImage(to_rgb_image(ImageOps.exif_transpose(im)), gps)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(name, f"refused as a possible decompression bomb ({err}); downscale it first") from err
    except UnidentifiedImageError as err:
        fp.seek(0)
        if not heif_available() and _looks_like_heif(name, fp.read(12)):
            raise ImageLoadError(
                name, "HEIC/HEIF image: install pillow-heif to read it (pip install pillow-heif)"
            ) from err
        raise ImageLoadError(name, "not an image PIL can read (wrong extension or not an image file)") from err
    except OSError as err:
        raise ImageLoadError(name, f"corrupt or truncated image ({err}); re-download or re-export it") from err


def load_image(source: str | os.PathLike, data: bytes | None = None) -> LoadedImage:
    """Decode a file, a URL, or ``data`` (encoded bytes named ``source``) with its EXIF GPS.

    Raises :class:`ImageLoadError` for a missing file, a failed download, a file that is
    not an image, a truncated or corrupt image, or a decompression bomb.
    """
    name = str(source)
    if data is None and is_url(name):
        data = fetch_url(name)
    if data is not None:
        return _decode(io.BytesIO(data), name)
    p = Path(source)
    if not p.exists():
        raise ImageLoadError(source, "no such file")
    if p.is_dir():
        raise ImageLoadError(source, "is a folder, not an image")
    with open(p, "rb") as f:
        return _decode(f, name)
