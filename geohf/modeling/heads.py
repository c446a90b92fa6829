"""Prediction heads: classification, haversine-smoothed cells, hybrid cells + offsets, coordinate regression."""

from __future__ import annotations

import numpy as np
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

    def class_logits(self, out: torch.Tensor) -> torch.Tensor:
        """The class logits in this head's output (the whole output, except for a hybrid head)."""
        return out

    def fuse(self, logits: torch.Tensor) -> torch.Tensor:
        """Fuse per-view outputs (B, V, K) into (B, K): mean over views."""
        return logits.mean(1)


class ClassificationHead(GeoHead):
    """Cross-entropy over the classes in ``spec.labels``.

    With class centroids (``spec.cells``: geocells, or countries and regions) it also predicts coordinates.
    """

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0, outputs_per_class: int = 1):
        super().__init__(spec, embed_dim, outputs_per_class * len(spec.labels), dropout)
        self.num_classes = len(spec.labels)
        self._centroid_values = [spec.cells["latitude"], spec.cells["longitude"]] if spec.has_coordinates else None
        self.register_buffer("centroids", self._centroid_tensor(), persistent=False)
        self._class_weights = spec.class_weights
        self.register_buffer("class_weights", self._weight_tensor(), persistent=False)
        self.hierarchy_levels = int(spec.hierarchy_levels or 0)
        self.register_buffer("ancestors", self._ancestor_tensor(), persistent=False)

    def _ancestor_tensor(self) -> torch.Tensor:
        """(levels, C) each class's group at each coarser level: the 2^L x 2^L lon/lat box of its centroid."""
        if not self.hierarchy_levels or self._centroid_values is None:
            return torch.zeros(0, self.num_classes, dtype=torch.long)
        lat, lon = (np.asarray(v, dtype=np.float64) for v in self._centroid_values)
        rows = []
        for level in range(1, self.hierarchy_levels + 1):
            n = 2**level
            i = np.clip(np.floor((lat + 90.0) / 180.0 * n), 0, n - 1)
            j = np.clip(np.floor((lon + 180.0) / 360.0 * n), 0, n - 1)
            rows.append(np.unique(i * n + j, return_inverse=True)[1].ravel())
        return torch.tensor(np.stack(rows), dtype=torch.long)  # numpy: meta-device loads build it too

    def hierarchy_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over the coarser levels of the cross-entropy of the summed class probabilities (OSV-5M)."""
        probs = torch.softmax(logits.float(), dim=-1)
        loss = logits.new_zeros((), dtype=torch.float32)
        for groups in self.ancestors:
            grouped = probs.new_zeros(probs.shape[0], int(groups.max()) + 1).index_add_(1, groups, probs)
            loss = loss + F.nll_loss(torch.log(grouped + 1e-10), groups[labels])
        return loss

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
        self.ancestors = self._ancestor_tensor().to(self.fc.weight.device)
        if self._class_weights is not None:
            self.class_weights = self._weight_tensor().to(self.fc.weight.device)

    @property
    def has_coordinates(self) -> bool:
        return self.centroids.shape[0] > 0

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        if not (labels >= 0).any():  # every row without this head's label (-100): nothing to learn here
            return logits.float().sum() * 0.0
        loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        return loss + self._hierarchy(logits, labels)

    def _hierarchy(self, logits, labels) -> torch.Tensor | float:
        valid = labels >= 0
        return self.hierarchy_loss(logits[valid], labels[valid]) if self.ancestors.shape[0] and valid.any() else 0.0

    def class_points(self, out: torch.Tensor) -> torch.Tensor:
        """(C, 2) or (B, C, 2): where each class puts its guess (its centroid here)."""
        return self.centroids

    def coordinates(
        self, logits: torch.Tensor, method: str = "weighted", top_k: int = 5, radius_km: float | None = None
    ) -> torch.Tensor:
        """(B, 2) latitude, longitude from cell probabilities.

        ``argmax``: the centroid of the most probable cell. ``weighted``: the spherical
        mean of the ``top_k`` most probable cells' centroids, weighted by probability;
        with ``radius_km`` only cells within that distance of the best cell count, so
        two far-apart guesses do not average into a point between them.
        """
        probs = torch.softmax(self.class_logits(logits).float(), dim=-1)
        k = 1 if method == "argmax" else min(top_k, probs.shape[-1])
        p, idx = probs.topk(k, dim=-1)
        points = self.class_points(logits)
        c = points[idx] if points.ndim == 2 else points.gather(1, idx[..., None].expand(-1, -1, 2))  # (B, k, 2)
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
        loss = haversine_smoothed_loss(logits[valid], labels, coordinates, self.centroids, self.tau_km, weights)
        return loss + self._hierarchy(logits[valid], labels)


class HybridHead(ClassificationHead):
    """Cells plus a per-cell offset (OSV-5M's hybrid head, Astruc et al., CVPR 2024).

    For every cell the head also regresses an offset ``t = 1.2 tanh(.)`` per axis; the cell's guess is
    its centroid moved by ``t`` times the distance from the centroid to the edge of the cell's box
    on that side (so ``|t| <= 1`` stays inside the box). Training regresses the offset of the true
    cell (L2 against the true point's offset) next to the cells' loss: haversine-smoothed with
    ``tau_km`` (PIGEON), plain cross-entropy without. At inference the coordinate rule of the other
    cell heads applies to the cells' guesses instead of their centroids (``argmax``: OSV-5M's).
    """

    SCALE = 1.2

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, dropout, outputs_per_class=3)
        self.tau_km = float(spec.tau_km) if spec.tau_km else None
        cells = spec.cells
        self._extent_values = [cells[k] for k in ("lat_min", "lat_max", "lon_min", "lon_max")]
        self.register_buffer("extent", self._extent_tensor(), persistent=False)

    def _extent_tensor(self) -> torch.Tensor:
        """(C, 2, 2): per cell, per axis (lat, lon), the distance from the centroid down and up to the box edge."""
        lat0, lat1, lon0, lon1 = (torch.tensor(v, dtype=torch.float32) for v in self._extent_values)
        c = self._centroid_tensor()
        down = torch.stack([c[:, 0] - lat0, c[:, 1] - lon0], -1).clamp_min(1e-3)
        up = torch.stack([lat1 - c[:, 0], lon1 - c[:, 1]], -1).clamp_min(1e-3)
        return torch.stack([down, up], -1)

    @torch.no_grad()
    def init_buffers(self) -> None:
        super().init_buffers()
        self.extent = self._extent_tensor().to(self.fc.weight.device)

    def class_logits(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., : self.num_classes]

    def offsets(self, out: torch.Tensor) -> torch.Tensor:
        """(B, C, 2) the tanh-scaled offset of every cell."""
        raw = out[..., self.num_classes :].float().unflatten(-1, (self.num_classes, 2))
        return self.SCALE * torch.tanh(raw)

    def class_points(self, out: torch.Tensor) -> torch.Tensor:
        t = self.offsets(out)
        extent = torch.where(t >= 0, self.extent[..., 1], self.extent[..., 0])  # (B, C, 2)
        points = self.centroids + t * extent
        lat = points[..., 0].clamp(-90.0, 90.0)
        lon = torch.remainder(points[..., 1] + 180.0, 360.0) - 180.0
        return torch.stack([lat, lon], -1)

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        valid = labels >= 0
        if not valid.any():
            return logits.float().sum() * 0.0
        cls, labels = self.class_logits(logits)[valid], labels[valid]
        weights = self.class_weights[labels] if self.class_weights is not None else None
        if self.tau_km:
            loss = haversine_smoothed_loss(cls, labels, None if coordinates is None else coordinates[valid],
                                           self.centroids, self.tau_km, weights)
        else:
            loss = F.cross_entropy(cls.float(), labels, weight=self.class_weights)
        loss = loss + self._hierarchy(cls, labels)
        if coordinates is not None and labels.numel():
            t = self.offsets(logits[valid]).gather(1, labels[:, None, None].expand(-1, 1, 2))[:, 0]  # (B, 2)
            delta = coordinates[valid].float() - self.centroids[labels]
            delta[:, 1] = torch.remainder(delta[:, 1] + 180.0, 360.0) - 180.0
            extent = self.extent[labels]  # (B, 2, 2)
            target = delta / torch.where(delta >= 0, extent[..., 1], extent[..., 0])
            loss = loss + F.mse_loss(t, target.clamp(-self.SCALE, self.SCALE))
        return loss


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


HEADS = {
    "classification": ClassificationHead,
    "haversine": HaversineHead,
    "hybrid": HybridHead,
    "regression": RegressionHead,
}


def build_head(spec: HeadSpec, embed_dim: int, dropout: float = 0.0) -> GeoHead:
    return HEADS[spec.type](spec, embed_dim, dropout)
