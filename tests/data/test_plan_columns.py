"""The plan's slim columns: label codes instead of strings, splits keyed by numbers, duplicates found on hashes,
rows kept in place with their write order, and the local engine's workers started while the plan is made."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from geohf.data.blocks import PLAN_ROWS
from geohf.data.plan import BuildPlan
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


def _majority_reference(labels: pd.DataFrame, cell: np.ndarray, n_cells: int) -> pd.DataFrame:
    """Each cell's labels by the documented rule, sample by sample: the first sample of the majority country
    (ties: the first in text order) and, within it, of the majority region."""
    out = []
    for k in range(n_cells):
        rows = [i for i in np.flatnonzero(cell == k) if labels["country_code"].iat[i] != ""]
        if not rows:
            out.append({c: "" for c in labels})
            continue
        count = pd.Series([labels["country_code"].iat[i] for i in rows]).value_counts()
        country = min(count.index[count == count.max()])
        rows = [i for i in rows if labels["country_code"].iat[i] == country]
        count = pd.Series([labels["region_code"].iat[i] for i in rows]).value_counts()
        region = min(count.index[count == count.max()])
        first = next(i for i in rows if labels["region_code"].iat[i] == region)
        out.append({c: str(labels[c].iat[first]) for c in labels})
    return pd.DataFrame(out)


@pytest.mark.parametrize("categorical", [False, True])
@pytest.mark.parametrize("slice_points", [13, 1 << 16])
def test_cells_take_the_majority_labels_a_slice_of_cells_at_a_time(monkeypatch, labeller, categorical, slice_points):
    import geohf.geo.cells as cells
    from geohf.geo.cells import fit_cells
    from geohf.geo.labelling import LABEL_COLUMNS

    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(42, 52, 1500), rng.uniform(-5, 15, 1500)  # western Europe's borders, and some sea
    labels = labeller.label(lat, lon, categorical=categorical)[0][LABEL_COLUMNS]
    assert (labels["country_code"].astype(object) == "").any() and labels["country_code"].nunique() > 4
    monkeypatch.setattr(cells, "ASSIGN_POINTS", slice_points)
    partition = fit_cells("quadtree", lat, lon, labels, max_samples=60, min_samples=8)
    expected = _majority_reference(labels, partition.assign(lat, lon), len(partition))
    pd.testing.assert_frame_equal(partition.cells[LABEL_COLUMNS].reset_index(drop=True), expected)


def test_fix_swapped_swaps_a_float_columns_values_in_its_own_copy(labeller):
    from geohf.data.filters import validate_coordinates
    from geohf.data.skips import SkipLog

    frame = pd.DataFrame({"source_file": ["paris.jpg", "swapped.jpg"], "latitude": [48.85, 2.35],
                          "longitude": [2.35, 48.85]})  # fmt: skip
    log = SkipLog()
    out = validate_coordinates(frame, labeller, log, fix_swapped=True)  # the table's columns are read-only views
    assert out["latitude"].tolist() == [48.85, 48.85] and out["country_code"].astype(object).tolist() == ["FR"] * 2
    assert frame["latitude"].tolist() == [48.85, 2.35]  # the caller's table as it was
    assert [f.item for f in log.fixes] == ["swapped.jpg"]


def _chunks(values: pd.Series) -> int:
    import pyarrow as pa

    array = pa.array(values.array)
    return array.num_chunks if isinstance(array, pa.ChunkedArray) else 1


def test_a_tables_chunked_string_columns_are_joined_into_one_array(monkeypatch, tmp_path):
    from geohf.data import tables
    from geohf.data.tables import join_chunks, read_table

    path = tmp_path / "t.csv"
    pd.DataFrame({"name": [f"images/{i}.jpg" for i in range(50)], "n": range(50)}).to_csv(path, index=False)
    monkeypatch.setattr(tables, "READ_ROWS", 7)  # parsed in 8 chunks
    frame = read_table(path)
    assert frame["name"].tolist() == [f"images/{i}.jpg" for i in range(50)]
    assert all(_chunks(frame[column]) == 1 for column in frame)
    both = pd.concat([frame, frame], ignore_index=True)
    assert _chunks(both["name"]) == 2
    join_chunks(both)
    assert _chunks(both["name"]) == 1 and both["name"].tolist() == frame["name"].tolist() * 2


@pytest.mark.parametrize("kind", ["quadtree", "fishnet"])
def test_cells_fitted_on_rows_by_position_equal_cells_fitted_on_their_copies(labeller, admin1_path, kind):
    import geopandas as gpd

    from geohf.geo.cells import fit_cells
    from geohf.geo.labelling import LABEL_COLUMNS

    rng = np.random.default_rng(8)
    lat, lon = rng.uniform(42, 52, 1200), rng.uniform(-5, 15, 1200)
    labels = labeller.label(lat, lon, categorical=True)[0][LABEL_COLUMNS]
    rows = np.flatnonzero(rng.random(1200) < 0.7).astype(np.int32)
    params = {"max_samples": 60, "min_samples": 8} if kind == "quadtree" else {"cell_deg": 4.0}
    boundaries = gpd.read_parquet(admin1_path) if kind == "fishnet" else None
    by_rows = fit_cells(kind, lat, lon, labels, boundaries=boundaries, rows=rows, **params)
    copies = fit_cells(kind, lat[rows], lon[rows], labels.iloc[rows].reset_index(drop=True), boundaries=boundaries,
                       **params)  # fmt: skip
    pd.testing.assert_frame_equal(by_rows.cells.drop(columns="geometry"), copies.cells.drop(columns="geometry"))
    assert by_rows.cells.geometry.geom_equals_exact(copies.cells.geometry, 0).all()
    assert (by_rows.assign(lat, lon) == copies.assign(lat, lon)).all()


def test_an_empty_table_like_a_plans_rows_holds_none_of_their_buffers():
    import gc
    import tracemalloc

    from geohf.data.tables import empty_like

    tracemalloc.start()
    try:
        rows = pd.DataFrame({"latitude": np.zeros(1_000_000), "split": pd.Categorical(["train", "test"] * 500_000)})
        held = tracemalloc.get_traced_memory()[0]
        empty = empty_like(rows)
        del rows
        gc.collect()
        assert held - tracemalloc.get_traced_memory()[0] > 8_000_000  # the columns' buffers are gone
    finally:
        tracemalloc.stop()
    assert empty.empty and list(empty.columns) == ["latitude", "split"]
    assert empty["latitude"].dtype == np.float64 and isinstance(empty["split"].dtype, pd.CategoricalDtype)
