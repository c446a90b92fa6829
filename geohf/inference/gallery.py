"""The gallery of a retrieval index on disk: float16 embedding shards, written as batches arrive.

A gallery is a folder of shards ``gallery-00000.safetensors``, ``gallery-00001.safetensors``, ... of
:data:`SHARD_ROWS` rows each (the last one fewer). A shard holds, for its rows, ``embeddings`` (R, D)
float16 (L2-normalised), ``latitude`` and ``longitude`` (R,) float64 and ``cell`` (R,) int64: the keys of
the single ``gallery.safetensors`` that indexes written before shards hold, which reads as a one-shard
gallery.

:class:`GalleryWriter` takes :class:`GalleryBatch` es from any engine (``GeoPredictor.iter_dataset``, a Ray
stage) and keeps one shard in memory at a time; :class:`GalleryVectors` memory-maps the shards' embeddings
for search (nothing is read until a row is).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

SHARD_ROWS = 65_536
"""Rows per shard: 64 MiB of float16 at 512-d, the memory the writer holds."""
SHARD_PATTERN = "gallery-{:05d}.safetensors"
LEGACY_GALLERY = "gallery.safetensors"
"""The one gallery file of an index written before shards (read as one shard)."""
_KEYS = ("embeddings", "latitude", "longitude", "cell")


@dataclass
class GalleryBatch:
    """Rows for the gallery: embeddings (B, D) (any float dtype, normalised by the writer), coordinates in
    degrees (B,), and the primary head's class of each row (B,)."""

    embeddings: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    cell: np.ndarray

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (a zero row stays zero), as ``torch.nn.functional.normalize`` gives."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def write_shard(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """One shard file, flushed to disk (a module function, so that tests can make the disk full)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class GalleryWriter:
    """Streams gallery rows into shards in ``folder`` (created; it must not exist): :meth:`add` batches in
    row order, then :meth:`close` for the shard names. Memory: one shard's rows, whatever the gallery's size.
    The embeddings are L2-normalised (``normalise=False``: stored as given, for rows that already are).

    Used as a context manager, an exception (or a full disk) removes ``folder``: nothing half-written stays.
    """

    def __init__(self, folder: str | os.PathLike, shard_rows: int = SHARD_ROWS, normalise: bool = True):
        if shard_rows < 1:
            raise ValueError("shard_rows must be at least 1")
        self.normalise = normalise
        self.folder = Path(folder)
        self.folder.mkdir(parents=True)
        self.shard_rows = shard_rows
        self.shards: list[str] = []
        self.rows = 0
        self.dim: int | None = None
        self._buffer: dict[str, np.ndarray] | None = None
        self._filled = 0

    def __enter__(self) -> GalleryWriter:
        return self

    def __exit__(self, kind, err, tb) -> None:
        if err is not None:
            self.abort()

    def add(self, batch: GalleryBatch) -> None:
        n = len(batch)
        if not (len(batch.latitude) == len(batch.longitude) == len(batch.cell) == n):
            raise ValueError(f"a gallery batch of {n} embeddings has {len(batch.latitude)} coordinates")
        if self.dim is None:
            self.dim = int(batch.embeddings.shape[1])
            self._buffer = {
                "embeddings": np.empty((self.shard_rows, self.dim), np.float16),
                "latitude": np.empty(self.shard_rows, np.float64),
                "longitude": np.empty(self.shard_rows, np.float64),
                "cell": np.empty(self.shard_rows, np.int64),
            }
        elif batch.embeddings.shape[1] != self.dim:
            raise ValueError(f"a batch of {batch.embeddings.shape[1]}-d embeddings in a {self.dim}-d gallery")
        values = {
            "embeddings": normalise_rows(batch.embeddings) if self.normalise else np.asarray(batch.embeddings),
            "latitude": np.asarray(batch.latitude),
            "longitude": np.asarray(batch.longitude),
            "cell": np.asarray(batch.cell),
        }
        done = 0
        while done < n:
            take = min(n - done, self.shard_rows - self._filled)
            for key in _KEYS:
                self._buffer[key][self._filled : self._filled + take] = values[key][done : done + take]
            self._filled += take
            done += take
            if self._filled == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        name = SHARD_PATTERN.format(len(self.shards))
        path = self.folder / name
        tensors = {k: np.ascontiguousarray(v[: self._filled]) for k, v in self._buffer.items()}
        try:
            write_shard(path, tensors)
        except OSError as err:
            if disk_full(err):
                raise UserError(
                    f"{path}: no space left on the device after {self.rows:,} gallery rows; free space and run "
                    "geohf index build again"
                ) from None
            raise
        self.shards.append(name)
        self.rows += self._filled
        self._filled = 0

    def close(self) -> list[str]:
        """Write the last shard; the shard names in row order."""
        if self._filled:
            self._flush()
        self._buffer = None
        if not self.rows:
            raise UserError("nothing to index: the gallery has no rows")
        return self.shards

    def abort(self) -> None:
        self._buffer = None
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int  # bytes from the file's start


