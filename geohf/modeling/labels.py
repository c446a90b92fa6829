"""The label space of a model: its heads' specs and the cell partitions their classes are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .configuration_geohf import HeadSpec

if TYPE_CHECKING:
    from ..geo.cells import CellPartition


@dataclass
class LabelSpace:
    """What :func:`~geohf.modeling.create_model` builds heads over (:func:`geohf.data.label_space.label_space`
    reads it from a dataset).

    Attributes:
        heads: the heads' specs, in order (the first classifier is primary).
        cells: the geocell partitions by name (a spec's ``partition``), the polygons a model carries and saves to
            ``cells/<name>.parquet``.
    """

    heads: list[HeadSpec] = field(default_factory=list)
    cells: dict[str, CellPartition] = field(default_factory=dict)

    def head(self, name: str) -> HeadSpec | None:
        """The spec of head ``name``, or ``None``."""
        return next((spec for spec in self.heads if spec.name == name), None)
