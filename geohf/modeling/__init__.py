"""Models: config/model pairs over timm backbones, heads, losses, image processor."""

from .configuration_geohf import GeoConfig, HeadSpec
from .factory import create_model
from .image_processing_geohf import GeoImageProcessor
from .modeling_geohf import (
    GeoEmbeddingOutput,
    GeoModel,
    GeoModelForImageGeolocation,
    GeoModelOutput,
    GeoPreTrainedModel,
    build_model,
)


def register_auto_classes() -> None:
    """Register geohf with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    AutoConfig.register("geohf", GeoConfig, exist_ok=True)
    AutoModel.register(GeoConfig, GeoModel, exist_ok=True)
    AutoModelForImageClassification.register(GeoConfig, GeoModelForImageGeolocation, exist_ok=True)
    # one processor for both backends (it runs timm's transform), so no backend fallback warning
    processors = {"pil": GeoImageProcessor, "torchvision": GeoImageProcessor}
    AutoImageProcessor.register(GeoConfig, image_processor_classes=processors, exist_ok=True)


__all__ = [
    "GeoConfig",
    "GeoEmbeddingOutput",
    "GeoImageProcessor",
    "GeoModel",
    "GeoModelForImageGeolocation",
    "GeoModelOutput",
    "GeoPreTrainedModel",
    "HeadSpec",
    "build_model",
    "create_model",
    "register_auto_classes",
]
