"""The splits a :class:`~geohf.training.trainer.GeoTrainer` reads: raw ``image`` / coordinate / label rows
decoded and transformed on the fly, with every head's targets encoded."""

from __future__ import annotations

from ..data.transforms import (
    AugmentConfig,
    SeededDataset,
    ViewGroups,
    example_transform,
    location_groups,
    train_transform,
)
from ..errors import UserError
from .training_args import GeoTrainingArguments


def attach_transforms(model, processor, augment: AugmentConfig, train, evalset, args: GeoTrainingArguments):
    """Raw splits decoded and transformed on the fly (``with_transform``; ``map`` for streams): the model's eval
    preprocessing, plus ``augment`` for training. Returns ``(train, evalset, seeded)``, ``seeded`` the training
    dataset to tell each epoch (reproducible augmentations or view draws), or None."""
    specs, primary = model.config.head_specs, model.config.primary_head
    partitions = model.cell_partitions
    column = args.image_column
    train_fn = example_transform(train_transform(processor, augment), specs, primary, column, partitions)
    eval_fn = example_transform(processor.transform, specs, primary, column, partitions)

    views = model.config.views

    def attach(ds, fn, seed: int | None = None, where: str = "the split"):
        if ds is None or column not in (getattr(ds, "column_names", None) or []):
            return ds  # already transformed (or no images to decode)
        if views > 1:  # one sample = one place of `views` views
            return view_groups(ds, fn, views, seed, where, args)
        if hasattr(ds, "with_transform"):
            return ds.with_transform(fn)
        return ds.map(fn, batched=True, batch_size=64, remove_columns=list(ds.column_names))

    seeded = None
    train = attach(train, train_fn, args.seed, "the training split")
    if isinstance(train, ViewGroups):
        seeded = train  # per-epoch view draws and augmentations from (seed, epoch, place)
    elif train is not None and augment.enabled and hasattr(train, "__len__"):
        train = seeded = SeededDataset(train, args.seed)  # reproducible augmentations, resume included
    if isinstance(evalset, dict):
        evalset = {k: attach(v, eval_fn, where=f"the eval split {k!r}") for k, v in evalset.items()}
    else:
        evalset = attach(evalset, eval_fn, where="the eval split")
    return train, evalset, seeded


def view_groups(ds, fn, views: int, seed: int | None, where: str, args: GeoTrainingArguments) -> ViewGroups:
    """``ds`` grouped by ``location_id`` into places of ``views`` views (:class:`ViewGroups`)."""
    if not hasattr(ds, "with_transform"):
        raise UserError(f"--views {views} groups rows by place, which needs a map-style dataset (not --streaming)")
    groups = location_groups(ds, where)
    grouped = ViewGroups(ds.with_transform(fn), groups, views, seed, location_ids=ds["location_id"])
    if args.process_index == 0:
        print(f"geohf: {where}: {grouped.counts.describe(views, seed is not None)}", flush=True)
    return grouped
