"""geohf: image geolocation on the Hugging Face stack."""

__version__ = "0.1.0"

from .modeling import (  # noqa: E402
    GeoConfig,
    GeoImageProcessor,
    GeoModel,
    GeoModelForImageGeolocation,
    GeoModelOutput,
    build_model,
    register_auto_classes,
)

register_auto_classes()

from .inference.pipeline import ImageGeolocationPipeline, register_pipeline  # noqa: E402

register_pipeline()

__all__ = [
    "GeoConfig",
    "GeoImageProcessor",
    "GeoModel",
    "GeoModelForImageGeolocation",
    "GeoModelOutput",
    "ImageGeolocationPipeline",
    "build_model",
]
