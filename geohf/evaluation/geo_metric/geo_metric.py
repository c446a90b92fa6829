"""Geolocation metrics as an ``evaluate`` module, loadable offline by path.

import evaluate
from geohf.evaluation.geo_metric import PATH
metric = evaluate.load(PATH)
metric.compute(predictions=[[48.85, 2.35]], references=[[51.51, -0.13]])
metric.compute(predictions=..., references=..., label_areas=True)  # + country / region (balanced) accuracy
"""

import datasets
import evaluate

from geohf.evaluation.metrics import DISTANCE_THRESHOLDS_KM, distance_metrics, hierarchy_metrics

_DESCRIPTION = """Great-circle error metrics for image geolocation: mean and median km, % of predictions
within 1/25/200/750/2500 km, GeoScore (mean 5000·exp(−d/1492.7)) and mean exp(−d/1160); with
countries (given, or the admin areas the coordinates lie in) also country and region accuracy
and balanced accuracy (mean per-class recall)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of [latitude, longitude] in degrees.
    references: list of [latitude, longitude] in degrees.
    thresholds: optional list of km thresholds for the within_X metrics.
    pred_countries, true_countries, pred_regions, true_regions: optional country / region codes per row.
    label_areas: name the countries and regions that are not given from where the coordinates lie
        (geohf's shipped admin-1 boundaries; a predicted point at sea takes the nearest land).
Returns:
    mean_km, median_km, geoscore, exp_score_1160, within_<t>km (percent); with countries
    country_accuracy, country_balanced_accuracy, region_accuracy, region_balanced_accuracy (percent).
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

    def _compute(
        self,
        predictions,
        references,
        thresholds=DISTANCE_THRESHOLDS_KM,
        pred_countries=None,
        true_countries=None,
        pred_regions=None,
        true_regions=None,
        label_areas=False,
    ):
        lat_p, lon_p = zip(*predictions)
        lat_t, lon_t = zip(*references)
        out = distance_metrics(lat_t, lon_t, lat_p, lon_p, thresholds)
        if label_areas:
            from geohf.geo.places import AdminAreas

            areas = AdminAreas.default()
            pred_rows = areas.locate(lat_p, lon_p)[2]
            true_rows = areas.containing(lat_t, lon_t)
            pred_countries = areas.table.lookup("country_code", pred_rows) if pred_countries is None else pred_countries
            true_countries = areas.table.lookup("country_code", true_rows) if true_countries is None else true_countries
            pred_regions = areas.table.lookup("region_code", pred_rows) if pred_regions is None else pred_regions
            true_regions = areas.table.lookup("region_code", true_rows) if true_regions is None else true_regions
        if pred_countries is not None and true_countries is not None:
            out.update(hierarchy_metrics(pred_countries, true_countries, pred_regions, true_regions))
        return out
