"""Trainer with a backbone learning-rate multiplier and geographic eval metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers import EvalPrediction, Trainer

from .metrics import distance_metrics, topk_accuracy


class GeoTrainer(Trainer):
    """``transformers.Trainer`` whose AdamW gives the backbone ``lr × backbone_lr_multiplier``.

    Seed 004 trained pretrained layers with a tenth of the head's learning rate.
    """

    def __init__(self, *args, backbone_lr_multiplier: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_lr_multiplier = backbone_lr_multiplier

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
