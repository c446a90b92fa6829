"""Hybrid geocell heads (``hybrid``, OSV-5M): cells plus a per-cell offset."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..configuration_geohf import HeadSpec
from ..losses import haversine_smoothed_loss
from .base import register
from .cells import CellsHead


@register
class HybridHead(CellsHead):
    """Cells plus a per-cell offset (OSV-5M's hybrid head, Astruc et al., CVPR 2024).

    For every cell the head also regresses an offset ``t = 1.2 tanh(.)`` per axis; the cell's guess is
    its centroid moved by ``t`` times the distance from the centroid to the edge of the cell's box
    on that side (so ``|t| <= 1`` stays inside the box). Training regresses the offset of the true
    cell (L2 against the true point's offset) next to the cells' loss: haversine-smoothed with
    ``tau_km`` (PIGEON), plain cross-entropy without. At inference the coordinate rule of the other
    cell heads applies to the cells' guesses instead of their centroids (``argmax``: OSV-5M's).
    """

    kind = spec_type = "hybrid"
    uses_tau = True
    SCALE = 1.2

    @classmethod
    def cell_config(cls, partition) -> dict:
        """The cells with the box each one's offsets are scaled to (``lat_min``... of its polygons)."""
        cells = partition.to_config()
        bounds = partition.cells.geometry.bounds  # minx, miny, maxx, maxy per cell
        for key, column in (("lat_min", "miny"), ("lat_max", "maxy"), ("lon_min", "minx"), ("lon_max", "maxx")):
            cells[key] = [round(float(v), 6) for v in bounds[column]]
        return cells

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
            loss = haversine_smoothed_loss(
                cls, labels, None if coordinates is None else coordinates[valid], self.centroids, self.tau_km, weights
            )
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
