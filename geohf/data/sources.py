"""The field's own datasets as geohf datasets: OSV-5M, im2gps3k, YFCC4k, YFCC26k, MP-16, any table.

Each reader turns the files a source ships into one row per image: ``source_file`` (the
source's own image id), ``latitude``, ``longitude``, ``split``, the source's own columns, and
``_image`` (a :class:`~geohf.data.archives.MemberRef`: a file or a member of a zip / tar shard).
:func:`import_source` then labels the rows (country, region; cells where asked) and writes
them through the same path as ``geohf dataset build`` (Parquet shards, card, ``skipped.csv``).

Formats (as the sources ship them):

* ``osv5m``: the ``osv5m/osv5m`` Hub dataset repo: ``train.csv`` / ``test.csv`` (``id, latitude,
  longitude, country, region, sub-region, city, ..., unique_country, unique_region, unique_sub-region,
  unique_city``) and ``images/<split>/NN.zip`` shards of ``<id>.jpg``; or its webdataset variant
  ``osv5m/osv5m-wds``: ``<split>/*.tar`` of ``<key>.jpg`` + ``<key>.json`` (the same fields).
* ``im2gps3k`` / ``yfcc4k`` / ``yfcc26k``: an image folder (or zip / tar) + the CSV the evaluation
  repos ship (``im2gps3k_places365.csv``, ``yfcc4k_places365.csv``, ``yfcc25600_places365.csv``:
  ``IMG_ID, AUTHOR, LAT, LON, S3_Label, ...``); only ``IMG_ID, LAT, LON`` are required.
* ``mp16``: ``MP16_Pro_filtered.csv`` / ``MP16_Pro_places365.csv`` / ``mp16_places365.csv`` (``IMG_ID,
  AUTHOR, LAT, LON, ...``, MP16-Pro adds ``neighbourhood, city, county, state, region, country,
  country_code, continent``) + ``mp-16-images.tar`` (members ``<dir>/<dir>/<IMG_ID with / as _>``), or
  an image folder.
* ``table``: any CSV / Parquet / JSONL with an image-name column and latitude / longitude columns
  (named with the options), and an image folder or zip / tar shards.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value
from tqdm.auto import tqdm

from ..errors import UserError, one_line
from ..files import IMAGE_SUFFIXES
from ..geo.boundaries import boundaries_name
from ..geo.labelling import PointLabeller
from ..hub.cards import DatasetCardFields
from ..images import ImageLoadError, probe_image
from .archives import MemberRef, ShardIndex, shard_members, tar_json_members
from .blocks import ImageRead
from .build import BuildReport, CellSpec, write_labelled_dataset
from .filters import kept_rows, validate_coordinates
from .import_config import ImportConfig
from .names import SOURCES
from .report import LabellingStats
from .skips import SkipLog
from .tables import read_table

STAGE = "match"
VERIFY_THREADS = 4  # each holds one image (at most images.max_image_bytes())
VERIFY_BLOCK = 1024
BENCHMARK_CSVS = {
    "im2gps3k": ("im2gps3k_places365.csv",),
    "yfcc4k": ("yfcc4k_places365.csv",),
    "yfcc26k": ("yfcc25600_places365.csv", "yfcc26k_places365.csv"),
    "mp16": ("MP16_Pro_filtered.csv", "MP16_Pro_places365.csv", "mp16_places365.csv"),
}
OSV5M_SPLITS = {"train": "train", "test": "test", "val": "validation"}
# geohf's own column names: a source column of the same name is kept as source_<name>
RESERVED = {"image", "latitude", "longitude", "split", "source_file", "country_code", "country", "region_code",
            "region", "label_match", "location_id"}  # fmt: skip

CARDS = {
    "osv5m": {
        "pretty_name": "OSV-5M",
        "description": "OpenStreetView-5M (Astruc et al., CVPR 2024): 5.1M street-view images from Mapillary in 225 "
        "countries, imported from its Hub files with `geohf dataset import osv5m` (no loading script).",
        "license": "cc-by-sa-4.0",
        "license_text": "CC BY-SA 4.0, as the OSV-5M authors publish it (images from Mapillary).",
        "source": "https://huggingface.co/datasets/osv5m/osv5m (paper: https://arxiv.org/abs/2404.18873)",
        "collection": "Mapillary street-view images selected and split by the OSV-5M authors; their train/test "
        "split is kept as it is.",
        "personal_data": "Mapillary blurs faces and licence plates; some may remain.",
        "limitations": "Street-level imagery only; coverage follows Mapillary contributors.",
    },
    "im2gps3k": {
        "pretty_name": "im2gps3k",
        "description": "The im2gps3k benchmark (Vo, Jacobs and Hays, ICCV 2017): Flickr photos with their GPS "
        "coordinates, the test set of PIGEON, GeoCLIP, OSV-5M and most image-geolocation papers.",
        "license": "other",
        "license_text": "Flickr photos under their authors' licences; for research use as the benchmark's authors ask.",
        "source": "https://github.com/lugiavn/revisiting-im2gps (metadata: TIBHannover/GeoEstimation "
        "meta/im2gps3k_places365.csv)",
        "collection": "Flickr photos chosen by the benchmark's authors.",
        "personal_data": "Flickr photos can show people.",
        "limitations": "Landmark- and tourism-heavy; Flickr's geotags are not always exact.",
    },
    "yfcc4k": {
        "pretty_name": "YFCC4k",
        "description": "The YFCC4k benchmark (Vo, Jacobs and Hays, ICCV 2017): Flickr photos from YFCC100M with "
        "their GPS coordinates. Papers count it differently (4,536 images listed; some report ~4,000 "
        "found): this card gives the number actually imported.",
        "license": "other",
        "license_text": "YFCC100M photos under their Creative Commons licences.",
        "source": "https://github.com/lugiavn/revisiting-im2gps (metadata: yfcc4k_places365.csv as the G3 / "
        "img2loc evaluation code ships it)",
        "collection": "A random sample of YFCC100M chosen by the benchmark's authors.",
        "personal_data": "Flickr photos can show people.",
        "limitations": "Many photos carry few location cues; Flickr's geotags are not always exact.",
    },
    "yfcc26k": {
        "pretty_name": "YFCC26k",
        "description": "YFCC26k (yfcc25600, Müller-Budack et al., ECCV 2018): 25,600 YFCC100M photos used as a "
        "validation / test set.",
        "license": "other",
        "license_text": "YFCC100M photos under their Creative Commons licences.",
        "source": "https://github.com/TIBHannover/GeoEstimation (meta/yfcc25600_places365.csv)",
        "collection": "A sample of YFCC100M chosen by the GeoEstimation authors.",
        "personal_data": "Flickr photos can show people.",
        "limitations": "Flickr's geotags are not always exact.",
    },
    "mp16": {
        "pretty_name": "MP-16",
        "description": "MP-16 (Larson et al., MediaEval 2016; MP16-Pro, Jia et al. 2024): 4.7M geotagged YFCC100M "
        "photos, the training set of GeoCLIP, PIGEOTTO's comparisons, G3 and img2loc.",
        "license": "other",
        "license_text": "YFCC100M photos under their Creative Commons licences; academic research use.",
        "source": "https://huggingface.co/datasets/Jia-py/MP16-Pro (metadata: TIBHannover/GeoEstimation "
        "mp16_places365.csv)",
        "collection": "Flickr photos from YFCC100M (MediaEval 2016 placing task), excluding the test users.",
        "personal_data": "Flickr photos can show people.",
        "limitations": "Landmark- and tourism-heavy; Flickr's geotags are not always exact.",
    },
    "table": {
        "pretty_name": "imported images",
        "description": "Images with a table of file names and coordinates, imported with `geohf dataset import table`.",
    },
}


@dataclass
class SourceRows:
    """What a reader found: the rows, the source columns kept and how to describe them."""

    frame: pd.DataFrame
    columns: dict[str, str] = field(default_factory=dict)  # kept column -> meaning
    shards: dict[str, str] = field(default_factory=dict)  # truncated shard -> what happened
    images_found: int = 0
    rows_in_source: int = 0


@dataclass
class ImportResult:
    """An import: the build report, the truncated shards and both kinds of mismatch."""

    report: BuildReport
    rows_in_source: int
    images_found: int
    rows_without_image: int
    images_without_row: int
    shards: dict[str, str]

    @property
    def images_per_second(self) -> float:
        return self.report.images_per_second


# ------------------------------------------------------------------ tables
def find_column(table: pd.DataFrame, wanted: str | None, choices: tuple[str, ...], what: str, where) -> str:
    """The column named ``wanted`` or the first of ``choices`` present (case-insensitive)."""
    lower = {c.lower(): c for c in table.columns}
    for name in [wanted] if wanted else choices:
        if name in table.columns:
            return name
        if name.lower() in lower:
            return lower[name.lower()]
    flag = f" (--{what}-column)" if what else ""
    raise UserError(
        f"{where}: no {what} column {wanted or ' / '.join(choices)}{flag}; it has {list(table.columns)[:12]}"
    )


def _find_file(root: Path, names: tuple[str, ...], kind: str) -> Path:
    for base in (root, root / "metadata", root / "meta"):
        for name in names:
            if (base / name).is_file():
                return base / name
    tables = sorted(p for p in root.glob("*") if p.suffix in (".csv", ".parquet", ".jsonl", ".tsv"))
    if len(tables) == 1:
        return tables[0]
    raise UserError(
        f"{root}: no {' / '.join(names)} for {kind} (and {len(tables)} other tables); pass the table with --table"
    )


# ------------------------------------------------------------------ images
@dataclass
class ImageIndex:
    """Images by name (a member path or a file path relative to the folder) from a folder or shards."""

    refs: dict[str, MemberRef] = field(default_factory=dict)
    shards: dict[str, str] = field(default_factory=dict)

    def add_shard(self, index: ShardIndex, log: SkipLog) -> None:
        self.refs.update(index.members)
        if index.error:
            self.shards[Path(index.path).name] = f"{index.error}; {len(index.members)} images kept"
            log.skip("shards", Path(index.path).name, f"{index.error}: {len(index.members)} readable images kept")

    def by_basename(self, log: SkipLog | None = None) -> dict[str, MemberRef]:
        """Name → image, keyed by the file name only (``a/b/123.jpg`` → ``123.jpg``); a second image of the
        same file name is left out (listed), so a row never silently gets another folder's image."""
        out: dict[str, MemberRef] = {}
        for name, ref in self.refs.items():
            base = Path(name).name
            if base in out:
                if log is not None:
                    log.skip(STAGE, name, f"image file name {base} seen twice: the first one is used")
                continue
            out[base] = ref
        return out


