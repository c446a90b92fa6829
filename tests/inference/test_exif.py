"""EXIF GPS as ground truth, estimated copies (never the original), orientation, HEIC."""

import argparse
import hashlib
import json

import numpy as np
import pytest
from datasets import load_dataset
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from geohf import images as images_module
from geohf.commands.predict import register_subcommand
from geohf.geo.sphere import haversine_km
from geohf.inference.exif import ESTIMATE_MARK, read_gps, write_estimated_copy
from geohf.inference.photos import ImageLoadError, load_image


def geohf(*argv) -> int:
    parser = argparse.ArgumentParser(prog="geohf")
    register_subcommand(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def _dms(value):
    value = abs(value)
    d, m = int(value), int((abs(value) - int(value)) * 60)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round((value - d - m / 60) * 3600 * 100), 100)


def gps_exif(lat, lon, orientation=None) -> Image.Exif:
    """EXIF as a camera writes it: DMS rationals with N/S/E/W references."""
    exif = Image.Exif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = ("N" if lat >= 0 else "S"), _dms(lat)
    gps[ExifTags.GPS.GPSLongitudeRef], gps[ExifTags.GPS.GPSLongitude] = ("E" if lon >= 0 else "W"), _dms(lon)
    if orientation:
        exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.ImageDescription] = "holiday"
    return exif


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photos(tiny_dataset, tmp_path):
    """Test tiles as camera JPEGs: one with GPS (southern/western), one without, one PNG with GPS."""
    ds = load_dataset(str(tiny_dataset), split="test")
    folder = tmp_path / "photos"
    folder.mkdir()
    row = ds[0]
    ds[0]["image"].save(folder / "gps.jpg", exif=gps_exif(row["latitude"], row["longitude"]), quality=92)
    ds[1]["image"].save(folder / "plain.jpg", quality=92)
    ds[2]["image"].save(folder / "gps.png", exif=gps_exif(-33.8688, -151.2093))
    return {"folder": folder, "truth": (row["latitude"], row["longitude"])}


def test_read_gps_signs_and_broken_values():
    gps = read_gps(gps_exif(-33.8688, -151.2093))
    assert (gps.latitude, gps.longitude) == pytest.approx((-33.8688, -151.2093), abs=1e-5) and not gps.estimated
    assert read_gps(Image.Exif()) is None
    broken = gps_exif(10, 10)
    broken.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] = (IFDRational(1, 0), IFDRational(0), IFDRational(0))
    assert read_gps(broken) is None
    outside = gps_exif(10, 10)
    outside.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] = (IFDRational(95), IFDRational(0), IFDRational(0))
    assert read_gps(outside) is None


def test_orientation_is_applied_and_gps_read(tmp_path):
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path, exif=gps_exif(48.8566, 2.3522, orientation=6))
    loaded = load_image(path)
    assert loaded.image.size == (20, 40)  # rotated upright
    assert (loaded.gps.latitude, loaded.gps.longitude) == pytest.approx((48.8566, 2.3522), abs=1e-5)
    with open(path, "rb") as f:
        assert load_image("upload.jpg", f.read()).gps == loaded.gps  # bytes decode the same


def test_estimated_copy_jpeg_keeps_pixels_and_marks_the_estimate(photos, tmp_path):
    source = photos["folder"] / "gps.jpg"
    before = sha(source)
    copy = write_estimated_copy(source, tmp_path / "out" / "gps.jpg", 12.345678, -98.765432, radius_km=850.0)
    assert sha(source) == before  # the original is untouched
    with Image.open(source) as a, Image.open(copy) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # JPEG data copied, not re-encoded
        exif = b.getexif()
    gps = read_gps(exif)
    assert gps.estimated and (gps.latitude, gps.longitude) == pytest.approx((12.345678, -98.765432), abs=1e-5)
    gps_ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert float(gps_ifd[ExifTags.GPS.GPSHPositioningError]) == 850000.0
    description = exif[ExifTags.Base.ImageDescription]
    assert description.startswith(ESTIMATE_MARK) and "NOT a GPS fix" in description and description.endswith("holiday")
    comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert b"NOT a GPS fix" in comment
    # ASCII fields say "+/-" (a "±" there reads back as "?"); the Unicode comment keeps "±"
    assert "+/-850 km" in description and description.isascii()
    assert comment.startswith(b"ASCII\x00\x00\x00") and b"+/-850 km" in comment and comment.isascii()
    xp = exif[0x9C9C]
    xp = bytes(xp) if not isinstance(xp, bytes) else xp
    assert "±850 km" in xp.decode("utf-16-le").rstrip("\x00")


