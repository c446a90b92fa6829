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


# names people and datasets write for a country, beyond the ISO short names and codes
COUNTRY_VARIANTS = {
    "usa": "US",
    "us": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "united states of america": "US",
    "america": "US",
    "uk": "GB",
    "u.k.": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "united kingdom of great britain and northern ireland": "GB",
    "turkey": "TR",
    "turkiye": "TR",
    "republic of turkiye": "TR",
    "czech republic": "CZ",
    "czechia": "CZ",
    "ivory coast": "CI",
    "cote d ivoire": "CI",
    "cote divoire": "CI",
    "south korea": "KR",
    "korea": "KR",
    "republic of korea": "KR",
    "korea republic of": "KR",
    "korea south": "KR",
    "north korea": "KP",
    "democratic peoples republic of korea": "KP",
    "korea dpr": "KP",
    "russia": "RU",
    "russian federation": "RU",
    "iran": "IR",
    "iran islamic republic of": "IR",
    "islamic republic of iran": "IR",
    "vietnam": "VN",
    "viet nam": "VN",
    "laos": "LA",
    "lao pdr": "LA",
    "lao peoples democratic republic": "LA",
    "syria": "SY",
    "syrian arab republic": "SY",
    "bolivia": "BO",
    "bolivia plurinational state of": "BO",
    "venezuela": "VE",
    "venezuela bolivarian republic of": "VE",
    "tanzania": "TZ",
    "united republic of tanzania": "TZ",
    "tanzania united republic of": "TZ",
    "moldova": "MD",
    "republic of moldova": "MD",
    "moldova republic of": "MD",
    "macedonia": "MK",
    "north macedonia": "MK",
    "republic of north macedonia": "MK",
    "fyrom": "MK",
    "swaziland": "SZ",
    "eswatini": "SZ",
    "cape verde": "CV",
    "cabo verde": "CV",
    "burma": "MM",
    "myanmar": "MM",
    "dr congo": "CD",
    "drc": "CD",
    "democratic republic of the congo": "CD",
    "congo kinshasa": "CD",
    "congo democratic republic of the": "CD",
    "republic of the congo": "CG",
    "congo brazzaville": "CG",
    "congo": "CG",
    "congo republic": "CG",
    "holy see": "VA",
    "vatican": "VA",
    "vatican city": "VA",
    "vatican city state": "VA",
    "palestine": "PS",
    "state of palestine": "PS",
    "palestinian territories": "PS",
    "taiwan": "TW",
    "taiwan province of china": "TW",
    "republic of china": "TW",
    "brunei": "BN",
    "brunei darussalam": "BN",
    "uae": "AE",
    "emirates": "AE",
    "east timor": "TL",
    "timor leste": "TL",
    "holland": "NL",
    "the netherlands": "NL",
    "netherlands": "NL",
    "bosnia": "BA",
    "bosnia herzegovina": "BA",
    "kosovo": "XK",
    "micronesia": "FM",
    "federated states of micronesia": "FM",
    "falkland islands": "FK",
    "falklands": "FK",
    "hong kong": "HK",
    "macau": "MO",
    "macao": "MO",
    "the bahamas": "BS",
    "bahamas": "BS",
    "the gambia": "GM",
    "gambia": "GM",
    "saint lucia": "LC",
    "st lucia": "LC",
    "saint kitts and nevis": "KN",
    "st kitts and nevis": "KN",
    "saint vincent and the grenadines": "VC",
    "st vincent and the grenadines": "VC",
    "sao tome and principe": "ST",
    "reunion": "RE",
    "curacao": "CW",
}


def _normalise_name(text: str) -> str:
    import re
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_text = ascii_text.casefold().replace("&", " and ").replace("'", "").replace("’", "")
    ascii_text = re.sub(r"[^a-z0-9.]+", " ", ascii_text).strip()
    return re.sub(r"^the ", "", ascii_text) if ascii_text not in COUNTRY_VARIANTS else ascii_text


@lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    names, _ = _table()
    index = {}
    for code, name in names.items():
        index[_normalise_name(name)] = code
        if "(" in name:  # "Holy See (Vatican City State)": both halves
            head, _, tail = name.partition("(")
            index[_normalise_name(head)] = code
            index[_normalise_name(tail.rstrip(")"))] = code
        if "," in name:  # "Korea, Republic of"
            head, _, tail = name.partition(",")
            index[_normalise_name(f"{tail} {head}")] = code
    index.update({_normalise_name(k): v for k, v in COUNTRY_VARIANTS.items()})
    index.update({k: v for k, v in COUNTRY_VARIANTS.items()})
    return index


def country_code_of(value) -> str | None:
    """ISO alpha-2 code for a country name or code as datasets write it (``None`` when unknown).

    Accepts alpha-2 and alpha-3 codes (any case), ISO short names and the common variants
    (``USA``, ``United States of America``, ``Türkiye`` / ``Turkey``, ``Czechia`` / ``Czech Republic``,
    ``Côte d'Ivoire`` / ``Ivory Coast``...), ignoring case, accents and punctuation.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if len(text) == 2 and is_country_code(text.upper()):
        return text.upper()
    if len(text) == 3 and text.isalpha() and alpha3_to_alpha2(text.upper()):
        return alpha3_to_alpha2(text.upper())
    key = _normalise_name(text)
    return _name_index().get(key) or _name_index().get(key.replace(".", "").strip())