def index_images(location: str | Path, log: SkipLog, pattern: str = "*") -> ImageIndex:
    """Every image under a folder (files, and members of the ``.zip`` / ``.tar`` shards in it), or in one shard."""
    location = Path(location)
    index = ImageIndex()
    if location.is_file():
        index.add_shard(shard_members(location), log)
        return index
    if not location.is_dir():
        raise UserError(f"{location}: no such image folder or shard")
    paths = sorted(p for p in location.rglob(pattern) if p.is_file())
    for p in tqdm(paths, desc=f"indexing {location.name}", unit="file", leave=False):
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            index.refs[p.relative_to(location).as_posix()] = MemberRef(str(p))
        elif suffix in (".zip", ".tar"):
            index.add_shard(shard_members(p), log)
    return index


def match_rows(
    table: pd.DataFrame, keys: pd.Series, images: dict[str, MemberRef], log: SkipLog, where: str
) -> pd.DataFrame:
    """Rows of ``table`` whose key has an image, with ``_image``; both mismatches counted and listed:
    rows without an image, and images no row names."""
    refs = [images.get(k) for k in keys]
    has = np.array([r is not None for r in refs], bool)
    for k in keys[~has]:
        log.skip(STAGE, k, f"{where} row without an image: no image named {k}")
    listed = set(keys)
    for name in sorted(set(images) - listed):
        log.skip(STAGE, name, f"image without a row: {name} is not in {where}")
    dup = keys.duplicated().to_numpy() & has
    for k in keys[dup]:
        log.skip(STAGE, k, f"{where} lists {k} twice: the first row is kept")
    out = table[has & ~dup].copy()
    out["_image"] = [r for r, h, d in zip(refs, has, dup) if h and not d]
    return out.reset_index(drop=True)


