"""Readers for raw image layouts: each turns a folder into one row per image.

Every reader returns a DataFrame with ``source_file`` (the image's path relative to the folder, in
``/`` form), ``latitude, longitude`` and whatever
else the layout knows (``location_id``, ``heading``, ``capture_date``, ``view``, ``grid``,
the file's own labels as ``file_country_code`` / ``file_country`` / ``file_region``).
Coordinates are returned as read, unvalidated; anything unreadable is recorded in the
:class:`~geohf.data.skips.SkipLog` with the file and the fix.

Layouts:

* ``lost-and-found`` (the Kaggle "street-location-images" layout): ``location_<id>.png`` +
  ``location_<id>.json`` pairs, or ``geoguessr_location_<mode>_<id>.png`` +
  ``geoguessr_result_<mode>_<id>.json``; JSON ``{"coordinates": [lat, lon], "country_name",
  "country_code", "regions": [[name, "POINT (lon lat)"], ...]}``.
* ``grid-folders`` (a GeoGuessr-grid scraper's layout): ``<grid>/<lat>,<lon>/<n>-<yyyy>-<mm>.jpg`` or the flattened
  ``<grid>+<lat>,<lon>+<n>-<yyyy>-<mm>.jpg``; all images of one ``<lat>,<lon>`` are views of
  one location.
* ``imagefolder``: images + ``metadata.csv`` / ``metadata.jsonl`` / ``metadata.parquet`` with
  ``file_name, latitude, longitude`` (and optionally ``location_id, heading, capture_date,
  provider, provider_id``), the layout ``geohf collect run`` writes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import IMAGE_SUFFIXES
from .skips import SkipLog
from .tables import MAX_JSON_BYTES, read_table, repeated, source_lines, string_column

METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
IMAGEFOLDER_COLUMNS = ("location_id", "heading", "capture_date", "provider", "provider_id")
STAGE = "read"


def _images(root: Path) -> list[Path]:
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return tqdm(paths, desc=f"reading {root.name}", unit="file", leave=False)


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist")
    return root


# ------------------------------------------------------------------ lost-and-found
_LAF_IMAGE = re.compile(r"^(?:geoguessr_location_(?P<mode>.+)_|location_)(?P<id>[^/]+)$")


def _laf_json_for(image: Path) -> tuple[Path, str] | None:
    m = _LAF_IMAGE.match(image.stem)
    if m is None:
        return None
    if m["mode"] is not None:
        return image.with_name(f"geoguessr_result_{m['mode']}_{m['id']}.json"), f"{m['mode']}_{m['id']}"
    return image.with_name(f"location_{m['id']}.json"), m["id"]


def _coordinates(meta: dict) -> tuple[object, object] | None:
    """(latitude, longitude) of a lost-and-found JSON: ``coordinates: [lat, lon]`` (the dataset's
    order), ``{"lat", "lng"}``, or a GeoJSON Point (``[lon, lat]``, as GeoJSON says)."""
    geometry = meta.get("geometry") if isinstance(meta.get("geometry"), dict) else meta
    if geometry.get("type") == "Point":
        value = geometry.get("coordinates")
        if isinstance(value, (list, tuple)) and len(value) >= 2:
            return value[1], value[0]
        return None
    value = meta.get("coordinates")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    if isinstance(value, dict) and {"lat", "lng"} <= set(value):
        return value["lat"], value["lng"]
    return None


def read_lost_and_found(root: str | Path, log: SkipLog) -> pd.DataFrame:
    """Image + JSON pairs of the lost-and-found (street-location-images) dataset."""
    root = _check_root(root)
    rows, paired_json = [], set()
    for image in _images(root):
        found = _laf_json_for(image)
        if found is None:
            log.skip(
                STAGE,
                image,
                "unexpected file name: lost-and-found images are location_<id>.png or "
                "geoguessr_location_<mode>_<id>.png",
            )
            continue
        meta_path, location_id = found
        if not meta_path.is_file():
            log.skip(STAGE, image, f"no JSON beside the image: expected {meta_path.name}")
            continue
        paired_json.add(meta_path)
        size = meta_path.stat().st_size
        if size > MAX_JSON_BYTES:
            log.skip(STAGE, meta_path, f"JSON too large: {size:,} bytes, over the {MAX_JSON_BYTES:,}-byte limit for "
                     "one image's metadata; fix or delete the file")  # fmt: skip
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.skip(STAGE, meta_path, f"unreadable JSON: {err}; fix or delete the file")
            continue
        except RecursionError:  # arrays or objects nested thousands deep
            log.skip(STAGE, meta_path, "unreadable JSON: nested too deep; fix or delete the file")
            continue
        if not isinstance(meta, dict):
            log.skip(STAGE, meta_path, f"JSON is not an object: got {type(meta).__name__}")
            continue
        coords = _coordinates(meta)
        if coords is None:
            log.skip(STAGE, meta_path, 'no coordinates: the JSON needs "coordinates": [lat, lon]')
            continue
        regions = meta.get("regions")  # [[region, ...], ...] in the dataset; anything else: no region
        first = regions[0] if isinstance(regions, list) and regions else None
        first_region = first[0] if isinstance(first, (list, tuple)) and first and isinstance(first[0], str) else ""
        rows.append(
            {
                "source_file": image.relative_to(root).as_posix(),
                "latitude": coords[0],
                "longitude": coords[1],
                "location_id": location_id,
                "file_country_code": str(meta.get("country_code") or ""),
                "file_country": str(meta.get("country_name") or ""),
                "file_region": str(first_region or ""),
            }
        )
    for meta_path in sorted(root.rglob("*.json")):
        if meta_path not in paired_json and _LAF_IMAGE.match(
            meta_path.stem.replace("geoguessr_result_", "geoguessr_location_")
        ):
            log.skip(STAGE, meta_path, "no image beside the JSON: expected a .png with the same id")
    return pd.DataFrame(
        rows,
        columns=[
            "source_file",
            "latitude",
            "longitude",
            "location_id",
            "file_country_code",
            "file_country",
            "file_region",
        ],
    )


# ------------------------------------------------------------------ grid folders
_NUM = r"[-+]?\d+(?:\.\d+)?"
_GRID_NESTED = re.compile(
    rf"^(?P<grid>[^/]+)/(?P<lat>{_NUM})\s*,\s*(?P<lon>{_NUM})/(?P<n>\d+)\s*-\s*(?P<y>\d{{4}})\s*-\s*(?P<m>\d{{1,2}})$"
)
_GRID_FLAT = re.compile(
    rf"^(?P<grid>[^+/]+?)\s*\+\s*(?P<lat>{_NUM})\s*,\s*(?P<lon>{_NUM})\s*\+\s*(?P<n>\d+)\s*-\s*(?P<y>\d{{4}})"
    rf"\s*-\s*(?P<m>\d{{1,2}})$"
)


def read_grid_folders(root: str | Path, log: SkipLog) -> pd.DataFrame:
    """The ``<grid>/<lat>,<lon>/<n>-<yyyy>-<mm>.jpg`` folders (or the flattened ``+`` names)."""
    root = _check_root(root)
    rows = []
    for image in _images(root):
        rel = image.relative_to(root).with_suffix("").as_posix()
        m = _GRID_NESTED.match(rel) or _GRID_FLAT.match(image.stem)
        if m is None:
            log.skip(
                STAGE,
                image,
                "unexpected path: grid-folders images are <grid>/<lat>,<lon>/<n>-<yyyy>-<mm>.jpg "
                "or <grid>+<lat>,<lon>+<n>-<yyyy>-<mm>.jpg",
            )
            continue
        rows.append(
            {
                "source_file": image.relative_to(root).as_posix(),
                "latitude": m["lat"],
                "longitude": m["lon"],
                "location_id": f"{float(m['lat']):.6f},{float(m['lon']):.6f}",
                "view": int(m["n"]),
                "capture_date": f"{m['y']}-{int(m['m']):02d}",
                "grid": m["grid"].strip(),
            }
        )
    return pd.DataFrame(
        rows, columns=["source_file", "latitude", "longitude", "location_id", "view", "capture_date", "grid"]
    )


# ------------------------------------------------------------------ imagefolder
def read_metadata_table(path: Path, log: SkipLog | None = None) -> pd.DataFrame:
    """``metadata.csv|jsonl|parquet`` within :mod:`~geohf.data.tables`' limits (long rows listed in ``log``)."""
    return read_table(path, log, dtype={"file_name": str, "location_id": str, "capture_date": str})


