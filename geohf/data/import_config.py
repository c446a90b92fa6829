"""What ``geohf dataset import`` takes: one dataclass, the command's parsed arguments and the importer's
input alike (no pandas, no torch: the command line builds it before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImportConfig:
    """Everything ``geohf dataset import`` takes."""

    source: str
    input: str
    output: str
    splits: list[str] | None = None
    table: str | None = None
    images: str | None = None
    image_column: str | None = None
    latitude_column: str | None = None
    longitude_column: str | None = None
    split_column: str | None = None
    country_column: str | None = None
    default_split: str | None = None
    cells: list[str] = field(default_factory=list)
    boundaries: str | None = None
    revision: str | None = None
    overwrite: bool = False
    repo_id: str | None = None
    engine: str = "local"
    address: str | None = None
