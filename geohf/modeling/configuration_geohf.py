"""Configuration of geohf geolocation models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transformers import PreTrainedConfig

from .head_names import HEAD_TYPES

GALLERIES = ("geoclip", "train", "both")
GALLERY_FILE = "file"  # a converted model's gallery read from a LAT, LON CSV (``geohf convert geoclip --gallery``)
DEFAULT_QUEUE_SIZE = 4096
COORDINATE_METHODS = ("argmax", "weighted")
FUSIONS = ("mean", "attention")
MLP_HEAD_TYPES = ("classification", "haversine", "hybrid")  # the heads scored by the base linear layer
HYBRID_EXTENT = ("latitude", "longitude", "lat_min", "lat_max", "lon_min", "lon_max")
ANSWERS = ("point", "hierarchical", "cell")
RESIZE_MODES = ("crop", "pad", "stretch")
TIMM_CROP_MODES = {"crop": "center", "pad": "border", "stretch": "squash"}
CELL_COLUMN_PREFIX = "cell_"
POINT_TYPES = ("regression", "flow")  # head types that predict points, not classes


@dataclass
class HeadSpec:
    """What one head is: its loss, the dataset column it learns, its classes and what they mean on the map.

    Attributes:
        name: the head's name (its key in ``logits_per_head`` and ``labels_<name>`` targets).
        type: ``classification`` (cross-entropy), ``haversine`` (cells with haversine-smoothed
            targets), ``hybrid`` (cells plus a per-cell offset, OSV-5M), ``regression`` (coordinates
            on the sphere), ``geoclip`` (GeoCLIP: image embeddings matched against a GPS gallery embedded
            by a location encoder; its classes are the gallery points, ``cells`` their coordinates and labels)
            or ``flow`` (PLONK: a generative flow on the sphere conditioned on the embedding).
        label_column: the dataset column of its targets (``None``: coordinates only).
        labels: class names (none for regression).
        partition: the geocell partition the classes are (``quadtree``...), ``None`` for a
            class head (country, region) or a regression head.
        cells: per class the centroid and majority labels (``name, latitude, longitude,
            country_code, country, region_code, region``); classes with centroids predict coordinates.
        label_country: per class its country code (region heads).
        weight: loss weight; tau_km: haversine smoothing temperature (a hybrid head without one trains
            plain cross-entropy); class_weights: loss weights per class.
        hierarchy_levels: also train cross-entropy over this many coarser levels of the cells (their
            quadtree ancestors: cells grouped by the 2^L x 2^L lon/lat box holding their centroid, OSV-5M).
        gallery: a geoclip head's gallery: ``geoclip`` (GeoCLIP's 100K points), ``train`` (the training
            coordinates), ``both``, or ``file`` (a CSV of points, ``geohf convert geoclip --gallery FILE``);
            queue_size: its FIFO queue of GPS negatives.
        hidden_dims: an MLP between the embedding and the head's linear layer, OSV-5M's (``MLPCentroid``):
            LayerNorm, then per width a Linear, GroupNorm of 4 groups and GELU (classification, haversine and
            hybrid heads).
        flow: a flow head's network and sampler (:class:`~geohf.modeling.heads.flow.FlowSettings` as a dict).
    """

    name: str
    type: str
    label_column: str | None = None
    labels: list[str] = field(default_factory=list)
    partition: str | None = None
    cells: dict[str, Any] | None = None
    label_country: list[str] | None = None
    weight: float = 1.0
    tau_km: float | None = None
    class_weights: list[float] | None = None
    hierarchy_levels: int | None = None
    gallery: str | None = None
    queue_size: int | None = None
    hidden_dims: list[int] | None = None
    flow: dict[str, Any] | None = None

    def __post_init__(self):
        if self.type not in HEAD_TYPES:
            raise ValueError(f"head {self.name!r} has type {self.type!r}; use one of {HEAD_TYPES}")
        if self.type not in POINT_TYPES and not self.labels:
            raise ValueError(f"head {self.name!r} needs its class names in 'labels'")
        if self.type == "haversine":
            self.tau_km = 75.0 if self.tau_km is None else float(self.tau_km)
            if not self.cells:
                raise ValueError(f"haversine head {self.name!r} needs its cell centroids in 'cells'")
        if self.type == "hybrid" and not all(k in (self.cells or {}) for k in HYBRID_EXTENT):
            raise ValueError(f"hybrid head {self.name!r} needs its cells' centroids and extents {HYBRID_EXTENT}")
        if self.hidden_dims is not None:
            if self.type not in MLP_HEAD_TYPES:
                raise ValueError(f"head {self.name!r}: hidden_dims applies to {MLP_HEAD_TYPES} heads, not {self.type}")
            if not self.hidden_dims or any(int(w) < 4 or int(w) % 4 for w in self.hidden_dims):
                raise ValueError(f"head {self.name!r}: hidden_dims must be widths divisible by 4 (GroupNorm of 4)")
            self.hidden_dims = [int(w) for w in self.hidden_dims]
        if self.type == "geoclip":
            self.gallery = "geoclip" if self.gallery is None else self.gallery
            if self.gallery not in (*GALLERIES, GALLERY_FILE):
                known = (*GALLERIES, GALLERY_FILE)
                raise ValueError(f"geoclip head {self.name!r} has gallery {self.gallery!r}; use one of {known}")
            self.queue_size = DEFAULT_QUEUE_SIZE if self.queue_size is None else int(self.queue_size)
            if self.queue_size < 0:
                raise ValueError(f"geoclip head {self.name!r} needs queue_size >= 0, got {self.queue_size}")
            if not (self.cells and self.cells.get("latitude")):
                raise ValueError(f"geoclip head {self.name!r} needs its gallery coordinates in 'cells'")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> HeadSpec:
        """From a config's head dict; folders saved before ``partition`` existed name it by their column."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in spec.items() if k in known}
        column = values.get("label_column") or ""
        if "partition" not in spec and values.get("cells") and column.startswith(CELL_COLUMN_PREFIX):
            values["partition"] = column[len(CELL_COLUMN_PREFIX) :]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("label_column", "partition")}

    @property
    def is_classifier(self) -> bool:
        """Whether the head outputs class logits (everything but the point heads: regression, flow)."""
        return self.type not in POINT_TYPES

    @property
    def is_geocell(self) -> bool:
        """Whether the classes are the cells of a partition (class ids stored as integers in ``cell_<partition>``)."""
        return self.partition is not None

    @property
    def has_coordinates(self) -> bool:
        """Whether the head predicts coordinates: regression or flow, or classes with centroids."""
        return self.type in POINT_TYPES or bool(self.cells and self.cells.get("latitude"))


