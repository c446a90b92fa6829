"""folium maps: predictions, confidence circles, ground truth, error lines, cell probabilities."""

import argparse
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from datasets import load_dataset

from geohf.commands.predict import register_subcommand
from geohf.errors import UserError
from geohf.inference.maps import MapPoint, cell_polygons, prediction_map, save_map
from geohf.inference.predictor import GeoPredictor


def geohf(*argv) -> int:
    parser = argparse.ArgumentParser(prog="geohf")
    register_subcommand(parser.add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def count(html: str, js: str) -> int:
    return len(re.findall(rf"\b{re.escape(js)}\(", html))


def geojson_features(html: str) -> list[dict]:
    """The GeoJSON features embedded in a folium map's HTML."""
    out = []
    for blob in re.findall(r"(?:\.addData|_add)\((\{.*?\})\);", html, flags=re.S):
        out += json.loads(blob)["features"]
    return out


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return GeoPredictor(str(tiny_model_dir), bf16=False)


def test_point_from_record_prefers_dataset_truth_and_skips_missing():
    record = {"file": "a<b>.jpg", "pred_latitude": 1.0, "pred_longitude": 2.0, "radius_km": 300.0,
              "pred_country": "Kenya", "pred_region": "Nairobi", "score": 0.25, "exif_latitude": 5.0,
              "exif_longitude": 6.0}  # fmt: skip
    assert MapPoint.from_record(record).truth == (5.0, 6.0)
    point = MapPoint.from_record({**record, "true_latitude": 3.0, "true_longitude": 4.0})
    assert point.truth == (3.0, 4.0) and point.label == "Nairobi, Kenya (25.0%)"
    assert "a&lt;b&gt;.jpg" in point.popup() and "<b>a<b>" not in point.popup()
    assert MapPoint.from_record({"file": "x", "pred_latitude": None, "pred_longitude": None}) is None


def test_map_of_points_with_truth_and_antimeridian(tmp_path):
    points = [
        MapPoint("a", 10.0, 20.0, radius_km=500.0, truth=(12.0, 22.0)),
        MapPoint("b", -40.0, 175.0, radius_km=900.0, truth=(-42.0, -178.0)),  # truth across the antimeridian
        MapPoint("c", 0.0, 0.0),  # no truth, no radius
    ]
    path = save_map(prediction_map(points), tmp_path / "map.html")
    html = path.read_text()
    assert count(html, "L.circle") == 2  # confidence radii
    assert count(html, "L.circleMarker") == 3 + 2  # predictions and truths
    assert count(html, "L.polyline") == 2  # error lines
    assert "[-42.0, 182.0]" in html  # drawn the short way round
    assert "radius&quot;: 500000.0" in html or '"radius": 500000.0' in html
    assert not list(tmp_path.glob("*.tmp*"))


def test_single_image_choropleth_from_cell_polygons(predictor):
    polygons = cell_polygons(predictor)
    assert polygons is not None and list(polygons["name"]) == predictor.cells.names
    probs = np.linspace(1.0, 2.0, len(predictor.cells.names))
    probs /= probs.sum()
    point = MapPoint("one.jpg", 10.0, 20.0, radius_km=800.0)
    html = prediction_map([point], predictor.cells, probs, polygons).get_root().render()
    features = geojson_features(html)
    assert len(features) == len(probs)
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in features)
    shares = {f["properties"]["name"]: f["properties"]["probability"] for f in features}
    assert shares[predictor.cells.names[-1]] == pytest.approx(probs.max())
    assert "cell probability" in html

    # without polygons: circles at the centroids, sized by probability
    html = prediction_map([point], predictor.cells, probs, None).get_root().render()
    assert count(html, "L.circleMarker") == len(probs) + 1
    assert not geojson_features(html)


def test_cell_polygons_missing_or_mismatched(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("cells"))
    with pytest.raises(UserError, match="quadtree.parquet: missing"):  # a local folder must carry its cells
        GeoPredictor(str(tmp_path / "model"), bf16=False)
    shuffled = GeoPredictor(str(tiny_model_dir), bf16=False)
    shuffled.cells = dataclasses.replace(shuffled.cells, names=shuffled.cells.names[::-1])
    assert cell_polygons(shuffled) is None


def test_cli_map_for_a_dataset_and_for_one_image(tiny_model_dir, tiny_dataset, tmp_path):
    many = tmp_path / "many.html"
    code = geohf(
        "predict", "--model", tiny_model_dir, "--dataset", tiny_dataset, "--map", many, "--output", tmp_path / "p.jsonl"
    )
    assert code == 0
    n = len(load_dataset(str(tiny_dataset), split="test"))
    html = many.read_text()
    assert count(html, "L.polyline") == n and count(html, "L.circle") == n and count(html, "L.circleMarker") == 2 * n
    assert not geojson_features(html)  # several images: no choropleth

    image = tmp_path / "one.png"
    load_dataset(str(tiny_dataset), split="test")[0]["image"].save(image)
    one = tmp_path / "one.html"
    assert geohf("predict", "--model", tiny_model_dir, image, "--map", one, "--output", tmp_path / "one.jsonl") == 0
    features = geojson_features(one.read_text())
    assert features and all(0 < f["properties"]["probability"] <= 1 for f in features)


EXTERNAL = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


def test_offline_map_needs_no_network(tiny_model_dir, tmp_path):
    image = tmp_path / "one.png"
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(pixels).save(image)
    online, offline = tmp_path / "online.html", tmp_path / "offline.html"
    assert geohf("predict", "--model", tiny_model_dir, image, "--map", online, "--output", tmp_path / "a.jsonl") == 0
    assert EXTERNAL.search(online.read_text())  # the default loads Leaflet from a CDN (what --help says)
    argv = ["predict", "--model", tiny_model_dir, image, "--map", offline, "--map-offline", "-o", tmp_path / "b.jsonl"]
    assert geohf(*argv) == 0
    html = offline.read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)  # no script, style sheet or image from a server
    assert "tile.openstreetmap" not in html.lower() and "{z}/{x}/{y}" not in html  # no tile layer
    assert "L.map(" in html and "L.tileLayer(" not in html and "Leaflet 1.9.4" in html  # Leaflet inlined
    countries = [f for f in geojson_features(html) if "country_code" in f["properties"]]
    assert len(countries) > 150 and {"FR", "BR", "JP"} <= {f["properties"]["country_code"] for f in countries}
