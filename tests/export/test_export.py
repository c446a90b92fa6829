"""ONNX export: onnxruntime against PyTorch on the same preprocessed tiles (max abs diff reported)."""

import json

import numpy as np
import pytest
import torch
from datasets import load_dataset

from geohf.cli import main
from geohf.modeling import GeoImageProcessor, GeoModelForImageGeolocation

ort = pytest.importorskip("onnxruntime")


def geohf(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert geohf("export", "--model", tiny_model_dir, "--format", "onnx", out) == 0
    return out


def test_export_writes_a_self_describing_folder(exported, tiny_model_dir, capsys):
    assert sorted(p.name for p in exported.iterdir()) == [
        "config.json", "export.json", "model.onnx", "preprocessor_config.json",
    ]  # fmt: skip
    report = json.loads((exported / "export.json").read_text())
    assert report["outputs"] == ["logits", "coordinates", "radius_km"]
    assert report["max_abs_diff"]["logits"] < 1e-4 and report["max_abs_diff"]["coordinates"] < 1e-3
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch size
    assert geohf("export", "--model", tiny_model_dir, exported) == 2  # never over an existing export
    assert "not empty" in capsys.readouterr().err


def test_onnxruntime_matches_pytorch_on_real_tiles(exported, tiny_model_dir, tiny_dataset):
    processor = GeoImageProcessor.from_pretrained(str(exported))
    tiles = load_dataset(str(tiny_dataset), split="test")["image"][:5]
    pixel_values = processor(tiles, return_tensors="pt")["pixel_values"]
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, coordinates, radius = session.run(None, {"pixel_values": pixel_values.numpy()})

    model = GeoModelForImageGeolocation.from_pretrained(str(tiny_model_dir)).eval()
    with torch.inference_mode():
        out = model(pixel_values=pixel_values)
        want_radius = model.heads[model.config.primary_head].confidence_radius(out.logits, out.coordinates, 0.5)
    diffs = {
        "logits": float(np.abs(logits - out.logits.numpy()).max()),
        "coordinates": float(np.abs(coordinates - out.coordinates.numpy()).max()),
        "radius_km": float(np.abs(radius - want_radius.numpy()).max()),
    }
    print(f"max |onnxruntime - pytorch| on 5 test tiles: {diffs}")
    assert diffs["logits"] < 1e-4 and diffs["coordinates"] < 1e-3 and diffs["radius_km"] < 1.0
    assert (logits.argmax(1) == out.logits.argmax(1).numpy()).all()
