"""The output folder, in the ``imagefolder`` layout ``geohf dataset build`` and ``datasets`` read.

::

    DIR/metadata.jsonl        one line per image: file_name, latitude, longitude, location_id,
                              heading, capture_date, provider, provider_id
    DIR/images/*.jpg          the images of finished locations, and only those
    DIR/.collect/state.json   resume state (hidden: datasets ignores it)
    DIR/.collect/pending/     images downloaded for locations not finished yet

Images are written atomically into ``pending/`` and renamed into ``images/`` when their
location is committed; the metadata lines are then appended in one write and the state
records the new length of ``metadata.jsonl``. After a kill, :meth:`OutputFolder.recover` cuts
``metadata.jsonl`` back to that length and moves images of uncommitted locations back to
``pending/``, where the re-run finds them instead of downloading them again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write, remove_temp_files
from .providers import IMAGES_DIR
from .state import WORK_DIR

METADATA_FILE = "metadata.jsonl"
METADATA_COLUMNS = [
    "file_name",
    "latitude",
    "longitude",
    "location_id",
    "heading",
    "capture_date",
    "provider",
    "provider_id",
]


@dataclass
class Recovery:
    """What :meth:`OutputFolder.recover` repaired after an interrupted run."""

    temp_files: int = 0
    metadata_bytes_dropped: int = 0
    images_unpublished: int = 0

    def __bool__(self) -> bool:
        return bool(self.temp_files or self.metadata_bytes_dropped or self.images_unpublished)


class OutputFolder:
    """Atomic image writes, commits and crash recovery for one output folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.images = self.root / IMAGES_DIR
        self.pending = self.root / WORK_DIR / "pending"
        self.metadata = self.root / METADATA_FILE

    def create(self) -> None:
        for d in (self.images, self.pending):
            d.mkdir(parents=True, exist_ok=True)

    def _pending(self, file_name: str) -> Path:
        return self.pending / Path(file_name).name

    def has_image(self, file_name: str) -> bool:
        """True when the image is already on disk (committed or pending): never download it again."""
        return (self.root / file_name).is_file() or self._pending(file_name).is_file()

    def write_pending(self, file_name: str, data: bytes) -> None:
        atomic_write(self._pending(file_name), data)

    def publish(self, file_names: Sequence[str]) -> None:
        """Move the pending images of a committed location into ``images/``."""
        for name in file_names:
            target = self.root / name
            if not target.is_file():
                os.replace(self._pending(name), target)

    def append_metadata(self, records: Sequence[dict]) -> int:
        """Append records in one write (fsynced); returns the new length of ``metadata.jsonl``."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        fd = os.open(self.metadata, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if data:
                os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def committed_files(self) -> set[str]:
        if not self.metadata.is_file():
            return set()
        with open(self.metadata, encoding="utf-8") as f:
            return {json.loads(line)["file_name"] for line in f if line.strip()}

    def recover(self, committed_bytes: int) -> Recovery:
        """Bring the folder back to its last committed state (see the module docstring)."""
        report = Recovery()
        for d in (self.root, self.images, self.pending, self.root / WORK_DIR):
            report.temp_files += remove_temp_files(d)
        size = self.metadata.stat().st_size if self.metadata.is_file() else 0
        if size < committed_bytes:
            raise ValueError(f"{self.metadata} is shorter than its state records ({size} < {committed_bytes} bytes)")
        if size > committed_bytes:
            os.truncate(self.metadata, committed_bytes)
            report.metadata_bytes_dropped = size - committed_bytes
        committed = self.committed_files()
        on_disk = {f"{IMAGES_DIR}/{p.name}" for p in self.images.iterdir()} if self.images.is_dir() else set()
        missing = committed - on_disk
        if missing:
            raise ValueError(f"{len(missing)} images listed in {self.metadata} are missing (e.g. {min(missing)})")
        self.pending.mkdir(parents=True, exist_ok=True)
        for name in sorted(on_disk - committed):
            os.replace(self.root / name, self._pending(name))
            report.images_unpublished += 1
        return report

    def clear_pending(self) -> int:
        """Delete images left in ``pending/`` (once every location is finished they belong to none)."""
        left = len(list(self.pending.iterdir())) if self.pending.is_dir() else 0
        shutil.rmtree(self.pending, ignore_errors=True)
        return left
