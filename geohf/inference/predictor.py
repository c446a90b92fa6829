"""Batched prediction: images → coordinates, country, region, top-k classes with scores.

Everything is read from the model folder (config with cell centroids and their majority
country/region, image processor), so inference needs no boundaries and no dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import GeoCollator, ViewGroups, example_transform, location_groups
from ..errors import UserError, one_line
from ..modeling import GeoImageProcessor, GeoModelForImageGeolocation
from ..modeling.configuration_geohf import HeadSpec
from ..modeling.image_processing_geohf import parse_tta
from .answers import coherent
from .engine import default_streams, run_batches
from .graph import graph_forward, model_state
from .predictions import CellTable, GeoPredictions


def load_index(source: str | None, model=None):
    """The retrieval index saved with a model folder or Hub repo (``index/``), or ``None``; checked against
    ``model`` when given (an index of another model is a one-line :class:`~geohf.errors.UserError`)."""
    from .retrieval import GeoIndex, find_index

    folder = find_index(source)
    if folder is None:
        return None
    index = GeoIndex.load(folder)
    if model is not None:
        index.check(model, where=f"{source}/index")
    return index


def check_model_folder(folder: str | os.PathLike) -> list[str]:
    """Refuse a local model folder whose files cannot be what ``save_pretrained`` wrote.

    Each problem is a :class:`~geohf.errors.UserError` of one line naming the file: ``config.json``
    missing or not valid JSON, ``model.safetensors`` (or a shard) truncated or not a safetensors file,
    the cell partition ``cells/<name>.parquet`` the config's geocell head names missing or unreadable.
    Returns the warnings for a folder whose weights are only a pickled ``pytorch_model.bin``: that is
    loaded with ``weights_only=True`` (tensors only, no code runs; anything else in the pickle is refused).
    """
    from safetensors import safe_open

    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{config_path}: missing, so {folder} is not a model folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{config_path}: not valid JSON ({one_line(err)}); the model folder is damaged") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: not a model config (a JSON object is expected)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{index}: not a safetensors index ({one_line(err)})") from None
    else:
        shards = ["model.safetensors"] if (folder / "model.safetensors").exists() else []
    notes = []
    if not shards:
        pickled = folder / "pytorch_model.bin"
        if not pickled.is_file():
            raise UserError(f"{folder / 'model.safetensors'}: missing; the model folder has no weights")
        notes.append(
            f"{pickled}: pickled weights (no model.safetensors); loading them with torch.load(weights_only=True), "
            "which reads tensors only. Re-save the model (save_pretrained) to get model.safetensors."
        )
    for name in shards:
        path = folder / name
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except FileNotFoundError:
            raise UserError(f"{path}: missing (listed in {index.name})") from None
        except Exception as err:  # noqa: BLE001 - SafetensorError (truncated, not safetensors) or OSError
            raise UserError(
                f"{path}: unreadable weights ({one_line(err)}); the file is truncated or damaged, copy it again"
            ) from None
    partitions = {}
    heads = config.get("heads")
    for head in heads if isinstance(heads, list) else []:
        try:
            spec = HeadSpec.from_dict(head)
        except (TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{config_path}: a head that is not a geohf head ({one_line(err)})") from None
        if spec.partition:
            partitions.setdefault(spec.partition, spec.name)
    for partition, head in partitions.items():
        cells = folder / "cells" / f"{partition}.parquet"
        if not cells.is_file():
            raise UserError(
                f"{cells}: missing; the model's {head!r} head classifies these cells "
                "(save_pretrained writes it: copy the whole model folder)"
            )
        try:
            import pyarrow.parquet as pq

            pq.read_metadata(cells)
        except Exception as err:  # noqa: BLE001 - ArrowInvalid for a truncated or foreign file
            raise UserError(f"{cells}: unreadable cell partition ({one_line(err)}); copy it again") from None
    return notes


def load_model(source: str, **kwargs) -> GeoModelForImageGeolocation:
    """``GeoModelForImageGeolocation.from_pretrained(source)`` whose failures are one-line
    :class:`~geohf.errors.UserError` naming the file (see :func:`check_model_folder` for a local folder);
    pickled weights load only with ``weights_only=True``, with a warning naming the file."""
    if Path(source).is_dir():
        for note in check_model_folder(source):
            warnings.warn(note, UserWarning, stacklevel=2)
    kwargs["weights_only"] = True
    try:
        return GeoModelForImageGeolocation.from_pretrained(source, **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - SafetensorError, UnpicklingError, OSError, JSON errors
        import pickle

        from safetensors import SafetensorError

        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            import re

            found = re.search(r"unsupported GLOBAL [\w.]+", str(err))
            what = found.group(0) if found else "objects that are not tensors"
            name = Path(source, "pytorch_model.bin") if Path(source).is_dir() else source
            raise UserError(
                f"{name}: refused, the pickle holds more than tensors ({what}); torch.load(weights_only=True) "
                "will not run it, and geohf never loads weights with weights_only=False"
            ) from None
        if isinstance(err, (SafetensorError, OSError, ValueError)):
            raise UserError(f"{source}: cannot load the model ({one_line(err)})") from None
        raise


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_helps(device: str | None = None) -> bool:
    """Whether bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AMX / AVX512-BF16."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CPU/CUDA when asked, a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def forward(
    model, pixel_values: torch.Tensor, bf16: bool, channels_last: bool = True, state: tuple | None = None, **kwargs
):
    """The one inference forward of geohf (predictor and pipeline): channels_last images, bf16 autocast
    when asked and the model is float32 (one loaded with ``dtype=`` runs as loaded). On a CPU, single
    views at inference run as the model's traced graph once it is checked (:mod:`.graph`): the same
    numbers, without holding the GIL. ``state``: the model's :func:`~.graph.model_state` for a run of
    batches, taken once by the caller (else per batch)."""
    device = next(model.parameters()).device
    pixel_values = pixel_values.to(device)
    if channels_last and pixel_values.ndim == 4:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)

    def eager(x: torch.Tensor):
        return model(pixel_values=x, **kwargs)

    with autocast(device, bf16 and model.dtype == torch.float32):
        single_views = pixel_values.ndim == 4 and set(kwargs) <= {"output_embeddings"}
        if device.type == "cpu" and single_views and not model.training and not torch.is_grad_enabled():
            return graph_forward(model, pixel_values, eager, state, **kwargs)
        return eager(pixel_values)


