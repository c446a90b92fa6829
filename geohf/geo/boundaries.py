"""Country and admin-1 region boundaries in one normalised table.

Every source becomes a GeoDataFrame (EPSG:4326) with the columns
``country_code, country, region_code, region, geometry``:

* a local file (GeoParquet, GeoJSON, Shapefile, GeoPackage) in Natural Earth's admin-1
  schema (``iso_a2, iso_3166_2, name, ...``) or admin-0 schema (``iso_a3, name``);
* Natural Earth 1:10m admin-1, found locally or downloaded once into the cache;
* pyogrio's ``naturalearth_lowres`` fixture (177 countries, no regions) as the fallback
  that is always installed.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from ..errors import UserError
from .countries import NATURAL_EARTH_FIXES, alpha3_to_alpha2, country_name, is_country_code

logger = logging.getLogger(__name__)

NATURAL_EARTH_ADMIN1 = "ne_10m_admin_1_states_provinces"
NATURAL_EARTH_URL = f"https://naciscdn.org/naturalearth/10m/cultural/{NATURAL_EARTH_ADMIN1}.zip"
COLUMNS = ["country_code", "country", "region_code", "region", "geometry"]


def cache_dir() -> Path:
    """geohf's cache folder (``$GEOHF_CACHE`` or ``~/.cache/geohf``)."""
    return Path(os.environ.get("GEOHF_CACHE", Path.home() / ".cache" / "geohf"))


def lowres_path() -> Path:
    """The Natural Earth low-resolution countries shipped with pyogrio's test fixtures."""
    import pyogrio

    return Path(pyogrio.__file__).parent / "tests" / "fixtures" / "naturalearth_lowres" / "naturalearth_lowres.shp"


def _local_admin1_candidates() -> list[Path]:
    names = [f"{NATURAL_EARTH_ADMIN1}.parquet"]
    roots = [cache_dir(), Path.cwd() / ".." / "shared" / "data" / "naturalearth"]
    roots.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "naturalearth")
    return [root / n for root in roots for n in names]


def find_boundaries() -> tuple[str, str]:
    """Resolve the default boundary source as ``(kind, location)``.

    Order: ``$GEOHF_BOUNDARIES``; a Natural Earth admin-1 file in the cache or in
    ``../shared/data/naturalearth``; a download of Natural Earth admin-1 into the cache;
    pyogrio's low-resolution countries (no regions) when offline.
    """
    env = os.environ.get("GEOHF_BOUNDARIES")
    if env:
        return "file", env
    for p in _local_admin1_candidates():
        if p.is_file():
            return "file", str(p.resolve())
    try:
        return "file", str(download_natural_earth())
    except Exception as err:  # offline: fall back, loudly
        warnings.warn(
            f"Natural Earth admin-1 boundaries are not available ({err}); using pyogrio's "
            "low-resolution countries: no admin-1 regions. Pass --boundaries FILE or set "
            "GEOHF_BOUNDARIES to a Natural Earth admin-1 file for region labels.",
            stacklevel=2,
        )
        return "file", str(lowres_path())


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
    frame = gpd.read_parquet(p) if p.suffix == ".parquet" else gpd.read_file(p)
    if frame.columns.intersection(COLUMNS[:-1]).size == 4:
        return frame[COLUMNS].reset_index(drop=True)
    if not {"iso_a2", "iso_a3"} & set(frame.columns):
        raise UserError(
            f"boundary file {path!r} has neither geohf's columns {COLUMNS[:-1]} nor Natural Earth's "
            "iso_a2/iso_a3 column; add a country_code column (ISO 3166-1 alpha-2)"
        )
    return normalise_boundaries(frame)


def load_boundaries(source: str | os.PathLike | None = None) -> gpd.GeoDataFrame:
    """Boundaries as a normalised GeoDataFrame.

    Args:
        source: a file path, ``"lowres"`` for pyogrio's countries, or ``None`` for the
            default search of :func:`find_boundaries`.
    """
    if source is None:
        _, source = find_boundaries()
    elif str(source) == "lowres":
        source = lowres_path()
    return _load_cached(str(Path(source).resolve())).copy()
