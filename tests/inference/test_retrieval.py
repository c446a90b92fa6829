"""Retrieval refinement (PIGEON): ``geohf index build``, the index in the model folder, refined predictions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from geohf.errors import UserError
from geohf.geo.sphere import haversine_km
from geohf.inference.predictor import GeoPredictor
from geohf.inference.retrieval import AnnIndex, GeoIndex, RetrievalParams


@pytest.fixture(scope="module")
def indexed(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """A copy of the tiny model with an index of the tiny training split (built by ``geohf index build``;
    a 2-step model's guesses are thousands of km off, so the moves may go up to 5,000 km)."""
    from geohf.cli import main

    model = tmp_path_factory.mktemp("indexed") / "model"
    shutil.copytree(tiny_model_dir, model)
    assert main(["index", "build", "--model", str(model), "--dataset", str(tiny_dataset), "--batch-size", "32",
                 "--max-shift-km", "5000"]) == 0  # fmt: skip
    return model


@pytest.fixture(scope="module")
def validation(tiny_dataset):
    from geohf.data.folder import load_geo_dataset

    return load_geo_dataset(str(tiny_dataset))["validation"]


def test_build_writes_the_index_and_predictions_are_refined(indexed, validation, cli, tiny_dataset):
    files = sorted(p.name for p in (indexed / "index").iterdir())
    assert files == ["gallery-00000.safetensors", "index.json"]  # 160 rows: exact search, no ANN file
    meta = json.loads((indexed / "index" / "index.json").read_text())
    assert meta["info"]["size"] == 160 and meta["info"]["embed_dim"] == 1280 and meta["info"]["search"] == "exact"
    assert meta["info"]["backbone"] == "tf_efficientnet_lite0" and meta["info"]["split"] == "train"
    assert meta["params"]["max_shift_km"] == 5000
    assert not list(indexed.glob(".index*"))

    # the head's raw answer: coherent answers would also move points at sea (tests/inference/test_answers.py)
    refined = GeoPredictor(str(indexed), answer="cell")
    plain = GeoPredictor(str(indexed), retrieval=False, answer="cell")
    assert refined.index is not None and len(refined.index) == 160 and plain.index is None
    a = refined.predict_dataset(validation, batch_size=10)
    b = plain.predict_dataset(validation, batch_size=10)
    shift = haversine_km(a.pred_latitude, a.pred_longitude, b.pred_latitude, b.pred_longitude)
    assert (shift > 1).any(), "refinement moved no prediction"
    assert shift.max() <= 5000 + 1e-6
    assert a.embeddings is None and np.array_equal(a.top_index, b.top_index)  # only coordinates change
    # a refined guess is a training image's location
    gallery = set(zip(refined.index.latitude.round(6), refined.index.longitude.round(6)))
    moved = shift > 1
    assert all((la, lo) in gallery for la, lo in zip(a.pred_latitude[moved].round(6), a.pred_longitude[moved].round(6)))

    import geohf

    images = [validation[i]["image"] for i in range(4)]
    assert np.allclose(geohf.predict(str(indexed), images).pred_latitude,
                       GeoPredictor(str(indexed)).predict_images(images).pred_latitude)  # fmt: skip
    assert np.allclose(geohf.predict(refined, images, retrieval=False).pred_latitude,
                       plain.predict_images(images).pred_latitude)  # fmt: skip

    out = cli("predict", "--model", indexed, "--dataset", tiny_dataset, "--split", "validation", "--quiet")
    off = cli("predict", "--model", indexed, "--dataset", tiny_dataset, "--split", "validation", "--quiet",
              "--no-retrieval")  # fmt: skip
    assert out.code == 0 and off.code == 0, out.err + off.err
    lat = [json.loads(line)["pred_latitude"] for line in out.out.splitlines()]
    lat_off = [json.loads(line)["pred_latitude"] for line in off.out.splitlines()]
    a = GeoPredictor(str(indexed)).predict_dataset(validation, batch_size=10)  # answered as geohf predict does
    b = GeoPredictor(str(indexed), retrieval=False).predict_dataset(validation, batch_size=10)
    assert np.allclose(lat, a.pred_latitude, atol=1e-4) and np.allclose(lat_off, b.pred_latitude, atol=1e-4)


def test_max_shift_bounds_the_move(indexed, validation):
    predictor = GeoPredictor(str(indexed), retrieval=False)
    raw = predictor.predict_dataset(validation, embeddings=True)
    index = GeoPredictor(str(indexed)).index
    for limit in (0.0, 300.0, 20_000.0):
        lat, lon, moved = index.choose(raw, RetrievalParams(max_shift_km=limit))
        shift = haversine_km(raw.pred_latitude, raw.pred_longitude, lat, lon)
        assert shift.max() <= limit + 1e-6 and (limit > 0 or not moved.any())
    assert moved.any()


def test_exact_and_ann_agree_on_a_small_gallery(indexed, validation):
    """faiss (IVF, all lists probed at this size) and usearch (HNSW) find what the exact matmul finds, and
    refine to the same places. The gallery's embeddings are random here: a 2-step model embeds the many
    Blue Marble ocean tiles alike, and near-ties would be reordered by the indexes' float16 rounding."""
    from dataclasses import replace

    index = GeoIndex.load(indexed / "index")
    raw = GeoPredictor(str(indexed), retrieval=False).predict_dataset(validation, embeddings=True)
    g = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(160, 1280, generator=g), dim=1).half()
    rows = torch.arange(0, 160, 8)  # 20 queries near gallery rows, as many as the validation split
    queries = embeddings[rows].float() + 0.01 * torch.randn(20, 1280, generator=g)
    raw = replace(raw, embeddings=queries.numpy())
    gallery = replace(index, embeddings=embeddings, params=RetrievalParams(max_shift_km=20_000))
    s, i = gallery.search(queries, 10)
    assert (i[:, 0] == rows.numpy()).all()
    exact = gallery.choose(raw)
    assert exact[2].any()
    for backend in ("faiss", "usearch"):
        # one build thread: HNSW insertion order, hence its graph, is then the same run to run
        approx = replace(gallery, ann=AnnIndex.build(backend, embeddings.numpy(), threads=1))
        sims, found = approx.search(queries, 10)
        assert (found == i).mean() >= 0.95 and (found[:, 0] == i[:, 0]).all(), backend
        assert np.allclose(sims, s, atol=1e-2), backend
        lat, lon, moved = approx.choose(raw)
        assert np.allclose(lat, exact[0]) and np.allclose(lon, exact[1]) and (moved == exact[2]).all(), backend


