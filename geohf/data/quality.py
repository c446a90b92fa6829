"""One image's quality, read once: dark / blank (channel variance) and blur (variance of the Laplacian).

What the dataset build's block writer imports on every worker: numpy, Pillow and geohf's decoder, no table
library (the plan's stages, in :mod:`geohf.data.filters`, check whole tables of images with it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import ImageLoadError, decode_image


@dataclass
class ImageFilter:
    """Dark/blank (channel variance) and blur (variance of the Laplacian) filters; thresholds are parameters.

    The defaults were chosen by looking at samples of street-view-like images at 256 px: they
    drop black / blank / single-colour frames and heavily blurred ones.

    Attributes:
        min_channel_variance: drop images whose largest per-channel pixel variance (0-255
            scale) is below this (dark, blank, tunnels).
        min_laplacian_variance: drop images whose Laplacian variance (grey, 0-255) is below
            this (blur, very low detail).
        stats_side: images are measured after fitting into this many pixels, so the
            thresholds do not depend on the resolution.
    """

    min_channel_variance: float = 100.0
    min_laplacian_variance: float = 15.0
    stats_side: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


_LEVELS = np.arange(256, dtype=np.float64)
_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.uint16)


def _max_channel_variance(pixels: np.ndarray) -> float:
    """Largest per-channel variance of 8-bit RGB pixels, exact, from one histogram per channel
    (the strided float32 ``.var(0)`` it replaces was the slowest step of the dataset build, and rounded)."""
    codes = pixels.reshape(-1, 3).astype(np.uint16) + _CHANNEL_OFFSET
    hist = np.bincount(codes.ravel(), minlength=768).reshape(3, 256).astype(np.float64)
    n = hist[0].sum()
    if not n:
        return 0.0
    mean = hist @ _LEVELS / n
    return float(max((hist @ (_LEVELS * _LEVELS) / n - mean * mean).max(), 0.0))


def image_quality(
    data: bytes | str | Path, stats_side: int = 256, draft: int | None = None, name: str | None = None
) -> tuple[float, float, int, int]:
    """``(max channel variance, Laplacian variance, width, height)`` of the upright image, decoded by
    :func:`geohf.images.decode_image` as prediction decodes it; raises on undecodable data.

    The statistics are taken after fitting the image into ``stats_side`` pixels (bilinear).
    ``draft``: decode a large JPEG at a reduced scale first, no smaller than ``draft`` × ``stats_side``
    (much faster on camera-size photos). Off by default: it does change the statistics — on
    2560×1440 JPEGs a 1/2-scale decode (``draft=2``) raised the Laplacian variance by 7–17%,
    enough to let images just under the blur threshold pass. ``width, height`` are those of the
    full image either way. ``name``: what errors call ``data`` given as bytes.
    """
    name = name or ("<bytes>" if isinstance(data, bytes) else data)
    hint = (draft * stats_side, draft * stats_side) if draft else None
    decoded = decode_image(name, data if isinstance(data, bytes) else None, draft=hint)
    im = decoded.image
    width, height = decoded.full_size
    im.thumbnail((stats_side, stats_side), Image.Resampling.BILINEAR)
    pixels = np.asarray(im)
    channel_var = _max_channel_variance(pixels)
    g = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return channel_var, float(lap.var()) if lap.size else 0.0, width, height


def measured_quality(path: str, side: int, data: bytes | None = None) -> tuple[float, float, int, int, str]:
    """``(channel variance, Laplacian variance, width, height, error)`` of the file ``path`` (or its ``data``)."""
    try:
        return (*image_quality(path if data is None else data, side, name=path), "")
    except ImageLoadError as err:
        return math.nan, math.nan, 0, 0, err.reason
    except Exception as err:  # noqa: BLE001 - any decoder failure means "undecodable"
        return math.nan, math.nan, 0, 0, f"{type(err).__name__}: {err}"


def skip_reason(
    quality: tuple[float, float, int, int, str], cfg: ImageFilter, apply: bool = True
) -> tuple[str, str] | None:
    """Why an image whose check gave ``quality`` is left out: ``(kind, reason)`` (kind: ``undecodable``,
    ``dark`` or ``blurry``), or None when it is kept; dark / blurry images only when ``apply``."""
    channel, laplacian, _, _, error = quality
    if error:
        return "undecodable", f"undecodable image: {error}; re-download or delete it"
    if apply and channel < cfg.min_channel_variance:
        return "dark", f"dark or blank: max channel variance {channel:.1f} < {cfg.min_channel_variance:g}"
    if apply and laplacian < cfg.min_laplacian_variance:
        return "blurry", f"blurry: Laplacian variance {laplacian:.1f} < {cfg.min_laplacian_variance:g}"
    return None


def check_image(path: str, cfg: ImageFilter, apply: bool = True) -> tuple[bytes | None, str | None]:
    """Read the file ``path`` once and check it: ``(its bytes, None)`` when kept, ``(None, reason)`` when not."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = None  # the decoder names what is wrong (no such file, a folder...)
    verdict = skip_reason(measured_quality(path, cfg.stats_side, data), cfg, apply)
    return (None, verdict[1]) if verdict else (data, None)
