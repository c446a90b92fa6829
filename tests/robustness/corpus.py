"""The bad-input corpus: files a scraper really produces, generated on the fly."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(size=(64, 48), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side × side pixels (400 Mpx) in a few kB, written row by row."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (side // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    )
    return path


def write_image_cases(root: Path) -> dict[str, Path]:
    """name → file, one per image case (see IMAGE_CASES for what each should do)."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}

    def save(name, image, **kw):
        out[name] = root / name
        image.save(out[name], **kw)

    base = _rgb()
    save("ok.png", base)
    (root / "zero.jpg").write_bytes(b"")
    out["zero.jpg"] = root / "zero.jpg"
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated.jpg"] = root / "truncated.jpg"
    buf = io.BytesIO()
    _rgb((256, 256), 1).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated.png"] = root / "truncated.png"
    save("png-named.jpg", base, format="PNG")
    (root / "notes.jpg").write_text("this is a text file, not an image\n")
    out["notes.jpg"] = root / "notes.jpg"
    save("cmyk.jpg", base.convert("CMYK"), format="JPEG")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("rgba.png", rgba)
    save("palette.png", base.convert("P", palette=Image.Palette.ADAPTIVE))
    sixteen = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
    save("gray16.png", sixteen)
    save("gray.png", base.convert("L"))
    save("one-pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    out["bomb.png"] = huge_png(root / "bomb.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    save("rotated.jpg", _rgb((80, 40), 2), exif=exif.tobytes())
    frames = [_rgb((40, 40), s) for s in range(3)]
    out["animated.gif"] = root / "animated.gif"
    frames[0].save(out["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated.webp"] = root / "animated.webp"
    frames[0].save(out["animated.webp"], save_all=True, append_images=frames[1:], duration=100)
    (root / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    out["photo.heic"] = root / "photo.heic"
    save("Straße 東京 🗺.png", base)
    return out


# name → (expected: "ok" or the words the error must contain)
IMAGE_CASES = {
    "ok.png": "ok",
    "zero.jpg": "not an image",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "png-named.jpg": "ok",
    "notes.jpg": "not an image",
    "cmyk.jpg": "ok",
    "rgba.png": "ok",
    "palette.png": "ok",
    "gray16.png": "ok",
    "gray.png": "ok",
    "one-pixel.png": "ok",
    "bomb.png": "decompression bomb",
    "rotated.jpg": "ok",
    "animated.gif": "ok",
    "animated.webp": "ok",
    "photo.heic": "pillow-heif",
    "Straße 東京 🗺.png": "ok",
}


# ------------------------------------------------------------------ hostile archives
@dataclass(frozen=True)
class RawMember:
    """A zip member written as given: ``data`` already compressed with ``method`` (8: raw deflate)."""

    name: str
    data: bytes
    size: int  # the uncompressed size the headers declare
    crc: int
    method: int = 8
    flags: int = 0


def deflated_zeros(size: int, block: int = 1 << 26, crc: bool = True) -> RawMember:
    """A raw deflate stream of ``size`` zero bytes in a few kB per 64 MiB (a zip bomb's member), made without
    deflating ``size`` bytes: one fully flushed block repeated, then the final empty block. ``crc=False``: CRC 0
    (saves hashing ``size`` bytes; a bomb need not carry a right one)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    whole, rest = divmod(size, block)
    parts, value = [], 0
    if whole:
        segment = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
        parts.append(segment * whole)
        chunk = b"\0" * block
        for _ in range(whole if crc else 0):
            value = zlib.crc32(chunk, value)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts.append(tail.compress(b"\0" * rest) + tail.flush())
    value = zlib.crc32(b"\0" * rest, value) if crc else 0
    return RawMember("", b"".join(parts), size, value)


def raw_member(name: str, payload: bytes, method: int = 8, declared: int | None = None) -> RawMember:
    """``payload`` deflated (method 8) or stored (0) under ``name``; ``declared`` overrides the size headers give."""
    if method == 8:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = comp.compress(payload) + comp.flush()
    else:
        data = payload
    return RawMember(name, data, len(payload) if declared is None else declared, zlib.crc32(payload), method)


def write_raw_zip(path: Path, members: list[RawMember], central_directory: bool = True) -> Path:
    """A zip written header by header (zipfile cannot store pre-compressed data or lie about sizes)."""
    local, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode("utf-8")
        flags = m.flags | 0x800
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, m.method, 0, 0x21, m.crc, len(m.data),
                             m.size, len(name), 0) + name + m.data  # fmt: skip
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, m.method, 0, 0x21, m.crc, len(m.data),
                               m.size, len(name), 0, 0, 0, 0, 0, offset) + name  # fmt: skip
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local) + (bytes(central) + end if central_directory else b""))
    return path


def _jpeg(seed: int, size=(48, 32)) -> bytes:
    buf = io.BytesIO()
    _rgb(size, seed).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# member name -> (what it is, expected: "kept" or words of the skipped.csv reason, geohf needed a fix)
ZIP_CASES = {
    "ok.jpg": ("a JPEG, deflated", "kept", False),
    "stored.jpg": ("a JPEG, stored", "kept", False),
    "png-named.jpg": ("a PNG named .jpg", "kept", False),
    "animated.gif": ("an animated GIF", "kept", False),
    "sub/../../../escape.jpg": ("a JPEG whose name climbs out of the folder (../../../)", "kept", False),
    "bomb.jpg": ("1 GiB of zeros in 1 MB, its header honest", "over the 358,962,516-byte limit", True),
    "liar.jpg": ("1 GiB of zeros in 1 MB, its header says 5,000 bytes", "inflates over 100x", True),
    "ratio.jpg": ("64 MiB of zeros (under the size cap), honest header", "inflates over 100x", True),
    "text.jpg": ("a text file named .jpg", "not an image", True),
    "empty.jpg": ("0 bytes named .jpg", "not an image", True),
    "pixels.jpg": ("a 400-Mpx PNG in a few kB (decompression bomb)", "decompression bomb", True),
    "photo.heic": ("HEIC's ftyp box and no image", "not an image", True),
    "encrypted.jpg": ("an encrypted member", "encrypted member", True),
    "bzip2.jpg": ("a bzip2-compressed member", "compressed with bzip2", True),
    "crc.jpg": ("a JPEG whose CRC-32 is wrong", "CRC-32 mismatch", True),
    "garbage.jpg": ("random bytes as deflate data", "corrupt deflate data", True),
    "cut.jpg": ("a deflate stream cut in half (the member itself complete)", "ends early", True),
}


def write_hostile_zip(root: Path) -> Path:
    """``root/images.zip`` holding one member per :data:`ZIP_CASES` entry (written by hand: zipfile would
    neither lie about sizes nor store pre-compressed data)."""
    root.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    _rgb((40, 30), 5).save(png, format="PNG")
    gif = io.BytesIO()
    frames = [_rgb((24, 24), s) for s in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    bomb_png = huge_png(root / "pixels.png").read_bytes()
    (root / "pixels.png").unlink()
    cut = raw_member("cut.jpg", _jpeg(7))
    members = [
        raw_member("ok.jpg", _jpeg(1)),
        raw_member("stored.jpg", _jpeg(2), method=0),
        raw_member("png-named.jpg", png.getvalue()),
        raw_member("animated.gif", gif.getvalue()),
        raw_member("sub/../../../escape.jpg", _jpeg(3)),
        replace(deflated_zeros(1 << 30, crc=False), name="bomb.jpg"),
        replace(deflated_zeros(1 << 30, crc=False), name="liar.jpg", size=5000),
        replace(deflated_zeros(64 << 20), name="ratio.jpg"),
        raw_member("text.jpg", b"this is a text file, not an image\n" * 20),
        raw_member("empty.jpg", b""),
        raw_member("pixels.jpg", bomb_png),
        raw_member("photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64),
        replace(raw_member("encrypted.jpg", _jpeg(4)), flags=0x1),
        replace(raw_member("bzip2.jpg", _jpeg(5), method=0), method=12),
        replace(raw_member("crc.jpg", _jpeg(6)), crc=12345),
        replace(raw_member("garbage.jpg", b""), data=np.random.default_rng(9).bytes(4096), size=4096),
        replace(cut, data=cut.data[: len(cut.data) // 2]),
    ]
    assert [m.name for m in members] == list(ZIP_CASES)
    return write_raw_zip(root / "images.zip", members)