def test_ann_index_saves_and_loads_with_the_model(indexed, tiny_dataset, validation, cli, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(indexed, model)
    shutil.rmtree(model / "index")
    result = cli("index", "build", "--model", model, "--dataset", tiny_dataset, "--search", "usearch",
                 "--tune-split", "none")  # fmt: skip
    assert result.code == 0, result.err
    assert "search usearch" in result.out and (model / "index" / "ann.usearch").is_file()
    predictor = GeoPredictor(str(model))
    index = predictor.index
    assert index.ann is not None and index.ann.backend == "usearch" and index.params == RetrievalParams()
    assert index.embeddings is None and len(index) == 160  # the ANN index holds its own copy
    assert GeoIndex.load(model / "index", embeddings=True).embeddings.shape == (160, 1280)
    images = [validation[i]["image"] for i in range(4)]
    refined, plain = predictor.predict_images(images), predictor.predict_images(images, retrieval=False)
    shift = haversine_km(refined.pred_latitude, refined.pred_longitude, plain.pred_latitude, plain.pred_longitude)
    assert shift.max() <= 1000 + 1e-6


def test_pipeline_refines_with_the_index(indexed, validation):
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))

    images = [validation[i]["image"] for i in range(6)]
    on = pipeline("image-geolocation", model=str(indexed))(images)
    off = pipeline("image-geolocation", model=str(indexed), retrieval=False)(images)
    index = GeoPredictor(str(indexed)).index
    gallery = set(zip(index.latitude.round(5), index.longitude.round(5)))
    moved = 0
    for a, b in zip(on, off):
        place = (a["pred_latitude"], a["pred_longitude"])
        if place != (b["pred_latitude"], b["pred_longitude"]):
            moved += 1
            assert place in gallery  # moved onto a training image
            assert haversine_km(*place, b["pred_latitude"], b["pred_longitude"]) <= 5000 + 1
        assert a["top_k"] == b["top_k"]
    assert moved


def test_evaluate_reports_with_and_without_retrieval(indexed, tiny_dataset, cli, tmp_path):
    from geohf.data.folder import load_geo_dataset
    from geohf.evaluation.evaluation import evaluate, tune_retrieval

    ds = load_geo_dataset(str(tiny_dataset))
    result = evaluate(str(indexed), ds, split="test")
    assert {"model", "model without retrieval"} <= set(result.rows)
    assert result.rows["model"]["median_km"] != result.rows["model without retrieval"]["median_km"]
    assert "model without retrieval" not in evaluate(str(indexed), ds, split="test", retrieval=False).rows
    report = cli("evaluate", "--model", indexed, "--dataset", tiny_dataset, "--output", tmp_path / "eval")
    assert report.code == 0, report.err
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]
    assert rows["model"] == result.rows["model"] and "model without retrieval" in rows
    tuned = tune_retrieval(str(indexed), ds["validation"])
    best = min(tuned["median_km"].values())
    assert tuned["median_km"][(tuned["params"].top_k, tuned["params"].temperature, tuned["params"].neighbours)] == best


