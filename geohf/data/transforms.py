"""Image transforms and batch collation for training and evaluation.

Eval preprocessing is the model's :class:`~geohf.modeling.GeoImageProcessor` (timm's eval
transform), so Trainer evaluation, ``pipeline`` and ``geohf predict`` see identical
tensors. Training augmentations are opt-in and applied on the fly with
``Dataset.set_transform``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from ..errors import UserError
from ..images import to_rgb_image

if TYPE_CHECKING:  # the processor is passed in: data sits below modeling
    from ..geo.cells import CellPartition
    from ..modeling.configuration_geohf import HeadSpec
    from ..modeling.image_processing_geohf import GeoImageProcessor

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass
class AugmentConfig:
    """Training augmentations; all off by default (the eval transform is used as is)."""

    random_resized_crop: float = 0.0
    """Smallest crop area kept by RandomResizedCrop (0: off)."""
    rotation: float = 0.0
    """Maximum random rotation in degrees (e.g. 10)."""
    color_jitter: float = 0.0
    """Brightness / contrast / saturation jitter strength (hue gets a quarter)."""
    grayscale: float = 0.0
    """Probability of converting to grayscale."""
    perspective: float = 0.0
    """Distortion scale of RandomPerspective (applied with probability 0.5)."""
    hflip: float = 0.0
    """Probability of a horizontal flip (off: mirrored scenes are other places)."""
    downscale: float = 0.0
    """Largest factor of a random downscale then upscale back of the source image (e.g. 3; 0: off)."""
    jpeg_quality: int = 0
    """Lowest quality of a random JPEG re-compression (quality drawn in [this, 95]; 0: off)."""
    blur: float = 0.0
    """Largest Gaussian blur sigma, in source pixels (0: off)."""
    white_balance: float = 0.0
    """Largest per-channel gain change of a white-balance / colour-cast shift (0.1: gains in 0.9-1.1)."""

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f) > 0 for f in self.__dataclass_fields__)

    @property
    def degrades(self) -> bool:
        """Any camera degradation on (:class:`CameraDegrade`)."""
        return any(getattr(self, f) > 0 for f in DEGRADATIONS)

    @property
    def geometric(self) -> bool:
        """Any augmentation other than the camera degradations on (crops, rotation, colour, flips)."""
        return any(getattr(self, f) > 0 for f in self.__dataclass_fields__ if f not in DEGRADATIONS)

    @classmethod
    def camera(cls) -> AugmentConfig:
        """What photo collections vary in: resolution (up to 3x coarser), JPEG quality, focus, white balance."""
        return cls(downscale=3.0, jpeg_quality=30, blur=1.0, white_balance=0.1)


DEGRADATIONS = ("downscale", "jpeg_quality", "blur", "white_balance")
"""The :class:`AugmentConfig` fields of :class:`CameraDegrade`."""
DEGRADE_P = 0.5
"""Each camera degradation is applied independently with this probability."""

_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.BOX)


class CameraDegrade:
    """Random camera / imagery degradations of a source image, drawn from torch's RNG (so
    :class:`SeededDataset` makes them reproducible): white balance, blur, resolution, JPEG."""

    def __init__(self, augment: AugmentConfig):
        self.augment = augment

    @staticmethod
    def _draw() -> float:
        return float(torch.rand(()))

    def __call__(self, image: Image.Image) -> Image.Image:
        a = self.augment
        if a.white_balance > 0 and self._draw() < DEGRADE_P:
            gains = 1.0 + (2.0 * torch.rand(3).numpy() - 1.0) * a.white_balance
            pixels = np.asarray(image, dtype=np.float32) * gains.astype(np.float32)
            image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        if a.blur > 0 and self._draw() < DEGRADE_P:
            image = image.filter(ImageFilter.GaussianBlur(radius=0.1 + self._draw() * (a.blur - 0.1)))
        if a.downscale > 1 and self._draw() < DEGRADE_P:
            factor = 1.0 + self._draw() * (a.downscale - 1.0)
            w, h = image.size
            small = (max(1, round(w / factor)), max(1, round(h / factor)))
            down, up = _RESAMPLE[int(self._draw() * 3) % 3], _RESAMPLE[int(self._draw() * 2) % 2]
            image = image.resize(small, down).resize((w, h), up)
        if a.jpeg_quality > 0 and self._draw() < DEGRADE_P:
            quality = int(a.jpeg_quality + self._draw() * (95 - a.jpeg_quality))
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            with Image.open(buf) as reread:
                image = reread.convert("RGB")
        return image


class EvalGeometry:
    """PIL image → PIL image of the processor's eval geometry (its resize and centre crop, letterbox or
    stretch to (H, W)): the deterministic part of the training transform, the same pixels as evaluation."""

    def __init__(self, processor: GeoImageProcessor):
        self.processor = processor

    def __call__(self, image):
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]
        out = self.processor.resize_crop(pixels)[0].permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(out)


class RandomFrameCrop:
    """A random crop of ``scale`` of the frame's area whose aspect is the frame's own times up to 4/3 either
    way, left at its size: the ``pad`` / ``stretch`` analogue of RandomResizedCrop (the processor's
    geometry then fits the whole crop, so the full-frame view stays the training distribution)."""

    def __init__(self, scale: tuple[float, float]):
        self.scale = scale

    def __call__(self, image):
        w, h = image.size
        aspect = w / h
        top, left, ch, cw = T.RandomResizedCrop.get_params(image, self.scale, (aspect * 3 / 4, aspect * 4 / 3))
        return image.crop((left, top, left + cw, top + ch))


def train_transform(
    processor: GeoImageProcessor, augment: AugmentConfig | None = None
) -> Callable[[Any], torch.Tensor]:
    """Training transform: augmentations followed by the processor's resize and normalisation.

    ``random_resized_crop`` in ``crop`` mode is torchvision's RandomResizedCrop to (H, W), its aspect range
    3/4..4/3 of W/H (the usual one when square); in ``pad`` and ``stretch`` modes a random crop of the frame
    around its own aspect (:class:`RandomFrameCrop`) that the processor's geometry then fits whole.
    """
    if augment is None or not augment.enabled:
        return processor.transform
    degrade = CameraDegrade(augment)
    if not augment.geometric:  # degradations only: then exactly the eval transform
        return lambda image: processor.transform(degrade(to_rgb_image(image)))
    height, width = processor.input_hw
    interp = _INTERPOLATION.get(processor.interpolation, T.InterpolationMode.BICUBIC)
    mode = getattr(processor, "resize_mode", "crop")
    ops: list = [degrade] if augment.degrades else []
    if augment.random_resized_crop > 0 and mode == "crop":
        a = width / height
        ops.append(
            T.RandomResizedCrop(
                (height, width),
                scale=(augment.random_resized_crop, 1.0),
                ratio=(a * 3 / 4, a * 4 / 3),
                interpolation=interp,
            )
        )
    elif augment.random_resized_crop > 0:
        ops += [RandomFrameCrop((augment.random_resized_crop, 1.0)), EvalGeometry(processor)]
    elif mode == "crop" and height == width:
        ops += [T.Resize(height, interpolation=interp), T.CenterCrop(height)]
    else:
        ops.append(EvalGeometry(processor))
    if augment.rotation > 0:
        ops.append(T.RandomRotation(augment.rotation, interpolation=T.InterpolationMode.BILINEAR))
    if augment.perspective > 0:
        ops.append(T.RandomPerspective(augment.perspective, p=0.5))
    if augment.color_jitter > 0:
        j = augment.color_jitter
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5)))
    if augment.grayscale > 0:
        ops.append(T.RandomGrayscale(augment.grayscale))
    if augment.hflip > 0:
        ops.append(T.RandomHorizontalFlip(augment.hflip))
    ops += [T.ToTensor(), T.Normalize(processor.image_mean, processor.image_std)]
    pipeline = T.Compose(ops)
    return lambda image: pipeline(to_rgb_image(image))


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _floats(values) -> np.ndarray:
    return np.array([_float(v) for v in values], dtype=np.float64)


def label_encoder(spec: HeadSpec) -> Callable[[Any], int]:
    """Value of a head's label column → class index (-100 for a value the head does not know)."""
    if not spec.is_classifier:
        return lambda v: 0
    if spec.is_geocell:  # geocell ids are stored as integers
        n = len(spec.labels)
        return lambda v: int(v) if v is not None and 0 <= int(v) < n else -100
    index = {name: i for i, name in enumerate(spec.labels)}
    return lambda v: index.get(v, -100)