def test_estimated_copy_png_and_refusals(photos, tmp_path):
    copy = write_estimated_copy(photos["folder"] / "gps.png", tmp_path / "gps.png", -1.5, 36.8)
    with Image.open(copy) as im:
        assert read_gps(im.getexif()).estimated
    with pytest.raises(ValueError, match="refusing to write over the original"):
        write_estimated_copy(photos["folder"] / "plain.jpg", photos["folder"] / "plain.jpg", 0, 0)
    bmp = tmp_path / "x.bmp"
    Image.new("RGB", (8, 8)).save(bmp)
    with pytest.raises(ValueError, match="JPEG and PNG"):
        write_estimated_copy(bmp, tmp_path / "y.bmp", 0, 0)
    assert not list(tmp_path.glob("*.tmp"))


def test_predict_reports_exif_truth_and_writes_copies(tiny_model_dir, photos, tmp_path, capsys):
    out, copies = tmp_path / "pred.jsonl", tmp_path / "estimated"
    hashes = {p.name: sha(p) for p in photos["folder"].iterdir()}
    code = geohf("predict", "--model", tiny_model_dir, photos["folder"], "--output", out, "--write-exif", copies)
    assert code == 0
    err = capsys.readouterr().err
    records = {r["file"].rsplit("/", 1)[1]: r for r in map(json.loads, out.read_text().splitlines())}
    gps = records["gps.jpg"]
    assert (gps["exif_latitude"], gps["exif_longitude"]) == pytest.approx(photos["truth"], abs=1e-4)
    expected = float(haversine_km(*photos["truth"], gps["pred_latitude"], gps["pred_longitude"]))
    assert gps["error_km"] == pytest.approx(expected, abs=0.2)
    assert "exif_latitude" not in records["plain.jpg"] and "error_km" not in records["plain.jpg"]
    # only the photo without a GPS fix gets an estimated copy; originals unchanged
    assert records["plain.jpg"]["exif_copy"] == str(copies / "plain.jpg") and records["gps.jpg"]["exif_copy"] is None
    assert sorted(p.name for p in copies.iterdir()) == ["plain.jpg"]
    assert "left out 2 images with a real GPS fix" in err and "wrote 1 copy with the estimated location" in err
    assert {p.name: sha(p) for p in photos["folder"].iterdir()} == hashes

    # an estimate read back is not ground truth
    again = tmp_path / "again.jsonl"
    assert geohf("predict", "--model", tiny_model_dir, copies / "plain.jpg", "--output", again) == 0
    (record,) = map(json.loads, again.read_text().splitlines())
    assert "exif_latitude" not in record
    assert "1 image carries a geohf estimate in EXIF" in capsys.readouterr().err


def test_heic(tmp_path, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "phone.heic"
    Image.new("RGB", (32, 24), (10, 120, 200)).save(path, exif=gps_exif(35.68, 139.69))
    loaded = load_image(path)
    assert loaded.image.size == (32, 24) and loaded.gps.latitude == pytest.approx(35.68, abs=1e-4)

    # without pillow-heif: a clear error naming the fix
    monkeypatch.setattr(images_module, "heif_available", lambda: False)
    # every plugin registered first: PIL's one-time init() would otherwise add them to this temporary list,
    # and later tests would find no WEBP (or other late plugin) once it is put back
    Image.init()
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i not in ("HEIF", "AVIF")])
    with pytest.raises(ImageLoadError, match="pip install pillow-heif") as info:
        load_image(path)
    assert info.value.path == str(path)
