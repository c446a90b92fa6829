"""Labelled dataset building: records with coordinates → a Hub-ready dataset folder.

The flow is the same for every raw layout: a table of records (one row per image,
with ``latitude``, ``longitude``, ``split`` and the label columns), geocell partitions
fitted on the training rows only, then images streamed into Parquet shards next to
the partitions, a map and a generated card.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Features, Image, Value
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import UserError
from ..geo.cells import CellPartition, fit_cells, positions
from ..geo.labelling import LABEL_COLUMNS
from ..hub.cards import DatasetCardFields, render_dataset_card
from ..malloc import trim
from .blocks import ImageRead
from .execute import CardCounts, finish_folder, run_blocks
from .folder import DATA_DIR, SplitInfo, atomic_directory
from .plan import CELLS_DIR, BuildPlan
from .report import BuildReport, LabellingStats
from .skips import SkipLog
from .tables import empty_like

BUILD_REPORT = "build_report.json"
SKIPPED_CSV = "skipped.csv"
WORK_DIR = ".plan"

COLUMN_MEANINGS = {
    "image": "the image (PNG/JPEG bytes embedded in the Parquet shard)",
    "latitude": "latitude in degrees (WGS84)",
    "longitude": "longitude in degrees (WGS84)",
    "country_code": "ISO 3166-1 alpha-2 code (Kosovo = XK), derived from the coordinates",
    "country": "English country name",
    "region_code": "ISO 3166-2 style admin-1 code (Natural Earth)",
    "region": "admin-1 region name (state, province...)",
    "location_id": "id of the place; all views of one place share it and one split",
    "heading": "camera heading in degrees",
    "capture_date": "capture date (YYYY-MM) when the source gives it",
    "source_file": "file the image came from",
    "tile_x": "left pixel of the tile in the source image",
    "tile_y": "top pixel of the tile in the source image",
    "view": "index of the view among the images of its location",
    "grid": "grid cell the collector sampled this location for (grid-folders layout)",
    "provider": "image provider (streetview, mapillary...)",
    "provider_id": "the provider's id of the image or panorama",
}


@dataclass
class CellSpec:
    """A geocell partition to fit: ``name`` gives the column ``cell_<name>``."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> CellSpec:
        """``"quadtree"`` or ``"quadtree:max_samples=100,min_samples=10"`` or ``"q2=quadtree:..."``."""
        name, _, rest = text.partition("=") if "=" in text.split(":")[0] else ("", "", text)
        kind, _, args = rest.partition(":")
        params = {}
        for item in filter(None, args.split(",")):
            key, _, value = item.partition("=")
            params[key.strip()] = (
                json.loads(value) if value.strip()[:1].isdigit() or value in ("true", "false") else value
            )
        return cls(name or kind, kind, params)


def features_for(
    frame: pd.DataFrame, partitions: dict[str, CellPartition], extra: dict[str, Any] | None = None
) -> Features:
    """Datasets features of the output columns present in ``frame`` (``extra``: a source's own columns)."""
    feats = {"image": Image(), "latitude": Value("float64"), "longitude": Value("float64")}
    feats.update({c: Value("string") for c in LABEL_COLUMNS})
    feats.update({f"cell_{name}": Value("int32") for name in partitions})
    optional = {
        "location_id": Value("string"),
        "heading": Value("float32"),
        "capture_date": Value("string"),
        "source_file": Value("string"),
        "view": Value("int32"),
        "grid": Value("string"),
        "provider": Value("string"),
        "provider_id": Value("string"),
        "tile_x": Value("int32"),
        "tile_y": Value("int32"),
    }
    feats.update({c: v for c, v in optional.items() if c in frame})
    feats.update({c: v for c, v in (extra or {}).items() if c in frame and c not in feats})
    return Features(feats)


