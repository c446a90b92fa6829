"""Exporting models to other runtimes (``geohf export``); the names load on first use (torch)."""

from __future__ import annotations

import importlib

_LAZY = {"OnnxExport": ".onnx", "export_onnx": ".onnx", "add_export_parser": ".cli"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
