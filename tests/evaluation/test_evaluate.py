import json

import numpy as np
import pandas as pd
import pytest

from geohf.cli import main
from geohf.data.samples import land_points, make_grid_folders
from geohf.data.stages import BuildConfig, build_dataset
from geohf.geo.cells import CellPartition


def test_evaluate_writes_report_pictures_and_predictions(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--dataset", str(tiny_dataset), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "geometric median" in printed and "median km" in printed
    for name in (
        "metrics.json",
        "report.md",
        "predictions.parquet",
        "error_curve.png",
        "error_map.png",
        "country_accuracy.png",
        "country_confusion.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"model", "geometric median", "random cell by frequency"}
    assert sum(c["support"] for c in metrics["countries"]) == 20
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == 20 and {"pred_latitude", "error_km", "top_index"} <= set(preds.columns)
    report = (out / "report.md").read_text()
    assert "![error curve](error_curve.png)" in report and "| model |" in report


@pytest.fixture(scope="module")
def grid_dataset(labeller, admin1_path, tmp_path_factory):
    """A grid-folders dataset: 3 views per place."""
    tmp_path = tmp_path_factory.mktemp("grid")
    root = make_grid_folders(tmp_path / "raw", land_points(12, labeller, seed=5), views=3)
    ds_dir = tmp_path / "ds"
    build_dataset(
        BuildConfig(
            layout="grid-folders",
            input=str(root),
            output=str(ds_dir),
            boundaries=admin1_path,
            cells=["quadtree:max_samples=10,min_samples=2"],
            fractions=(0.5, 0.0, 0.5),
            filter=False,
        )
    )
    return ds_dir


def test_multiview_evaluation_on_another_dataset(tiny_model_dir, grid_dataset, tmp_path):
    """The grid-folders dataset scored with the model's own cells, per view and fused."""
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--dataset", str(grid_dataset), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    names = list(metrics["multiview"])
    assert names[0] == "per view" and names[1].startswith("fused (3.0 views)")
    # true cells come from the model's partition, not the dataset's own quadtree column
    preds = pd.read_parquet(out / "predictions.parquet")
    part = CellPartition.load(tiny_model_dir / "cells" / "quadtree.parquet")
    np.testing.assert_array_equal(preds["true_class"], part.assign(preds["true_latitude"], preds["true_longitude"]))
    assert "Several views per place" in (out / "report.md").read_text()


def test_regression_model_on_a_multiview_split(grid_dataset, tmp_path):
    """No classes to fuse: the per-image table is written, the multi-view section is left out."""
    from geohf.modeling import GeoImageProcessor, create_model

    model = create_model(heads=["regression"], pretrained=None, image_size=32, crop_pct=1.0)
    model_dir = tmp_path / "regression"
    model.save_pretrained(model_dir)
    GeoImageProcessor.from_config(model.config).save_pretrained(model_dir)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_dir), "--dataset", str(grid_dataset), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"]["model"]["median_km"] > 0 and not metrics.get("multiview")


def test_evaluate_missing_split_is_clear(tiny_model_dir, tiny_dataset, tmp_path, cli):
    run = cli(
        "evaluate", "--model", tiny_model_dir, "--dataset", tiny_dataset, "-o", tmp_path / "x", "--split", "holdout"
    )
    assert run.code == 2 and run.errors == [run.err.strip()] and "no 'holdout' split" in run.err


def test_tune_coordinate_rule_picks_the_rule_and_the_answer_on_validation(tiny_model_dir, tiny_dataset):
    from datasets import load_dataset

    from geohf.evaluation import tune_coordinate_rule
    from geohf.inference.predictor import GeoPredictor

    validation = load_dataset(str(tiny_dataset), split="validation")
    predictor = GeoPredictor(str(tiny_model_dir))
    tuned = tune_coordinate_rule(predictor, validation)
    scores = tuned["median_km"]
    assert {key[3] for key in scores} == {"point", "hierarchical"}
    best = (*tuned["rule"], tuned["answer"])
    assert scores[best] == min(scores.values())
    config = predictor.model.config
    assert (config.coordinate_method, config.coordinate_top_k, config.coordinate_radius_km, config.answer) == best
    # the score is what predicting with the chosen rule and answer gives
    again = GeoPredictor(predictor.model).predict_dataset(validation)
    assert float(np.median(again.error_km)) == pytest.approx(scores[best], rel=1e-4)


def test_tune_coordinate_rule_of_a_tta_predictor_tunes_the_plain_view(tiny_model_dir, tiny_dataset):
    """With test-time augmentation the rule is tuned on the plain view: the same scores as without it (a head
    re-read from the views' mean embedding would not be TTA's mean of log-probabilities)."""
    from datasets import load_dataset

    from geohf.evaluation import tune_coordinate_rule
    from geohf.inference.predictor import GeoPredictor

    validation = load_dataset(str(tiny_dataset), split="validation")
    plain = tune_coordinate_rule(GeoPredictor(str(tiny_model_dir), bf16=False), validation)
    tta = GeoPredictor(str(tiny_model_dir), bf16=False, tta="flip")
    tuned = tune_coordinate_rule(tta, validation)
    assert tuned["median_km"] == pytest.approx(plain["median_km"], rel=1e-6)
    assert tta.tta == ("flip",) and tta.model.config.answer == tuned["answer"]  # the predictor keeps its TTA