def predictions_from_outputs(
    model,
    outputs,
    cells: CellTable,
    top_k: int = 5,
    mass: float | None = 0.5,
    answer: str | None = None,
    refine: Callable[[GeoPredictions], GeoPredictions] | None = None,
) -> GeoPredictions:
    """Model outputs → :class:`GeoPredictions`: coordinates, top-k classes, probabilities, radius, embeddings,
    and the country and region the coordinates lie in (:func:`~geohf.inference.answers.coherent`, by
    ``answer`` or the model's ``config.answer``). ``refine`` (a retrieval index's) moves the head's
    coordinates first; the answer is then named from the refined point.

    A regression-only model has no classes: its top-k arrays are empty.
    """
    n = outputs.coordinates.shape[0] if outputs.coordinates is not None else outputs.logits.shape[0]
    if not model.config.head().is_classifier:
        probs = torch.zeros((n, 0))
    else:
        probs = torch.softmax(outputs.logits.float(), dim=-1)
    score, index = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    radius = None
    if outputs.coordinates is not None:
        coords = outputs.coordinates.float()
        lat, lon = coords[:, 0].cpu().numpy(), coords[:, 1].cpu().numpy()
        primary = model.heads[model.config.primary_head]
        if mass is not None and getattr(primary, "has_coordinates", False) and hasattr(primary, "confidence_radius"):
            radius = primary.confidence_radius(outputs.logits, coords, mass).cpu().numpy()
    else:
        lat = lon = np.full(n, np.nan)
    embeddings = getattr(outputs, "embeddings", None)
    raw = GeoPredictions(
        pred_latitude=lat.astype(np.float64),
        pred_longitude=lon.astype(np.float64),
        top_index=index.cpu().numpy(),
        top_score=score.cpu().numpy().astype(np.float64),
        cells=cells,
        radius_km=radius,
        probs=probs.cpu().numpy(),
        embeddings=None if embeddings is None else embeddings.float().cpu().numpy(),
    )
    return answer_predictions(model, raw, answer, refine)


def answer_predictions(
    model,
    raw: GeoPredictions,
    answer: str | None = None,
    refine: Callable[[GeoPredictions], GeoPredictions] | None = None,
) -> GeoPredictions:
    """The head's raw predictions (``answer="cell"``), refined by ``refine`` when given, then answered
    coherently by ``answer`` (default: the model's ``config.answer``)."""
    if refine is not None:
        raw = refine(raw)
    config = model.config
    answer = answer or config.answer
    return raw if answer == "cell" else coherent(raw, answer, config.coordinate_top_k, keep=refine is not None)


