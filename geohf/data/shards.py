"""Building one dataset on several machines without a cluster engine (SLURM): parts of a saved plan.

``geohf dataset build ... --plan-only`` makes the plan once (:mod:`geohf.data.plan`: every step that needs
all rows); ``geohf dataset build --plan PLAN --shard K/N`` then writes part K of it (the files ``i`` of each
split with ``i % N == K - 1``, under their final names) on any machine that sees the plan and the images; and
``geohf dataset merge`` links the parts' files into one folder and makes its card from their Parquet
metadata: nothing is read, checked or computed twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from .blocks import BlockResult
from .build import BUILD_REPORT, BuildReport
from .execute import PART_FILE, PART_PLAN, finish_folder
from .folder import DATA_DIR, atomic_directory
from .plan import BuildPlan
from .splits import stable_unit


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with 1 <= K <= N; anything else is one clear error."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if m is None:
            raise UserError(f"--shard {text}: expected K/N (shard K of N, 1-based), e.g. --shard 1/4")
        k, n = int(m[1]), int(m[2])
        if n < 1 or not 1 <= k <= n:
            raise UserError(
                f"--shard {text}: K must be between 1 and N (1-based: the shards of 2 are --shard 1/2 and --shard 2/2)"
            )
        return cls(k, n)

    @property
    def tag(self) -> str:
        """What the shard's Parquet file names carry: ``shard00002of00016-``."""
        return f"shard{self.index:05d}of{self.count:05d}-"

    def holds(self, keys) -> np.ndarray:
        """Mask of the keys (relative paths) that belong to this shard."""
        return shard_of(keys, self.count) == self.index - 1


def shard_of(keys, count: int) -> np.ndarray:
    """0-based shard of each key: a hash of its text, so the same on every machine and in any order."""
    return np.minimum((stable_unit(list(keys), "shard") * count).astype(np.int64), count - 1)


# ------------------------------------------------------------------ merge
@dataclass
class ShardFolder:
    """The folder of one part: ``meta`` is its ``part.json``."""

    path: Path
    meta: dict

    @property
    def index(self) -> int:
        return int(self.meta["index"])


def read_shard(path: str | os.PathLike) -> ShardFolder:
    path = Path(path)
    meta_path = path / PART_FILE
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    if not meta_path.is_file():
        raise UserError(
            f"{path}: not a shard of a sharded build (no {PART_FILE}); build it with geohf dataset build --plan PLAN "
            "--shard K/N"
        )
    return ShardFolder(path, json.loads(meta_path.read_text()))


def check_shards(shards: list[ShardFolder]) -> None:
    """One plan, every part once: the same plan id and N, indices exactly 1..N."""
    first = shards[0]
    for s in shards[1:]:
        if s.meta["plan_id"] != first.meta["plan_id"] or s.meta["count"] != first.meta["count"]:
            raise UserError(
                f"{s.path} is shard {s.index}/{s.meta['count']} of plan {s.meta['plan_id']}, but {first.path} is "
                f"shard {first.index}/{first.meta['count']} of plan {first.meta['plan_id']}: shards of different "
                "builds (other plans: settings, boundaries or input files) cannot be merged; build every part from "
                "one plan"
            )
    seen: dict[int, Path] = {}
    for s in shards:
        if s.index in seen:
            raise UserError(f"shard {s.index}/{s.meta['count']} given twice: {seen[s.index]} and {s.path}")
        seen[s.index] = s.path
    n = int(first.meta["count"])
    missing = [k for k in range(1, n + 1) if k not in seen]
    if missing:
        raise UserError(
            f"missing shard(s) {', '.join(f'{k}/{n}' for k in missing)} of plan {first.meta['plan_id']}: "
            f"build them with --plan PLAN --shard K/{n} and pass every part's folder"
        )


def merge_shards(
    output_dir: str | os.PathLike, shard_dirs: list[str | os.PathLike], overwrite: bool = False
) -> BuildReport:
    """Join the folders of every part of one plan into one dataset folder with one card.

    The Parquet files already have their final names: they are hard-linked (copied across file systems); the
    counts, ``skipped.csv``, card and map come from the plan, the parts' results and the files' Parquet metadata.
    Written atomically: a failed merge leaves nothing at ``output_dir``.
    """
    shards = sorted((read_shard(p) for p in shard_dirs), key=lambda s: s.index)
    if not shards:
        raise UserError("geohf dataset merge: give the shard folders to merge")
    check_shards(shards)
    first = shards[0]
    plan = BuildPlan.load(first.path / PART_PLAN, rows=False)
    results = sorted((BlockResult.from_dict(r) for s in shards for r in s.meta["results"]), key=lambda r: r.block)
    seconds = sum(json.loads((s.path / BUILD_REPORT).read_text())["seconds"] for s in shards)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        (tmp / DATA_DIR).mkdir()
        for s in shards:
            for r in s.meta["results"]:
                name = plan.blocks[r["block"]].file_name
                _link_or_copy(s.path / DATA_DIR / name, tmp / DATA_DIR / name)
        command = plan.card.command + (
            f" --plan-only, then geohf dataset build --plan PLAN --shard K/{len(shards)} (K = 1..{len(shards)}) and "
            "geohf dataset merge"
        )
        plan.card = replace(plan.card, command=command)
        report = finish_folder(tmp, plan, results, output_dir, seconds)
        merged = {**report.to_dict(), "merged_from": {"plan_id": plan.plan_id, "shards": len(shards)}}
        (tmp / BUILD_REPORT).write_text(json.dumps(merged, indent=2))
    return report


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
