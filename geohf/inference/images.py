"""Images for prediction: :func:`geohf.images.decode_image` plus the EXIF GPS fix a photo carries."""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image

from ..images import ImageLoadError, decode_image, is_url
from .exif import GpsFix, read_gps

__all__ = ["ImageLoadError", "LoadedImage", "is_url", "load_image"]


@dataclass
class LoadedImage:
    """A decoded, upright RGB image and the location its EXIF carries (if any)."""

    image: Image.Image
    gps: GpsFix | None = None


def load_image(source: str | os.PathLike, data: bytes | None = None) -> LoadedImage:
    """Decode a file, a URL, or ``data`` (encoded bytes named ``source``) with its EXIF GPS.

    Raises :class:`~geohf.images.ImageLoadError` for anything :func:`~geohf.images.decode_image` refuses.
    """
    decoded = decode_image(source, data)
    return LoadedImage(decoded.image, read_gps(decoded.exif))
