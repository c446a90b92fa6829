"""Fusing several views of one place (e.g. three 120° headings of a panorama)."""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    """Attention pooling over view embeddings: a learned score per view, softmax, weighted sum."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.score = nn.Linear(embed_dim, 1)
        self.score.geohf_init = "zeros"

    def forward(self, embeddings: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, views, dim) → (batch, dim); ``view_mask`` (batch, views), False for padded views
        (they get weight 0)."""
        scores = self.score(embeddings).float()
        if view_mask is not None:
            scores = scores.masked_fill(~view_mask.to(scores.device, torch.bool)[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return (weights * embeddings.float()).sum(1).to(embeddings.dtype)


def masked_mean(values: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over dim 1 (views) of (batch, views, ...) counting only the views ``view_mask`` keeps."""
    if view_mask is None:
        return values.mean(1)
    w = view_mask.to(values.device, values.dtype).reshape(*view_mask.shape, *([1] * (values.ndim - 2)))
    return (values * w).sum(1) / w.sum(1).clamp_min(1)


def check_view_mask(pixel_values: torch.Tensor, view_mask: torch.Tensor | None) -> None:
    """A view mask must be (batch, views) for (batch, views, 3, H, W) input, each place with a real view."""
    if view_mask is None:
        return
    if pixel_values.ndim != 5 or tuple(view_mask.shape) != tuple(pixel_values.shape[:2]):
        raise ValueError(
            f"view_mask has shape {list(view_mask.shape)}; it must be (batch, views) = "
            f"{list(pixel_values.shape[:2])} for pixel_values {list(pixel_values.shape)}"
        )
    empty = (~view_mask.bool()).all(1)
    if empty.any():
        raise ValueError(f"view_mask: places {empty.nonzero().flatten().tolist()} of the batch have no real view")
