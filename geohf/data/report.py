"""What a dataset build reports: its counts (:class:`BuildReport`) and how its rows were labelled."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LabelDisagreement:
    """A row whose source file names another country than the one its coordinates lie in."""

    source_file: str
    latitude: float
    longitude: float
    file_country_code: str
    country_code: str


@dataclass(frozen=True)
class LabellingStats:
    """How the rows were labelled (``None``: not counted by this build): inside a polygon or by the nearest one
    within reach (coastal points), points at sea kept unlabelled and country-only rows (imports), and rows whose
    file-given country disagrees with their coordinates' (up to 20 ``examples``)."""

    inside_polygon: int | None = None
    nearest_polygon: int | None = None
    at_sea_unlabelled: int | None = None
    country_only: int | None = None
    file_label_disagreements: int | None = None
    examples: tuple[LabelDisagreement, ...] = ()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LabellingStats:
        """From :meth:`to_dict`'s JSON (``build_report.json``, a saved plan)."""
        examples = tuple(LabelDisagreement(**e) for e in values.get("examples", ()))
        return cls(**{**values, "examples": examples})

    def to_dict(self) -> dict[str, Any]:
        """The counts taken (and ``examples`` with the disagreements), JSON-able."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "examples"}
        out: dict[str, Any] = {name: n for name, n in counts.items() if n is not None}
        if self.file_label_disagreements is not None:
            out["examples"] = [asdict(e) for e in self.examples]
        return out


@dataclass
class BuildReport:
    """What a build produced, with every count needed for the card."""

    output_dir: str
    splits: dict[str, int]
    processing: dict[str, int]
    labelling: LabellingStats
    partitions: dict[str, int]
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return sum(self.splits.values()) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """``build_report.json``: the fields, the labelling as :meth:`LabellingStats.to_dict`, the rate."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "labelling": self.labelling.to_dict(), "images_per_second": round(self.images_per_second, 1)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BuildReport:
        """From ``build_report.json`` (:meth:`to_dict`; what else it holds, the rate or a merge's plan, is left)."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        return cls(**{**kept, "labelling": LabellingStats.from_dict(values.get("labelling", {}))})
