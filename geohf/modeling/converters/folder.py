"""Writing a converted model: the whole folder, or nothing."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ...errors import UserError
from ..image_processing_geohf import GeoImageProcessor


def check_output(output: str | os.PathLike, overwrite: bool) -> Path:
    """``output`` as a path, or a :class:`UserError` when it exists (without ``overwrite``) or is a file."""
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise UserError(f"{output}: already exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: a file, not a model folder; choose another output")
    return output


def write_model_folder(model, output: Path) -> None:
    """Weights, config and preprocessing of ``model`` to the folder ``output``: written beside it under a hidden
    name and renamed into place once complete (an existing ``output`` is replaced only then)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    stage, old = output.parent / f".{output.name}.partial-{tag}", output.parent / f".{output.name}.old-{tag}"
    try:
        model.save_pretrained(stage)
        GeoImageProcessor.from_config(model.config).save_pretrained(stage)
        if output.exists():
            os.replace(output, old)
            try:
                os.replace(stage, output)
            except OSError:
                os.replace(old, output)
                raise
        else:
            os.replace(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
