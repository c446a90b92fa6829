"""Raw layout → labelled, clean, split dataset folder: the ``geohf dataset build`` pipeline.

The plan (:mod:`geohf.data.plan`, made once, on the metadata only): read → validate coordinates and
label → drop duplicate locations → rebalance countries → split (by location or spatial block) → fit
geocells on the training split. Then an engine executes it (:mod:`geohf.data.execute`): each image read
once, checked (decode, dark/blank, blur), shrunk where asked and written to its Parquet file; then the
card, map, partitions and ``skipped.csv``. Each stage shows a progress bar and counts what it drops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..geo.boundaries import boundaries_name
from ..geo.labelling import PointLabeller
from ..hub.cards import DatasetCardFields
from ..malloc import trim
from .balance import BalanceSpec, balance
from .blocks import ImageRead
from .build import BuildReport, CellSpec, plan_labelled_dataset, write_plan
from .filters import drop_duplicate_locations, label_disagreements, validate_coordinates
from .folder import DATA_DIR, atomic_directory
from .layouts import read_layout, relative_path
from .plan import BuildPlan
from .quality import ImageFilter
from .report import LabelDisagreement, LabellingStats
from .skips import SkipLog
from .splits import assign_splits

DEFAULT_CELLS = ("semantic", "quadtree")

STREET_CARD = {
    "pretty_name": "street-location-images",
    "description": "Street-level images labelled with where they were taken (coordinates, country, admin-1 region, "
    "geocells), built with `geohf dataset build`.",
    "license": "other",
    "license_text": "to fill: the licence of the source images",
    "source": "to fill: where the images come from",
    "collection": "to fill: how the images were collected",
    "personal_data": "to fill: street-level images can show people, faces and licence plates; say how they were "
    "handled",
    "limitations": "Coverage follows where street-level imagery exists: some countries are over-represented and "
    "others missing; models trained on it inherit that bias.",
}


@dataclass
class BuildConfig:
    """Everything ``geohf dataset build`` takes (see the CLI for the flags)."""

    layout: str
    output: str
    input: str | None = None
    boundaries: str | None = None
    cells: list[str] = field(default_factory=lambda: list(DEFAULT_CELLS))
    filter: bool = True
    image_filter: ImageFilter = field(default_factory=ImageFilter)
    dedupe: bool = True
    balance: str | None = None
    split_by: str = "location"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    block_deg: float = 1.0
    buffer_km: float = 0.0
    fix_swapped: bool = False
    max_side: int | None = None
    keep_exif: bool = False
    seed: int = 0
    num_proc: int = 1
    engine: str = "local"
    address: str | None = None
    plan_only: bool = False
    plan: str | None = None
    shard: str | None = None
    rows_per_file: int = 5000
    overwrite: bool = False
    repo_id: str | None = None
    card: dict[str, Any] = field(default_factory=dict)  # DatasetCardFields to set (pretty_name, source...)
    # bluemarble only
    tiles: dict[str, int] = field(default_factory=lambda: {"train": 4000, "validation": 500, "test": 500})
    tile_px: int = 64
    block_px: int | None = None
    map_downscale: float = 1.0
    views: int = 1
    view_offset_px: int | None = None


def build_dataset(cfg: BuildConfig) -> BuildReport:
    """Build a dataset folder from a raw layout (or the Blue Marble tiles): :func:`plan_build`, then the plan
    written on ``cfg.engine``; ``cfg.plan_only``: the plan saved in ``cfg.output`` instead; ``cfg.plan`` and
    ``cfg.shard``: part K of N of a saved plan written to ``cfg.output`` (:func:`build_part`)."""
    start = time.perf_counter()
    if cfg.plan:
        return build_part(cfg)
    if cfg.layout == "bluemarble":
        from .bluemarble import TileSpec, build_bluemarble

        offset = cfg.tile_px // 2 if cfg.view_offset_px is None else cfg.view_offset_px
        footprint = cfg.tile_px + (2 * offset if cfg.views > 1 else 0)
        spec = TileSpec(
            tile_px=cfg.tile_px,
            block_px=cfg.block_px or 2 * footprint,
            seed=cfg.seed,
            fractions=cfg.fractions,
            map_downscale=cfg.map_downscale,
            views=cfg.views,
            view_offset_px=offset,
        )
        return build_bluemarble(cfg.output, cfg.tiles, spec, cfg.cells, cfg.boundaries, cfg.overwrite, cfg.repo_id)
    if cfg.plan_only:
        plan = plan_build(cfg)
        with atomic_directory(cfg.output, overwrite=cfg.overwrite) as tmp:
            plan.save(tmp)
        return BuildReport(str(cfg.output), {b.split: 0 for b in plan.blocks}, plan.processing, plan.labelling,
                           {n: len(p) for n, p in plan.partitions.items()}, time.perf_counter() - start)  # fmt: skip
    pool = None
    if cfg.engine == "local" and cfg.num_proc > 1:  # the workers start (import geohf) while the plan is made
        from .workers import start_pool

        pool = start_pool(cfg.num_proc, "geohf.data.blocks")
    try:
        plan = plan_build(cfg)
        return write_plan(plan, cfg.output, cfg.overwrite, cfg.engine, cfg.num_proc, cfg.address, start=start,
                          pool=pool)  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def plan_build(cfg: BuildConfig) -> BuildPlan:
    """The plan of a build (every engine's): read the layout's metadata (not the pixels), check the coordinates
    and label them, drop duplicate locations, rebalance, split, fit the geocells on the training rows."""
    if cfg.input is None:
        raise UserError(f"--input is required for layout {cfg.layout!r}")
    names = [f.name for f in fields(DatasetCardFields)]
    unknown = sorted(set(cfg.card) - set(names))
    if unknown:
        raise UserError(f"BuildConfig.card: {', '.join(unknown)}: not a card field; set any of {', '.join(names)}")
    specs = [CellSpec.parse(c) for c in cfg.cells]
    root = Path(cfg.input).resolve()
    log = SkipLog()
    labeller = PointLabeller(cfg.boundaries)
    raw = read_layout(cfg.layout, root, log)
    found = len(raw) + len(log)
    frame = validate_coordinates(raw, labeller, log, cfg.fix_swapped)
    del raw
    trim()  # each stage's freed blocks go back before the next one allocates
    n_disagree, examples = label_disagreements(frame)
    if cfg.dedupe:
        frame = drop_duplicate_locations(frame, log)
    if cfg.balance:
        frame = balance(frame, BalanceSpec.parse(cfg.balance), cfg.seed, log)
    frame = assign_splits(frame, cfg.split_by, cfg.fractions, cfg.seed, cfg.block_deg, cfg.buffer_km, log)
    if frame.empty:
        raise UserError(f"every input was skipped ({len(log)}); see the reasons above — nothing to write")
    trim()
    log.entries = [e.at(relative_path(e.item, root)) for e in log.entries]
    log.fixes = [e.at(relative_path(e.item, root)) for e in log.fixes]

    processing = {"inputs found": found}
    processing.update({f"skipped, {k}": v for k, v in log.counts().items()})
    processing.update({f"fixed, {k}": v for k, v in log.fix_counts().items()})
    processing["kept"] = len(frame)
    labelling = LabellingStats(inside_polygon=0, nearest_polygon=0)  # counted on the rows written
    if "file_country_code" in frame:
        labelling = replace(
            labelling,
            file_label_disagreements=n_disagree,
            examples=tuple(
                LabelDisagreement(**{**e, "source_file": relative_path(e["source_file"], root)}) for e in examples
            ),
        )
    card = DatasetCardFields(
        **STREET_CARD,
        boundaries=boundaries_name(cfg.boundaries),
        max_distance_km=labeller.max_distance_km,
        repo_id=cfg.repo_id or "<org>/street-location-images",
        command=build_command(cfg),
        images_note=images_note(cfg.max_side, cfg.keep_exif),
        split_note=f"Split by {cfg.split_by}"
        + f" (seed {cfg.seed}, fractions {list(cfg.fractions)})"
        + (f", validation/test images within {cfg.buffer_km:g} km of training dropped" if cfg.buffer_km else "")
        + ".",
    )
    card = replace(card, **cfg.card)  # the caller's own fields win
    read = ImageRead("file", check=cfg.image_filter, apply_filter=cfg.filter, max_side=cfg.max_side,
                     keep_exif=cfg.keep_exif, root=str(root))  # fmt: skip
    return plan_labelled_dataset(frame, read, specs, card, processing, labelling, skips=log,
                                 boundaries=labeller.boundaries, rows_per_shard=cfg.rows_per_file)  # fmt: skip


def build_part(cfg: BuildConfig) -> BuildReport:
    """Part K of N (``cfg.shard``) of the plan saved in ``cfg.plan``: the files ``i`` of each split with
    ``i % N == K - 1`` (so part 1 holds a file of every split), written to the folder ``cfg.output`` under their
    final names, for :func:`~geohf.data.shards.merge_shards`."""
    from .execute import finish_folder, run_blocks, save_part
    from .shards import Shard

    start = time.perf_counter()
    if not cfg.shard:
        raise UserError(f"--plan {cfg.plan}: give the part to build with --shard K/N")
    shard = Shard.parse(cfg.shard)
    plan = BuildPlan.load(cfg.plan, rows=False)
    mine = [b for b, block in enumerate(plan.blocks) if block.index % shard.count == shard.index - 1]
    with atomic_directory(cfg.output, overwrite=cfg.overwrite) as tmp:
        results = run_blocks(cfg.plan, plan, mine, tmp / DATA_DIR, cfg.engine, cfg.num_proc, cfg.address)
        report = finish_folder(tmp, plan, results, cfg.output, time.perf_counter() - start,
                               part=(shard.index, shard.count))  # fmt: skip
        save_part(tmp, Path(cfg.plan), plan, (shard.index, shard.count), results)
    return report


def build_command(cfg: BuildConfig) -> str:
    """The ``geohf dataset build`` command line that ``cfg`` stands for (folders by name, defaults left out)."""
    default = BuildConfig(layout=cfg.layout, output=cfg.output)
    words = ["geohf dataset build", f"--layout {cfg.layout}"]
    if cfg.input:
        words.append(f"--input {Path(cfg.input).name}")
    words.append(f"--output {Path(cfg.output).name}")
    if cfg.boundaries and boundaries_name(cfg.boundaries) != boundaries_name(None):
        words.append(f"--boundaries {Path(cfg.boundaries).name}")
    if cfg.cells != default.cells:
        words.append("--cells " + " ".join(cfg.cells))
    for flag, name in (("filter", "filter"), ("dedupe", "dedupe")):
        if not getattr(cfg, name):
            words.append(f"--no-{flag}")
    f, d = cfg.image_filter, default.image_filter
    if f.min_channel_variance != d.min_channel_variance:
        words.append(f"--min-channel-variance {f.min_channel_variance:g}")
    if f.min_laplacian_variance != d.min_laplacian_variance:
        words.append(f"--min-laplacian-variance {f.min_laplacian_variance:g}")
    if cfg.balance:
        words.append(f"--balance {cfg.balance}")
    if cfg.split_by != default.split_by:
        words.append(f"--split-by {cfg.split_by}")
    if tuple(cfg.fractions) != tuple(default.fractions):
        words.append("--fractions " + " ".join(f"{x:g}" for x in cfg.fractions))
    if cfg.split_by == "block" and cfg.block_deg != default.block_deg:
        words.append(f"--block-deg {cfg.block_deg:g}")
    if cfg.buffer_km:
        words.append(f"--buffer-km {cfg.buffer_km:g}")
    if cfg.fix_swapped:
        words.append("--fix-swapped")
    if cfg.max_side:
        words.append(f"--max-side {cfg.max_side}" + (" --keep-exif" if cfg.keep_exif else ""))
    if cfg.seed != default.seed:
        words.append(f"--seed {cfg.seed}")
    return " ".join(words)


def images_note(max_side: int | None, keep_exif: bool = False) -> str:
    """The card's sentence on how the images are stored (what a shrink drops)."""
    if not max_side:
        return "Images are stored as the source files' own bytes (EXIF metadata included, where the file has it)."
    kept = (
        "EXIF is dropped except the GPS block (`--keep-exif`)"
        if keep_exif
        else "EXIF metadata (camera, date, GPS) is dropped; `--keep-exif` keeps the GPS block"
    )
    return (
        f"Images longer than {max_side} px were shrunk (`--max-side {max_side}`) and re-encoded upright "
        f"(EXIF orientation applied to the pixels); {kept}. Smaller images are stored as the source files' own bytes."
    )
