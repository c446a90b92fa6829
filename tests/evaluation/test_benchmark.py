"""``geohf evaluate --benchmark``: the papers' metrics computed their way, beside the published rows."""

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from geohf.data.samples import crop_around, land_points
from geohf.evaluation.benchmark import (
    BenchmarkResult,
    benchmark_metrics,
    osv5m_labels,
    published_rows,
    reverse_geocode,
)
from geohf.geo.sphere import haversine_km

PARIS, LYON, NEW_YORK = (48.8566, 2.3522), (45.7640, 4.8357), (40.7128, -74.0060)


def test_reverse_geocoding_is_osv5m_s_strings():
    places = reverse_geocode([PARIS[0], NEW_YORK[0]], [PARIS[1], NEW_YORK[1]])
    labels = osv5m_labels(places)
    assert list(labels["country"]) == ["FR", "US"]
    assert labels["region"][0] == "Ile-de-France_FR"
    assert labels["sub-region"][0] == "Paris_Ile-de-France_FR"
    assert labels["city"][0] == "Paris_Paris_Ile-de-France_FR"
    assert labels["city"][1] == "New York City__New York_US"  # empty admin2 joined as OSV-5M joins it


def test_osv5m_way_compares_with_the_samples_unique_labels_and_skips_missing_ones():
    truth = pd.DataFrame(
        {
            "latitude": [PARIS[0], PARIS[0], PARIS[0]],
            "longitude": [PARIS[1], PARIS[1], PARIS[1]],
            "unique_country": ["FR", "FR", "FR"],
            "unique_region": ["Ile-de-France_FR", "Ile-de-France_FR", "nan"],
            "unique_sub-region": ["Paris_Ile-de-France_FR", "nan", "nan"],
            "unique_city": ["Paris_Paris_Ile-de-France_FR", "nan", "nan"],
        }
    )
    pred_lat, pred_lon = [PARIS[0], LYON[0], LYON[0]], [PARIS[1], LYON[1], LYON[1]]
    m = benchmark_metrics(truth, pred_lat, pred_lon)
    assert m["osv5m_country_accuracy"] == 100.0
    assert m["osv5m_region_accuracy"] == 50.0  # row 3's region is missing: left out, as OSV-5M's nan_mask does
    assert m["osv5m_sub-region_accuracy"] == 100.0 and m["osv5m_city_accuracy"] == 100.0  # only row 1 counts
    d = haversine_km(PARIS[0], PARIS[1], LYON[0], LYON[1])
    assert m["mean_km"] == pytest.approx(2 * d / 3)
    assert m["median_km"] == pytest.approx(d)
    assert m["geoscore"] == pytest.approx((5000 + 2 * 5000 * np.exp(-d / 1492.7)) / 3)


def test_thresholds_geoscore_and_polygons(labeller):
    truth = pd.DataFrame({"latitude": [0.0, 46.0], "longitude": [10.0, 7.0]})
    km = 111.19492664455873  # one degree of latitude
    pred_lat = np.array([0.0 + 20 / km, 46.0 + 0.5 / km])  # 20 km and 0.5 km off
    m = benchmark_metrics(truth, pred_lat, truth["longitude"])
    assert m["within_1km"] == 50.0 and m["within_25km"] == 100.0
    assert m["geoscore"] == pytest.approx(5000 * (np.exp(-20 / 1492.7) + np.exp(-0.5 / 1492.7)) / 2, rel=1e-4)
    assert "polygon_country_accuracy" not in m  # no polygon labels, no labeller: not reported


def test_country_only_rows_count_for_countries_only(labeller):
    truth = pd.DataFrame(
        {
            "latitude": [PARIS[0], np.nan],
            "longitude": [PARIS[1], np.nan],
            "country_code": ["FR", "US"],
            "region_code": ["FR-75", ""],
        }
    )
    m = benchmark_metrics(truth, [PARIS[0], NEW_YORK[0]], [PARIS[1], NEW_YORK[1]], labeller)
    assert m["mean_km"] == pytest.approx(0.0, abs=1e-6)  # the country-only row has no distance
    assert m["polygon_country_accuracy"] == 100.0 and m["osv5m_country_accuracy"] == 100.0
    assert m["polygon_region_accuracy"] == 100.0  # the located row only (the other has no region)
    m = benchmark_metrics(truth, [LYON[0], NEW_YORK[0]], [LYON[1], NEW_YORK[1]], labeller)
    assert m["polygon_country_accuracy"] == 100.0 and m["polygon_region_accuracy"] == 0.0