def example_transform(
    transform: Callable[[Any], torch.Tensor],
    heads: list[HeadSpec],
    primary_head: str | None,
    image_column: str = "image",
    partitions: dict[str, CellPartition] | None = None,
) -> Callable[[dict], dict]:
    """A ``set_transform`` function: batch of rows → pixel_values, labels, coordinates.

    The primary head's targets are ``labels``; other heads' are ``labels_<head name>``. A geocell
    head without a label column takes the cell of ``partitions[spec.partition]`` holding each row's
    coordinates.
    """
    partitions = partitions or {}
    encoders = {h.name: (h.label_column, label_encoder(h)) for h in heads if h.is_classifier and h.label_column}
    assigners = {h.name: partitions[h.partition] for h in heads if h.is_geocell and not h.label_column}

    def apply(batch: dict) -> dict:
        out = {"pixel_values": [transform(im) for im in batch[image_column]]}
        if "latitude" in batch:  # NaN for a country-only row: the coordinate losses leave it out
            out["coordinates"] = [[_float(a), _float(b)] for a, b in zip(batch["latitude"], batch["longitude"])]
        for name, (column, encode) in encoders.items():
            if column in batch:
                key = "labels" if name == primary_head else f"labels_{name}"
                out[key] = [encode(v) for v in batch[column]]
        for name, partition in assigners.items():
            if "latitude" in batch:
                key = "labels" if name == primary_head else f"labels_{name}"
                cells = partition.assign(_floats(batch["latitude"]), _floats(batch["longitude"]))
                out[key] = np.where(cells >= 0, cells, -100).tolist()  # no coordinates: ignored by the head
        return out

    return apply


