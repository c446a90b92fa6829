"""Distances and averages on the sphere.

Every function takes numpy arrays *or* torch tensors and returns the same kind, so the
training loss and the numpy metrics share one implementation. torch is never imported
here: a tensor argument brings its own module along.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the radius behind every distance in geohf."""

ANTIPODAL_KM = np.pi * EARTH_RADIUS_KM


def _xp(*arrays: Any):
    """The array module (numpy or torch) of the first tensor among ``arrays``."""
    for a in arrays:
        if type(a).__module__.startswith("torch"):
            return sys.modules["torch"]
    return np


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    xp = _xp(lat1, lon1, lat2, lon2)
    if xp is np:
        lat1, lon1, lat2, lon2 = (np.asarray(a, dtype=np.float64) for a in (lat1, lon1, lat2, lon2))
    phi1, phi2 = xp.deg2rad(lat1), xp.deg2rad(lat2)
    dphi = phi2 - phi1
    dlmb = xp.deg2rad(lon2 - lon1)
    a = xp.sin(dphi / 2) ** 2 + xp.cos(phi1) * xp.cos(phi2) * xp.sin(dlmb / 2) ** 2
    a = xp.clip(a, 0.0, 1.0)
    return 2 * EARTH_RADIUS_KM * xp.arcsin(xp.sqrt(a))


def geodesic_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Distance in km along the WGS84 ellipsoid (Karney's geodesic, as geopy's ``geodesic``; numpy, via pyproj)."""
    from pyproj import Geod

    lat1, lon1, lat2, lon2 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (lat1, lon1, lat2, lon2)))
    if not lat1.size:
        return np.zeros(lat1.shape)
    _, _, metres = Geod(ellps="WGS84").inv(lon1.ravel(), lat1.ravel(), lon2.ravel(), lat2.ravel())
    return np.asarray(metres, dtype=np.float64).reshape(lat1.shape) / 1000.0


def pairwise_haversine_km(lat1, lon1, lat2, lon2):
    """(N, M) distance matrix between N points and M points, in km."""
    return haversine_km(lat1[:, None], lon1[:, None], lat2[None, :], lon2[None, :])


def latlon_to_xyz(lat, lon):
    """Unit vectors (..., 3) for latitudes and longitudes in degrees."""
    xp = _xp(lat, lon)
    if xp is np:
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    phi, lmb = xp.deg2rad(lat), xp.deg2rad(lon)
    return xp.stack([xp.cos(phi) * xp.cos(lmb), xp.cos(phi) * xp.sin(lmb), xp.sin(phi)], -1)


def xyz_to_latlon(xyz):
    """Latitudes and longitudes in degrees of (..., 3) vectors (normalised first)."""
    xp = _xp(xyz)
    if xp is np:
        xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = xp.rad2deg(xp.arctan2(z, xp.sqrt(x * x + y * y)))
    lon = xp.rad2deg(xp.arctan2(y, x))
    return lat, lon


def spherical_mean(lat, lon, weights=None, axis: int = -1):
    """Weighted mean direction of points along ``axis``, as (lat, lon) in degrees.

    The mean of unit vectors projected back onto the sphere; the natural "average
    location" that does not break at the antimeridian. Antipodal sets have no mean: the
    result is then arbitrary but finite.
    """
    xp = _xp(lat, lon, weights)
    v = latlon_to_xyz(lat, lon)  # (..., n, 3) with the averaged axis moved before 3
    axis = axis % v.ndim if axis >= 0 else v.ndim - 1 + axis
    if weights is None:
        s = v.sum(axis)
    else:
        w = weights if xp is not np else np.asarray(weights, dtype=np.float64)
        s = (v * w[..., None]).sum(axis)
    return xyz_to_latlon(s)


def geometric_median(
    lat: np.ndarray, lon: np.ndarray, max_points: int = 20000, seed: int = 0, iters: int = 200, weights=None
) -> tuple[float, float]:
    """The point minimising the mean (``weights``: weighted mean) great-circle distance to ``(lat, lon)``.

    A coarse search over a global grid followed by a spherical Weiszfeld refinement;
    the best point seen is returned, so the result is never worse than the grid.
    Uses a random subset of ``max_points`` for very large inputs.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("geometric_median needs at least one point")
    wts = np.ones(lat.size) if weights is None else np.asarray(weights, dtype=np.float64)
    if lat.size > max_points:
        idx = np.random.default_rng(seed).choice(lat.size, max_points, replace=False)
        lat, lon, wts = lat[idx], lon[idx], wts[idx]
    wts = wts / wts.sum()
    pts = latlon_to_xyz(lat, lon)

    def cost(glat, glon):
        return pairwise_haversine_km(np.atleast_1d(glat), np.atleast_1d(glon), lat, lon) @ wts

    glat, glon = np.meshgrid(np.arange(-87.5, 90, 5.0), np.arange(-177.5, 180, 5.0), indexing="ij")
    glat, glon = glat.ravel(), glon.ravel()
    costs = np.concatenate([cost(glat[i : i + 256], glon[i : i + 256]) for i in range(0, glat.size, 256)])
    best = int(np.argmin(costs))
    best_lat, best_lon, best_cost = glat[best], glon[best], costs[best]
    x = latlon_to_xyz(best_lat, best_lon)
    for _ in range(iters):
        d = np.arccos(np.clip(pts @ x, -1.0, 1.0))
        w = wts / np.maximum(d, 1e-9)
        x_new = (pts * w[:, None]).sum(0)
        x_new /= np.linalg.norm(x_new)
        if np.linalg.norm(x_new - x) < 1e-12:
            break
        x = x_new
        c_lat, c_lon = xyz_to_latlon(x)
        c = cost(c_lat, c_lon)[0]
        if c < best_cost:
            best_lat, best_lon, best_cost = float(c_lat), float(c_lon), c
    return float(best_lat), float(best_lon)


def destination_points(lat: float, lon: float, distance_km: float, bearing_rad) -> tuple[np.ndarray, np.ndarray]:
    """The points ``distance_km`` along great circles from (lat, lon) at each bearing (radians from north):
    latitudes and longitudes in degrees, longitudes not wrapped (continuous around the point)."""
    phi, lmb, d = np.deg2rad(lat), np.deg2rad(lon), distance_km / EARTH_RADIUS_KM
    bearing = np.asarray(bearing_rad, dtype=np.float64)
    phi2 = np.arcsin(np.sin(phi) * np.cos(d) + np.cos(phi) * np.sin(d) * np.cos(bearing))
    lmb2 = lmb + np.arctan2(np.sin(bearing) * np.sin(d) * np.cos(phi), np.cos(d) - np.sin(phi) * np.sin(phi2))
    return np.rad2deg(phi2), np.rad2deg(lmb2)


def wrap_longitude(lon):
    """Longitudes wrapped into [-180, 180)."""
    xp = _xp(lon)
    return xp.remainder(lon + 180.0, 360.0) - 180.0
