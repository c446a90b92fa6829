"""Cleaning raw rows: coordinates, image quality (dark/blank and blur filters), duplicate locations.

Each step returns the rows it keeps and records every row it drops in the
:class:`~geohf.data.skips.SkipLog`, naming the file and the fix.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..geo.cells import positions
from ..geo.labelling import LABEL_COLUMNS, PointLabeller
from .quality import ImageFilter, measured_quality, skip_reason
from .skips import SkipLog
from .workers import map_chunks

COMPARE_ROWS = 1 << 16
"""Sorted rows compared at once when duplicates are looked for."""


# ------------------------------------------------------------------ coordinates
def _as_float(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        return None


def _floats(column: pd.Series) -> np.ndarray:
    """A coordinate column as float64, NaN where a value is not a number (:func:`_as_float`); a numeric column
    (not boolean) is converted at once."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(np.float64, na_value=np.nan)
    return np.array([_as_float(v) for v in column], dtype=np.float64)


def validate_coordinates(
    frame: pd.DataFrame,
    labeller: PointLabeller,
    log: SkipLog,
    fix_swapped: bool = False,
    keep_at_sea: bool = False,
    country_only: bool = False,
) -> pd.DataFrame:
    """Keep rows with usable coordinates and add the label columns.

    Dropped, with the reason: non-numbers, NaN / inf, latitude outside [-90, 90] or
    longitude outside [-180, 360], points at sea (no country within the labeller's
    distance). Longitudes in (180, 360] are read in the 0–360 convention and wrapped
    (reported as a fix). A point at sea, or out of range, whose swapped order lands on land
    is reported as "probably swapped" (and swapped only when ``fix_swapped``).

    Args:
        keep_at_sea: keep points at sea, unlabelled (``label_match`` "none"): a benchmark's
            rows are all scored, wherever they lie.
        country_only: keep rows with no coordinates at all but a country (``file_country_code``
            or ``file_country``, a name or code; see :func:`~geohf.geo.countries.country_code_of`):
            latitude/longitude NaN, the country labels from that country, ``label_match``
            "country-only". They train and score country heads only.
    """
    lat, lon = _floats(frame["latitude"]), _floats(frame["longitude"])
    items = frame["source_file"]  # read by position where a row is reported (no Python string per row)
    keep = np.ones(len(frame), bool)
    by_country = np.zeros(len(frame), bool)
    if country_only:
        given = _given_countries(frame)
        no_coords = np.array([_missing(a) and _missing(b) for a, b in zip(frame["latitude"], frame["longitude"])],
                             dtype=bool)  # fmt: skip
        by_country = no_coords & (given != None)  # noqa: E711 - elementwise
        for i in np.flatnonzero(no_coords & ~by_country):
            keep[i] = False
            log.skip("coordinates", items.iat[i], "no coordinates and no known country: give latitude/longitude or a "
                     "country name or ISO code")  # fmt: skip
    for name, values, raw in (("latitude", lat, frame["latitude"]), ("longitude", lon, frame["longitude"])):
        for i in np.flatnonzero(~np.isfinite(values) & ~by_country):
            if keep[i]:
                log.skip("coordinates", items.iat[i], f"{name} is not a finite number: got {raw.iloc[i]!r}")
                keep[i] = False
    # longitudes in the 0–360 convention (181 = 179°W) are wrapped, and reported
    east = keep & (lon > 180) & (lon <= 360) & (np.abs(lat) <= 90)
    for i in np.flatnonzero(east):
        log.fix("coordinates", items.iat[i], f"longitude in the 0–360 convention: {lon[i]:g} read as {lon[i] - 360:g}")
    if east.any():
        lon = np.where(east, lon - 360.0, lon)
    in_range = keep & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    if in_range.all():  # the usual table: the coordinates themselves, not a copy of each
        labels, _ = labeller.label(lat, lon, categorical=True)
    else:
        labels, _ = labeller.label(np.where(in_range, lat, 0.0), np.where(in_range, lon, 0.0), categorical=True)
    on_land = in_range & (labels["match"] != "none").to_numpy(bool)
    suspect = np.flatnonzero(keep & ~on_land & ~by_country)
    swapped_ok = np.zeros(len(frame), bool)
    if suspect.size:
        s_lat, s_lon = lon[suspect], lat[suspect]
        valid = np.abs(s_lat) <= 90
        s_labels, _ = labeller.label(np.where(valid, s_lat, 0.0), np.where(valid, s_lon, 0.0), categorical=True)
        swapped_ok[suspect] = valid & (s_labels["match"] != "none").to_numpy(bool)
        if fix_swapped and swapped_ok.any():  # swapped in our own copies: a float column's values are read-only
            lat, lon = lat.copy(), lon.copy()
        for k, i in enumerate(suspect):
            if keep_at_sea and in_range[i]:
                continue  # kept unlabelled
            where = f"({lat[i]:g}, {lon[i]:g})"
            if swapped_ok[i] and fix_swapped:
                lat[i], lon[i] = lon[i], lat[i]
                labels.iloc[i] = s_labels.iloc[k]
                log.fix(
                    "coordinates",
                    items.iat[i],
                    f"latitude/longitude swapped: {where} read as "
                    f"({lat[i]:g}, {lon[i]:g}) in {s_labels['country_code'].iat[k]}",
                )
                continue
            if swapped_ok[i]:
                reason = (
                    f"latitude/longitude probably swapped: {where} is {'at sea' if in_range[i] else 'out of range'}"
                    f", ({lon[i]:g}, {lat[i]:g}) is in {s_labels['country_code'].iat[k]}; fix the file or pass "
                    "--fix-swapped"
                )
            elif not in_range[i]:
                reason = f"coordinates out of range: {where}, need latitude in [-90, 90] and longitude in [-180, 360]"
            else:
                reason = f"at sea: no country within {labeller.max_distance_km:g} km of {where}"
            log.skip("coordinates", items.iat[i], reason)
            keep[i] = False
    out = frame.copy(deep=False)  # new columns only: the rows are copied once, by the mask at the end
    out["latitude"], out["longitude"] = lat, lon
    for col in LABEL_COLUMNS:
        out[col] = labels[col].array  # by position, as categoricals (a small code per row, no string per row)
    out["label_match"] = labels["match"].array
    if by_country.any():
        from ..geo.countries import country_name

        rows = np.flatnonzero(by_country)
        out["latitude"] = out["latitude"].astype(np.float64)
        out["longitude"] = out["longitude"].astype(np.float64)
        out.loc[rows, ["latitude", "longitude"]] = np.nan
        for col in LABEL_COLUMNS:
            out[col] = out[col].astype(object)
        out.loc[rows, "country_code"] = given[rows]
        out.loc[rows, "country"] = [country_name(c) for c in given[rows]]
        out.loc[rows, ["region_code", "region"]] = ""
        out["label_match"] = out["label_match"].astype(object)
        out.loc[rows, "label_match"] = "country-only"
    return kept_rows(out, keep)


