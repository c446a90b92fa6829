"""``GeoTrainingArguments``: ``transformers.TrainingArguments`` plus what geolocation training turns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

CLASS_BALANCE = ("none", "sampler", "loss")
GEO_METRICS_LOWER_IS_BETTER = {"median_km", "mean_km", "loss"}


@dataclass
class GeoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what geolocation training turns (a geohf model's defaults)."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep the dataset's columns: geohf's transform reads them"}
    )
    backbone_lr_multiplier: float = field(
        default=0.1, metadata={"help": "backbone lr = lr × this (discriminative fine-tuning)"}
    )
    channels_last: bool = field(default=True, metadata={"help": "NHWC memory layout for convolutions"})
    image_column: str = field(default="image", metadata={"help": "the dataset's image column"})
    class_balance: str = field(
        default="none", metadata={"help": "none, sampler (draw classes evenly) or loss (inverse-frequency weights)"}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after this many evaluations without a better metric_for_best_model"}
    )
    step_lr_every: int | None = field(
        default=None, metadata={"help": "step schedule: multiply the lr by step_lr_gamma every N steps after warm-up"}
    )
    step_lr_gamma: float = field(default=0.1, metadata={"help": "factor of the step schedule"})
    label_scan_rows: int = field(default=10_000, metadata={"help": "streaming: rows read to find the label values"})


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (with or without Trainer's ``eval_`` prefix) is better."""
    return metric.removeprefix("eval_") in GEO_METRICS_LOWER_IS_BETTER


def as_geo_training_args(args: TrainingArguments | None) -> GeoTrainingArguments:
    """``args`` as :class:`GeoTrainingArguments` (plain ``TrainingArguments`` keep their values)."""
    if args is None:
        return GeoTrainingArguments(output_dir="tmp_trainer", report_to="none")
    if isinstance(args, GeoTrainingArguments):
        return args
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init and hasattr(args, f.name)}
    values["remove_unused_columns"] = False
    return GeoTrainingArguments(**values)
