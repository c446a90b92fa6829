"""Class-balanced training: the sampler that draws classes evenly and the inverse-frequency weights
(per example for the sampler, per class for the loss)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.label_space import label_column_values
from ..data.transforms import label_encoder
from ..modeling.configuration_geohf import HeadSpec


class BalancedSampler(torch.utils.data.Sampler):
    """Draws training examples with replacement, each with probability ∝ its weight (e.g. 1 / class count).

    Deterministic per epoch (``seed + epoch``), so a resumed run sees the same order.
    """

    def __init__(self, weights, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()


def inverse_frequency(labels) -> np.ndarray:
    """Per-example weight ``1 / count(label)`` (labels < 0, unknown classes, get weight 0)."""
    labels = np.asarray(labels)
    known = labels >= 0
    counts = np.bincount(labels[known]) if known.any() else np.zeros(1)
    weights = np.zeros(labels.shape, dtype=np.float64)
    weights[known] = 1.0 / counts[labels[known]]
    return weights


def class_weights(spec: HeadSpec, values: list) -> tuple[np.ndarray, list[float]]:
    """Inverse-frequency weights: per example (for sampling) and per class (for the loss, mean 1 over seen classes)."""
    encode = label_encoder(spec)
    labels = np.array([encode(v) for v in values])
    per_example = inverse_frequency(labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(spec.labels)).astype(np.float64)
    seen = counts > 0
    per_class = np.zeros_like(counts)
    per_class[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    return per_example, per_class.round(6).tolist()


def primary_targets(model, dataset, max_rows: int) -> tuple[HeadSpec, list]:
    """The primary head and its raw target per training row (a geocell column, or cells from coordinates)."""
    spec = model.config.head()
    if spec.label_column:
        return spec, label_column_values(dataset, spec.label_column, max_rows)
    if spec.is_geocell:
        partition = model.cell_partitions[spec.partition]
        lat = label_column_values(dataset, "latitude", max_rows)
        lon = label_column_values(dataset, "longitude", max_rows)
        return spec, partition.assign(np.asarray(lat), np.asarray(lon)).tolist()
    raise ValueError(f"--class_balance needs a classifier as primary head; {spec.name!r} is {spec.type}")
