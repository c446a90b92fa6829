"""Geolocation metrics: one numpy core, used by Trainer, evaluation and the evaluate module.

* distances: mean / median great-circle km, % within 1, 25, 200, 750, 2500 km;
* GeoScore = mean(5000·exp(−d/1492.7)) (GeoGuessr's world-map score) and the
  mean exp(−d/1160) score;
* classification: top-k accuracy, balanced accuracy, per-class precision/recall;
* hierarchy: country / region accuracy of labels mapped from any head's prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geo.sphere import haversine_km

DISTANCE_THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOSCORE_SCALE_KM = 1492.7
EXP_SCALE_KM = 1160.0


def distance_metrics(
    true_lat, true_lon, pred_lat, pred_lon, thresholds: Sequence[float] = DISTANCE_THRESHOLDS_KM
) -> dict[str, float]:
    """Great-circle error summary between true and predicted coordinates."""
    d = haversine_km(true_lat, true_lon, pred_lat, pred_lon)
    return distance_summary(d, thresholds)


def distance_summary(errors_km, thresholds: Sequence[float] = DISTANCE_THRESHOLDS_KM) -> dict[str, float]:
    """Summary of an array of great-circle errors in km."""
    d = np.asarray(errors_km, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no predictions to score")
    out = {
        "mean_km": float(d.mean()),
        "median_km": float(np.median(d)),
        "geoscore": float(geoscore(d)),
        "exp_score_1160": float(np.exp(-d / EXP_SCALE_KM).mean()),
    }
    for t in thresholds:
        out[f"within_{t:g}km"] = float(100.0 * (d <= t).mean())
    return out


def geoscore(errors_km) -> float:
    """Mean GeoGuessr score, 5000·exp(−d/1492.7) per guess (5000 = perfect)."""
    return float((5000.0 * np.exp(-np.asarray(errors_km, dtype=np.float64) / GEOSCORE_SCALE_KM)).mean())


def topk_hits(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 3, 5, 10)) -> dict[int, np.ndarray]:
    """Per row, whether the label is among the ``k`` best scores (N,) bool, for each ``k`` <= C: fewer than
    ``k`` classes score strictly higher than the label (a tie counts in its favour). One comparison per
    class, no sort; rows are independent, so batches of rows give the same hits as the whole split."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    ks = [k for k in ks if k <= scores.shape[1]]
    if not ks:
        return {}
    known = labels >= 0  # a label the scores do not have (-1) is never a hit
    label_score = scores[np.arange(len(labels)), np.where(known, labels, 0)]
    rank = (scores > label_score[:, None]).sum(1)  # classes ranked above the label
    return {k: (rank < k) & known for k in ks}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 3, 5, 10)) -> dict[str, float]:
    """Top-k accuracy (%) from class scores (N, C) and integer labels (N,); k > C is skipped."""
    return {f"top{k}_accuracy": float(100.0 * hit.mean()) for k, hit in topk_hits(scores, labels, ks).items()}


def accuracy(pred, true) -> float:
    """Share (%) of equal labels."""
    pred, true = np.asarray(pred), np.asarray(true)
    return float(100.0 * (pred == true).mean()) if true.size else float("nan")


def balanced_accuracy(pred, true) -> float:
    """Mean per-class recall (%) over the classes present in ``true``."""
    pred, true = np.asarray(pred), np.asarray(true)
    classes = np.unique(true)
    return float(100.0 * np.mean([(pred[true == c] == c).mean() for c in classes])) if classes.size else float("nan")


def per_class_precision_recall(pred, true) -> dict[str, dict[str, float]]:
    """Precision, recall and support per class of ``true`` ∪ ``pred``."""
    pred, true = np.asarray(pred), np.asarray(true)
    out = {}
    for c in np.unique(np.concatenate([true, pred])):
        tp = float(((pred == c) & (true == c)).sum())
        n_pred, n_true = float((pred == c).sum()), float((true == c).sum())
        out[str(c)] = {
            "precision": 100.0 * tp / n_pred if n_pred else 0.0,
            "recall": 100.0 * tp / n_true if n_true else 0.0,
            "support": int(n_true),
        }
    return out


def hierarchy_metrics(pred_country, true_country, pred_region=None, true_region=None) -> dict[str, float]:
    """Country and region accuracy and balanced accuracy (%), over the rows whose truth is known ('' unknown)."""
    out = {}
    for level, pred, true in (("country", pred_country, true_country), ("region", pred_region, true_region)):
        if pred is None or true is None:
            continue
        pred, true = np.asarray(pred, dtype=object).astype(str), np.asarray(true, dtype=object).astype(str)
        known = true != ""
        if known.any():
            out[f"{level}_accuracy"] = accuracy(pred[known], true[known])
            out[f"{level}_balanced_accuracy"] = balanced_accuracy(pred[known], true[known])
    return out


def geolocation_metrics(
    true_lat,
    true_lon,
    pred_lat,
    pred_lon,
    true_country=None,
    pred_country=None,
    true_region=None,
    pred_region=None,
    cell_scores=None,
    true_cell=None,
) -> dict[str, float]:
    """Everything a geolocation table reports, from whatever is available."""
    out = distance_metrics(true_lat, true_lon, pred_lat, pred_lon)
    if cell_scores is not None and true_cell is not None:
        out.update({f"cell_{k}": v for k, v in topk_accuracy(cell_scores, true_cell).items()})
    out.update(hierarchy_metrics(pred_country, true_country, pred_region, true_region))
    return out
