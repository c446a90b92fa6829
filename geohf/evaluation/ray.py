"""``geohf evaluate --engine ray``: the split predicted by Ray actors (:mod:`geohf.inference.ray`), each batch
scored into a :class:`~geohf.evaluation.accumulators.MetricsAccumulator` on its actor, the accumulators merged on
the driver in row order: the metrics the local engine prints, without gathering probabilities."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pandas as pd

from ..engines import connect_ray
from ..errors import UserError
from ..geo.sphere import haversine_km
from ..inference.ray import (
    GeoPredictorUDF,
    RayPredictOptions,
    actor_args,
    check_single_views,
    decoded_split,
    map_batches,
    read_errors,
    split_files,
    split_size,
)
from .accumulators import MetricsAccumulator, merge_all
from .evaluation import LABEL_COLUMNS, Evaluation, baseline_rows, true_classes
from .metrics import topk_hits


class EvaluationUDF(GeoPredictorUDF):
    """A model actor that scores each batch: one row per batch, its accumulators (``model`` and, with a retrieval
    index, ``model without retrieval``) as JSON, as :func:`~geohf.evaluation.evaluate` scores the split."""

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        predictor = self.predictor
        if len(batch["row"]) == 0:
            return pa.table({"state": pa.array([], pa.binary())})
        index = predictor.index
        raw = self.predictions(batch, embeddings=index is not None, retrieval=False, answer="cell")
        lat, lon = np.asarray(batch["latitude"]), np.asarray(batch["longitude"])
        n = len(lat)
        labels = pd.DataFrame({"latitude": lat, "longitude": lon})
        for column in ("country_code", "region_code", predictor.model.config.head().label_column):
            if column in batch:
                labels[column] = batch[column]
        true_class = np.asarray(true_classes(lat, lon, labels, predictor))
        empty = np.full(n, "", dtype=object)
        true_country = np.asarray(labels.get("country_code", empty), dtype=object)
        true_region = np.asarray(labels.get("region_code", empty), dtype=object)
        answered = predictor.answered(raw)
        methods = {}
        if index is not None:
            methods["model without retrieval"] = answered
            answered = predictor.answered(raw, refine=True)
        methods["model"] = answered
        located = ~(np.isnan(lat) | np.isnan(lon))
        classes, first = len(predictor.cells.names), int(batch["row"][0])
        states = {}
        for name, p in methods.items():
            ranked = p.top_index.shape[1]
            own = name == "model"
            acc = MetricsAccumulator(first, classes, ranked, (1, 3, 5, 10) if own else (1, 5))
            hits = {k: (p.top_index[:, :k] == true_class[:, None]).any(1) for k in (1, 5)} if ranked else {}
            if own:
                hits.update(topk_hits(raw.probs, true_class, (3, 10)))
            error = haversine_km(lat[located], lon[located], p.pred_latitude[located], p.pred_longitude[located])
            acc.add(error, true_class, hits, p.pred_country_code, true_country, p.pred_region_code, true_region)
            states[name] = acc
        state = json.dumps({name: acc.to_json() for name, acc in states.items()})
        return pa.table({"state": pa.array([state], pa.string())})


def read_labels(source: str, split: str, columns: list[str]) -> pd.DataFrame:
    """The ``columns`` of ``split`` that exist (no images), in row order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, files = split_files(source, split)
    tables = []
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            tables.append(parquet.read(columns=[c for c in dict.fromkeys(columns) if c in parquet.schema_arrow.names]))
    return pa.concat_tables(tables).to_pandas()


def split_sizes(source: str) -> dict[str, int]:
    """Rows per split of a dataset folder or ``hf://`` path."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(source))
    names = sorted({p.rsplit("/", 1)[-1].split("-")[0] for p in fs.glob(f"{root.rstrip('/')}/data/*.parquet")})
    return {name: split_size(*split_files(source, name)) for name in names}


def evaluate_ray(
    model: str,
    source: str,
    split: str = "test",
    image_column: str = "image",
    retrieval: bool = True,
    seed: int = 0,
    options: RayPredictOptions | None = None,
) -> Evaluation:
    """The model and the naive baselines on ``split`` of a dataset folder or ``hf://`` path, the model's batches
    predicted and scored on Ray (``options``: actors, batch size, :class:`~geohf.inference.GeoPredictor`'s
    arguments), the baselines on the driver from the splits' label columns. The same rows as
    :func:`~geohf.evaluation.evaluate`; an unreadable image is a :class:`~geohf.errors.UserError` naming it."""
    from ..inference.predictor import GeoPredictor
    from ..inference.retrieval import find_index

    options = options or RayPredictOptions()
    check_single_views(model)
    predictor = GeoPredictor(model, device="cpu", retrieval=False)  # the truth's classes and the baselines
    spec = predictor.model.config.head()
    keep = [c for c in dict.fromkeys(["country_code", "region_code", spec.label_column]) if c]
    sizes = split_sizes(source)
    if split not in sizes:
        raise UserError(f"--dataset {source} has no {split!r} split; it has {list(sizes)} (use --split)")
    if sizes[split] == 0:
        raise UserError(f"the {split!r} split is empty: nothing to evaluate")
    ray = connect_ray(options.address)
    states: dict[str, list[MetricsAccumulator]] = {}
    with tempfile.TemporaryDirectory(prefix="geohf-evaluate-errors-") as errors:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        decoded = decoded_split(ray, model, source, split, image_column, keep, options, errors)
        args = {"model": model, "batch_size": options.batch_size, "threads": options.threads, "retrieval": retrieval}
        scored = map_batches(
            decoded, EvaluationUDF, fn_constructor_kwargs={**args, **options.predictor}, batch_format="numpy",
            **actor_args(ray, options),
        )  # fmt: skip
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for blob in batch.column("state").to_pylist():
                for name, acc in json.loads(blob).items():
                    states.setdefault(name, []).append(MetricsAccumulator.from_json(acc))
        failed = read_errors(errors)
    if failed:
        name, reason = failed[0]
        raise UserError(f"{name}: {reason} ({len(failed)} unreadable images in the {split!r} split)")
    merged = merge_all(states["model"]) if "model" in states else None
    scored_rows = 0 if merged is None else merged.rows
    if scored_rows != sizes[split]:  # decode errors written on another node's disk: never a partial score
        raise UserError(
            f"{sizes[split] - scored_rows} of the {sizes[split]} images of the {split!r} split were not scored "
            "(unreadable: run geohf predict --engine ray on the split to name them)"
        )
    rows = {"model": merged.metrics()}
    if retrieval and find_index(model) is not None:
        rows["model without retrieval"] = merge_all(states["model without retrieval"]).metrics()
    labels = read_labels(source, split, [*LABEL_COLUMNS, spec.label_column])
    lat, lon = labels["latitude"].to_numpy(), labels["longitude"].to_numpy()
    true_class = true_classes(lat, lon, labels, predictor)
    empty = pd.Series([""] * len(labels))
    truth = pd.DataFrame(
        {
            "latitude": lat,
            "longitude": lon,
            "country_code": labels.get("country_code", empty).to_numpy(),
            "region_code": labels.get("region_code", empty).to_numpy(),
            "true_class": true_class,
        }
    )
    train = read_labels(source, "train", [*LABEL_COLUMNS, spec.label_column]) if "train" in sizes else None
    rows.update(baseline_rows(predictor, truth, train, seed))
    return Evaluation(split=split, sizes=sizes, rows=rows)
