"""The head registry: a base class every head kind extends, and the data a kind builds its spec from.

A head kind is one class in its own file, registered under its name (:data:`HEADS`, the names of
:mod:`geohf.modeling.head_names`). It owns its :class:`HeadSpec` built from data
(:meth:`GeoHead.spec_from_data`), its module, its loss (:meth:`GeoHead.head_loss`), its outputs and its
answers (``has_coordinates``, ``coordinates``, ``confidence_radius``). Kinds that share a config ``type``
(``cells``, ``country`` and ``region`` are all ``classification``) build one module class: the class that
declares that ``spec_type`` (:func:`head_type`).

These files are also the model code saved beside the weights (:mod:`geohf.modeling.remote_code`), so they
import nothing outside the saved modules: the geography a kind labels its classes with comes in
:class:`HeadData` (``gazetteer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..configuration_geohf import DEFAULT_QUEUE_SIZE, HeadSpec
from ..fusion import masked_mean
from ..head_names import HEAD_NAMES


class Gazetteer(Protocol):
    """Names of places (:class:`geohf.geo.gazetteer.Gazetteer` reads them from the shipped boundaries)."""

    def label(self, latitude, longitude) -> dict[str, list[str]]:
        """``country_code``, ``country``, ``region_code``, ``region`` of each point."""

    def country_name(self, code: str) -> str: ...

    def inside(self, country_code: str) -> tuple[float, float] | None:
        """A point inside the country (``None`` for a code without boundaries)."""


@dataclass
class HeadData:
    """What a head kind builds its spec from (:func:`geohf.data.label_space.label_space` fills it from a dataset).

    Attributes:
        rows: the training split's columns as a DataFrame (its first rows for a stream); ``None``: no split.
        partition, partition_name: the geocell partition (a :class:`~geohf.geo.cells.CellPartition`) and its name.
        cells_from_column: cell targets are the dataset's ``cell_<name>`` column, not the cell of each point.
        tau_km: haversine smoothing temperature; hierarchy_levels: coarser cell levels trained too.
        gallery, queue_size: a geoclip head's gallery and queue of GPS negatives.
        gazetteer: country and region names (see :class:`Gazetteer`).
    """

    rows: Callable[[Sequence[str]], Any] | None = None
    partition: Any = None
    partition_name: str | None = None
    cells_from_column: bool = False
    tau_km: float = 75.0
    hierarchy_levels: int | None = None
    gallery: str = "geoclip"
    queue_size: int = DEFAULT_QUEUE_SIZE
    gazetteer: Gazetteer | None = None

    def columns(self, kind: str, names: Sequence[str]):
        """The training split's ``names`` columns, or a ValueError saying the ``kind`` head needs them."""
        if self.rows is None:
            raise ValueError(f"a {kind} head needs training data for its classes: pass dataset=")
        return self.rows(names)

    def cells(self, kind: str):
        """``(partition, name)``, or a ValueError saying the ``kind`` head needs them."""
        if self.partition is None:
            raise ValueError(f"a {kind} head needs geocells: pass dataset= or cells=")
        return self.partition, self.partition_name


def hidden_mlp(embed_dim: int, widths: list[int]) -> nn.Sequential:
    """OSV-5M's MLP (``MLPCentroid``): LayerNorm, then per width Linear, GroupNorm(4 groups), GELU."""
    layers: list[nn.Module] = [nn.LayerNorm(embed_dim)]
    for d_in, d_out in zip([embed_dim, *widths[:-1]], widths):
        layers += [nn.Linear(d_in, d_out), nn.GroupNorm(4, d_out), nn.GELU()]
    return nn.Sequential(*layers)