_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of a safetensors file (8 bytes of header length, a JSON header, then the data)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise ValueError("not a safetensors file")
        header = json.loads(f.read(size))
    start = 8 + size
    entries = {}
    for key, value in header.items():
        if key == "__metadata__":
            continue
        begin, end = value["data_offsets"]
        entries[key] = TensorEntry(value["dtype"], tuple(value["shape"]), start + begin)
        if end - begin != int(np.prod(value["shape"])) * np.dtype(_DTYPES.get(value["dtype"], np.uint8)).itemsize:
            raise ValueError(f"tensor {key!r}: its size does not match its shape")
    if os.path.getsize(path) < start + max((v["data_offsets"][1] for v in header.values() if "data_offsets" in v),
                                           default=0):  # fmt: skip
        raise ValueError("truncated")
    return entries


def memmap(path: Path, entry: TensorEntry) -> np.ndarray:
    """A read-only memory map of one tensor of a safetensors file."""
    if entry.dtype not in _DTYPES:
        raise ValueError(f"unexpected dtype {entry.dtype}")
    if 0 in entry.shape:
        return np.empty(entry.shape, _DTYPES[entry.dtype])
    return np.memmap(path, dtype=_DTYPES[entry.dtype], mode="r", offset=entry.offset, shape=entry.shape)


class GalleryVectors:
    """The gallery's float16 embeddings, memory-mapped from its shards, in row order."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dim = int(shards[0].shape[1])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def chunks(self, size: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float16 rows)`` over the whole gallery, ``size`` rows at most each."""
        for shard, start in zip(self.shards, self.starts):
            for i in range(0, len(shard), size):
                yield int(start + i), shard[i : i + size]

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float32 rows ``index`` (any shape of row numbers, all valid); the result has that shape + (D,)."""
        flat = np.asarray(index, dtype=np.int64).ravel()
        out = np.empty((flat.size, self.dim), np.float32)
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            local = flat[where] - self.starts[s]
            order = np.argsort(local, kind="stable")  # sorted reads: the pages of a shard in file order
            out[where[order]] = self.shards[s][local[order]]
        return out.reshape(*np.shape(index), self.dim)

    def release(self, shard: int | None = None) -> None:
        """Drop the pages of one shard (or all) from this process's memory (the system keeps them cached):
        a build that reads every shard once keeps its resident memory flat."""
        import mmap

        for s in range(len(self.shards)) if shard is None else [shard]:
            mapping = getattr(self.shards[s], "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` distinct rows chosen at random (seeded), float32, in row order; read shard by shard,
        each released after (a random row maps the pages around it too)."""
        n = len(self)
        picked = np.sort(np.random.default_rng(seed).choice(n, size=min(n, count), replace=False))
        out = np.empty((len(picked), self.dim), np.float32)
        bounds = np.searchsorted(picked, self.starts)
        for s, shard in enumerate(self.shards):
            rows = slice(bounds[s], bounds[s + 1])
            out[rows] = shard[picked[rows] - self.starts[s]]
            self.release(s)
        return out


def open_vectors(folder: Path, shards: list[str]) -> GalleryVectors:
    """The embeddings of a gallery's shards, memory-mapped."""
    return GalleryVectors([memmap(folder / name, read_header(folder / name)["embeddings"]) for name in shards])
