"""Writing one block of a saved plan: the per-image path of every engine, and all a worker imports.

:func:`write_block` reads each image of a block once (check, shrink, encode) and writes the block's Parquet
file under a temporary name, renamed when complete (a retried or repeated block writes the same file). It
returns what the card needs (:class:`BlockResult`: the skips and small counts), never the rows. A local
``--num-proc`` worker or a Ray task imports this module (pyarrow, numpy, Pillow), not the plan's table
libraries (pandas, geopandas).
"""

from __future__ import annotations

import io
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import ExifTags, Image

from ..errors import UserError, one_line
from ..images import ImageLoadError, decode_image, heif_available
from .archives import MemberRef
from .folder import _non_binary_columns
from .quality import ImageFilter, check_image
from .skips import Skip

PLAN_ROWS = "plan.parquet"
BATCH_ROWS = 256


@dataclass
class ImageRead:
    """How a block gets each row's image: ``file`` (the file ``root / source_file``) or ``member`` (``_ref_*``: a
    member of a zip / tar shard); ``check``: decode and measure it first (undecodable images are always skipped,
    dark / blurry ones when ``apply_filter``); ``max_side``: shrink longer images (:func:`shrink_image`)."""

    kind: str = "file"
    check: ImageFilter | None = None
    apply_filter: bool = True
    max_side: int | None = None
    keep_exif: bool = False
    root: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageRead:
        check = ImageFilter(**d["check"]) if d.get("check") else None
        return cls(**{**d, "check": check})


@dataclass
class Block:
    """Rows ``start:stop`` of the plan: file ``index`` of ``count`` of ``split``."""

    split: str
    index: int
    count: int
    start: int
    stop: int

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"


@dataclass
class BlockResult:
    """What writing one block gave: the rows it left out and the counts the card needs (by country, label match)."""

    block: int
    rows: int = 0
    skips: list[Skip] = field(default_factory=list)
    countries: dict[str, list[int]] = field(default_factory=dict)  # "code\tname" -> [rows, training rows]
    regions: list[str] = field(default_factory=list)
    label_match: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``part.json``): each skip as ``[stage, item, reason]``."""
        return {**asdict(self), "skips": [astuple(s) for s in self.skips]}

    @classmethod
    def from_dict(cls, d: dict) -> BlockResult:
        return cls(**{**d, "skips": [Skip(*s) for s in d["skips"]]})


def _image(row: dict, read: ImageRead) -> tuple[bytes | None, str | None]:
    """The bytes to store for ``row`` (checked and shrunk as ``read`` says), or the reason it is left out."""
    if read.kind == "member":
        ref = MemberRef(
            row["_ref_path"], int(row["_ref_offset"]), int(row["_ref_size"]), int(row["_ref_method"]),
            row["_ref_name"], int(row["_ref_declared"]), int(row["_ref_crc"]),
        )  # fmt: skip
        try:
            return ref.read(), None
        except (ImageLoadError, OSError) as err:  # its header was checked when the source was read
            raise UserError(f"{ref.where}: {one_line(err)} (it changed during the import); run it again") from err
    path = os.path.join(read.root, row["source_file"])
    if read.check is not None:
        data, reason = check_image(path, read.check, read.apply_filter)
        if data is None:
            return None, reason
    else:
        data = Path(path).read_bytes()
    if read.max_side:
        data = shrink_image(data, read.max_side, row["source_file"], read.keep_exif)
    return data, None


def write_block(
    plan_dir: str,
    index: int,
    block: Block,
    schema: pa.Schema,
    read: ImageRead,
    data_dir: str,
    loader: Callable[[dict], dict] | None = None,
) -> BlockResult:
    """Write block ``index`` of the plan saved in ``plan_dir`` to ``data_dir/<block.file_name>`` (see the module).

    ``loader``: row → ``{"bytes", "path"}`` instead of ``read`` (images made in this process: Blue Marble tiles).
    """
    rows = pq.ParquetFile(Path(plan_dir) / PLAN_ROWS).read_row_group(index).to_pylist()
    columns = [c for c in schema.names if c != "image"]
    small = _non_binary_columns(schema)
    path = Path(data_dir) / block.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    result = BlockResult(index)
    countries: Counter = Counter()
    train: Counter = Counter()
    regions: set[str] = set()
    matches: Counter = Counter()
    buffer: list[dict] = []
    try:
        with pq.ParquetWriter(tmp, schema, use_dictionary=small, write_statistics=small) as writer:
            for row in rows:
                if loader is not None:
                    image = loader(row)
                else:
                    data, reason = _image(row, read)
                    if data is None:
                        result.skips.append(Skip("images", row["source_file"], reason))
                        continue
                    image = {"bytes": data, "path": row["source_file"]}
                buffer.append({**{c: row[c] for c in columns}, "image": image})
                result.rows += 1
                key = f"{row.get('country_code')}\t{row.get('country')}"
                countries[key] += 1
                train[key] += row["split"] == "train"
                regions.add(str(row.get("region_code")))
                matches[str(row.get("label_match"))] += 1
                if len(buffer) >= BATCH_ROWS:
                    writer.write_batch(pa.RecordBatch.from_pylist(buffer, schema=schema))
                    buffer = []
            if buffer:
                writer.write_batch(pa.RecordBatch.from_pylist(buffer, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    result.countries = {k: [n, train[k]] for k, n in countries.items()}
    result.regions = sorted(regions)
    result.label_match = dict(matches)
    return result


def write_blocks(indices: list[int], **kwargs) -> list[BlockResult]:
    """Several blocks, one after the other (a unit of work on a local worker process)."""
    blocks = kwargs.pop("blocks")
    return [write_block(index=i, block=blocks[i], **kwargs) for i in indices]


def shrink_image(data: bytes, max_side: int, name: str = "<bytes>", keep_exif: bool = False) -> bytes:
    """Re-encode an image whose longer side exceeds ``max_side``: decoded upright (EXIF orientation
    applied, so the stored pixels need no tag), same format where PIL writes it, JPEG at quality 95.

    The re-encoded image carries no EXIF, unless ``keep_exif``: then its GPS IFD (the camera's
    location) is copied over. Images already small enough are stored as they are, EXIF included.
    """
    heif_available()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return data
        fmt = im.format if im.format in ("JPEG", "PNG", "WEBP") else "PNG"
    decoded = decode_image(name, data)
    image = decoded.image
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    options: dict = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    gps = decoded.exif.get_ifd(ExifTags.IFD.GPSInfo) if keep_exif else {}
    if gps:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
        options["exif"] = exif
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()
