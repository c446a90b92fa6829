"""GeoCLIP heads (``geoclip``): image embeddings matched against a GPS gallery embedded by a location encoder."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ..configuration_geohf import GALLERIES, HeadSpec
from ..location_encoder import (
    GEOCLIP_LOGIT_SCALE_INIT,
    GPS_EMBED_DIM,
    GeoClipFiles,
    LocationEncoder,
    require_geoclip_files,
)
from .base import Gazetteer, HeadData, register
from .classification import ClassificationHead

logger = logging.getLogger(__name__)


@register
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

    kind = spec_type = "geoclip"
    linear = False

    @classmethod
    def spec_from_data(cls, data: HeadData) -> HeadSpec:
        """A head whose classes are the gallery: GeoCLIP's 100K points (``geoclip``, from the installed
        ``geoclip`` wheel), the training split's coordinates (``train``, its first rows), or ``both``."""
        gallery = data.gallery
        if gallery not in GALLERIES:
            raise UserError(f"geoclip gallery {gallery!r} is not one of {', '.join(GALLERIES)}")
        lat, lon = [], []
        if gallery in ("geoclip", "both"):
            points = require_geoclip_files(f"the geoclip head's gallery={gallery} (GeoCLIP's 100K GPS points)")
            g = points.load_gallery(torch.float64).numpy()
            lat, lon = [g[:, 0]], [g[:, 1]]
        if gallery in ("train", "both"):
            if data.rows is None:
                raise UserError(f"a geoclip head with gallery={gallery} needs the training split: pass dataset=")
            rows = data.rows(["latitude", "longitude"])
            lat.append(rows["latitude"].to_numpy(np.float64))
            lon.append(rows["longitude"].to_numpy(np.float64))
        cells, dropped = gallery_cells(np.concatenate(lat), np.concatenate(lon), data.gazetteer)
        if dropped:
            logger.info(
                "geoclip gallery=%s: %d duplicate points dropped, %d kept", gallery, dropped, len(cells["name"])
            )
        return HeadSpec(
            name=cls.kind,
            type=cls.spec_type,
            labels=cells["name"],
            cells=cells,
            gallery=gallery,
            queue_size=data.queue_size,
        )

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

    def load_released(self) -> list[str]:
        """GeoCLIP's released weights, from the installed ``geoclip`` wheel (see :meth:`load_geoclip`)."""
        return self.load_geoclip(
            require_geoclip_files("a geoclip head's released GeoCLIP weights (or pass from_scratch=True)")
        )

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

    def head_loss(self, out, embeddings, labels, coordinates) -> torch.Tensor | None:
        """GeoCLIP's contrastive loss on the per-view ``embeddings`` (``None`` without true ``coordinates``)."""
        return None if coordinates is None else self.contrastive_loss(embeddings, coordinates)

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


def gallery_cells(lat, lon, gazetteer: Gazetteer) -> tuple[dict[str, list], int]:
    """Gallery points as a head's ``cells`` (coordinates, labelled with country and region by ``gazetteer``),
    duplicates at 1e-6 degrees dropped (GeoCLIP's 100K gallery repeats 5,877 points); returns the cells and
    how many were dropped."""
    lat, lon = np.round(np.asarray(lat, dtype=np.float64), 6), np.round(np.asarray(lon, dtype=np.float64), 6)
    _, first = np.unique(np.stack([lat, lon], 1), axis=0, return_index=True)
    keep = np.sort(first)
    dropped = len(lat) - len(keep)
    lat, lon = lat[keep], lon[keep]
    cells = {
        "name": [f"{a:.6f},{b:.6f}" for a, b in zip(lat, lon)],
        "latitude": lat.tolist(),
        "longitude": lon.tolist(),
        **gazetteer.label(lat, lon),
    }
    return cells, dropped
