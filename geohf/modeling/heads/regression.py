"""Regression heads (``regression``): coordinates as a unit vector on the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...geo.sphere import latlon_to_xyz, xyz_to_latlon
from ..configuration_geohf import HeadSpec
from ..fusion import masked_mean
from ..losses import great_circle_loss
from .base import GeoHead, HeadData, register


@register
class RegressionHead(GeoHead):
    """Coordinates as a unit vector on the sphere; loss is the great-circle distance."""

    kind = spec_type = "regression"

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        return HeadSpec(name=cls.kind, type=cls.spec_type)

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, 3, dropout)

    @property
    def has_coordinates(self) -> bool:
        return True

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(embeddings).float(), dim=-1)

    def fuse(self, logits: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(masked_mean(logits, view_mask), dim=-1)

    def head_loss(self, out, embeddings, labels, coordinates) -> torch.Tensor | None:
        """The great-circle loss to the true ``coordinates`` (``None`` without them)."""
        return None if coordinates is None else self.loss(out, labels, coordinates)

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        if coordinates is None:
            raise ValueError(f"regression head {self.name!r} needs the true coordinates")
        located = torch.isfinite(coordinates).all(1)  # country-only rows (NaN) are left out
        if not located.any():
            return logits.float().sum() * 0.0
        logits, coordinates = logits[located], coordinates[located]
        return great_circle_loss(logits, latlon_to_xyz(coordinates[:, 0].float(), coordinates[:, 1].float()))

    def coordinates(self, logits: torch.Tensor, method: str = "weighted", top_k: int = 5, radius_km=None):
        lat, lon = xyz_to_latlon(logits)
        return torch.stack([lat, lon], -1)
