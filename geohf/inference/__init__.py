"""Inference: batched prediction into :class:`GeoPredictions`, ``pipeline("image-geolocation")``, ``geohf predict``;
the names load on first use (torch)."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "CellTable": ".predictions",
    "GeoPredictions": ".predictions",
    "GeoIndex": ".retrieval",
    "RetrievalParams": ".retrieval",
    "build_index": ".retrieval",
    "write_index": ".retrieval",
    "GalleryBatch": ".gallery",
    "GalleryWriter": ".gallery",
    "GeoPredictor": ".predictor",
    "GeoPredictorUDF": ".ray",
    "predict": ".predictor",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
