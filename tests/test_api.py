"""The top-level Python API, as the README shows it: create_model, GeoTrainer, predict, evaluate."""

import json

import numpy as np
import pytest
from datasets import load_dataset

import geohf
from geohf.geo.cells import CellPartition


@pytest.fixture(scope="module")
def ds(tiny_dataset):
    return load_dataset(str(tiny_dataset))


def test_readme_snippet_end_to_end(ds, tmp_path):
    heads = ["haversine", "country"]
    model = geohf.create_model(
        "tf_efficientnet_lite0", heads=heads, dataset=ds["train"], pretrained="offline", image_size=32
    )
    assert [h.name for h in model.config.head_specs] == ["haversine", "country"]
    haversine = model.config.head("haversine")
    assert haversine.is_geocell and haversine.label_column is None  # fitted here: targets from coordinates
    args = geohf.GeoTrainingArguments(
        str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, report_to="none", disable_tqdm=True
    )
    trainer = geohf.GeoTrainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"])
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_args.json"} <= files
    assert "training_args.bin" not in files  # no pickle in a model folder
    assert json.loads((out / "training_args.json").read_text())["max_steps"] == 2
    card = (out / "README.md").read_text()
    assert "model-index" in card and "tf_efficientnet_lite0" in card
    saved = CellPartition.load(out / "cells" / f"{haversine.partition}.parquet")
    assert saved.names == haversine.labels

    preds = geohf.predict(model, ds["test"])
    assert isinstance(preds, geohf.GeoPredictions) and len(preds) == len(ds["test"])
    assert preds.probs.shape == (len(ds["test"]), len(haversine.labels))
    np.testing.assert_allclose(preds.true_latitude, ds["test"]["latitude"])
    record = preds.records()[0]
    assert {"pred_latitude", "pred_country_code", "true_latitude", "error_km", "top_k"} <= set(record)

    result = geohf.evaluate(model, ds["test"])  # one split: baselines from the model's cells and counts
    assert set(result.rows) == {"model", "geometric median", "random cell by frequency"}
    table = geohf.evaluate(model, ds).table()  # a DatasetDict: its train split fits the baselines
    assert "geometric median" in table and "median km" in table

    # the saved folder predicts what the model in memory predicts
    again = geohf.predict(str(out), ds["test"], bf16=False)
    ref = geohf.predict(model, ds["test"], bf16=False)
    np.testing.assert_allclose(again.probs, ref.probs, atol=1e-5)


def test_create_model_reads_the_dataset_partition(tiny_dataset, ds):
    model = geohf.create_model(heads=["haversine", "region"], dataset=str(tiny_dataset), pretrained=None, image_size=32)
    spec = model.config.head("haversine")
    assert spec.label_column == "cell_quadtree" and spec.partition == "quadtree"  # the dataset's own ids
    stored = CellPartition.load(tiny_dataset / "cells" / "quadtree.parquet")
    assert spec.labels == stored.names and model.cell_partitions["quadtree"].names == stored.names
    # the column the head learns is the partition's own assignment of the coordinates
    train = ds["train"]
    np.testing.assert_array_equal(stored.assign(train["latitude"], train["longitude"]), train["cell_quadtree"])
    region = model.config.head("region")
    assert region.label_column == "region_code" and len(region.label_country) == len(region.labels)
    assert set(region.labels) == set(train["region_code"]) - {""}


def test_create_model_errors_name_the_fix(ds):
    with pytest.raises(ValueError, match="unknown head"):
        geohf.create_model(heads=["continent"], dataset=ds["train"], pretrained=None)
    with pytest.raises(ValueError, match="needs geocells"):
        geohf.create_model(heads=["haversine"], pretrained=None, cells=None)
    with pytest.raises(ValueError, match="no column"):
        geohf.create_model(heads=["region"], dataset=ds["train"].remove_columns("region_code"), pretrained=None)
