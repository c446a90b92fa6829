import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import load_dataset
from PIL import Image

from geohf.cli import main
from geohf.data.balance import BalanceSpec, balance, map_to_reference
from geohf.data.filters import drop_duplicate_locations
from geohf.data.layouts import read_layout
from geohf.data.quality import image_quality
from geohf.data.samples import land_points, make_grid_folders, make_imagefolder, make_lost_and_found
from geohf.data.skips import SkipLog
from geohf.data.splits import assign_splits
from geohf.data.stages import BuildConfig, build_dataset
from geohf.geo.cells import CellPartition
from geohf.geo.sphere import pairwise_haversine_km
from geohf.hub.publish import files_to_upload, push_folder

CELLS = ["semantic:min_samples=5,max_samples=40", "quadtree:max_samples=30,min_samples=4"]


@pytest.fixture(scope="module")
def points(labeller):
    return land_points(70, labeller, seed=7)


@pytest.fixture(scope="module")
def raw_laf(tmp_path_factory, points):
    """60 good lost-and-found pairs and one of every bad case."""
    root = make_lost_and_found(tmp_path_factory.mktemp("laf") / "raw", points.head(60))
    good = Image.open(root / "location_0.png")

    def pair(name, meta, image=good):
        if image is not None:
            image.save(root / f"location_{name}.png")
        if meta is not None:
            (root / f"location_{name}.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))

    (root / "location_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    (root / "location_corrupt.json").write_text(json.dumps({"coordinates": [48.85, 2.35]}))
    pair("nocoords", {"country_code": "FR"})
    pair("lat123", {"coordinates": [123.0, 200.0]})
    pair("nan", '{"coordinates": [NaN, 2.0]}')
    pair("text", {"coordinates": ["north", "east"]})
    pair("swapped", {"coordinates": [2.3522, 48.8566]})  # Paris, written [lon, lat]: lands in the Indian Ocean
    pair("sea", {"coordinates": [0.0, -150.0]})
    pair("list", [1, 2])
    pair("noimage", {"coordinates": [10.0, 10.0]}, image=None)
    pair("nojson", None)
    pair("dark", {"coordinates": [46.5, 7.5]}, Image.new("RGB", (320, 180), (3, 3, 3)))
    blurred = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (180, 1, 3))
    pair("blurry", {"coordinates": [46.6, 7.6]}, Image.fromarray(blurred))
    first = points.iloc[0]
    pair("duplicate", {"coordinates": [first.latitude, first.longitude]})
    second = points.iloc[1]
    pair("mislabelled", {"coordinates": [second.latitude + 1e-4, second.longitude], "country_code": "ZZ"})
    return root


@pytest.fixture(scope="module")
def built_laf(raw_laf, tmp_path_factory, admin1_path):
    out = tmp_path_factory.mktemp("laf_out") / "street-location-images"
    report = build_dataset(
        BuildConfig(
            layout="lost-and-found",
            input=str(raw_laf),
            output=str(out),
            boundaries=admin1_path,
            cells=CELLS,
            repo_id="org/street-location-images",
        )
    )
    return out, report


def test_lost_and_found_build_reports_every_bad_input(built_laf):
    out, report = built_laf
    p = report.processing
    assert p["inputs found"] == 60 + 14
    expected = {
        "skipped, read: no coordinates": 1,
        "skipped, read: JSON is not an object": 1,
        "skipped, read: no JSON beside the image": 1,
        "skipped, read: no image beside the JSON": 1,
        "skipped, coordinates: latitude is not a finite number": 2,  # NaN and "north"
        "skipped, coordinates: coordinates out of range": 1,
        "skipped, coordinates: latitude/longitude probably swapped": 1,
        "skipped, coordinates: at sea": 1,
        "skipped, images: undecodable image": 1,
        "skipped, images: dark or blank": 1,
        "skipped, images: blurry": 1,
        "skipped, duplicates: duplicate coordinates": 1,
    }
    for key, n in expected.items():
        assert p.get(key) == n, (key, p)
    assert p["kept"] == 61 == sum(report.splits.values())
    with open(out / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13
    swapped = next(r for r in rows if r["item"] == "location_swapped.png")
    assert "FR" in swapped["reason"] and "--fix-swapped" in swapped["reason"]
    assert all(not r["item"].startswith("/") for r in rows)  # relative paths only
    assert report.labelling.file_label_disagreements == 1
    card = (out / "README.md").read_text()
    assert "disagree with the country of their coordinates" in card and "location_mislabelled.png" in card
    assert "| skipped, images: blurry | 1 |" in card
    assert "in `skipped.csv`" in card  # the file is there: the card points at it


def test_lost_and_found_folder_loads_with_all_columns(built_laf):
    out, _ = built_laf
    ds = load_dataset(str(out))
    row = ds["train"][0]
    for col in (
        "image",
        "latitude",
        "longitude",
        "country_code",
        "country",
        "region_code",
        "region",
        "cell_semantic",
        "cell_quadtree",
        "location_id",
        "source_file",
    ):
        assert col in row
    codes = set(ds["train"]["country_code"]) | set(ds["test"]["country_code"])
    assert "" not in codes and "-99" not in codes
    for name in ("semantic", "quadtree"):
        part = CellPartition.load(out / "cells" / f"{name}.parquet")
        train = ds["train"].select_columns(["latitude", "longitude", f"cell_{name}"]).to_pandas()
        np.testing.assert_array_equal(part.assign(train.latitude, train.longitude), train[f"cell_{name}"])


def test_fix_swapped_keeps_the_row(raw_laf, tmp_path, admin1_path):
    out = tmp_path / "fixed"
    report = build_dataset(
        BuildConfig(
            layout="lost-and-found",
            input=str(raw_laf),
            output=str(out),
            boundaries=admin1_path,
            cells=["quadtree:max_samples=30,min_samples=4"],
            fix_swapped=True,
        )
    )
    assert report.processing["fixed, coordinates: latitude/longitude swapped"] == 1
    assert report.processing["kept"] == 62
    ds = load_dataset(str(out))
    rows = [r for s in ds for r in ds[s].select_columns(["source_file", "latitude", "country_code"])]
    fixed = next(r for r in rows if r["source_file"] == "location_swapped.png")
    assert fixed["country_code"] == "FR" and fixed["latitude"] == pytest.approx(48.8566)


def test_empty_folder_fails_clearly_and_writes_nothing(tmp_path, admin1_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        build_dataset(
            BuildConfig(
                layout="lost-and-found",
                input=str(tmp_path / "empty"),
                output=str(tmp_path / "out"),
                boundaries=admin1_path,
            )
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(
            BuildConfig(
                layout="grid-folders",
                input=str(tmp_path / "missing"),
                output=str(tmp_path / "o"),
                boundaries=admin1_path,
            )
        )


def test_grid_folders_keep_views_of_a_location_together(points, tmp_path, admin1_path):
    nested = make_grid_folders(tmp_path / "nested", points.head(20), views=3)
    flat = make_grid_folders(tmp_path / "flat", points.iloc[20:40], views=3, flat=True)
    log = SkipLog()
    frame = pd.concat([read_layout("grid-folders", nested, log), read_layout("grid-folders", flat, log)])
    assert len(frame) == 120 and not len(log)
    assert frame.groupby("location_id").size().eq(3).all()
    assert set(frame["view"]) == {0, 1, 2} and frame["capture_date"].str.match(r"^20\d\d-\d\d$").all()
    out = tmp_path / "ds"
    build_dataset(
        BuildConfig(
            layout="grid-folders",
            input=str(nested),
            output=str(out),
            boundaries=admin1_path,
            cells=["quadtree:max_samples=20,min_samples=3"],
            fractions=(0.6, 0.2, 0.2),
        )
    )
    ds = load_dataset(str(out))
    where = {}
    for split in ds:
        for loc in ds[split]["location_id"]:
            where.setdefault(loc, set()).add(split)
    assert all(len(s) == 1 for s in where.values())  # no location in two splits
    assert set(ds["train"]["grid"]) <= {str(i) for i in range(7)}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_imagefolder_layout(points, tmp_path, admin1_path, fmt):
    root = make_imagefolder(tmp_path / "raw", points.head(30), fmt=fmt)
    table = root / f"metadata.{fmt}"
    if fmt == "csv":  # a row whose image is missing is reported with its row number
        table.write_text(table.read_text() + "images/missing.jpg,1.0,2.0,locx,0\n")
    out = tmp_path / "ds"
    report = build_dataset(
        BuildConfig(
            layout="imagefolder",
            input=str(root),
            output=str(out),
            boundaries=admin1_path,
            cells=["quadtree:max_samples=20,min_samples=3"],
        )
    )
    assert report.processing["kept"] == 30
    if fmt == "csv":
        assert report.processing["skipped, read: file not found"] == 1
        assert "metadata.csv row 32" in (out / "skipped.csv").read_text()
    ds = load_dataset(str(out))
    assert "heading" in ds["train"].column_names


def test_imagefolder_without_coordinates_columns_fails(tmp_path, admin1_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "metadata.csv").write_text("file_name,lat\na.jpg,1\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['latitude', 'longitude'\]"):
        build_dataset(
            BuildConfig(
                layout="imagefolder", input=str(tmp_path / "raw"), output=str(tmp_path / "o"), boundaries=admin1_path
            )
        )


def test_block_split_with_buffer_is_leak_free(points):
    frame = points.assign(source_file=[f"f{i}" for i in range(len(points))])
    log = SkipLog()
    out = assign_splits(frame, by="block", fractions=(0.6, 0.2, 0.2), seed=3, block_deg=10.0, buffer_km=300.0, log=log)
    train, other = out[out.split == "train"], out[out.split != "train"]
    assert len(train) and len(other)
    d = pairwise_haversine_km(
        other.latitude.to_numpy(), other.longitude.to_numpy(), train.latitude.to_numpy(), train.longitude.to_numpy()
    )
    assert d.min() >= 300.0
    assert len(log) == len(frame) - len(out)
    again = assign_splits(frame, by="block", fractions=(0.6, 0.2, 0.2), seed=3, block_deg=10.0, buffer_km=300.0)
    pd.testing.assert_frame_equal(out, again)


def test_distribution_mapping_by_hand():
    frame = pd.DataFrame(
        {
            "country_code": ["A"] * 40 + ["B"] * 30 + ["C"] * 3 + ["D"] * 1,
            "source_file": [f"f{i}" for i in range(74)],
        }
    )
    log = SkipLog()
    # reference shares A:B:C:D = 2:1:1:1; C and D are under min_share=0.05 of the data
    out = map_to_reference(frame, {"A": 2, "B": 1, "C": 1, "D": 1}, min_share=0.05, slack=0.5, seed=0, log=log)
    counts = out["country_code"].value_counts().to_dict()
    # factor = min(40/2, 30/1) = 20 -> A 40, B 20; C: own 3/1 = 3, 3/20 < slack -> out; D likewise
    assert counts == {"A": 40, "B": 20}
    assert len(log) == 74 - 60
    capped = balance(frame, BalanceSpec.parse("cap:5"), seed=1, log=SkipLog())
    assert capped["country_code"].value_counts().to_dict() == {"A": 5, "B": 5, "C": 3, "D": 1}
    with pytest.raises(ValueError, match="cap:500"):
        BalanceSpec.parse("cap:lots")


def test_distribution_mapping_admits_rare_countries_up_to_their_share():
    sizes = {"A": 80, "B": 60, "C": 20, "E": 16, "F": 30, "G": 10}
    frame = pd.DataFrame({"country_code": [cc for cc, n in sizes.items() for _ in range(n)]})
    frame["source_file"] = [f"f{i}" for i in range(len(frame))]
    reference = {"A": 4, "B": 2, "C": 1, "E": 1, "F": 1, "G": 1}
    out = map_to_reference(frame, reference, min_share=0.2, slack=0.75, seed=0, log=SkipLog())
    # A, B hold >= 20%: factor = min(80/4, 60/2) = 20, so each reference unit is worth 20 locations.
    # C has exactly its share (20 of 20): all kept; E has 16/20 >= slack: all kept; F has more than
    # its share: 20 kept; G has 10/20 < slack: out.
    assert out["country_code"].value_counts().to_dict() == {"A": 80, "B": 40, "C": 20, "F": 20, "E": 16}


def test_dedupe_keeps_all_views_of_the_first_location():
    frame = pd.DataFrame(
        {
            "latitude": [1.0, 1.0, 1.0, 2.0],
            "longitude": [5.0, 5.0, 5.0, 6.0],
            "location_id": ["a", "a", "b", "c"],
            "source_file": ["a0", "a1", "b0", "c0"],
        }
    )
    log = SkipLog()
    out = drop_duplicate_locations(frame, log)
    assert out["source_file"].tolist() == ["a0", "a1", "c0"] and log.entries[0].item == "b0"


def test_image_quality_measures():
    rng = np.random.default_rng(0)
    sharp = Image.fromarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8))
    cvar, lvar, w, h = image_quality(_png(sharp))
    assert (w, h) == (320, 180) and cvar > 1000 and lvar > 1000
    cvar, lvar, *_ = image_quality(_png(Image.new("RGB", (64, 64), (200, 10, 10))))
    assert cvar == 0 and lvar == 0


def test_image_quality_draft_decodes_large_jpegs_smaller_but_reports_the_full_size():
    import io

    from geohf.images import decode_image

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 1200 wide, 1600 high
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85, exif=exif.tobytes())
    data = buf.getvalue()
    full = decode_image("x.jpg", data)
    small = decode_image("x.jpg", data, draft=(512, 512))
    assert full.image.size == full.full_size == small.full_size == (1200, 1600)
    assert small.image.size == (600, 800)  # 1/2 scale: 1/4 would go below 512
    assert image_quality(data)[2:] == image_quality(data, draft=2)[2:] == (1200, 1600)
    png = _png(Image.new("RGB", (2000, 1000), (10, 20, 30)))
    assert decode_image("x.png", png, draft=(256, 256)).image.size == (2000, 1000)  # draft is JPEG only


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_cli_build_and_push(raw_laf, tmp_path, admin1_path, monkeypatch):
    out = tmp_path / "cli"
    code = main(
        [
            "dataset",
            "build",
            "--layout",
            "lost-and-found",
            "--input",
            str(raw_laf),
            "--output",
            str(out),
            "--boundaries",
            admin1_path,
            "--cells",
            "quadtree:max_samples=30,min_samples=4",
            "--no-filter",
            "--split-by",
            "block",
            "--block-deg",
            "5",
        ]
    )
    assert code == 0
    report = json.loads((out / "build_report.json").read_text())
    assert "skipped, images: blurry" not in report["processing"]  # --no-filter
    assert report["processing"]["skipped, images: undecodable image"] == 1  # never kept

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/datasets/{kw['repo_id']}/commit/1"})()

    info = push_folder(out, "org/street-location-images", private=True, api=FakeApi())
    assert calls[0] == (
        "create_repo",
        "org/street-location-images",
        {"repo_type": "dataset", "private": True, "exist_ok": True},
    )
    upload = calls[1][1]
    assert upload["folder_path"] == str(out) and upload["repo_type"] == "dataset"
    assert info.commit_url.endswith("/commit/1")
    files = files_to_upload(out)
    assert "README.md" in files and "cells/quadtree.parquet" in files and "map.png" in files
    assert any(f.startswith("data/train-00000-of-") for f in files)
    with pytest.raises(ValueError, match="not a finished dataset folder"):
        push_folder(tmp_path, "org/x", api=FakeApi())


def test_load_dataset_by_repo_id_from_a_local_hub(built_laf, hub, tmp_path):
    out, _ = built_laf
    hub.publish(out, "org/street-location-images", "dataset")
    script = (
        "from datasets import load_dataset\n"
        "from huggingface_hub import hf_hub_download\n"
        "from geohf.geo.cells import CellPartition\n"
        "ds = load_dataset('org/street-location-images', revision='main')\n"
        "p = CellPartition.load(hf_hub_download('org/street-location-images', 'cells/semantic.parquet', "
        "repo_type='dataset', revision='main'))\n"
        "print(len(ds['train']), len(ds['validation']), len(ds['test']), len(p), ds['train'][0]['country'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=hub.env(tmp_path / "hf")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_train, n_val, n_test, n_cells, country = proc.stdout.split()[:5]
    local = load_dataset(str(out))
    assert (int(n_train), int(n_val), int(n_test)) == tuple(len(local[s]) for s in ("train", "validation", "test"))
    assert int(n_cells) == len(CellPartition.load(out / "cells" / "semantic.parquet"))
    card = yaml.safe_load((Path(out) / "README.md").read_text().split("---")[1])
    assert card["pretty_name"] == "street-location-images"
