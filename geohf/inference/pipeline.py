"""``pipeline("image-geolocation")``: where was this photo taken?

Registered in transformers' pipeline registry when this module is imported (``geohf.register()`` does it, as
does ``geohf.ImageGeolocationPipeline``), with geohf's Auto classes::

    import geohf
    from transformers import pipeline

    geohf.register()

    geo = pipeline("image-geolocation", model="runs/demo/model")
    geo("photo.jpg")                       # one image: a dict
    geo(["a.jpg", "b.jpg"], batch_size=8)  # several images: a list of dicts
    geo([["n.jpg", "e.jpg", "s.jpg"]])     # views of one place (a list inside the list)

Each result: ``pred_latitude, pred_longitude, pred_country_code, pred_country, pred_region_code,
pred_region, score, country_score, radius_km, top_k`` (a :meth:`GeoPredictions.records` row).
Inputs may be paths, URLs, PIL images or numpy arrays. The pipeline keeps to transformers' four hooks and
batches through transformers' own iterator (``batch_size``; ``num_workers`` DataLoader processes decode):
``preprocess`` only decodes each image to uint8; ``_forward`` resizes and normalises the whole batch at once
(as ``geohf predict`` does) and turns the outputs into predictions and records batched, so ``postprocess``
only hands one out.
The model runs in channels_last and,
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

from ..images import to_rgb_array
from .graph import model_state
from .photos import load_pixels
from .predictions import CellTable
from .predictor import bf16_helps, forward, load_index, predictions_from_outputs


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.to(memory_format=torch.channels_last)  # a layout: the same numbers, faster kernels

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        mass: float | None = None,
        bf16: bool | None = None,
        timeout=None,
        retrieval: bool | None = None,
    ):
        """The call's parameters; transformers calls this once per call, so the model's state (which tensors and
        modules its traced graph was made from, :func:`~.graph.model_state`) is read here once, not per batch."""
        model = getattr(self, "model", None)  # (None while the pipeline is being made)
        forward = {"state": None if model is None else model_state(model)}
        # top_k and mass shape the predictions, made batched in _forward
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
        """The image (or a place's views) decoded to uint8 (H, W, 3) arrays: arrays, not tensors, so that
        transformers' collation hands ``_forward`` the batch as a list, resized and normalised there at once."""
        views = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not hasattr(self.image_processor, "resize_crop"):  # another image processor: its own pixel_values
            images = [[_image(v) for v in views]] if isinstance(inputs, (list, tuple)) else _image(inputs)
            return {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}
        return {"images": [to_rgb_array(_image(v)) for v in views], "place": isinstance(inputs, (list, tuple))}

    def _pixel_values(self, model_inputs: dict) -> torch.Tensor:
        """(B, 3, S, S), or (B, V, 3, S, S) for places: the batch's images resized and normalised at once."""
        if "pixel_values" in model_inputs:
            return model_inputs["pixel_values"]
        images, place = model_inputs["images"], model_inputs["place"]
        if isinstance(place, bool):  # batch_size=1: not collated
            images, place = [images], [place]
        if any(place):  # the processor's own grouping of views (and its error for unequal counts)
            return self.image_processor.preprocess(images)["pixel_values"].to(self.dtype)
        return self.image_processor.pixel_values([v for views in images for v in views], self.dtype)

    def _forward(
        self,
        model_inputs: dict,
        state: tuple | None = None,
        bf16: bool | None = None,
        top_k: int = 5,
        mass: float = 0.5,
        retrieval: bool = True,
    ):
        """The batch resized and normalised at once, :func:`~geohf.inference.predictor.forward` (channels_last,
        bf16 autocast where it is fast; ``bf16=False`` turns it off; ``state``: the model's, read once per
        call), predictions made for the whole batch and their coordinates refined by the model's retrieval
        index when it has one, and their records."""
        bf16 = bf16_helps(str(self.device)) if bf16 is None else bf16
        pixels = self._pixel_values(model_inputs)
        refine = retrieval and self._index is not None
        out = forward(self.model, pixels, bf16, state=state, output_embeddings=refine)
        # retrieval refinement (a separate step on the head's coordinates), then the coherent answer
        pred = predictions_from_outputs(
            self.model, out, self._cells, top_k, mass, refine=self._index.refine if refine else None
        )
        # an object array: transformers unbatches it row by row for postprocess and leaves it as it is otherwise
        records = np.empty(len(pred.pred_latitude), dtype=object)
        records[:] = pred.records()
        return {"records": records}

    def postprocess(self, model_outputs: dict) -> dict:
        records = model_outputs["records"]
        return records if isinstance(records, dict) else records[0]

    @cached_property
    def _index(self):
        """The model folder's retrieval index (``index/``), or ``None``."""
        return load_index(getattr(self.model, "name_or_path", None), self.model)

    @cached_property
    def _cells(self) -> CellTable:
        return CellTable.from_spec(self.model.config.head())


def register_pipeline() -> None:
    """Add ``image-geolocation`` to transformers' pipeline registry (idempotent; importing this module does it)."""
    from transformers import AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    from ..modeling import register_auto_classes

    register_auto_classes()  # the task's model class loads geohf folders

    if "image-geolocation" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            "image-geolocation",
            pipeline_class=ImageGeolocationPipeline,
            pt_model=AutoModelForImageClassification,
            type="image",
        )


register_pipeline()
