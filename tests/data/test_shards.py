"""``geohf dataset build --plan-only``, ``--plan PLAN --shard K/N`` and ``geohf dataset merge``: disjoint parts of
one saved plan that join into the dataset one machine builds."""

import json
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset
from PIL import Image

from geohf.cli import main
from geohf.data.samples import land_points, make_lost_and_found
from geohf.data.shards import Shard, merge_shards, shard_of
from geohf.data.splits import hash_split_groups
from geohf.data.stages import BuildConfig, build_dataset
from geohf.errors import UserError

CELLS = ["quadtree:max_samples=20,min_samples=3"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory, labeller):
    """40 good lost-and-found pairs, a duplicate location, a dark image and an unreadable JSON."""
    root = make_lost_and_found(tmp_path_factory.mktemp("shards") / "raw", land_points(40, labeller, seed=11))
    first = json.loads((root / "location_0.json").read_text())
    shutil.copy(root / "location_0.png", root / "location_dup.png")
    (root / "location_dup.json").write_text(json.dumps(first))
    Image.new("RGB", (320, 180), (2, 2, 2)).save(root / "location_dark.png")
    (root / "location_dark.json").write_text(json.dumps({"coordinates": [46.5, 7.5]}))
    shutil.copy(root / "location_1.png", root / "location_badjson.png")
    (root / "location_badjson.json").write_text("{not json")
    return root


def _build(raw, out, admin1_path, shard=None, plan=None, **kw):
    cfg = BuildConfig(layout="lost-and-found", input=str(raw), output=str(out), boundaries=admin1_path,
                      cells=CELLS, shard=shard, plan=plan and str(plan), **kw)  # fmt: skip
    return build_dataset(cfg)


def _rows(folder) -> pd.DataFrame:
    # a cache of its own: the datasets cache keys a local folder by its name and card, not its files, so parts
    # named alike by earlier runs would be read from it
    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset(str(folder), cache_dir=cache)
        frames = [ds[s].remove_columns("image").to_pandas().assign(split=s) for s in ds]
    return pd.concat(frames).sort_values("source_file").reset_index(drop=True)


@pytest.fixture(scope="module")
def one_and_three(raw, tmp_path_factory, admin1_path):
    tmp = tmp_path_factory.mktemp("built")
    whole = tmp / "whole"
    _build(raw, whole, admin1_path, rows_per_file=6)
    plan = tmp / "plan"
    _build(raw, plan, admin1_path, plan_only=True, rows_per_file=6)
    parts = [tmp / f"part{k}" for k in (1, 2, 3)]
    for k, part in enumerate(parts, 1):  # part 2 writes its images on two processes: the same rows
        _build(raw, part, admin1_path, shard=f"{k}/3", plan=plan, num_proc=2 if k == 2 else 1)
    return whole, parts


def test_three_shards_merge_into_the_one_shard_build(one_and_three, tmp_path):
    whole, parts = one_and_three
    names = [sorted(p.name for p in (part / "data").glob("*.parquet")) for part in parts]
    assert not set(names[0]) & set(names[1]) and all("-of-" in n for n in names[0])  # no collisions, final names
    assert sorted(n for part in names for n in part) == sorted(p.name for p in (whole / "data").glob("*.parquet"))
    shard_rows = [_rows(part) for part in parts]
    assert all(len(r) for r in shard_rows)
    assert not set(shard_rows[0]["source_file"]) & set(shard_rows[1]["source_file"])  # disjoint
    merged = tmp_path / "merged"
    main(["dataset", "merge", str(merged), *map(str, reversed(parts))])
    a, b = _rows(whole), _rows(merged)
    assert len(a) == 40  # the duplicate, the dark image and the bad JSON are skipped
    pd.testing.assert_frame_equal(a, b)  # same rows, splits and cells
    report = json.loads((merged / "build_report.json").read_text())
    single = json.loads((whole / "build_report.json").read_text())
    assert report["processing"] == single["processing"] and report["splits"] == single["splits"]
    assert report["processing"]["inputs found"] == 43
    skipped = pd.read_csv(merged / "skipped.csv")
    assert sorted(skipped["item"]) == sorted(pd.read_csv(whole / "skipped.csv")["item"])
    assert len(skipped) == 3
    card = (merged / "README.md").read_text()
    assert "num_examples: " in card and "--shard K/3" in card and not (merged / "part.json").exists()
    assert not (merged / "plan").exists() and not (parts[0] / ".plan").exists()
    # the card of any shard already globs every shard's files copied into one folder
    joined = tmp_path / "joined"
    shutil.copytree(parts[0], joined)
    for part in parts[1:]:
        for f in (part / "data").glob("*.parquet"):
            shutil.copy(f, joined / "data" / f.name)
    pd.testing.assert_frame_equal(_rows(joined), a)


def test_merge_refuses_other_builds_missing_and_repeated_shards(one_and_three, raw, tmp_path, admin1_path):
    whole, parts = one_and_three
    with pytest.raises(UserError, match=r"missing shard\(s\) 2/3"):
        merge_shards(tmp_path / "m1", [parts[0], parts[2]])
    with pytest.raises(UserError, match="given twice"):
        merge_shards(tmp_path / "m2", [parts[0], parts[0], parts[1], parts[2]])
    other_plan, other = tmp_path / "other_plan", tmp_path / "other2"
    _build(raw, other_plan, admin1_path, plan_only=True, seed=5)  # another seed: another split
    _build(raw, other, admin1_path, shard="2/3", plan=other_plan)
    with pytest.raises(UserError, match="shards of different builds"):
        merge_shards(tmp_path / "m3", [parts[0], other, parts[2]])
    with pytest.raises(UserError, match="not a shard"):
        merge_shards(tmp_path / "m4", [parts[0], tmp_path])
    assert not any(p.name.startswith(("m1", "m2", "m3", "m4", ".m")) for p in tmp_path.iterdir())


def test_shard_without_a_plan_and_plan_without_a_shard_give_one_line(raw, tmp_path, capsys):
    assert main(["dataset", "build", "--layout", "lost-and-found", "--input", str(raw),
                 "--output", str(tmp_path / "o"), "--shard", "1/2"]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--plan-only" in err and "--shard 1/2" in err
    assert main(["dataset", "build", "--plan", str(tmp_path), "--output", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shard K/N" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", ["3/2", "0/2", "2", "a/b", "1/0"])
def test_bad_shard_arguments_give_one_line(bad, raw, tmp_path, capsys):
    assert main(["dataset", "build", "--layout", "lost-and-found", "--input", str(raw),
                 "--output", str(tmp_path / "o"), "--shard", bad]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--shard {bad}" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError):
        Shard.parse(bad)


def test_shard_and_split_hashes_do_not_depend_on_order_or_company():
    keys = [f"images/{i:04d}.jpg" for i in range(2000)]
    shards = shard_of(keys, 4)
    assert set(shards) == {0, 1, 2, 3} and np.bincount(shards).min() > 400
    assert (shard_of(keys[::-1], 4)[::-1] == shards).all() and (shard_of(keys[:7], 4) == shards[:7]).all()
    groups = pd.Series(keys)
    split = hash_split_groups(groups, (0.8, 0.1, 0.1), seed=0)
    assert (hash_split_groups(groups[::-1].reset_index(drop=True), (0.8, 0.1, 0.1), 0)[::-1] == split).all()
    assert abs((split == "train").mean() - 0.8) < 0.04
    assert (hash_split_groups(groups, (0.8, 0.1, 0.1), seed=1) != split).any()
