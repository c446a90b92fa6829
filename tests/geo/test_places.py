"""Admin areas as answers: naming the area a point lies in, moving points into an area."""

import numpy as np

from geohf.geo.places import AdminAreas


def areas() -> AdminAreas:
    return AdminAreas.default()


def test_locate_names_the_area_and_moves_sea_points_to_the_nearest_land():
    a = areas()
    lat, lon, rows = a.locate([48.85, 78.8, 0.0, np.nan], [2.35, -89.5, -30.0, 0.0])
    assert a.table.lookup("country_code", rows).tolist() == ["FR", "CA", "BR", ""]
    assert (lat[0], lon[0]) == (48.85, 2.35)  # on land: unchanged
    # the sea point (mid-Atlantic on the equator) lands on Brazil's St Peter and St Paul Rocks, ~100 km away
    assert a.containing(lat[2:3], lon[2:3])[0] == rows[2]
    from geohf.geo.sphere import haversine_km

    assert haversine_km(0.0, -30.0, lat[2], lon[2]) < 200
    assert np.isnan(lat[3]) and rows[3] == -1


def test_place_moves_a_point_just_inside_the_allowed_area():
    a = areas()
    berlin = a.rows_of_region(
        a.table.region_code[a.rows_of_country("DE")][a.table.region[a.rows_of_country("DE")] == "Berlin"][0]
    )
    greenland = a.rows_of_country("GL")
    lat, lon, rows = a.place([48.85, 78.8, 52.52], [2.35, -89.5, 13.40], [berlin, greenland, berlin])
    assert a.table.lookup("region", rows).tolist() == ["Berlin", a.table.region[rows[1]], "Berlin"]
    assert a.table.lookup("country_code", rows)[1] == "GL"
    assert (a.containing(lat, lon) == rows).all()  # where they were moved is where they are named
    assert (lat[2], lon[2]) == (52.52, 13.40)  # already inside: unchanged


def test_sea_points_land_on_the_nearest_land_in_one_pass():
    """Many sea points at once (the vectorised pull-in, and the one-by-one fallback for islands smaller than
    the pull): each ends on land, in the area it is named, within a few km of its nearest land."""
    from geohf.geo.sphere import haversine_km

    a = areas()
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-60, 75, 3000), rng.uniform(-180, 180, 3000)
    sea = a.containing(lat, lon) < 0
    lat, lon = lat[sea][:400], lon[sea][:400]
    import shapely

    nearest, km, _ = a.labeller.index.nearest_points(shapely.points(lon, lat), lat)
    new_lat, new_lon, rows = a.locate(lat, lon)
    assert (rows >= 0).all() and (a.containing(new_lat, new_lon) == rows).all()
    moved_km = haversine_km(lat, lon, new_lat, new_lon)
    # at most the pull (0.05°, ~6 km) further than the nearest land point
    assert (moved_km <= km + 6.0).all(), np.max(moved_km - km)
    # the staged nearest search answers as the open one does
    tree, _, part_row = a.labeller.index._index_for(len(lat))
    _, open_part = tree.query_nearest(shapely.points(lon, lat), all_matches=False)
    assert (part_row[open_part] == nearest).all()


def test_nearest_search_on_tiles_cached_on_disk(tmp_path, monkeypatch):
    """An index with a cache key searches the nearest polygon on its 1° pieces: built once, saved in the cache,
    read back by the next index (no build), with the rows and km of the search on whole polygons."""
    import shapely

    import geohf.geo.index as index_module
    from geohf.geo.index import PolygonIndex

    monkeypatch.setenv("GEOHF_CACHE", str(tmp_path))
    geometry = areas().geometry
    first = PolygonIndex(geometry, cache_key="test-key")
    first.tiled()
    (saved,) = (tmp_path / "polygon-tiles").iterdir()
    assert saved.name.startswith("test-key") and not list(tmp_path.rglob("*.tmp*"))

    def no_build(*args, **kwargs):
        raise AssertionError("the cached tiles were not used")

    monkeypatch.setattr(index_module, "tile_parts", no_build)
    second, plain = PolygonIndex(geometry, cache_key="test-key"), PolygonIndex(geometry)
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-60, 75, 2000), rng.uniform(-180, 180, 2000)
    sea = plain.containing(shapely.points(lon, lat)) < 0
    points, lat = shapely.points(lon[sea], lat[sea]), lat[sea]
    rows, km, edge = second.nearest_points(points, lat)
    plain_rows, plain_km, plain_edge = plain.nearest_points(points, lat)
    assert sea.sum() > 500 and (rows >= 0).all()
    np.testing.assert_array_equal(rows, plain_rows)
    np.testing.assert_allclose(km, plain_km, rtol=1e-9)
    np.testing.assert_allclose(edge, plain_edge, atol=1e-9)
    assert len(second.tiled()[1]) > len(second.parts)  # the pieces: smaller and more of them
