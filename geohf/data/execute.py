"""Executing a :class:`~geohf.data.plan.BuildPlan`: its blocks on this process, local worker processes or Ray.

Each block is written by :func:`~geohf.data.blocks.write_block`, the one per-image path of every engine (what a
worker imports). :func:`run_blocks` runs blocks on an engine; :func:`finish_folder` makes the card,
``skipped.csv``, the map and the report from the written files' Parquet metadata and the blocks' results.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..errors import UserError, one_line
from .blocks import BlockResult, write_block, write_blocks
from .folder import DATA_DIR, SplitInfo
from .plan import CELLS_DIR, Block, BuildPlan
from .report import BuildReport
from .skips import Skip, SkipLog

LABEL_MATCH_COUNTS = {"inside_polygon": "inside", "nearest_polygon": "nearest", "at_sea_unlabelled": "none",
                      "country_only": "country-only"}  # fmt: skip
IMAGE_SKIP_KINDS = ("undecodable", "dark", "blurry")
RAY_RETRIES = 3
MAP_POINTS = 100_000
"""The most points ``map.png`` draws (a scatter's memory and time grow with its points)."""
PART_FILE = "part.json"
PART_PLAN = "plan"


def run_blocks(
    plan_dir: str | Path,
    plan: BuildPlan,
    indices: Sequence[int],
    data_dir: str | Path,
    engine: str = "local",
    num_proc: int = 1,
    address: str | None = None,
    loader: Callable[[dict], dict] | None = None,
    pool: ProcessPoolExecutor | None = None,
) -> list[BlockResult]:
    """Write the blocks ``indices`` of ``plan`` (saved in ``plan_dir``) on ``engine``; results in block order.

    ``local``: this process, or ``num_proc`` worker processes (``pool``: started already; a worker that dies is
    retried, see :func:`~geohf.data.workers.map_chunks`); ``ray``: one Ray task per block, retried by Ray when its
    worker dies, a bounded number in flight (``address``: the cluster; default ``$RAY_ADDRESS``, else a local Ray).
    """
    kwargs = dict(plan_dir=str(plan_dir), schema=plan.features.arrow_schema, read=plan.read, data_dir=str(data_dir))
    results: list[BlockResult] = []
    rows = {i: plan.blocks[i].stop - plan.blocks[i].start for i in indices}
    with tqdm(total=sum(rows.values()), desc="writing images", unit="img", leave=False) as bar:
        for result in _engine_results(list(indices), plan.blocks, kwargs, engine, num_proc, address, loader, pool):
            # every block names the regions and countries it holds: one string of each kept, not one per block
            result.regions = [sys.intern(r) for r in result.regions]
            result.countries = {sys.intern(k): v for k, v in result.countries.items()}
            results.append(result)
            bar.update(rows[result.block])
    return sorted(results, key=lambda r: r.block)


def _engine_results(
    indices: list[int], blocks: list[Block], kwargs: dict, engine: str, num_proc: int, address, loader, pool=None
) -> Iterator[BlockResult]:
    if engine == "ray":
        if loader is not None:
            raise UserError("--engine ray: this layout makes its images in this process; build it with --engine local")
        yield from _ray_results(indices, blocks, kwargs, num_proc, address)
    elif num_proc > 1 and loader is None:
        from .workers import map_chunks

        fix = f"run again with a lower --num-proc (now {num_proc}) or --num-proc 1, or with more memory free"
        chunks = [[i] for i in indices]
        for _, done in map_chunks(partial(write_blocks, blocks=blocks, **kwargs), chunks, num_proc,
                                  "writing images", fix, pool):  # fmt: skip
            yield from done
    else:
        for i in indices:
            yield write_block(index=i, block=blocks[i], loader=loader, **kwargs)


def _ray_results(
    indices: list[int], blocks: list[Block], kwargs: dict, num_proc: int, address
) -> Iterator[BlockResult]:
    from ..engines import connect_ray

    ray = connect_ray(address, num_cpus=num_proc if num_proc > 1 else None)
    task = ray.remote(num_cpus=1, max_retries=RAY_RETRIES)(write_block)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = iter(indices)
    pending = {task.remote(index=i, block=blocks[i], **kwargs): i for i in _take(queue, limit)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # an error in the block, or its worker died RAY_RETRIES times
                    raise UserError(
                        f"writing images on Ray: block {blocks[i].file_name} failed ({one_line(err)[:300]}); fix the "
                        "cause and run again"
                    ) from None
                yield result
                for j in _take(queue, 1):
                    pending[task.remote(index=j, block=blocks[j], **kwargs)] = j
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _take(it: Iterator[int], n: int) -> list[int]:
    return [x for _, x in zip(range(n), it)]


# ------------------------------------------------------------------ the folder around the files
def split_infos(root: Path, plan: BuildPlan, indices: Sequence[int], drop_empty: bool = True) -> dict[str, SplitInfo]:
    """Rows and bytes of each split, read from the Parquet metadata of the blocks ``indices`` written in ``root``;
    a split whose files hold no row is removed when ``drop_empty``."""
    infos: dict[str, SplitInfo] = {}
    for i in indices:
        block = plan.blocks[i]
        meta = pq.read_metadata(root / DATA_DIR / block.file_name)
        info = infos.setdefault(block.split, SplitInfo(block.split))
        info.num_examples += meta.num_rows
        info.num_bytes += sum(meta.row_group(k).total_byte_size for k in range(meta.num_row_groups))
        info.shards.append(block.file_name)
    for split, info in list(infos.items()):
        if drop_empty and not info.num_examples:
            for name in info.shards:
                (root / DATA_DIR / name).unlink()
            del infos[split]
    return infos


@dataclass
class CardCounts:
    """The counts of a dataset's rows its card shows, summed over the blocks' results."""

    rows: int
    countries: dict[tuple[str, str], list[int]]
    n_regions: int

    @classmethod
    def of(cls, results: Sequence[BlockResult]) -> CardCounts:
        countries: dict[tuple[str, str], list[int]] = {}
        regions: set[str] = set()
        for r in results:
            for key, (n, t) in r.countries.items():
                code, name = key.split("\t")
                total = countries.setdefault((code, name), [0, 0])
                total[0] += n
                total[1] += t
            regions.update(r.regions)
        return cls(sum(r.rows for r in results), countries, len(regions))

    def top(self, n: int = 20) -> list[dict[str, Any]]:
        ranked = sorted(self.countries.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [{"country_code": cc, "country": c, "total": t, "train": tr} for (cc, c), (t, tr) in ranked[:n]]

    @property
    def n_countries(self) -> int:
        return len({cc for cc, _ in self.countries})


def image_skips(results: Sequence[BlockResult]) -> list[Skip]:
    """The images the blocks left out, by kind (undecodable, dark, blurry) and then in plan order."""
    entries = [e for r in results for e in r.skips]
    kind = {k: i for i, k in enumerate(("undecodable image", "dark or blank", "blurry"))}
    return sorted(entries, key=lambda e: kind.get(e.kind, len(kind)))


def finish_folder(
    root: Path,
    plan: BuildPlan,
    results: Sequence[BlockResult],
    output_dir: str | Path,
    seconds: float,
    part: tuple[int, int] | None = None,
) -> BuildReport:
    """Card, ``skipped.csv``, cells, map and ``build_report.json`` of the folder ``root`` whose data files hold
    the blocks of ``results``; ``part``: ``(K, N)`` when it holds part K of N of the plan. Returns the report."""
    from ..plots import plot_locations
    from .build import BUILD_REPORT, SKIPPED_CSV, dataset_card_text

    for stale in (root / DATA_DIR).glob(".*.tmp"):  # left by a killed worker whose block ran again
        stale.unlink()
    infos = split_infos(root, plan, [r.block for r in results], drop_empty=part is None)
    counts = CardCounts.of(results)
    if not counts.rows and part is None:
        raise UserError(f"every input was skipped ({len(plan.skips) + len(image_skips(results))}); see the reasons "
                        "above — nothing to write")  # fmt: skip
    log = SkipLog(entries=list(plan.skips.entries), fixes=list(plan.skips.fixes))
    for e in image_skips(results):
        log.skip(e.stage, e.item, e.reason)
    processing = dict(plan.processing)
    kept = processing.pop("kept", None)
    found = Counter(f"{e.stage}: {e.kind}" for e in image_skips(results))
    for key in sorted(found):
        processing[f"skipped, {key}"] = processing.get(f"skipped, {key}", 0) + found[key]
    if kept is not None:
        processing["kept"] = counts.rows
    matches = Counter()
    for r in results:
        matches.update(r.label_match)
    counted = {key: matches.get(match, 0) for key, match in LABEL_MATCH_COUNTS.items()
               if getattr(plan.labelling, key) is not None}  # fmt: skip
    labelling = replace(plan.labelling, **counted)
    has_skips = bool(log.entries or log.fixes)
    if has_skips:
        log.write_csv(root / SKIPPED_CSV)
    (root / CELLS_DIR).mkdir(exist_ok=True)
    for name, partition in plan.partitions.items():
        partition.save(root / CELLS_DIR / f"{name}.parquet")
    report = BuildReport(
        output_dir=str(output_dir),
        splits={s: i.num_examples for s, i in infos.items()},
        processing=processing,
        labelling=labelling,
        partitions={n: len(p) for n, p in plan.partitions.items()},
        seconds=seconds,
    )
    (root / BUILD_REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    if not infos:
        return report
    _map(root, infos, plot_locations)
    card = replace(plan.card, skipped_file=SKIPPED_CSV if has_skips else "")
    if part is not None and part[1] > 1:
        note = (
            f" This folder is part {part[0]}/{part[1]} of a build run in parts and its "
            "counts are this part's: `geohf dataset merge` joins the parts' folders into one, or copy every part's "
            "`data/*.parquet` into the folder of part 1 (which holds a file of every split), where its card's "
            "`configs` glob loads them all (the card gives no per-split sizes to check against, so that works)."
        )
        card = replace(card, shard=f"{part[0]}/{part[1]}", split_note=(card.split_note + note).strip())
    text = dataset_card_text(counts, plan.features, infos, plan.partitions, processing, card, labelling)
    (root / "README.md").write_text(text, encoding="utf-8")
    return report


def _map(root: Path, infos: dict[str, SplitInfo], plot) -> None:
    """``map.png``: the rows with coordinates by split, read column by column from the written files; above
    :data:`MAP_POINTS` rows an evenly spaced sample of each file (the legend gives every split's full count)."""
    step = max(1, math.ceil(sum(i.num_examples for i in infos.values()) / MAP_POINTS))
    lat, lon, split, counts = [], [], [], {}
    for name, info in infos.items():
        for file in info.shards:
            table = pq.read_table(root / DATA_DIR / file, columns=["latitude", "longitude"])
            a = table["latitude"].to_numpy(zero_copy_only=False).astype(np.float64)
            b = table["longitude"].to_numpy(zero_copy_only=False).astype(np.float64)
            ok = np.isfinite(a) & np.isfinite(b)
            counts[name] = counts.get(name, 0) + int(ok.sum())
            lat.append(a[ok][::step])
            lon.append(b[ok][::step])
            split.append(np.full(len(lat[-1]), name, dtype=object))
    title = "samples by split" + (f" (every {step}th drawn)" if step > 1 else "")
    plot(np.concatenate(lat), np.concatenate(lon), np.concatenate(split), root / "map.png", title=title, counts=counts)


def save_part(root: Path, plan_dir: Path, plan: BuildPlan, part: tuple[int, int], results: Sequence[BlockResult]):
    """What a merge needs of a part's folder ``root``: ``part.json`` (which part of which plan, and its blocks'
    results) and the plan's ``plan.json`` and ``cells/`` (not its rows) in ``plan/``."""
    from .plan import PLAN_JSON

    (root / PART_PLAN).mkdir()
    shutil.copyfile(plan_dir / PLAN_JSON, root / PART_PLAN / PLAN_JSON)
    shutil.copytree(plan_dir / CELLS_DIR, root / PART_PLAN / CELLS_DIR)
    meta = {"plan_id": plan.plan_id, "index": part[0], "count": part[1], "results": [r.to_dict() for r in results]}
    (root / PART_FILE).write_text(json.dumps(meta))
