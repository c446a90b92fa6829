"""Country and admin-1 region boundaries in one normalised table.

Every source becomes a GeoDataFrame (EPSG:4326) with the columns
``country_code, country, region_code, region, geometry``:

* the default: Natural Earth 1:10m admin-1, simplified and shipped inside the package
  (``geohf/geo/data/admin1.parquet``, built by ``scripts/make_boundaries.py``; already
  normalised, so it loads without any clean-up);
* a local file (GeoParquet, GeoJSON, Shapefile, GeoPackage) in geohf's schema, in Natural
  Earth's admin-1 schema (``iso_a2, iso_3166_2, name, ...``) or admin-0 schema (``iso_a3, name``);
* ``"natural-earth-10m"``: the full-resolution Natural Earth admin-1, downloaded once into the cache;
* ``"lowres"``: pyogrio's ``naturalearth_lowres`` fixture (177 countries, no regions).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from .._version import __version__
from ..errors import UserError
from .countries import NATURAL_EARTH_FIXES, alpha3_to_alpha2, country_name, is_country_code
from .names import FULL_NAME, LOWRES_NAME

logger = logging.getLogger(__name__)

NATURAL_EARTH_ADMIN1 = "ne_10m_admin_1_states_provinces"
NATURAL_EARTH_URL = f"https://naciscdn.org/naturalearth/10m/cultural/{NATURAL_EARTH_ADMIN1}.zip"
COLUMNS = ["country_code", "country", "region_code", "region", "geometry"]

SHIPPED_PATH = Path(__file__).resolve().parent / "data" / "admin1.parquet"
SHIPPED_NAME = f"Natural Earth 10m admin-1 (geohf {__version__}, simplified)"


def cache_dir() -> Path:
    """geohf's cache folder (``$GEOHF_CACHE`` or ``~/.cache/geohf``)."""
    return Path(os.environ.get("GEOHF_CACHE", Path.home() / ".cache" / "geohf"))


def lowres_path() -> Path:
    """The Natural Earth low-resolution countries shipped with pyogrio's test fixtures."""
    import pyogrio

    return Path(pyogrio.__file__).parent / "tests" / "fixtures" / "naturalearth_lowres" / "naturalearth_lowres.shp"


def shipped_path() -> Path:
    """The simplified Natural Earth 1:10m admin-1 file inside the package (the default)."""
    return SHIPPED_PATH


def find_boundaries() -> tuple[str, str]:
    """Resolve the default boundary source as ``(kind, location)``.

    Order: ``$GEOHF_BOUNDARIES`` (a file, ``natural-earth-10m`` or ``lowres``); the
    Natural Earth admin-1 file shipped in the package. An explicit ``--boundaries FILE`` /
    ``load_boundaries(FILE)`` argument comes before both.
    """
    env = os.environ.get("GEOHF_BOUNDARIES")
    if env:
        return "file", env
    return "file", str(shipped_path())


def boundaries_name(source: str | os.PathLike | None = None) -> str:
    """What a card records for a boundary source: a name and version, or the file's name.

    The shipped file is :data:`SHIPPED_NAME`; a user's file is its file name (no absolute path).
    """
    if source is None:
        source = find_boundaries()[1]
    source = str(source)
    if source == FULL_NAME:
        return "Natural Earth 10m admin-1 (full resolution)"
    if source == LOWRES_NAME:
        return "Natural Earth low-resolution countries (pyogrio fixture, no regions)"
    path = Path(source).expanduser()
    if path.resolve() == SHIPPED_PATH:
        return SHIPPED_NAME
    if path.resolve() == lowres_path().resolve():
        return boundaries_name(LOWRES_NAME)
    if path.name == f"{NATURAL_EARTH_ADMIN1}.parquet" and path.resolve().parent == cache_dir().resolve():
        return boundaries_name(FULL_NAME)
    return path.name


def download_natural_earth(timeout: float = 30.0) -> Path:
    """Download Natural Earth 1:10m admin-1 once and cache it as GeoParquet."""
    import tempfile
    import urllib.request

    target = cache_dir() / f"{NATURAL_EARTH_ADMIN1}.parquet"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        zip_path = Path(tmp) / "admin1.zip"
        with urllib.request.urlopen(NATURAL_EARTH_URL, timeout=timeout) as r, open(zip_path, "wb") as f:
            f.write(r.read())
        frame = gpd.read_file(f"zip://{zip_path}")
        part = Path(tmp) / "admin1.parquet"
        frame.to_parquet(part)
        part.replace(target)
    return target


