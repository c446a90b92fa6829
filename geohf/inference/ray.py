"""Predictions on a Ray cluster (``--engine ray``): a split's Parquet files read row group by row group, images
decoded and preprocessed by CPU tasks, predicted by model actors (:class:`GeoPredictorUDF`, one GPU each where the
cluster has GPUs), records streamed to a Parquet folder with the columns ``geohf predict --dataset`` writes.

The split is given as a dataset folder (``data/<split>-*.parquet``, what ``geohf dataset build`` writes) or a Hub
path ``hf://datasets/<owner>/<name>[@revision]`` (read through ``huggingface_hub``'s fsspec file system). Rows are
numbered from the files' Parquet footers, so every record is named ``<split>/<row>`` as the local engine names it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engines import connect_ray
from ..errors import UserError
from .gallery import GalleryBatch
from .inputs import ImageRef, PredictItem, row_image_ref, row_truth
from .writers import output_columns, parquet_schema

RECORD_COLUMNS = output_columns(grouped=False, exif_copies=False)
"""The columns of a record: those of ``geohf predict --dataset --output FILE.parquet``."""


# ---------------------------------------------------------------- reading a split


def ray_source(dataset: str, revision: str | None = None) -> str:
    """``--dataset`` as Ray reads it: a local folder as it is, an ``hf://`` path as it is, a Hub repo id as
    ``hf://datasets/<id>[@revision]``."""
    if "://" in dataset or os.path.isdir(dataset):
        return dataset
    return f"hf://datasets/{dataset}" + (f"@{revision}" if revision else "")


def split_files(source: str, split: str) -> tuple[Any, list[str]]:
    """``(file system, Parquet files)`` of ``split`` in a dataset folder or ``hf://`` path, in row order."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(source))
    root = root.rstrip("/")
    files = sorted(fs.glob(f"{root}/data/{split}-*.parquet"))
    if not files:
        found = sorted({os.path.basename(f).split("-")[0] for f in fs.glob(f"{root}/data/*.parquet")})
        if not found:
            raise UserError(f"{source}: no data/<split>-*.parquet files (a folder written by geohf dataset build)")
        raise UserError(f"{source}: no {split!r} split; it has {found} (use --split)")
    return fs, files


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a split and the split's index of its first row: a read task."""

    path: str
    row_group: int
    first_row: int


def row_groups(fs, files: list[str]) -> list[RowGroup]:
    """Every row group of ``files`` (read from their footers only), numbered through the split."""
    import pyarrow.parquet as pq

    groups, start = [], 0
    for path in files:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            groups.append(RowGroup(path, g, start))
            start += meta.row_group(g).num_rows
    return groups