def fit_partitions(
    frame: pd.DataFrame, specs: list[CellSpec], boundaries=None, allow_no_train: bool = False
) -> dict[str, CellPartition]:
    """Fit each partition on the training rows only (rows without coordinates left out).

    ``allow_no_train``: a set with no training split (a benchmark) fits them on all its rows.
    """
    if not specs:
        return {}
    lat, lon = frame["latitude"].to_numpy(np.float64), frame["longitude"].to_numpy(np.float64)
    located = ~np.isnan(lat) & ~np.isnan(lon)
    rows = np.flatnonzero(located & (frame["split"] == "train").to_numpy(bool))
    if not rows.size and allow_no_train:
        rows = np.flatnonzero(located)
    if not rows.size:
        raise UserError("no training rows: geocells are fitted on the training split")
    del located
    rows = positions(rows, len(frame))
    labels = frame[LABEL_COLUMNS]  # the columns themselves: the fits read the training rows by position
    out = {}
    for spec in tqdm(specs, desc="fitting geocells", unit="partition", leave=False):
        out[spec.name] = fit_cells(spec.kind, lat, lon, labels, boundaries=boundaries, rows=rows, **spec.params)
    return out


def plan_labelled_dataset(
    frame: pd.DataFrame,
    read: ImageRead,
    cell_specs: list[CellSpec],
    card: DatasetCardFields,
    processing: dict[str, int] | None = None,
    labelling: LabellingStats | None = None,
    skips: SkipLog | None = None,
    boundaries=None,
    extra_features: dict[str, Any] | None = None,
    allow_no_train: bool = False,
    rows_per_shard: int = 5000,
) -> BuildPlan:
    """Fit the cells on ``frame``, assign them and cut the rows into blocks: the plan of a dataset folder.

    Args:
        frame: one row per image with ``split``, ``latitude``, ``longitude``, the label
            columns, any optional columns (``location_id``...) and where its image is (``_path``, or
            ``_ref_path, _ref_offset, _ref_size, _ref_method``: see :class:`~geohf.data.plan.ImageRead`).
        card: the dataset card's name, prose and provenance (:class:`~geohf.hub.cards.DatasetCardFields`).
        skips: inputs left out so far; written to ``skipped.csv`` with the images the check leaves out.
        boundaries: boundary table for the partitions that need one (semantic, fishnet).
        extra_features: features of a source's own columns to keep (``{"IMG_ID": Value("string")}``).
        allow_no_train: fit the partitions on all rows when there is no training split.

    Rows without coordinates (country-only labels) get cell -1 in every partition.
    """
    partitions = fit_partitions(frame, cell_specs, boundaries, allow_no_train)
    trim()  # the fit's freed geometries and slices go back before the next stage allocates
    frame = frame.copy(deep=False)  # new columns only
    lat, lon = frame["latitude"].to_numpy(np.float64), frame["longitude"].to_numpy(np.float64)
    for name, part in partitions.items():  # -1 where a row has no coordinates; the column is the array itself
        frame[f"cell_{name}"] = pd.Series(part.assign(lat, lon, np.int32), index=frame.index, copy=False)
    trim()
    features = features_for(frame, partitions, extra_features)
    plan = BuildPlan.make(
        frame, features, partitions, read, card, dict(processing or {}), labelling or LabellingStats(),
        skips or SkipLog(),
        rows_per_shard,
    )  # fmt: skip
    trim()
    return plan


def write_plan(
    plan: BuildPlan,
    output_dir: str | Path,
    overwrite: bool = False,
    engine: str = "local",
    num_proc: int = 1,
    address: str | None = None,
    loader: Callable[[dict], dict] | None = None,
    start: float | None = None,
    pool: ProcessPoolExecutor | None = None,
) -> BuildReport:
    """Execute ``plan`` on ``engine`` into the dataset folder ``output_dir``, written under a temporary name and
    renamed when complete (see :func:`~geohf.data.execute.run_blocks`; ``loader``: images made in this process;
    ``pool``: the local engine's workers, started already)."""
    start = time.perf_counter() if start is None else start
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        work = tmp / WORK_DIR
        plan.save(work)
        plan.rows, plan.order = empty_like(plan.rows), None  # the engines read the rows block by block, saved
        trim()
        results = run_blocks(work, plan, range(len(plan.blocks)), tmp / DATA_DIR, engine, num_proc, address, loader,
                             pool)  # fmt: skip
        shutil.rmtree(work)
        return finish_folder(tmp, plan, results, output_dir, time.perf_counter() - start)


