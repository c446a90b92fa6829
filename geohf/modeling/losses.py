"""Losses for geolocation heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geo.sphere import EARTH_RADIUS_KM, haversine_km


def haversine_soft_targets(
    coordinates: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    tau_km: float,
) -> torch.Tensor:
    r"""PIGEON's haversine-smoothed labels, normalised to sum to one.

    .. math:: y_{n,i} = \exp\left(-\frac{d(g_i, x_n) - d(g_{y_n}, x_n)}{\tau}\right)

    with :math:`g_i` the cell centroids, :math:`x_n` the true coordinates and
    :math:`y_n` the true cell. Computed in log space, so no distance overflows.

    Args:
        coordinates: (B, 2) true latitude, longitude in degrees.
        labels: (B,) true cell ids.
        centroids: (C, 2) cell centroids, latitude, longitude in degrees.
        tau_km: temperature in km; small values approach one-hot labels.
    """
    coordinates, centroids = coordinates.double(), centroids.double()
    d = haversine_km(
        coordinates[:, None, 0], coordinates[:, None, 1], centroids[None, :, 0], centroids[None, :, 1]
    )  # (B, C)
    d_true = d.gather(1, labels[:, None])
    return torch.softmax(-(d - d_true) / tau_km, dim=1).float()


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of ``logits`` against probability ``targets`` (rows sum to one), averaged over
    the batch (weighted by ``weights`` per example when given, like ``F.cross_entropy(weight=...)``)."""
    per_example = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / weights.sum()


def haversine_smoothed_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    coordinates: torch.Tensor | None,
    centroids: torch.Tensor,
    tau_km: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy against haversine-smoothed labels (optionally weighted per example).

    Without true coordinates the true cell's centroid stands in for them.
    """
    if coordinates is None:
        coordinates = centroids[labels]
    targets = haversine_soft_targets(coordinates, labels, centroids, tau_km)
    return soft_cross_entropy(logits, targets, weights)


def great_circle_loss(pred_xyz: torch.Tensor, true_xyz: torch.Tensor) -> torch.Tensor:
    """Mean great-circle distance in units of 1000 km between unit vectors.

    Uses ``atan2(|a×b|, a·b)``, whose gradient stays finite for identical points.
    """
    cross = torch.linalg.cross(pred_xyz, true_xyz, dim=-1).norm(dim=-1)
    dot = (pred_xyz * true_xyz).sum(-1)
    return (torch.atan2(cross, dot) * EARTH_RADIUS_KM / 1000.0).mean()
