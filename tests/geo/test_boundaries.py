"""The admin-1 boundary file shipped inside the package is the default, clean and usable as is."""

import numpy as np
import pytest
import shapely

from geohf.geo import boundaries as B
from geohf.geo.labelling import PointLabeller


@pytest.fixture(scope="module")
def shipped():
    return B.load_boundaries(B.shipped_path())


@pytest.fixture(scope="module")
def shipped_labeller(shipped):
    return PointLabeller(shipped)


def test_shipped_file_is_the_default(monkeypatch, shipped):
    monkeypatch.delenv("GEOHF_BOUNDARIES", raising=False)
    assert B.shipped_path().is_file()
    assert B.shipped_path().parent == (B.Path(B.__file__).parent / "data").resolve()  # inside the package
    assert B.find_boundaries() == ("file", str(B.shipped_path()))
    default = B.load_boundaries()
    assert default.equals(shipped)
    assert B.boundaries_name() == B.SHIPPED_NAME
    assert "simplified" in B.SHIPPED_NAME and "geohf" in B.SHIPPED_NAME


def test_environment_and_argument_come_first(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOHF_BOUNDARIES", "lowres")
    assert B.find_boundaries() == ("file", "lowres")
    assert B.resolve_boundaries(None) == B.lowres_path()
    assert not (B.load_boundaries()["region_code"] != "").any()  # countries only
    assert B.resolve_boundaries(tmp_path / "mine.parquet") == tmp_path / "mine.parquet"
    assert B.boundaries_name(tmp_path / "mine.parquet") == "mine.parquet"  # a user's file: its name, no path
    assert B.boundaries_name("lowres").startswith("Natural Earth low-resolution")


def test_full_resolution_is_an_explicit_download_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOHF_CACHE", str(tmp_path))
    cached = tmp_path / f"{B.NATURAL_EARTH_ADMIN1}.parquet"
    cached.write_bytes(B.shipped_path().read_bytes())  # stands in for the download (no network in tests)
    assert B.resolve_boundaries(B.FULL_NAME) == cached
    assert B.boundaries_name(B.FULL_NAME) == B.boundaries_name(cached) == "Natural Earth 10m admin-1 (full resolution)"
    assert len(B.load_boundaries(B.FULL_NAME)) > 4000


def test_shipped_file_is_clean(shipped):
    assert list(shipped.columns) == B.COLUMNS
    assert shipped.crs.to_epsg() == 4326
    assert len(shipped) > 4000
    assert (shipped["region_code"] != "").all() and (shipped["region"] != "").all()
    assert shipped["region_code"].nunique() > 4000
    assert shipped["country_code"].nunique() > 230
    assert "XK" in set(shipped["country_code"])
    assert not shipped["country_code"].str.startswith("-99").any()
    assert not shipped["region_code"].str.contains(r"^-99|~").any()
    geoms = shipped.geometry.to_numpy()
    assert shapely.is_valid(geoms).all() and not shapely.is_empty(geoms).any()
    assert set(shipped.geom_type) <= {"Polygon", "MultiPolygon"}


def test_normalised_file_loads_without_clean_up(monkeypatch):
    def fail(_):
        raise AssertionError("normalise_boundaries called on an already normalised file")

    monkeypatch.setattr(B, "normalise_boundaries", fail)
    B._load_cached.cache_clear()
    try:
        frame = B.load_boundaries(B.shipped_path())
    finally:
        B._load_cached.cache_clear()
    assert len(frame) > 4000


@pytest.mark.parametrize(
    "lat, lon, country, region",
    [
        (48.8566, 2.3522, "FR", "FR-75"),  # Paris
        (-33.8688, 151.2093, "AU", "AU-NSW"),  # Sydney
        (39.7392, -104.9903, "US", "US-CO"),  # Denver
        (42.6629, 21.1655, "XK", "XK-X20"),  # Pristina
        (-22.9068, -43.1729, "BR", "BR-RJ"),  # Rio de Janeiro
        (30.0, -40.0, "", ""),  # mid-Atlantic: unmatched
    ],
)
def test_known_points(shipped_labeller, lat, lon, country, region):
    frame, _ = shipped_labeller.label(np.array([lat]), np.array([lon]))
    assert (frame.loc[0, "country_code"], frame.loc[0, "region_code"]) == (country, region)
    assert frame.loc[0, "match"] == ("inside" if country else "none")


def test_dataset_card_names_the_boundaries(tiny_dataset, admin1_path):
    card = (tiny_dataset / "README.md").read_text(encoding="utf-8")
    assert f"`{B.boundaries_name(admin1_path)}`" in card  # the shipped file's name and version, or a file name
    assert str(B.Path(admin1_path).parent) not in card  # no absolute path of this machine
