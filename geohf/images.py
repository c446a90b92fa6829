"""The one image decoder of geohf (dataset build, prediction, the app): one clear error per bad file.

Images come from local files, URLs or encoded bytes (dataset rows); they are decoded
fully into RGB with their EXIF orientation applied; 16-bit and float greys are rescaled,
not clipped; decompression bombs are refused. HEIC/HEIF needs ``pillow-heif`` (used when
installed). PIL and numpy; :func:`decode_pixels` (uint8 arrays for the batched tensor
preprocessing) decodes plain 8-bit PNGs with libpng (:func:`png_decoder`: imagecodecs where installed,
else torchvision's; no PIL object) and everything else through the same PIL path as :func:`decode_image`.
"""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .downloads import DOWNLOAD_DEADLINE, MAX_DOWNLOAD_BYTES, BodyTooLarge, BodyTooSlow, read_body
from .files import HEIF_SUFFIXES

HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
URL_SCHEMES = ("http://", "https://")


class ImageLoadError(ValueError):
    """An input that is not a readable image; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class DecodedImage:
    """An upright RGB image, the EXIF it came with, its file format and its stored size (before rotation)."""

    image: Image.Image
    exif: Image.Exif
    format: str | None = None
    stored_size: tuple[int, int] = (0, 0)
    full_size: tuple[int, int] = (0, 0)
    """Upright size of the full-resolution image (``image`` is smaller when decoded with a ``draft`` hint)."""


@dataclass
class DecodedPixels:
    """An upright RGB image as an (H, W, 3) uint8 array, with the EXIF it came with and its file format."""

    pixels: np.ndarray
    exif: Image.Exif
    format: str | None = None


def to_rgb_image(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode: 16-bit and float greys are rescaled, not
    clipped to white), an HWC/CHW array or a CHW tensor."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            array = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
        return image.convert("RGB")
    if hasattr(image, "detach"):  # a torch tensor, without importing torch
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def to_rgb_array(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from anything :func:`to_rgb_image` takes (RGB uint8 arrays as they are)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    return np.asarray(to_rgb_image(image))


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


def max_image_bytes() -> int:
    """The most bytes one encoded image may take: PIL's pixel limit (``Image.MAX_IMAGE_PIXELS``, beyond which
    :func:`decode_image` refuses it anyway) at 4 bytes a pixel (8-bit RGBA stored without compression), plus
    1 MiB of headers. Archive members and table cells past it are refused before they are read."""
    pixels = Image.MAX_IMAGE_PIXELS or 89_478_485
    return int(pixels) * 4 + (1 << 20)


def too_big(size: int, cap: int) -> str:
    """Why an input of ``size`` bytes is refused under a ``cap`` of :func:`max_image_bytes`."""
    return (
        f"{size:,} bytes, over the {cap:,}-byte limit for one image (PIL's pixel limit at 4 bytes a pixel); "
        "not an image geohf reads"
    )


def read_file_bounded(path: str | os.PathLike, cap: int | None = None) -> bytes:
    """A whole file of at most ``cap`` bytes (default :func:`max_image_bytes`); :class:`ImageLoadError`
    beyond it, with no more than ``cap + 1`` bytes read."""
    cap = max_image_bytes() if cap is None else cap
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size  # a regular file says its size: nothing read when it is too big
        data = b"" if size > cap else f.read(cap + 1)
    if size > cap or len(data) > cap:
        raise ImageLoadError(path, f"refused: {too_big(max(size, len(data)), cap)}")
    return data


def fetch_url(
    url: str, timeout: float = 30.0, max_bytes: int = MAX_DOWNLOAD_BYTES, deadline: float = DOWNLOAD_DEADLINE
) -> bytes:
    """The bytes at ``url``; :class:`ImageLoadError` on any failure, beyond ``max_bytes``, or when the whole
    download takes longer than ``deadline`` seconds (``timeout`` bounds the connection and each read, so a
    server that trickles a byte at a time ends within ``deadline + timeout``)."""
    import requests
    import urllib3.exceptions

    wait = min(timeout, deadline)
    end = time.monotonic() + deadline
    try:
        with requests.get(url, timeout=(wait, wait), stream=True) as response:
            response.raise_for_status()
            return read_body(response, max_bytes, end)
    except BodyTooLarge as err:
        raise ImageLoadError(url, f"{err}; download and shrink it first") from None
    except BodyTooSlow as err:
        raise ImageLoadError(
            url, f"download not finished after {deadline:g} s ({err}); the server is too slow, download it first"
        ) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
        # read1 is urllib3's: its errors (a read time-out, a connection dropped mid-body) come unwrapped
        raise ImageLoadError(url, f"download failed ({err}); check the URL and the network") from err


@contextmanager
def _refusals(fp, name: str):
    """PIL's errors while opening or decoding ``fp`` as one :class:`ImageLoadError` naming ``name`` and the fix."""
    heif_available()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(name, f"refused as a possible decompression bomb ({err}); downscale it first") from err
    except UnidentifiedImageError as err:
        fp.seek(0)
        if not heif_available() and _looks_like_heif(name, fp.read(12)):
            raise ImageLoadError(
                name, "HEIC/HEIF image: install pillow-heif to read it (pip install pillow-heif)"
            ) from err
        raise ImageLoadError(name, "not an image PIL can read (wrong extension or not an image file)") from err
    except (OSError, SyntaxError, struct.error, EOFError) as err:  # SyntaxError: some PIL plugins' "not a ..."
        raise ImageLoadError(name, f"corrupt or truncated image ({err}); re-download or re-export it") from err