def read_imagefolder(root: str | Path, log: SkipLog) -> pd.DataFrame:
    """Images with a ``metadata.csv|jsonl|parquet`` table (``file_name, latitude, longitude``)."""
    root = _check_root(root)
    found = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"{root} has no {' / '.join(METADATA_FILES)}: imagefolder needs a metadata table "
            "with file_name, latitude, longitude"
        )
    if len(found) > 1:
        raise UserError(f"{root} has several metadata tables {[p.name for p in found]}: keep one")
    table = read_metadata_table(found[0], log)
    missing = [c for c in ("file_name", "latitude", "longitude") if c not in table]
    if missing:
        raise UserError(
            f"{found[0]} has no column(s) {missing}: imagefolder metadata needs file_name, latitude, longitude"
        )
    # each row's fate in an int8 code, row by row only for the file check: no Python object kept per row
    names = table["file_name"]
    if pd.api.types.is_string_dtype(names) and names.dtype != object:  # a string column: checked at once
        valid = (names.notna() & (names != "")).to_numpy(bool)
    else:
        valid = np.fromiter((isinstance(n, str) and n != "" for n in names), bool, len(names))
    fate = np.where(valid, _KEEP, _EMPTY).astype(np.int8)
    fate[valid & repeated(names)] = _TWICE  # (the first of a name is never a duplicate)
    folder = str(root)
    for i in np.flatnonzero(fate == _KEEP):  # os.path: no Path (and no interned parts) per row
        if not os.path.isfile(os.path.join(folder, names.iat[i])):
            fate[i] = _MISSING
    lines = source_lines(table, 2 if found[0].suffix == ".csv" else 1)
    for i in np.flatnonzero(fate != _KEEP):
        name = names.iat[i]
        where = f"{found[0].name} row {lines[i]} ({name})"
        if fate[i] == _EMPTY:
            log.skip(STAGE, where, "empty file_name: give the image path relative to the folder")
        elif fate[i] == _TWICE:
            log.skip(STAGE, where, "file listed twice: the first row is kept")
        else:
            log.skip(STAGE, where, f"file not found: {root / name}")
    kept = np.flatnonzero(fate == _KEEP)
    extra = [c for c in IMAGEFOLDER_COLUMNS if c in table]
    every = len(kept) == len(table)  # then the columns are taken as they are, not copied
    frame = pd.DataFrame(
        {"source_file": _relative_names(names if every else names.iloc[kept], root)}
        | {c: _column(table[c] if every else table[c].iloc[kept], c) for c in ("latitude", "longitude", *extra)}
    )
    if "location_id" in frame:
        frame["location_id"] = frame["location_id"].astype(str)
    return frame


