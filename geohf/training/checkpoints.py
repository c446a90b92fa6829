"""Trainer's checkpoint folders, and removing the ones a failed save left part-written."""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


def checkpoint_folders(output_dir: str | Path) -> set[Path]:
    """The checkpoint folders in ``output_dir`` and in its run folders (a hyperparameter search's trials)."""
    root, pattern = Path(output_dir), f"{PREFIX_CHECKPOINT_DIR}-*"
    return {p for p in (*root.glob(pattern), *root.glob(f"*/{pattern}")) if p.is_dir()}


def remove_partial_checkpoints(output_dir: str | Path, before: set[Path]) -> list[Path]:
    """Remove the checkpoint folders made since ``before`` that Trainer did not finish, and return them.

    Trainer writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states (only the push and
    the rotation of old checkpoints come later), so a save that failed part-way (a full disk) left a folder
    without it, which a resume must not pick."""
    partial = sorted(p for p in checkpoint_folders(output_dir) - before if not (p / TRAINER_STATE_NAME).is_file())
    for folder in partial:
        shutil.rmtree(folder, ignore_errors=True)
    return partial