@contextlib.contextmanager
def seeded_rng(seed: int, epoch: int, index: int):
    """torch's global RNG, inside, forked and seeded from ``(seed, epoch, index)`` only (restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hash((seed, epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
        yield


class SeededDataset(torch.utils.data.Dataset):
    """Random augmentations that depend only on ``(seed, epoch, index)``, not on the global RNG.

    Each example is transformed under its own forked RNG, so a run resumed from a
    checkpoint augments every example exactly as the uninterrupted run did (the global
    RNG's position after a resume depends on how many batches were prefetched).
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with seeded_rng(self.seed, self.epoch, index):
            return self.dataset[index]


def place_groups(location_ids: Sequence[Any]) -> list[list[int]]:
    """Row indices of each place (rows sharing a ``location_id``), places in order of their first row,
    rows in split order. A row without a ``location_id`` (empty or missing) is a place of its own."""
    groups: dict[Any, list[int]] = {}
    for i, loc in enumerate(location_ids):
        key = ("row", i) if loc is None or loc == "" or (isinstance(loc, float) and np.isnan(loc)) else loc
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def location_groups(dataset, where: str = "the split") -> list[list[int]]:
    """:func:`place_groups` of a split's ``location_id`` column; one clear error when it has none."""
    columns = getattr(dataset, "column_names", None) or []
    if "location_id" not in columns:
        raise UserError(
            f"{where} has no location_id column, so its views cannot be grouped into places; "
            "build it with a layout that records location_id (grid-folders, imagefolder metadata, "
            "lost-and-found, bluemarble --views), or train with --views 1"
        )
    return place_groups(dataset["location_id"])


@dataclass
class ViewCounts:
    """How a split's places fill their ``views`` slots."""

    places: int
    rows: int
    padded: int
    """Places with fewer views than the slots: their views repeated, the repeats masked."""
    extra: int
    """Places with more views: training draws the slots' worth per epoch, evaluation takes the first ones."""

    def describe(self, views: int, training: bool) -> str:
        more = "drawn anew each epoch" if training else "the first in split order"
        return (
            f"{self.rows:,} rows grouped by location_id into {self.places:,} places of {views} views "
            f"({self.padded:,} with fewer: their views repeated and masked out of the fusion; "
            f"{self.extra:,} with more: {views} of them {more})"
        )


class ViewGroups(torch.utils.data.Dataset):
    """A split's rows grouped into places: one sample = one place of ``views`` views (PIGEON's 4-view panoramas).

    ``dataset`` yields transformed rows (``pixel_values``, ``labels``, ``coordinates``); ``groups`` its row
    indices per place (:func:`location_groups`). An item is ``pixel_values`` (views, 3, S, S), ``view_mask``
    (views,) and the place's targets (its first row's: the views of one place share its label).

    * fewer views than ``views``: the place's views are repeated in order to fill the slots and the repeats
      are masked (``view_mask`` False), so neither the mean of logits nor the attention counts them;
    * more views: with a ``seed`` (training) ``views`` distinct ones are drawn per place and epoch, from
      ``(seed, epoch, place)``; without (evaluation) the first ``views`` in split order, every time;
    * each view is transformed on its own (its own training augmentation), under an RNG forked from
      ``(seed, epoch, place)`` when seeded, so a resumed run sees the same views and augmentations;
    * views whose tensors differ in size (a transform that does not resize) are refused, the place named.
    """

    def __init__(self, dataset, groups: list[list[int]], views: int, seed: int | None = None, location_ids=None):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.dataset, self.groups, self.views, self.seed, self.epoch = dataset, groups, views, seed, 0
        self.location_ids = location_ids

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def counts(self) -> ViewCounts:
        sizes = np.array([len(g) for g in self.groups])
        return ViewCounts(
            len(sizes), int(sizes.sum()), int((sizes < self.views).sum()), int((sizes > self.views).sum())
        )

    def name(self, place: int) -> str:
        """The place's ``location_id`` (or its rows, without one)."""
        if self.location_ids is not None:
            return repr(self.location_ids[self.groups[place][0]])
        return f"rows {self.groups[place]}"

    def chosen(self, place: int) -> tuple[list[int], list[bool]]:
        """The place's row per view slot and which slots are real (not repeats)."""
        rows = self.groups[place]
        if len(rows) > self.views:
            if self.seed is None:
                rows = rows[: self.views]
            else:
                rng = np.random.default_rng([self.seed, self.epoch, place])
                rows = [rows[i] for i in sorted(rng.choice(len(rows), self.views, replace=False))]
        n = len(rows)
        return [rows[i % n] for i in range(self.views)], [i < n for i in range(self.views)]

    def __getitem__(self, place: int) -> dict:
        rows, mask = self.chosen(int(place))
        if self.seed is None:
            examples = [self.dataset[i] for i in rows]
        else:
            with seeded_rng(self.seed, self.epoch, place):
                examples = [self.dataset[i] for i in rows]
        shapes = {tuple(e["pixel_values"].shape) for e in examples}
        if len(shapes) > 1:
            raise ValueError(
                f"place {self.name(int(place))}: views of unequal size {sorted(shapes)}; transform them to one "
                "size (the model's image processor resizes every view to its image_size)"
            )
        out = {k: v for k, v in examples[0].items() if k != "pixel_values"}
        out["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        out["view_mask"] = torch.tensor(mask)
        return out


class GeoCollator:
    """Stacks examples into tensors; ``channels_last`` lays images out NHWC for CPU/GPU convs.

    Examples of places (:class:`ViewGroups`) stack to ``pixel_values`` (batch, views, 3, S, S) and
    ``view_mask`` (batch, views); views of unequal size are refused, naming the example."""

    def __init__(self, channels_last: bool = True):
        self.channels_last = channels_last

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        shapes = [tuple(e["pixel_values"].shape) for e in examples]
        if len(set(shapes)) > 1:
            odd = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise ValueError(
                f"batch example {odd} has pixel_values {list(shapes[odd])}, example 0 {list(shapes[0])}: every "
                "image (and every place's views) must be transformed to one size and view count"
            )
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        if self.channels_last and pixel_values.ndim == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        batch = {"pixel_values": pixel_values}
        for key in examples[0]:
            if key == "coordinates":
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
            elif key.startswith("labels"):
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
            elif key == "view_mask":
                batch[key] = torch.stack([torch.as_tensor(e[key], dtype=torch.bool) for e in examples])
        return batch


def median_aspect(dataset, image_column: str = "image", rows: int = 200) -> float | None:
    """Median width / height of the first ``rows`` images of a split (their headers only, not decoded);
    ``None`` when the split has no such column or none of them can be read."""
    from datasets import Image as ImageFeature

    if image_column not in (getattr(dataset, "column_names", None) or []):
        return None
    sample = dataset.select(range(min(rows, len(dataset))))
    if isinstance(sample.features.get(image_column), ImageFeature):
        sample = sample.cast_column(image_column, ImageFeature(decode=False))
    ratios = []
    for item in sample[image_column]:
        try:
            if isinstance(item, dict):
                source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
                with Image.open(source) as im:
                    w, h = im.size
            else:
                w, h = item.size
        except Exception:  # noqa: BLE001 - an unreadable image is reported by the transform that decodes it
            continue
        if w > 0 and h > 0:
            ratios.append(w / h)
    return float(np.median(ratios)) if ratios else None
