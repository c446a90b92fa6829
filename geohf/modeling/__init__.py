"""Models: config/model pairs over timm backbones, heads, losses, image processor; the names load on first
use (torch), so :mod:`geohf.modeling.head_names` stays cheap."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "GeoConfig": ".configuration_geohf",
    "HeadSpec": ".configuration_geohf",
    "create_model": ".factory",
    "GeoImageProcessor": ".image_processing_geohf",
    "GeoEmbeddingOutput": ".modeling_geohf",
    "GeoModel": ".modeling_geohf",
    "GeoModelForImageGeolocation": ".modeling_geohf",
    "GeoModelOutput": ".modeling_geohf",
    "GeoPreTrainedModel": ".modeling_geohf",
    "build_model": ".modeling_geohf",
    "LabelSpace": ".labels",
}


def register_auto_classes() -> None:
    """Register geohf with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    from .configuration_geohf import GeoConfig
    from .image_processing_geohf import GeoImageProcessor
    from .modeling_geohf import GeoModel, GeoModelForImageGeolocation

    AutoConfig.register("geohf", GeoConfig, exist_ok=True)
    AutoModel.register(GeoConfig, GeoModel, exist_ok=True)
    AutoModelForImageClassification.register(GeoConfig, GeoModelForImageGeolocation, exist_ok=True)
    # one processor for both backends (it runs timm's transform), so no backend fallback warning
    processors = {"pil": GeoImageProcessor, "torchvision": GeoImageProcessor}
    AutoImageProcessor.register(GeoConfig, image_processor_classes=processors, exist_ok=True)


__all__ = sorted([*_LAZY, "register_auto_classes"])
__getattr__ = lazy_getattr(__name__, _LAZY)
