"""Training: :class:`GeoTrainer` and its arguments over ``transformers.Trainer``; ``run_training`` for scripts;
the names load on first use."""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "GeoTrainer": ".trainer",
    "GeoTrainingArguments": ".training_args",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
