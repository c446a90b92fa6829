"""Evaluating a model against naive baselines on the same split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.transforms import label_encoder
from ..geo.sphere import geometric_median, haversine_km, pairwise_haversine_km
from ..inference.predictor import CellTable, GeoPredictor
from .metrics import accuracy, distance_metrics, topk_accuracy

TABLE_COLUMNS = [
    ("cell_top1_accuracy", "cell top-1 %"),
    ("cell_top5_accuracy", "cell top-5 %"),
    ("country_accuracy", "country %"),
    ("mean_km", "mean km"),
    ("median_km", "median km"),
    ("within_25km", "≤25 km %"),
    ("within_200km", "≤200 km %"),
    ("within_750km", "≤750 km %"),
    ("within_2500km", "≤2500 km %"),
    ("geoscore", "GeoScore"),
]


@dataclass
class Guesses:
    """Predictions of one method on a split: coordinates and ranked cells."""

    latitude: np.ndarray
    longitude: np.ndarray
    ranked_cells: np.ndarray  # (N, k) best first

    def metrics(self, truth: pd.DataFrame, cells: CellTable, cell_column: str, labeller=None) -> dict[str, float]:
        out = distance_metrics(truth["latitude"], truth["longitude"], self.latitude, self.longitude)
        true_cell = truth[cell_column].to_numpy()
        known = true_cell >= 0  # rows whose true class the model does not have are left out
        if self.ranked_cells.shape[1] == 0:  # a regression model: its country is where its coordinates fall
            if labeller is not None:
                labels, _ = labeller.label(self.latitude, self.longitude)
                out["country_accuracy"] = accuracy(labels["country_code"], truth["country_code"])
                out["region_accuracy"] = accuracy(labels["region_code"], truth["region_code"])
            return out
        for k in (1, 5):
            if known.any():
                hit = (self.ranked_cells[known, :k] == true_cell[known, None]).any(1)
                out[f"cell_top{k}_accuracy"] = float(100.0 * hit.mean())
        out["country_accuracy"] = accuracy(cells.country_code[self.ranked_cells[:, 0]], truth["country_code"])
        out["region_accuracy"] = accuracy(cells.region_code[self.ranked_cells[:, 0]], truth["region_code"])
        return out


def nearest_cells(lat, lon, cells: CellTable, k: int) -> np.ndarray:
    """(N, k) ids of the cells whose centroids are nearest to each point."""
    d = pairwise_haversine_km(np.atleast_1d(lat), np.atleast_1d(lon), cells.latitude, cells.longitude)
    return np.argsort(d, axis=1)[:, :k]


def median_baseline(train: pd.DataFrame, n: int, cells: CellTable) -> Guesses:
    """Always guess the training set's geometric median (its nearest cells as the ranking)."""
    lat, lon = geometric_median(train["latitude"].to_numpy(), train["longitude"].to_numpy())
    ranked = np.repeat(nearest_cells(lat, lon, cells, 5), n, axis=0)
    return Guesses(np.full(n, lat), np.full(n, lon), ranked)


def frequency_baseline(train: pd.DataFrame, n: int, cells: CellTable, cell_column: str, seed: int = 0) -> Guesses:
    """Guess random cells drawn with their training frequency (their centroid as coordinates)."""
    labels = train[cell_column].to_numpy()
    counts = np.bincount(labels[labels >= 0], minlength=len(cells.names)).astype(np.float64)
    p = counts / counts.sum()
    rng = np.random.default_rng(seed)
    k = min(5, int((p > 0).sum()))
    ranked = np.stack([rng.choice(p.size, size=k, replace=False, p=p) for _ in range(n)])
    first = ranked[:, 0]
    return Guesses(cells.latitude[first], cells.longitude[first], ranked)


@dataclass
class Evaluation:
    """Model and baseline metrics on one split, and the per-image predictions."""

    split: str
    sizes: dict[str, int]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None

    def table(self) -> str:
        """A plain-text table, one row per method."""
        head = ["method"] + [label for _, label in TABLE_COLUMNS]
        lines = [head]
        for name, m in self.rows.items():
            lines.append([name] + [_fmt(m.get(key)) for key, _ in TABLE_COLUMNS])
        widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
        text = [
            " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in lines
        ]
        text.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(text)

    def to_dict(self) -> dict:
        return {"split": self.split, "sizes": self.sizes, "results": self.rows}


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def true_classes(table: pd.DataFrame, predictor: GeoPredictor) -> np.ndarray:
    """The primary head's true class per row: the model's own cells for coordinates (from the
    partition saved with it), else the dataset's label column; -1 where unknown."""
    spec = predictor.model.config.head(predictor.model.config.primary_head)
    if spec.get("cells") and predictor.partition is not None:
        return predictor.partition.assign(table["latitude"].to_numpy(), table["longitude"].to_numpy())
    column = spec.get("label_column")
    if column in table:
        encode = label_encoder(spec)
        return np.array([encode(v) if isinstance(v, str) else int(v) for v in table[column]])
    return np.full(len(table), -1)


