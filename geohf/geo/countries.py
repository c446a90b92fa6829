"""ISO 3166-1 country codes and names (Kosovo = XK), independent of any boundary file."""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

# Natural Earth marks some admin-0 units with "-99"; these are the codes they stand for.
NATURAL_EARTH_FIXES = {
    "Kosovo": "XK",
    "Norway": "NO",
    "France": "FR",
    "N. Cyprus": "CY",
    "Northern Cyprus": "CY",
    "Somaliland": "SO",
}


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str]]:
    names, alpha3 = {}, {}
    with resources.files("geohf.geo").joinpath("data/iso3166.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            names[row["alpha2"]] = row["name"]
            alpha3[row["alpha3"]] = row["alpha2"]
    return names, alpha3


def country_name(code: str) -> str:
    """English short name for an ISO alpha-2 code (the code itself if unknown)."""
    return _table()[0].get(code, code)


def alpha3_to_alpha2(code: str) -> str | None:
    """ISO alpha-3 → alpha-2, ``None`` when unknown."""
    return _table()[1].get(code)


def is_country_code(code: str) -> bool:
    """True for an assigned ISO 3166-1 alpha-2 code (or XK)."""
    return code in _table()[0]


def all_country_codes() -> list[str]:
    """Every known alpha-2 code, sorted."""
    return sorted(_table()[0])
