"""Fuzzing the EXIF readers and writer with hypothesis: damaged EXIF blocks inside real JPEG and PNG files.

A valid EXIF block (GPS, orientation, text, the estimate's own tags) is cut and has bytes flipped, then
embedded in a JPEG (APP1) or a PNG (eXIf). Properties: the image loads (a damaged EXIF block reads as none;
it cost the whole PNG before) with a GPS fix that is None or in range, or one :class:`ImageLoadError`;
:func:`write_estimated_copy` writes a copy carrying the estimate, or raises one ``ValueError`` naming the file.
"""

from __future__ import annotations

import io
import math
import tracemalloc
import warnings
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from geohf.images import ImageLoadError
from geohf.inference.exif import estimated_exif, read_gps, write_estimated_copy
from geohf.inference.photos import load_image, load_pixels

FUZZ = settings(max_examples=80, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
PEAK = 32 << 20


def _exif_block() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.ImageDescription] = "Straße 東京"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"ASCII\0\0\0a comment"
    return estimated_exif(exif, 48.8566, 2.3522, 25.0).tobytes()


BLOCK = _exif_block()
PIXELS = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8))
damage = st.tuples(
    st.one_of(st.none(), st.integers(0, len(BLOCK))),
    st.lists(st.tuples(st.integers(0, len(BLOCK) - 1), st.integers(0, 255)), max_size=8),
    st.sampled_from(["JPEG", "PNG"]),
)


def _file(mutation) -> tuple[bytes, str]:
    cut, flips, fmt = mutation
    block = bytearray(BLOCK)
    for pos, value in flips:
        block[pos] = value
    block = bytes(block[:cut] if cut is not None else block)
    buf = io.BytesIO()
    PIXELS.save(buf, format=fmt, exif=block)
    return buf.getvalue(), "photo.jpg" if fmt == "JPEG" else "photo.png"


def _run(check, record, what: str, entry: str, expected: str, seen: Counter) -> None:
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about damaged tags; what matters is what comes back
            check()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ok = peak < PEAK
    record("fuzz", what, entry, expected, "; ".join(f"{k}: {v:,}" for k, v in seen.most_common(5))
           + f"; peak {peak / 2**20:.0f} MiB", ok, fixed=True)  # fmt: skip
    assert ok, peak


def test_fuzz_damaged_exif_on_load(record):
    seen = Counter()

    @FUZZ
    @given(damage)
    def check(mutation):
        data, name = _file(mutation)
        try:
            loaded = load_image(name, data)
            pixels = load_pixels(name, data)
        except ImageLoadError:
            seen["refused in one line"] += 1
            return
        assert pixels.pixels.shape[2] == 3 and loaded.image.mode == "RGB"
        for fix in (loaded.gps, pixels.gps):
            assert fix is None or (math.isfinite(fix.latitude) and -90 <= fix.latitude <= 90)
        seen["loaded, GPS read" if loaded.gps else "loaded, no usable GPS"] += 1

    _run(check, record, f"{FUZZ.max_examples} JPEG / PNG files with a damaged EXIF block (cut, flipped bytes)",
         "load_image / load_pixels (geohf predict)", "the image loads (EXIF read as none when damaged), or one "
         "line", seen)  # fmt: skip
    assert seen["refused in one line"] == 0  # the pixels are intact: a damaged EXIF block never costs the image


def test_fuzz_damaged_exif_on_write(tmp_path_factory, record):
    seen = Counter()
    folder = tmp_path_factory.mktemp("fuzz_exif")

    @FUZZ
    @given(damage, st.floats(-90, 90), st.floats(-180, 180))
    def check(mutation, lat, lon):
        data, name = _file(mutation)
        source = folder / name
        source.write_bytes(data)
        target = folder / "out" / name
        try:
            write_estimated_copy(source, target, lat, lon, 10.0)
        except ValueError as err:
            assert str(source) in str(err)
            seen["refused in one line"] += 1
            return
        with Image.open(target) as im:
            fix = read_gps(im.getexif())
        assert fix is not None and fix.estimated and abs(fix.latitude - lat) < 1e-3
        seen["copy written with the estimate"] += 1

    _run(check, record, f"{FUZZ.max_examples} files with a damaged EXIF block, an estimate written into a copy",
         "exif.write_estimated_copy (geohf predict --write-exif)", "a copy carrying the estimate, or one line "
         "naming the file", seen)  # fmt: skip
