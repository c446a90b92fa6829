"""Fitting training into a wall-clock budget: a throughput probe and a stop callback."""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback


def probe_train_throughput(
    model: torch.nn.Module,
    batch_size: int,
    image_size: int | tuple[int, int],
    bf16: bool = True,
    channels_last: bool = True,
    steps: int = 3,
) -> float:
    """Images/s of forward + backward on random data (optimizer step excluded; weights untouched)."""
    model.train()
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.randn(batch_size, 3, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    elapsed = 0.0
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(pixel_values=x)
        out.logits.float().logsumexp(-1).mean().backward()
        if i:  # the first step warms up oneDNN kernels
            elapsed += time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return batch_size * steps / elapsed


class TimeBudgetCallback(TrainerCallback):
    """Stops training (saving and evaluating once more) when ``seconds`` of training have passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start: float | None = None
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.perf_counter() - self.start > self.seconds:
            self.stopped_early = True
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control
