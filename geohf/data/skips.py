"""A record of every input a build leaves out, and why."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace

logger = logging.getLogger("geohf.data")


@dataclass(frozen=True)
class Skip:
    """One input a build left out (or kept after a requested correction): the ``stage`` that decided, the
    ``item`` (a file, a row) and the ``reason`` (for a fix: what was corrected)."""

    stage: str
    item: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason without its detail (the text before a colon): what the card counts."""
        return self.reason.split(":")[0]

    def at(self, item: str) -> Skip:
        """The same skip naming its item as ``item`` (e.g. relative to the input folder)."""
        return replace(self, item=item)


@dataclass
class SkipLog:
    """Inputs left out of a build (:class:`Skip`); nothing is dropped silently.

    The first ``warn_first`` skips of each reason are logged with the item and the fix;
    all are counted for the dataset card and written to ``skipped.csv``.
    """

    entries: list[Skip] = field(default_factory=list)
    fixes: list[Skip] = field(default_factory=list)
    warn_first: int = 5
    _seen: Counter = field(default_factory=Counter)

    def skip(self, stage: str, item: str, reason: str) -> None:
        entry = Skip(stage, str(item), reason)
        self.entries.append(entry)
        key = (stage, entry.kind)
        self._seen[key] += 1
        if self._seen[key] <= self.warn_first:
            logger.warning("skipped %s: %s", item, reason)

    def fix(self, stage: str, item: str, what: str) -> None:
        """An input that was kept after an explicit, requested correction."""
        self.fixes.append(Skip(stage, str(item), what))
        logger.info("fixed %s: %s", item, what)

    def __len__(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        """``"<stage>: <reason kind>"`` → number of skipped items (reason kind = text before a colon)."""
        out = Counter(f"{e.stage}: {e.kind}" for e in self.entries)
        return dict(sorted(out.items()))

    def fix_counts(self) -> dict[str, int]:
        out = Counter(f"{e.stage}: {e.kind}" for e in self.fixes)
        return dict(sorted(out.items()))

    def write_csv(self, path: str | os.PathLike) -> None:
        """Every skipped and fixed input, one per row: ``action, stage, item, reason``."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["action", "stage", "item", "reason"])
            w.writerows(("skipped", e.stage, e.item, e.reason) for e in self.entries)
            w.writerows(("fixed", e.stage, e.item, e.reason) for e in self.fixes)
