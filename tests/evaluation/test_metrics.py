import numpy as np
import pytest

from geohf.evaluation.metrics import (
    balanced_accuracy,
    distance_metrics,
    distance_summary,
    geolocation_metrics,
    geoscore,
    per_class_precision_recall,
    topk_accuracy,
    topk_hits,
)


def test_distance_summary_by_hand():
    m = distance_summary([0.0, 10.0, 100.0, 1000.0])
    assert m["mean_km"] == pytest.approx(277.5)
    assert m["median_km"] == pytest.approx(55.0)
    assert m["within_1km"] == 25.0 and m["within_25km"] == 50.0 and m["within_200km"] == 75.0
    assert m["within_2500km"] == 100.0
    expected = np.mean([5000 * np.exp(-d / 1492.7) for d in (0, 10, 100, 1000)])
    assert m["geoscore"] == pytest.approx(expected)
    assert m["exp_score_1160"] == pytest.approx(np.mean([np.exp(-d / 1160) for d in (0, 10, 100, 1000)]))


def test_geoscore_extremes():
    assert geoscore([0.0]) == 5000.0
    assert geoscore([1492.7]) == pytest.approx(5000 / np.e)
    with pytest.raises(ValueError):
        distance_summary([])


def test_distance_metrics_from_coordinates():
    m = distance_metrics([0, 0], [0, 0], [0, 0], [0, 1])
    assert m["median_km"] == pytest.approx(111.19 / 2, rel=1e-3)


def test_topk_and_balanced_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3, 5))
    assert acc == {"top1_accuracy": 50.0, "top2_accuracy": 75.0, "top3_accuracy": 100.0}
    tied = topk_hits(np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]]), np.array([0, 1]), ks=(1,))
    assert tied[1].tolist() == [True, True]  # a tie with the best counts in the label's favour
    pred = scores.argmax(1)  # [1, 0, 2, 0]
    assert balanced_accuracy(pred, labels) == pytest.approx(50.0)  # class 0: 1/2, class 1: 1/2
    pr = per_class_precision_recall(pred, labels)
    assert pr["0"] == {"precision": 50.0, "recall": 50.0, "support": 2}
    assert pr["2"]["precision"] == 0.0 and pr["2"]["support"] == 0


def test_geolocation_metrics_combines_levels():
    m = geolocation_metrics(
        [0, 10],
        [0, 10],
        [0, 10],
        [0, 10],
        true_country=["FR", "DE"],
        pred_country=["FR", "FR"],
        cell_scores=np.eye(2),
        true_cell=np.array([0, 0]),
    )
    assert m["median_km"] == 0 and m["country_accuracy"] == 50.0 and m["cell_top1_accuracy"] == 50.0


def test_evaluate_module_loads_offline_by_path():
    import evaluate

    from geohf.evaluation.geo_metric import PATH

    metric = evaluate.load(PATH)
    out = metric.compute(predictions=[[48.8566, 2.3522], [0, 0]], references=[[51.5074, -0.1278], [0, 0]])
    assert out["within_1km"] == 50.0 and out["median_km"] == pytest.approx(343.56 / 2, abs=0.1)
    # the full set: countries and regions where the coordinates lie (Paris guessed for London: FR vs GB)
    paris, london, berlin = [48.8566, 2.3522], [51.5074, -0.1278], [52.52, 13.405]
    full = metric.compute(predictions=[paris, berlin, berlin], references=[london, berlin, berlin], label_areas=True)
    assert full["country_accuracy"] == pytest.approx(200 / 3) and full["country_balanced_accuracy"] == 50.0
    assert full["region_accuracy"] == pytest.approx(200 / 3)
    given = metric.compute(
        predictions=[paris, berlin],
        references=[london, berlin],
        pred_countries=["GB", "DE"],
        true_countries=["GB", "DE"],
    )
    assert given["country_accuracy"] == 100.0 and "region_accuracy" not in given


def test_country_rows_print_support_as_a_count():
    import pandas as pd

    from geohf.evaluation.report import country_rows, country_table

    frame = pd.DataFrame({"pred_country_code": ["FR"] * 3 + ["DE"], "true_country_code": ["FR", "FR", "DE", "DE"]})
    rows = country_rows(country_table(frame))
    assert [row.split("|")[2].strip() for row in rows] == ["2", "2"], rows  # a count: "2", not "2.0"
