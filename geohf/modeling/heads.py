"""Prediction heads: classification, haversine-smoothed cells, coordinate regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geo.sphere import haversine_km, latlon_to_xyz, spherical_mean, xyz_to_latlon
from .configuration_geohf import HeadSpec
from .losses import great_circle_loss, haversine_smoothed_loss


class GeoHead(nn.Module):
    """A linear head on the pooled embedding, described by a :class:`HeadSpec`."""

    def __init__(self, spec: HeadSpec, embed_dim: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.name = spec.name
        self.weight = float(spec.weight)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, out_features)
        self.fc.geohf_init = "head"

    @property
    def has_coordinates(self) -> bool:
        return False

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (none here)."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embeddings))

    def fuse(self, logits: torch.Tensor) -> torch.Tensor:
        """Fuse per-view outputs (B, V, K) into (B, K): mean over views."""
        return logits.mean(1)


class ClassificationHead(GeoHead):
    """Cross-entropy over the classes in ``spec.labels``.

    With class centroids (``spec.cells``: geocells, or countries and regions) it also predicts coordinates.
    """

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, len(spec.labels), dropout)
        self._centroid_values = [spec.cells["latitude"], spec.cells["longitude"]] if spec.has_coordinates else None
        self.register_buffer("centroids", self._centroid_tensor(), persistent=False)
        self._class_weights = spec.class_weights
        self.register_buffer("class_weights", self._weight_tensor(), persistent=False)

    def _weight_tensor(self) -> torch.Tensor | None:
        return None if self._class_weights is None else torch.tensor(self._class_weights, dtype=torch.float32)

    def _centroid_tensor(self) -> torch.Tensor:
        if self._centroid_values is None:
            return torch.zeros(0, 2)
        return torch.tensor(self._centroid_values, dtype=torch.float32).T.contiguous()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Refill centroids and class weights from the config (meta-device loads start without them)."""
        self.centroids = self._centroid_tensor().to(self.fc.weight.device)
        if self._class_weights is not None:
            self.class_weights = self._weight_tensor().to(self.fc.weight.device)

    @property
    def has_coordinates(self) -> bool:
        return self.centroids.shape[0] > 0

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        if not (labels >= 0).any():  # every row without this head's label (-100): nothing to learn here
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights)

    def coordinates(
        self, logits: torch.Tensor, method: str = "weighted", top_k: int = 5, radius_km: float | None = None
    ) -> torch.Tensor:
        """(B, 2) latitude, longitude from cell probabilities.

        ``argmax``: the centroid of the most probable cell. ``weighted``: the spherical
        mean of the ``top_k`` most probable cells' centroids, weighted by probability;
        with ``radius_km`` only cells within that distance of the best cell count, so
        two far-apart guesses do not average into a point between them.
        """
        probs = torch.softmax(logits.float(), dim=-1)
        k = 1 if method == "argmax" else min(top_k, probs.shape[-1])
        p, idx = probs.topk(k, dim=-1)
        c = self.centroids[idx]  # (B, k, 2)
        if radius_km is not None and k > 1:
            d = haversine_km(c[..., :1, 0], c[..., :1, 1], c[..., 0], c[..., 1])
            p = p * (d <= radius_km)
        lat, lon = spherical_mean(c[..., 0], c[..., 1], weights=p, axis=-1)
        return torch.stack([lat, lon], -1)

    def confidence_radius(self, logits: torch.Tensor, coordinates: torch.Tensor, mass: float = 0.5) -> torch.Tensor:
        """(B,) km around ``coordinates`` holding ``mass`` of the predicted probability.

        Cells are taken nearest-first (by centroid) until their probabilities add up to
        ``mass``; the radius is the distance to the last one taken.
        """
        probs = torch.softmax(logits.float(), dim=-1)
        d = haversine_km(
            coordinates[:, None, 0].float(),
            coordinates[:, None, 1].float(),
            self.centroids[None, :, 0],
            self.centroids[None, :, 1],
        )
        d_sorted, order = d.sort(dim=1)
        cum = probs.gather(1, order).cumsum(1)
        k = (cum < mass - 1e-6).sum(1).clamp(max=d.shape[1] - 1)
        return d_sorted.gather(1, k[:, None])[:, 0]


class HaversineHead(ClassificationHead):
    """Cell classification trained on haversine-smoothed labels (PIGEON, Haas et al., CVPR 2024)."""

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
        return haversine_smoothed_loss(logits[valid], labels, coordinates, self.centroids, self.tau_km, weights)


class RegressionHead(GeoHead):
    """Coordinates as a unit vector on the sphere; loss is the great-circle distance."""

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, 3, dropout)

    @property
    def has_coordinates(self) -> bool:
        return True

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(embeddings).float(), dim=-1)

    def fuse(self, logits: torch.Tensor) -> torch.Tensor:
        return F.normalize(logits.mean(1), dim=-1)

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


HEADS = {"classification": ClassificationHead, "haversine": HaversineHead, "regression": RegressionHead}


def build_head(spec: HeadSpec, embed_dim: int, dropout: float = 0.0) -> GeoHead:
    return HEADS[spec.type](spec, embed_dim, dropout)
