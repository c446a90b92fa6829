"""Evaluating a model against naive baselines on the same split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..data.transforms import label_encoder
from ..geo.sphere import geometric_median, haversine_km, pairwise_haversine_km
from ..inference.predictions import CellTable, GeoPredictions, PredictionsBuffer
from ..inference.predictor import GeoPredictor
from .metrics import distance_metrics, hierarchy_metrics, topk_hits

TABLE_COLUMNS = [
    ("cell_top1_accuracy", "cell top-1 %"),
    ("cell_top5_accuracy", "cell top-5 %"),
    ("country_accuracy", "country %"),
    ("country_balanced_accuracy", "country bal. %"),
    ("region_accuracy", "region %"),
    ("mean_km", "mean km"),
    ("median_km", "median km"),
    ("within_1km", "≤1 km %"),
    ("within_25km", "≤25 km %"),
    ("within_200km", "≤200 km %"),
    ("within_750km", "≤750 km %"),
    ("within_2500km", "≤2500 km %"),
    ("geoscore", "GeoScore"),
]


@dataclass
class Guesses:
    """Predictions of one method on a split: coordinates, ranked cells and, where the method names
    them, countries and regions (else the best cell's majority ones)."""

    latitude: np.ndarray
    longitude: np.ndarray
    ranked_cells: np.ndarray  # (N, k) best first
    country_code: np.ndarray | None = None
    region_code: np.ndarray | None = None

    @classmethod
    def from_predictions(cls, predictions: GeoPredictions) -> Guesses:
        return cls(
            predictions.pred_latitude,
            predictions.pred_longitude,
            predictions.top_index,
            predictions.pred_country_code,
            predictions.pred_region_code,
        )

    def metrics(self, truth: pd.DataFrame, cells: CellTable, cell_column: str) -> dict[str, float]:
        """Distances over the rows with coordinates (country-only rows have none); labels over all rows."""
        located = (truth["latitude"].notna() & truth["longitude"].notna()).to_numpy()
        out = {}
        if located.any():
            out = distance_metrics(
                truth["latitude"][located], truth["longitude"][located], self.latitude[located], self.longitude[located]
            )
        true_cell = truth[cell_column].to_numpy()
        known = true_cell >= 0  # rows whose true class the model does not have are left out
        for k in (1, 5):
            if known.any() and self.ranked_cells.shape[1]:
                hit = (self.ranked_cells[known, :k] == true_cell[known, None]).any(1)
                out[f"cell_top{k}_accuracy"] = float(100.0 * hit.mean())
        country, region = self.country_code, self.region_code
        if country is None and self.ranked_cells.shape[1]:
            country, region = cells.country_code[self.ranked_cells[:, 0]], cells.region_code[self.ranked_cells[:, 0]]
        if country is not None:
            out.update(hierarchy_metrics(country, truth["country_code"], region, truth["region_code"]))
        return out


def nearest_cells(lat, lon, cells: CellTable, k: int) -> np.ndarray:
    """(N, k) ids of the cells whose centroids are nearest to each point."""
    d = pairwise_haversine_km(np.atleast_1d(lat), np.atleast_1d(lon), cells.latitude, cells.longitude)
    return np.argsort(d, axis=1)[:, :k]


def median_baseline(train: pd.DataFrame, n: int, cells: CellTable) -> Guesses:
    """Always guess the training set's geometric median (its nearest cells as the ranking)."""
    train = train[train["latitude"].notna() & train["longitude"].notna()]
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
    """Model and baseline metrics on one split, and the model's per-image predictions.

    ``predictions`` carries the truth coordinates; ``truth`` the split's other true labels
    (``true_country_code``, ``true_region_code``, ``true_class``) row by row.
    """

    split: str
    sizes: dict[str, int]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: GeoPredictions | None = None
    truth: pd.DataFrame | None = None

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

    def frame(self) -> pd.DataFrame:
        """Per image: the true labels and the model's ``pred_*`` columns with ``error_km``."""
        return pd.concat([self.truth.reset_index(drop=True), self.predictions.to_pandas()], axis=1)

    def to_dict(self) -> dict:
        return {"split": self.split, "sizes": self.sizes, "results": self.rows}


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def true_classes(latitude, longitude, labels: pd.DataFrame, predictor: GeoPredictor) -> np.ndarray:
    """The primary head's true class per row: the model's own cells for coordinates (from the
    partition saved with it), else the dataset's label column; -1 where unknown."""
    spec = predictor.model.config.head()
    partition = predictor.model.cell_partitions.get(spec.partition)
    if spec.is_geocell and partition is not None:
        return partition.assign(np.asarray(latitude), np.asarray(longitude))
    if spec.label_column in labels:
        encode = label_encoder(spec)
        return np.array([encode(v) if isinstance(v, str) else int(v) for v in labels[spec.label_column]])
    return np.full(len(labels), -1)


def as_predictor(model, bf16: bool | None = None, retrieval=True, tta=None) -> GeoPredictor:
    """A :class:`GeoPredictor` for a predictor, a model, or a model folder / Hub id (``tta``: test-time
    augmentation, see :class:`GeoPredictor`)."""
    if isinstance(model, GeoPredictor):
        return model
    return GeoPredictor(model, bf16=bf16, retrieval=retrieval, tta=tta)


def _split(dataset, split: str):
    """``(the split to score, the training split or None, split sizes)`` from a DatasetDict or one split."""
    if not hasattr(dataset, "to_pandas"):  # a DatasetDict
        if split not in dataset:
            raise ValueError(f"the dataset has no {split!r} split; it has {list(dataset)}")
        return dataset[split], dataset.get("train"), {s: len(dataset[s]) for s in dataset}
    return dataset, None, {split: len(dataset)}


LABEL_COLUMNS = ("latitude", "longitude", "country_code", "region_code")


def _label_frame(split, spec) -> pd.DataFrame:
    """The split's truth columns (:data:`LABEL_COLUMNS` and the primary head's label column); ``split`` a
    ``datasets.Dataset`` or a DataFrame of its columns."""
    wanted = [*LABEL_COLUMNS, spec.label_column]
    if isinstance(split, pd.DataFrame):
        return split[[c for c in dict.fromkeys(wanted) if c and c in split.columns]].copy()
    columns = [c for c in dict.fromkeys(wanted) if c and c in split.column_names]
    return split.select_columns(columns).to_pandas()


def cell_count_baselines(cells: CellTable, counts, n: int, seed: int = 0) -> tuple[Guesses, Guesses]:
    """The two naive baselines from the model's cells and their training counts (no training split at hand):
    the count-weighted geometric median of the cell centroids, and random cells by training frequency."""
    counts = np.asarray(counts, dtype=np.float64)
    lat, lon = geometric_median(cells.latitude, cells.longitude, weights=counts)
    ranked = np.repeat(nearest_cells(lat, lon, cells, 5), n, axis=0)
    median = Guesses(np.full(n, lat), np.full(n, lon), ranked)
    train = pd.DataFrame({"true_class": np.repeat(np.arange(len(counts)), counts.astype(np.int64))})
    return median, frequency_baseline(train, n, cells, "true_class", seed)


def evaluate(
    model,
    dataset,
    split: str = "test",
    train=None,
    batch_size: int = 64,
    seed: int = 0,
    bf16: bool | None = None,
    retrieval: bool = True,
    tta: str | None = None,
    keep_probs: bool = False,
) -> Evaluation:
    """The model on a split next to two naive baselines (geometric median, random cell by frequency).

    Args:
        model: a model, a :class:`GeoPredictor`, or a model folder / Hub id.
        dataset: a ``DatasetDict`` (``split`` is scored, its ``train`` split fits the baselines) or one split.
        train: the training split for the baselines when ``dataset`` is one split; without it the
            baselines come from the model's cells and their training counts.
        retrieval: refine the coordinates with the model's retrieval index when it has one (PIGEON);
            the unrefined coordinates are then scored too, as the row ``model without retrieval``.
        tta: test-time augmentation (``flip``, ``crops``, ``flip,crops``) of a model or folder's predictor.
        keep_probs: keep the primary head's probabilities on ``predictions`` (N x classes: for small splits
            that need them, such as fusing views per place); by default the split is scored batch by batch
            and only coordinates, top-k classes and names are kept per row.

    True cells come from the model's own partition (so any dataset with coordinates can be
    scored), else from the dataset's column of the primary head.
    """
    predictor = as_predictor(model, bf16, retrieval, tta)
    test, train_split, sizes = _split(dataset, split)
    train = train if train is not None else train_split
    if len(test) == 0:
        raise ValueError(f"the {split!r} split is empty: nothing to evaluate")
    spec = predictor.model.config.head()
    groups = predictor.place_groups(test)  # a multi-view model scores places, grouped as in training
    labels = _label_frame(test, spec)
    if groups is not None:
        labels = labels.iloc[[g[0] for g in groups]].reset_index(drop=True)
        sizes = {**sizes, f"{split} places": len(groups)}
    lat, lon = labels["latitude"].to_numpy(), labels["longitude"].to_numpy()
    true_class = true_classes(lat, lon, labels, predictor)
    cells = predictor.cells
    index = predictor.index if retrieval else None
    # streamed: each batch is answered (and refined) and its coordinates, top-k and names written into arrays
    # allocated once (PredictionsBuffer); the top-3 / top-10 hits are counted per batch, so no N x classes
    # array is ever gathered
    n = len(labels)
    keep = ("probs",) if keep_probs else ()
    kept, unrefined_kept = PredictionsBuffer(n, keep), PredictionsBuffer(n, keep) if index is not None else None
    hits = {k: np.zeros(n, dtype=bool) for k in (3, 10)}
    batches = predictor.iter_dataset(
        test,
        batch_size=batch_size,
        desc=f"evaluating {split}",
        embeddings=index is not None,
        retrieval=False,
        answer="cell",
    )
    for raw in batches:
        rows = slice(kept.filled, kept.filled + len(raw))
        answered = predictor.answered(raw)
        if unrefined_kept is not None:  # one forward: the head's coordinates, then the retrieval refinement
            unrefined_kept.add(answered)
            answered = predictor.answered(raw, refine=True)
        kept.add(answered)
        for k, hit in topk_hits(raw.probs, true_class[rows], tuple(hits)).items():
            hits[k][rows] = hit
    predictions, unrefined = kept.result(), unrefined_kept.result() if unrefined_kept is not None else None
    empty = pd.Series([""] * len(labels))
    truth = pd.DataFrame(
        {
            "true_country_code": labels.get("country_code", empty).to_numpy(),
            "true_region_code": labels.get("region_code", empty).to_numpy(),
            "true_class": true_class,
        }
    )
    if groups is not None:
        truth["location_id"] = np.asarray(test["location_id"], dtype=object)[[g[0] for g in groups]]
    scored = pd.DataFrame(
        {
            "latitude": lat,
            "longitude": lon,
            "country_code": truth["true_country_code"],
            "region_code": truth["true_region_code"],
            "true_class": true_class,
        }
    )
    result = Evaluation(split=split, sizes=sizes, predictions=predictions, truth=truth)
    result.rows["model"] = Guesses.from_predictions(predictions).metrics(scored, cells, "true_class")
    if unrefined is not None:
        result.rows["model without retrieval"] = Guesses.from_predictions(unrefined).metrics(
            scored, cells, "true_class"
        )
    known = true_class >= 0
    if known.any():
        for k, hit in hits.items():
            if k <= len(cells.names) and predictions.top_index.shape[1]:
                result.rows["model"][f"cell_top{k}_accuracy"] = float(100.0 * hit[known].mean())
    result.rows.update(baseline_rows(predictor, scored, train, seed))
    return result


def baseline_rows(predictor: GeoPredictor, scored: pd.DataFrame, train=None, seed: int = 0) -> dict[str, dict]:
    """The naive baselines' metrics on the split's truth ``scored`` (``latitude``, ``longitude``, ``country_code``,
    ``region_code``, ``true_class``), fitted on ``train`` (a split) or, without it, the model's cells and their
    training counts; none for a head that is not a geocell head."""
    spec, cells = predictor.model.config.head(), predictor.cells
    if not spec.is_geocell:
        return {}
    n = len(scored)
    if train is not None:
        train_labels = _label_frame(train, spec)
        train_labels["true_class"] = true_classes(
            train_labels["latitude"], train_labels["longitude"], train_labels, predictor
        )
        median = median_baseline(train_labels, n, cells)
        frequency = frequency_baseline(train_labels, n, cells, "true_class", seed)
    else:
        median, frequency = cell_count_baselines(cells, spec.cells["count"], n, seed)
    return {
        "geometric median": median.metrics(scored, cells, "true_class"),
        "random cell by frequency": frequency.metrics(scored, cells, "true_class"),
    }


COORDINATE_RULES = [("argmax", 1, None)] + [
    ("weighted", k, r) for k in (5, 10, 20, 50) for r in (None, 1000.0, 2000.0, 3000.0)
]


def tune_coordinate_rule(model, dataset, rules=COORDINATE_RULES, answers=("point", "hierarchical")) -> dict:
    """Pick how cell probabilities become coordinates (argmax / weighted top-k within a radius) and how
    the answer is named (``point`` / ``hierarchical``, see :mod:`geohf.inference.answers`) by median km
    on ``dataset`` (a validation split), and set both in the model config.

    The images run through the backbone once; each rule re-reads the primary head's output from the
    pooled embeddings. A predictor with test-time augmentation is tuned on the plain view (the rule then
    applies to its fused output as well): re-reading a head from the views' mean embedding is not the
    mean of their log-probabilities that TTA answers with. Returns ``{"rule": (method, top_k, radius_km),
    "answer": answer, "median_km": {(method, top_k, radius_km, answer): km}}``.
    """
    import torch

    from ..geo.places import AdminAreas
    from ..inference.answers import coherent

    predictor = as_predictor(model)
    if predictor.tta:  # one plain view per image (see above)
        predictor = GeoPredictor(predictor.model, predictor.processor, bf16=predictor.bf16, retrieval=False)
    model = predictor.model
    head = model.heads[model.config.primary_head]
    weight = head.fc.weight if getattr(head, "fc", None) is not None else next(head.parameters())
    areas = AdminAreas.default()
    keys = [(method, k, radius, answer) for method, k, radius in rules for answer in answers]
    position = {key: i for i, key in enumerate(keys)}
    # streamed: per batch, every rule's error per row (a few floats a row, never N x classes)
    errors, start = np.empty((len(keys), predictor.prediction_count(dataset))), 0
    batches = predictor.iter_dataset(
        dataset, desc="tuning coordinates", embeddings=True, retrieval=False, answer="cell"
    )
    for raw in batches:
        rows = slice(start, start + len(raw))
        start = rows.stop
        if raw.true_latitude is None:
            raise ValueError("the validation split has no latitude/longitude: cannot tune the coordinate rule")
        with torch.inference_mode():
            out = head(torch.as_tensor(raw.embeddings, dtype=weight.dtype, device=weight.device)).float()
        for method, k, radius in rules:
            coords = head.coordinates(out, method, k, radius).cpu().numpy()
            moved = replace(
                raw, pred_latitude=coords[:, 0].astype(np.float64), pred_longitude=coords[:, 1].astype(np.float64)
            )
            for answer in answers:
                pred = coherent(moved, answer, k, areas)
                err = haversine_km(raw.true_latitude, raw.true_longitude, pred.pred_latitude, pred.pred_longitude)
                errors[position[(method, k, radius, answer)], rows] = err
    scores = {key: float(np.median(errors[i])) for i, key in enumerate(keys)}
    best = min(scores, key=scores.get)
    config = model.config
    config.coordinate_method, config.coordinate_top_k, config.coordinate_radius_km, config.answer = best
    return {"rule": best[:3], "answer": best[3], "median_km": scores}


RETRIEVAL_GRID = {"top_k": (1, 3, 5, 10), "temperature": (0.01, 0.03, 0.1, 0.3, 1.0), "neighbours": (8, 32, 128)}


def tune_retrieval(model, dataset, index=None, grid: dict = RETRIEVAL_GRID) -> dict:
    """Pick the retrieval refinement's ``top_k``, ``temperature`` and ``neighbours`` by median km on
    ``dataset`` (a validation split, never the test split), and set them on the index
    (``predictor.index``, or ``index``); ``max_shift_km`` stays as it is.

    One forward and one search (for the most neighbours) serve the whole grid. Returns
    ``{"params": RetrievalParams, "median_km": {(top_k, temperature, neighbours): km}, "unrefined_median_km": km}``.
    """
    import itertools

    predictor = as_predictor(model)
    index = index if index is not None else predictor.index
    if index is None:
        raise ValueError("the model has no retrieval index: build one with geohf index build")
    # the head's raw coordinates, which the index refines before the answer is named (see answer_predictions);
    # streamed: per batch one search (for the most neighbours) serves the whole grid, and each setting's
    # error per row is kept (a few floats a row, never N x classes)
    combos = list(itertools.product(grid["top_k"], grid["temperature"], grid["neighbours"]))
    n = predictor.prediction_count(dataset)
    errors, plain, start = np.empty((len(combos), n)), np.empty(n), 0
    batches = predictor.iter_dataset(dataset, desc="tuning retrieval", embeddings=True, retrieval=False, answer="cell")
    for predictions in batches:
        rows = slice(start, start + len(predictions))
        start = rows.stop
        if predictions.true_latitude is None:
            raise ValueError("the validation split has no latitude/longitude: cannot tune retrieval")
        found = index.search(predictions.embeddings, max(grid["neighbours"]))
        truth = predictions.true_latitude, predictions.true_longitude
        for i, (top_k, temperature, neighbours) in enumerate(combos):
            params = replace(index.params, top_k=top_k, temperature=temperature, neighbours=neighbours)
            lat, lon, _ = index.choose(predictions, params, found)
            errors[i, rows] = haversine_km(*truth, lat, lon)
        plain[rows] = haversine_km(*truth, predictions.pred_latitude, predictions.pred_longitude)
    scores = {c: float(np.median(errors[i])) for i, c in enumerate(combos)}
    current = (index.params.top_k, index.params.temperature, index.params.neighbours)
    best = min(scores, key=lambda c: (scores[c], c != current))  # a tie keeps the current parameters
    index.params = replace(index.params, top_k=best[0], temperature=best[1], neighbours=best[2])
    return {"params": index.params, "median_km": scores, "unrefined_median_km": float(np.median(plain))}
