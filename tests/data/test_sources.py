"""``geohf dataset import``: the field's datasets from format-identical fixtures (same file names, columns, shards)."""

import csv
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset

from geohf.data.archives import tar_members, zip_members
from geohf.data.samples import crop_around, land_points
from geohf.data.sources import ImportConfig, import_source

PLACES365 = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural",
             "Prob_urban"]  # fmt: skip
OSV5M_COLUMNS = ["id", "latitude", "longitude", "thumb_original_url", "country", "sequence", "captured_at", "lon_bin",
                 "lat_bin", "cell", "region", "sub-region", "city", "land_cover", "road_index", "drive_side",
                 "climate", "soil", "dist_sea", "quadtree_10_5000", "quadtree_10_25000", "quadtree_10_1000",
                 "quadtree_10_50000", "quadtree_10_12500", "quadtree_10_500", "quadtree_10_2500", "unique_region",
                 "unique_sub-region", "unique_city", "unique_country", "creator_username", "creator_id"]  # fmt: skip


def jpeg(lat, lon) -> bytes:
    buf = io.BytesIO()
    crop_around(lat, lon, (48, 32)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def points(labeller):
    return land_points(24, labeller, seed=3)


def places365_rows(ids, pts):
    return [
        {
            "IMG_ID": i,
            "AUTHOR": f"{k}@N0{k % 9}",
            "LAT": f"{p.latitude:.6f}",
            "LON": f"{p.longitude:.6f}",
            "S3_Label": k % 3,
            "S16_Label": k % 16,
            "S365_Label": k % 365,
            "Prob_indoor": 0.1,
            "Prob_natural": 0.6,
            "Prob_urban": 0.3,
        }  # fmt: skip
        for k, (i, p) in enumerate(zip(ids, pts.itertuples()))
    ]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def im2gps3k(tmp_path_factory, points):
    """``im2gps3k_places365.csv`` + ``images/``: 10 matched, 2 rows without an image, 1 image without a row,
    one point at sea (kept, unlabelled)."""
    root = tmp_path_factory.mktemp("im2gps3k")
    (root / "images").mkdir()
    pts = points.head(12).copy()
    pts.iloc[11, pts.columns.get_loc("latitude")] = 0.0  # Gulf of Guinea: at sea
    pts.iloc[11, pts.columns.get_loc("longitude")] = -20.0
    ids = [f"{1000 + k}_d86cc6d20a_186_4189497{k}@N00.jpg" for k in range(12)]
    write_csv(root / "im2gps3k_places365.csv", places365_rows(ids, pts), PLACES365)
    for k, (i, p) in enumerate(zip(ids, pts.itertuples())):
        if k not in (3, 7):  # two rows without an image
            (root / "images" / i).write_bytes(jpeg(p.latitude, p.longitude))
    (root / "images" / "not_in_the_csv.jpg").write_bytes(jpeg(10.0, 10.0))
    return root


@pytest.fixture(scope="module")
def yfcc4k(tmp_path_factory, points):
    """``yfcc4k_places365.csv`` + the images in a ``yfcc4k.zip`` (as the benchmark's download ships them)."""
    root = tmp_path_factory.mktemp("yfcc4k")
    pts = points.iloc[12:20]
    ids = [f"{9_876_543_210 + k}.jpg" for k in range(len(pts))]
    write_csv(root / "yfcc4k_places365.csv", places365_rows(ids, pts), PLACES365)
    with zipfile.ZipFile(root / "yfcc4k.zip", "w") as zf:
        for i, p in zip(ids, pts.itertuples()):
            zf.writestr(f"yfcc4k/{i}", jpeg(p.latitude, p.longitude))
    return root


def osv5m_rows(pts, start: int):
    rows = []
    for k, p in enumerate(pts.itertuples()):
        rows.append(
            {
                **{c: "" for c in OSV5M_COLUMNS},
                "id": str(3859149887465501 + start + k),
                "latitude": p.latitude,
                "longitude": p.longitude,
                "country": p.country_code,
                "region": p.region,
                "city": f"Town{k}",
                "quadtree_10_1000": k,
                "unique_country": p.country_code,
                "unique_region": f"{p.region}_{p.country_code}",
                "unique_sub-region": "",
                "unique_city": f"Town{k}_nan_{p.region}_{p.country_code}",
                "creator_username": "roadroid",
            }  # fmt: skip
        )
    return rows


@pytest.fixture(scope="module")
def osv5m(tmp_path_factory, points):
    """The ``osv5m/osv5m`` repo layout: train.csv, test.csv, images/<split>/NN.zip of <id>.jpg; the second test
    shard is cut in the middle (a truncated download)."""
    root = tmp_path_factory.mktemp("osv5m") / "osv5m"
    root.mkdir()
    for split, pts, start in (("train", points.head(6), 0), ("test", points.iloc[6:18], 100)):
        rows = osv5m_rows(pts, start)
        write_csv(root / f"{split}.csv", rows, OSV5M_COLUMNS)
        (root / "images" / split).mkdir(parents=True)
        halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
        for n, half in enumerate(halves):
            with zipfile.ZipFile(root / "images" / split / f"{n:02d}.zip", "w") as zf:
                for r in half:
                    zf.writestr(f"{r['id']}.jpg", jpeg(r["latitude"], r["longitude"]))
    shard = root / "images" / "test" / "01.zip"
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * 0.55)])
    (root / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n")
    return root


@pytest.fixture(scope="module")
def osv5m_wds(tmp_path_factory, points):
    """The ``osv5m/osv5m-wds`` layout: <split>/*.tar of <key>.jpg + <key>.json."""
    root = tmp_path_factory.mktemp("osv5m_wds")
    (root / "test").mkdir()
    rows = osv5m_rows(points.iloc[6:14], 100)
    with tarfile.open(root / "test" / "000000.tar", "w") as tf:
        for r in rows:
            for name, data in ((f"{r['id']}.jpg", jpeg(r["latitude"], r["longitude"])),
                               (f"{r['id']}.json", json.dumps(r).encode())):  # fmt: skip
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


def test_im2gps3k_folder_and_csv(im2gps3k, tmp_path, cli):
    out = tmp_path / "im2gps3k"
    result = cli("dataset", "import", "im2gps3k", im2gps3k, "-o", out)
    assert result.code == 0, result.err
    assert "rows without an image: 2; images without a row: 1" in result.out
    ds = load_dataset(str(out))
    assert list(ds) == ["test"] and len(ds["test"]) == 10  # the intersection
    row = ds["test"][0]
    assert row["source_file"].endswith("@N00.jpg") and row["AUTHOR"].endswith("@N00")
    assert {"S3_Label", "S365_Label", "Prob_urban", "country_code", "region"} <= set(ds["test"].column_names)
    assert row["image"].size == (48, 32)
    at_sea = [r for r in ds["test"].select_columns(["latitude", "country_code"]) if r["latitude"] == 0.0]
    assert at_sea == [{"latitude": 0.0, "country_code": ""}]  # kept, unlabelled: every benchmark row is scored
    skipped = pd.read_csv(out / "skipped.csv")
    assert (skipped["reason"].str.contains("row without an image")).sum() == 2
    assert (skipped["item"] == "not_in_the_csv.jpg").sum() == 1
    assert "im2gps3k" in (out / "README.md").read_text()


def test_yfcc4k_from_a_zip(yfcc4k, tmp_path):
    result = import_source(ImportConfig("yfcc4k", str(yfcc4k), str(tmp_path / "y")))
    assert result.report.splits == {"test": 8} and result.rows_in_source == 8 and result.images_found == 8
    ds = load_dataset(str(tmp_path / "y"))["test"]
    assert ds[0]["source_file"] == "9876543210.jpg"
    assert abs(ds[0]["latitude"] - float(pd.read_csv(yfcc4k / "yfcc4k_places365.csv")["LAT"][0])) < 1e-6


def test_osv5m_truncated_shard_keeps_its_readable_members(osv5m, tmp_path):
    index = zip_members(osv5m / "images" / "test" / "01.zip")
    assert index.error and index.error.startswith("truncated zip") and 0 < len(index.members) < 6
    kept = len(index.members)
    result = import_source(ImportConfig("osv5m", str(osv5m), str(tmp_path / "o"), cells=["quadtree:max_samples=4"]))
    assert result.report.splits == {"train": 6, "test": 6 + kept}
    assert list(result.shards) == ["01.zip"] and f"{kept} images kept" in result.shards["01.zip"]
    assert result.rows_without_image == 6 - kept
    ds = load_dataset(str(tmp_path / "o"))
    test = ds["test"]
    assert {"unique_country", "unique_region", "unique_sub-region", "unique_city", "quadtree_10_1000"} <= set(
        test.column_names
    )
    assert {"source_country", "source_region", "city", "cell_quadtree"} <= set(test.column_names)
    assert test[0]["source_file"] == "3859149887465601"
    np.testing.assert_array_equal(test["source_country"], test["unique_country"])
    assert (np.asarray(test["country_code"]) == np.asarray(test["unique_country"])).mean() > 0.8


def test_osv5m_webdataset_variant(osv5m_wds, tmp_path):
    index = tar_members(osv5m_wds / "test" / "000000.tar")
    assert index.error is None and len(index.members) == 8
    result = import_source(ImportConfig("osv5m", str(osv5m_wds), str(tmp_path / "w"), splits=["test"]))
    assert result.report.splits == {"test": 8}
    test = load_dataset(str(tmp_path / "w"))["test"]
    assert "unique_city" in test.column_names and test[0]["image"].size == (48, 32)


def test_truncated_tar_keeps_members_before_the_cut(osv5m_wds, tmp_path):
    data = (osv5m_wds / "test" / "000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    index = tar_members(cut)
    assert index.error and index.error.startswith("truncated tar") and 0 < len(index.members) < 8
    for ref in index.members.values():
        assert ref.read()[:2] == b"\xff\xd8"  # whole JPEGs


def test_mp16_csv_and_tar(points, tmp_path):
    root = tmp_path / "MP16-Pro"
    (root / "metadata").mkdir(parents=True)
    pts = points.head(5)
    ids = [f"{k:02x}/{k + 40:02x}/{3451234 + k}.jpg" for k in range(5)]
    rows = places365_rows(ids, pts)
    for r, p in zip(rows, pts.itertuples()):
        r.update({"neighbourhood": "", "city": "X", "county": "", "state": p.region, "region": p.region,
                  "country": p.country, "country_code": p.country_code.lower(), "continent": "Y"})  # fmt: skip
    columns = [*PLACES365, "neighbourhood", "city", "county", "state", "region", "country", "country_code",
               "continent"]  # fmt: skip
    write_csv(root / "metadata" / "MP16_Pro_filtered.csv", rows, columns)
    with tarfile.open(root / "mp-16-images.tar", "w") as tf:
        for i, p in zip(ids, pts.itertuples()):
            data = jpeg(p.latitude, p.longitude)
            info = tarfile.TarInfo(f"mp-16-images/{i.split('/')[0]}/{i.replace('/', '_')}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    result = import_source(ImportConfig("mp16", str(root), str(tmp_path / "m"), cells=["quadtree:max_samples=3"]))
    assert result.report.splits == {"train": 5} and result.rows_without_image == 0
    train = load_dataset(str(tmp_path / "m"))["train"]
    assert train[0]["source_file"] == ids[0] and "source_country_code" in train.column_names
    assert "continent" in train.column_names and min(train["cell_quadtree"]) >= 0


def test_any_table_with_country_only_rows(points, tmp_path, cli):
    """Game data: some rows have a country (name or code, written many ways) and no coordinates."""
    root = tmp_path / "game"
    (root / "shots").mkdir(parents=True)
    rows = []
    for k, p in enumerate(points.head(6).itertuples()):
        (root / "shots" / f"round{k}.png").write_bytes(jpeg(p.latitude, p.longitude))
        rows.append({"shot": f"shots/round{k}.png", "lat": p.latitude, "lng": p.longitude, "nation": ""})
    variants = {"USA": "US", "United States of America": "US", "Türkiye": "TR", "Czechia": "CZ",
                "Côte d'Ivoire": "CI", "deu": "DE"}  # fmt: skip
    for k, name in enumerate(variants):
        (root / "shots" / f"guess{k}.png").write_bytes(jpeg(0.0, 0.0))
        rows.append({"shot": f"shots/guess{k}.png", "lat": "", "lng": "", "nation": name})
    (root / "shots" / "nothing.png").write_bytes(jpeg(0.0, 0.0))
    rows.append({"shot": "shots/nothing.png", "lat": "", "lng": "", "nation": "Atlantis"})
    pd.DataFrame(rows).to_csv(root / "rounds.csv", index=False)
    out = tmp_path / "t"
    result = cli("dataset", "import", "table", root, "-o", out, "--table", root / "rounds.csv", "--image-column",
                 "shot", "--latitude-column", "lat", "--longitude-column", "lng", "--country-column", "nation",
                 "--cells", "quadtree:max_samples=3")  # fmt: skip
    assert result.code == 0, result.err
    train = load_dataset(str(out))["train"].to_pandas()
    assert len(train) == 12  # Atlantis: neither coordinates nor a known country: skipped
    only = train[train["latitude"].isna()]
    assert dict(zip(only["file_country"], only["country_code"])) == variants
    assert (only["cell_quadtree"] == -1).all() and (train.dropna(subset=["latitude"])["cell_quadtree"] >= 0).all()
    card = (out / "README.md").read_text()
    assert "country_only" in card or "country-only" in card
    assert "nothing.png" in (out / "skipped.csv").read_text()


def test_osv5m_from_the_hub_without_a_loading_script(osv5m, hub, tmp_path):
    hub.publish(osv5m, "osv5m/osv5m", "dataset")
    out = tmp_path / "from_hub"
    command = [sys.executable, "-m", "geohf.cli", "dataset", "import", "osv5m", "osv5m/osv5m", "-o", str(out),
               "--split", "test"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=hub.env(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shard 01.zip: truncated zip" in done.stdout
    test = load_dataset(str(out))["test"]
    assert list(load_dataset(str(out))) == ["test"] and 6 < len(test) < 12
    downloaded = {f.name for f in (tmp_path / "hf").rglob("*") if f.is_file() and "snapshots" in f.parts}
    assert {"test.csv", "00.zip", "01.zip"} <= downloaded and "train.csv" not in downloaded  # only --split test


def test_yfcc26k_from_a_tar_and_bad_input(points, tmp_path, cli):
    root = tmp_path / "yfcc26k"
    root.mkdir()
    pts = points.head(4)
    ids = [f"{k:02x}/{k:02x}/{4000 + k}.jpg" for k in range(4)]
    write_csv(root / "yfcc25600_places365.csv", places365_rows(ids, pts), PLACES365)
    with tarfile.open(root / "yfcc26k_images.tar", "w") as tf:
        for i, p in zip(ids, pts.itertuples()):
            data = jpeg(p.latitude, p.longitude)
            info = tarfile.TarInfo(f"images/{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    result = import_source(ImportConfig("yfcc26k", str(root), str(tmp_path / "out")))
    assert result.report.splits == {"test": 4} and result.images_found == 4
    assert load_dataset(str(tmp_path / "out"))["test"][0]["source_file"] == ids[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = cli("dataset", "import", "yfcc26k", empty, "-o", tmp_path / "x")
    assert bad.code == 2 and "yfcc25600_places365.csv" in bad.errors[0] and "--table" in bad.errors[0]
    missing = cli("dataset", "import", "im2gps3k", tmp_path / "nowhere", "-o", tmp_path / "y")
    assert missing.code == 2 and "no such folder" in missing.errors[0]
