"""The names ``geohf collect``'s parser offers, without importing the collectors (pandas, geopandas, requests).

:mod:`.plan`, :mod:`.providers` and :mod:`.regions` define the things these name; a test checks they agree.
"""

SAMPLER_NAMES = ("fishnet", "population", "uniform")
PROVIDER_NAMES = ("mapillary", "streetview")
STREETVIEW_SOURCES = ("outdoor", "default")
CITY_COLUMNS = ["name", "latitude", "longitude", "radius_km"]
SPEC_HELP = (
    "country codes (FR), admin-1 codes (US-CA), cities (city:Paris@48.8566,2.3522,15km or a CSV with columns "
    f"{', '.join(CITY_COLUMNS)}), fishnet cells (fishnet:US@2 = 2° cells over US) or a GeoJSON file"
)
