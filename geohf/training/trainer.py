"""Trainer with a backbone learning-rate multiplier and geographic eval metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers import EvalPrediction, Trainer

from .metrics import distance_metrics, topk_accuracy


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


def step_schedule(warmup_steps: int, every: int, gamma: float):
    """LambdaLR factor: linear warm-up, then ``× gamma`` every ``every`` steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** ((step - warmup_steps) // every)

    return factor


class GeoTrainer(Trainer):
    """``transformers.Trainer`` with the knobs the seeds turned.

    * AdamW gives the backbone ``lr × backbone_lr_multiplier`` (seed 004: ×0.1);
    * ``sample_weights``: class-balanced sampling (seed 004's imbalance problem);
    * ``step_lr_every`` / ``step_lr_gamma``: a step schedule after the warm-up.
    """

    def __init__(
        self,
        *args,
        backbone_lr_multiplier: float = 0.1,
        sample_weights=None,
        step_lr_every: int | None = None,
        step_lr_gamma: float = 0.1,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.sample_weights = sample_weights
        self.step_lr_every, self.step_lr_gamma = step_lr_every, step_lr_gamma

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        return BalancedSampler(self.sample_weights, seed=self.args.seed)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.step_lr_every is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = max(self.args.get_warmup_steps(num_training_steps), 1)
        factor = step_schedule(warmup, self.step_lr_every, self.step_lr_gamma)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                key = (name.split(".")[0] == "geo", name in decay)
                groups.setdefault(key, []).append(param)
        lr = self.args.learning_rate
        param_groups = [
            {
                "params": params,
                "lr": lr * (self.backbone_lr_multiplier if is_backbone else 1.0),
                "weight_decay": self.args.weight_decay if has_decay else 0.0,
            }
            for (is_backbone, has_decay), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=lr, **optimizer_kwargs)
        return self.optimizer


def make_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer ``compute_metrics``: km errors from predicted coordinates, top-k over the primary head.

    Expects ``label_names=["labels", "coordinates"]`` and model outputs ``(logits, coordinates, ...)``.
    """

    def compute(pred: EvalPrediction) -> dict[str, float]:
        outputs = pred.predictions if isinstance(pred.predictions, tuple) else (pred.predictions,)
        labels = pred.label_ids if isinstance(pred.label_ids, tuple) else (pred.label_ids,)
        logits, coords = outputs[0], outputs[1] if len(outputs) > 1 else None
        cell_labels, true = labels[0], labels[1] if len(labels) > 1 else None
        out = {}
        if logits is not None and logits.ndim == 2 and cell_labels is not None:
            valid = np.asarray(cell_labels) >= 0
            out.update(topk_accuracy(np.asarray(logits)[valid], np.asarray(cell_labels)[valid], ks=(1, 5)))
        if coords is not None and true is not None:
            out.update(distance_metrics(true[:, 0], true[:, 1], coords[:, 0], coords[:, 1]))
        return out

    return compute
