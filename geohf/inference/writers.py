"""Where ``geohf predict``'s records go: JSON lines, CSV or Parquet, streamed through a hidden temporary file
beside the output that is synced and renamed into place at the end: a run that fails (a full disk) or is
killed never leaves a half-written output, and a previous output stays whole until the new one replaces it."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..files import temp_path
from .names import FORMATS

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PREDICTION_COLUMNS = [
    "pred_latitude",
    "pred_longitude",
    "pred_country_code",
    "pred_country",
    "pred_region_code",
    "pred_region",
    "score",
    "country_score",
    "radius_km",
]
TRUTH_COLUMNS = ["true_latitude", "true_longitude", "exif_latitude", "exif_longitude", "error_km"]


def output_format(path: str | os.PathLike | None, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else from the file suffix (JSON lines by default)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use one of {FORMATS}")
        return fmt
    return SUFFIX_FORMATS.get(Path(str(path)).suffix.lower(), "jsonl") if path not in (None, "-") else "jsonl"


def output_columns(grouped: bool, exif_copies: bool) -> list[str]:
    """The fixed columns of CSV and Parquet outputs."""
    names = ["location_id", "files"] if grouped else ["file"]
    return names + PREDICTION_COLUMNS + TRUTH_COLUMNS + (["exif_copy"] if exif_copies else []) + ["top_k"]


class RecordWriter:
    """Streams records to ``path`` (``"-"``: stdout) through a temporary file (:func:`geohf.files.temp_path`:
    hidden, unique) synced and renamed on :meth:`close`.

    Use as a context manager: on an exception, in :meth:`write` or in :meth:`close` itself (a full disk
    fails the last flush), the temporary file is removed, so a failed run never leaves a half-written output
    behind (one killed with SIGKILL leaves only the hidden file, which the next writer of ``path`` removes:
    :func:`geohf.files.exclusive_output`).
    """

    binary = False

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.columns, self.count = columns, 0
        self.path = None if str(path) == "-" else Path(path)
        if self.path is None:
            if self.binary:
                raise ValueError("Parquet cannot go to stdout; pass --output FILE.parquet")
            self.tmp, self.stream = None, sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = temp_path(self.path)
            mode = {"mode": "wb"} if self.binary else {"mode": "w", "encoding": "utf-8", "newline": ""}
            self.stream = open(self.tmp, **mode)  # noqa: SIM115 - closed by close() / abort()
        self.open()

    def open(self) -> None:
        """Write a header, if the format has one."""

    def write(self, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush what is buffered."""

    def seal(self) -> None:
        """Write the format's end (a footer), if it has one."""

    def close(self) -> None:
        """Finish the output: written, synced, renamed into place (on any failure, :meth:`abort`)."""
        try:
            self.finish()
            self.seal()
            self.stream.flush()
            if self.tmp is not None:
                os.fsync(self.stream.fileno())
                self.stream.close()
                os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (closing it may fail again on a full disk: that is not reported twice)."""
        if self.tmp is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class JsonlWriter(RecordWriter):
    """One JSON object per line; ground-truth keys only where known."""

    def write(self, records):
        for r in records:
            self.stream.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.count += len(records)


class CsvWriter(RecordWriter):
    """Fixed columns; lists (``top_k``, ``files``) as JSON strings, unknown values empty."""

    def open(self):
        self.writer = csv.DictWriter(self.stream, self.columns, restval="", extrasaction="raise")
        self.writer.writeheader()

    def write(self, records):
        for r in records:
            self.writer.writerow(
                {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
            )
        self.count += len(records)


def parquet_schema(columns: list[str]):
    """Arrow types of the output columns (``top_k``: a list of structs)."""
    import pyarrow as pa

    top = pa.struct(
        [("label", pa.string()), ("score", pa.float64()), ("latitude", pa.float64()), ("longitude", pa.float64())]
    )
    types = {"files": pa.list_(pa.string()), "top_k": pa.list_(top)}
    strings = {
        "file",
        "location_id",
        "pred_country_code",
        "pred_country",
        "pred_region_code",
        "pred_region",
        "exif_copy",
    }
    return pa.schema([(c, types.get(c, pa.string() if c in strings else pa.float64())) for c in columns])


class ParquetWriter(RecordWriter):
    """Row groups of ``rows_per_group`` records with a fixed schema."""

    binary = True
    rows_per_group = 4096

    def open(self):
        import pyarrow.parquet as pq

        self.schema = parquet_schema(self.columns)
        self.writer = pq.ParquetWriter(self.stream, self.schema)
        self.buffer: list[dict] = []

    def write(self, records):
        self.buffer.extend(records)
        self.count += len(records)
        if len(self.buffer) >= self.rows_per_group:
            self.finish()

    def finish(self):
        import pyarrow as pa

        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def seal(self):
        self.writer.close()

    def abort(self):
        try:
            with contextlib.suppress(Exception):  # the footer cannot be written: the file goes anyway
                self.writer.close()
        finally:
            super().abort()


WRITERS = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}


def open_writer(path: str | os.PathLike, fmt: str, columns: list[str]) -> RecordWriter:
    return WRITERS[fmt](path, columns)
