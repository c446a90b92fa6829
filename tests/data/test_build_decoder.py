"""`geohf dataset build` keeps or skips an image exactly when `geohf predict` can or cannot read it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geohf.data.filters import filter_images
from geohf.data.quality import ImageFilter, image_quality
from geohf.data.skips import SkipLog
from geohf.images import ImageLoadError
from geohf.inference.photos import load_image


def _noise(size=(96, 64), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bomb(path, side=20000):
    """A valid 1-bit PNG of side × side pixels (400 Mpx) in a few kB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(b"\x00" * (1 + side // 8)) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture
def files(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # in the dev extras
    pillow_heif.register_heif_opener()
    out = {}
    out["photo.heic"] = tmp_path / "photo.heic"
    _noise().save(out["photo.heic"], format="HEIF", quality=90)
    noise16 = np.random.default_rng(1).integers(0, 65535, (64, 96), dtype=np.uint16)
    out["gray16.png"] = tmp_path / "gray16.png"
    Image.fromarray(noise16).save(out["gray16.png"])
    out["bomb.png"] = tmp_path / "bomb.png"
    _bomb(out["bomb.png"])
    out["ok.png"] = tmp_path / "ok.png"
    _noise(seed=2).save(out["ok.png"])
    return out


def _predict_reads(path) -> str:
    try:
        load_image(path)
    except ImageLoadError as err:
        return err.reason
    return ""


def test_build_decides_as_predict_does(files):
    frame = pd.DataFrame({"source_file": [str(p) for p in files.values()]})
    log = SkipLog()
    kept = filter_images(frame, ImageFilter(), log, apply=True)
    skipped = {e.item: e.reason for e in log.entries}
    for name, path in files.items():
        reason = _predict_reads(path)
        if reason:
            assert str(path) in skipped and reason in skipped[str(path)], name
        else:
            assert str(path) in set(kept["source_file"]), (name, skipped.get(str(path)))
    assert "decompression bomb" in skipped[str(files["bomb.png"])]
    assert {files["photo.heic"].name, files["gray16.png"].name} <= {p.rsplit("/", 1)[-1] for p in kept["source_file"]}


def test_sixteen_bit_greys_are_measured_not_clipped(files):
    channel_var, lap_var, w, h = image_quality(files["gray16.png"])
    assert (w, h) == (96, 64)
    assert channel_var > 1000 and lap_var > 1000  # noise over the full 16-bit range: clipping would read all white
    data = files["gray16.png"].read_bytes()
    assert image_quality(data)[:2] == pytest.approx((channel_var, lap_var))
