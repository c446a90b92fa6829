"""geohf's version, at the bottom of the package (``geohf.geo`` and ``geohf.data`` stamp it on what they write)."""

__version__ = "0.1.0"
