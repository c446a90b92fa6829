"""Several processes: each rank's part of a streamed training split, its dataloader, and the rows of a rank's
last eval batch that ``gather_for_metrics`` keeps."""

from __future__ import annotations

from collections.abc import Callable

from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import TrainingArguments


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
    """Whether ``dataset`` is one rank's part of a stream (``split_dataset_by_node`` sets ``_distributed``)."""
    return getattr(dataset, "_distributed", None) is not None


def node_split_dataloader(
    dataset, batch_size: int, collate_fn: Callable, args: TrainingArguments, accelerator: Accelerator
) -> DataLoader:
    """The dataloader of this rank's part of a stream (:func:`split_stream_by_node`): one that accelerate
    neither splits again (its ``shard`` / ``IterableDatasetShard``) nor reads on rank 0 only
    (``dispatch_batches``, which would train on rank 0's part alone)."""
    from accelerate.data_loader import prepare_data_loader

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers,
        prefetch_factor=args.dataloader_prefetch_factor,
    )
    return prepare_data_loader(
        loader,
        accelerator.device,
        num_processes=1,  # already this rank's part
        process_index=0,
        put_on_device=True,
        dispatch_batches=False,
        non_blocking=accelerator.non_blocking,
    )


def rows_kept(accelerator: Accelerator, rows: int) -> int:
    """How many of this rank's ``rows`` ``gather_for_metrics`` keeps: all but in the last batch, where
    it keeps the first ``remainder`` rows of the ranks' batches laid end to end in rank order."""
    state = accelerator.gradient_state
    if not state.end_of_dataloader or state.remainder <= 0:
        return rows
    return max(0, min(rows, state.remainder - accelerator.process_index * rows))
