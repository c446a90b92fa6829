import json

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import load_dataset

from geohf.data.bluemarble import (
    TileSpec,
    block_splits,
    latlon_to_pixel,
    load_blue_marble,
    pixel_to_latlon,
    sample_tiles,
    tile_split,
)
from geohf.data.folder import atomic_directory
from geohf.geo.cells import CellPartition


def test_pixel_coordinates_follow_the_equirectangular_formula():
    w, h = 5400, 2700
    # the guide's pixel-centre formula: lon = -180 + (x+.5)·360/W, lat = 90 − (y+.5)·180/H
    lat, lon = pixel_to_latlon(10 + 0.5, 20 + 0.5, w, h)
    assert lon == pytest.approx(-180 + 10.5 * 360 / w) and lat == pytest.approx(90 - 20.5 * 180 / h)
    x, y = latlon_to_pixel(lat, lon, w, h)
    assert (x, y) == (pytest.approx(10.5), pytest.approx(20.5))
    assert load_blue_marble().shape == (h, w, 3)


def test_tiles_never_share_pixels_across_splits(labeller):
    spec = TileSpec(tile_px=32, block_px=64, seed=3)
    tiles = sample_tiles({"train": 600, "validation": 100, "test": 100}, spec, labeller)
    assert tiles["split"].value_counts().to_dict() == {"train": 600, "validation": 100, "test": 100}
    t = spec.tile_px
    for a, b in [("train", "test"), ("train", "validation"), ("validation", "test")]:
        A, B = tiles[tiles.split == a], tiles[tiles.split == b]
        ox = (A.x0.to_numpy()[:, None] < B.x0.to_numpy()[None] + t) & (
            B.x0.to_numpy()[None] < A.x0.to_numpy()[:, None] + t
        )
        oy = (A.y0.to_numpy()[:, None] < B.y0.to_numpy()[None] + t) & (
            B.y0.to_numpy()[None] < A.y0.to_numpy()[:, None] + t
        )
        assert not (ox & oy).any(), f"a {a} tile shares pixels with a {b} tile"
    # centres are on land (or within the coastal distance), Antarctica excluded by default
    assert (tiles["country_code"] != "").all() and not (tiles["country_code"] == "AQ").any()
    # counted, not silently dropped
    stats = tiles.attrs["processing"]
    assert stats["tiles: kept"] == 800 and stats["tiles: centre at sea"] > 0


def test_tile_split_rejects_tiles_over_block_borders():
    spec = TileSpec(tile_px=10, block_px=20, seed=0)
    blocks = np.array([[0, 1], [0, 0]])
    x0, y0 = np.array([0, 5, 15, 25]), np.array([0, 0, 0, 5])
    np.testing.assert_array_equal(tile_split(x0, y0, blocks, spec), [0, 0, -1, 1])
    assert block_splits(5400, 2700, TileSpec()).shape == (22, 43)


def test_sampling_is_deterministic(labeller):
    spec = TileSpec(tile_px=32, block_px=64, seed=11)
    a = sample_tiles({"train": 50, "test": 10}, spec, labeller)
    b = sample_tiles({"train": 50, "test": 10}, spec, labeller)
    pd.testing.assert_frame_equal(a, b)
    c = sample_tiles({"train": 50, "test": 10}, TileSpec(tile_px=32, block_px=64, seed=12), labeller)
    assert not a[["x0", "y0"]].equals(c[["x0", "y0"]])


def test_dataset_folder_is_hub_ready(tiny_dataset):
    ds = load_dataset(str(tiny_dataset))
    assert {s: len(ds[s]) for s in ds} == {"train": 160, "validation": 20, "test": 20}
    row = ds["train"][0]
    assert row["image"].size == (32, 32)
    for col in ("latitude", "longitude", "country_code", "country", "region_code", "region", "cell_quadtree"):
        assert col in row
    card = (tiny_dataset / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}["test"] == 20
    assert "![sample locations by split](map.png)" in card and (tiny_dataset / "map.png").stat().st_size > 10_000
    part = CellPartition.load(tiny_dataset / "cells" / "quadtree.parquet")
    # cells were fitted on the training split only, and the column holds their ids
    train = ds["train"].to_pandas()
    assert part.cells["count"].sum() == len(train)
    np.testing.assert_array_equal(part.assign(train.latitude, train.longitude), train.cell_quadtree)
    report = json.loads((tiny_dataset / "build_report.json").read_text())
    assert report["splits"] == {"train": 160, "validation": 20, "test": 20}


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "README.md").write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"), atomic_directory(target):
        pass


def test_coarser_rendering_keeps_the_places_and_loses_detail(tmp_path, admin1_path, tiny_dataset):
    """``map_downscale``: the same tiles (positions, labels, splits) cut from a coarser copy of the mosaic."""
    from datasets import load_dataset

    from geohf.data.bluemarble import TileSpec, build_bluemarble, coarser_blue_marble, load_blue_marble

    assert coarser_blue_marble(1.0) is load_blue_marble()
    with pytest.raises(ValueError, match="map_downscale"):
        coarser_blue_marble(0.5)
    out = tmp_path / "coarse"
    build_bluemarble(
        out,
        {"train": 160, "validation": 20, "test": 20},
        TileSpec(tile_px=32, block_px=64, seed=0, map_downscale=2.5),
        cells=["quadtree:max_samples=20,min_samples=4"],
        boundaries=admin1_path,
    )
    sharp, coarse = load_dataset(str(tiny_dataset))["test"], load_dataset(str(out))["test"]
    for column in ("latitude", "longitude", "country_code", "tile_x", "tile_y"):
        assert sharp[column] == coarse[column]
    a = np.stack([np.asarray(im, dtype=np.float32) for im in sharp["image"]])
    b = np.stack([np.asarray(im, dtype=np.float32) for im in coarse["image"]])
    assert np.abs(a.mean((1, 2, 3)) - b.mean((1, 2, 3))).max() < 6  # the same colours...
    detail = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert detail(b) < 0.8 * detail(a)  # ...with less fine detail
    assert "--map-downscale 2.5" in (out / "README.md").read_text()