def split_size(fs, files: list[str]) -> int:
    """Rows in ``files`` (footers only)."""
    import pyarrow.parquet as pq

    total = 0
    for path in files:
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_row_groups(batch: dict[str, np.ndarray], fs, columns: list[str]) -> Any:
    """A read task: the row groups in ``batch`` as one Arrow table with a ``row`` column (the split's row index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path, g, first in zip(batch["path"], batch["row_group"], batch["first_row"]):
        with fs.open(str(path), "rb") as f:
            parquet = pq.ParquetFile(f)
            have = [c for c in columns if c in parquet.schema_arrow.names]
            table = parquet.read_row_group(int(g), columns=have)
        table = table.append_column("row", pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
        tables.append(table)
    return pa.concat_tables(tables)


def read_split(ray, source: str, split: str, columns: list[str], cpus: float = 0.5):
    """A Ray dataset of ``split``'s rows (``columns`` that exist, plus ``row``), one read task (of ``cpus``) per
    row group."""
    fs, files = split_files(source, split)
    groups = row_groups(fs, files)
    items = [{"path": g.path, "row_group": g.row_group, "first_row": g.first_row} for g in groups]
    return map_batches(
        ray.data.from_items(items, override_num_blocks=len(items)), read_row_groups, batch_size=1,
        fn_kwargs={"fs": fs, "columns": columns}, batch_format="numpy", num_cpus=cpus, max_retries=3,
    )  # fmt: skip


# ---------------------------------------------------------------- decoding


def decode_images(
    batch, processor, tta: tuple[str, ...], image_column: str, prefix: str, errors: str | None, keep: list[str]
) -> dict[str, np.ndarray]:
    """A decode task: encoded images → the model's input (``pixel_values``), the record's name, the truth and the
    EXIF fix, with the ``keep`` columns passed through. An unreadable image leaves the batch; its error goes to
    a JSON-lines file in ``errors`` (named by the batch's first row, so a retried task rewrites the same file)."""
    import fsspec

    from .photos import ImageLoadError, load_pixels

    table = batch
    images = table.column(image_column).to_pylist()
    rows = table.column("row").to_numpy()
    latitude = table.column("latitude").to_pylist() if "latitude" in table.column_names else [None] * len(rows)
    longitude = table.column("longitude").to_pylist() if "longitude" in table.column_names else [None] * len(rows)
    ok, pixels, exif, failed = [], [], [], []
    for i, (value, row) in enumerate(zip(images, rows)):
        ref = row_image_ref(value, f"{prefix}{row}")
        try:
            loaded = load_pixels(ref.name, ref.data)
        except ImageLoadError as err:
            failed.append({"row": int(row), "name": err.path, "reason": err.reason})
            continue
        ok.append(i)
        pixels.append(loaded.pixels)
        gps = loaded.gps
        exif.append((np.nan, np.nan, False) if gps is None else (gps.latitude, gps.longitude, gps.estimated))
    if failed and errors is not None:
        fs, root = fsspec.core.url_to_fs(errors)
        with fs.open(f"{root}/{int(rows[0]):012d}.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in failed)
    names = [row_image_ref(images[i], f"{prefix}{rows[i]}").name for i in ok]
    truth = [row_truth(latitude[i], longitude[i]) for i in ok]
    if pixels:
        values = processor.augmented_pixel_values(pixels, tta) if tta else processor.pixel_values(pixels)
        values = values.contiguous().numpy()
    else:
        values = np.zeros((0, 3, *processor.input_hw), dtype=np.float32)
    out = {
        "row": rows[ok],
        "name": np.asarray(names, dtype=object),
        "pixel_values": values,
        "has_truth": np.asarray([t is not None for t in truth], dtype=bool),
        "latitude": np.asarray([t[0] if t else np.nan for t in truth], dtype=np.float64),
        "longitude": np.asarray([t[1] if t else np.nan for t in truth], dtype=np.float64),
        "exif": np.asarray(exif, dtype=np.float64).reshape(len(ok), 3),
    }
    for column in keep:
        if column in table.column_names and column not in out:
            out[column] = table.column(column).to_numpy(zero_copy_only=False)[ok]
    return out


def read_errors(folder: str) -> list[tuple[str, str]]:
    """``(name, reason)`` of every unreadable image the decode tasks wrote to ``folder``, by row, each once."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    found = {}
    for path in fs.glob(f"{root}/*.jsonl"):
        with fs.open(path, "r") as f:
            for line in f:
                entry = json.loads(line)
                found[entry["row"]] = (entry["name"], entry["reason"])
    return [found[row] for row in sorted(found)]


# ---------------------------------------------------------------- the model actors


class GeoPredictorUDF:
    """A callable class for ``ray.data.Dataset.map_batches``: loads :class:`~geohf.inference.GeoPredictor` once per
    actor and turns batches of decoded images (:func:`decode_images`' columns) into records, or with
    ``embeddings=True`` into embeddings for an index (``row``, ``embedding``, ``latitude``, ``longitude``,
    ``label``: the primary head's class of the row's coordinates, as ``geohf index build`` labels them).

    ``batch_size``: images per forward; ``threads``: torch's intra-op threads in the actor (default: the CPUs Ray
    gave it, at least 1); the other arguments are :class:`~geohf.inference.GeoPredictor`'s.
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        retrieval: bool = True,
        embeddings: bool = False,
        device: str | None = None,
        top_k: int = 5,
        bf16: bool | None = None,
        mass: float = 0.5,
        answer: str | None = None,
        tta: str | tuple[str, ...] | None = None,
        threads: int | None = None,
    ):
        import torch

        from .predictor import GeoPredictor

        torch.set_num_threads(threads or actor_threads())
        self.batch_size, self.embeddings = batch_size, embeddings
        self.predictor = GeoPredictor(
            model, top_k=top_k, bf16=bf16, device=device, mass=mass, answer=answer, retrieval=retrieval, tta=tta
        )
        self.schema = parquet_schema(RECORD_COLUMNS)

    def predictions(self, batch: dict[str, np.ndarray], **kwargs):
        """The batch's :class:`~geohf.inference.GeoPredictions` (``predict_tensors``' keyword arguments), forward by
        forward of ``batch_size`` images."""
        import torch

        from .predictions import GeoPredictions

        pixel_values = torch.from_numpy(np.ascontiguousarray(batch["pixel_values"]))
        parts = [
            self.predictor.predict_tensors(pixel_values[i : i + self.batch_size], **kwargs)
            for i in range(0, len(pixel_values), self.batch_size)
        ]
        return GeoPredictions.concat(parts)

    def __call__(self, batch: dict[str, np.ndarray]):
        if self.embeddings:
            return self.embed(batch)
        return self.records(batch)

    def records(self, batch: dict[str, np.ndarray]):
        """One record per row, as ``geohf predict --dataset`` writes it (an Arrow table of :data:`RECORD_COLUMNS`)."""
        import pyarrow as pa

        from .exif import GpsFix
        from .stream import make_record

        if len(batch["row"]) == 0:
            return self.schema.empty_table()
        predictions = self.predictions(batch)
        records = []
        for i, base in enumerate(predictions.records()):
            truth = (float(batch["latitude"][i]), float(batch["longitude"][i])) if batch["has_truth"][i] else None
            lat, lon, estimated = batch["exif"][i]
            gps = None if np.isnan(lat) else GpsFix(float(lat), float(lon), bool(estimated))
            item = PredictItem([ImageRef(str(batch["name"][i]))], truth=truth)
            records.append(make_record(item, base, None, gps))
        return pa.Table.from_pylist(records, schema=self.schema)

    def embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows' pooled embeddings (float32, as the model gives them), coordinates and class."""
        predictions = self.predictions(batch, embeddings=True, retrieval=False, answer="cell")
        return {
            "row": np.asarray(batch["row"], dtype=np.int64),
            "embedding": predictions.embeddings.astype(np.float32),
            "latitude": np.asarray(batch["latitude"], dtype=np.float64),
            "longitude": np.asarray(batch["longitude"], dtype=np.float64),
            "label": row_classes(self.predictor, batch),
        }


def row_classes(predictor, batch: dict[str, np.ndarray]) -> np.ndarray:
    """The primary head's class of each row, as the local index build assigns it
    (:func:`geohf.inference.retrieval.batch_cells`)."""
    from .retrieval import batch_cells

    labels = batch.get(predictor.model.config.head().label_column)
    return batch_cells(predictor, batch["latitude"], batch["longitude"], labels)


def actor_threads() -> int:
    """torch threads for this actor: the CPUs Ray assigned it, rounded up, at least 1."""
    import math

    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, math.ceil(cpus))


