"""A model folder saved by geohf before the streamed engine and the head registry (commit 9670160) loads and
predicts exactly what that code predicted (``tests/fixtures/frozen_model``: its README says how it was made),
through ``geohf predict`` (files) and ``GeoPredictor.iter_dataset`` (a dataset split)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from geohf.cli import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "frozen_model"


def expected() -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def same(a, b, key: str = "") -> bool:
    """Equal values, floats to the last rounded digit (another CPU may differ in the last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=0.11 if key.endswith("_km") else 1e-4)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], k) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, key) for x, y in zip(a, b))
    return a == b


def test_geohf_predict_gives_the_records_of_the_code_before(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURE)  # the records name the files as given: tiles/tileNN.png
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", "model", "tiles", "--output", str(out), "--batch-size", "8"]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want = expected()
    assert len(got) == len(want) == 24
    assert len({r["top_k"][0]["label"] for r in want}) > 3  # the fixture's head is not flat
    for g, w in zip(got, want):
        assert same(g, w), (g, w)


def test_a_dataset_split_streams_to_the_same_predictions():
    import datasets

    from geohf.inference.predictor import GeoPredictor

    want = expected()
    files = [str(FIXTURE / r["file"]) for r in want]
    split = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())
    predictor = GeoPredictor(str(FIXTURE / "model"))
    batches = list(predictor.iter_dataset(split, batch_size=5, progress=False))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    lat = np.concatenate([b.pred_latitude for b in batches])
    top = np.concatenate([b.top_index[:, 0] for b in batches])
    np.testing.assert_allclose(lat, [r["pred_latitude"] for r in want], atol=1e-4)
    assert [predictor.cells.names[i] for i in top] == [r["top_k"][0]["label"] for r in want]
    with pytest.raises(ValueError, match="empty"):
        next(predictor.iter_dataset(split.select([])))
