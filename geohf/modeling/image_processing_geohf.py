"""Image processor reproducing the backbone's timm eval preprocessing, batched on uint8 tensors.

timm's eval transform is PIL ``Resize`` (shorter side to ``floor(image_size / crop_pct)``), ``CenterCrop``,
``ToTensor``, ``Normalize``, one image at a time. The output may be non-square (``image_size=[H, W]``), and
``resize_mode`` says how a frame of another aspect gets there: ``crop`` (the shorter side fitted, the rest
centre-cropped: timm's ``crop_mode="center"``), ``pad`` (the longer side fitted, letterboxed with the mean
colour ``round(255 * image_mean)``, about zero once normalised: timm's ``"border"``) or ``stretch`` (both
sides resized: timm's ``"squash"``). :class:`GeoImageProcessor` does the same on a batch:
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

from ..errors import UserError
from ..images import to_rgb_array, to_rgb_image
from .configuration_geohf import RESIZE_MODES, TIMM_CROP_MODES, GeoConfig
from .remote_code import write_remote_code

REFERENCE_UINT8_LEVELS = 2
"""The most uint8 levels a resized pixel differs from PIL's (torch and PIL round their fixed-point
bicubic sums differently; bilinear is exact on upsampling, within one level when downsampling)."""


def reference_tolerance(image_std) -> float:
    """Max abs difference of normalised tensors against timm's PIL transform: two uint8 levels / std."""
    return REFERENCE_UINT8_LEVELS / 255.0 / min(image_std) + 1e-5


_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


