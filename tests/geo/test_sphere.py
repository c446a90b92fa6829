import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geohf.geo.sphere import (
    ANTIPODAL_KM,
    EARTH_RADIUS_KM,
    geometric_median,
    haversine_km,
    latlon_to_xyz,
    spherical_mean,
    wrap_longitude,
    xyz_to_latlon,
)

lats = st.floats(-90, 90, allow_nan=False)
lons = st.floats(-180, 180, allow_nan=False)


def test_known_distances():
    # London - Paris, great circle on a 6371.0088 km sphere
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.56, abs=0.1)
    # one degree of latitude
    assert haversine_km(0, 0, 1, 0) == pytest.approx(np.pi * EARTH_RADIUS_KM / 180, rel=1e-9)
    # pole to pole, whatever the longitudes
    assert haversine_km(90, 10, -90, -170) == pytest.approx(ANTIPODAL_KM, rel=1e-9)
    # across the antimeridian: 179E to 179W is 2 degrees of longitude, not 358
    assert haversine_km(0, 179, 0, -179) == pytest.approx(2 * np.pi * EARTH_RADIUS_KM / 180, rel=1e-9)


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    a = rng.uniform([-90, -180], [90, 180], (100, 2))
    b = rng.uniform([-90, -180], [90, 180], (100, 2))
    d_np = haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    ta, tb = torch.tensor(a), torch.tensor(b)
    d_t = haversine_km(ta[:, 0], ta[:, 1], tb[:, 0], tb[:, 1])
    assert isinstance(d_t, torch.Tensor)
    np.testing.assert_allclose(d_t.numpy(), d_np, rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(lats, lons, lats, lons)
def test_symmetric_and_bounded(lat1, lon1, lat2, lon2):
    d = haversine_km(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(haversine_km(lat2, lon2, lat1, lon1), abs=1e-6)
    assert 0.0 <= d <= ANTIPODAL_KM + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.floats(-89, 89), lons)
def test_antipode_is_half_the_circumference(lat, lon):
    assert haversine_km(lat, lon, -lat, wrap_longitude(lon + 180)) == pytest.approx(ANTIPODAL_KM, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(lats, lons, lats, lons, lats, lons)
def test_triangle_inequality(a1, o1, a2, o2, a3, o3):
    # 1e-4 km: near antipodes arcsin(sqrt(a)) has a ~ 1 and float64 leaves ~1e-8 rad (~0.1 m) of the angle
    assert haversine_km(a1, o1, a3, o3) <= haversine_km(a1, o1, a2, o2) + haversine_km(a2, o2, a3, o3) + 1e-4


@settings(max_examples=200, deadline=None)
@given(st.floats(-89.9, 89.9), st.floats(-179.9, 179.9))
def test_unit_vector_round_trip(lat, lon):
    v = latlon_to_xyz(lat, lon)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    lat2, lon2 = xyz_to_latlon(v)
    assert haversine_km(lat, lon, lat2, lon2) < 1e-6


def test_spherical_mean_across_the_antimeridian():
    lat, lon = spherical_mean(np.array([10.0, -10.0]), np.array([179.0, -179.0]))
    assert abs(lat) < 1e-9 and abs(abs(lon) - 180.0) < 1e-9
    # weights pull the mean towards the heavier point
    lat, lon = spherical_mean(np.array([0.0, 0.0]), np.array([0.0, 90.0]), weights=np.array([3.0, 1.0]))
    assert lat == pytest.approx(0.0) and lon == pytest.approx(np.rad2deg(np.arctan2(1, 3)))


def test_spherical_mean_batched_torch():
    lat = torch.tensor([[0.0, 0.0], [45.0, 45.0]])
    lon = torch.tensor([[-10.0, 10.0], [100.0, 100.0]])
    mlat, mlon = spherical_mean(lat, lon, weights=torch.ones(2, 2), axis=-1)
    assert torch.allclose(mlat, torch.tensor([0.0, 45.0]), atol=1e-5)
    assert torch.allclose(mlon, torch.tensor([0.0, 100.0]), atol=1e-5)


def test_geometric_median_minimises_mean_distance():
    rng = np.random.default_rng(1)
    # a cluster in Europe and a few points far away: the median stays with the cluster
    lat = np.r_[rng.normal(48, 2, 200), rng.uniform(-40, 40, 20)]
    lon = np.r_[rng.normal(10, 2, 200), rng.uniform(-180, 180, 20)]
    mlat, mlon = geometric_median(lat, lon)
    best = haversine_km(mlat, mlon, lat, lon).mean()
    for dlat, dlon in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        assert best <= haversine_km(mlat + dlat, mlon + dlon, lat, lon).mean() + 1e-6
    assert haversine_km(mlat, mlon, 48, 10) < 300
