"""`geohf dataset build` decodes images as prediction does: upright, HEIC, 16-bit, bombs; --max-side keeps them so."""

from __future__ import annotations

import io

import numpy as np
import pytest
from datasets import Image as ImageFeature
from datasets import load_dataset
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from geohf.cli import main
from geohf.data.blocks import shrink_image
from geohf.data.samples import land_points, make_imagefolder
from geohf.images import decode_image
from geohf.inference.exif import read_gps


def _camera_jpeg(size=(300, 150), orientation=6, gps=(48.8566, 2.3522)) -> bytes:
    """A wide stored JPEG whose EXIF says "rotate 90° to view" (a phone held upright), with GPS."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 3] = (250, 20, 20)  # a red left third: where it lands shows the rotation
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    g = exif.get_ifd(ExifTags.IFD.GPSInfo)
    g[ExifTags.GPS.GPSLatitudeRef], g[ExifTags.GPS.GPSLatitude] = (
        "N",
        (IFDRational(48), IFDRational(51), IFDRational(2398, 100)),
    )
    g[ExifTags.GPS.GPSLongitudeRef], g[ExifTags.GPS.GPSLongitude] = (
        "E",
        (IFDRational(2), IFDRational(21), IFDRational(788, 100)),
    )
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_shrink_stores_upright_pixels_and_keeps_gps_when_asked():
    data = _camera_jpeg()
    upright = decode_image("a.jpg", data).image
    assert upright.size == (150, 300)
    small = shrink_image(data, 100, "a.jpg")
    with Image.open(io.BytesIO(small)) as im:
        assert im.size == (50, 100)  # the stored pixels are upright...
        assert im.getexif().get(ExifTags.Base.Orientation, 1) == 1  # ...and no tag rotates them again
        assert read_gps(im.getexif()) is None  # default: EXIF dropped (the card and --help say so)
    reference = np.asarray(upright.resize((50, 100)), dtype=np.float32)
    assert np.abs(np.asarray(decode_image("s.jpg", small).image, dtype=np.float32) - reference).mean() < 40
    kept = shrink_image(data, 100, "a.jpg", keep_exif=True)
    with Image.open(io.BytesIO(kept)) as im:
        exif = im.getexif()
        assert im.size == (50, 100) and exif.get(ExifTags.Base.Orientation, 1) == 1
        gps = read_gps(exif)
    assert (gps.latitude, gps.longitude) == pytest.approx((48.8566, 2.3522), abs=1e-4)
    assert shrink_image(data, 1000, "a.jpg") == data  # small enough: the file's own bytes, tag and all


def _stored(out) -> dict[str, bytes]:
    ds = load_dataset(str(out))
    rows = {}
    for split in ds:
        part = ds[split].cast_column("image", ImageFeature(decode=False))
        for row in part.select_columns(["source_file", "image"]):
            rows[row["source_file"]] = row["image"]["bytes"]
    return rows


def test_build_with_max_side_stores_the_same_upright_image(tmp_path, labeller, admin1_path):
    root = make_imagefolder(tmp_path / "raw", land_points(12, labeller, seed=3), size=(120, 90))
    (root / "images" / "img_00000.jpg").write_bytes(_camera_jpeg())
    common = ["--layout", "imagefolder", "--input", str(root), "--boundaries", admin1_path, "--no-filter"]
    common += ["--cells", "quadtree:max_samples=20,min_samples=2"]
    assert main(["dataset", "build", *common, "--output", str(tmp_path / "full")]) == 0
    assert main(["dataset", "build", *common, "--output", str(tmp_path / "small"), "--max-side", "100"]) == 0
    assert (
        main(["dataset", "build", *common, "--output", str(tmp_path / "gps"), "--max-side", "100", "--keep-exif"]) == 0
    )
    name = "images/img_00000.jpg"
    full = decode_image("full.jpg", _stored(tmp_path / "full")[name]).image
    small = decode_image("small.jpg", _stored(tmp_path / "small")[name]).image
    assert full.size == (150, 300) and small.size == (50, 100)  # both portrait, as the photo was taken
    red = np.asarray(small)[:, :, 0].mean(axis=1)
    assert red[:25].mean() > red[-25:].mean() + 40  # the red third on top: turned the same way as the full one
    with Image.open(io.BytesIO(_stored(tmp_path / "gps")[name])) as im:
        gps = read_gps(im.getexif())
    assert gps is not None and gps.latitude == pytest.approx(48.8566, abs=1e-4)
    card = (tmp_path / "small" / "README.md").read_text()
    assert "--max-side 100" in card and "EXIF" in card
