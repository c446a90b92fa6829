"""Haversine-smoothed geocell heads (``haversine``, PIGEON)."""

from __future__ import annotations

import torch

from ..configuration_geohf import HeadSpec
from ..losses import haversine_smoothed_loss
from .base import register
from .cells import CellsHead


@register
class HaversineHead(CellsHead):
    """Cell classification trained on haversine-smoothed labels (PIGEON, Haas et al., CVPR 2024)."""

    kind = spec_type = "haversine"
    uses_tau = True

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, dropout)
        self.tau_km = float(spec.tau_km)

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        valid = labels >= 0  # -100: a label this head does not know, or a row without coordinates
        if not valid.any():
            return logits.float().sum() * 0.0
        if coordinates is not None:
            coordinates = coordinates[valid]
        labels = labels[valid]
        weights = self.class_weights[labels] if self.class_weights is not None else None
        loss = haversine_smoothed_loss(logits[valid], labels, coordinates, self.centroids, self.tau_km, weights)
        return loss + self._hierarchy(logits[valid], labels)
