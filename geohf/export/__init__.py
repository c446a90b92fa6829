"""Exporting models to other runtimes (``geohf export``); the names load on first use (torch)."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {"OnnxExport": ".onnx", "export_onnx": ".onnx"}
__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
