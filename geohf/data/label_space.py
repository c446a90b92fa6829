"""The label space of a new model, from its training data: the heads' classes and the cell partition.

Geocells come from the dataset's own partition (``cells/<name>.parquet`` beside a dataset folder or in its
Hub repo) or, for a split without one, a partition fitted on its coordinates; countries and regions from its
label columns, each class with the spherical mean of its samples as centroid. Each head kind builds its spec
(:meth:`~geohf.modeling.heads.GeoHead.spec_from_data`) from the :class:`~geohf.modeling.heads.HeadData` this
module reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pandas as pd

from ..geo.cells import CellPartition, fit_cells
from ..geo.gazetteer import Gazetteer
from ..geo.labelling import LABEL_COLUMNS
from ..modeling.configuration_geohf import CELL_COLUMN_PREFIX, DEFAULT_QUEUE_SIZE, HeadSpec
from ..modeling.heads import HeadData, head_kind
from ..modeling.labels import LabelSpace
from .build import CELLS_DIR, CellSpec


def load_partition(dataset: str, name: str, revision: str | None = None) -> CellPartition:
    """The cell partition saved beside a dataset folder or in its Hub repo (``cells/<name>.parquet``)."""
    local = Path(dataset) / CELLS_DIR / f"{name}.parquet"
    if Path(dataset).is_dir():
        if not local.is_file():
            raise FileNotFoundError(
                f"{local} not found: the dataset has no '{name}' cell partition; pass a spec to fit one "
                f"(e.g. --cells quadtree:max_samples=50)"
            )
        return CellPartition.load(local)
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(dataset, f"{CELLS_DIR}/{name}.parquet", repo_type="dataset", revision=revision)
    return CellPartition.load(path)


def label_column_values(dataset, column: str, max_rows: int = 10_000) -> list:
    """A column of a dataset split (the first ``max_rows`` rows of a stream)."""
    if hasattr(dataset, "__len__"):
        return list(dataset[column])
    return [row[column] for row in dataset.select_columns([column]).take(max_rows)]


def split_columns(dataset, columns: Sequence[str], max_rows: int = 10_000) -> pd.DataFrame:
    """Columns of a split as a DataFrame (the first ``max_rows`` rows of a stream), or a ValueError naming the
    missing ones."""
    names = set(getattr(dataset, "column_names", None) or [])
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"the training split has no column(s) {missing}; it has {sorted(names)}")
    return pd.DataFrame({c: label_column_values(dataset, c, max_rows) for c in columns})


def fit_partition(train, spec: str = "quadtree", max_rows: int = 10_000) -> CellPartition:
    """A partition fitted on a training split's coordinates (``"quadtree"`` or ``"quadtree:max_samples=50"``)."""
    cell_spec = CellSpec.parse(spec)
    wanted = ["latitude", "longitude"] + [c for c in LABEL_COLUMNS if c in (train.column_names or [])]
    rows = split_columns(train, wanted, max_rows)
    rows = rows[rows["latitude"].notna() & rows["longitude"].notna()].reset_index(drop=True)  # not country-only
    labels = rows.reindex(columns=LABEL_COLUMNS, fill_value="")
    return fit_cells(
        cell_spec.kind, rows["latitude"].to_numpy(), rows["longitude"].to_numpy(), labels, **cell_spec.params
    )


def resolve_training_data(dataset, cells: str | CellPartition | None, revision: str | None = None):
    """``(train split, partition, partition name, partition read from the dataset?)`` for :func:`label_space`."""
    train, source = dataset, None
    if isinstance(dataset, (str, os.PathLike)):
        from datasets import load_dataset

        source = str(dataset)
        loaded = load_dataset(source, revision=revision) if not Path(source).is_dir() else load_dataset(source)
        if "train" not in loaded:
            raise ValueError(f"dataset {source} has no 'train' split; it has {list(loaded)}")
        train = loaded["train"]
    elif hasattr(dataset, "keys") and "train" in dataset:  # a DatasetDict
        train = dataset["train"]
    if isinstance(cells, CellPartition):
        return train, cells, cells.kind, False
    if cells is None:
        return train, None, None, False
    name = cells.split(":")[0].split("=")[0]
    column_names = getattr(train, "column_names", None) or []
    if source is not None and ":" not in cells and f"{CELL_COLUMN_PREFIX}{name}" in column_names:
        return train, load_partition(source, name, revision), name, True
    if train is None:
        raise ValueError("geocell heads need training data: pass dataset=<split or folder> or cells=<CellPartition>")
    return train, fit_partition(train, cells), name, False


def label_space(
    dataset=None,
    heads: Sequence[str | HeadSpec] = ("haversine",),
    cells: str | CellPartition | None = "quadtree",
    *,
    cells_from_column: bool | None = None,
    tau_km: float = 75.0,
    hierarchy_levels: int | None = None,
    gallery: str = "geoclip",
    queue_size: int = DEFAULT_QUEUE_SIZE,
    revision: str | None = None,
    max_rows: int = 10_000,
) -> LabelSpace:
    """The heads' specs and cell partition of a new model, from its training data.

    Args:
        dataset: the training split (a ``datasets.Dataset``), a ``DatasetDict``, or a dataset folder / Hub id
            built by ``geohf dataset build``; ``None`` for heads that need no data.
        heads: head kinds (:data:`~geohf.modeling.head_names.HEAD_NAMES`: ``haversine``, ``cells``, ``hybrid``,
            ``regression``, ``country``, ``region``, ``geoclip``); :class:`HeadSpec` objects pass through.
        cells: the geocell partition: a name whose ``cells/<name>.parquet`` a dataset folder or repo carries
            (else one of that kind is fitted on the training coordinates), a spec such as
            ``"quadtree:max_samples=50"`` to fit, or a :class:`~geohf.geo.cells.CellPartition`.
        cells_from_column: the geocell targets are the dataset's ``cell_<name>`` column (ids of this very
            partition) rather than the cell holding each sample; default: when the partition was read from
            the dataset.
        tau_km: haversine smoothing temperature (hybrid heads: 0 trains plain cross-entropy).
        hierarchy_levels: cell heads also train cross-entropy over this many coarser quadtree levels.
        gallery: a geoclip head's gallery: ``geoclip`` (GeoCLIP's 100K points), ``train`` (the training
            coordinates) or ``both``; queue_size: its FIFO queue of GPS negatives.
        revision: the dataset's revision on the Hub; max_rows: rows read from a streamed split.
    """
    kinds = [k if isinstance(k, HeadSpec) else head_kind(k) for k in heads]
    needs_cells = any(not isinstance(k, HeadSpec) and k.needs_cells for k in kinds)
    train, partition, name, from_column = resolve_training_data(dataset, cells if needs_cells else None, revision)
    data = HeadData(
        rows=None if train is None else partial(split_columns, train, max_rows=max_rows),
        partition=partition,
        partition_name=name,
        cells_from_column=from_column if cells_from_column is None else cells_from_column,
        tau_km=tau_km,
        hierarchy_levels=hierarchy_levels,
        gallery=gallery,
        queue_size=queue_size,
        gazetteer=Gazetteer(),
    )
    specs = [k if isinstance(k, HeadSpec) else k.spec_from_data(data) for k in kinds]
    return LabelSpace(heads=specs, cells={} if partition is None else {name: partition})
