"""Geocell heads (``cells``): cross-entropy over the cells of a partition, predicting the cells' centroids."""

from __future__ import annotations

from ..configuration_geohf import CELL_COLUMN_PREFIX, HeadSpec
from .base import HeadData, register
from .classification import ClassificationHead


@register
class CellsHead(ClassificationHead):
    """Cross-entropy over geocells; the spec of the cell kinds (``haversine`` and ``hybrid`` extend it)."""

    kind = "cells"
    needs_cells = True
    uses_tau = False
    """Whether the kind's spec carries ``tau_km`` (haversine smoothing)."""

    @classmethod
    def cell_config(cls, partition) -> dict:
        """The cells as a spec's ``cells``: each one's name, centroid and majority labels."""
        return partition.to_config()

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        """A head over the partition's cells; its targets are the dataset column ``cell_<name>`` when
        ``data.cells_from_column``, else the cell holding each sample's coordinates."""
        partition, name = data.cells(cls.kind)
        return HeadSpec(
            name=cls.kind,
            type=cls.spec_type,
            label_column=f"{CELL_COLUMN_PREFIX}{name}" if data.cells_from_column else None,
            labels=partition.names,
            partition=name,
            cells=cls.cell_config(partition),
            tau_km=data.tau_km if cls.uses_tau and data.tau_km else None,
            hierarchy_levels=data.hierarchy_levels or None,
        )
