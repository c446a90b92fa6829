"""Trainer ``compute_metrics`` for geolocation: km errors, top-k, and country / region accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from transformers import EvalPrediction

from ..evaluation.metrics import distance_metrics, hierarchy_metrics, topk_accuracy


def has_class_targets(config) -> bool:
    """Whether the primary head learns class targets (a label column, or geocells); regression and
    GeoCLIP heads learn from the coordinates alone."""
    spec = config.head()
    return spec.is_classifier and bool(spec.label_column or spec.is_geocell)


def coordinates_only(logits, labels):
    """Trainer ``preprocess_logits_for_metrics`` without class targets: the coordinates, and no logits
    (a GeoCLIP head's are (N, gallery points): 100K columns per eval image)."""
    logits_, coordinates = logits[0], logits[1]
    return logits_[:, :0], coordinates


def make_compute_metrics(
    config=None, label_names: Sequence[str] = ("labels", "coordinates")
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer ``compute_metrics``: km errors from predicted coordinates, top-k over the primary head and,
    given the model ``config``, country and region accuracy and balanced accuracy of its coherent answers
    (:func:`~geohf.inference.answers.coherent`) against the areas the true coordinates lie in.

    Expects the Trainer's ``label_names`` (``labels`` and/or ``coordinates``) and model outputs
    ``(logits, coordinates, ...)``.
    """

    def compute(pred: EvalPrediction) -> dict[str, float]:
        outputs = pred.predictions if isinstance(pred.predictions, tuple) else (pred.predictions,)
        label_ids = pred.label_ids if isinstance(pred.label_ids, tuple) else (pred.label_ids,)
        labels = dict(zip(label_names, label_ids))
        logits, coords = outputs[0], outputs[1] if len(outputs) > 1 else None
        cell_labels, true = labels.get("labels"), labels.get("coordinates")
        out = {}
        if logits is not None and logits.ndim == 2 and cell_labels is not None:
            valid = np.asarray(cell_labels) >= 0
            out.update(topk_accuracy(np.asarray(logits)[valid], np.asarray(cell_labels)[valid], ks=(1, 5)))
        if coords is not None and true is not None:
            out.update(distance_metrics(true[:, 0], true[:, 1], coords[:, 0], coords[:, 1]))
            if config is not None:
                out.update(_hierarchy(config, logits, coords, true))
        return out

    return compute


def _hierarchy(config, logits, coords, true) -> dict[str, float]:
    """Country / region (balanced) accuracy of the coherent answers for predicted ``coords``."""
    from ..geo.places import AdminAreas
    from ..inference.answers import coherent
    from ..inference.predictions import CellTable, GeoPredictions

    spec = config.head()
    cells = CellTable.from_spec(spec)
    n = coords.shape[0]
    probs = np.zeros((n, 0))
    if spec.is_classifier and logits is not None and logits.ndim == 2 and logits.shape[1]:  # (N, 0): dropped
        z = np.asarray(logits, dtype=np.float64)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    empty = np.zeros((n, 0), dtype=np.int64)
    pred = GeoPredictions(
        np.asarray(coords[:, 0], np.float64),
        np.asarray(coords[:, 1], np.float64),
        empty,
        np.zeros((n, 0)),
        cells,
        probs=probs,
    )
    areas = AdminAreas.default()
    pred = coherent(pred, config.answer, config.coordinate_top_k, areas)
    true_rows = areas.containing(true[:, 0], true[:, 1])
    return hierarchy_metrics(
        pred.pred_country_code,
        areas.table.lookup("country_code", true_rows),
        pred.pred_region_code,
        areas.table.lookup("region_code", true_rows),
    )
