"""Hub-ready dataset folders: Parquet shards with embedded images, a card, side files.

A folder is written under a temporary name next to its destination and renamed into
place only when every shard, the card and the side files are complete, so a killed
build never leaves a folder that looks finished. Rows stream through a fixed-size
buffer: memory does not grow with the number of images.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # (a block writer imports this module: datasets, which it does not need, costs it 0.6 s)
    from datasets import DatasetDict, Features

DATA_DIR = "data"
BATCH_BYTES = 256 << 20
"""A batch is written once its images reach this many bytes (an Arrow binary array holds at most 2 GiB, and
the buffer is the build's memory), or at ``batch_rows`` rows."""


@dataclass
class SplitInfo:
    name: str
    num_examples: int = 0
    num_bytes: int = 0
    shards: list[str] = field(default_factory=list)


class ShardWriter:
    """Writes the rows of one split into ``data/<split>-<tag>XXXXX-of-YYYYY.parquet`` shards.

    ``tag``: set by a sharded build (``shard00002of00016-``) so that the files of all its shards
    can lie in one folder without colliding.
    """

    def __init__(
        self, root: Path, split: str, features: Features, rows_per_shard: int, batch_rows: int = 256, tag: str = ""
    ):
        self.root, self.split, self.features, self.tag = root, split, features, tag
        self.schema = features.arrow_schema
        self.rows_per_shard, self.batch_rows = rows_per_shard, batch_rows
        self.info = SplitInfo(split)
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._buffer: list[dict] = []
        self._buffered_bytes = 0

    def _open(self) -> None:
        path = self.root / DATA_DIR / f"{self.split}-{self.tag}{len(self.info.shards):05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        small = _non_binary_columns(self.schema)
        # no dictionary or min/max statistics for image bytes: unique, incompressible blobs that
        # pyarrow would hash and compare for nothing (most of the write time); other columns keep both
        self._writer = pq.ParquetWriter(path, self.schema, use_dictionary=small, write_statistics=small)
        self.info.shards.append(path.name)
        self._in_shard = 0

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        batch = pa.RecordBatch.from_pylist(self._buffer, schema=self.schema)
        self._writer.write_batch(batch)
        self.info.num_bytes += batch.nbytes
        self._buffer = []
        self._buffered_bytes = 0

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        self._buffered_bytes += _blob_bytes(row)
        self._in_shard += 1
        self.info.num_examples += 1
        if len(self._buffer) >= self.batch_rows or self._buffered_bytes >= BATCH_BYTES:
            self._flush()
        if self._in_shard >= self.rows_per_shard:
            self._flush()
            self._writer.close()
            self._writer = None

    def close(self) -> SplitInfo:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        n = len(self.info.shards)
        renamed = []
        for i, name in enumerate(self.info.shards):
            new = f"{self.split}-{self.tag}{i:05d}-of-{n:05d}.parquet"
            os.replace(self.root / DATA_DIR / name, self.root / DATA_DIR / new)
            renamed.append(new)
        self.info.shards = renamed
        return self.info


def _blob_bytes(row: dict) -> int:
    """The encoded image bytes a row holds (``{"bytes": ...}`` values)."""
    return sum(len(v["bytes"]) for v in row.values() if isinstance(v, dict) and isinstance(v.get("bytes"), bytes))


def _non_binary_columns(schema: pa.Schema) -> list[str]:
    """Dotted paths of the leaf columns that are not binary (``image.path`` but not ``image.bytes``)."""

    def leaves(field: pa.Field, prefix: str):
        name = f"{prefix}{field.name}"
        if pa.types.is_struct(field.type):
            for child in field.type:
                yield from leaves(child, f"{name}.")
        elif not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            yield name

    return [leaf for field in schema for leaf in leaves(field, "")]


@contextmanager
def atomic_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder that replaces ``output_dir`` only if the block succeeds."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.parent.glob(f".{output_dir.name}.partial-*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = output_dir.parent / f".{output_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output_dir.exists():
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output_dir)


def write_splits(
    root: Path,
    splits: dict[str, Iterable[dict]],
    features: Features,
    rows_per_shard: int = 5000,
    tag: str = "",
) -> dict[str, SplitInfo]:
    """Stream each split's rows (already encoded for ``features``) into Parquet shards."""
    infos = {}
    for split, rows in splits.items():
        writer = ShardWriter(root, split, features, rows_per_shard, tag=tag)
        for row in rows:
            writer.write(row)
        infos[split] = writer.close()
    return infos


def yaml_metadata(features: Features, infos: dict[str, SplitInfo]) -> dict:
    """``configs`` and ``dataset_info`` YAML for the card, so the Hub and ``load_dataset`` find the shards."""
    return {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in infos],
            }
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": i.num_bytes, "num_examples": i.num_examples} for s, i in infos.items()],
        },
    }


def write_dataset_folder(
    output_dir: str | os.PathLike,
    splits: dict[str, Iterable[dict]],
    features: Features,
    make_card: Callable[[Path, dict[str, SplitInfo]], str],
    side_files: Callable[[Path], None] | None = None,
    rows_per_shard: int = 5000,
    overwrite: bool = False,
    tag: str = "",
) -> dict[str, SplitInfo]:
    """Write a complete dataset folder atomically.

    Args:
        splits: rows per split, each row a dict matching ``features`` (images as
            ``{"bytes": ..., "path": ...}``). Generators are consumed lazily.
        make_card: called with the temporary folder and split infos, returns README.md text.
        side_files: writes extra files (cell partitions, maps) into the temporary folder.
        tag: put into every Parquet file name (see :class:`ShardWriter`).
    """
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        infos = write_splits(tmp, splits, features, rows_per_shard, tag)
        if side_files is not None:
            side_files(tmp)
        (tmp / "README.md").write_text(make_card(tmp, infos), encoding="utf-8")
    return infos


def load_geo_dataset(name: str, revision: str | None = None) -> DatasetDict:
    """A dataset folder or Hub dataset repo as a DatasetDict."""
    from datasets import load_dataset

    if Path(name).is_dir():
        return load_dataset(str(name))
    return load_dataset(name, revision=revision)
