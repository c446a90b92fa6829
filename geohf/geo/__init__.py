"""Pure geography (numpy, shapely, geopandas; no torch): distances, boundaries, labels, cells.

The names load on first use (numpy), so the ``geohf`` parser can read :mod:`.names` for nothing.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "country_name": ".countries",
    **{
        name: ".sphere"
        for name in (
            "EARTH_RADIUS_KM",
            "geometric_median",
            "haversine_km",
            "latlon_to_xyz",
            "pairwise_haversine_km",
            "spherical_mean",
            "xyz_to_latlon",
        )
    },
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