def kept_rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows of ``frame`` where ``keep``, renumbered; ``frame`` itself when every row is kept (no copy)."""
    if keep.all():
        return frame if frame.index.equals(pd.RangeIndex(len(frame))) else frame.reset_index(drop=True)
    return frame[keep].reset_index(drop=True)


def _missing(value) -> bool:
    """An absent coordinate: None, NaN or an empty string (not a bad one such as "north")."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _given_countries(frame: pd.DataFrame) -> np.ndarray:
    """ISO code per row from ``file_country_code`` then ``file_country`` (None where neither resolves)."""
    from ..geo.countries import country_code_of

    out = np.full(len(frame), None, dtype=object)
    for column in ("file_country", "file_country_code"):  # the code wins where both resolve
        if column in frame:
            for i, value in enumerate(frame[column]):
                code = country_code_of(value)
                if code is not None:
                    out[i] = code
    return out


def label_disagreements(frame: pd.DataFrame, limit: int = 20) -> tuple[int, list[dict]]:
    """Rows whose file-given country differs from the one derived from the coordinates."""
    if "file_country_code" not in frame:
        return 0, []
    given = frame["file_country_code"].fillna("").astype(str).str.upper()
    differs = (given != "") & (given != frame["country_code"])
    examples = frame.loc[differs, ["source_file", "latitude", "longitude", "file_country_code", "country_code"]]
    return int(differs.sum()), examples.head(limit).to_dict("records")