# ---------------------------------------------------------------- a run


@dataclass
class RayPredictOptions:
    """How a split runs on Ray: ``actors`` model actors (each with a GPU where the cluster has GPUs, else
    ``actor_cpus`` CPUs and ``threads`` torch threads), batches of ``batch_size``, an actor restarted up to
    ``max_restarts`` times (its batches retried) when it dies."""

    batch_size: int = 32
    actors: int | None = None  # default: one per GPU of the cluster, else 1
    actor_cpus: float | None = None  # default: 1 beside a GPU, else half the cluster's CPUs shared by the actors
    threads: int | None = None
    decode_cpus: float = 0.5
    max_restarts: int = 3
    address: str | None = None
    predictor: dict[str, Any] = field(default_factory=dict)  # GeoPredictor's arguments (top_k, bf16, tta...)


def decoded_split(ray, model: str, source: str, split: str, image_column: str, keep: list[str], options, errors):
    """``split`` of ``source`` read (a task per row group) and decoded (CPU tasks): a lazy Ray dataset."""
    from ..modeling import GeoConfig, GeoImageProcessor
    from ..modeling.image_processing_geohf import parse_tta

    config = GeoConfig.from_pretrained(model)
    processor = GeoImageProcessor.from_config(config)
    tta = parse_tta(options.predictor.get("tta"))
    # the read tasks ask for other resources than the decode tasks, so Ray keeps them a stage of their own (a task
    # per row group); fused, the decode's batch size would bundle row groups into one task and the whole split
    # would reach a single actor
    columns = [image_column, "latitude", "longitude", *keep]
    rows = read_split(ray, source, split, columns, options.decode_cpus / 2)
    kwargs = {
        "processor": processor, "tta": tta, "image_column": image_column, "prefix": f"{split}/", "errors": errors,
        "keep": keep,
    }  # fmt: skip
    return map_batches(
        rows, decode_images, batch_size=options.batch_size, batch_format="pyarrow", fn_kwargs=kwargs,
        num_cpus=options.decode_cpus, **retries(options, actors=False),
    )  # fmt: skip


