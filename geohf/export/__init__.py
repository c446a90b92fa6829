"""Exporting models to other runtimes (``geohf export``)."""

from .onnx import OnnxExport, add_export_parser, export_onnx

__all__ = ["OnnxExport", "add_export_parser", "export_onnx"]