# ------------------------------------------------------------------ source columns
def keep_source_columns(table: pd.DataFrame, used: list[str], source: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The source's other columns under their own names (``source_<name>`` where geohf has that name)."""
    out, meanings = pd.DataFrame(index=table.index), {}
    for column in table.columns:
        if column in used or column.startswith("_"):
            continue
        name = f"source_{column}" if column in RESERVED else column
        out[name] = table[column]
        meanings[name] = f"{source}'s own `{column}` column, as shipped"
    return out, meanings


def _feature(series: pd.Series):
    values = pd.to_numeric(series.replace("", np.nan), errors="coerce")
    numeric = values.notna() | series.isna() | (series.astype(str) == "")
    if numeric.all() and values.notna().any():
        return Value("float64"), values.astype(np.float64)
    return Value("string"), _strings(series)


def _strings(series: pd.Series) -> pd.Series:
    """Object column of str and None (pandas' str dtype would turn None back into NaN)."""
    values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in series]
    return pd.Series(values, index=series.index, dtype=object)


# ------------------------------------------------------------------ readers
def read_benchmark(
    source: str, root: str | Path, log: SkipLog, table: str | None = None, images: str | None = None
) -> SourceRows:
    """im2gps3k / YFCC4k / YFCC26k / MP-16: the CSV (``IMG_ID, LAT, LON``) + images (folder or shards)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    table_path = Path(table) if table else _find_file(root if root.is_dir() else root.parent, BENCHMARK_CSVS[source],
                                                      source)  # fmt: skip
    frame = read_table(table_path, log)
    id_col = find_column(frame, None, ("IMG_ID", "image_id", "file_name", "filename"), "image", table_path.name)
    lat_col = find_column(frame, None, ("LAT", "latitude", "lat"), "latitude", table_path.name)
    lon_col = find_column(frame, None, ("LON", "longitude", "lon", "lng"), "longitude", table_path.name)
    index = index_images(images or root, log)
    lookup = index.by_basename(log)
    keys = frame[id_col].astype(str).map(lambda s: Path(s).name)
    if source == "mp16":  # MP16-Pro's tar names each image <IMG_ID with "/" replaced by "_">
        flat = frame[id_col].astype(str).str.replace("/", "_")
        keys = flat.where(flat.isin(set(lookup)), keys)
    matched = match_rows(frame, keys, lookup, log, table_path.name)
    kept, meanings = keep_source_columns(matched, [lat_col, lon_col], source)
    rows = pd.DataFrame(
        {
            "source_file": matched[id_col].astype(str),
            "latitude": matched[lat_col],
            "longitude": matched[lon_col],
            "split": "train" if source == "mp16" else "test",
            "_image": matched["_image"],
        }
    )
    return SourceRows(pd.concat([rows, kept], axis=1), meanings, index.shards, len(index.refs), len(frame))


def read_osv5m(root: str | Path, splits: list[str] | None, log: SkipLog) -> SourceRows:
    """OSV-5M from its Hub files: ``<split>.csv`` + ``images/<split>/*.zip``, or the webdataset
    layout ``<split>/*.tar`` (``<key>.jpg`` + ``<key>.json``)."""
    root = Path(root)
    wds = any((root / s).is_dir() and any((root / s).glob("*.tar")) for s in OSV5M_SPLITS)
    available = [s for s in OSV5M_SPLITS if (root / s).is_dir()] if wds else [
        s for s in OSV5M_SPLITS if (root / f"{s}.csv").is_file()]  # fmt: skip
    wanted = splits or available
    missing = [s for s in wanted if s not in available]
    if not available or missing:
        raise UserError(
            f"{root}: no OSV-5M split {missing or wanted} (expected <split>.csv + images/<split>/NN.zip, or "
            f"<split>/*.tar); it has {available}"
        )
    parts, meanings, shards, found, listed = [], {}, {}, 0, 0
    for split in wanted:
        rows = _read_osv5m_wds(root / split, log) if wds else _read_osv5m_zip(root, split, log)
        rows.frame["split"] = OSV5M_SPLITS[split]
        parts.append(rows.frame)
        meanings.update(rows.columns)
        shards.update(rows.shards)
        found += rows.images_found
        listed += rows.rows_in_source
    return SourceRows(pd.concat(parts, ignore_index=True), meanings, shards, found, listed)


def _osv5m_rows(table: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict[str, str]]:
    id_col = find_column(table, None, ("id",), "id", where)
    kept, meanings = keep_source_columns(table, ["latitude", "longitude"], "OSV-5M")
    rows = pd.DataFrame(
        {
            "source_file": table[id_col].astype(str),
            "latitude": table[find_column(table, None, ("latitude",), "latitude", where)],
            "longitude": table[find_column(table, None, ("longitude",), "longitude", where)],
            "_image": table["_image"],
        }
    )
    kept = kept.drop(columns=[c for c in ("id",) if c in kept])
    meanings.pop("id", None)
    return pd.concat([rows, kept], axis=1), meanings


def _read_osv5m_zip(root: Path, split: str, log: SkipLog) -> SourceRows:
    table = read_table(root / f"{split}.csv", log)
    shards = sorted((root / "images" / split).glob("*.zip"))
    if not shards:
        raise UserError(f"{root / 'images' / split}: no .zip shards (OSV-5M ships images/{split}/00.zip, 01.zip...)")
    index = ImageIndex()
    for shard in tqdm(shards, desc=f"indexing {split} shards", unit="shard", leave=False):
        index.add_shard(shard_members(shard), log)
    lookup = {Path(name).stem: ref for name, ref in index.refs.items()}
    matched = match_rows(table, table["id"].astype(str), lookup, log, f"{split}.csv")
    frame, meanings = _osv5m_rows(matched, f"{split}.csv")
    return SourceRows(frame, meanings, index.shards, len(index.refs), len(table))


def _read_osv5m_wds(folder: Path, log: SkipLog) -> SourceRows:
    index, records = ImageIndex(), []
    for shard in tqdm(sorted(folder.glob("*.tar")), desc=f"indexing {folder.name} shards", unit="shard", leave=False):
        index.add_shard(shard_members(shard), log)
        metas = tar_json_members(shard)
        for key, reason in metas.refused.items():
            log.skip(STAGE, f"{shard.name}:{key}.json", f"refused: {reason}")
        for key, raw in metas.data.items():
            try:
                meta = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                log.skip(STAGE, f"{shard.name}:{key}.json", "unreadable JSON metadata: re-download the shard")
                continue
            if not isinstance(meta, dict):
                log.skip(
                    STAGE, f"{shard.name}:{key}.json", f"JSON metadata is not an object: got {type(meta).__name__}"
                )
                continue
            records.append({**meta, "_key": key})
    table = pd.DataFrame(records)
    if table.empty:
        raise UserError(f"{folder}: no <key>.json metadata in its .tar shards")
    if "id" not in table:
        table["id"] = table["_key"].map(lambda k: Path(k).name)
    lookup = {str(Path(name).with_suffix("")): ref for name, ref in index.refs.items()}
    matched = match_rows(table, table["_key"], lookup, log, f"{folder.name}/*.tar metadata")
    frame, meanings = _osv5m_rows(matched.drop(columns=["_key"]), folder.name)
    return SourceRows(frame, meanings, index.shards, len(index.refs), len(table))


def read_any_table(cfg: ImportConfig, log: SkipLog) -> SourceRows:
    """``table``: any table naming an image per row, with coordinates (or a country) and images."""
    if not cfg.table:
        raise UserError("geohf dataset import table: pass --table FILE (CSV / Parquet / JSONL) naming the images")
    table_path = Path(cfg.table)
    frame = read_table(table_path, log)
    where = table_path.name
    id_col = find_column(frame, cfg.image_column, ("file_name", "image", "IMG_ID", "filename", "path"), "image", where)
    lat_col = find_column(frame, cfg.latitude_column, ("latitude", "lat", "LAT"), "latitude", where)
    lon_col = find_column(frame, cfg.longitude_column, ("longitude", "lon", "lng", "LON"), "longitude", where)
    country_col = cfg.country_column or next((c for c in ("country", "country_code") if c in frame), None)
    index = index_images(cfg.images or cfg.input, log)
    names = frame[id_col].astype(str)
    exact = all(n in index.refs for n in names.head(50)) and len(names)
    lookup = index.refs if exact else index.by_basename(log)
    keys = names if exact else names.map(lambda s: Path(s).name)
    matched = match_rows(frame, keys, lookup, log, where)
    used = [lat_col, lon_col] + [c for c in (cfg.split_column, country_col) if c]
    kept, meanings = keep_source_columns(matched, used, "the table")
    rows = pd.DataFrame(
        {
            "source_file": matched[id_col].astype(str),
            "latitude": matched[lat_col].replace("", np.nan),
            "longitude": matched[lon_col].replace("", np.nan),
            "_image": matched["_image"],
        }
    )
    rows["split"] = matched[cfg.split_column].map(_split_name) if cfg.split_column else cfg.default_split or "train"
    if country_col:
        rows["file_country"] = matched[country_col]
    return SourceRows(pd.concat([rows, kept], axis=1), meanings, index.shards, len(index.refs), len(frame))


def _split_name(value) -> str:
    text = str(value).strip().lower()
    return {"val": "validation", "valid": "validation", "dev": "validation"}.get(text, text)


# ------------------------------------------------------------------ Hub
def download_osv5m(repo_id: str, splits: list[str] | None, revision: str | None = None) -> Path:
    """The files of the wanted splits of an OSV-5M Hub dataset repo (``osv5m/osv5m`` or ``osv5m/osv5m-wds``),
    read with ``huggingface_hub`` (no loading script)."""
    from huggingface_hub import snapshot_download

    names = splits or list(OSV5M_SPLITS)
    patterns = [p for s in names for p in (f"{s}.csv", f"images/{s}/*", f"{s}/*.tar")]
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except Exception as err:
        raise UserError(f"{repo_id}: cannot download the OSV-5M files from the Hub ({err})") from err


# ------------------------------------------------------------------ import
def read_source(cfg: ImportConfig, log: SkipLog) -> SourceRows:
    if cfg.source not in SOURCES:
        raise UserError(f"unknown source {cfg.source!r}; choose one of {', '.join(SOURCES)}")
    if cfg.source == "osv5m":
        root = Path(cfg.input).expanduser()
        if not root.is_dir():
            root = download_osv5m(cfg.input, cfg.splits, cfg.revision)
        return read_osv5m(root, cfg.splits, log)
    if cfg.source == "table":
        return read_any_table(cfg, log)
    return read_benchmark(cfg.source, Path(cfg.input).expanduser(), log, cfg.table, cfg.images)


def import_source(cfg: ImportConfig) -> ImportResult:
    """Read a source, label its rows (points at sea kept unlabelled: a benchmark scores every row; rows with
    a country but no coordinates kept for the country heads), and write the dataset folder."""
    start = time.perf_counter()
    log = SkipLog()
    found = read_source(cfg, log)
    raw = verify_images(found.frame, log)
    if raw.empty:
        raise UserError(
            f"{cfg.input}: no row of the table has an image ({len(log)} mismatches; first: "
            f"{log.entries[0].item if log.entries else '-'}); check the image folder and the id column"
        )
    labeller = PointLabeller(cfg.boundaries)
    frame = validate_coordinates(raw, labeller, log, keep_at_sea=True, country_only=True)
    extra, meanings = {}, dict(found.columns)
    for column in found.columns:
        feature, values = _feature(frame[column])
        extra[column], frame[column] = feature, values
    if "file_country" in frame:  # the table's country column (--country-column)
        extra["file_country"] = Value("string")
        frame["file_country"] = _strings(frame["file_country"].map(lambda v: v if isinstance(v, str) and v else None))
        meanings["file_country"] = "the country the table gives (a name or code, as written)"
    refs = frame.pop("_image").tolist()
    frame["_ref_path"] = [r.path for r in refs]
    frame["_ref_offset"] = np.array([r.offset for r in refs], dtype=np.int64)
    frame["_ref_size"] = np.array([r.size for r in refs], dtype=np.int64)
    frame["_ref_method"] = np.array([r.method for r in refs], dtype=np.int64)
    frame["_ref_name"] = [r.name for r in refs]
    frame["_ref_declared"] = np.array([r.declared for r in refs], dtype=np.int64)
    frame["_ref_crc"] = np.array([r.crc for r in refs], dtype=np.int64)
    del refs
    without_image = sum(1 for e in log.entries if "row without an image" in e.reason)
    without_row = sum(1 for e in log.entries if e.reason.startswith("image without a row"))
    processing = {"rows in the source": found.rows_in_source, "images found": found.images_found}
    processing.update({f"skipped, {k}": v for k, v in log.counts().items()})
    processing["kept"] = len(frame)
    labelling = LabellingStats(
        inside_polygon=int((frame["label_match"] == "inside").sum()),
        nearest_polygon=int((frame["label_match"] == "nearest").sum()),
        at_sea_unlabelled=int((frame["label_match"] == "none").sum()),
        country_only=int((frame["label_match"] == "country-only").sum()),
    )
    card = DatasetCardFields(
        **{**CARDS["table"], **CARDS[cfg.source]},
        boundaries=boundaries_name(cfg.boundaries),
        max_distance_km=labeller.max_distance_km,
        repo_id=cfg.repo_id or f"<org>/{cfg.source}",
        command=import_command(cfg),
        images_note="Images are stored as the source's own bytes, none re-encoded; each one's header was "
        "checked (format, size, pixel limit), so the counts are the source's minus what `skipped.csv` lists "
        "(mismatches, and members that are not images or over the size limits).",
        split_note="The source's own split"
        + (
            " (one test split: cells, where asked, are fitted on its rows)"
            if cfg.source in BENCHMARK_CSVS and cfg.source != "mp16"
            else ""
        )
        + ".",  # fmt: skip
        column_meanings=meanings,
    )
    report = write_labelled_dataset(
        frame,
        ImageRead("member"),
        cfg.output,
        [CellSpec.parse(c) for c in cfg.cells],
        card,
        processing,
        labelling,
        cfg.overwrite,
        skips=log,
        boundaries=labeller.boundaries,
        extra_features=extra,
        allow_no_train=True,
        engine=cfg.engine,
        address=cfg.address,
    )
    report.seconds = time.perf_counter() - start
    return ImportResult(report, found.rows_in_source, found.images_found, without_image, without_row, found.shards)


def _check_image(ref: MemberRef) -> str | None:
    """Why ``ref`` is not an image geohf stores (``None``: it is): read within the limits, header decoded."""
    try:
        probe_image(ref.read(), ref.where)
    except ImageLoadError as err:
        return err.reason if err.reason.startswith("refused:") else f"undecodable image: {err.reason}"
    except OSError as err:  # the file went away or cannot be read
        return f"unreadable: {one_line(err)}"
    return None


def verify_images(frame: pd.DataFrame, log: SkipLog) -> pd.DataFrame:
    """The rows whose ``_image`` is an image: every file or member read within the limits (archive members
    inflated with a cap and a ratio check) and its header decoded (format, size, pixel limit), nothing
    re-encoded. The others are listed in ``log`` (one line naming the file or member) and left out."""
    refs = frame["_image"].tolist()
    reasons: list[str | None] = []
    bar = tqdm(total=len(refs), desc="checking images", unit="img", leave=False)
    with ThreadPoolExecutor(min(VERIFY_THREADS, os.cpu_count() or 1)) as pool:
        for start in range(0, len(refs), VERIFY_BLOCK):  # a block at a time: a future per image would not scale
            reasons.extend(pool.map(_check_image, refs[start : start + VERIFY_BLOCK]))
            bar.update(min(VERIFY_BLOCK, len(refs) - start))
    bar.close()
    for ref, reason in zip(refs, reasons):
        if reason is not None:
            log.skip("images", ref.where, reason)
    keep = np.array([r is None for r in reasons], bool)
    return kept_rows(frame, keep)


def import_command(cfg: ImportConfig) -> str:
    words = ["geohf dataset import", cfg.source, Path(cfg.input).name if Path(cfg.input).exists() else cfg.input,
             f"--output {Path(cfg.output).name}"]  # fmt: skip
    if cfg.splits:
        words.append("--split " + " ".join(cfg.splits))
    for flag, value in (("--table", cfg.table), ("--images", cfg.images)):
        if value:
            words.append(f"{flag} {Path(value).name}")
    for flag, value in (("--image-column", cfg.image_column), ("--latitude-column", cfg.latitude_column),
                        ("--longitude-column", cfg.longitude_column), ("--split-column", cfg.split_column),
                        ("--country-column", cfg.country_column)):  # fmt: skip
        if value:
            words.append(f"{flag} {value}")
    if cfg.cells:
        words.append("--cells " + " ".join(cfg.cells))
    return " ".join(words)
