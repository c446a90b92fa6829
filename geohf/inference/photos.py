"""Images for prediction: :func:`geohf.images.decode_image` plus the EXIF GPS fix a photo carries."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..images import ImageLoadError, decode_image, decode_pixels, is_url
from .exif import GpsFix, read_gps

__all__ = ["ImageLoadError", "LoadedImage", "LoadedPixels", "is_url", "load_image", "load_pixels"]


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


@dataclass
class LoadedPixels:
    """A decoded, upright RGB image as an (H, W, 3) uint8 array and the location its EXIF carries (if any)."""

    pixels: np.ndarray
    gps: GpsFix | None = None


def load_pixels(source: str | os.PathLike, data: bytes | None = None) -> LoadedPixels:
    """:func:`load_image` as a uint8 array (:func:`~geohf.images.decode_pixels`: the same pixels, faster for
    PNGs), for the batched tensor preprocessing."""
    decoded = decode_pixels(source, data)
    return LoadedPixels(decoded.pixels, read_gps(decoded.exif))
