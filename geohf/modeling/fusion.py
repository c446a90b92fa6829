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

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(batch, views, dim) → (batch, dim)."""
        weights = torch.softmax(self.score(embeddings).float(), dim=1)
        return (weights * embeddings.float()).sum(1).to(embeddings.dtype)