def write_labelled_dataset(
    frame: pd.DataFrame,
    read: ImageRead | Callable[[dict], dict],
    output_dir: str | Path,
    cell_specs: list[CellSpec],
    card: DatasetCardFields,
    processing: dict[str, int] | None = None,
    labelling: LabellingStats | None = None,
    overwrite: bool = False,
    rows_per_shard: int = 5000,
    skips: SkipLog | None = None,
    boundaries=None,
    extra_features: dict[str, Any] | None = None,
    allow_no_train: bool = False,
    engine: str = "local",
    num_proc: int = 1,
    address: str | None = None,
) -> BuildReport:
    """:func:`plan_labelled_dataset`, then :func:`write_plan`: the dataset folder with card, map and partitions.

    ``read``: how the rows' images are read (:class:`~geohf.data.plan.ImageRead`), or row →
    ``{"bytes": ..., "path": ...}`` for images made in this process (local engine only).
    """
    start = time.perf_counter()
    loader = None if isinstance(read, ImageRead) else read
    plan = plan_labelled_dataset(
        frame, read if loader is None else ImageRead("made"), cell_specs, card, processing, labelling, skips,
        boundaries, extra_features, allow_no_train, rows_per_shard,
    )  # fmt: skip
    return write_plan(plan, output_dir, overwrite, engine, num_proc, address, loader, start)


def dataset_card_text(
    counts: CardCounts,
    features: Features,
    infos: dict[str, SplitInfo],
    partitions: dict[str, CellPartition],
    processing: dict[str, int],
    card: DatasetCardFields,
    labelling: LabellingStats | None = None,
) -> str:
    """README.md of a dataset folder."""
    from .folder import yaml_metadata

    n = counts.rows
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
    size = next((name for limit, name in bounds if n < limit), "1M<n<10M")
    card_data = {
        "license": card.license,
        "pretty_name": card.pretty_name,
        "task_categories": ["image-classification"],
        "tags": ["geolocation", "geohf", *card.tags],
        "size_categories": [size],
        **yaml_metadata(features, infos),
    }
    if card.shard:  # one shard of several: sizes a folder joining every shard's files would not match
        card_data["dataset_info"].pop("splits")
    return render_dataset_card(
        card_data,
        pretty_name=card.pretty_name,
        description=card.description,
        geohf_version=__version__,
        build_date=dt.date.today().isoformat(),
        command=card.command,
        images_note=card.images_note,
        skipped_file=card.skipped_file,
        repo_id=card.repo_id,
        split_counts={s: i.num_examples for s, i in infos.items()},
        split_note=card.split_note,
        top_countries=counts.top(20),
        n_countries=counts.n_countries,
        n_regions=counts.n_regions,
        columns=[
            {"name": c, "dtype": _dtype_name(f), "meaning": _meaning(c, card.column_meanings)}
            for c, f in features.items()
        ],
        partitions=[
            {"name": name, "kind": p.kind, "n_cells": len(p), "file": f"{CELLS_DIR}/{name}.parquet", "params": p.params}
            for name, p in partitions.items()
        ],
        processing=processing,
        labelling=labelling or LabellingStats(),
        boundaries=card.boundaries,
        max_distance_km=card.max_distance_km,
        source=card.source,
        license_text=card.license_text,
        collection=card.collection,
        personal_data=card.personal_data,
        limitations=card.limitations,
    )


def _dtype_name(feature) -> str:
    return getattr(feature, "dtype", None) or type(feature).__name__.lower()


def _meaning(column: str, extra: Mapping[str, str] | None = None) -> str:
    if column.startswith("cell_"):
        return f"geocell id in the `{column[5:]}` partition (see Geocells; -1: no coordinates)"
    return (extra or {}).get(column) or COLUMN_MEANINGS.get(column, "")
