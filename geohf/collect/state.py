"""The resume state of an output folder: which planned locations are finished, and how.

``<output>/.collect/state.json`` is rewritten atomically at every checkpoint. It holds the
options the folder was collected with (a re-run must use the same ones), the finished
locations (``ok``, ``no_imagery`` or ``duplicate``, with the requested and actual
coordinates), how many bytes of ``metadata.jsonl`` belong to them, and the running totals of
requests and spend. Locations that failed are not finished: a re-run tries them again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write

WORK_DIR = ".collect"
STATE_FILE = "state.json"
VERSION = 1


@dataclass
class CollectState:
    """Finished locations and the committed length of ``metadata.jsonl``."""

    path: Path
    options: dict
    done: dict[str, dict] = field(default_factory=dict)
    metadata_bytes: int = 0
    totals: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_folder(cls, root: str | Path, options: dict) -> CollectState:
        """The state of ``root`` (empty for a new folder); refuses a folder collected with other options."""
        path = Path(root) / WORK_DIR / STATE_FILE
        if not path.is_file():
            return cls(path, dict(options))
        raw = json.loads(path.read_text())
        if raw.get("version") != VERSION:
            raise ValueError(f"{path}: unsupported state version {raw.get('version')!r}")
        if raw["options"] != options:
            changed = sorted(k for k in set(options) | set(raw["options"]) if options.get(k) != raw["options"].get(k))
            was = {k: raw["options"].get(k) for k in changed}
            raise ValueError(
                f"{root} was collected with other options ({was}); re-run with the same options "
                "or collect into a new --output folder"
            )
        return cls(path, raw["options"], raw["done"], int(raw["metadata_bytes"]), raw.get("totals", {}))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in asdict(self).items() if k != "path"}
        atomic_write(self.path, json.dumps({"version": VERSION, **record}, separators=(",", ":")).encode())

    def seen(self) -> set[str]:
        """Provider ids already collected (for de-duplication)."""
        return {d["provider_id"] for d in self.done.values() if d["status"] == "ok"}

    def todo(self, plan: pd.DataFrame) -> pd.DataFrame:
        """The plan rows not finished yet; refuses a plan whose finished ids moved (another plan)."""
        finished = plan["location_id"].isin(list(self.done))
        if finished.any():
            rows = plan[finished]
            requested = np.array([self.done[i]["requested"] for i in rows["location_id"]], dtype=np.float64)
            moved = ~np.isclose(requested, rows[["latitude", "longitude"]].to_numpy(), atol=1e-6).all(axis=1)
            if moved.any():
                raise ValueError(
                    f"{int(moved.sum())} finished locations (e.g. {rows['location_id'].iloc[int(np.argmax(moved))]}) "
                    "have other coordinates in this plan: this folder was collected from another plan"
                )
        return plan[~finished]
