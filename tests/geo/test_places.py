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
