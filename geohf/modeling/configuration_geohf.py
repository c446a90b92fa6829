"""Configuration of geohf geolocation models."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from transformers import PreTrainedConfig

HEAD_TYPES = ("classification", "haversine", "regression")
COORDINATE_METHODS = ("argmax", "weighted")
FUSIONS = ("mean", "attention")


class GeoConfig(PreTrainedConfig):
    r"""Configuration of a :class:`GeoModelForImageGeolocation`.

    Args:
        backbone: timm architecture name (``tf_efficientnet_lite0``, ``resnet50``, ``vit_small_patch16_224``...).
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (``drop_path_rate``...).
        pretrained_source: where the backbone weights came from (provenance for model cards).
        image_size: square input side in pixels.
        interpolation, crop_pct, image_mean, image_std: the eval preprocessing (timm data config).
        heads: head specifications, each a dict with ``name``, ``type`` (``classification``,
            ``haversine`` or ``regression``), ``label_column``, ``labels`` (class names),
            ``weight`` (loss weight), and for cell heads ``cells`` (centroids and majority
            country/region per cell) and ``tau_km`` (haversine smoothing temperature).
        primary_head: the head whose logits are ``outputs.logits`` (and the image-classification
            pipeline's labels); defaults to the first classification-type head.
        coordinate_method: ``argmax`` (centroid of the top cell) or ``weighted`` (probability-weighted
            spherical mean of the ``coordinate_top_k`` best cells, counting only cells within
            ``coordinate_radius_km`` of the best one when that is set).
        fusion: how several views of one place are fused: ``mean`` of the heads' logits, or
            ``attention`` pooling of the view embeddings.
        dropout: dropout before the heads.
        depthwise_fp32: run depthwise convolutions in fp32 under CPU bf16 autocast (oneDNN's bf16
            depthwise backward is slow; this keeps the rest of the network in bf16).
    """

    model_type = "geohf"

    backbone: str = "tf_efficientnet_lite0"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_source: str | None = None
    embed_dim: int | None = None
    image_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    heads: list[dict[str, Any]] = field(default_factory=list)
    primary_head: str | None = None
    coordinate_method: str = "weighted"
    coordinate_top_k: int = 5
    coordinate_radius_km: float | None = None
    fusion: str = "mean"
    dropout: float = 0.0
    depthwise_fp32: bool = True

    def __post_init__(self, **kwargs):
        for spec in self.heads:
            if spec.get("type") not in HEAD_TYPES:
                raise ValueError(f"head {spec.get('name')!r} has type {spec.get('type')!r}; use one of {HEAD_TYPES}")
            if spec["type"] == "regression":
                spec.setdefault("labels", [])
            elif not spec.get("labels"):
                raise ValueError(f"head {spec['name']!r} needs its class names in 'labels'")
            spec.setdefault("weight", 1.0)
            if spec["type"] == "haversine":
                spec.setdefault("tau_km", 75.0)
                if not spec.get("cells"):
                    raise ValueError(f"haversine head {spec['name']!r} needs its cell centroids in 'cells'")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.coordinate_method not in COORDINATE_METHODS:
            raise ValueError(f"coordinate_method must be one of {COORDINATE_METHODS}, got {self.coordinate_method!r}")
        classifiers = [h for h in self.heads if h["type"] != "regression"]
        if self.primary_head is None and self.heads:  # the first classifier, else the regression head
            self.primary_head = (classifiers or self.heads)[0]["name"]
        if self.primary_head is not None:
            primary = self.head(self.primary_head)
            if primary["type"] != "regression":
                kwargs.setdefault("id2label", dict(enumerate(primary["labels"])))
                kwargs.setdefault("label2id", {name: i for i, name in enumerate(primary["labels"])})
        super().__post_init__(**kwargs)

    def head(self, name: str) -> dict[str, Any]:
        """The specification of head ``name``."""
        for spec in self.heads:
            if spec["name"] == name:
                return spec
        raise KeyError(f"no head named {name!r}; heads are {[h['name'] for h in self.heads]}")

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config of the eval preprocessing."""
        return {
            "input_size": (3, self.image_size, self.image_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "mean": tuple(self.image_mean),
            "std": tuple(self.image_std),
        }
