"""What to predict: files, folders, globs, URLs, dataset splits, and views grouped by place.

Everything becomes a sequence of :class:`PredictItem` (one place: one image, or several
views of it) that :mod:`geohf.inference.stream` decodes lazily, batch by batch. Inputs
that yield nothing (a glob without matches, a folder without images) come back as
errors; files left out on purpose (non-images inside folders, duplicates) as counted
notes, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import IMAGE_SUFFIXES
from ..images import ImageLoadError, is_url

GLOB_CHARS = re.compile(r"[*?\[]")
MAX_VIEWS_CSV_BYTES = 256 << 20


def _number(reason: str, n: int) -> str:
    """``reason`` (starting with a plural noun: "files without...") for ``n`` things: "1 file without..."."""
    noun, _, rest = reason.partition(" ")
    return f"{noun[:-1]} {rest}" if n == 1 and noun.endswith("s") else reason


@dataclass(frozen=True)
class ImageRef:
    """Where one image is: a local path or URL, or encoded bytes (``data``) named ``name``."""

    name: str
    data: bytes | None = None

    @property
    def local_path(self) -> Path | None:
        """The file on disk, when the image is one."""
        return None if self.data is not None or is_url(self.name) else Path(self.name)


@dataclass
class PredictItem:
    """One place to predict: one image, or several views of it (``location_id`` set)."""

    images: list[ImageRef]
    location_id: str | None = None
    truth: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return self.location_id if self.location_id is not None else self.images[0].name

    def without_data(self) -> PredictItem:
        """A copy without encoded bytes (``b""`` marks images that were in memory), cheap to pass around."""
        refs = [r if r.data is None else ImageRef(r.name, b"") for r in self.images]
        return PredictItem(refs, self.location_id, self.truth)


@dataclass
class Inputs:
    """Items to predict, input errors (reported like unreadable images) and notes on what was left out."""

    items: Sequence[PredictItem] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)  # reason (a plural noun first) -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one example

    def leave_out(self, name: str, reason: str) -> None:
        self.left_out[reason] += 1
        self.examples.setdefault(reason, name)

    def notes(self) -> list[str]:
        """One line per reason something was left out, with its count and an example."""
        return [
            f"left out {n} {_number(reason, n)} (e.g. {self.examples[reason]})" for reason, n in self.left_out.items()
        ]

    @property
    def n_images(self) -> int:
        """Images named by the inputs: every view of every item, plus inputs that failed already.

        Lazy sequences (dataset rows) are not read for this: they hold one image per item.
        """
        if isinstance(self.items, list):
            return sum(len(item.images) for item in self.items) + len(self.errors)
        return len(self.items) + len(self.errors)


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _folder_files(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file())


def collect_inputs(specs: Sequence[str | os.PathLike], recursive: bool = True) -> Inputs:
    """Items for files, folders (recursively), glob patterns and URLs, in the order given.

    Files named explicitly are kept even when missing or oddly named (decoding reports
    them); inside folders and glob matches, only image extensions are kept, and the
    others are counted in :attr:`Inputs.left_out`. A file reached twice is kept once.
    """
    out = Inputs(items=[])
    seen: set[str] = set()

    def add(name: str) -> None:
        key = name if is_url(name) else os.path.abspath(name)
        if key in seen:
            out.leave_out(name, "inputs given more than once")
            return
        seen.add(key)
        out.items.append(PredictItem([ImageRef(name)]))

    def add_matches(spec: str, paths: list[Path], empty: str) -> None:
        images = [p for p in paths if is_image_name(p)]
        for p in paths:
            if not is_image_name(p):
                out.leave_out(str(p), f"files without an image extension ({', '.join(IMAGE_SUFFIXES[:4])}...)")
        if not images:
            out.errors.append(ImageLoadError(spec, empty))
        for p in images:
            add(str(p))

    for spec in map(str, specs):
        if is_url(spec):
            add(spec)
        elif Path(spec).is_dir():
            hint = "" if recursive else " (without --no-recursive, subfolders are searched too)"
            add_matches(spec, _folder_files(Path(spec), recursive), f"folder holds no image files{hint}")
        elif not Path(spec).exists() and GLOB_CHARS.search(spec):
            paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            add_matches(spec, paths, "no image file matches this pattern; check the path")
        else:
            add(spec)
    return out


def _location_from_pattern(name: str, pattern: re.Pattern) -> str | None:
    match = pattern.search(name if is_url(name) else Path(name).as_posix())
    if match is None:
        return None
    if "location" in pattern.groupindex:
        return match.group("location")
    return match.group(1) if pattern.groups else match.group(0)


def group_by_pattern(inputs: Inputs, pattern: str) -> Inputs:
    """Views of one place grouped by a regular expression on the file path.

    The location id is the named group ``location``, else the first group, else the whole
    match; files the pattern does not match become errors. Groups keep first-seen order.
    """
    regex = re.compile(pattern)
    groups: dict[str, list[ImageRef]] = {}
    errors = list(inputs.errors)
    for item in inputs.items:
        for ref in item.images:
            location = _location_from_pattern(ref.name, regex)
            if location is None:
                errors.append(ImageLoadError(ref.name, f"does not match --group-pattern {pattern!r}; rename or fix it"))
            else:
                groups.setdefault(location, []).append(ref)
    items = [PredictItem(refs, location_id=loc) for loc, refs in groups.items()]
    return Inputs(items=items, errors=errors, left_out=inputs.left_out, examples=inputs.examples)


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def group_by_csv(path: str | os.PathLike) -> Inputs:
    """Views grouped by a CSV with columns ``file, location_id`` (optional ``latitude, longitude``).

    Relative file paths are relative to the CSV's folder. Ground truth is taken from the
    first row of each location that has both coordinates. A file over :data:`MAX_VIEWS_CSV_BYTES`,
    a field over csv's limit (128 kB), a NUL byte or text that is not UTF-8: one ``ValueError``
    naming the file (and the line).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_VIEWS_CSV_BYTES:
        limit = MAX_VIEWS_CSV_BYTES
        raise ValueError(f"{path}: {size:,} bytes, over the {limit:,}-byte limit for a views CSV; split it")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            missing = {"file", "location_id"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: needs columns 'file' and 'location_id' (missing {sorted(missing)})")
            rows = list(reader)
        except csv.Error as err:  # a field over csv's limit (128 kB), a NUL byte
            raise ValueError(f"{path} line {reader.line_num}: {err}; fix the file") from err
        except UnicodeDecodeError as err:
            where = f"{err.reason} at byte {err.start}"
            raise ValueError(f"{path} is not UTF-8 text ({where}); re-save it as UTF-8") from err
    groups: dict[str, PredictItem] = {}
    out = Inputs(items=[])
    for line, row in enumerate(rows, start=2):
        file, location = (row.get("file") or "").strip(), (row.get("location_id") or "").strip()
        if not file or not location:
            out.errors.append(ImageLoadError(f"{path}:{line}", "empty 'file' or 'location_id'; fill or delete the row"))
            continue
        name = file if is_url(file) or Path(file).is_absolute() else str(path.parent / file)
        item = groups.setdefault(location, PredictItem([], location_id=location))
        item.images.append(ImageRef(name))
        lat, lon = _float_or_none(row.get("latitude")), _float_or_none(row.get("longitude"))
        if item.truth is None and lat is not None and lon is not None:
            item.truth = (lat, lon)
    out.items = list(groups.values())
    return out


# ---------------------------------------------------------------- datasets


def load_split(name: str, split: str, revision: str | None = None):
    """One split of a dataset folder (Parquet / imagefolder, or ``save_to_disk``) or Hub repo id."""
    import datasets

    folder = Path(name)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        ds = datasets.load_from_disk(str(folder))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{name} has no split {split!r}; it has {list(ds)} (use --split)")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(str(name), split=split, revision=revision)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(f"{name}: {err} (use --split)") from err
        raise


class DatasetItems(Sequence):
    """A ``datasets.Dataset`` split as predict items, read row by row (images stay encoded until decoded).

    The image column may be an ``Image`` feature (bytes or paths) or strings (paths or
    URLs); ``latitude`` / ``longitude`` columns, when present, are the ground truth.
    """

    def __init__(self, dataset, image_column: str = "image", prefix: str = "", truth=("latitude", "longitude")):
        import datasets

        if image_column not in dataset.column_names:
            raise ValueError(
                f"no image column {image_column!r}; columns are {dataset.column_names} (use --image-column)"
            )
        feature = dataset.features[image_column]
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.truth = tuple(truth) if all(c in dataset.column_names for c in truth) else None
        keep = [image_column, *(self.truth or ())]
        self.dataset = dataset.select_columns(keep)
        self.image_column, self.prefix = image_column, prefix

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.dataset[int(index)]
        ref = row_image_ref(row[self.image_column], f"{self.prefix}{index}")
        truth = row_truth(row[self.truth[0]], row[self.truth[1]]) if self.truth is not None else None
        return PredictItem([ref], truth=truth)


def row_image_ref(value, name: str) -> ImageRef:
    """A dataset row's image value (an ``Image`` feature's ``{"bytes", "path"}``, or a path / URL string) as an
    :class:`ImageRef`; an empty value is named ``name`` (the row) so that decoding reports it under that name."""
    if isinstance(value, dict):
        ref = ImageRef(name, value["bytes"]) if value.get("bytes") is not None else ImageRef(value.get("path") or "")
    else:
        ref = ImageRef(str(value) if value is not None else "")
    return ref if ref.name else ImageRef(name, b"")


def row_truth(latitude, longitude) -> tuple[float, float] | None:
    """A row's ground truth: both coordinates, or ``None``."""
    return (float(latitude), float(longitude)) if latitude is not None and longitude is not None else None


def dataset_inputs(name: str, split: str = "test", image_column: str = "image", revision: str | None = None) -> Inputs:
    """Every row of a dataset split, lazily (nothing is decoded or copied up front)."""
    dataset = load_split(name, split, revision)
    if len(dataset) == 0:
        raise ValueError(f"{name}: split {split!r} is empty; nothing to predict")
    return Inputs(items=DatasetItems(dataset, image_column, prefix=f"{split}/"))
