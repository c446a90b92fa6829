"""``geohf predict`` runs: images → one record per image (or per place), streamed batch by batch.

The batches run through the one batch loop (:func:`~geohf.inference.engine.run_batches`): each is decoded
to uint8 arrays (in its stream, in threads ahead of the forward with one stream, or in DataLoader worker
processes), resized and normalised at once (:meth:`GeoImageProcessor.pixel_values`) and predicted into one
:class:`~geohf.inference.predictions.GeoPredictions` (:func:`predict_batch`); the records of each batch go
straight to the output (JSON lines, CSV or Parquet, written to a temporary file renamed into place at the
end), so memory stays flat however many images there are. Unreadable images are reported one line each and
the others still predicted.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import counted
from ..geo.sphere import haversine_km
from .engine import default_streams, run_batches
from .exif import GpsFix, write_estimated_copy
from .graph import model_state
from .inputs import ImageRef, Inputs, PredictItem
from .photos import ImageLoadError, load_pixels
from .predictions import GeoPredictions
from .predictor import GeoPredictor
from .writers import open_writer, output_columns, output_format

# ---------------------------------------------------------------- decoding


@dataclass
class LoadedItem:
    """One item decoded: a uint8 (H, W, 3) array per readable view (none if nothing could be read)."""

    index: int
    pixels: list[np.ndarray]
    views: list[str]
    gps: GpsFix | None
    errors: list[ImageLoadError]
    item: PredictItem | None = None  # the item without its encoded bytes

    @property
    def key(self) -> tuple:
        """Items predicted together: single images, or places with the same number of views."""
        return ("place", len(self.pixels)) if self.item is not None and self.item.location_id is not None else ()


class ItemDataset(torch.utils.data.Dataset):
    """Decodes items lazily to uint8 arrays; unreadable images come back as errors, never as exceptions."""

    def __init__(self, items: Sequence[PredictItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedItem:
        item = self.items[index]
        pixels, views, errors, gps = [], [], [], None
        for ref in item.images:
            try:
                loaded = load_pixels(ref.name, ref.data)
            except ImageLoadError as err:
                errors.append(err)
                continue
            pixels.append(loaded.pixels)
            views.append(ref.name)
            gps = gps or loaded.gps
        return LoadedItem(index, pixels, views, gps, errors, item.without_data())

    def batch(self, indices: Sequence[int]) -> list[LoadedItem]:
        """The items at ``indices``, decoded one after the other (in the calling thread)."""
        return [self[i] for i in indices]


# ---------------------------------------------------------------- records


@dataclass
class Prediction:
    """One predicted item: its JSON-able record and the primary head's probabilities."""

    item: PredictItem
    record: dict[str, Any]
    probs: np.ndarray
    gps: GpsFix | None = None


def make_record(
    item: PredictItem, prediction: dict[str, Any], views: list[str] | None = None, gps: GpsFix | None = None
) -> dict[str, Any]:
    """Name fields, the prediction (a :meth:`GeoPredictions.records` row), and ground truth
    (``item.truth``, else a real EXIF ``gps`` fix) with the error in km. ``views``: the files of a
    place that could be read (default: all)."""
    if item.location_id is None:
        out: dict[str, Any] = {"file": item.images[0].name}
    else:
        out = {"location_id": item.location_id, "files": views if views is not None else [r.name for r in item.images]}
    prediction = dict(prediction)
    top_k = prediction.pop("top_k")
    out.update(prediction)
    truth = None
    if item.truth is not None:
        out["true_latitude"], out["true_longitude"] = truth = item.truth
    if gps is not None and not gps.estimated:
        out["exif_latitude"], out["exif_longitude"] = round(gps.latitude, 6), round(gps.longitude, 6)
        truth = truth or (gps.latitude, gps.longitude)
    if truth is not None and out.get("pred_latitude") is not None:
        d = haversine_km(truth[0], truth[1], out["pred_latitude"], out["pred_longitude"])
        out["error_km"] = round(float(d), 1)
    out["top_k"] = top_k
    return out


@dataclass(frozen=True)
class PredictedBatch:
    """One batch of ``geohf predict``: its items as decoded (unreadable images included, as errors) and the
    predictions of those with a readable view, one row each, in input order."""

    loaded: list[LoadedItem]
    predicted: list[LoadedItem]  # the items of ``loaded`` with a readable view: the rows of ``predictions``
    predictions: GeoPredictions | None  # None: no item of the batch could be read

    @property
    def errors(self) -> list[ImageLoadError]:
        return [err for loaded in self.loaded for err in loaded.errors]

    def records(self) -> list[Prediction]:
        """Each predicted item's record (:func:`make_record`) with its probabilities, in input order."""
        if self.predictions is None:
            return []
        base, probs = self.predictions.records(), self.predictions.probs
        return [
            Prediction(loaded.item, make_record(loaded.item, row, loaded.views, loaded.gps), probs[j], loaded.gps)
            for j, (loaded, row) in enumerate(zip(self.predicted, base))
        ]


