"""``geohf predict``: image files → one JSON object per image."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .images import ImageLoadError, open_image
from .predictor import GeoPredictor


@dataclass
class PredictionRun:
    """Predictions for the images that could be read, and an error per image that could not."""

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list)


def _batches(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for p in paths:
        batch.append(p)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(
    predictor: GeoPredictor,
    paths: list[str | os.PathLike],
    batch_size: int = 32,
    output: str | os.PathLike | None = None,
    on_error=None,
) -> PredictionRun:
    """Predict every readable image; unreadable ones are reported through ``on_error`` and kept in ``errors``.

    With ``output``, records are written as JSON lines to a temporary file renamed into
    place at the end.
    """
    run = PredictionRun()
    paths = [str(p) for p in paths]
    for batch in tqdm(
        list(_batches(paths, batch_size)),
        desc="predicting",
        unit="batch",
        leave=False,
        disable=len(paths) <= batch_size,
    ):
        images, names = [], []
        for path in batch:
            try:
                images.append(open_image(path))
                names.append(path)
            except ImageLoadError as err:
                run.errors.append(err)
                if on_error is not None:
                    on_error(err)
        if images:
            for name, record in zip(names, predictor.predict_images(images)):
                run.records.append({"file": name, **record})
    if output is not None:
        write_jsonl(run.records, output)
    return run


def write_jsonl(records: list[dict], path: str | os.PathLike) -> None:
    """Write JSON lines atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def print_error(err: ImageLoadError) -> None:
    print(f"error: {err}", file=sys.stderr)