def _clean_region_code(code: str, country_code: str) -> str:
    code = (code or "").rstrip("~").strip()
    if code.startswith("-99"):
        code = country_code + code[3:]
    return code or country_code


def _country_code_column(frame: pd.DataFrame) -> pd.Series:
    """ISO alpha-2 codes from whichever Natural Earth columns the frame has."""
    if "iso_a2" in frame:
        codes = frame["iso_a2"].astype(str)
    else:
        codes = frame["iso_a3"].astype(str).map(lambda c: alpha3_to_alpha2(c) or "-99")
    bad = ~codes.map(is_country_code)
    if bad.any():
        name_col = next(c for c in ("admin", "name", "NAME") if c in frame)
        fixed = frame.loc[bad, name_col].map(NATURAL_EARTH_FIXES)
        if "adm0_a3" in frame:
            fixed = fixed.fillna(frame.loc[bad, "adm0_a3"].map(alpha3_to_alpha2))
        codes.loc[bad] = fixed.fillna("")
    return codes


def normalise_boundaries(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Map a Natural Earth admin-0/admin-1 table onto geohf's columns, valid geometries."""
    frame = frame.to_crs(4326) if frame.crs is not None else frame.set_crs(4326)
    codes = _country_code_column(frame)
    keep = codes != ""
    if (~keep).any():
        logger.warning("dropping %d boundary polygons with no country code", int((~keep).sum()))
    frame, codes = frame[keep], codes[keep]
    if "iso_3166_2" in frame:
        region_code = [_clean_region_code(r, c) for r, c in zip(frame["iso_3166_2"].astype(str), codes)]
        # Natural Earth's own `name` (local spelling); its `name_en` has wrong rows (Cesvaines → Valmiera)
        region = frame["name"]
        if "name_en" in frame:
            region = region.fillna(frame["name_en"])
        region = region.fillna(pd.Series(region_code, index=frame.index))
        region = region.astype(str).to_numpy(dtype=object)
    else:
        region_code = [""] * len(frame)
        region = np.array([""] * len(frame), dtype=object)
    geometry = frame.geometry.make_valid()
    out = gpd.GeoDataFrame(
        {
            "country_code": codes.to_numpy(),
            "country": [country_name(c) for c in codes],
            "region_code": region_code,
            "region": region,
        },
        geometry=geometry.to_numpy(),
        crs=4326,
    )
    return out.reset_index(drop=True)


@lru_cache(maxsize=4)
def _load_cached(path: str) -> gpd.GeoDataFrame:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"boundary file {path!r} does not exist; pass a Natural Earth admin-1 or admin-0 file "
            "(GeoParquet, GeoJSON, Shapefile or GeoPackage), or omit it to use the default"
        )
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        if set(COLUMNS) <= set(pq.read_schema(p).names):  # already normalised (the shipped file): no clean-up
            return gpd.read_parquet(p, columns=COLUMNS)
        frame = gpd.read_parquet(p)
    else:
        frame = gpd.read_file(p)
    if frame.columns.intersection(COLUMNS[:-1]).size == 4:
        return frame[COLUMNS].reset_index(drop=True)
    if not {"iso_a2", "iso_a3"} & set(frame.columns):
        raise UserError(
            f"boundary file {path!r} has neither geohf's columns {COLUMNS[:-1]} nor Natural Earth's "
            "iso_a2/iso_a3 column; add a country_code column (ISO 3166-1 alpha-2)"
        )
    return normalise_boundaries(frame)


def resolve_boundaries(source: str | os.PathLike | None = None) -> Path:
    """The file behind a boundary source (``None``: :func:`find_boundaries`; or a name: see :func:`load_boundaries`)."""
    if source is None:
        source = find_boundaries()[1]
    if str(source) == LOWRES_NAME:
        return lowres_path()
    if str(source) == FULL_NAME:
        return download_natural_earth()
    return Path(source).expanduser()


def load_boundaries(source: str | os.PathLike | None = None) -> gpd.GeoDataFrame:
    """Boundaries as a normalised GeoDataFrame.

    Args:
        source: a file path; ``"natural-earth-10m"`` for the full-resolution Natural Earth
            admin-1 (downloaded once into :func:`cache_dir`); ``"lowres"`` for pyogrio's
            countries (no regions); or ``None`` for ``$GEOHF_BOUNDARIES``, else the
            simplified Natural Earth admin-1 shipped in the package.
    """
    return _load_cached(str(resolve_boundaries(source).resolve())).copy()