def actor_args(ray, options: RayPredictOptions) -> dict[str, Any]:
    """``map_batches`` arguments of the model actors: a pool of ``options.actors``, a GPU each where the cluster
    has GPUs, restarted (their batches retried) up to ``options.max_restarts`` times when one dies."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = options.actors or max(1, gpus)
    if gpus:
        resources = {"num_gpus": 1, "num_cpus": options.actor_cpus or 1}
    else:
        cpus = ray.cluster_resources().get("CPU", 1.0)  # half of them to the actors, half to read, decode, write
        resources = {"num_cpus": options.actor_cpus or max(0.1, int(100 * cpus / (2 * actors)) / 100)}
    return {
        "compute": ray.data.ActorPoolStrategy(size=actors),
        "batch_size": options.batch_size,
        **resources,
        **retries(options, actors=True),
    }


def retries(options: RayPredictOptions, actors: bool) -> dict[str, int]:
    """Bounded retries (Ray Data's default restarts a dying actor forever): an actor restarted and its batches
    retried, or a task retried, up to ``options.max_restarts`` times."""
    if actors:
        return {"max_restarts": options.max_restarts, "max_task_retries": options.max_restarts}
    return {"max_retries": options.max_restarts}


def map_batches(dataset, fn, **kwargs):
    """``dataset.map_batches``: the retry bounds have no named parameter yet, only the ``ray_remote_args``
    that Ray 2.60 warns about."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
        return dataset.map_batches(fn, **kwargs)


def check_single_views(model: str) -> None:
    """Ray predicts one image per record; a multi-view model is refused in one line."""
    from ..modeling import GeoConfig

    if GeoConfig.from_pretrained(model).views > 1:
        raise UserError(
            f"--model {model}: a multi-view model predicts places grouped by location_id; --engine ray predicts "
            "single images: use --engine local"
        )


@dataclass
class RayRun:
    """What a Ray run wrote: ``predicted`` records in ``output``; ``(name, reason)`` per unreadable image."""

    output: str
    predicted: int
    images: int
    errors: list[tuple[str, str]]


def predict_split_ray(
    model: str,
    source: str,
    output: str,
    split: str = "test",
    image_column: str = "image",
    options: RayPredictOptions | None = None,
    udf: type = GeoPredictorUDF,
) -> RayRun:
    """Predict every row of ``split`` on Ray and stream the records to the Parquet folder ``output`` (written
    into a hidden sibling folder renamed into place at the end; an existing non-empty ``output`` is refused).
    ``udf``: the actors' class (:class:`GeoPredictorUDF` or a subclass)."""
    import fsspec

    options = options or RayPredictOptions()
    ray = connect_ray(options.address)
    check_single_views(model)
    fs, target = fsspec.core.url_to_fs(str(output))
    if fs.exists(target) and fs.ls(target):
        raise UserError(f"--output {output}: a non-empty folder exists there; remove it or choose another")
    staging = f"{os.path.dirname(target.rstrip('/')) or '.'}/.{os.path.basename(target.rstrip('/'))}.partial-"
    staging += uuid.uuid4().hex[:8]
    errors = f"{staging}-errors"
    fs.makedirs(errors, exist_ok=True)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        decoded = decoded_split(ray, model, source, split, image_column, [], options, errors)
        predictor_args = {"batch_size": options.batch_size, "threads": options.threads, **options.predictor}
        records = map_batches(
            decoded, udf, fn_constructor_kwargs={"model": model, **predictor_args}, batch_format="numpy",
            **actor_args(ray, options),
        )  # fmt: skip
        records.write_parquet(staging, filesystem=_arrow_fs(fs))
        predicted = sum(_parquet_rows(fs, p) for p in fs.glob(f"{staging}/*.parquet"))
        failed = read_errors(errors)
        if fs.exists(target):
            fs.rmdir(target)  # empty (checked above)
        if _is_local(fs):
            os.replace(staging, target)
        else:
            fs.mv(staging, target, recursive=True)
    finally:
        for leftover in (staging, errors):
            if fs.exists(leftover):
                fs.rm(leftover, recursive=True)
    images = split_size(*split_files(source, split))
    unnamed = images - predicted - len(failed)
    if unnamed:  # decode errors written where this machine cannot read them: counted, never dropped silently
        failed.append((f"{split}/?", f"{unnamed} more images could not be read (their errors are not on this machine)"))
    return RayRun(str(output), predicted, images, failed)


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol


def _arrow_fs(fs):
    """A pyarrow file system for ``fs`` (``None``: the local one)."""
    if _is_local(fs):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def _parquet_rows(fs, path: str) -> int:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def iter_ray_embeddings(
    model: str,
    source: str,
    split: str = "train",
    image_column: str = "image",
    options: RayPredictOptions | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``split`` embedded on Ray, as numpy batches in row order (``row``, ``embedding`` (B, D) float32,
    ``latitude``, ``longitude``, ``label``: see :class:`GeoPredictorUDF`), for an index writer that streams them
    to disk. Unreadable images raise a :class:`~geohf.errors.UserError` naming the first."""
    import tempfile

    options = options or RayPredictOptions()
    check_single_views(model)
    ray = connect_ray(options.address)
    from ..modeling import GeoConfig

    label_column = GeoConfig.from_pretrained(model).head().label_column
    with tempfile.TemporaryDirectory(prefix="geohf-embed-errors-") as errors:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        decoded = decoded_split(ray, model, source, split, image_column, [label_column], options, errors)
        args = {"model": model, "embeddings": True, "batch_size": options.batch_size, "threads": options.threads}
        embedded = map_batches(
            decoded, GeoPredictorUDF, fn_constructor_kwargs={**args, **options.predictor}, batch_format="numpy",
            **actor_args(ray, options),
        )  # fmt: skip
        done = 0
        for batch in embedded.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            done += len(batch["row"])
            yield batch
        failed = read_errors(errors)
        if failed:
            name, reason = failed[0]
            raise UserError(f"{name}: {reason} ({len(failed)} unreadable images; an index needs every row)")
        total = split_size(*split_files(source, split))
        if done != total:  # decode errors written on another node's disk
            raise UserError(
                f"{total - done} of the {total} images of the {split!r} split were not embedded (unreadable)"
            )


def iter_ray_gallery(
    model: str, source: str, split: str = "train", image_column: str = "image", options: RayPredictOptions | None = None
) -> Iterator[GalleryBatch]:
    """:func:`iter_ray_embeddings` as the index writer's batches (:func:`geohf.inference.retrieval.write_index`)."""
    for batch in iter_ray_embeddings(model, source, split, image_column, options):
        yield GalleryBatch(batch["embedding"], batch["latitude"], batch["longitude"], batch["label"])
