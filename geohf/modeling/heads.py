"""Prediction heads: classification, haversine-smoothed cells, hybrid cells + offsets, coordinate regression,
GeoCLIP gallery matching."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..geo.sphere import haversine_km, latlon_to_xyz, spherical_mean, xyz_to_latlon
from .configuration_geohf import HeadSpec
from .fusion import masked_mean
from .location_encoder import GEOCLIP_LOGIT_SCALE_INIT, GPS_EMBED_DIM, GeoClipFiles, LocationEncoder
from .losses import great_circle_loss, haversine_smoothed_loss


class GeoHead(nn.Module):
    """A linear head on the pooled embedding, described by a :class:`HeadSpec` (``out_features=None``:
    a head that scores its classes otherwise, with no linear layer)."""

    contrastive = False
    """Whether the loss is :meth:`contrastive_loss` on the embeddings and true coordinates, not on the logits."""

    def __init__(self, spec: HeadSpec, embed_dim: int, out_features: int | None, dropout: float = 0.0):
        super().__init__()
        self.name = spec.name
        self.weight = float(spec.weight)
        self.dropout = nn.Dropout(dropout)
        if out_features is not None:
            self.fc = nn.Linear(embed_dim, out_features)
            self.fc.geohf_init = "head"

    @property
    def has_coordinates(self) -> bool:
        return False

    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (none here)."""

    def prepare_save(self) -> None:
        """Bring saved caches up to date before ``save_pretrained`` (none here)."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embeddings))

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


class ClassificationHead(GeoHead):
    """Cross-entropy over the classes in ``spec.labels``.

    With class centroids (``spec.cells``: geocells, or countries and regions) it also predicts coordinates.
    """

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


class GeoClipHead(ClassificationHead):
    """GeoCLIP (Vivanco et al., NeurIPS 2023): a classifier over the points of a GPS gallery.

    Image embedding → image MLP (Linear D→D, ReLU, Linear D→512; GeoCLIP's shape) → L2-normalised;
    the gallery's coordinates (``spec.cells``) → :class:`LocationEncoder` → L2-normalised; the logits
    are ``exp(logit_scale) * image @ gallery.T``, so ``coordinates``, ``top_k`` and the confidence
    radius are those of any classifier with centroids (GeoCLIP itself predicts the best point: the
    ``argmax`` coordinate method).

    Training is GeoCLIP's contrastive loss (:meth:`contrastive_loss`): cross-entropy over the batch's
    true coordinates plus a FIFO queue of earlier batches' coordinates, each image's own GPS the positive.
    The queue (``spec.queue_size`` points) is a persistent buffer, so a resumed checkpoint continues
    with the same negatives; only filled entries count (GeoCLIP starts from random ones), and a queued
    point at one of the batch's own coordinates is left out (GeoCLIP keeps it as a false negative).

    The gallery's embeddings are saved with the weights (``gallery_embeddings``, N × 512, with
    ``gallery_checksum``, sums of the location encoder's tensors they were computed with), so a
    reloaded model does not re-embed the gallery (about 30 s for GeoCLIP's 100K points on 2 CPU
    cores). They are recomputed when the encoder no longer matches the checksum: on the first eval
    forward after its weights changed (an optimizer step), and before ``save_pretrained`` (so a
    checkpoint never holds stale ones). In training mode a stale cache is kept (those logits are for
    monitoring; the loss never reads them), so a step does not re-embed the whole gallery.
    """

    linear = False
    contrastive = True

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, dropout)
        self.gallery = spec.gallery
        self.image_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, GPS_EMBED_DIM))
        self.location_encoder = LocationEncoder()
        self.logit_scale = nn.Parameter(torch.tensor(GEOCLIP_LOGIT_SCALE_INIT))
        self.queue_size = int(spec.queue_size)
        self.register_buffer("queue", torch.zeros(self.queue_size, 2))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # points ever enqueued
        n = len(spec.labels)
        self.register_buffer("gallery_embeddings", torch.zeros(n, GPS_EMBED_DIM))
        # float64 sums stored as their int64 bits: a load with dtype= casts floating tensors, never integers
        nan = torch.full((2 * len(self._encoder_tensors()),), torch.nan, dtype=torch.float64)
        self.register_buffer("gallery_checksum", nan.view(torch.int64))
        self._gallery_key = None  # the encoder's tensor versions when the cache was last checked

    @torch.no_grad()
    def init_buffers(self) -> None:
        super().init_buffers()
        self._gallery_key = None

    def load_geoclip(self, files: GeoClipFiles) -> list[str]:
        """Start from the released GeoCLIP weights: the location encoder and logit scale, and the
        image MLP when the backbone's embedding is CLIP ViT-L/14's 768; returns what was loaded."""
        self.location_encoder.load_state_dict(files.load_location_encoder(), strict=True)
        with torch.no_grad():
            self.logit_scale.copy_(files.load_logit_scale())
        loaded = ["location_encoder", "logit_scale"]
        mlp = files.load_image_mlp()
        if all(self.image_mlp.state_dict()[k].shape == v.shape for k, v in mlp.items()):
            self.image_mlp.load_state_dict(mlp, strict=True)
            loaded.append("image_mlp")
        self._gallery_key = None
        return loaded

    def image_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(..., D) backbone embeddings → (..., 512) unit vectors."""
        return F.normalize(self.image_mlp(self.dropout(embeddings)).float(), dim=-1)

    def location_features(self, latlon: torch.Tensor) -> torch.Tensor:
        """(N, 2) latitude, longitude → (N, 512) unit vectors (with gradients into the encoder)."""
        return F.normalize(self.location_encoder(latlon).float(), dim=-1)

    def _encoder_tensors(self) -> list[torch.Tensor]:
        return [*self.location_encoder.parameters(), *self.location_encoder.buffers()]

    @torch.no_grad()
    def _encoder_checksum(self) -> torch.Tensor:
        """Sum and sum of squares of every location encoder tensor (float64): what the cache was computed with."""
        tensors = [t.detach().double() for t in self._encoder_tensors()]
        sums = torch.stack([t.sum() for t in tensors] + [t.square().sum() for t in tensors])
        return sums.to(self.gallery_checksum.device)

    def refresh_gallery(self) -> bool:
        """Re-embed the gallery unless the cache was computed with the encoder's current weights;
        returns whether it re-embedded."""
        tensors = self._encoder_tensors()
        self._gallery_key = (tuple(t._version for t in tensors), tensors[0].device, tensors[0].dtype)
        checksum = self._encoder_checksum()
        if torch.allclose(checksum, self.gallery_checksum.view(torch.float64), rtol=1e-9, atol=0.0):
            return False
        # normal tensors even under inference_mode, so a later training forward may use them
        with torch.inference_mode(False), torch.no_grad():
            points = self.centroids.clone()
            emb = self.location_encoder.encode(points, progress=len(points) > 50_000)
            self.gallery_embeddings = F.normalize(emb.float(), dim=-1).to(self.gallery_embeddings.dtype)
            self.gallery_checksum = checksum.view(torch.int64)
        return True

    def gallery_features(self) -> torch.Tensor:
        """(N, 512) unit embeddings of the gallery points, from the cache (see the class docstring)."""
        tensors = self._encoder_tensors()
        key = (tuple(t._version for t in tensors), tensors[0].device, tensors[0].dtype)
        if self._gallery_key is None or (key != self._gallery_key and not self.training):
            self.refresh_gallery()
        return self.gallery_embeddings

    def prepare_save(self) -> None:
        self.refresh_gallery()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        image = self.image_features(embeddings)
        # float32 similarities even under bf16 autocast: neighbouring gallery points differ by little
        with torch.autocast(image.device.type, enabled=False):
            return self.logit_scale.float().exp() * image.float() @ self.gallery_features().float().T

    def loss(self, logits, labels, coordinates=None) -> torch.Tensor:
        raise TypeError(f"geoclip head {self.name!r} trains on embeddings: call contrastive_loss")

    def contrastive_loss(self, embeddings: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        """GeoCLIP's loss: each image's own GPS against the batch's other GPS and the queue's.

        ``embeddings`` (B, D) or (B, V, D) for views of one place (their logits are averaged, as
        :meth:`fuse` does); ``coordinates`` (B, 2) the true latitude, longitude. In training mode the
        batch's coordinates then enter the queue (after the loss, as GeoCLIP reads it before enqueuing).
        """
        coordinates = coordinates.float()
        queued = self.queue[: min(int(self.queue_count), self.queue_size)].to(coordinates.device)
        gps = self.location_features(torch.cat([coordinates, queued]))
        logits = self.logit_scale.exp() * self.image_features(embeddings) @ gps.T
        if logits.ndim == 3:
            logits = logits.mean(1)
        # a queued point at one of this batch's own places is no negative (GeoCLIP counts it as one)
        own = (queued[None, :, :] == coordinates[:, None, :]).all(-1).any(0)
        if own.any():
            logits = torch.cat([logits[:, : len(coordinates)], logits[:, len(coordinates) :][:, ~own]], 1)
        loss = F.cross_entropy(logits, torch.arange(len(coordinates), device=logits.device))
        if self.training:
            self.enqueue(coordinates)
        return loss

    @torch.no_grad()
    def enqueue(self, coordinates: torch.Tensor) -> None:
        """Add a batch's coordinates to the FIFO queue, overwriting the oldest."""
        if self.queue_size == 0:
            return
        n = len(coordinates)
        kept = coordinates.detach().float()[-self.queue_size :]  # a batch larger than the queue: its last points
        start = int(self.queue_count) + n - len(kept)
        slots = (start + torch.arange(len(kept), device=self.queue.device)) % self.queue_size
        self.queue[slots] = kept.to(self.queue.device)
        self.queue_count += n


class RegressionHead(GeoHead):
    """Coordinates as a unit vector on the sphere; loss is the great-circle distance."""

    def __init__(self, spec: HeadSpec, embed_dim: int, dropout: float = 0.0):
        super().__init__(spec, embed_dim, 3, dropout)

    @property
    def has_coordinates(self) -> bool:
        return True

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(embeddings).float(), dim=-1)

    def fuse(self, logits: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(masked_mean(logits, view_mask), dim=-1)

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
    "geoclip": GeoClipHead,
}


def build_head(spec: HeadSpec, embed_dim: int, dropout: float = 0.0) -> GeoHead:
    return HEADS[spec.type](spec, embed_dim, dropout)