def _decode(fp, name: str, draft: tuple[int, int] | None = None) -> DecodedImage:
    with _refusals(fp, name), Image.open(fp) as im:
        stored = im.size
        if draft is not None and im.format == "JPEG":
            im.draft(None, draft)  # DCT scaling: decode at 1/2, 1/4 or 1/8, never below `draft`
        im.load()
        exif, turned_im = _exif_and_upright(im)
        upright = to_rgb_image(turned_im)
        turned = upright.size != im.size
        full = (stored[1], stored[0]) if turned else stored
        return DecodedImage(upright, exif, im.format, stored, full)


def _exif_and_upright(im: Image.Image) -> tuple[Image.Exif, Image.Image]:
    """``im``'s EXIF and ``im`` turned upright by its orientation tag; a damaged EXIF block (PIL raises
    SyntaxError or struct.error for it) is read as none: the pixels are kept, unturned."""
    try:
        return im.getexif(), ImageOps.exif_transpose(im)
    except (SyntaxError, struct.error, EOFError, ValueError, KeyError, TypeError):
        return Image.Exif(), im


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its format and stored (width, height)."""

    format: str
    size: tuple[int, int]


def probe_image(data: bytes, name: str) -> ImageHeader:
    """The format and size in the header of encoded ``data`` (no pixel decoded, nothing re-encoded):
    :class:`ImageLoadError` for what is not an image, an empty image or one over the pixel limit."""
    fp = io.BytesIO(data)
    with _refusals(fp, name), Image.open(fp) as im:
        width, height = im.size
        fmt = im.format or "unknown"
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"a {fmt} header with an empty size {width}x{height}; re-export it")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            name, f"refused as a possible decompression bomb ({width}x{height} pixels, over {limit:,}); downscale it"
        )
    return ImageHeader(fmt, (width, height))


def _read(source: str | os.PathLike, data: bytes | None) -> bytes:
    name = str(source)
    if data is not None:
        return data
    if is_url(name):
        return fetch_url(name)
    try:
        return read_file_bounded(source)
    except FileNotFoundError:
        raise ImageLoadError(source, "no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(source, "is a folder, not an image") from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
RGB_MODE = 3  # torchvision.io.ImageReadMode.RGB


def _plain_png(data: bytes) -> bool:
    """An 8-bit PNG (grey, RGB, palette, with or without alpha) that carries no EXIF and is below PIL's
    decompression-bomb limit: what libpng decodes to the same RGB pixels as PIL's ``convert("RGB")``.

    Walks the chunk headers (skipping the image data): a transparency key (``tRNS``), an ``eXIf``
    chunk, or a text chunk that may carry EXIF or an orientation (ImageMagick's raw profiles, XMP)
    leave the file to PIL."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, color_type = data[24], data[25]
    if bit_depth != 8 or color_type not in (0, 2, 3, 4, 6):
        return False  # 16-bit greys are rescaled by to_rgb_image; low bit depths: PIL
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return False  # PIL refuses it with the decompression-bomb message
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind in (b"tRNS", b"eXIf"):
            return False
        if kind in PNG_TEXT_CHUNKS:
            text = data[pos + 8 : pos + 8 + length].lower()
            if b"exif" in text or b"xmp" in text or b"orientation" in text:
                return False
        if kind == b"IEND":
            return True
        pos += 12 + length
    return False  # no IEND: truncated, PIL says so


def _imagecodecs_png() -> Callable[[bytes], np.ndarray] | None:
    """imagecodecs' libpng (zlib-ng inflate, the GIL released): ~1.5x torchvision's op per 64-px PNG file."""
    try:
        from imagecodecs import png_decode
    except ImportError:
        return None
    return png_decode  # (H, W) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or palette, (H, W, 4) RGBA


def _torchvision_png() -> Callable[[bytes], np.ndarray] | None:
    """torchvision's libpng op, called directly: ``torchvision.io.decode_png`` only adds a per-call
    deprecation warning and usage log (0.29), which cost as much interpreter time as the rest of a
    tile's decode and serialise the decode threads."""
    try:
        import torch
        import torchvision.io  # noqa: F401  (loads the image extension)

        op = torch.ops.image.decode_png.default
    except (ImportError, AttributeError, RuntimeError):
        return None

    def decode(data: bytes) -> np.ndarray:
        pixels = op(torch.frombuffer(bytearray(data), dtype=torch.uint8), RGB_MODE, False)
        return pixels.permute(1, 2, 0).numpy()  # an (H, W, 3) view: batching copies it once

    return decode


PNG_DECODERS = {"imagecodecs": _imagecodecs_png, "torchvision": _torchvision_png}


@lru_cache(maxsize=1)
def png_decoder() -> tuple[str, Callable[[bytes], np.ndarray]] | None:
    """(name, decode) of the fastest libpng installed, in :data:`PNG_DECODERS` order
    (``pip install "geohf[fast]"`` adds imagecodecs); ``None``: PIL decodes every PNG."""
    for name, make in PNG_DECODERS.items():
        decode = make()
        if decode is not None:
            return name, decode
    return None


def _png_pixels(data: bytes) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB of a plain PNG (:func:`_plain_png`) as PIL's ``convert("RGB")`` gives it (alpha
    dropped, grey repeated), or ``None`` (no decoder, or a file libpng refuses: PIL says why)."""
    decoder = png_decoder()
    if decoder is None:
        return None
    try:
        pixels = decoder[1](data)
    except Exception:  # noqa: BLE001 - corrupt or truncated (each library raises its own types): PIL says why
        return None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] in (1, 2):  # grey (+ alpha): PIL's RGB repeats the grey
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels[:, :, :3]  # RGB, or RGBA without its alpha (a view)


def decode_pixels(source: str | os.PathLike, data: bytes | None = None) -> DecodedPixels:
    """:func:`decode_image` as an (H, W, 3) uint8 array (same pixels, same errors); plain 8-bit PNGs are
    decoded by libpng (``torchvision.io``) without a PIL image."""
    data = _read(source, data)
    if _plain_png(data):
        pixels = _png_pixels(data)
        if pixels is not None:
            return DecodedPixels(pixels, Image.Exif(), "PNG")
    decoded = _decode(io.BytesIO(data), str(source))
    return DecodedPixels(np.asarray(decoded.image), decoded.exif, decoded.format)


def decode_image(
    source: str | os.PathLike, data: bytes | None = None, draft: tuple[int, int] | None = None
) -> DecodedImage:
    """Decode a file, a URL, or ``data`` (encoded bytes named ``source``).

    ``draft``: a size hint for callers that shrink the image anyway (the dataset build's quality
    statistics): a JPEG may then be decoded at 1/2, 1/4 or 1/8 scale (no smaller than ``draft``
    in both directions of the stored image), much faster; other formats decode in full.
    ``full_size`` always gives the full-resolution upright size.

    Raises :class:`ImageLoadError` for a missing file, a failed download, a file that is
    not an image, a truncated or corrupt image, or a decompression bomb.
    """
    return _decode(io.BytesIO(_read(source, data)), str(source), draft)
