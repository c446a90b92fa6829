"""A build plan: every decision of a dataset build made once on a slim table, then executed by any engine.

The plan holds one row per image to write (its output columns: coordinates, labels, split, geocells,
the source's columns, and where its bytes are), in the order they are written, cut into blocks: block
``b`` of split ``s`` becomes ``data/<s>-<b>-of-<n>.parquet``. Executing a block reads each of its images
once (check, shrink, encode) and writes its file; the images the check rejects come back as skips. Blocks
are independent and writing one again gives the same file, so an engine may retry, reorder or spread them
over machines (:mod:`geohf.data.execute`).

Saved as ``plan.parquet`` (one row group per block) + ``plan.json`` + ``cells/`` in a folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..geo.cells import CellPartition, position_dtype
from ..hub.cards import DatasetCardFields
from .blocks import PLAN_ROWS, Block, ImageRead
from .report import LabellingStats
from .skips import Skip, SkipLog
from .tables import HASH_ROWS, join_chunks

if TYPE_CHECKING:
    from datasets import Features

PLAN_JSON = "plan.json"
CELLS_DIR = "cells"
SPLIT_ORDER = ("train", "validation", "test")
FILES_MULTIPLE = 8
"""A split of more than one file gets a multiple of this many, so ``split_dataset_by_node`` splits it by file
on 1, 2, 4 or 8 nodes."""
REF_COLUMNS = ("_ref_path", "_ref_offset", "_ref_size", "_ref_method", "_ref_name", "_ref_declared", "_ref_crc")


def stable_order(codes: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """``np.argsort(codes, kind="stable")`` of a few small integer codes, as int32 (int64 past 2**31 rows), made
    ``rows`` codes at a time: no int64 copy of every position."""
    out = np.empty(len(codes), dtype=position_dtype(len(codes)))
    if not len(codes):
        return out
    groups = np.arange(int(codes.min()), int(codes.max()) + 1)
    fill = np.cumsum([0] + [np.count_nonzero(codes == g) for g in groups[:-1]])  # where each code's rows go
    for start in range(0, len(codes), rows):
        part = codes[start : start + rows]
        for k, g in enumerate(groups):
            found = np.flatnonzero(part == g)
            out[fill[k] : fill[k] + len(found)] = found + start
            fill[k] += len(found)
    return out


@dataclass
class BuildPlan:
    """Everything decided before the images are read (see the module docstring).

    ``rows``: one row per image; ``order``: their positions in write order (``None``: ``rows`` is in write order,
    as a loaded plan's is); ``processing`` / ``labelling``: the counts so far (the image check adds its skips);
    ``skips``: the inputs left out so far.
    """

    rows: pd.DataFrame
    features: Features
    partitions: dict[str, CellPartition]
    read: ImageRead
    card: DatasetCardFields
    processing: dict[str, int] = field(default_factory=dict)
    labelling: LabellingStats = field(default_factory=LabellingStats)
    skips: SkipLog = field(default_factory=SkipLog)
    blocks: list[Block] = field(default_factory=list)
    plan_id: str = ""
    order: np.ndarray | None = None

    @classmethod
    def make(
        cls,
        rows: pd.DataFrame,
        features: Features,
        partitions: dict[str, CellPartition],
        read: ImageRead,
        card: DatasetCardFields,
        processing: dict[str, int],
        labelling: LabellingStats,
        skips: SkipLog,
        rows_per_file: int = 5000,
    ) -> BuildPlan:
        """Order the rows by split (train, validation, test; each split in the given order) and cut the blocks.

        The order is kept as positions (:attr:`order`): the rows are never copied into it; each block is taken
        from them when the plan is saved."""
        keep = [c for c in features if c != "image"] + ["split", "label_match"] + [c for c in rows if c.startswith("_")]
        rows = rows[[c for c in dict.fromkeys(keep) if c in rows]]
        join_chunks(rows)  # each block is taken from the columns by position
        codes = pd.Categorical(rows["split"], categories=list(SPLIT_ORDER)).codes
        order = stable_order(codes)
        sizes = np.bincount(codes[codes >= 0], minlength=len(SPLIT_ORDER))
        del codes
        blocks: list[Block] = []
        start = 0
        for split, n in zip(SPLIT_ORDER, sizes.tolist()):
            if not n:
                continue
            count = file_count(n, rows_per_file)
            bounds = [start + (n * k) // count for k in range(count + 1)]
            blocks += [Block(split, k, count, bounds[k], bounds[k + 1]) for k in range(count)]
            start += n
        plan = cls(rows, features, partitions, read, card, processing, labelling, skips, blocks, order=order)
        plan.plan_id = plan.fingerprint()
        return plan

    def take(self, start: int, stop: int, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows ``start:stop`` in write order (of ``columns``, default all), renumbered from 0."""
        rows = self.rows if columns is None else self.rows[columns]
        if self.order is None:
            return rows.iloc[start:stop].reset_index(drop=True)
        return rows.iloc[self.order[start:stop]].reset_index(drop=True)

    def fingerprint(self) -> str:
        """Hash of the rows and settings: two parts of one build agree on it, parts of two builds do not."""
        h = hashlib.sha256(json.dumps(self._meta(), sort_keys=True, default=str).encode())
        for column in self.rows:  # a column at a time, in slices: no second copy of the table, even of a column
            if column not in REF_COLUMNS:
                h.update(column.encode())
                for start in range(0, len(self.rows), HASH_ROWS):  # the row hashes of the whole column, in order
                    part = self.take(start, start + HASH_ROWS, [column])[column]
                    h.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]

    def _meta(self) -> dict:
        return {
            "features": self.features.to_dict(),
            "read": self.read.to_dict(),
            "card": self.card.to_dict(),
            "processing": self.processing,
            "labelling": self.labelling.to_dict(),
            "skips": {
                "entries": [astuple(e) for e in self.skips.entries],
                "fixes": [astuple(e) for e in self.skips.fixes],
            },
            "blocks": [asdict(b) for b in self.blocks],
            "partitions": sorted(self.partitions),
        }

    def save(self, folder: str | Path) -> Path:
        """``plan.parquet`` (a row group per block), ``plan.json`` and ``cells/`` in ``folder``."""
        folder = Path(folder)
        (folder / CELLS_DIR).mkdir(parents=True, exist_ok=True)
        for name, part in self.partitions.items():
            part.save(folder / CELLS_DIR / f"{name}.parquet")
        schema = pa.schema([(c, _arrow_type(self.rows[c])) for c in self.rows])
        with pq.ParquetWriter(folder / PLAN_ROWS, schema) as writer:
            for b in self.blocks:  # a block at a time: no Arrow copy of the whole table
                block = pa.Table.from_pandas(self.take(b.start, b.stop), preserve_index=False).cast(schema)
                writer.write_table(block, row_group_size=max(b.stop - b.start, 1))
        (folder / PLAN_JSON).write_text(json.dumps({**self._meta(), "plan_id": self.plan_id}, indent=1, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, rows: bool = True) -> BuildPlan:
        """The plan saved in ``folder``; ``rows=False`` leaves the row table empty (the engines read it by block)."""
        from datasets import Features

        folder = Path(folder)
        if not (folder / PLAN_JSON).is_file():
            raise UserError(f"--plan {folder}: no {PLAN_JSON}; make the plan with geohf dataset build ... --plan-only")
        meta = json.loads((folder / PLAN_JSON).read_text())
        skips = SkipLog()
        skips.entries = [Skip(*e) for e in meta["skips"]["entries"]]
        skips.fixes = [Skip(*e) for e in meta["skips"]["fixes"]]
        partitions = {name: CellPartition.load(folder / CELLS_DIR / f"{name}.parquet") for name in meta["partitions"]}
        table = pd.read_parquet(folder / PLAN_ROWS) if rows else pd.DataFrame()
        return cls(
            table,
            Features.from_dict(meta["features"]),
            partitions,
            ImageRead.from_dict(meta["read"]),
            DatasetCardFields.from_dict(meta["card"]),
            meta["processing"],
            LabellingStats.from_dict(meta["labelling"]),
            skips,
            [Block(**b) for b in meta["blocks"]],
            meta["plan_id"],
        )


def _arrow_type(column: pd.Series) -> pa.DataType:
    """The type a plan column is saved as: from its values for an object column, else from its dtype (one value
    converted); a categorical's values' type (the label columns are held as codes)."""
    kind = pa.array(column if column.dtype == object else column.iloc[:1], from_pandas=True).type
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def file_count(n: int, rows_per_file: int) -> int:
    """Files for ``n`` rows: one when they fit in one, else a multiple of :data:`FILES_MULTIPLE`."""
    count = math.ceil(n / rows_per_file)
    rounded = math.ceil(count / FILES_MULTIPLE) * FILES_MULTIPLE
    return count if count <= 1 or rounded > n else rounded


def read_block(folder: str | Path, block: int) -> pd.DataFrame:
    """The rows of one block of a saved plan (one row group: reading it costs the block, not the plan)."""
    return pq.ParquetFile(Path(folder) / PLAN_ROWS).read_row_group(block).to_pandas()