class GeoHead(nn.Module):
    """A head on the pooled embedding, described by a :class:`HeadSpec`; a linear layer unless
    ``out_features=None`` (a head that scores its classes otherwise), after an MLP when ``spec.hidden_dims``."""

    kind: ClassVar[str]
    """The registered name (``haversine``, ``country``...): what ``create_model(heads=[...])`` asks for."""

    spec_type: ClassVar[str]
    """The ``type`` of this kind's :class:`HeadSpec` in ``config.json``; the class declaring it builds its module."""

    needs_cells: ClassVar[bool] = False
    """Whether the kind's classes are the cells of a geocell partition."""

    def __init__(self, spec: HeadSpec, embed_dim: int, out_features: int | None, dropout: float = 0.0):
        super().__init__()
        self.name = spec.name
        self.weight = float(spec.weight)
        self.dropout = nn.Dropout(dropout)
        self.mlp = hidden_mlp(embed_dim, spec.hidden_dims) if spec.hidden_dims else None
        if out_features is not None:
            self.fc = nn.Linear(spec.hidden_dims[-1] if spec.hidden_dims else embed_dim, out_features)
            self.fc.geohf_init = "head"

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        """This kind's :class:`HeadSpec`: its classes and what they mean on the map, from ``data``."""
        raise NotImplementedError

    @property
    def has_coordinates(self) -> bool:
        return False

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (none here)."""

    def prepare_save(self) -> None:
        """Bring saved caches up to date before ``save_pretrained`` (none here)."""

    def load_released(self) -> list[str]:
        """Start from the kind's released weights, where it has some; returns what was loaded (nothing here)."""
        return []

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = self.dropout(embeddings)
        if self.mlp is not None:  # GroupNorm reads dim 1 as channels: (B, V, D) views pass as (B·V, D)
            x = self.mlp(x.flatten(0, -2)).unflatten(0, x.shape[:-1])
        return self.fc(x)

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        raise NotImplementedError

    def head_loss(
        self,
        out: torch.Tensor,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None,
        coordinates: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """This head's loss on a batch (unweighted): from its output ``out`` and the ``embeddings`` it read
        (per view), ``None`` when the batch has no targets for it (here: no ``labels``)."""
        return None if labels is None else self.loss(out, labels, coordinates)

    def class_logits(self, out: torch.Tensor) -> torch.Tensor:
        """The class logits in this head's output (the whole output, except for a hybrid head)."""
        return out

    def fuse(self, logits: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse per-view outputs (B, V, K) into (B, K): mean over the (real) views."""
        return masked_mean(logits, view_mask)

    def fuse_augmented(self, out: torch.Tensor) -> torch.Tensor:
        """Fuse outputs (B, V, K) of test-time augmented views of one image: the mean of the class
        log-probabilities (a normalised geometric mean of the views' probabilities), other outputs (a hybrid
        head's offsets) averaged; a head without classes fuses as :meth:`fuse`."""
        if not hasattr(self, "num_classes"):
            return self.fuse(out)
        classes = self.class_logits(out)
        log_probs = torch.log_softmax(classes.float(), dim=-1).mean(1)
        rest = out[..., classes.shape[-1] :]
        return torch.cat([log_probs, rest.float().mean(1)], dim=-1) if rest.shape[-1] else log_probs


HEADS: dict[str, type[GeoHead]] = {}
"""Head kinds by name, in the order of :data:`~geohf.modeling.head_names.HEAD_NAMES`."""


def register(cls: type[GeoHead]) -> type[GeoHead]:
    """Class decorator: register a head kind under its ``kind``."""
    HEADS[cls.kind] = cls
    return cls


def head_kind(name: str) -> type[GeoHead]:
    """The head kind registered as ``name``."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {HEAD_NAMES}")
    return HEADS[name]


def head_type(spec_type: str) -> type[GeoHead]:
    """The module class of a :class:`HeadSpec` ``type``: the class that declares that ``spec_type``."""
    for cls in HEADS.values():
        for owner in cls.__mro__:
            if vars(owner).get("spec_type") == spec_type:
                return owner
    raise ValueError(f"no head builds type {spec_type!r}")


def build_head(spec: HeadSpec, embed_dim: int, dropout: float = 0.0) -> GeoHead:
    return head_type(spec.type)(spec, embed_dim, dropout)