class GeoPredictor:
    """Runs a geohf model on batches and turns outputs into geographic predictions.

    Args:
        model: a :class:`GeoModelForImageGeolocation` (or a folder / Hub id to load one).
        processor: its image processor (default: built from the model config).
        top_k: how many classes to report per image.
        bf16: bf16 autocast (default: where it is fast, see :func:`bf16_helps`);
            ``channels_last``: NHWC layout (both faster on recent CPUs).
        mass: probability mass of the reported confidence radius.
        answer: ``point`` or ``hierarchical`` (default: the model's ``config.answer``), see
            :mod:`geohf.inference.answers`.
        retrieval: refine coordinates with the model folder's retrieval index (``index/``, written by
            ``geohf index build``; PIGEON-style, see :mod:`geohf.inference.retrieval`) when it has one;
            ``False`` never refines; a :class:`~geohf.inference.retrieval.GeoIndex` uses that index.
        tta: test-time augmentation: ``"flip"`` (the mirrored view too), ``"crops"`` (three crops along the
            long side too), ``"flip,crops"``; the views' class log-probabilities are averaged
            (:meth:`GeoImageProcessor.augmented_crops`). Off by default: each view costs a forward.
    """

    def __init__(
        self,
        model: GeoModelForImageGeolocation | str,
        processor: GeoImageProcessor | None = None,
        top_k: int = 5,
        bf16: bool | None = None,
        channels_last: bool = True,
        device: str | None = None,
        mass: float = 0.5,
        answer: str | None = None,
        retrieval=True,
        tta: str | tuple[str, ...] | None = None,
    ):
        self.tta = parse_tta(tta)
        self.source = model if isinstance(model, str) else getattr(model, "name_or_path", None)
        if isinstance(model, str):
            model = load_model(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.processor = processor or GeoImageProcessor.from_config(model.config)
        bf16 = bf16_helps(self.device.type) if bf16 is None else bf16
        self.top_k, self.bf16, self.channels_last, self.mass = top_k, bf16, channels_last, mass
        self.answer = answer
        self.cells = CellTable.from_spec(model.config.head())
        if retrieval is True:  # the model folder's index, if it has one (checked against the model)
            self.index = load_index(self.source, model)
        else:
            self.index = retrieval or None
            if self.index is not None:
                self.index.check(model)

    def answered(self, raw: GeoPredictions, refine: bool = False) -> GeoPredictions:
        """Raw predictions (``answer="cell"``) answered as this predictor answers, refined by its index
        first when ``refine``."""
        return answer_predictions(self.model, raw, self.answer, self.index.refine if refine else None)

    @torch.inference_mode()
    def predict_tensors(
        self,
        pixel_values: torch.Tensor,
        embeddings: bool = False,
        retrieval: bool = True,
        answer: str | None = None,
        view_mask: torch.Tensor | None = None,
        state: tuple | None = None,
    ) -> GeoPredictions:
        """Predictions for a preprocessed batch (``embeddings=True`` keeps the pooled embeddings;
        ``retrieval=False`` skips the index's refinement of the coordinates; ``answer`` overrides the
        predictor's, ``"cell"`` for the head's raw answer; ``view_mask`` marks padded views of places; ``state``:
        the model's :func:`~.graph.model_state`, read once for a run of batches). With ``tta`` a
        (B, V, 3, H, W) batch is the augmented views of :meth:`pixel_values`, not the views of a place."""
        refine = retrieval and self.index is not None
        extra = {"augmented_views": True} if self.tta and pixel_values.ndim == 5 else {}
        if view_mask is not None:
            extra["view_mask"] = view_mask.to(self.device)
        out = forward(
            self.model,
            pixel_values,
            self.bf16,
            self.channels_last,
            state,
            output_embeddings=embeddings or refine,
            **extra,
        )
        predictions = predictions_from_outputs(
            self.model,
            out,
            self.cells,
            self.top_k,
            self.mass,
            answer or self.answer,
            self.index.refine if refine else None,
        )
        if refine and not embeddings:
            predictions = replace(predictions, embeddings=None)
        return predictions

    def pixel_values(self, images: Any) -> torch.Tensor:
        """Images → the model's input: (N, 3, H, W), or with ``tta`` (N, V, 3, H, W) augmented views."""
        if self.tta:
            return self.processor.augmented_pixel_values(images, self.tta)
        return self.processor.pixel_values(images)

    def transform(self, image: Any) -> torch.Tensor:
        """One image → (3, H, W), or with ``tta`` (V, 3, H, W): a dataset transform."""
        return self.pixel_values([image])[0]

    def check_single_views(self, places: bool) -> None:
        """Refuse test-time augmentation of places given as several views (one line)."""
        if places and self.tta:
            raise UserError(
                "test-time augmentation (--tta) applies to single images; places of several views "
                "are fused by the model already: drop --tta or predict the views one by one"
            )

    def predict_images(self, images: list[Any], retrieval: bool = True) -> GeoPredictions:
        """Predict a list of PIL images / arrays (one batch); a list of lists is several views per place."""
        places = bool(images) and isinstance(images[0], (list, tuple))
        self.check_single_views(places)
        if self.tta:
            return self.predict_tensors(self.pixel_values(images), retrieval=retrieval)
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return self.predict_tensors(pixel_values, retrieval=retrieval)

    def iter_dataset(
        self,
        dataset,
        image_column: str = "image",
        batch_size: int = 64,
        desc: str = "predicting",
        embeddings: bool = False,
        retrieval: bool = True,
        answer: str | None = None,
        streams: int | None = None,
        progress: bool = True,
    ) -> Iterator[GeoPredictions]:
        """Predictions for the rows of a ``datasets.Dataset``, one batch at a time, in row order, with its
        ``latitude``/``longitude`` as truth: the streamed form of :meth:`predict_dataset` (memory stays that
        of a few batches however many rows and classes there are).

        A multi-view model (``config.views`` > 1) on a split with ``location_id`` predicts one place per
        group of rows, grouped as training grouped them (:class:`~geohf.data.transforms.ViewGroups`
        without a seed: the first ``views`` views, fewer repeated and masked); the truth is each place's
        first row. :meth:`place_groups` gives the groups, in the order of the predictions. ``streams``:
        batches run at once (:func:`~geohf.inference.engine.default_streams` by default)."""
        if len(dataset) == 0:
            raise ValueError("the dataset split is empty: nothing to predict")
        data = dataset.with_transform(example_transform(self.transform, [], None, image_column))
        groups = self.place_groups(dataset)
        if groups is not None:
            self.check_single_views(True)
            data = ViewGroups(data, groups, self.model.config.views, location_ids=dataset["location_id"])
        truth = None
        if {"latitude", "longitude"} <= set(dataset.column_names):
            frame = dataset.select_columns(["latitude", "longitude"]).to_pandas()
            truth = frame["latitude"].to_numpy(np.float64), frame["longitude"].to_numpy(np.float64)
            if groups is not None:
                firsts = [g[0] for g in groups]
                truth = truth[0][firsts], truth[1][firsts]
        collate = GeoCollator(channels_last=False)
        state = model_state(self.model)  # read once for the run, not per batch

        def step(indices: list[int]) -> GeoPredictions:
            batch = collate([data[i] for i in indices])
            predictions = self.predict_tensors(
                batch["pixel_values"], embeddings, retrieval, answer, batch.get("view_mask"), state
            )
            return predictions if truth is None else predictions.with_truth(truth[0][indices], truth[1][indices])

        streams = default_streams(self.device) if streams is None else streams
        unit = "img" if groups is None else "place"
        yield from run_batches(step, len(data), batch_size, streams, desc, progress, unit)

    def predict_dataset(self, dataset, **kwargs) -> GeoPredictions:
        """Predictions for every row of a ``datasets.Dataset`` gathered in memory (probabilities and, when
        asked, embeddings included): :meth:`iter_dataset`'s batches (its keyword arguments) concatenated. For
        large splits, consume :meth:`iter_dataset` batch by batch instead."""
        return GeoPredictions.concat(list(self.iter_dataset(dataset, **kwargs)))

    def prediction_count(self, dataset) -> int:
        """How many predictions :meth:`iter_dataset` makes for ``dataset``: one per place (see
        :meth:`place_groups`) or one per row."""
        groups = self.place_groups(dataset)
        return len(dataset) if groups is None else len(groups)

    def place_groups(self, dataset) -> list[list[int]] | None:
        """The split's row indices per place when this model predicts places (``config.views`` > 1 and a
        ``location_id`` column), else ``None`` (one prediction per row)."""
        if self.model.config.views <= 1 or "location_id" not in dataset.column_names:
            return None
        return location_groups(dataset)


def predict(
    model, inputs, batch_size: int = 64, top_k: int = 5, bf16: bool | None = None, retrieval: bool = True, **kwargs
) -> GeoPredictions:
    """Predict ``inputs`` with ``model`` (a model, a :class:`GeoPredictor`, or a model folder / Hub id).

    ``inputs``: a ``datasets.Dataset`` split (its ``latitude``/``longitude`` become the truth), or a
    list of image paths, URLs, PIL images or arrays. An unreadable file raises
    :class:`~geohf.images.ImageLoadError` naming it (``geohf predict`` reports and skips them instead).
    ``retrieval=False``: the head's coordinates, not refined by the model folder's retrieval index.
    ``tta="flip"`` / ``"crops"`` / ``"flip,crops"``: test-time augmentation (see :class:`GeoPredictor`).
    """
    tta = kwargs.pop("tta", None)
    if isinstance(model, GeoPredictor):
        predictor = model
    else:
        predictor = GeoPredictor(model, top_k=top_k, bf16=bf16, retrieval=retrieval, tta=tta)
    if hasattr(inputs, "column_names"):
        return predictor.predict_dataset(inputs, batch_size=batch_size, retrieval=retrieval, **kwargs)
    from .photos import load_image

    items = [load_image(x).image if isinstance(x, (str, os.PathLike)) else x for x in inputs]
    parts = [predictor.predict_images(items[i : i + batch_size], retrieval) for i in range(0, len(items), batch_size)]
    return GeoPredictions.concat(parts)
