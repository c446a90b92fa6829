"""What GeoTrainer relies on in transformers, accelerate and datasets beyond their public API, pinned: an upgrade
that changes one of them fails here, by name, rather than somewhere in a training run."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import Trainer, TrainingArguments

from geohf.training.checkpoints import checkpoint_folders, remove_partial_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def parameters(function) -> list[tuple[str, object]]:
    """``(name, default)`` of each parameter of ``function`` (``inspect.Parameter.empty``: none)."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_installed_transformers_is_the_supported_range():
    """The pins below hold for the range pyproject.toml declares; the installed transformers lies in it."""
    (line,) = re.findall(r'^\s*"(transformers\W[^"]*)",', (ROOT / "pyproject.toml").read_text(), re.M)
    spec = Requirement(line)
    assert spec.specifier.contains(Version(transformers.__version__)), (transformers.__version__, spec)
    assert not spec.specifier.contains(Version("6.0")), "transformers needs an upper bound (a major version)"


def test_private_trainer_methods_geotrainer_overrides_or_calls():
    """``_get_train_sampler`` (overridden: the class-balanced sampler) and ``_get_collator_with_removed_columns``
    (called by the streamed dataloader of several processes) keep the signatures GeoTrainer uses."""
    assert parameters(Trainer._get_train_sampler) == [("self", inspect.Parameter.empty), ("train_dataset", None)]
    assert parameters(Trainer._get_collator_with_removed_columns) == [
        ("self", inspect.Parameter.empty),
        ("data_collator", inspect.Parameter.empty),
        ("description", None),
    ]


def test_public_trainer_signatures_geotrainer_relies_on():
    """``evaluation_loop``'s 5th positional argument is ``metric_key_prefix`` (GeoTrainer reads it from ``args``);
    ``save_model`` tells a checkpoint from a final save by ``_internal_call``."""
    names = [name for name, _ in parameters(Trainer.evaluation_loop)]
    assert names[4:6] == ["ignore_keys", "metric_key_prefix"]
    assert parameters(Trainer.save_model)[1:] == [("output_dir", None), ("_internal_call", False)]
    assert [n for n, _ in parameters(Trainer.prediction_step)] == [
        "self",
        "model",
        "inputs",
        "prediction_loss_only",
        "ignore_keys",
    ]


class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.tensor([float(i)])}


class _Recorded(torch.utils.data.Sampler):
    def __init__(self, n: int):
        self.n, self.iterated = n, False

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.iterated = True
        yield from reversed(range(self.n))


def test_trainer_draws_training_rows_from_get_train_sampler_and_train_batch_size(tmp_path):
    """Trainer's training dataloader takes its sampler from ``_get_train_sampler`` (GeoTrainer's BalancedSampler)
    and its batch size from ``_train_batch_size`` (which the streamed dataloader of several processes reads)."""
    sampler = _Recorded(6)

    class Sampled(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return sampler

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=3,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Sampled(model=torch.nn.Linear(1, 1), args=args, train_dataset=_Rows(), data_collator=_stack)
    assert trainer._train_batch_size == args.train_batch_size == 3
    batches = [b["x"].flatten().tolist() for b in trainer.get_train_dataloader()]
    assert sampler.iterated and batches == [[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]]


def _stack(rows: list[dict]) -> dict:
    return {"x": torch.stack([r["x"] for r in rows])}


def test_accelerate_api_of_the_distributed_helpers():
    """``rows_kept`` reads ``Accelerator.gradient_state`` (``end_of_dataloader``, ``remainder``);
    ``node_split_dataloader`` passes ``non_blocking`` and these keywords to ``prepare_data_loader``."""
    from accelerate import Accelerator
    from accelerate.data_loader import prepare_data_loader
    from accelerate.state import GradientState

    from geohf.training.distributed import rows_kept

    accelerator = Accelerator(cpu=True)
    assert isinstance(accelerator.gradient_state, GradientState)
    assert isinstance(accelerator.non_blocking, bool)
    state = accelerator.gradient_state
    assert state.end_of_dataloader is False and state.remainder == -1  # outside a dataloader: every row counts
    assert rows_kept(accelerator, 5) == 5
    keywords = set(inspect.signature(prepare_data_loader).parameters)
    assert {"num_processes", "process_index", "put_on_device", "dispatch_batches", "non_blocking"} <= keywords


def test_node_split_streams_are_recognised():
    """``is_node_split`` reads ``_distributed``, which ``split_dataset_by_node`` sets on an IterableDataset."""
    from datasets import Dataset

    from geohf.training.distributed import is_node_split, split_stream_by_node

    stream = Dataset.from_dict({"x": list(range(8))}).to_iterable_dataset(num_shards=2)
    assert not is_node_split(stream)
    mine = split_stream_by_node(stream, rank=1, world_size=2)
    assert is_node_split(mine) and [r["x"] for r in mine] == [4, 5, 6, 7]
    assert split_stream_by_node(mine, rank=1, world_size=2) is mine


def test_partial_checkpoints_removed_complete_ones_kept(tmp_path):
    old = tmp_path / "checkpoint-1"  # from an earlier run, unfinished: not this run's to remove
    old.mkdir()
    before = checkpoint_folders(tmp_path)
    done, partial, trial = tmp_path / "checkpoint-2", tmp_path / "checkpoint-3", tmp_path / "run-0" / "checkpoint-1"
    for folder in (done, partial, trial):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"part")
    (done / "trainer_state.json").write_text("{}")
    assert remove_partial_checkpoints(tmp_path, before) == [partial, trial]
    assert old.is_dir() and done.is_dir() and not partial.exists() and not trial.exists()


@pytest.mark.slow
def test_a_failed_checkpoint_save_is_removed(tiny_dataset, tiny_model_dir, tmp_path, training_args):
    """Trainer writes ``trainer_state.json`` after the weights: a save failing part-way (a full disk) leaves a
    folder without it, which GeoTrainer.train removes; the complete checkpoint before it stays."""
    from datasets import load_dataset

    from geohf.modeling import GeoModelForImageGeolocation
    from geohf.training.trainer import GeoTrainer

    class DiskFull(GeoTrainer):
        def save_model(self, output_dir=None, _internal_call=False):
            super().save_model(output_dir, _internal_call)
            if _internal_call and self.state.global_step == 2:
                raise OSError(28, "No space left on device")

    train = load_dataset(str(tiny_dataset), split="train")
    model = GeoModelForImageGeolocation.from_pretrained(tiny_model_dir)
    args = training_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    with pytest.raises(OSError, match="No space left"):
        DiskFull(model=model, args=args, train_dataset=train).train()
    assert sorted(p.name for p in checkpoint_folders(tmp_path)) == ["checkpoint-1"]
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()
