import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import load_dataset

from geohf.evaluation.evaluation import Guesses, evaluate, frequency_baseline, median_baseline
from geohf.inference import CellTable, GeoPredictions, GeoPredictor
from geohf.training.trainer import GeoTrainer, GeoTrainingArguments, make_compute_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_trained_model_folder(tiny_model_dir):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "cells"} <= files
    metrics = json.loads((tiny_model_dir / "train_metrics.json").read_text())
    assert metrics["train_loss"] > 0 and np.isfinite(metrics["train_loss"])


def test_backbone_learning_rate_multiplier(tiny_model_dir):
    from geohf.modeling import GeoModelForImageGeolocation

    model = GeoModelForImageGeolocation.from_pretrained(tiny_model_dir)
    args = GeoTrainingArguments(
        output_dir=str(tiny_model_dir / "tmp"),
        learning_rate=1e-3,
        weight_decay=0.05,
        report_to=[],
        use_cpu=True,
        backbone_lr_multiplier=0.1,
    )
    trainer = GeoTrainer(model=model, args=args)
    opt = trainer.create_optimizer()
    lrs = {(g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs == {(1e-4, 0.05), (1e-4, 0.0), (1e-3, 0.05), (1e-3, 0.0)}
    n_backbone = sum(p.numel() for g in opt.param_groups if g["lr"] == 1e-4 for p in g["params"])
    assert n_backbone == sum(p.numel() for p in model.geo.parameters())


def test_compute_metrics_for_trainer():
    from transformers import EvalPrediction

    logits = np.array([[3.0, 1.0, 0.0, 0, 0, 0], [0.0, 1.0, 3.0, 0, 0, 0]])
    coords = np.array([[0.0, 0.0], [10.0, 10.0]])
    pred = EvalPrediction(
        predictions=(logits, coords), label_ids=(np.array([0, 1]), np.array([[0.0, 0.0], [10.0, 11.0]]))
    )
    m = make_compute_metrics()(pred)
    assert m["top1_accuracy"] == 50.0 and m["top5_accuracy"] == 100.0
    assert m["within_1km"] == 50.0 and m["median_km"] == pytest.approx(109.6 / 2, rel=0.01)


def test_baselines_by_hand():
    cells = CellTable(
        names=["a", "b", "c"],
        latitude=np.array([0.0, 0.0, 50.0]),
        longitude=np.array([0.0, 10.0, 0.0]),
        country_code=np.array(["X", "Y", "Z"], dtype=object),
        country=np.array(["X", "Y", "Z"], dtype=object),
        region=np.array(["", "", ""], dtype=object),
        region_code=np.array(["X-1", "Y-1", "Z-1"], dtype=object),
    )
    train = pd.DataFrame({"latitude": [0.0, 0.0, 0.1], "longitude": [0.0, 0.1, 0.0], "cell": [0, 0, 0]})
    median = median_baseline(train, 4, cells)
    assert abs(median.latitude[0]) < 0.2 and median.ranked_cells[0, 0] == 0
    freq = frequency_baseline(train, 4, cells, "cell")
    assert (freq.ranked_cells[:, 0] == 0).all()  # only cell 0 has training samples
    truth = pd.DataFrame(
        {
            "latitude": [0.0, 50.0],
            "longitude": [0.0, 0.0],
            "country_code": ["X", "Z"],
            "region_code": ["X-1", "Z-1"],
            "cell": [0, 2],
        }
    )
    g = Guesses(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([[0, 1], [0, 2]]))
    m = g.metrics(truth, cells, "cell")
    assert m["cell_top1_accuracy"] == 50.0 and m["cell_top5_accuracy"] == 100.0 and m["country_accuracy"] == 50.0
    assert m["within_1km"] == 50.0


def test_evaluate_against_baselines(tiny_dataset, tiny_model_dir):
    ds = load_dataset(str(tiny_dataset))
    result = evaluate(GeoPredictor(str(tiny_model_dir)), ds, split="test")
    assert set(result.rows) == {"model", "geometric median", "random cell by frequency"}
    assert result.sizes == {"train": 160, "validation": 20, "test": 20}
    for row in result.rows.values():
        assert 0 <= row["median_km"] <= 20_016 and 0 <= row["geoscore"] <= 5000
    table = result.table()
    assert "geometric median" in table and "median km" in table
    assert isinstance(result.predictions, GeoPredictions) and len(result.predictions) == 20
    assert (result.predictions.error_km >= 0).all() and (result.frame()["error_km"] >= 0).all()
    truth = ds["test"].to_pandas()
    assert result.frame()["true_country_code"].tolist() == truth["country_code"].tolist()
    np.testing.assert_allclose(result.predictions.true_latitude, truth["latitude"])


def test_predictor_matches_model_outputs(tiny_dataset, tiny_model_dir):
    ds = load_dataset(str(tiny_dataset), split="test")
    # the raw head answer (coherent answers move points at sea: tests/inference/test_answers.py)
    predictor = GeoPredictor(str(tiny_model_dir), bf16=False, channels_last=False, answer="cell")
    predictions = predictor.predict_dataset(ds, batch_size=7, embeddings=True)
    pixel_values = predictor.processor([ds[i]["image"] for i in range(3)])["pixel_values"]
    with torch.no_grad():
        out = predictor.model(pixel_values=pixel_values, output_embeddings=True)
    frame = predictions.to_pandas()
    np.testing.assert_allclose(
        frame[["pred_latitude", "pred_longitude"]].to_numpy()[:3], out.coordinates.numpy(), atol=1e-4
    )
    assert predictions.probs.shape == (20, len(predictor.cells.names))
    np.testing.assert_allclose(predictions.embeddings[:3], out.embeddings.numpy(), atol=1e-4)
    np.testing.assert_allclose(predictions.probs[:3], torch.softmax(out.logits, -1).numpy(), atol=1e-5)
    assert (frame["pred_class"] == predictions.probs.argmax(1)).all()
    assert frame["pred_country_code"].tolist() == list(predictor.cells.country_code[predictions.probs.argmax(1)])
    np.testing.assert_allclose(predictions.true_latitude, ds["latitude"])
    record = predictions.records()[0]
    assert record["pred_latitude"] == pytest.approx(frame["pred_latitude"][0], abs=1e-4)
    assert record["error_km"] == pytest.approx(frame["error_km"][0], abs=0.1) and record["true_latitude"] is not None


@pytest.mark.slow
def test_accelerate_launch_train_script(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16",
        "--dynamo_backend",
        "no",
        os.path.join(REPO, "scripts", "train.py"),
        "--dataset",
        str(tiny_dataset),
        "--output_dir",
        str(out),
        "--heads",
        "haversine,country",
        "--image_size",
        "32",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--bf16",
        "--use_cpu",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert "eval_median_km" in metrics and metrics["eval_median_km"] > 0
    config = json.loads((out / "config.json").read_text())
    assert [h["name"] for h in config["heads"]] == ["haversine", "country"]