def test_published_rows_cite_their_paper_and_table():
    rows = {r.method: r for r in published_rows("im2gps3k")}
    assert {"PIGEOTTO", "GeoCLIP", "StreetCLIP (zero-shot)"} <= set(rows)
    assert rows["GeoCLIP"].metrics["within_25km"] == 34.47 and "Table 1" in rows["GeoCLIP"].table
    for benchmark in ("im2gps3k", "yfcc4k", "osv5m"):
        for r in published_rows(benchmark):
            assert r.paper and r.table and r.checked and r.metrics
    assert [r.method for r in published_rows("osv5m")] == ["OSV-5M baseline"]


def test_table_prints_the_model_beside_the_papers():
    result = BenchmarkResult("yfcc4k", "mine", 4000, 4536, 536, 0, {"within_1km": 1.0, "within_25km": 2.0},
                             published_rows("yfcc4k"))  # fmt: skip
    text = result.table()
    assert (
        text.splitlines()[0]
        == "yfcc4k: 4,000 images evaluated of 4,536 listed (536 missing: see the dataset's skipped.csv)"
    )
    assert "PIGEOTTO" in text and "10.4" in text and "CVPR 2024" in text
    assert "GeoScore" not in text  # a column nobody reports is left out


@pytest.fixture(scope="module")
def im2gps3k_folder(tmp_path_factory, labeller):
    """An im2gps3k-format folder (im2gps3k_places365.csv + images/) with one row whose image is missing."""
    root = tmp_path_factory.mktemp("bench") / "im2gps3k"
    (root / "images").mkdir(parents=True)
    pts = land_points(9, labeller, seed=11)
    with open(root / "im2gps3k_places365.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor",
                    "Prob_natural", "Prob_urban"])  # fmt: skip
        for k, p in enumerate(pts.itertuples()):
            name = f"{5000 + k}_abcdef_{k}_1234@N0{k}.jpg"
            w.writerow([name, f"1234@N0{k}", p.latitude, p.longitude, 1, 2, 3, 0.2, 0.3, 0.5])
            if k != 4:
                buf = io.BytesIO()
                crop_around(p.latitude, p.longitude, (48, 32)).save(buf, format="JPEG")
                (root / "images" / name).write_bytes(buf.getvalue())
    return root


def test_evaluate_benchmark_cli(im2gps3k_folder, tiny_model_dir, tmp_path, cli):
    data = tmp_path / "im2gps3k_ds"
    assert cli("dataset", "import", "im2gps3k", im2gps3k_folder, "-o", data).code == 0
    out = tmp_path / "ev"
    result = cli("evaluate", "--benchmark", "im2gps3k", "--model", tiny_model_dir, "--dataset", data, "-o", out,
                 "--batch-size", "4")  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "im2gps3k: 8 images evaluated of 9 listed (1 missing: see the dataset's skipped.csv)"
    header = lines[1]
    for column in ("≤1 km %", "≤2,500 km %", "median km", "mean km", "GeoScore", "country % (OSV-5M)",
                   "city % (OSV-5M)", "country % (polygons)"):  # fmt: skip
        assert column in header
    assert lines[3].startswith("model ")  # the model's row first (the folder's name)
    assert any(line.startswith("PIGEOTTO") for line in lines) and any(line.startswith("GeoCLIP") for line in lines)
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["evaluated"] == 8 and saved["missing"] == 1
    frame = pd.read_parquet(out / "benchmark_predictions.parquet")
    assert len(frame) == 8 and np.isfinite(frame["error_km"]).all()
    within = 100 * (frame["error_km"] <= 2500).mean()
    assert saved["metrics"]["within_2500km"] == pytest.approx(within)
    text = (out / "benchmark.txt").read_text()
    assert "convention geohf: haversine on a 6,371.0088 km sphere, within t km = d <= t" in text
    assert "denominators: distances and GeoScore over 8; country (OSV-5M) over 8;" in text
    assert "GeoCLIP: " in text and "(scored by their code: convention geoclip)" in text
    strict = tmp_path / "ev-osv5m"
    result = cli("evaluate", "--benchmark", "im2gps3k", "--model", tiny_model_dir, "--dataset", data, "-o", strict,
                 "--batch-size", "4", "--convention", "osv5m")  # fmt: skip
    assert result.code == 0, result.err
    assert "<2,500 km %" in result.out.splitlines()[1] and "d < t" in result.out
    saved = json.loads((strict / "benchmark.json").read_text())
    assert saved["convention"] == "osv5m"
    km = pd.read_parquet(strict / "benchmark_predictions.parquet")["error_km"]
    assert np.allclose(km, frame["error_km"] * 6371.0 / 6371.0088)  # the same predictions on OSV-5M's sphere
    alone = cli("evaluate", "--model", tiny_model_dir, "--dataset", data, "-o", tmp_path / "x", "--convention", "osv5m")
    assert alone.code != 0 and "--convention osv5m applies to --benchmark scoring" in alone.err


