"""The dataset card says only what is true of the folder next to it."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from geohf.data.report import BuildReport, LabelDisagreement, LabellingStats
from geohf.data.skips import Skip, SkipLog
from geohf.data.stages import BuildConfig, build_dataset
from geohf.errors import UserError
from geohf.hub.cards import DatasetCardFields


def test_card_cites_only_files_in_the_folder_and_a_real_command(tiny_dataset):
    card = (tiny_dataset / "README.md").read_text()
    assert not (tiny_dataset / "skipped.csv").exists()
    assert "skipped.csv" not in card  # nothing was skipped: no file to point at
    assert "(``)" not in card and ": ``." not in card  # no empty build command
    assert "geohf dataset build --layout bluemarble --output bluemarble --train 160" in card
    assert not re.search(r"https?://github\.com/geohf", card)  # the project has no public URL
    assert "Natural Earth 10m admin-1 (geohf" in card  # boundaries by name and version, not a path
    assert "/tmp" not in card and "/home" not in card


def test_card_fields_round_trip_and_overrides():
    card = DatasetCardFields("street", tags=["a", "b"], column_meanings={"IMG_ID": "the id"}, max_distance_km=25.0)
    assert card.tags == ("a", "b") and DatasetCardFields.from_dict(card.to_dict()) == card
    mine = replace(card, pretty_name="mine", source="my camera")
    assert (mine.pretty_name, mine.source, mine.tags, card.pretty_name) == ("mine", "my camera", ("a", "b"), "street")
    with pytest.raises(TypeError):
        DatasetCardFields.from_dict({"pretty_name": "x", "title": "y"})


def test_an_unknown_card_override_is_one_clear_error(tmp_path):
    cfg = BuildConfig(layout="lost-and-found", input=str(tmp_path), output=str(tmp_path / "out"), card={"title": "x"})
    with pytest.raises(UserError, match="title: not a card field; set any of pretty_name, description"):
        build_dataset(cfg)
    assert not (tmp_path / "out").exists()


def test_labelling_stats_and_report_round_trip():
    example = LabelDisagreement("a.png", 48.8, 2.3, "ZZ", "FR")
    stats = LabellingStats(inside_polygon=3, nearest_polygon=1, file_label_disagreements=1, examples=(example,))
    assert list(stats.to_dict()) == ["inside_polygon", "nearest_polygon", "file_label_disagreements", "examples"]
    assert LabellingStats.from_dict(stats.to_dict()) == stats
    assert "examples" not in LabellingStats(inside_polygon=0).to_dict()  # no file labels: no disagreement counted
    report = BuildReport("out", {"train": 4}, {"kept": 4}, stats, {"quadtree": 2}, seconds=2.0)
    saved = report.to_dict()
    assert saved["images_per_second"] == 2.0 and saved["labelling"]["examples"][0]["file_country_code"] == "ZZ"
    assert BuildReport.from_dict({**saved, "merged_from": {"shards": 2}}) == report


def test_skip_kind_and_at():
    log = SkipLog()
    log.skip("images", "/raw/a.png", "blurry: variance 3 < 10")
    log.fix("coordinates", "/raw/b.png", "swapped latitude/longitude: fixed")
    assert log.entries == [Skip("images", "/raw/a.png", "blurry: variance 3 < 10")]
    assert log.entries[0].kind == "blurry" and log.entries[0].at("a.png").item == "a.png"
    assert log.counts() == {"images: blurry": 1} and log.fix_counts() == {"coordinates: swapped latitude/longitude": 1}
