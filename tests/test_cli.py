import json
import subprocess
import sys

import pytest
from datasets import load_dataset

from geohf.cli import main


@pytest.fixture(scope="module")
def images(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    ds = load_dataset(str(tiny_dataset), split="test")
    good = []
    for i in range(3):
        path = folder / f"tile{i}.png"
        ds[i]["image"].save(path)
        good.append(path)
    jpg = folder / "tile.jpg"
    ds[3]["image"].save(jpg, quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    text = folder / "notes.jpg"
    text.write_text("this is not an image")
    return {"good": good + [jpg], "truncated": truncated, "text": text, "missing": folder / "missing.png"}


def test_predict_jsonl(tiny_model_dir, images, tmp_path):
    out = tmp_path / "pred.jsonl"
    code = main(
        ["predict", "--model", str(tiny_model_dir), *map(str, images["good"]), "--top-k", "3", "--output", str(out)]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in images["good"]]
    for r in records:
        assert set(r) == {
            "file",
            "pred_latitude",
            "pred_longitude",
            "pred_country_code",
            "pred_country",
            "pred_region_code",
            "pred_region",
            "score",
            "radius_km",
            "top_k",
        }
        assert r["radius_km"] >= 0
        assert len(r["top_k"]) == 3 and set(r["top_k"][0]) == {"label", "score", "latitude", "longitude"}
        assert -90 <= r["pred_latitude"] <= 90 and -180 <= r["pred_longitude"] <= 180
        assert r["score"] == r["top_k"][0]["score"] and r["pred_country_code"]


def test_predict_bad_inputs_are_reported_and_the_rest_predicted(tiny_model_dir, images, tmp_path):
    out = tmp_path / "pred.jsonl"
    bad = [images["missing"], images["text"], images["truncated"]]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geohf.cli",
            "predict",
            "--model",
            str(tiny_model_dir),
            str(images["good"][0]),
            *map(str, bad),
            str(images["good"][1]),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert str(images["missing"]) in errors[0] and "no such file" in errors[0]
    assert str(images["text"]) in errors[1] and "not an image" in errors[1]
    assert str(images["truncated"]) in errors[2] and "truncated" in errors[2]
    assert "3 of 5 images could not be read" in proc.stderr
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, admin1_path, capsys):
    from geohf.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        output=str(tmp_path / "demo"),
        minutes=1.0,
        train_tiles=160,
        validation_tiles=30,
        test_tiles=30,
        tile_px=32,
        image_size=32,
        batch_size=16,
        max_cell_samples=20,
        min_cell_samples=4,
        boundaries=admin1_path,
        reserve_seconds=30,
    )
    metrics = run_demo(cfg)
    out = capsys.readouterr().out
    assert "geometric median" in out and "random cell by frequency" in out and "median km" in out
    root = tmp_path / "demo"
    assert (root / "dataset" / "README.md").is_file() and (root / "model" / "model.safetensors").is_file()
    assert not list((root / "model").glob("checkpoint-*"))
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["sizes"] == {"train": 160, "validation": 30, "test": 30} == metrics["sizes"]
    assert set(saved["results"]) == {"model", "geometric median", "random cell by frequency"}
    assert saved["train"]["steps"] >= 1
    preds = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all("top_k" in p for p in preds)
    # the model folder works with a plain transformers pipeline once geohf is imported
    from transformers import pipeline

    import geohf  # noqa: F401

    clf = pipeline("image-classification", model=str(root / "model"))
    assert clf(str(next((root / "samples").iterdir())), top_k=2)[0]["label"]