def predict_batch(predictor: GeoPredictor, batch: list[LoadedItem], state: tuple | None = None) -> PredictedBatch:
    """One decoded batch → its predictions in input order (items with no readable view get none): the step of
    ``geohf predict``'s batch loop. Places with different numbers of views are predicted in sub-batches of equal
    shape. ``state``: the model's :func:`~.graph.model_state` for the run (else read per batch)."""
    groups: dict[tuple, list[LoadedItem]] = {}
    for loaded in batch:
        if loaded.pixels:
            groups.setdefault(loaded.key, []).append(loaded)
    parts, predicted = [], []
    for key, group in groups.items():
        # the whole group resized and normalised at once (one interpolate per image size)
        predictor.check_single_views(bool(key))
        pixel_values = predictor.pixel_values([p for g in group for p in g.pixels])
        if key:  # places: (items, views, 3, S, S)
            pixel_values = pixel_values.reshape(len(group), key[1], *pixel_values.shape[1:])
        parts.append(predictor.predict_tensors(pixel_values, state=state))
        predicted += group
    if not parts:
        return PredictedBatch(batch, [], None)
    predictions = parts[0] if len(parts) == 1 else GeoPredictions.concat(parts)
    order = sorted(range(len(predicted)), key=lambda j: predicted[j].index)
    if order != list(range(len(predicted))):
        predictions, predicted = predictions.select(np.asarray(order)), [predicted[j] for j in order]
    return PredictedBatch(batch, predicted, predictions)


def iter_batches(
    predictor: GeoPredictor,
    items: Sequence[PredictItem],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    streams: int | None = None,
) -> Iterator[PredictedBatch]:
    """``items`` predicted batch by batch, in input order, through the one batch loop
    (:func:`~geohf.inference.engine.run_batches`).

    ``streams`` (default :func:`~geohf.inference.engine.default_streams`): batches decoded and predicted at
    once, each in its own thread with its share of torch's threads; with one stream (an accelerator),
    :func:`decode_threads` threads decode the next batches while the forward runs. ``num_workers``: decode in
    that many DataLoader processes instead.
    """
    streams = default_streams(predictor.device) if streams is None else max(1, streams)
    dataset = ItemDataset(items)
    loaders = decode_threads() if streams == 1 and num_workers == 0 else 0

    state = model_state(predictor.model)  # read once for the run, not per batch

    def step(batch: list[LoadedItem]) -> PredictedBatch:
        return predict_batch(predictor, batch, state)

    yield from run_batches(
        step,
        len(dataset),
        batch_size,
        streams,
        "predicting",
        progress,
        load=dataset.batch,
        loaders=loaders,
        num_workers=num_workers,
    )


def iter_predictions(
    predictor: GeoPredictor,
    items: Sequence[PredictItem],
    batch_size: int = 32,
    num_workers: int = 0,
    on_error=None,
    progress: bool = True,
    streams: int | None = None,
) -> Iterator[Prediction]:
    """Predictions in input order, item by item (:func:`iter_batches`' batches, their records made).

    Items whose images could not be read (all of their views) yield nothing; every unreadable image
    goes to ``on_error``.
    """
    for batch in iter_batches(predictor, items, batch_size, num_workers, progress, streams):
        for err in batch.errors:
            if on_error is not None:
                on_error(err)
        yield from batch.records()


def decode_threads() -> int:
    """Threads decoding batches ahead of the forward with one stream: one per core, at most 4 (libpng and PIL
    release the GIL)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


# ---------------------------------------------------------------- EXIF copies


class ExifCopier:
    """Writes each predicted location into a copy of its image under ``folder`` (originals untouched).

    Copies keep the file name; a name met twice in one run gets ``-1``, ``-2``... Images
    that are not local files, and images with a real GPS fix (better than any estimate),
    are not copied and are counted in :attr:`left_out`.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.used: set[str] = set()
        self.written = 0
        self.left_out: Counter = Counter()

    def _destination(self, source: Path) -> Path:
        name, n = source.name, 0
        while name in self.used:
            n += 1
            name = f"{source.stem}-{n}{source.suffix}"
        self.used.add(name)
        return self.folder / name

    def copy(self, prediction: Prediction) -> list[str]:
        """Copies written for one prediction; raises :class:`ImageLoadError` for one that cannot be written."""
        record = prediction.record
        if record.get("pred_latitude") is None:
            return []
        if prediction.gps is not None and not prediction.gps.estimated:
            self.left_out["with a real GPS fix in EXIF (kept, no estimate written)"] += 1
            return []
        views = set(record.get("files") or [record["file"]])
        written = []
        for ref in prediction.item.images:
            source = ref.local_path
            if ref.name not in views:
                continue
            if source is None:
                self.left_out["that are not local files (URLs, dataset rows)"] += 1
                continue
            try:
                dest = write_estimated_copy(
                    source,
                    self._destination(source),
                    record["pred_latitude"],
                    record["pred_longitude"],
                    record.get("radius_km"),
                )
            except (ValueError, OSError) as err:
                raise ImageLoadError(ref.name, f"EXIF copy not written: {err}") from err
            written.append(str(dest))
            self.written += 1
        return written


