"""Pure geography (numpy, shapely, geopandas; no torch): distances, boundaries, labels, cells."""

from .countries import country_name
from .sphere import (
    EARTH_RADIUS_KM,
    geometric_median,
    haversine_km,
    latlon_to_xyz,
    pairwise_haversine_km,
    spherical_mean,
    xyz_to_latlon,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "country_name",
    "geometric_median",
    "haversine_km",
    "latlon_to_xyz",
    "pairwise_haversine_km",
    "spherical_mean",
    "xyz_to_latlon",
]