def drop_duplicate_locations(frame: pd.DataFrame, log: SkipLog, decimals: int = 6) -> pd.DataFrame:
    """Keep the first location at each coordinate; views of that location stay."""
    lat = np.round(frame["latitude"].to_numpy(np.float64), decimals)
    lon = np.round(frame["longitude"].to_numpy(np.float64), decimals)
    # the rows sorted by their rounded coordinates, each coordinate's rows in row order: its first row leads
    order = positions(np.lexsort((lon, lat)), len(lat))
    new = np.ones(len(order), bool)  # a sorted row starts a coordinate (rows without coordinates: one group)
    for start in range(1, len(order), COMPARE_ROWS):  # compared a slice at a time: no sorted copy of a column
        here, before = order[start : start + COMPARE_ROWS], order[start - 1 : start - 1 + COMPARE_ROWS]
        new[start : start + len(here)] = ~(_same(lat[here], lat[before[: len(here)]])
                                           & _same(lon[here], lon[before[: len(here)]]))  # fmt: skip
    starts = np.flatnonzero(new)
    later = np.flatnonzero(~new)  # sorted positions of the rows after their coordinate's first row
    first = order[starts[np.searchsorted(starts, later, side="right") - 1]]  # and that first row
    del starts, new
    later = order[later]
    del order
    by_row = np.argsort(later, kind="stable")
    later, first = later[by_row], first[by_row]  # in row order
    if "location_id" in frame:  # views of the first row's location stay
        location = frame["location_id"].astype(str).reset_index(drop=True)
        other = location.iloc[later].to_numpy() != location.iloc[first].to_numpy()
        later, first = later[other], first[other]
    else:
        location = None
    for i, f in zip(later.tolist(), first.tolist()):
        key = f"{float(lat[i])},{float(lon[i])}"
        log.skip(
            "duplicates",
            frame["source_file"].iat[i],
            f"duplicate coordinates: ({key}) already used by location {f if location is None else location.iat[f]}",
        )
    dup = np.zeros(len(frame), bool)
    dup[later] = True
    return kept_rows(frame, ~dup)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal, or both NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


_CHUNK = 16  # images per task of the parallel check


def _quality_chunk(paths: list[str], side: int) -> list[tuple[float, float, int, int, str]]:
    return [measured_quality(path, side) for path in paths]


def filter_images(
    frame: pd.DataFrame, cfg: ImageFilter, log: SkipLog, num_proc: int = 1, apply: bool = True
) -> pd.DataFrame:
    """Decode every image once; drop undecodable ones always, dark/blank and blurry ones when ``apply``.

    Adds ``width, height, channel_variance, laplacian_variance`` columns. Runs on ``num_proc``
    processes, streaming (a few chunks of images in flight); a worker that dies is retried or
    stops the build with a :class:`~geohf.errors.UserError` (:func:`~geohf.data.workers.map_chunks`).
    """
    n = len(frame)
    paths = frame["source_file"].tolist()
    # results go straight into arrays (24 bytes per image), not a list of tuples (~140 bytes each)
    columns = [np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.int64), np.zeros(n, np.int64)]
    errors: dict[int, str] = {}

    def store(start: int, results: list[tuple[float, float, int, int, str]]) -> None:
        for i, result in enumerate(results, start):
            for column, value in zip(columns, result[:4]):
                column[i] = value
            if result[4]:
                errors[i] = result[4]
        bar.update(len(results))

    with tqdm(total=n, desc="checking images", unit="img", leave=False) as bar:
        if num_proc > 1:
            chunks = [paths[i : i + _CHUNK] for i in range(0, n, _CHUNK)]
            fix = (f"run again with a lower --num-proc (now {num_proc}) or --num-proc 1, or with more memory "
                   "free")  # fmt: skip
            for k, results in map_chunks(
                partial(_quality_chunk, side=cfg.stats_side), chunks, num_proc, "checking images", fix
            ):
                store(k * _CHUNK, results)
        else:
            for i, path in enumerate(paths):
                store(i, [measured_quality(path, cfg.stats_side)])
    names = ["channel_variance", "laplacian_variance", "width", "height"]
    stats = pd.DataFrame(dict(zip(names, columns)))
    keep = np.ones(n, bool)
    items = frame["source_file"].to_numpy()
    verdicts = [skip_reason((*row, errors.get(i, "")), cfg, apply) for i, row in enumerate(zip(*columns))]
    for kind in ("undecodable", "dark", "blurry"):  # the skip log lists them by kind, as it always has
        for i, verdict in enumerate(verdicts):
            if verdict is not None and verdict[0] == kind:
                log.skip("images", items[i], verdict[1])
                keep[i] = False
    out = pd.concat([frame.reset_index(drop=True), stats], axis=1)
    return out[keep].reset_index(drop=True)
