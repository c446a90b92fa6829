"""``pipeline("image-geolocation")``: where was this photo taken?

Registered in transformers' pipeline registry when ``geohf`` is imported::

    import geohf
    from transformers import pipeline

    geo = pipeline("image-geolocation", model="runs/demo/model")
    geo("photo.jpg")                       # one image: a dict
    geo(["a.jpg", "b.jpg"], batch_size=8)  # several images: a list of dicts
    geo([["n.jpg", "e.jpg", "s.jpg"]])     # views of one place (a list inside the list)

Each result: ``pred_latitude, pred_longitude, pred_country_code, pred_country, pred_region_code,
pred_region, score, radius_km, top_k`` (a :meth:`GeoPredictions.records` row).
Inputs may be paths, URLs, PIL images or numpy arrays. The model runs in channels_last and,
where the hardware makes it fast (CUDA, or a CPU with AMX / AVX512-BF16), under bf16
autocast, as ``geohf predict`` does; ``geo(images, bf16=False)`` keeps float32.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from ..modeling import GeoModelOutput
from .images import load_image
from .predictions import CellTable
from .predictor import bf16_helps, forward, predictions_from_outputs


def _image(item: Any) -> Any:
    """Paths and URLs decoded by :func:`load_image` (EXIF orientation, clear errors); arrays as they are."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(item).image
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
        self, top_k: int | None = None, mass: float | None = None, bf16: bool | None = None, timeout=None
    ):
        post, forward = {}, {}
        if top_k is not None:
            post["top_k"] = top_k
        if mass is not None:
            post["mass"] = mass
        if bf16 is not None:
            forward["bf16"] = bf16
        return {}, forward, post

    def preprocess(self, inputs: Any) -> dict:
        if isinstance(inputs, (list, tuple)):  # views of one place
            pixel_values = self.image_processor([[_image(v) for v in inputs]], return_tensors="pt")["pixel_values"]
        else:
            pixel_values = self.image_processor(_image(inputs), return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values.to(self.dtype) if self.dtype is not None else pixel_values}

    def _forward(self, model_inputs: dict, bf16: bool | None = None):
        """:func:`~geohf.inference.predictor.forward`: channels_last, bf16 autocast where it is fast
        (``bf16=False`` turns it off)."""
        if not getattr(self, "_channels_last", False):
            self.model.to(memory_format=torch.channels_last)  # a layout: the same numbers, faster kernels
            self._channels_last = True
        bf16 = bf16_helps(str(self.device)) if bf16 is None else bf16
        out = forward(self.model, model_inputs["pixel_values"], bf16)
        return GeoModelOutput(logits=out.logits, coordinates=out.coordinates)  # tensors only: batches unbatch

    def postprocess(self, model_outputs, top_k: int = 5, mass: float = 0.5) -> dict:
        return predictions_from_outputs(self.model, model_outputs, self._cells, top_k, mass).records()[0]

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
