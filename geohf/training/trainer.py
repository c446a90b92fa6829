"""``GeoTrainer``: ``transformers.Trainer`` with a backbone learning-rate multiplier and geographic eval metrics.

Its parts live in modules named after them: :mod:`.training_args`, :mod:`.sampler` (class balance),
:mod:`.optimization`, :mod:`.splits`, :mod:`.compute_metrics`, :mod:`.callbacks`, :mod:`.checkpoints`,
:mod:`.model_card` and :mod:`.distributed`; their public names are importable from here too.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from ..data.transforms import AugmentConfig, GeoCollator
from ..errors import UserError
from ..modeling import GeoImageProcessor
from .callbacks import EpochCallback
from .checkpoints import checkpoint_folders, remove_partial_checkpoints
from .compute_metrics import coordinates_only, has_class_targets, make_compute_metrics
from .distributed import is_node_split, node_split_dataloader, rows_kept, split_stream_by_node
from .model_card import card_metrics, has_eval_metrics, logged_metrics
from .optimization import param_groups, step_schedule
from .sampler import BalancedSampler, class_weights, inverse_frequency, primary_targets
from .splits import attach_transforms
from .training_args import (
    CLASS_BALANCE,
    GEO_METRICS_LOWER_IS_BETTER,
    GeoTrainingArguments,
    as_geo_training_args,
    lower_is_better,
)

__all__ = [
    "CLASS_BALANCE",
    "GEO_METRICS_LOWER_IS_BETTER",
    "BalancedSampler",
    "EpochCallback",
    "GeoTrainer",
    "GeoTrainingArguments",
    "class_weights",
    "has_class_targets",
    "inverse_frequency",
    "is_node_split",
    "lower_is_better",
    "make_compute_metrics",
    "split_stream_by_node",
    "step_schedule",
]


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

    Overrides public ``Trainer`` methods, and one private one, ``_get_train_sampler`` (the class-balanced
    sampler), whose signature ``tests/training/test_trainer_api.py`` pins.
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
        args = as_geo_training_args(args)
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
                spec, values = primary_targets(reference, train_dataset, args.label_scan_rows)
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
            train_dataset, eval_dataset, seeded = attach_transforms(
                reference, kwargs["processing_class"], self.augment, train_dataset, eval_dataset, args
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
            kwargs.setdefault("preprocess_logits_for_metrics", coordinates_only)
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
        fine-tuning mode) in the config, hence in the saved config.json and the model card. A checkpoint
        that a failure left part-written (a full disk) is removed, not left for a resume to pick."""
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
        before = checkpoint_folders(self.args.output_dir)
        try:
            return super().train(*args, **kwargs)
        except BaseException:
            if self.is_world_process_zero():
                remove_partial_checkpoints(self.args.output_dir, before)
            raise

    @property
    def backbone_lr_multiplier(self) -> float:
        return self.args.backbone_lr_multiplier

    def get_train_dataloader(self):
        """Trainer's dataloader; for this rank's part of a stream (:func:`split_stream_by_node`) one that
        accelerate neither splits again nor reads on rank 0 only (:func:`node_split_dataloader`)."""
        if not is_node_split(self.train_dataset):
            return super().get_train_dataloader()
        collate = self._get_collator_with_removed_columns(self.data_collator, description="Training")
        return node_split_dataloader(self.train_dataset, self._train_batch_size, collate, self.args, self.accelerator)

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        return BalancedSampler(self.sample_weights, seed=self.args.seed)

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
        kept = rows_kept(self.accelerator, rows)
        kept_loss = loss
        if 0 < kept < rows:  # the loss of the rows that count (one extra forward, on one batch of the split)
            head = {k: v[:kept] if torch.is_tensor(v) and v.shape[:1] == (rows,) else v for k, v in inputs.items()}
            kept_loss = super().prediction_step(model, head, True, ignore_keys=ignore_keys)[0]
        if kept:
            sums[0] += float(kept_loss.detach().double().mean()) * kept
            sums[1] += kept
        return loss, logits, labels

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
        lr = self.args.learning_rate
        groups = param_groups(model, decay, lr, self.backbone_lr_multiplier, self.args.weight_decay)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=lr, **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the model folder: weights, config, processor, code and cells, and (a final save, not a
        checkpoint) ``training_args.json`` instead of Trainer's pickle and a model card with the metrics
        (the eval split is scored first if no evaluation ran yet)."""
        if not _internal_call and self.eval_dataset is not None and not has_eval_metrics(self.state):
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
        """The model card's metrics and where they come from (:func:`~geohf.training.model_card.card_metrics`)."""
        split = getattr(self.eval_dataset, "split", None)
        return card_metrics(self.state, self.args, self.model.config, split)

    def logged_metrics(self) -> dict[str, float]:
        """The last value of every metric Trainer logged (training summary and evaluations)."""
        return logged_metrics(self.state)


def _dataset_name(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) if info is not None else None
