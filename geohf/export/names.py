"""The formats ``geohf export`` writes, without importing torch or onnx."""

FORMATS = ("onnx",)