class GeoConfig(PreTrainedConfig):
    r"""Configuration of a :class:`GeoModelForImageGeolocation`.

    Args:
        backbone: timm architecture name (``tf_efficientnet_lite0``, ``resnet50``, ``vit_small_patch16_224``...).
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (``drop_path_rate``...).
        pretrained_source: where the backbone weights came from (provenance for model cards).
        image_size: square input side in pixels, or ``[height, width]`` for full frames of another aspect.
        interpolation, crop_pct, image_mean, image_std: the eval preprocessing (timm data config).
        resize_mode: how a frame of another aspect becomes ``image_size``: ``crop`` (shorter side fitted,
            centre crop), ``pad`` (longer side fitted, letterboxed with the mean colour) or ``stretch``.
        heads: the heads, as :class:`HeadSpec` objects or their dicts (stored as dicts).
        primary_head: the head whose logits are ``outputs.logits`` (and the image-classification
            pipeline's labels); defaults to the first classification-type head.
        coordinate_method: ``argmax`` (centroid of the top cell) or ``weighted`` (probability-weighted
            spherical mean of the ``coordinate_top_k`` best cells, counting only cells within
            ``coordinate_radius_km`` of the best one when that is set).
        answer: how a prediction names its country and region so that they agree with its coordinates:
            ``point`` (the coordinates, moved to the nearest land when at sea, name the country and region
            they lie in) or ``hierarchical`` (the country with the most cell probability, then its region
            with the most, then the weighted point of that region's cells, moved inside the region); ``cell``
            keeps the head's coordinates and names the best class's majority country and region (they may
            disagree: kept to compare against).
        fusion: how several views of one place are fused: ``mean`` of the heads' logits, or
            ``attention`` pooling of the view embeddings.
        views: views per sample the model was trained on: 1, one image per sample; V > 1, the rows of a
            split grouped by ``location_id`` into places of V views (training, evaluation and ``geohf
            evaluate`` group them the same way, :class:`~geohf.data.transforms.ViewGroups`).
        dropout: dropout before the heads.
        depthwise_fp32: run depthwise convolutions in fp32 under CPU bf16 autocast (oneDNN's bf16
            depthwise backward is slow; this keeps the rest of the network in bf16).
        finetuning: how the saved weights were trained (``mode``: full, frozen, last_n_blocks or lora, its
            settings, the trainable and total parameter counts at training start, and the training
            ``augmentations`` that were on); the model card's line.
    """

    model_type = "geohf"

    backbone: str = "tf_efficientnet_lite0"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_source: str | None = None
    embed_dim: int | None = None
    image_size: int | list[int] = 224
    resize_mode: str = "crop"
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    heads: list[dict[str, Any]] = field(default_factory=list)
    primary_head: str | None = None
    coordinate_method: str = "weighted"
    coordinate_top_k: int = 5
    coordinate_radius_km: float | None = None
    answer: str = "point"
    fusion: str = "mean"
    views: int = 1
    dropout: float = 0.0
    depthwise_fp32: bool = True
    finetuning: dict[str, Any] | None = None

    def __post_init__(self, **kwargs):
        # stored as plain dicts (config.json), validated and completed through HeadSpec
        self.heads = [(h if isinstance(h, HeadSpec) else HeadSpec.from_dict(h)).to_dict() for h in self.heads]
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"views must be a whole number >= 1, got {self.views!r}")
        if self.coordinate_method not in COORDINATE_METHODS:
            raise ValueError(f"coordinate_method must be one of {COORDINATE_METHODS}, got {self.coordinate_method!r}")
        if isinstance(self.image_size, (list, tuple)):  # [H, W]; a square one is the int
            self.image_size = (
                int(self.image_size[0]) if self.image_size[0] == self.image_size[1] else list(self.image_size)
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {self.answer!r}")
        specs = self.head_specs
        classifiers = [h for h in specs if h.is_classifier]
        if self.primary_head is None and specs:  # the first classifier, else the regression head
            self.primary_head = (classifiers or specs)[0].name
        if self.primary_head is not None:
            primary = self.head(self.primary_head)
            if primary.is_classifier:
                kwargs.setdefault("id2label", dict(enumerate(primary.labels)))
                kwargs.setdefault("label2id", {name: i for i, name in enumerate(primary.labels)})
        super().__post_init__(**kwargs)

    @property
    def head_specs(self) -> list[HeadSpec]:
        """Every head as a :class:`HeadSpec`, in order."""
        return [HeadSpec.from_dict(h) for h in self.heads]

    def head(self, name: str | None = None) -> HeadSpec:
        """The specification of head ``name`` (default: the primary head)."""
        name = self.primary_head if name is None else name
        for spec in self.heads:
            if spec["name"] == name:
                return HeadSpec.from_dict(spec)
        raise KeyError(f"no head named {name!r}; heads are {[h['name'] for h in self.heads]}")

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        size = self.image_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config of the eval preprocessing."""
        return {
            "input_size": (3, *self.input_hw),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": TIMM_CROP_MODES[self.resize_mode],
            "mean": tuple(self.image_mean),
            "std": tuple(self.image_std),
        }


# Registered with transformers when geohf's own module is imported, as transformers documents for custom models; a
# model folder's flat copy of this file (loaded with ``trust_remote_code``) is found through config.json's auto_map.
if __name__.startswith("geohf."):
    from transformers import AutoConfig

    AutoConfig.register("geohf", GeoConfig, exist_ok=True)