def test_conventions_are_the_peers_own():
    """geohf's haversine, OSV-5M's (R = 6371 km, d < t) and GeoCLIP's WGS84 geodesic (geopy's, d <= t)."""
    from geohf.evaluation.benchmark import CONVENTIONS
    from geohf.evaluation.names import CONVENTION_NAMES

    assert tuple(CONVENTIONS) == CONVENTION_NAMES
    truth = pd.DataFrame({"latitude": [PARIS[0], 0.0], "longitude": [PARIS[1], 0.0]})
    pred_lat, pred_lon = [NEW_YORK[0], 0.0], [NEW_YORK[1], 24.99 / 111.19492664455873]  # row 2: 24.99 km away
    geohf, osv, geoclip = (benchmark_metrics(truth, pred_lat, pred_lon, convention=c) for c in CONVENTION_NAMES)
    assert geohf["within_25km"] == osv["within_25km"] == 50.0 and geohf["within_1km"] == osv["within_1km"] == 0.0
    assert osv["mean_km"] == pytest.approx(geohf["mean_km"] * 6371.0 / 6371.0088)
    # OSV-5M's metrics/utils.py haversine, re-derived: radians, 2 atan2(sqrt(a), sqrt(1 - a)) on R = 6371
    p1, p2 = np.radians([PARIS, (0.0, 0.0)]), np.radians(np.stack([pred_lat, pred_lon], 1))
    a = (
        np.sin((p2[:, 0] - p1[:, 0]) / 2) ** 2
        + np.cos(p2[:, 0]) * np.cos(p1[:, 0]) * np.sin((p2[:, 1] - p1[:, 1]) / 2) ** 2
    )
    assert osv["mean_km"] == pytest.approx((6371 * 2 * np.arctan2(np.sqrt(a), np.sqrt(1 - a))).mean(), rel=1e-12)
    # Paris - New York along WGS84 (Karney's geodesic, as geopy's geodesic): 5,852.9 km; one degree of longitude on
    # the equator: the semi-major axis 6378.137 km x pi / 180 = 111.3195 km
    assert geoclip["mean_km"] == pytest.approx((5852.935 + 24.99 / 111.19492664455873 * 111.3195) / 2, abs=0.01)
    assert geohf["n_distances"] == osv["n_distances"] == geoclip["n_distances"] == 2
    exact = pd.DataFrame({"latitude": [0.0], "longitude": [0.0]})
    on_edge = benchmark_metrics(exact, [0.0], [0.0], convention="osv5m")
    assert on_edge["within_1km"] == 100.0  # 0 < 1
    strict_edge = CONVENTIONS["osv5m"].within(np.array([25.0]), 25)
    assert not strict_edge[0] and CONVENTIONS["geohf"].within(np.array([25.0]), 25)[0]
