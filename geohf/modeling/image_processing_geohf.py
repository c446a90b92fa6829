"""Image processor reproducing the backbone's timm eval preprocessing."""

from __future__ import annotations

from typing import Any

import timm.data
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ..images import to_rgb_image
from .remote_code import write_remote_code


class GeoImageProcessor(BaseImageProcessor):
    """Resize, centre-crop and normalise exactly as timm's eval transform for the model.

    Args:
        image_size: square output side.
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
        crop_pct: resize to ``image_size / crop_pct`` before the centre crop (1.0: no crop margin).
        image_mean, image_std: normalisation.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 224,
        interpolation: str = "bicubic",
        crop_pct: float = 1.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)
        self.image_mean = list(image_mean or [0.485, 0.456, 0.406])
        self.image_std = list(image_std or [0.229, 0.224, 0.225])
        self._transform = timm.data.create_transform(**self.data_config, is_training=False)

    @classmethod
    def from_config(cls, config) -> GeoImageProcessor:
        """The processor matching a :class:`GeoConfig`."""
        return cls(
            image_size=config.image_size,
            interpolation=config.interpolation,
            crop_pct=config.crop_pct,
            image_mean=config.image_mean,
            image_std=config.image_std,
        )

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, self.image_size, self.image_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "mean": tuple(self.image_mean),
            "std": tuple(self.image_std),
        }

    def transform(self, image: Any) -> torch.Tensor:
        """One image → (3, S, S) float tensor."""
        return self._transform(to_rgb_image(image))

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images (one, a list, or a list of lists of views) → ``pixel_values``.

        A list of lists gives (batch, views, 3, S, S) for multi-view models.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if images and isinstance(images[0], (list, tuple)):
            pixel_values = torch.stack([torch.stack([self.transform(v) for v in views]) for views in images])
        else:
            pixel_values = torch.stack([self.transform(im) for im in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_transform", None)
        # no image_processor_type: AutoImageProcessor then resolves the class from the model config —
        # geohf's registered class when geohf is imported, config.json's auto_map for remote-code users
        out.pop("image_processor_type", None)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the processor config and the code (its ``auto_map`` entry is in the model's config.json)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)
        return out