def evaluate(
    predictor: GeoPredictor,
    dataset_dict,
    split: str = "test",
    batch_size: int = 64,
    seed: int = 0,
    labeller=None,
) -> Evaluation:
    """The model on ``split`` next to two naive baselines fitted on the training split.

    True cells come from the model's own partition (so any dataset with coordinates can be
    scored), else from the dataset's column of the primary head. A regression-only model's
    country is read from its coordinates with ``labeller`` (a :class:`PointLabeller`).
    """
    if split not in dataset_dict:
        raise ValueError(f"the dataset has no {split!r} split; it has {list(dataset_dict)}")
    test = dataset_dict[split]
    if len(test) == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to evaluate")
    spec = predictor.model.config.head(predictor.model.config.primary_head)
    wanted = ["latitude", "longitude", "country_code", "region_code", spec.get("label_column")]
    columns = [c for c in dict.fromkeys(wanted) if c in test.column_names]
    truth = test.select_columns(columns).to_pandas()
    truth["true_class"] = true_classes(truth, predictor)
    cells = predictor.cells

    frame = predictor.predict_dataset(test, batch_size=batch_size, desc=f"evaluating {split}")
    model = Guesses(
        frame["pred_latitude"].to_numpy(), frame["pred_longitude"].to_numpy(), np.stack(frame["top_index"].to_numpy())
    )
    result = Evaluation(split=split, sizes={s: len(dataset_dict[s]) for s in dataset_dict})
    result.rows["model"] = model.metrics(truth, cells, "true_class", labeller)
    known = truth["true_class"].to_numpy() >= 0
    if frame.attrs["probs"].shape[1] and known.any():
        topk = topk_accuracy(frame.attrs["probs"][known], truth["true_class"][known], (3, 10))
        result.rows["model"].update({f"cell_{k}": v for k, v in topk.items()})
    if spec.get("cells") and "train" in dataset_dict:
        train = dataset_dict["train"].select_columns(columns).to_pandas()
        train["true_class"] = true_classes(train, predictor)
        n = len(truth)
        result.rows["geometric median"] = median_baseline(train, n, cells).metrics(truth, cells, "true_class")
        result.rows["random cell by frequency"] = frequency_baseline(train, n, cells, "true_class", seed).metrics(
            truth, cells, "true_class"
        )
    probs = frame.attrs["probs"]
    frame = pd.concat([truth.reset_index(drop=True), frame], axis=1)
    frame.attrs["probs"] = probs
    frame["error_km"] = haversine_km(
        frame["latitude"], frame["longitude"], frame["pred_latitude"], frame["pred_longitude"]
    )
    result.predictions = frame
    return result


COORDINATE_RULES = [("argmax", 1, None)] + [
    ("weighted", k, r) for k in (5, 10, 20, 50) for r in (None, 1000.0, 2000.0, 3000.0)
]


def tune_coordinate_rule(predictor: GeoPredictor, dataset, rules=COORDINATE_RULES) -> dict:
    """Pick how cell probabilities become coordinates (argmax / weighted top-k within a radius)
    by median km on ``dataset`` (a validation split), and set it in the model config.

    Returns ``{"rule": (method, top_k, radius_km), "median_km": {rule: km}}``.
    """
    import torch

    model = predictor.model
    head = model.heads[model.config.primary_head]
    truth = dataset.select_columns(["latitude", "longitude"]).to_pandas()
    frame = predictor.predict_dataset(dataset, desc="tuning coordinates")
    logits = torch.log(torch.as_tensor(frame.attrs["probs"]).clamp_min(1e-12))
    scores = {}
    for method, k, radius in rules:
        coords = head.coordinates(logits, method, k, radius).numpy()
        err = haversine_km(truth["latitude"].to_numpy(), truth["longitude"].to_numpy(), coords[:, 0], coords[:, 1])
        scores[(method, k, radius)] = float(np.median(err))
    best = min(scores, key=scores.get)
    model.config.coordinate_method, model.config.coordinate_top_k, model.config.coordinate_radius_km = best
    return {"rule": best, "median_km": scores}
