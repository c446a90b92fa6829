"""``pipeline("image-geolocation")``: where was this photo taken?

Registered in transformers' pipeline registry when ``geohf`` is imported::

    import geohf
    from transformers import pipeline

    geo = pipeline("image-geolocation", model="runs/demo/model")
    geo("photo.jpg")                       # one image: a dict
    geo(["a.jpg", "b.jpg"], batch_size=8)  # several images: a list of dicts
    geo([["n.jpg", "e.jpg", "s.jpg"]])     # views of one place (a list inside the list)

Each result: ``pred_latitude, pred_longitude, pred_country_code, pred_country, pred_region_code,
pred_region, score, country_score, radius_km, top_k`` (a :meth:`GeoPredictions.records` row).
Inputs may be paths, URLs, PIL images or numpy arrays. ``preprocess`` decodes and resizes each
image in uint8 (cheap, and a fixed size so batches collate); ``_forward`` normalises the whole
batch at once and turns the outputs into predictions batched, so ``postprocess`` only formats
a record. The model runs in channels_last and,
where the hardware makes it fast (CUDA, or a CPU with AMX / AVX512-BF16), under bf16
autocast, as ``geohf predict`` does; ``geo(images, bf16=False)`` keeps float32.
A model folder (or Hub repo) with a retrieval index (``geohf index build``) has its coordinates
refined by it, as :class:`~geohf.inference.predictor.GeoPredictor` does; ``retrieval=False`` (to
``pipeline(...)`` or per call) turns that off.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from ..geo.places import AdminAreas
from ..modeling.image_processing_geohf import one_thread
from .images import load_pixels
from .predictions import CellTable, GeoPredictions
from .predictor import bf16_helps, forward, load_index, predictions_from_outputs

_FIELDS = ("pred_latitude", "pred_longitude", "top_index", "top_score", "radius_km", "area_row", "country_score")


def _image(item: Any) -> Any:
    """Paths and URLs decoded by :func:`load_pixels` (EXIF orientation, clear errors); arrays as they are."""
    if isinstance(item, (str, os.PathLike)):
        return load_pixels(item).pixels
    if isinstance(item, (Image.Image, np.ndarray)):
        return item
    raise TypeError(f"image-geolocation takes paths, URLs, PIL images or numpy arrays, got {type(item).__name__}")


class ImageGeolocationPipeline(Pipeline):
    """Predict coordinates, country, region and confidence radius for images (or views of one place)."""

    _load_processor = False
    _load_image_processor = True
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        mass: float | None = None,
        bf16: bool | None = None,
        timeout=None,
        retrieval: bool | None = None,
    ):
        forward = {}  # top_k and mass shape the predictions, made batched in _forward
        if retrieval is not None:
            forward["retrieval"] = retrieval
        if top_k is not None:
            forward["top_k"] = top_k
        if mass is not None:
            forward["mass"] = mass
        if bf16 is not None:
            forward["bf16"] = bf16
        return {}, forward, {}

    def preprocess(self, inputs: Any) -> dict:
        """uint8 (1, 3, S, S), or (1, views, 3, S, S) for a place: decoded, resized and cropped."""
        proc = self.image_processor
        views = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not hasattr(proc, "resize_crop"):  # another image processor: its own float pixel_values
            images = [[_image(v) for v in views]] if isinstance(inputs, (list, tuple)) else _image(inputs)
            return {"pixel_values": proc(images, return_tensors="pt")["pixel_values"]}
        groups = proc.to_uint8([_image(v) for v in views])
        groups = [groups] if isinstance(groups, torch.Tensor) else groups
        cropped = torch.cat([proc.resize_crop(g) for g in groups])
        return {"pixel_values": cropped[None] if isinstance(inputs, (list, tuple)) else cropped}

    def _forward(
        self, model_inputs: dict, bf16: bool | None = None, top_k: int = 5, mass: float = 0.5, retrieval: bool = True
    ):
        """The batch normalised at once, :func:`~geohf.inference.predictor.forward` (channels_last, bf16
        autocast where it is fast; ``bf16=False`` turns it off), predictions made for the whole batch and
        their coordinates refined by the model's retrieval index when it has one."""
        if not getattr(self, "_channels_last", False):
            self.model.to(memory_format=torch.channels_last)  # a layout: the same numbers, faster kernels
            self._channels_last = True
        bf16 = bf16_helps(str(self.device)) if bf16 is None else bf16
        pixels = model_inputs["pixel_values"]
        if pixels.dtype == torch.uint8:
            with one_thread():
                pixels = self.image_processor.normalize(pixels, self.dtype)
        refine = retrieval and self._index is not None
        out = forward(self.model, pixels, bf16, output_embeddings=refine)
        # retrieval refinement (a separate step on the head's coordinates), then the coherent answer
        pred = predictions_from_outputs(
            self.model, out, self._cells, top_k, mass, refine=self._index.refine if refine else None
        )
        # tensors only: transformers unbatches them row by row for postprocess
        return {k: None if getattr(pred, k) is None else torch.from_numpy(getattr(pred, k)) for k in _FIELDS}

    def postprocess(self, model_outputs: dict) -> dict:
        fields = {k: None if v is None else v.numpy() for k, v in model_outputs.items()}
        return GeoPredictions(cells=self._cells, areas=AdminAreas.default().table, **fields).records()[0]

    @cached_property
    def _index(self):
        """The model folder's retrieval index (``index/``), or ``None``."""
        return load_index(getattr(self.model, "name_or_path", None), self.model)

    @cached_property
    def _cells(self) -> CellTable:
        return CellTable.from_spec(self.model.config.head())


def register_pipeline() -> None:
    """Add ``image-geolocation`` to transformers' pipeline registry (idempotent)."""
    from transformers import AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    if "image-geolocation" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            "image-geolocation",
            pipeline_class=ImageGeolocationPipeline,
            pt_model=AutoModelForImageClassification,
            type="image",
        )