def test_index_from_a_local_hub(indexed, hub, tmp_path):
    hub.publish(indexed, "org/indexed-model", "model")
    script = """
import json, geohf
from geohf.inference.predictor import GeoPredictor
p = GeoPredictor("org/indexed-model")
print(json.dumps({"size": len(p.index), "search": p.index.info.search}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**hub.env(tmp_path / "hf"), "PATH": os.environ["PATH"]})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"size": 160, "search": "exact"}


def test_an_index_of_another_model_is_refused(indexed, tmp_path, cli, tiny_dataset):
    model = tmp_path / "model"
    shutil.copytree(indexed, model)
    from dataclasses import replace

    index = GeoIndex.load(model / "index")  # an index as another model (resnet50, 2048-d) would have written it
    other = replace(index, embeddings=torch.zeros(160, 2048).half(),
                    info=replace(index.info, backbone="resnet50", embed_dim=2048))  # fmt: skip
    other.save(model)
    with pytest.raises(UserError, match=r"'resnet50' with 2048-d .* 'tf_efficientnet_lite0' with 1280-d"):
        GeoPredictor(str(model))
    assert GeoPredictor(str(model), retrieval=False).index is None
    result = cli("predict", "--model", model, "--dataset", tiny_dataset, "--split", "test", "--quiet")
    assert result.code == 2 and len(result.errors) == 1 and "resnet50" in result.errors[0], result.err
    index.info.fingerprint = "0" * 16  # the same backbone, other cells
    index.save(model)
    with pytest.raises(UserError, match="another model's cells"):
        GeoPredictor(str(model))


def test_missing_and_empty_splits_are_one_line(indexed, tiny_dataset, cli, tmp_path):
    result = cli("index", "build", "--model", indexed, "--dataset", tiny_dataset, "--split", "nope")
    assert result.code == 2 and result.errors == [
        f"error: --dataset {tiny_dataset} has no 'nope' split; it has ['train', 'validation', 'test'] (use --split)"
    ]
    from geohf.data.folder import load_geo_dataset

    empty = tmp_path / "empty" / "data"  # a dataset folder whose train split has no rows
    empty.mkdir(parents=True)
    ds = load_geo_dataset(str(tiny_dataset))
    ds["train"].select([]).to_parquet(str(empty / "train-00000-of-00001.parquet"))
    ds["validation"].to_parquet(str(empty / "validation-00000-of-00001.parquet"))
    result = cli("index", "build", "--model", indexed, "--dataset", empty.parent)
    assert result.code == 2 and result.errors == [
        f"error: --dataset {empty.parent}: the 'train' split is empty: nothing to index"
    ], result.err
    from geohf.inference.retrieval import build_index

    with pytest.raises(UserError, match="'train' split is empty"):  # an empty split handed over in Python
        build_index(GeoPredictor(str(indexed), retrieval=False), ds["train"].select([]), split="train")
    assert not (empty.parent / "index").exists()
    unknown = cli("index", "build", "--model", indexed, "--dataset", tiny_dataset, "--search", "annoy")
    assert unknown.code == 2 and "--search annoy: unknown" in unknown.errors[0]
    on_test = cli("index", "build", "--model", indexed, "--dataset", tiny_dataset, "--tune-split", "test")
    assert on_test.code == 2 and len(on_test.errors) == 1 and "--tune-split test" in on_test.errors[0]
    hub_id = cli("index", "build", "--model", "org/not-a-folder", "--dataset", tiny_dataset)
    assert hub_id.code == 2 and "not a local model folder" in hub_id.errors[0]


def test_the_index_is_published_with_the_model_and_a_killed_builds_staging_is_not(indexed, tmp_path):
    from geohf.hub.publish import files_to_upload

    model = tmp_path / "model"
    shutil.copytree(indexed, model)
    stale = model / ".index.0123abcd.tmp"  # what a killed build leaves
    shutil.copytree(model / "index", stale)
    files = files_to_upload(model)
    assert {"index/gallery-00000.safetensors", "index/index.json"} <= set(files)
    assert not [f for f in files if ".tmp" in f]


def test_cells_of_a_model_without_a_partition_come_from_the_label_column():
    """``batch_cells`` (the local index build and the Ray one): a classification head without a cell partition
    takes each row's class from its label column, encoded as training encodes it (unknown: -100); without the
    column, or on a regression head, one line."""
    from types import SimpleNamespace

    from geohf.errors import UserError
    from geohf.inference.retrieval import batch_cells
    from geohf.modeling.configuration_geohf import HeadSpec

    def predictor(spec):
        return SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(head=lambda: spec), cell_partitions={}))

    countries = predictor(HeadSpec(name="country", type="classification", labels=["FR", "DE"]))
    lat = lon = np.zeros(3)
    assert batch_cells(countries, lat, lon, ["DE", "FR", "XX"]).tolist() == [1, 0, -100]
    with pytest.raises(UserError, match="no cell partition: cannot assign cells"):
        batch_cells(countries, lat, lon)
    with pytest.raises(UserError, match="only regresses"):
        batch_cells(predictor(HeadSpec(name="regression", type="regression")), lat, lon, ["FR"] * 3)
