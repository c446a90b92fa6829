"""The plan's slim columns: label codes instead of strings, splits keyed by numbers, duplicates found on hashes,
rows kept in place with their write order, and the local engine's workers started while the plan is made."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from geohf.data.plan import PLAN_ROWS, BuildPlan
from geohf.data.samples import land_points, make_imagefolder
from geohf.data.splits import SPLITS, assign_splits, row_number_ranks, split_groups
from geohf.data.stages import BuildConfig, plan_build
from geohf.data.tables import repeated
from geohf.data.workers import map_chunks, start_pool


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 100, 101, 1000, 12345])
def test_row_number_ranks_sort_as_the_numbers_text(n):
    expected, _ = pd.factorize(pd.Series(np.arange(n).astype(str)), sort=True)
    assert (row_number_ranks(n) == expected).all()


def test_a_split_by_row_number_is_the_split_of_the_row_numbers_text():
    frame = pd.DataFrame({"latitude": np.zeros(2345), "longitude": np.zeros(2345)})
    out = assign_splits(frame, seed=3)
    expected = split_groups(pd.Series(frame.index.astype(str)), (0.8, 0.1, 0.1), 3)
    assert isinstance(out["split"].dtype, pd.CategoricalDtype) and list(out["split"].cat.categories) == list(SPLITS)
    assert (out["split"].astype(object).to_numpy() == expected).all()
    assert "split" not in frame  # a new column on a shallow copy


@pytest.mark.parametrize("rows", [3, 1 << 14])
def test_repeated_names_match_pandas_duplicated(rows):
    rng = np.random.default_rng(0)
    names = pd.Series([f"images/{k}.jpg" for k in rng.integers(0, 400, 1000)], dtype=str)
    assert (repeated(names, rows=rows) == names.duplicated().to_numpy()).all()
    assert not repeated(pd.Series([], dtype=str)).size


def test_repeated_compares_strings_where_hashes_collide(monkeypatch):
    names = pd.Series(["a", "b", "a", "c", "b", "b"], dtype=str)
    monkeypatch.setattr(pd.util, "hash_pandas_object", lambda part, index=False: np.zeros(len(part), np.uint64))
    assert repeated(names).tolist() == [False, False, True, False, True, True]


def test_categorical_labels_equal_the_string_labels_and_sort_like_them(labeller):
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-60, 70, 3000), rng.uniform(-180, 180, 3000)
    strings, _ = labeller.label(lat, lon)
    codes, _ = labeller.label(lat, lon, categorical=True)
    for column in ("country_code", "country", "region_code", "region", "match"):
        assert isinstance(codes[column].dtype, pd.CategoricalDtype)
        assert (codes[column].astype(object) == strings[column].astype(object)).all(), column
        assert (pd.factorize(codes[column], sort=True)[0] == pd.factorize(strings[column], sort=True)[0]).all()
    assert codes["country_code"].cat.codes.dtype.itemsize <= 2


def test_the_plan_keeps_codes_and_its_rows_in_place_and_saves_them_in_split_order(tmp_path, labeller, admin1_path):
    raw = make_imagefolder(tmp_path / "raw", land_points(60, labeller, seed=7), size=(32, 24))
    plan = plan_build(BuildConfig(layout="imagefolder", input=str(raw), output=str(tmp_path / "o"),
                                  boundaries=admin1_path, cells=["quadtree"], rows_per_file=7))  # fmt: skip
    rows = plan.rows
    assert "_path" not in rows and plan.read.root == str(raw.resolve())
    assert (rows["source_file"].str.startswith("images/")).all()  # relative to the input folder
    for column in ("country_code", "country", "region_code", "region", "label_match", "split"):
        assert isinstance(rows[column].dtype, pd.CategoricalDtype), column
    assert rows["cell_quadtree"].dtype == np.int32
    split_order = rows["split"].astype(object).to_numpy()[plan.order]
    assert list(dict.fromkeys(split_order)) == [s for s in SPLITS if s in set(split_order)]
    assert (np.diff(plan.order[split_order == "train"]) > 0).all()  # each split in the given order
    plan.save(tmp_path / "plan")
    saved = pq.read_table(tmp_path / "plan" / PLAN_ROWS).to_pandas()
    assert saved["split"].tolist() == split_order.tolist()
    assert saved["source_file"].tolist() == rows["source_file"].to_numpy()[plan.order].tolist()
    assert saved["country"].dtype != "category"  # saved as strings
    loaded = BuildPlan.load(tmp_path / "plan")
    assert loaded.plan_id == plan.plan_id and loaded.fingerprint() == plan.plan_id  # same rows, same hash


def test_a_started_pool_runs_the_chunks_and_is_shut_down():
    pool = start_pool(2, "math")
    assert dict(map_chunks(math.factorial, list(range(8)), 2, "factorials", "fix", pool)) == {
        i: math.factorial(i) for i in range(8)
    }
    with pytest.raises(RuntimeError):
        pool.submit(math.factorial, 3)


def test_labels_and_cells_in_slices_equal_one_pass(monkeypatch, labeller):
    import geohf.geo.cells as cells
    import geohf.geo.labelling as labelling
    from geohf.geo.cells import fit_cells

    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-60, 70, 500), rng.uniform(-180, 180, 500)
    whole, whole_report = labeller.label(lat, lon, categorical=True)
    partition = fit_cells("quadtree", lat, lon, max_samples=30, min_samples=5)
    monkeypatch.setattr(labelling, "LABEL_POINTS", 7)
    monkeypatch.setattr(cells, "ASSIGN_POINTS", 11)
    sliced, sliced_report = labeller.label(lat, lon, categorical=True)
    pd.testing.assert_frame_equal(sliced, whole)
    assert sliced_report == whole_report
    again = fit_cells("quadtree", lat, lon, max_samples=30, min_samples=5)
    pd.testing.assert_frame_equal(again.cells.drop(columns="geometry"), partition.cells.drop(columns="geometry"))
    assert (again.assign(lat, lon) == partition.assign(lat, lon)).all()


def test_the_map_draws_a_sample_above_its_limit_and_counts_every_row(monkeypatch, tiny_dataset):
    import geohf.data.execute as execute
    from geohf.data.folder import SplitInfo

    infos = {}
    for split in ("train", "validation", "test"):
        files = sorted(p.name for p in (tiny_dataset / "data").glob(f"{split}-*.parquet"))
        infos[split] = SplitInfo(split, sum(pq.read_metadata(tiny_dataset / "data" / f).num_rows for f in files),
                                 shards=files)  # fmt: skip
    drawn = {}

    def plot(lat, lon, groups, path, title="", counts=None):
        drawn.update(points=len(lat), groups=set(groups), title=title, counts=counts)

    monkeypatch.setattr(execute, "MAP_POINTS", 50)
    execute._map(tiny_dataset, infos, plot)
    assert drawn["points"] <= 50 + 3 and drawn["groups"] == {"train", "validation", "test"}
    assert drawn["counts"] == {s: i.num_examples for s, i in infos.items()} and "every 4th" in drawn["title"]
