"""Training: :class:`GeoTrainer` and its arguments over ``transformers.Trainer``; ``run_training`` for scripts."""

from .trainer import GeoTrainer, GeoTrainingArguments

__all__ = ["GeoTrainer", "GeoTrainingArguments"]
