"""The names ``geohf predict`` and ``geohf index build`` offer, without importing torch.

:mod:`.stream` (output formats) and :mod:`.retrieval` (index searches) use these.
"""

FORMATS = ("jsonl", "csv", "parquet")
BACKENDS = ("faiss", "usearch")
"""Approximate nearest-neighbour libraries an index can be searched with."""
SEARCHES = ("exact", *BACKENDS, "auto")
