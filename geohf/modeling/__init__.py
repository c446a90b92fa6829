"""Models: config/model pairs over timm backbones, heads, losses, image processor; the names load on first
use (torch), so :mod:`geohf.modeling.head_names` stays cheap. The modules that define the config, the models and
the image processor register them with transformers' Auto classes when imported."""

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
    """Register geohf's config, models and image processor with transformers' Auto classes (idempotent).

    Importing the modules that define them registers them (as transformers documents for custom models), so
    ``geohf.GeoModel``, ``from geohf.modeling import GeoModelForImageGeolocation`` or loading a model with geohf
    has done it already; this imports them.
    """
    from . import configuration_geohf, image_processing_geohf, modeling_geohf  # noqa: F401


__all__ = sorted([*_LAZY, "register_auto_classes"])
__getattr__ = lazy_getattr(__name__, _LAZY)
