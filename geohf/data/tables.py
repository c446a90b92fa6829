"""Metadata tables and files (CSV / TSV / JSONL / Parquet, per-image JSON) read within limits.

A table over :data:`MAX_TABLE_BYTES` is refused whole (one line); a CSV / JSONL line over
:data:`MAX_ROW_BYTES` is left out unread and listed in ``skipped.csv`` (the rest of the table
is read); a per-image JSON file over :data:`MAX_JSON_BYTES` is refused unread.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import UserError, one_line
from .skips import SkipLog

MAX_TABLE_BYTES = 8 << 30
"""The largest metadata table read (OSV-5M's train.csv, the largest the field ships, is ~2 GB)."""
MAX_ROW_BYTES = 1 << 20
"""The longest CSV / JSONL line read (a row of OSV-5M's or MP-16's tables is under 1 kB)."""
MAX_JSON_BYTES = 1 << 20
"""The largest per-image JSON file or member read (lost-and-found's and OSV-5M's are ~1 kB)."""
STAGE = "table"
SCAN_BLOCK = 1 << 24
HASH_ROWS = 1 << 14
"""Rows hashed at once, by :func:`repeated` and a plan's fingerprint (hashing a string column copies its slice)."""
READ_ROWS = 1 << 16
"""Rows of a CSV / TSV parsed at once (then each Arrow-backed column is made one array: :func:`join_chunks`)."""


def long_lines(path: str | os.PathLike, limit: int = MAX_ROW_BYTES) -> list[tuple[int, int]]:
    """``(line index from 0, length in bytes)`` of every line of ``path`` longer than ``limit`` bytes, found
    block by block (memory: one block, whatever the file holds)."""
    out: list[tuple[int, int]] = []
    line, start, pos = 0, 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(SCAN_BLOCK):
            ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + pos
            if len(ends):
                lengths = ends - np.concatenate(([start], ends[:-1] + 1))
                out.extend((line + int(i), int(lengths[i])) for i in np.flatnonzero(lengths > limit))
                line += len(ends)
                start = int(ends[-1]) + 1
            pos += len(chunk)
    if pos - start > limit:
        out.append((line, pos - start))
    return out


def check_size(path: Path, limit: int, what: str) -> int:
    """``path``'s size; :class:`UserError` (one line naming the file) beyond ``limit`` bytes."""
    size = path.stat().st_size
    if size > limit:
        raise UserError(f"{path}: {size:,} bytes, over the {limit:,}-byte limit for {what}; split or fix it")
    return size


def read_table(path: str | os.PathLike, log: SkipLog | None = None, dtype=str) -> pd.DataFrame:
    """A CSV / TSV / JSONL / Parquet table within the limits (``dtype`` as pandas takes it; ``str`` keeps ids'
    digits and reads empty cells as ""). Lines over :data:`MAX_ROW_BYTES` are listed in ``log`` and left out
    (without a ``log``: refused); a header line over it, a table over :data:`MAX_TABLE_BYTES` or a file pandas
    cannot read: :class:`UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such table file")
    check_size(path, MAX_TABLE_BYTES, "a metadata table")
    text = path.suffix in (".csv", ".tsv", ".jsonl")
    long = long_lines(path) if text else []
    if long and (log is None or (long[0][0] == 0 and path.suffix != ".jsonl")):
        raise UserError(
            f"{path}: line {long[0][0] + 1} is {long[0][1]:,} bytes, over the {MAX_ROW_BYTES:,}-byte limit for one "
            "row; fix the file"
        )
    skipped = [index for index, _ in long]
    for index, length in long:
        log.skip(STAGE, f"{path.name} line {index + 1}", f"row longer than {MAX_ROW_BYTES:,} bytes ({length:,}): "
                 "left out unread; fix the file")  # fmt: skip
    try:
        if path.suffix in (".csv", ".tsv"):
            na = {"keep_default_na": False} if dtype is str else {}
            sep = "\t" if path.suffix == ".tsv" else ","
            chunks = pd.read_csv(path, sep=sep, dtype=dtype, skiprows=skipped or None, chunksize=READ_ROWS, **na)
            frame = pd.concat(list(chunks), ignore_index=True)  # the parser's buffers are a chunk's, not the file's
            join_chunks(frame)
        elif path.suffix == ".jsonl":
            source = _without_lines(path, set(skipped)) if skipped else path
            frame = pd.read_json(source, lines=True, dtype=False if dtype is str else dtype)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    except Exception as err:  # noqa: BLE001 - pandas' and pyarrow's parsers raise many types: one line naming the file
        raise UserError(f"{path} could not be read as a table ({one_line(err)}); fix or re-export it") from err
    frame.attrs["skipped_lines"] = [index + 1 for index in skipped]
    return frame


def source_lines(frame: pd.DataFrame, first: int) -> np.ndarray:
    """The file line (from 1) of each row of a table :func:`read_table` read, ``first`` being the first row's
    when no line was left out (2 under a CSV header, 1 in JSONL): rows after a long line keep their numbers."""
    skipped = np.asarray(frame.attrs.get("skipped_lines", ()), dtype=np.int64)
    lines = np.arange(first, first + len(frame) + len(skipped), dtype=np.int64)
    return lines[~np.isin(lines, skipped)][: len(frame)]


def string_column(values: Iterable[str], size: int) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """``size`` strings made one at a time into a column (set by position) of pandas' default string dtype: with
    pandas' Arrow-backed ``str`` (pandas 3) straight into Arrow, so no Python string is kept per row; an object
    array otherwise."""
    dtype = pd.Series(["a"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return pd.array(pa.array(values, type=pa.large_string(), size=size), dtype=dtype)
    return np.fromiter(values, object, size)


def empty_like(frame: pd.DataFrame) -> pd.DataFrame:
    """A table with ``frame``'s columns and dtypes and no rows, holding none of its buffers (a slice such as
    ``frame.iloc[:0]`` is a copy-on-write view that keeps every column's buffers alive)."""
    return pd.DataFrame({c: pd.Series([], dtype=frame[c].dtype) for c in frame})


def join_chunks(frame: pd.DataFrame) -> None:
    """Join each Arrow-backed column's chunks into one array, in place, a column at a time (one column's copy
    at once); other columns are left as they are.

    Taking rows by position from a chunked Arrow column joins all its chunks first, a copy of the whole column
    per take; a plan takes a block of rows at a time."""
    for col in frame:
        dtype = frame[col].dtype
        if isinstance(dtype, pd.StringDtype | pd.ArrowDtype) and dtype.storage == "pyarrow":
            chunks = pa.array(frame[col].array)
            if isinstance(chunks, pa.ChunkedArray) and chunks.num_chunks > 1:
                frame[col] = pd.array(chunks.combine_chunks(), dtype=dtype)


def repeated(values: pd.Series, rows: int = HASH_ROWS) -> np.ndarray:
    """True where a value (a string) was already on an earlier row: what ``values.duplicated()`` gives, found on
    64-bit hashes made ``rows`` at a time and sorted, the few equal hashes then compared as strings (pandas' own
    hash table of a string column held a Python string per row)."""
    n = len(values)
    hashes = np.empty(n, dtype=np.uint64)
    for start in range(0, n, rows):
        hashes[start : start + rows] = pd.util.hash_pandas_object(values.iloc[start : start + rows], index=False)
    order = np.argsort(hashes, kind="stable")  # equal hashes together, each run in row order
    ranked = hashes[order]
    del hashes
    same = np.r_[False, ranked[1:] == ranked[:-1], False]  # same[k]: sorted rows k - 1 and k share a hash
    del ranked
    out = np.zeros(n, dtype=bool)
    for first, last in zip(np.flatnonzero(~same[:-1] & same[1:]), np.flatnonzero(same[:-1] & ~same[1:])):
        seen: set = set()  # a run of equal hashes: the rows whose string an earlier row of the run has
        for i in order[first : last + 1]:
            value = values.iat[i]
            out[i] = value in seen
            seen.add(value)
    return out


def _without_lines(path: Path, skip: set[int]) -> io.StringIO:
    """The text of ``path`` without the lines in ``skip`` (their bytes are passed over, never decoded)."""
    kept = io.StringIO()
    with open(path, "rb") as f:
        for i, line in enumerate(iter(lambda: f.readline(MAX_ROW_BYTES + 2), b"")):
            if i in skip:
                while line and not line.endswith(b"\n"):  # the rest of a long line
                    line = f.readline(MAX_ROW_BYTES + 2)
                continue
            kept.write(line.decode("utf-8"))
    kept.seek(0)
    return kept
