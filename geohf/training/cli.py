"""Command line of ``scripts/train.py`` and ``geohf train``: HfArgumentParser over the argument dataclasses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

from ..data.transforms import AugmentConfig
from .train import DataArguments, ModelArguments, TrainingExtras, run_training
from .trainer import GeoTrainingArguments


def parse_args(argv: list[str] | None = None):
    """(model, data, augment, extras, training) arguments from flags, or from one ``.json`` / ``.yaml`` file."""
    parser = HfArgumentParser((ModelArguments, DataArguments, AugmentConfig, TrainingExtras, GeoTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--config":
        path = Path(argv[1])
        if path.suffix in (".yaml", ".yml"):
            return parser.parse_yaml_file(str(path))
        return parser.parse_json_file(str(path))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None):
    import geohf  # noqa: F401  (registers the Auto classes)

    model_args, data_args, augment, extras, training_args = parse_args(argv)
    result = run_training(model_args, data_args, augment, training_args, extras)
    if result.trainer.is_world_process_zero():
        print(json.dumps(result.metrics, indent=2))
    return result