_KEEP, _EMPTY, _TWICE, _MISSING = 0, 1, 2, 3
_NOT_PLAIN = r"(?:^|/)\.(?:/|$)|//|/$|^/"
"""A name pathlib would rewrite: a ``.`` part, a doubled or trailing ``/``, an absolute path."""


def _relative_names(names: pd.Series, root: Path):
    """``source_file`` of each metadata name: its path under ``root`` in ``/`` form (as pathlib normalises it; a path
    outside ``root`` whole); names that need no rewriting, the usual case, are kept as they are (no copy)."""
    names = names.reset_index(drop=True)
    if not names.str.contains(_NOT_PLAIN, regex=True).any():
        return names.array
    return string_column((relative_path(root / n, root) for n in names), len(names))


def relative_path(item: str | Path, root: Path) -> str:
    """``item``'s path under ``root`` in ``/`` form; ``item`` as it is when it is not under ``root``."""
    try:
        return Path(item).relative_to(root).as_posix()
    except ValueError:
        return str(item)


def _column(values: pd.Series, name: str) -> pd.Series:
    """A metadata column of the kept rows, renumbered; a missing value of an extra column is NaN."""
    values = values.reset_index(drop=True)
    if name in ("latitude", "longitude") or not values.isna().any():
        return values
    return values.astype(object).where(values.notna(), np.nan).infer_objects()


LAYOUTS: dict[str, Callable[[str | Path, SkipLog], pd.DataFrame]] = {
    "lost-and-found": read_lost_and_found,
    "grid-folders": read_grid_folders,
    "imagefolder": read_imagefolder,
}


def read_layout(layout: str, root: str | Path, log: SkipLog) -> pd.DataFrame:
    """Rows of one raw layout (see :data:`LAYOUTS`); an empty folder is an error."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)} or bluemarble")
    frame = LAYOUTS[layout](root, log)
    if frame.empty:
        first = log.entries[0] if len(log) else None
        raise UserError(
            f"no usable images in {root} for layout {layout!r}"
            + (f" ({len(log)} files skipped; first: {first.item}: {first.reason})" if first else "")
        )
    return frame
