"""geohf collect: regions, sampling plans, the Street View / Mapillary collector against a loopback emulator."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geohf.cli import main
from geohf.collect import CollectConfig, HttpClient, HttpConfig, QuotaExceeded, RequestFailed, ViewOptions, collect
from geohf.collect.folder import METADATA_COLUMNS, OutputFolder
from geohf.collect.plan import fishnet_points, load_plan, make_plan, plan_info, save_plan, uniform_points
from geohf.collect.regions import Region, equal_area, parse_regions, split_spec
from geohf.collect.state import CollectState
from geohf.commands.collect import register_subcommand
from geohf.geo.sphere import EARTH_RADIUS_KM, haversine_km

sys.path.insert(0, str(Path(__file__).parent))
from collect_server import ProviderEmulator  # noqa: E402

GOOGLE_SECRET = "AIzaFAKE-SECRET-google-0123456789"
MAPILLARY_SECRET = "MLY|4242|FAKE-SECRET-mapillary-token"
PARIS = "city:Paris@48.8566,2.3522,1km"
N_LOCATIONS = 48
WORKERS = 2


# ---------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def server():
    with ProviderEmulator(GOOGLE_SECRET, MAPILLARY_SECRET) as em:
        yield em


@pytest.fixture
def em(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch):
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY", raising=False)
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)


@pytest.fixture(scope="module")
def paris_plan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "paris.parquet"
    save_plan(make_plan(parse_regions(PARIS), N_LOCATIONS, seed=0), path)
    return path


def run_args(plan, out, em, *extra, provider="streetview") -> list[str]:
    return [
        "collect",
        "run",
        str(plan),
        "--provider",
        provider,
        "--output",
        str(out),
        "--base-url",
        em.base_url,
        "--size",
        "32x32",
        "--radius",
        "150",
        "--rate",
        "0",
        "--workers",
        str(WORKERS),
        "--backoff",
        "0.01",
        "--timeout",
        "0.5",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(server, paris_plan, tmp_path_factory) -> Path:
    """An uninterrupted, fault-free Street View run over the Paris plan."""
    server.reset()
    out = tmp_path_factory.mktemp("reference") / "streetview"
    assert main(run_args(paris_plan, out, server, "--key", GOOGLE_SECRET)) == 0
    return out


def snapshot(out: Path) -> tuple[list[str], dict[str, str]]:
    """metadata.jsonl lines and the hash of every image file."""
    lines = (out / "metadata.jsonl").read_text().splitlines()
    files = {f"images/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images").iterdir()}
    return lines, files


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def assert_clean_folder(out: Path) -> None:
    """Every metadata line has its image, every image its line, no temp files, no duplicates."""
    recs = records(out)
    names = [r["file_name"] for r in recs]
    assert len(names) == len(set(names))
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == set(names)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    ids_per_pano = pd.DataFrame(recs).groupby("provider_id")["location_id"].nunique() if recs else pd.Series()
    assert (ids_per_pano == 1).all(), "a panorama was collected for two locations"


def unsaved(out: Path) -> bool:
    """True when metadata.jsonl is longer than the state on disk says (a commit after the last checkpoint)."""
    try:
        committed = json.loads((out / ".collect" / "state.json").read_text())["metadata_bytes"]
        return (out / "metadata.jsonl").stat().st_size > committed
    except (FileNotFoundError, ValueError):
        return False


def count_images(out: Path) -> int:
    dirs = [out / "images", out / ".collect" / "pending"]
    return sum(1 for d in dirs if d.is_dir() for p in d.iterdir() if p.suffix == ".jpg" and not p.name.startswith("."))


# ---------------------------------------------------------------------------- regions and plans
def test_split_spec_keeps_the_commas_of_cities():
    tokens = split_spec(["FR,DE", "city:Paris@48.8566,2.3522,15km;US-CA", " fishnet:US@2 "])
    assert tokens == ["FR", "DE", "city:Paris@48.8566,2.3522,15km", "US-CA", "fishnet:US@2"]


def test_parse_regions_countries_admin1_cities_and_files(admin1_path, tmp_path):
    regions = parse_regions(["FR,US-CA", "city:Paris@48.8566,2.3522,15km", "city:Lyon@45.76,4.84,500m"], admin1_path)
    assert [r.name for r in regions] == ["FR", "US-CA", "Paris", "Lyon"]
    km2 = {r.name: shapely.area(equal_area(r.geometry)) * EARTH_RADIUS_KM**2 for r in regions}
    assert km2["Paris"] == pytest.approx(math.pi * 15**2, rel=0.01)
    assert km2["Lyon"] == pytest.approx(math.pi * 0.5**2, rel=0.01)
    assert km2["US-CA"] == pytest.approx(403_466, rel=0.03)  # California's land area

    cities = tmp_path / "cities.csv"
    pd.DataFrame(
        {"name": ["Tokyo", "Lagos"], "latitude": [35.68, 6.52], "longitude": [139.69, 3.38], "radius_km": [20, 10]}
    ).to_csv(cities, index=False)
    boxes = tmp_path / "areas.geojson"
    gpd.GeoDataFrame(
        {"name": ["north", "south"]}, geometry=[shapely.box(0, 1, 1, 2), shapely.box(0, -2, 1, -1)], crs=4326
    ).to_file(boxes)
    assert [r.name for r in parse_regions([str(cities), str(boxes)])] == ["Tokyo", "Lagos", "north", "south"]

    for bad, message in [
        ("Atlantis", "not a file, country or admin-1 code"),
        ("ZZ-QQ", "no admin-1 region"),
        ("city:Paris@48.8,2.3", "RADIUS"),
        ("FR,FR", "unique names"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_regions(bad, admin1_path)


def test_uniform_points_are_uniform_on_the_sphere_and_deterministic():
    box = shapely.box(0, 0, 10, 60)
    lat, lon = uniform_points(box, 40_000, np.random.default_rng(0))
    assert ((lon >= 0) & (lon <= 10) & (lat >= 0) & (lat <= 60)).all()
    # area-correct: P(lat < 30) = sin 30° / sin 60° = 0.577 (a flat sampler would give 0.5)
    assert (lat < 30).mean() == pytest.approx(math.sin(math.radians(30)) / math.sin(math.radians(60)), abs=0.01)
    again = uniform_points(box, 40_000, np.random.default_rng(0))
    other = uniform_points(box, 40_000, np.random.default_rng(1))
    assert np.array_equal(lat, again[0]) and not np.array_equal(lat, other[0])


def test_points_are_inside_multipart_regions_in_proportion_to_area():
    big, small = shapely.box(0, 0, 4, 4), shapely.box(10, 0, 11, 1)
    lat, lon = uniform_points(shapely.MultiPolygon([big, small]), 17_000, np.random.default_rng(3))
    assert shapely.contains_xy(shapely.MultiPolygon([big, small]), lon, lat).all()
    assert (lon >= 10).mean() == pytest.approx(1 / 17, abs=0.006)


def test_fishnet_sampler_covers_evenly():
    square = shapely.box(0, 0, 10, 10)

    def spread(lat, lon):  # std of the counts in 1° cells (4 expected in each)
        return np.bincount((np.floor(lat) * 10 + np.floor(lon)).astype(int), minlength=100).std()

    lat_f, lon_f = fishnet_points(square, 400, np.random.default_rng(0))
    lat_u, lon_u = uniform_points(square, 400, np.random.default_rng(0))
    assert len(lat_f) == 400 and shapely.contains_xy(square, lon_f, lat_f).all()
    assert spread(lat_f, lon_f) < 1.5 < spread(lat_u, lon_u)  # 30 seeds: fishnet 0.8-1.4, uniform 1.7-2.3 (Poisson 2)


def test_fishnet_cells_partition_the_region(admin1_path):
    (california,) = parse_regions("US-CA", admin1_path)
    cells = parse_regions("fishnet:US-CA@2", admin1_path)
    assert [c.name for c in cells] == [f"US-CA-cell{k:03d}" for k in range(len(cells))]
    assert 10 <= len(cells) <= 40
    # the cells tile the region exactly (areas in degrees², where the clipping is exact); projected to equal
    # area, the vertices the clipping adds on long straight (simplified) borders move the area by ~1e-4
    total = sum(shapely.area(c.geometry) for c in cells)
    assert total == pytest.approx(shapely.area(california.geometry), rel=1e-9)
    assert shapely.area(shapely.union_all([c.geometry for c in cells])) == pytest.approx(total, rel=1e-9)
    total = sum(shapely.area(equal_area(c.geometry)) for c in cells)
    assert total == pytest.approx(shapely.area(equal_area(california.geometry)), rel=1e-3)
    full = shapely.area(equal_area(shapely.box(-120, 36, -118, 38)))
    assert all(shapely.area(equal_area(c.geometry)) >= 0.1 * full for c in cells)  # slivers and islands merged
    plan = make_plan(cells, 5, seed=0)
    assert len(plan) == 5 * len(cells) and plan["region"].nunique() == len(cells)


def test_plan_regions_are_independent_and_population_weighted(tmp_path):
    a, b = Region("a", shapely.box(0, 0, 1, 1), 3e6), Region("b", shapely.box(5, 5, 6, 6), 1e6)
    both, alone = make_plan([a, b], 10, seed=7), make_plan([b], 10, seed=7)
    assert both[both.region == "b"].reset_index(drop=True).equals(alone)
    counts = make_plan([a, b], 10, "population", seed=0)["region"].value_counts()
    assert counts.to_dict() == {"a": 15, "b": 5}
    with pytest.raises(ValueError, match="no population raster"):
        make_plan([Region("c", shapely.box(0, 0, 1, 1))], 10, "population")


def test_plan_command_points_fall_in_their_regions(admin1_path, labeller, tmp_path, capsys):
    out = tmp_path / "plan.parquet"
    argv = ["collect", "plan", "--regions", "FR,US-CA", PARIS.replace("1km", "15km"), "--per-region", "60"]
    assert main([*argv, "--output", str(out), "--boundaries", admin1_path, "--seed", "3"]) == 0
    assert "wrote 180 locations in 3 regions" in capsys.readouterr().out
    plan = load_plan(out)
    assert plan["location_id"].is_unique and plan["region"].value_counts().to_dict() == {
        "FR": 60,
        "US-CA": 60,
        "Paris": 60,
    }
    labels, _ = labeller.label(plan["latitude"], plan["longitude"])
    assert (labels["country_code"][plan["region"] == "FR"] == "FR").all()
    assert (labels["region_code"][plan["region"] == "US-CA"] == "US-CA").all()
    paris = plan[plan["region"] == "Paris"]
    assert (haversine_km(paris["latitude"], paris["longitude"], 48.8566, 2.3522) <= 15.01).all()
    assert plan_info(out)["sampler"] == "uniform" and plan_info(out)["seed"] == 3
    assert main([*argv, "--output", str(out), "--boundaries", admin1_path, "--seed", "3"]) == 0
    assert load_plan(out).equals(plan)  # deterministic by seed
    assert main(["collect", "plan", "--regions", "Atlantis", "--per-region", "3", "--output", str(out)]) == 2
    assert "Atlantis" in capsys.readouterr().err


def test_population_sampler_without_weights_explains_why(tmp_path, capsys):
    argv = ["collect", "plan", "--regions", PARIS, "--per-region", "5", "--sampler", "population"]
    assert main([*argv, "--output", str(tmp_path / "p.parquet")]) == 2
    assert "population raster" in capsys.readouterr().err


def test_parser_wires_into_a_geohf_parser():
    parser = argparse.ArgumentParser(prog="geohf")
    register_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["collect", "run", "p.parquet", "--provider", "mapillary", "--output", "o", "--dry-run"])
    assert callable(args.func) and args.dry_run and args.headings == 3 and args.fov == 120 and args.size == "640x640"


# ---------------------------------------------------------------------------- the HTTP client
def test_rate_limit_retry_after_and_give_up(em):
    url = em.base_url + "/maps/api/streetview/metadata"
    params = {"location": "48.8566,2.3522", "key": GOOGLE_SECRET}
    with HttpClient(HttpConfig(rate=20, backoff=0.01, retries=2), secrets=[GOOGLE_SECRET]) as client:
        start = time.perf_counter()
        for _ in range(10):
            client.get("metadata", url, lambda r: r.json(), params=params)
        assert time.perf_counter() - start >= 9 / 20 - 0.01

    with HttpClient(HttpConfig(rate=0, backoff=0.01, retries=2)) as client:
        em.retry_after = "0.4"
        em.inject("metadata", 429)
        start = time.perf_counter()
        assert client.get("metadata", url, lambda r: r.json(), params=params)["status"] in ("OK", "ZERO_RESULTS")
        assert time.perf_counter() - start >= 0.4  # Retry-After honoured
        em.retry_after = None
        em.inject("metadata", 429, 429, 429)
        with pytest.raises(QuotaExceeded):
            client.get("metadata", url, lambda r: r.json(), params=params)
        em.inject("metadata", 503, 502, 500)
        with pytest.raises(RequestFailed, match="HTTP 500"):
            client.get("metadata", url, lambda r: r.json(), params=params)
        expected = {"metadata: HTTP 429": 4, "metadata: HTTP 503": 1, "metadata: HTTP 502": 1, "metadata: HTTP 500": 1}
        assert client.stats.bad == expected
        assert client.stats.retries == 5


# ---------------------------------------------------------------------------- Street View runs
def test_streetview_run_writes_an_imagefolder(server, reference):
    recs = records(reference)
    assert recs and all(list(r) == METADATA_COLUMNS for r in recs)
    assert_clean_folder(reference)
    state = CollectState.for_folder(reference, json.loads((reference / ".collect/state.json").read_text())["options"])
    statuses = pd.Series([d["status"] for d in state.done.values()]).value_counts()
    assert len(state.done) == N_LOCATIONS and set(statuses.index) == {"ok", "no_imagery", "duplicate"}
    assert len(recs) == 3 * statuses["ok"]
    for location, group in pd.DataFrame(recs).groupby("location_id"):
        headings = sorted(group["heading"])
        assert np.allclose(np.diff(headings), 120) and group["provider_id"].nunique() == 1
        done = state.done[location]
        assert done["distance_m"] <= 150
        assert done["actual"] == pytest.approx([group["latitude"].iloc[0], group["longitude"].iloc[0]], abs=1e-7)
        assert len(group["capture_date"].iloc[0]) == 7  # "YYYY-MM"
    assert not (reference / ".collect" / "pending").exists()


def test_collected_folder_loads_as_a_datasets_imagefolder(reference, tmp_path):
    from datasets import load_dataset

    ds = load_dataset("imagefolder", data_dir=str(reference), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == len(records(reference))
    assert set(ds.column_names) == {"image", *METADATA_COLUMNS} - {"file_name"}
    row = ds[0]
    assert row["image"].size == (32, 32) and row["provider"] == "streetview" and row["location_id"].startswith("Paris")


def test_geohf_dataset_build_reads_the_collected_folder(reference, admin1_path, tmp_path):
    from datasets import load_dataset

    from geohf.cli import main as geohf_main

    out = tmp_path / "dataset"
    argv = ["dataset", "build", "--layout", "imagefolder", "--input", str(reference), "--output", str(out)]
    argv += ["--boundaries", admin1_path, "--cells", "quadtree:max_samples=20,min_samples=3", "--no-filter"]
    assert geohf_main(argv) == 0  # --no-filter: the emulator's images are flat colours
    ds = load_dataset(str(out))
    recs = {r["file_name"]: r for r in records(reference)}
    rows = [row for split in ds.values() for row in split.remove_columns("image")]
    assert sorted(r["source_file"] for r in rows) == sorted(recs)
    for row in rows:
        rec = recs[row["source_file"]]
        assert (row["location_id"], row["provider_id"], row["heading"]) == (
            rec["location_id"],
            rec["provider_id"],
            rec["heading"],
        )
        assert row["country_code"] == "FR" and row["region_code"] == "FR-75"


def test_transient_faults_are_retried_counted_and_invisible_in_the_result(em, paris_plan, reference, tmp_path, capsys):
    em.retry_after = "0"
    em.inject("metadata", 429, 503, "timeout", "over_query_limit", "unknown_error")
    em.inject("image", "truncated", "html", 500, 429)
    out = tmp_path / "faulty"
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 0
    summary = capsys.readouterr().out
    reasons = ["HTTP 429", "HTTP 503", "time-out", "OVER_QUERY_LIMIT", "UNKNOWN_ERROR", "not a JPEG", "HTTP 500"]
    for reason in [*reasons, "ProtocolError"]:  # the truncated body (urllib3: connection broken)
        assert reason in summary
    assert "9 retries" in summary
    assert snapshot(out) == snapshot(reference)


def test_failed_locations_are_reported_and_retried_by_the_next_run(em, paris_plan, tmp_path, capsys):
    out = tmp_path / "failing"
    em.inject("metadata", 503, 503, 503)
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET, "--retries", "2", "--workers", "1")) == 1
    summary = capsys.readouterr().out
    assert "1 failed" in summary and "metadata: HTTP 503 x1" in summary and "re-run the same command" in summary
    state = json.loads((out / ".collect/state.json").read_text())
    assert "Paris-00000" not in state["done"] and len(state["done"]) == N_LOCATIONS - 1
    assert "Paris-00000" not in {r["location_id"] for r in records(out)}
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 0
    assert "Paris-00000" in json.loads((out / ".collect/state.json").read_text())["done"]
    assert_clean_folder(out)


def test_403_stops_with_the_count_and_the_rerun_completes(em, paris_plan, reference, tmp_path, capsys):
    out = tmp_path / "quota"
    em.quota["image"] = 20
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 1
    summary = capsys.readouterr().out
    assert "STOPPED: image request refused with HTTP 403: Daily quota exceeded" in summary
    finished = len(json.loads((out / ".collect/state.json").read_text())["done"])
    assert f"{finished} of {N_LOCATIONS} locations finished" in summary and "GOOGLE_MAPS_API_KEY" in summary
    assert 0 < finished < N_LOCATIONS
    assert_clean_folder(out)
    assert len(records(out)) < 20
    images_before = em.answered["image"]
    em.quota.clear()
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 0
    assert snapshot(out) == snapshot(reference)
    # the 20 images paid before the stop are reused, not bought again
    assert em.answered["image"] - images_before == len(snapshot(reference)[1]) - 20


def test_max_requests_is_a_hard_budget(em, paris_plan, reference, tmp_path, capsys):
    out = tmp_path / "budget"
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET, "--max-requests", "41")) == 0
    assert sum(em.counts.values()) <= 41
    assert "request budget" in capsys.readouterr().out
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 0
    assert snapshot(out) == snapshot(reference)


def test_dry_run_prints_requests_and_cost_and_sends_nothing(em, paris_plan, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(run_args(paris_plan, out, em, "--dry-run")) == 0  # no key needed
    text = capsys.readouterr().out
    assert "look-up requests: 48 (free)" in text and "up to 144" in text and "up to $1.01 at $0.007" in text
    assert main(run_args(paris_plan, out, em, "--dry-run", "--max-requests", "40", "--price-per-image", "0.01")) == 0
    text = capsys.readouterr().out
    assert "limits this run to 10 of the 48" in text and "up to $0.30 at $0.01" in text
    assert sum(em.counts.values()) == 0 and not out.exists()


def test_dry_run_counts_only_unfinished_locations(em, paris_plan, reference, capsys):
    assert main(run_args(paris_plan, reference, em, "--dry-run")) == 0
    assert "48 already finished" in capsys.readouterr().out and sum(em.counts.values()) == 0


def test_a_folder_refuses_other_options_or_another_plan(em, paris_plan, reference, tmp_path, capsys):
    before = snapshot(reference)
    assert main(run_args(paris_plan, reference, em, "--key", GOOGLE_SECRET, "--headings", "4")) == 2
    assert "collected with other options ({'headings': 3})" in capsys.readouterr().err
    other = tmp_path / "other.parquet"
    save_plan(make_plan(parse_regions(PARIS), N_LOCATIONS, seed=1), other)
    assert main(run_args(other, reference, em, "--key", GOOGLE_SECRET)) == 2
    assert "another plan" in capsys.readouterr().err
    assert snapshot(reference) == before and sum(em.counts.values()) == 0


def test_missing_keys_name_the_variable(em, paris_plan, tmp_path, capsys):
    assert main(run_args(paris_plan, tmp_path / "a", em)) == 2
    assert "set the environment variable GOOGLE_MAPS_API_KEY" in capsys.readouterr().err
    assert main(run_args(paris_plan, tmp_path / "b", em, provider="mapillary")) == 2
    assert "set the environment variable MAPILLARY_ACCESS_TOKEN" in capsys.readouterr().err
    assert sum(em.counts.values()) == 0


# ---------------------------------------------------------------------------- Mapillary
def test_mapillary_run_picks_the_nearest_unseen_image(em, paris_plan, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", MAPILLARY_SECRET)
    out = tmp_path / "mapillary"
    assert main(run_args(paris_plan, out, em, provider="mapillary")) == 0
    recs = records(out)
    assert_clean_folder(out)
    assert recs and all(r["provider"] == "mapillary" and len(r["capture_date"]) == 10 for r in recs)
    plan = load_plan(paris_plan).set_index("location_id")
    first = recs[0]
    lat, lon = plan.loc[first["location_id"], ["latitude", "longitude"]]
    dlat = 150 / 111_320
    dlon = dlat / math.cos(math.radians(lat))
    photos = em.photos_in(lon - dlon, lat - dlat, lon + dlon, lat + dlat, 2000)
    coords = [p["computed_geometry"]["coordinates"] for p in photos]
    nearest = photos[int(np.argmin([haversine_km(lat, lon, y, x) for x, y in coords]))]
    assert first["provider_id"] == nearest["id"] and first["heading"] == nearest["compass_angle"]
    searches = [e for e in em.log if e["endpoint"] == "search"]
    thumbs = [e for e in em.log if e["endpoint"] == "thumb"]
    assert all(e["authorization"] == f"OAuth {MAPILLARY_SECRET}" for e in searches)
    assert thumbs and all(e["authorization"] is None for e in thumbs)  # the token never goes to the CDN

    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", "MLY|wrong")
    assert main(run_args(paris_plan, tmp_path / "denied", em, provider="mapillary")) == 1
    out_text = capsys.readouterr().out
    assert "HTTP 403" in out_text and "MAPILLARY_ACCESS_TOKEN" in out_text and "0 of 48 locations finished" in out_text


# ---------------------------------------------------------------------------- secrets
def test_keys_never_reach_disk_logs_or_errors(em, paris_plan, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 logs every URL at DEBUG: keys must be redacted there too
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", GOOGLE_SECRET)
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", MAPILLARY_SECRET)
    em.inject("metadata", 503, "timeout")
    assert main(run_args(paris_plan, tmp_path / "sv", em, "--max-requests", "60")) == 0
    assert main(run_args(paris_plan, tmp_path / "mly", em, "--max-requests", "30", provider="mapillary")) == 0
    # a bad key that the server echoes back in its error message
    wrong = "AIzaFAKE-SECRET-wrong-key-987654"
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", wrong)
    assert main(run_args(paris_plan, tmp_path / "denied", em)) == 1
    # an unreachable server: requests' own exception text holds the full URL
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    argv = run_args(paris_plan, tmp_path / "dead", em, "--retries", "0", "--max-consecutive-failures", "3")
    assert main([*argv, "--base-url", dead]) == 1
    captured = capsys.readouterr()
    assert "REQUEST_DENIED" in captured.out and "ConnectionError" in captured.out
    assert any("GET /maps/api/streetview" in r.getMessage() for r in caplog.records)  # the URLs were logged...
    texts = [captured.out, captured.err, caplog.text, *(r.getMessage() for r in caplog.records)]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    for secret in (GOOGLE_SECRET, MAPILLARY_SECRET, wrong):
        assert not [t for t in texts if secret in t]  # ...but never a key


# ---------------------------------------------------------------------------- resume
@pytest.mark.parametrize("crash_in", ["append_metadata", "save"])
def test_crash_between_commit_steps_then_resume(em, paris_plan, reference, tmp_path, monkeypatch, crash_in):
    target = OutputFolder if crash_in == "append_metadata" else CollectState
    original, calls = getattr(target, crash_in), []

    def crashing(self, *args):
        calls.append(1)
        if len(calls) >= 3:  # dies here on the third commit, and stays dead
            raise RuntimeError("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(target, crash_in, crashing)
    out = tmp_path / "crashed"
    config = CollectConfig(
        "streetview",
        ViewOptions(size="32x32", radius_m=150),
        HttpConfig(rate=0, backoff=0.01, timeout=0.5),
        workers=WORKERS,
        base_url=em.base_url,
        checkpoint_seconds=0,
        progress=False,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect(load_plan(paris_plan), out, config, GOOGLE_SECRET)
    monkeypatch.setattr(target, crash_in, original)
    paid = em.answered["image"]
    assert main(run_args(paris_plan, out, em, "--key", GOOGLE_SECRET)) == 0
    assert snapshot(out) == snapshot(reference)
    assert em.answered["image"] == len(snapshot(reference)[1])  # nothing downloaded twice
    assert paid < em.answered["image"]


def test_kill_mid_run_then_resume(em, paris_plan, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    em.delay = 0.02  # slow enough to be caught mid-run
    env = {**os.environ, "GOOGLE_MAPS_API_KEY": GOOGLE_SECRET, "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "geohf", *run_args(paris_plan, out, em)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        # kill once 30 images are on disk and metadata.jsonl holds lines the saved state does not know yet
        while proc.poll() is None and time.monotonic() < deadline and not (count_images(out) >= 30 and unsaved(out)):
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()}"
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    em.delay = 0.0
    killed_paid = em.answered["image"]
    n_reference = len(snapshot(reference)[1])
    assert 30 <= killed_paid < n_reference
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", GOOGLE_SECRET)
    assert main(run_args(paris_plan, out, em)) == 0
    summary = capsys.readouterr().out
    assert "resumed after an interruption" in summary and " 0 uncommitted metadata bytes" not in summary
    assert snapshot(out) == snapshot(reference)
    assert_clean_folder(out)
    # at most the downloads in flight at the kill (one per worker) are bought twice
    assert em.answered["image"] <= n_reference + WORKERS
    details = "; ".join(x.strip() for x in summary.splitlines() if "images:" in x or "resumed" in x)
    print(f"\nkill test: killed after {killed_paid} of {n_reference} images paid; {details}")


# ---------------------------------------------------------------------------- speed
def test_requests_per_second_without_rate_limit(em, tmp_path, capsys):
    plan = make_plan(parse_regions("city:Paris@48.8566,2.3522,5km"), 300, seed=5)
    save_plan(plan, tmp_path / "big.parquet")
    argv = run_args(tmp_path / "big.parquet", tmp_path / "fast", em, "--key", GOOGLE_SECRET, "--workers", "4")
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "requests/s" in x)
    rate = float(line.rsplit(",", 1)[1].split()[0])
    with capsys.disabled():
        print(f"\nthroughput against the loopback emulator, rate limit off, 4 workers: {line.strip()}")
    assert rate > 40
