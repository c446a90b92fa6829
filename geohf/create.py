"""``geohf.create_model``: a new model whose label space comes from a dataset, in one call.

It reads the label space (:func:`geohf.data.label_space.label_space`) and builds the model over it
(:func:`geohf.modeling.create_model`, which reads no data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .data.label_space import label_space
from .geo.cells import CellPartition
from .modeling.configuration_geohf import DEFAULT_QUEUE_SIZE, HeadSpec
from .modeling.factory import create_model as create_over
from .modeling.modeling_geohf import GeoModelForImageGeolocation


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

    ``dataset``, ``heads``, ``cells``, ``cells_from_column``, ``tau_km``, ``hierarchy_levels``, ``gallery``,
    ``queue_size``, ``revision`` and ``label_scan_rows`` (rows read from a streamed split) build the label
    space (see :func:`geohf.data.label_space.label_space`); ``backbone``, ``pretrained``, ``image_size``,
    ``crop_pct``, ``resize_mode``, ``backbone_kwargs``, ``from_scratch`` and ``config_kwargs`` (other
    :class:`~geohf.modeling.GeoConfig` fields: ``fusion``, ``coordinate_method``, ``dropout``...) the model
    (see :func:`geohf.modeling.create_model`). The partition travels with the model: ``save_pretrained``
    writes it to ``cells/<name>.parquet``.
    """
    space = label_space(
        dataset,
        heads,
        cells,
        cells_from_column=cells_from_column,
        tau_km=tau_km,
        hierarchy_levels=hierarchy_levels,
        gallery=gallery,
        queue_size=queue_size,
        revision=revision,
        max_rows=label_scan_rows,
    )
    return create_over(
        backbone,
        pretrained=pretrained,
        label_space=space,
        image_size=image_size,
        crop_pct=crop_pct,
        resize_mode=resize_mode,
        backbone_kwargs=backbone_kwargs,
        from_scratch=from_scratch,
        **config_kwargs,
    )
