"""Trainer with a backbone learning-rate multiplier and geographic eval metrics."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from ..data.label_space import label_column_values
from ..data.transforms import (
    AugmentConfig,
    GeoCollator,
    SeededDataset,
    ViewGroups,
    example_transform,
    label_encoder,
    location_groups,
    train_transform,
)
from ..errors import UserError
from ..evaluation.metrics import distance_metrics, hierarchy_metrics, topk_accuracy
from ..modeling import GeoImageProcessor
from ..modeling.configuration_geohf import HeadSpec


class BalancedSampler(torch.utils.data.Sampler):
    """Draws training examples with replacement, each with probability ∝ its weight (e.g. 1 / class count).

    Deterministic per epoch (``seed + epoch``), so a resumed run sees the same order.
    """

    def __init__(self, weights, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist()


def inverse_frequency(labels) -> np.ndarray:
    """Per-example weight ``1 / count(label)`` (labels < 0, unknown classes, get weight 0)."""
    labels = np.asarray(labels)
    known = labels >= 0
    counts = np.bincount(labels[known]) if known.any() else np.zeros(1)
    weights = np.zeros(labels.shape, dtype=np.float64)
    weights[known] = 1.0 / counts[labels[known]]
    return weights


def step_schedule(warmup_steps: int, every: int, gamma: float):
    """LambdaLR factor: linear warm-up, then ``× gamma`` every ``every`` steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** ((step - warmup_steps) // every)

    return factor


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


GEO_METRICS_LOWER_IS_BETTER = {"median_km", "mean_km", "loss"}
CLASS_BALANCE = ("none", "sampler", "loss")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` (with or without Trainer's ``eval_`` prefix) is better."""
    return metric.removeprefix("eval_") in GEO_METRICS_LOWER_IS_BETTER


def _geo_args(args: TrainingArguments | None) -> GeoTrainingArguments:
    """``args`` as :class:`GeoTrainingArguments` (plain ``TrainingArguments`` keep their values)."""
    if args is None:
        return GeoTrainingArguments(output_dir="tmp_trainer", report_to="none")
    if isinstance(args, GeoTrainingArguments):
        return args
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init and hasattr(args, f.name)}
    values["remove_unused_columns"] = False
    return GeoTrainingArguments(**values)


class EpochCallback(TrainerCallback):
    """Tells a :class:`SeededDataset` which epoch is running (resumed runs included)."""

    def __init__(self, dataset: SeededDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def class_weights(spec: HeadSpec, values: list) -> tuple[np.ndarray, list[float]]:
    """Inverse-frequency weights: per example (for sampling) and per class (for the loss, mean 1 over seen classes)."""
    encode = label_encoder(spec)
    labels = np.array([encode(v) for v in values])
    per_example = inverse_frequency(labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(spec.labels)).astype(np.float64)
    seen = counts > 0
    per_class = np.zeros_like(counts)
    per_class[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    return per_example, per_class.round(6).tolist()


def _primary_targets(model, dataset, max_rows: int) -> tuple[HeadSpec, list]:
    """The primary head and its raw target per training row (a geocell column, or cells from coordinates)."""
    spec = model.config.head()
    if spec.label_column:
        return spec, label_column_values(dataset, spec.label_column, max_rows)
    if spec.is_geocell:
        partition = model.cell_partitions[spec.partition]
        lat = label_column_values(dataset, "latitude", max_rows)
        lon = label_column_values(dataset, "longitude", max_rows)
        return spec, partition.assign(np.asarray(lat), np.asarray(lon)).tolist()
    raise ValueError(f"--class_balance needs a classifier as primary head; {spec.name!r} is {spec.type}")


class GeoTrainer(Trainer):
    """``transformers.Trainer`` for geohf models; it owns what geolocation training needs.

    Given a geohf model and raw dataset splits (``image``, ``latitude``, ``longitude`` and label
    columns, as ``geohf dataset build`` writes them), it decodes and transforms images on the
    fly (the model's eval preprocessing, plus ``augment`` for training, reproducible per sample
    and epoch), encodes every head's targets, collates (channels_last), reports km metrics, and
    :meth:`save_model` writes weights, config, processor, cells, ``training_args.json`` and a
    model card with a model-index. From :class:`GeoTrainingArguments`:

    * AdamW gives the backbone ``lr × backbone_lr_multiplier`` (discriminative fine-tuning, e.g. ×0.1);
    * ``class_balance``: class-balanced sampling or loss weights (for imbalanced countries);
    * ``step_lr_every`` / ``step_lr_gamma``: a step schedule after the warm-up;
    * ``early_stopping_patience``: stop when ``metric_for_best_model`` (default ``median_km``) stalls.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        augment: AugmentConfig | None = None,
        dataset_name: str | None = None,
        sample_weights=None,
        callbacks: list | None = None,
        model_init=None,
        **kwargs,
    ):
        reference = model if model is not None else (model_init() if model_init is not None else None)
        args = _geo_args(args)
        if args.label_names is None:  # a primary head without class targets (regression, GeoCLIP) has no labels
            classes = reference is None or has_class_targets(reference.config)
            args.label_names = ["labels", "coordinates"] if classes else ["coordinates"]
        callbacks = list(callbacks or [])
        self.dataset_name = dataset_name or _dataset_name(train_dataset)
        self.augment = augment or AugmentConfig()
        if args.class_balance not in CLASS_BALANCE:
            raise ValueError(f"--class_balance must be one of {CLASS_BALANCE}, got {args.class_balance!r}")
        if reference is not None:
            if args.class_balance != "none" and train_dataset is not None and sample_weights is None:
                spec, values = _primary_targets(reference, train_dataset, args.label_scan_rows)
                per_example, per_class = class_weights(spec, values)
                if args.class_balance == "loss":
                    reference.set_class_weights(spec.name, per_class)
                else:
                    if reference.config.views > 1:
                        raise UserError("--class_balance sampler draws rows, not places: with --views use loss")
                    if not hasattr(train_dataset, "__len__"):
                        raise ValueError("--class_balance sampler needs a map-style dataset; use loss with --streaming")
                    sample_weights = per_example
            if args.channels_last:
                reference.to(memory_format=torch.channels_last)
            kwargs.setdefault("processing_class", GeoImageProcessor.from_config(reference.config))
            train_dataset, eval_dataset, seeded = self._attach_transforms(
                reference, kwargs["processing_class"], train_dataset, eval_dataset, args
            )
            if seeded is not None:
                callbacks.append(EpochCallback(seeded))
        if args.early_stopping_patience:
            if eval_dataset is None or args.eval_strategy == "no":
                raise ValueError("--early_stopping_patience needs an eval split and --eval_strategy steps|epoch")
            args.load_best_model_at_end = True
            if args.metric_for_best_model in (None, "loss"):
                args.metric_for_best_model = "median_km"
            args.greater_is_better = not lower_is_better(args.metric_for_best_model)
            callbacks.append(EarlyStoppingCallback(args.early_stopping_patience))
        kwargs.setdefault("data_collator", GeoCollator(channels_last=args.channels_last))
        config = reference.config if reference is not None else None
        kwargs.setdefault("compute_metrics", make_compute_metrics(config, args.label_names))
        if "labels" not in args.label_names:  # no top-k to score: eval keeps coordinates, not (N, classes) logits
            kwargs.setdefault("preprocess_logits_for_metrics", _coordinates_only)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            model_init=model_init,
            **kwargs,
        )
        self.sample_weights = sample_weights
        self.train_dataset = split_stream_by_node(self.train_dataset, self.args.process_index, self.args.world_size)

    def train(self, *args, **kwargs):
        """Trainer's training; first prints the trainable-parameter count and records it (with the
        fine-tuning mode) in the config, hence in the saved config.json and the model card."""
        model = self.model
        if model is not None and hasattr(model, "parameter_counts"):
            trainable, total = model.parameter_counts()
            info = dict(model.config.finetuning or {"mode": "full"})
            info.update(trainable_params=trainable, total_params=total)
            augmentations = {k: v for k, v in asdict(self.augment).items() if v}
            if augmentations:
                info["augmentations"] = augmentations
            else:
                info.pop("augmentations", None)
            model.config.finetuning = info
            if self.is_world_process_zero():
                print(
                    f"geohf: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
                    f"fine-tuning mode {info['mode']}",
                    flush=True,
                )
        return super().train(*args, **kwargs)

    @property
    def backbone_lr_multiplier(self) -> float:
        return self.args.backbone_lr_multiplier

    def _attach_transforms(self, model, processor, train, evalset, args):
        """Raw splits decoded and transformed on the fly (``with_transform``; ``map`` for streams)."""
        specs, primary = model.config.head_specs, model.config.primary_head
        partitions = model.cell_partitions
        column = args.image_column
        train_fn = example_transform(train_transform(processor, self.augment), specs, primary, column, partitions)
        eval_fn = example_transform(processor.transform, specs, primary, column, partitions)

        views = model.config.views

        def attach(ds, fn, seed: int | None = None, where: str = "the split"):
            if ds is None or column not in (getattr(ds, "column_names", None) or []):
                return ds  # already transformed (or no images to decode)
            if views > 1:  # one sample = one place of `views` views
                return self._view_groups(ds, fn, views, seed, where, args)
            if hasattr(ds, "with_transform"):
                return ds.with_transform(fn)
            return ds.map(fn, batched=True, batch_size=64, remove_columns=list(ds.column_names))

        seeded = None
        train = attach(train, train_fn, args.seed, "the training split")
        if isinstance(train, ViewGroups):
            seeded = train  # per-epoch view draws and augmentations from (seed, epoch, place)
        elif train is not None and self.augment.enabled and hasattr(train, "__len__"):
            train = seeded = SeededDataset(train, args.seed)  # reproducible augmentations, resume included
        if isinstance(evalset, dict):
            evalset = {k: attach(v, eval_fn, where=f"the eval split {k!r}") for k, v in evalset.items()}
        else:
            evalset = attach(evalset, eval_fn, where="the eval split")
        return train, evalset, seeded

    def get_train_dataloader(self):
        """Trainer's dataloader; for this rank's part of a stream (:func:`split_stream_by_node`) one that
        accelerate neither splits again (its ``shard`` / ``IterableDatasetShard``) nor reads on rank 0
        only (``dispatch_batches``, which would train on rank 0's part alone)."""
        if not is_node_split(self.train_dataset):
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="Training"),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
        )
        return prepare_data_loader(
            loader,
            self.accelerator.device,
            num_processes=1,  # already this rank's part
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
            non_blocking=self.accelerator.non_blocking,
        )

    def evaluation_loop(self, *args, **kwargs):
        """Trainer's loop; under several processes, ``eval_loss`` the mean over the split's rows. Trainer repeats
        each batch's mean loss ``batch_size`` times and ``gather_for_metrics`` cuts the last batches to the
        rows that remain, but accelerate pads a rank's last batch with rows from the start (to keep the ranks
        in step) and their losses are in that batch's mean. Here each batch's loss is over the rows
        ``gather_for_metrics`` keeps, weighted by their number and summed over the ranks."""
        if self.accelerator.num_processes == 1:  # exact already: nothing is padded
            return super().evaluation_loop(*args, **kwargs)
        self._loss_sums = [0.0, 0]
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            sums, self._loss_sums = self._loss_sums, None
        key = f"{kwargs.get('metric_key_prefix', args[4] if len(args) > 4 else 'eval')}_loss"
        if output.metrics is not None and key in output.metrics:
            total = torch.tensor(sums, dtype=torch.float64, device=self.accelerator.device)
            total = self.accelerator.reduce(total, reduction="sum")
            if total[1] > 0:
                output.metrics[key] = float(total[0] / total[1])
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        sums = getattr(self, "_loss_sums", None)
        rows = inputs["pixel_values"].shape[0] if "pixel_values" in inputs else 0
        if loss is None or sums is None or not rows:
            return loss, logits, labels
        kept = self._rows_kept(rows)
        kept_loss = loss
        if 0 < kept < rows:  # the loss of the rows that count (one extra forward, on one batch of the split)
            head = {k: v[:kept] if torch.is_tensor(v) and v.shape[:1] == (rows,) else v for k, v in inputs.items()}
            kept_loss = super().prediction_step(model, head, True, ignore_keys=ignore_keys)[0]
        if kept:
            sums[0] += float(kept_loss.detach().double().mean()) * kept
            sums[1] += kept
        return loss, logits, labels

    def _rows_kept(self, rows: int) -> int:
        """How many of this rank's ``rows`` ``gather_for_metrics`` keeps: all but in the last batch, where
        it keeps the first ``remainder`` rows of the ranks' batches laid end to end in rank order."""
        state = self.accelerator.gradient_state
        if not state.end_of_dataloader or state.remainder <= 0:
            return rows
        return max(0, min(rows, state.remainder - self.accelerator.process_index * rows))

    def _view_groups(self, ds, fn, views: int, seed: int | None, where: str, args) -> ViewGroups:
        """``ds`` grouped by ``location_id`` into places of ``views`` views (:class:`ViewGroups`)."""
        if not hasattr(ds, "with_transform"):
            raise UserError(f"--views {views} groups rows by place, which needs a map-style dataset (not --streaming)")
        groups = location_groups(ds, where)
        grouped = ViewGroups(ds.with_transform(fn), groups, views, seed, location_ids=ds["location_id"])
        if args.process_index == 0:
            print(f"geohf: {where}: {grouped.counts.describe(views, seed is not None)}", flush=True)
        return grouped

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        return BalancedSampler(self.sample_weights, seed=self.args.seed)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.args.step_lr_every is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = max(self.args.get_warmup_steps(num_training_steps), 1)
        factor = step_schedule(warmup, self.args.step_lr_every, self.args.step_lr_gamma)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                key = (name.split(".")[0] == "geo", name in decay)
                groups.setdefault(key, []).append(param)
        lr = self.args.learning_rate
        param_groups = [
            {
                "params": params,
                "lr": lr * (self.backbone_lr_multiplier if is_backbone else 1.0),
                "weight_decay": self.args.weight_decay if has_decay else 0.0,
            }
            for (is_backbone, has_decay), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=lr, **optimizer_kwargs)
        return self.optimizer

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint; one that fails part-way (a full disk) is removed, not left for a resume to pick."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        existed = folder.exists()
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if not existed and self.is_world_process_zero():
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the model folder: weights, config, processor, code and cells, and (a final save, not a
        checkpoint) ``training_args.json`` instead of Trainer's pickle and a model card with the metrics
        (the eval split is scored first if no evaluation ran yet)."""
        if not _internal_call and self.eval_dataset is not None and not self._has_eval_metrics():
            self.evaluate()  # the card's model-index reports the eval split, so score it once
        self.model._lora_unmerged = _internal_call  # checkpoints keep LoRA adapters apart, for resuming
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            self.model._lora_unmerged = False
        if _internal_call or not self.is_world_process_zero():
            return
        out = Path(output_dir or self.args.output_dir)
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle: nothing in a model folder needs unpickling
        (out / "training_args.json").write_text(self.args.to_json_string())
        from ..hub.cards import write_model_card

        metrics, note = self.card_metrics()
        write_model_card(out, self.model.config, metrics, self.args, self.dataset_name or "", metrics_note=note)

    def card_metrics(self) -> tuple[dict[str, float], str]:
        """The metrics for the model card and the sentence saying where they come from: the evaluation of the
        checkpoint the folder holds (the best one when ``load_best_model_at_end``, else the last), on the eval
        split, during training, with the coordinate rule the config had then."""
        from ..hub.cards import coordinate_rule_text

        evals = [e for e in self.state.log_history if any(k.startswith("eval_") for k in e)]
        if not evals:
            return self.logged_metrics(), ""
        chosen, which = evals[-1], "the last evaluation"
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best:
            step = int(Path(best).name.rpartition("-")[2] or -1)
            match = [e for e in evals if e.get("step") == step]
            if match:
                chosen = match[-1]
                which = f"the best checkpoint by {self.args.metric_for_best_model}, loaded at the end"
        metrics = {k: v for k, v in chosen.items() if isinstance(v, (int, float))}
        split = getattr(self.eval_dataset, "split", None) or "evaluation"
        note = (
            f"Measured on the `{split}` split during training, at step {chosen.get('step', '?')} of "
            f"{self.state.max_steps} ({which}), with coordinates from {coordinate_rule_text(self.model.config)}."
        )
        return metrics, note

    def _has_eval_metrics(self) -> bool:
        return any(k.startswith("eval_") and k != "eval_loss" for e in self.state.log_history for k in e)

    def logged_metrics(self) -> dict[str, float]:
        """The last value of every metric Trainer logged (training summary and evaluations)."""
        out: dict[str, float] = {}
        for entry in self.state.log_history:
            out.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
        return out


def split_stream_by_node(dataset, rank: int, world_size: int):
    """This rank's part of a streamed training split (``datasets.distributed.split_dataset_by_node``): its
    shards when their number is a multiple of ``world_size``, else every ``world_size``-th example. Every
    example is read by one rank per epoch. A map-style dataset (DistributedSampler's job) is returned as is."""
    from datasets import IterableDataset
    from datasets.distributed import split_dataset_by_node

    if world_size <= 1 or not isinstance(dataset, IterableDataset) or is_node_split(dataset):
        return dataset
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


def is_node_split(dataset) -> bool:
    return getattr(dataset, "_distributed", None) is not None


def _dataset_name(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) if info is not None else None


def has_class_targets(config) -> bool:
    """Whether the primary head learns class targets (a label column, or geocells); regression and
    GeoCLIP heads learn from the coordinates alone."""
    spec = config.head()
    return spec.is_classifier and bool(spec.label_column or spec.is_geocell)


def _coordinates_only(logits, labels):
    """Trainer ``preprocess_logits_for_metrics`` without class targets: the coordinates, and no logits
    (a GeoCLIP head's are (N, gallery points): 100K columns per eval image)."""
    logits_, coordinates = logits[0], logits[1]
    return logits_[:, :0], coordinates


def make_compute_metrics(
    config=None, label_names: Sequence[str] = ("labels", "coordinates")
) -> Callable[[EvalPrediction], dict[str, float]]:
    """Trainer ``compute_metrics``: km errors from predicted coordinates, top-k over the primary head and,
    given the model ``config``, country and region accuracy and balanced accuracy of its coherent answers
    (:func:`~geohf.inference.answers.coherent`) against the areas the true coordinates lie in.

    Expects the Trainer's ``label_names`` (``labels`` and/or ``coordinates``) and model outputs
    ``(logits, coordinates, ...)``.
    """

    def compute(pred: EvalPrediction) -> dict[str, float]:
        outputs = pred.predictions if isinstance(pred.predictions, tuple) else (pred.predictions,)
        label_ids = pred.label_ids if isinstance(pred.label_ids, tuple) else (pred.label_ids,)
        labels = dict(zip(label_names, label_ids))
        logits, coords = outputs[0], outputs[1] if len(outputs) > 1 else None
        cell_labels, true = labels.get("labels"), labels.get("coordinates")
        out = {}
        if logits is not None and logits.ndim == 2 and cell_labels is not None:
            valid = np.asarray(cell_labels) >= 0
            out.update(topk_accuracy(np.asarray(logits)[valid], np.asarray(cell_labels)[valid], ks=(1, 5)))
        if coords is not None and true is not None:
            out.update(distance_metrics(true[:, 0], true[:, 1], coords[:, 0], coords[:, 1]))
            if config is not None:
                out.update(_hierarchy(config, logits, coords, true))
        return out

    return compute


def _hierarchy(config, logits, coords, true) -> dict[str, float]:
    """Country / region (balanced) accuracy of the coherent answers for predicted ``coords``."""
    from ..geo.places import AdminAreas
    from ..inference.answers import coherent
    from ..inference.predictions import CellTable, GeoPredictions

    spec = config.head()
    cells = CellTable.from_spec(spec)
    n = coords.shape[0]
    probs = np.zeros((n, 0))
    if spec.is_classifier and logits is not None and logits.ndim == 2 and logits.shape[1]:  # (N, 0): dropped
        z = np.asarray(logits, dtype=np.float64)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
    empty = np.zeros((n, 0), dtype=np.int64)
    pred = GeoPredictions(
        np.asarray(coords[:, 0], np.float64),
        np.asarray(coords[:, 1], np.float64),
        empty,
        np.zeros((n, 0)),
        cells,
        probs=probs,
    )
    areas = AdminAreas.default()
    pred = coherent(pred, config.answer, config.coordinate_top_k, areas)
    true_rows = areas.containing(true[:, 0], true[:, 1])
    return hierarchy_metrics(
        pred.pred_country_code,
        areas.table.lookup("country_code", true_rows),
        pred.pred_region_code,
        areas.table.lookup("region_code", true_rows),
    )
