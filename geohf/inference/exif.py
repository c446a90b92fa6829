"""GPS in EXIF: read a photo's fix as ground truth, write a model's estimate into a copy.

A written estimate is marked three ways so nobody mistakes it for a GPS fix: the GPS
processing method says ``geohf estimate``, the image description and the user comment
say it in words, and ``GPSHPositioningError`` holds the confidence radius in metres.
:func:`read_gps` recognises the mark and flags such a location as ``estimated``.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo
from PIL.TiffImagePlugin import IFDRational

from ..files import atomic_path

logger = logging.getLogger("geohf.inference")
ESTIMATE_MARK = "geohf estimate"
ASCII_PREFIX = b"ASCII\x00\x00\x00"  # the character code of EXIF UNDEFINED text fields
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png")
XP_COMMENT = 0x9C9C  # Windows' XPComment: UTF-16LE text


@dataclass(frozen=True)
class GpsFix:
    """A location found in EXIF; ``estimated`` when it was written by geohf (not a GPS fix)."""

    latitude: float
    longitude: float
    estimated: bool = False


def _text(value) -> str:
    """An EXIF text value (str, or bytes with an 8-byte character-code prefix) as str."""
    if isinstance(value, bytes):
        value = value[8:] if value[:8] in (ASCII_PREFIX, b"UNICODE\x00", b"\x00" * 8) else value
        return value.decode("utf-8", errors="replace").strip("\x00 ")
    return str(value or "")


def _degrees(dms, ref) -> float:
    """Degrees from an EXIF (degrees, minutes, seconds) triple and its N/S/E/W reference."""
    d, m, s = (float(v) for v in dms)
    value = d + m / 60.0 + s / 3600.0
    return -value if _text(ref).upper().startswith(("S", "W")) else value


def read_gps(exif: Image.Exif) -> GpsFix | None:
    """The location in an image's EXIF, or ``None`` when it has none (or a broken one)."""
    if not exif:  # no tags at all (a plain PNG, most tiles): no GPS pointer to follow
        return None
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)  # parsed on first use: a damaged GPS block raises here
    except (SyntaxError, struct.error, EOFError, ValueError, KeyError, TypeError, OSError):
        return None
    if ExifTags.GPS.GPSLatitude not in gps or ExifTags.GPS.GPSLongitude not in gps:
        return None
    try:
        lat = _degrees(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef, "N"))
        lon = _degrees(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef, "E"))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    method = _text(gps.get(ExifTags.GPS.GPSProcessingMethod, b""))
    return GpsFix(lat, lon, estimated=ESTIMATE_MARK in method)


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60.0) * 3600.0
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(s * 10000), 10000)


def estimate_description(latitude: float, longitude: float, radius_km: float | None, ascii_only: bool = False) -> str:
    """The words written into the copy: what the location is and is not. ``ascii_only`` writes ``+/-`` for ``±``
    (EXIF ImageDescription and an ASCII UserComment hold 7-bit text only)."""
    sign = "+/-" if ascii_only else "±"
    radius = f" {sign}{radius_km:,.0f} km" if radius_km is not None and math.isfinite(radius_km) else ""
    return (
        f"{ESTIMATE_MARK}: location {latitude:.5f}, {longitude:.5f}{radius} predicted from the pixels by a model; "
        "NOT a GPS fix"
    )


def estimated_exif(exif: Image.Exif, latitude: float, longitude: float, radius_km: float | None = None) -> Image.Exif:
    """``exif`` with its GPS replaced by an estimate, marked as such (modified in place and returned)."""
    text = estimate_description(latitude, longitude, radius_km, ascii_only=True)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.clear()
    gps[ExifTags.GPS.GPSVersionID] = b"\x02\x03\x00\x00"
    gps[ExifTags.GPS.GPSLatitudeRef] = "N" if latitude >= 0 else "S"
    gps[ExifTags.GPS.GPSLatitude] = _dms(latitude)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E" if longitude >= 0 else "W"
    gps[ExifTags.GPS.GPSLongitude] = _dms(longitude)
    gps[ExifTags.GPS.GPSMapDatum] = "WGS-84"
    gps[ExifTags.GPS.GPSProcessingMethod] = ASCII_PREFIX + ESTIMATE_MARK.encode()
    if radius_km is not None and math.isfinite(radius_km):
        gps[ExifTags.GPS.GPSHPositioningError] = IFDRational(round(radius_km * 1000), 1)
    original = _text(exif.get(ExifTags.Base.ImageDescription, ""))
    exif[ExifTags.Base.ImageDescription] = text + (f" | {original}" if original else "")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = ASCII_PREFIX + text.encode("ascii")
    # the same words with the ± sign, in the Unicode comment Windows shows (UTF-16LE by definition)
    exif[XP_COMMENT] = estimate_description(latitude, longitude, radius_km).encode("utf-16-le") + b"\x00\x00"
    return exif


def _splice_jpeg_exif(data: bytes, exif_bytes: bytes) -> bytes:
    """A JPEG with its EXIF (APP1) segment replaced, pixels untouched (no re-encoding)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    if len(exif_bytes) > 65533:
        raise ValueError("EXIF block too large for a JPEG APP1 segment")
    keep, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the rest is image data
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos:end]
        if not (marker == 0xE1 and segment[4:10] == b"Exif\x00\x00"):
            keep.append(segment)
        pos = end
    app1 = b"\xff\xe1" + (len(exif_bytes) + 2).to_bytes(2, "big") + exif_bytes
    jfif = 1 if keep and keep[0][1] == 0xE0 else 0  # APP0 (JFIF) must stay first
    return b"\xff\xd8" + b"".join(keep[:jfif]) + app1 + b"".join(keep[jfif:]) + data[pos:]


def write_estimated_copy(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    latitude: float,
    longitude: float,
    radius_km: float | None = None,
) -> Path:
    """Copy ``source`` to ``destination`` with the estimated location in its EXIF.

    JPEG pixels are copied byte for byte (only the EXIF segment changes); PNG is re-saved
    losslessly. The original is never modified; the copy appears atomically.
    """
    source, destination = Path(source), Path(destination)
    if source.suffix.lower() not in WRITABLE_SUFFIXES:
        raise ValueError(f"{source}: EXIF can be written into JPEG and PNG copies only; convert it first")
    if destination.resolve() == source.resolve():
        raise ValueError(f"{source}: refusing to write over the original; choose another output folder")
    with Image.open(source) as im:
        try:
            original = im.getexif()
        except (SyntaxError, struct.error, EOFError, ValueError, KeyError, TypeError) as err:
            logger.warning("%s: its EXIF block is damaged (%s); the copy gets a new one with the estimate", source, err)
            original = Image.Exif()
        fmt, exif = im.format, estimated_exif(original, latitude, longitude, radius_km)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(destination) as tmp:
            if fmt == "JPEG":
                try:
                    tmp.write_bytes(_splice_jpeg_exif(source.read_bytes(), exif.tobytes()))
                except ValueError as err:  # not a JPEG after all, or an EXIF block over 64 kB
                    raise ValueError(f"{source}: {err}") from err
            elif fmt == "PNG":
                im.load()
                keep = {k: im.info[k] for k in ("icc_profile", "dpi", "transparency") if k in im.info}
                text = PngInfo()
                for key, value in getattr(im, "text", {}).items():
                    text.add_itxt(key, value)
                im.save(tmp, format="PNG", exif=exif, pnginfo=text, **keep)
            else:
                raise ValueError(
                    f"{source}: a {fmt} file named {source.suffix}; EXIF is written into JPEG and PNG only"
                )
    return destination
