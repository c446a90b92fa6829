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

__all__ = [
    "GeoConfig",
    "GeoImageProcessor",
    "GeoModel",
    "GeoModelForImageGeolocation",
    "GeoModelOutput",
    "build_model",
]
