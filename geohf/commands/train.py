"""``geohf train`` (and ``scripts/train.py``): fine-tune a model; the flags are HfArgumentParser's.

``geohf``'s parser routes ``train`` here and forwards every flag after it to an HfArgumentParser over
the argument dataclasses (model, data, augmentation, extras, TrainingArguments), built only when the
command runs: ``geohf --help`` imports no transformers, ``geohf train --help`` builds the full parser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, check_source
from .command import set_command


@dataclass
class TrainArguments:
    flags: list[str] = field(default_factory=list)
    """The HfArgumentParser flags (``--help`` included), or ``--config FILE.yaml|json``."""


def parse_args(argv: list[str]):
    """(model, data, augment, extras, training) arguments from flags, or from one ``.json`` / ``.yaml`` file."""
    from transformers import HfArgumentParser

    from ..data.transforms import AugmentConfig
    from ..training.train import DataArguments, ModelArguments, TrainingExtras
    from ..training.training_args import GeoTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, AugmentConfig, TrainingExtras, GeoTrainingArguments))
    parser.prog = "geohf train"

    def error(message: str):
        raise UserError(f"geohf train: {message} (see geohf train --help)")

    parser.error = error  # one line from geohf's main instead of usage + SystemExit
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


def train(argv: list[str]):
    """Parse ``argv``, train, print the metrics (rank 0); the :class:`~geohf.training.train.TrainResult`."""
    model_args, data_args, augment, extras, training_args = parse_args(list(argv))
    require_extras(training_args, extras)
    data_args.dataset = check_source(data_args.dataset, "dataset", data_args.dataset_revision)
    if model_args.model_name_or_path:
        model_args.model_name_or_path = check_source(
            model_args.model_name_or_path, "model", flag="--model_name_or_path"
        )
    from ..training.train import run_training

    result = run_training(model_args, data_args, augment, training_args, extras)
    if result.trainer.is_world_process_zero():
        print(json.dumps(result.metrics, indent=2))
    # every rank leaves the process group before it exits: a rank exiting inside it can abort on its way out
    # ("terminate called without an active exception", seen in 2-rank --streaming runs) and fail the launch
    result.trainer.accelerator.end_training()
    return result


def train_command(args: TrainArguments) -> int:
    train(args.flags)
    return 0


def register_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a model (same flags as scripts/train.py; --help for all)", add_help=False
    )
    p.set_defaults(flags=[])
    set_command(p, TrainArguments, train_command, forward="flags")
