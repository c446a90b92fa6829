"""Classification heads: cross-entropy over named classes, which predict coordinates when they have centroids.

The module of every ``classification`` head (the ``cells``, ``country`` and ``region`` kinds), and the base of
the other class-scoring heads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...geo.sphere import haversine_km, spherical_mean
from ..configuration_geohf import HeadSpec
from .base import GeoHead


class ClassificationHead(GeoHead):
    """Cross-entropy over the classes in ``spec.labels``.

    With class centroids (``spec.cells``: geocells, or countries and regions) it also predicts coordinates.
    """

    spec_type = "classification"

    linear = True
    """Whether the classes are scored by a linear layer (a GeoCLIP head matches a gallery instead)."""

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0, outputs_per_class: int = 1):
        super().__init__(spec, embed_dim, outputs_per_class * len(spec.labels) if self.linear else None, dropout)
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
        device = next(self.parameters()).device
        self.centroids = self._centroid_tensor().to(device)
        self.ancestors = self._ancestor_tensor().to(device)
        if self._class_weights is not None:
            self.class_weights = self._weight_tensor().to(device)

    @property
    def has_coordinates(self) -> bool:
        return self._centroid_values is not None and len(self._centroid_values[0]) > 0

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
        k = 1 if method == "argmax" else min(top_k, self.num_classes)
        p, idx = probs.topk(k, dim=-1)
        points = self.class_points(logits)
        c = points[idx] if points.ndim == 2 else points.gather(1, idx[..., None].expand(-1, -1, 2))  # (B, k, 2)
        if k == 1:  # the class's own point, exactly: a mean of one point rounds through float32 xyz, by up
            return c[:, 0]  # to 1e-5 degrees that vary with the probability (and so with the thread count)
        if radius_km is not None:
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
