"""Geolocation metrics as an ``evaluate`` module, loadable offline by path.

import evaluate
from geohf.evaluation.geo_metric import PATH
metric = evaluate.load(PATH)
metric.compute(predictions=[[48.85, 2.35]], references=[[51.51, -0.13]])
"""

import datasets
import evaluate

from geohf.evaluation.metrics import DISTANCE_THRESHOLDS_KM, distance_metrics

_DESCRIPTION = """Great-circle error metrics for image geolocation: mean and median km, % of predictions
within 1/25/200/750/2500 km, GeoScore (mean 5000·exp(−d/1492.7)) and mean exp(−d/1160)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of [latitude, longitude] in degrees.
    references: list of [latitude, longitude] in degrees.
    thresholds: optional list of km thresholds for the within_X metrics.
Returns:
    mean_km, median_km, geoscore, exp_score_1160, within_<t>km (percent).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GeoMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64"), length=2),
                    "references": datasets.Sequence(datasets.Value("float64"), length=2),
                }
            ),
        )

    def _compute(self, predictions, references, thresholds=DISTANCE_THRESHOLDS_KM):
        lat_p, lon_p = zip(*predictions)
        lat_t, lon_t = zip(*references)
        return distance_metrics(lat_t, lon_t, lat_p, lon_p, thresholds)
