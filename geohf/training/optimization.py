"""The optimizer's parameter groups (a backbone learning-rate multiplier) and the step schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch


def param_groups(
    model: torch.nn.Module, decay: set[str], lr: float, backbone_lr_multiplier: float, weight_decay: float
) -> list[dict]:
    """AdamW groups of the trainable parameters: the backbone (``geo.*``) at ``lr × backbone_lr_multiplier``,
    the rest at ``lr``; ``weight_decay`` on the names in ``decay`` only."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.split(".")[0] == "geo", name in decay)
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_multiplier if is_backbone else 1.0),
            "weight_decay": weight_decay if has_decay else 0.0,
        }
        for (is_backbone, has_decay), params in sorted(groups.items())
    ]


def step_schedule(warmup_steps: int, every: int, gamma: float) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up, then ``× gamma`` every ``every`` steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** ((step - warmup_steps) // every)

    return factor
