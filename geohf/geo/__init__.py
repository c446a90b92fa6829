"""Pure geography (numpy, shapely, geopandas; no torch): distances, boundaries, labels, cells.

The names load on first use (numpy), so the ``geohf`` parser can read :mod:`.names` for nothing.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "country_name": ".countries",
    "EARTH_RADIUS_KM": ".sphere",
    "geometric_median": ".sphere",
    "haversine_km": ".sphere",
    "latlon_to_xyz": ".sphere",
    "pairwise_haversine_km": ".sphere",
    "spherical_mean": ".sphere",
    "xyz_to_latlon": ".sphere",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
