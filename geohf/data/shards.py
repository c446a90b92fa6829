"""Building one dataset on several machines: ``geohf dataset build --shard K/N`` and ``geohf dataset merge``.

Every machine reads the whole layout's metadata (coordinates, not pixels), so the steps that
need every row — coordinate checks, dropping duplicate locations, the split, fitting the
geocells — come out the same everywhere. A shard then checks and writes only its images:
those whose path relative to the input folder hashes to it (disjoint, and independent of the
order files are listed in). Splits are by a hash of each location (or block), so an image's
split does not depend on which shard builds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from datasets import Features

from ..errors import UserError
from ..geo.cells import CellPartition
from ..plots import plot_locations
from .build import BUILD_REPORT, CELLS_DIR, SHARD_FILE, SKIPPED_CSV, BuildReport, dataset_card_text
from .folder import DATA_DIR, SplitInfo, atomic_directory
from .splits import SPLITS, stable_unit

CARD_COLUMNS = ["latitude", "longitude", "country_code", "country", "region_code", "region"]


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


def build_id(settings: dict, keys: pd.Series, lat: np.ndarray, lon: np.ndarray) -> str:
    """Fingerprint of a sharded build: its settings and every input row it read (path and coordinates).

    Shards agree on it only when they were built with the same settings from the same files.
    """
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    order = np.argsort(keys.to_numpy(dtype=str), kind="stable")
    h.update("\n".join(keys.to_numpy(dtype=str)[order]).encode())
    h.update(np.round(np.asarray(lat, np.float64)[order], 7).tobytes())
    h.update(np.round(np.asarray(lon, np.float64)[order], 7).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ merge
@dataclass
class ShardFolder:
    path: Path
    meta: dict

    @property
    def index(self) -> int:
        return int(self.meta["index"])


def read_shard(path: str | os.PathLike) -> ShardFolder:
    path = Path(path)
    meta_path = path / SHARD_FILE
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    if not meta_path.is_file():
        raise UserError(
            f"{path}: not a shard of a sharded build (no {SHARD_FILE}); build it with geohf dataset build --shard K/N"
        )
    return ShardFolder(path, json.loads(meta_path.read_text()))


def check_shards(shards: list[ShardFolder]) -> None:
    """One build, every shard once: the same build id and N, indices exactly 1..N."""
    first = shards[0]
    for s in shards[1:]:
        if s.meta["build_id"] != first.meta["build_id"] or s.meta["count"] != first.meta["count"]:
            raise UserError(
                f"{s.path} is shard {s.index}/{s.meta['count']} of build {s.meta['build_id']}, but {first.path} is "
                f"shard {first.index}/{first.meta['count']} of build {first.meta['build_id']}: shards of different "
                "builds (other settings, boundaries or input files) cannot be merged; rebuild them with one command"
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
            f"missing shard(s) {', '.join(f'{k}/{n}' for k in missing)} of build {first.meta['build_id']}: "
            f"build them with --shard K/{n} and pass every shard folder"
        )
    cells = sorted(p.name for p in (first.path / CELLS_DIR).glob("*.parquet"))
    for s in shards[1:]:
        other = sorted(p.name for p in (s.path / CELLS_DIR).glob("*.parquet"))
        same = other == cells and all(
            _digest(s.path / CELLS_DIR / c) == _digest(first.path / CELLS_DIR / c) for c in cells
        )
        if not same:
            raise UserError(f"{s.path}/{CELLS_DIR} differs from {first.path}/{CELLS_DIR}: shards of different builds")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sum_counts(dicts: list[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, list):
                out[k] = [*out.get(k, []), *v]
    if "kept" in out:  # keep the card's order: found first, kept last
        out["kept"] = out.pop("kept")
    return out


def merge_shards(
    output_dir: str | os.PathLike, shard_dirs: list[str | os.PathLike], overwrite: bool = False
) -> BuildReport:
    """Join the folders of every shard of one sharded build into one dataset folder with one card.

    The Parquet files are hard-linked (copied across file systems) under one numbering per split,
    counts are summed, ``skipped.csv`` files concatenated, the card and map made from every row's
    labels. Written atomically: a failed merge leaves nothing at ``output_dir``.
    """
    shards = sorted((read_shard(p) for p in shard_dirs), key=lambda s: s.index)
    if not shards:
        raise UserError("geohf dataset merge: give the shard folders to merge")
    check_shards(shards)
    first = shards[0]
    partitions = {p.stem: CellPartition.load(p) for p in sorted((first.path / CELLS_DIR).glob("*.parquet"))}
    files = {s: [(sh, f) for sh in shards for f in sorted((sh.path / DATA_DIR).glob(f"{s}-*.parquet"))] for s in SPLITS}
    files = {s: fs for s, fs in files.items() if fs}
    features = Features.from_arrow_schema(pq.read_schema(next(iter(files.values()))[0][1]))
    processing = _sum_counts([s.meta["processing"] for s in shards])
    labelling = _sum_counts([s.meta["labelling"] for s in shards])
    if "examples" in labelling:
        labelling["examples"] = labelling["examples"][:20]
    seconds = sum(json.loads((s.path / BUILD_REPORT).read_text())["seconds"] for s in shards)
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        (tmp / DATA_DIR).mkdir()
        infos, frames = {}, []
        for split, found in files.items():
            info = SplitInfo(split)
            for i, (_, path) in enumerate(found):
                name = f"{split}-{i:05d}-of-{len(found):05d}.parquet"
                _link_or_copy(path, tmp / DATA_DIR / name)
                meta = pq.read_metadata(path)
                info.num_examples += meta.num_rows
                info.shards.append(name)
                columns = [c for c in CARD_COLUMNS if c in features]
                frames.append(pq.read_table(path, columns=columns).to_pandas().assign(split=split))
            info.num_bytes = sum(s.meta["splits"].get(split, {}).get("num_bytes", 0) for s in shards)
            infos[split] = info
        frame = pd.concat(frames, ignore_index=True)
        shutil.copytree(first.path / CELLS_DIR, tmp / CELLS_DIR)
        skipped = [s.path / SKIPPED_CSV for s in shards if (s.path / SKIPPED_CSV).is_file()]
        if skipped:
            with open(tmp / SKIPPED_CSV, "w", encoding="utf-8", newline="") as out:
                for k, path in enumerate(skipped):
                    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                    out.writelines(lines if k == 0 else lines[1:])
        located = frame["latitude"].notna() & frame["longitude"].notna()
        shown = frame[located]
        plot_locations(shown["latitude"], shown["longitude"], shown["split"], tmp / "map.png", title="samples by split")
        report = BuildReport(
            output_dir=str(output_dir),
            splits={s: i.num_examples for s, i in infos.items()},
            processing=processing,
            labelling=labelling,
            partitions={n: len(p) for n, p in partitions.items()},
            seconds=seconds,
        )
        (tmp / BUILD_REPORT).write_text(
            json.dumps(
                {**report.to_dict(), "merged_from": {"build_id": first.meta["build_id"], "shards": len(shards)}},
                indent=2,
            )
        )
        card = {**first.meta["card"], "skipped_file": SKIPPED_CSV if skipped else ""}
        card["command"] = re.sub(r" --shard \S+", "", card.get("command", "")) + (
            f" --shard K/{len(shards)} (K = 1..{len(shards)}), then geohf dataset merge"
        )
        text = dataset_card_text(frame, features, infos, partitions, processing, card, labelling)
        (tmp / "README.md").write_text(text, encoding="utf-8")
    return report


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