def parse_image_size(value: Any) -> int | tuple[int, int] | None:
    """``224``, ``"224"``, ``"192x336"`` (height x width) or ``[192, 336]`` → an int (square) or (H, W); a square
    ``HxW`` is an int. Raises :class:`~geohf.errors.UserError` naming the value for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = str(value).lower().replace("×", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except (TypeError, ValueError):
        sides = []
    if len(sides) not in (1, 2) or min(sides, default=0) <= 0:
        raise UserError(
            f"image size {value!r}: give one side H or HEIGHTxWIDTH in positive pixels, e.g. 224 or 192x336"
        )
    if len(sides) == 1 or sides[0] == sides[1]:
        return sides[0]
    return sides[0], sides[1]


TTA_VIEWS = ("flip", "crops")
TTA_CROP_PCT = 0.875
"""The ``crops`` views are cut from the frame resized to cover the input at 1 / 0.875 of its size."""


def parse_tta(value: Any) -> tuple[str, ...]:
    """``"flip"``, ``"crops"``, ``"flip,crops"`` (or a sequence of them; ``""``/``None``/``"none"``: off) → the
    views, in canonical order. Raises :class:`~geohf.errors.UserError` naming an unknown one."""
    if value is None or value is False:
        return ()
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if names in ([], ["none"]):
        return ()
    unknown = sorted(set(names) - set(TTA_VIEWS))
    if unknown:
        raise UserError(f"test-time augmentation {value!r}: unknown {unknown}; use flip, crops or flip,crops")
    return tuple(v for v in TTA_VIEWS if v in names)


def size_hw(image_size: Any) -> tuple[int, int]:
    """(height, width) of an ``image_size`` (an int: square)."""
    size = parse_image_size(image_size)
    return (size, size) if isinstance(size, int) else size


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
    """Resize, centre-crop (or pad, or stretch) and normalise exactly as timm's eval transform for the model.

    Args:
        image_size: square output side, or ``[height, width]``.
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
        crop_pct: resize to ``image_size / crop_pct`` before the centre crop (1.0: no crop margin).
        image_mean, image_std: normalisation.
        resize_mode: ``crop``, ``pad`` or ``stretch`` (see the module docstring).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 224,
        interpolation: str = "bicubic",
        crop_pct: float = 1.0,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        resize_mode: str = "crop",
        **kwargs,
    ):
        super().__init__(**kwargs)
        size = parse_image_size(image_size)
        self.image_size = size if isinstance(size, int) else list(size)
        if resize_mode not in RESIZE_MODES:
            raise UserError(f"resize mode {resize_mode!r}: use one of {', '.join(RESIZE_MODES)}")
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)
        self.image_mean = list(image_mean or [0.485, 0.456, 0.406])
        self.image_std = list(image_std or [0.229, 0.224, 0.225])
        self._reference = None
        self._planes: tuple[torch.Tensor, torch.Tensor] | None = None  # (scale, shift), replaced whole

    @classmethod
    def from_config(cls, config) -> GeoImageProcessor:
        """The processor matching a :class:`GeoConfig`."""
        return cls(
            image_size=config.image_size,
            interpolation=config.interpolation,
            crop_pct=config.crop_pct,
            image_mean=config.image_mean,
            image_std=config.image_std,
            resize_mode=getattr(config, "resize_mode", "crop"),
        )

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the output."""
        return size_hw(self.image_size)

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, *self.input_hw),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": TIMM_CROP_MODES[self.resize_mode],
            "mean": tuple(self.image_mean),
            "std": tuple(self.image_std),
        }

    @property
    def scale_hw(self) -> tuple[int, int]:
        """(height, width) the resize aims at before the centre crop (timm's ``floor(size / crop_pct)``)."""
        h, w = self.input_hw
        return math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)

    @property
    def scale_size(self) -> int | tuple[int, int]:
        """:attr:`scale_hw`, one int when square (the shorter side after the resize, in ``crop`` mode)."""
        sh, sw = self.scale_hw
        return sh if sh == sw else (sh, sw)

    @property
    def pad_value(self) -> list[int]:
        """The uint8 colour of a ``pad`` letterbox: the normalisation mean (timm's ``border`` fill)."""
        return [round(255 * v) for v in self.image_mean]

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

    def uint8_groups(self, images: Any) -> list[torch.Tensor]:
        """Images, or a uint8 (N, 3, H, W) tensor → uint8 batches of one size each, in the images' order."""
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4:
            return [images]
        groups = self.to_uint8(list(images))
        return [groups] if isinstance(groups, torch.Tensor) else groups

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) image is resized to before the crop or pad, as timm computes it."""
        sh, sw = self.scale_hw
        if self.resize_mode == "stretch":
            return sh, sw
        if self.resize_mode == "crop" and sh == sw:  # torchvision's Resize(int): the shorter side, truncated
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(sh * long / short)
            return (sh, new_long) if h <= w else (new_long, sh)
        ratio_h, ratio_w = h / sh, w / sw  # timm's ResizeKeepRatio: the shorter (crop) or longer (pad) side fits
        ratio = max(ratio_h, ratio_w) if self.resize_mode == "pad" else min(ratio_h, ratio_w)
        return round(h / ratio), round(w / ratio)

    def resize(self, pixels: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """uint8 (N, 3, H, W) → uint8 (N, 3, out_h, out_w): antialiased like PIL (its own NEAREST indices)."""
        h, w = pixels.shape[-2:]
        if (out_h, out_w) == (h, w):
            return pixels
        if self.interpolation == "nearest":
            return pixels[..., _pil_nearest_index(h, out_h), :][..., _pil_nearest_index(w, out_w)]
        if not pixels.is_contiguous(memory_format=torch.channels_last):
            pixels = pixels.contiguous(memory_format=torch.channels_last)  # the fast uint8 kernels' layout
        mode = _MODES.get(self.interpolation, "bicubic")
        return F.interpolate(pixels, size=(out_h, out_w), mode=mode, antialias=True, align_corners=False)

    def crop_or_pad(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, h, w) → (N, 3, H, W): padded with :attr:`pad_value` where smaller, then centre-cropped
        (timm's ``center_crop_or_pad``; torchvision's ``CenterCrop`` when nothing needs padding)."""
        th, tw = self.input_hw
        h, w = pixels.shape[-2:]
        if th > h or tw > w:
            ph, pw = max(th - h, 0), max(tw - w, 0)
            fill = torch.tensor(self.pad_value, dtype=pixels.dtype, device=pixels.device)
            out = fill.view(1, 3, 1, 1).expand(pixels.shape[0], 3, h + ph, w + pw)
            out = out.contiguous(memory_format=torch.channels_last)
            out[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w] = pixels
            pixels, (h, w) = out, out.shape[-2:]
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return pixels[..., top : top + th, left : left + tw]

    def resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) → uint8 (N, 3, S_h, S_w): the resize (antialiased) and centre crop or letterbox
        of timm's eval transform (:meth:`resized_shape`, :meth:`crop_or_pad`), on the whole batch."""
        h, w = pixels.shape[-2:]
        return self.crop_or_pad(self.resize(pixels, *self.resized_shape(h, w)))

    def augmented_crops(self, pixels: torch.Tensor, tta: tuple[str, ...]) -> torch.Tensor:
        """uint8 (N, 3, H, W) → uint8 (N, V, 3, S_h, S_w) test-time views: the eval view (:meth:`resize_crop`);
        with ``crops`` three crops along the long side (start, centre, end) of the frame resized to cover the input
        at 1 / :data:`TTA_CROP_PCT`; with ``flip`` every view above mirrored left to right too."""
        views = [self.resize_crop(pixels)]
        if "crops" in tta:
            th, tw = self.input_hw
            h, w = pixels.shape[-2:]
            sh, sw = math.floor(th / TTA_CROP_PCT), math.floor(tw / TTA_CROP_PCT)
            ratio = min(h / sh, w / sw)
            big = self.resize(pixels, max(round(h / ratio), th), max(round(w / ratio), tw))
            bh, bw = big.shape[-2:]
            wide = (bw - tw) / tw >= (bh - th) / th
            for f in (0.0, 0.5, 1.0):
                top = round((bh - th) * (0.5 if wide else f))
                left = round((bw - tw) * (f if wide else 0.5))
                views.append(big[..., top : top + th, left : left + tw])
        if "flip" in tta:
            views += [v.flip(-1) for v in views]
        return torch.stack(views, 1)

    def augmented_pixel_values(self, images: Any, tta: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Images → (N, V, 3, S_h, S_w) float test-time views (:meth:`augmented_crops`; ``tta``: see
        :func:`parse_tta`), normalised as :meth:`pixel_values`."""
        tta = parse_tta(tta)
        groups = self.uint8_groups(images)
        with one_thread():
            views = torch.cat([self.augmented_crops(g, tta) for g in groups])
            n, v = views.shape[:2]
            flat = self.normalize(views.flatten(0, 1).contiguous(memory_format=torch.channels_last), dtype)
            return flat.unflatten(0, (n, v))

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 (..., 3, S, S) → ``(x / 255 - mean) / std`` in ``dtype`` (float32), channels_last.

        On the NHWC view, against per-pixel (S, S, 3) scale and shift planes: a broadcast over the
        innermost size-3 channel dimension is not vectorised and runs several times slower. The planes are
        cached as one tuple, replaced whole: threads normalising at once (two prediction streams) read either
        the old pair or the new one, never half of each."""
        nhwc = pixels.movedim(-3, -1)
        plane = tuple(nhwc.shape[-3:])
        planes = self._planes
        if planes is None or tuple(planes[0].shape) != plane:
            std, mean = torch.tensor(self.image_std, dtype=torch.float64), torch.tensor(self.image_mean).double()
            scale = (1.0 / (255.0 * std)).float().expand(plane).contiguous()
            planes = self._planes = (scale, (-mean / std).float().expand(plane).contiguous())
        scale, shift = planes
        out = nhwc.float() if nhwc.is_contiguous() else nhwc.contiguous().float()
        torch.addcmul(shift, out, scale, out=out)  # one pass (mul_ then add_ took twice as long)
        out = out.movedim(-1, -3)
        return out if dtype in (None, torch.float32) else out.to(dtype)

    def pixel_values(self, images: list[Any], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Images → (N, 3, S, S) float, channels_last: one resize and one normalisation per batch of
        same-sized images. ``images``: PIL images, arrays, or a uint8 (N, 3, H, W) tensor."""
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):  # lanczos, box, hamming: timm's PIL path
            images = [im.permute(1, 2, 0).numpy() for im in images] if isinstance(images, torch.Tensor) else images
            out = torch.stack([self.reference_transform(im) for im in images])
            return out.contiguous(memory_format=torch.channels_last).to(dtype or torch.float32)
        groups = self.uint8_groups(images)
        if not groups:
            return torch.empty((0, 3, *self.input_hw))
        with one_thread():
            cropped = [self.resize_crop(g) for g in groups]
            batch = cropped[0] if len(cropped) == 1 else torch.cat(cropped)
            return self.normalize(batch, dtype)

    def transform(self, image: Any) -> torch.Tensor:
        """One image → (3, H, W) float tensor (the batched path for one: identical numbers)."""
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
        for key in ("_reference", "_planes"):
            out.pop(key, None)
        # no image_processor_type: AutoImageProcessor then resolves the class from the model config —
        # geohf's registered class once this module is imported, config.json's auto_map for remote-code users
        out.pop("image_processor_type", None)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the processor config and the code (its ``auto_map`` entry is in the model's config.json)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)
        return out


# Registered when geohf's own module is imported (a model folder's copy: through config.json's auto_map). One
# processor for both backends (it runs timm's transform), so no backend fallback warning.
if __name__.startswith("geohf."):
    from transformers import AutoImageProcessor

    AutoImageProcessor.register(
        GeoConfig, image_processor_classes={"pil": GeoImageProcessor, "torchvision": GeoImageProcessor}, exist_ok=True
    )
