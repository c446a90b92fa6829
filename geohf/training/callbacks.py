"""Trainer callbacks of geohf training."""

from __future__ import annotations

from transformers import TrainerCallback

from ..data.transforms import SeededDataset


class EpochCallback(TrainerCallback):
    """Tells a :class:`SeededDataset` which epoch is running (resumed runs included)."""

    def __init__(self, dataset: SeededDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))