# ---------------------------------------------------------------- a whole run


@dataclass
class PredictOptions:
    """Where predictions go: ``output`` (``"-"``: stdout, ``None``: nowhere), its ``format``,
    EXIF copies into ``write_exif``, an HTML map into ``map``."""

    batch_size: int = 32
    num_workers: int = 0
    streams: int | None = None  # batches at once (geohf.inference.engine); None: the device's default
    output: str | None = None
    format: str | None = None
    write_exif: str | None = None
    map: str | None = None
    map_polygons: Any = None  # the primary head's cell polygons (GeoDataFrame) for a single image's map
    map_offline: bool = False  # inline Leaflet and draw country outlines: the HTML opens with no network
    progress: bool = True


@dataclass
class PredictionRun:
    """What a run did: counts, an error per unreadable image, notes on what was left out.

    ``records`` is filled only when asked (:func:`predict_files`); streamed runs keep nothing.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list)
    images: int = 0
    predicted: int = 0
    exif_copies: int = 0
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    map: str | None = None


def run_prediction(
    predictor: GeoPredictor,
    inputs: Inputs,
    options: PredictOptions,
    on_error=None,
    keep_records: bool = False,
) -> PredictionRun:
    """Predict every item of ``inputs`` and stream the records to the outputs in ``options``."""
    from .maps import MapPoint, prediction_map, save_map

    run = PredictionRun(images=inputs.n_images, notes=inputs.notes())

    def report(err: ImageLoadError) -> None:
        run.errors.append(err)
        if on_error is not None:
            on_error(err)

    for err in inputs.errors:
        report(err)
    grouped = any(item.location_id is not None for item in inputs.items[:1])
    copier = ExifCopier(options.write_exif) if options.write_exif else None
    points, single = [], None
    writer = None
    if options.output is not None:
        fmt = output_format(options.output, options.format)
        writer = open_writer(options.output, fmt, output_columns(grouped, copier is not None))
    estimated = 0
    try:
        batches = iter_batches(
            predictor, inputs.items, options.batch_size, options.num_workers, options.progress, options.streams
        )
        for batch in batches:
            for err in batch.errors:
                report(err)
            records = []
            for p in batch.records():
                if copier is not None:
                    try:
                        p.record["exif_copy"] = ";".join(copier.copy(p)) or None
                    except ImageLoadError as err:
                        report(err)
                        p.record["exif_copy"] = None
                    p.record["top_k"] = p.record.pop("top_k")
                estimated += bool(p.gps is not None and p.gps.estimated)
                if options.map is not None:
                    points.append(MapPoint.from_record(p.record))
                    if len(inputs.items) == 1:
                        single = p.probs
                records.append(p.record)
            if writer is not None:
                writer.write(records)
            if keep_records:
                run.records.extend(records)
            run.predicted += len(records)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
        run.output = options.output
    if copier is not None:
        run.exif_copies = copier.written
        run.notes += [f"left out {counted(n, 'image')} {reason}" for reason, n in copier.left_out.items()]
    if estimated:
        carry = "carries" if estimated == 1 else "carry"
        run.notes.append(f"{counted(estimated, 'image')} {carry} a geohf estimate in EXIF (not used as ground truth)")
    if options.map is not None:
        points = [p for p in points if p is not None]
        cells = predictor.cells if single is not None else None
        polygons = options.map_polygons if single is not None else None
        likelihood = None
        if single is not None and single.size == 0:  # a point head: a flow head draws its likelihood grid
            from .maps import flow_likelihood
            from .photos import load_image

            views = [load_image(ref.name, ref.data).image for ref in inputs.items[0].images]
            likelihood = flow_likelihood(predictor, views)
        fmap = prediction_map(points, cells, single, polygons, offline=options.map_offline, likelihood=likelihood)
        run.map = str(save_map(fmap, options.map))
    return run


def predict_files(
    predictor: GeoPredictor,
    paths: list[str | os.PathLike],
    batch_size: int = 32,
    output: str | os.PathLike | None = None,
    on_error=None,
) -> PredictionRun:
    """Predict image files and keep their records (small lists; :func:`run_prediction` streams).

    With ``output``, records are also written as JSON lines, atomically.
    """
    inputs = Inputs(items=[PredictItem([ImageRef(str(p))]) for p in paths])
    options = PredictOptions(batch_size=batch_size, output=None if output is None else str(output), format="jsonl")
    return run_prediction(predictor, inputs, options, on_error=on_error, keep_records=True)


def print_error(err: ImageLoadError) -> None:
    """``error: <file>: <reason>`` on stderr, one line (above any progress bar)."""
    tqdm.write(f"error: {err}", file=sys.stderr)
