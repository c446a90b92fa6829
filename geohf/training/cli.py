"""Command line of ``scripts/train.py`` and ``geohf train``: HfArgumentParser over the argument dataclasses.

transformers and the dataclasses are imported inside the functions, so ``geohf`` builds its
parser without them; ``geohf train --help`` builds the full parser (TrainingArguments: seconds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError, check_source


def parse_args(argv: list[str] | None = None):
    """(model, data, augment, extras, training) arguments from flags, or from one ``.json`` / ``.yaml`` file."""
    from transformers import HfArgumentParser

    from ..data.transforms import AugmentConfig
    from .train import DataArguments, ModelArguments, TrainingExtras
    from .training_args import GeoTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, AugmentConfig, TrainingExtras, GeoTrainingArguments))
    parser.prog = "geohf train"

    def error(message: str):
        raise UserError(f"geohf train: {message} (see geohf train --help)")

    parser.error = error  # one line from geohf's main instead of usage + SystemExit
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--config":
        path = Path(argv[1])
        if not path.is_file():
            raise UserError(f"--config {path}: no such file")
        if path.suffix in (".yaml", ".yml"):
            return parser.parse_yaml_file(str(path))
        return parser.parse_json_file(str(path))
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        if "not used by the HfArgumentParser" in str(err):
            raise UserError(f"geohf train: {err} (see geohf train --help)") from err
        raise


def require_extras(training_args, extras) -> None:
    """A missing ``tracking`` extra (a ``--report_to`` logger, ``--hp_search_trials``) as a UserError, up front."""
    import importlib.util

    from ..errors import extra_message

    wanted = [name for name in ("tensorboard", "trackio") if name in (training_args.report_to or [])]
    if getattr(extras, "hp_search_trials", 0):
        wanted.append("optuna")
    for module in wanted:
        if importlib.util.find_spec(module) is None:
            raise UserError(extra_message("geohf train", module, "tracking"))


def main(argv: list[str] | None = None):
    model_args, data_args, augment, extras, training_args = parse_args(argv)
    require_extras(training_args, extras)
    data_args.dataset = check_source(data_args.dataset, "dataset", data_args.dataset_revision)
    if model_args.model_name_or_path:
        model_args.model_name_or_path = check_source(
            model_args.model_name_or_path, "model", flag="--model_name_or_path"
        )
    import geohf  # noqa: F401  (registers the Auto classes once transformers' are imported)

    from .train import run_training

    result = run_training(model_args, data_args, augment, training_args, extras)
    if result.trainer.is_world_process_zero():
        print(json.dumps(result.metrics, indent=2))
    # every rank leaves the process group before it exits: a rank exiting inside it can abort on its way out
    # ("terminate called without an active exception", seen in 2-rank --streaming runs) and fail the launch
    result.trainer.accelerator.end_training()
    return result
