"""Image processor reproducing the backbone's timm eval preprocessing, batched on uint8 tensors.

timm's eval transform is PIL ``Resize`` (shorter side to ``floor(image_size / crop_pct)``), ``CenterCrop``,
``ToTensor``, ``Normalize``, one image at a time. :class:`GeoImageProcessor` does the same on a batch:
uint8 (N, 3, H, W) channels_last → one antialiased ``interpolate`` in uint8 (torch's port of PIL's
fixed-point resampling) → crop → one fused scale-and-shift to float. Training's eval transform, the
pipeline and ``geohf predict`` all go through it; against timm's PIL transform the tensors differ by at
most :data:`REFERENCE_TOLERANCE` (one or two uint8 levels on a few pixels, from rounding inside the
resampling; tested in ``tests/modeling/test_modeling.py``).
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from typing import Any

import numpy as np
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ..images import to_rgb_array, to_rgb_image
from .remote_code import write_remote_code

REFERENCE_UINT8_LEVELS = 2
"""The most uint8 levels a resized pixel differs from PIL's (torch and PIL round their fixed-point
bicubic sums differently; bilinear is exact on upsampling, within one level when downsampling)."""


def reference_tolerance(image_std) -> float:
    """Max abs difference of normalised tensors against timm's PIL transform: two uint8 levels / std."""
    return REFERENCE_UINT8_LEVELS / 255.0 / min(image_std) + 1e-5


_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


@contextlib.contextmanager
def one_thread():
    """torch ops on one intra-op thread inside: the batch's resize and normalisation are a few ms, and
    splitting them across OpenMP threads made them 3× slower on two shared cores (a descheduled thread
    stalls the barrier; docs/benchmarks.md); the model's forward keeps every thread."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@lru_cache(maxsize=64)
def _pil_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """The source index of each output pixel of PIL's NEAREST resize along one axis (neither of torch's
    nearest modes rounds as PIL does): PIL resizes a row of indices, so the gather is exact."""
    row = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :], mode="I")
    return torch.from_numpy(np.asarray(row.resize((n_out, 1), Image.Resampling.NEAREST))[0].astype(np.int64))


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
        self._reference = None
        self._scale = self._shift = None

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

    @property
    def scale_size(self) -> int:
        """The shorter side after the resize, before the centre crop (timm's ``floor(size / crop_pct)``)."""
        return math.floor(self.image_size / self.crop_pct)

    def reference_transform(self, image: Any) -> torch.Tensor:
        """timm's own eval transform (PIL, one image): what :meth:`transform` reproduces, for tests."""
        if self._reference is None:
            self._reference = timm.data.create_transform(**self.data_config, is_training=False)
        return self._reference(to_rgb_image(image))

    @staticmethod
    def to_uint8(images: list[Any]) -> torch.Tensor | list[torch.Tensor]:
        """Images (PIL, HWC/CHW arrays, CHW tensors) → one uint8 (N, 3, H, W) channels_last tensor when
        they share a size, else a list of (1, 3, H, W) ones."""
        arrays = [to_rgb_array(im) for im in images]
        if len({a.shape for a in arrays}) == 1:
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return [torch.from_numpy(np.ascontiguousarray(a))[None].permute(0, 3, 1, 2) for a in arrays]

    def resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) → uint8 (N, 3, S, S): torchvision's ``Resize(scale_size)`` (shorter side,
        antialiased) and ``CenterCrop(S)`` as timm's eval transform applies them, on the whole batch."""
        h, w = pixels.shape[-2:]
        short, long = (h, w) if h <= w else (w, h)
        size = self.scale_size
        new_short, new_long = size, int(size * long / short)
        out_h, out_w = (new_short, new_long) if h <= w else (new_long, new_short)
        if (out_h, out_w) != (h, w) and self.interpolation == "nearest":
            pixels = pixels[..., _pil_nearest_index(h, out_h), :][..., _pil_nearest_index(w, out_w)]
        elif (out_h, out_w) != (h, w):
            if not pixels.is_contiguous(memory_format=torch.channels_last):
                pixels = pixels.contiguous(memory_format=torch.channels_last)  # the fast uint8 kernels' layout
            mode = _MODES.get(self.interpolation, "bicubic")
            pixels = F.interpolate(pixels, size=(out_h, out_w), mode=mode, antialias=True, align_corners=False)
        s = self.image_size
        top, left = int(round((out_h - s) / 2.0)), int(round((out_w - s) / 2.0))
        return pixels[..., top : top + s, left : left + s]

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 (..., 3, S, S) → ``(x / 255 - mean) / std`` in ``dtype`` (float32), channels_last.

        On the NHWC view, against per-pixel (S, S, 3) scale and shift planes: a broadcast over the
        innermost size-3 channel dimension is not vectorised and runs several times slower."""
        nhwc = pixels.movedim(-3, -1)
        plane = tuple(nhwc.shape[-3:])
        if self._scale is None or tuple(self._scale.shape) != plane:
            std, mean = torch.tensor(self.image_std, dtype=torch.float64), torch.tensor(self.image_mean).double()
            self._scale = (1.0 / (255.0 * std)).float().expand(plane).contiguous()
            self._shift = (-mean / std).float().expand(plane).contiguous()
        out = nhwc.float() if nhwc.is_contiguous() else nhwc.contiguous().float()
        out.mul_(self._scale).add_(self._shift)
        out = out.movedim(-1, -3)
        return out if dtype in (None, torch.float32) else out.to(dtype)

    def pixel_values(self, images: list[Any], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Images → (N, 3, S, S) float, channels_last: one resize and one normalisation per batch of
        same-sized images. ``images``: PIL images, arrays, or a uint8 (N, 3, H, W) tensor."""
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):  # lanczos, box, hamming: timm's PIL path
            images = [im.permute(1, 2, 0).numpy() for im in images] if isinstance(images, torch.Tensor) else images
            out = torch.stack([self.reference_transform(im) for im in images])
            return out.contiguous(memory_format=torch.channels_last).to(dtype or torch.float32)
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4:
            groups = [images]
        else:
            groups = self.to_uint8(list(images))
            groups = [groups] if isinstance(groups, torch.Tensor) else groups
        if not groups:
            return torch.empty((0, 3, self.image_size, self.image_size))
        with one_thread():
            cropped = [self.resize_crop(g) for g in groups]
            batch = cropped[0] if len(cropped) == 1 else torch.cat(cropped)
            return self.normalize(batch, dtype)

    def transform(self, image: Any) -> torch.Tensor:
        """One image → (3, S, S) float tensor (the batched path for one: identical numbers)."""
        return self.pixel_values([image])[0]

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """Images (one, a list, or a list of lists of views) → ``pixel_values``.

        A list of lists gives (batch, views, 3, S, S) for multi-view models.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if images and isinstance(images[0], (list, tuple)):
            counts = {len(views) for views in images}
            if len(counts) != 1:
                raise ValueError(f"every place needs the same number of views, got {sorted(counts)}")
            flat = self.pixel_values([v for views in images for v in views])
            pixel_values = flat.reshape(len(images), counts.pop(), *flat.shape[1:])
        else:
            pixel_values = self.pixel_values(images)
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("_reference", "_scale", "_shift"):
            out.pop(key, None)
        # no image_processor_type: AutoImageProcessor then resolves the class from the model config —
        # geohf's registered class when geohf is imported, config.json's auto_map for remote-code users
        out.pop("image_processor_type", None)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the processor config and the code (its ``auto_map`` entry is in the model's config.json)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)
        return out
