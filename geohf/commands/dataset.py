"""``geohf dataset build | merge | import | push``: labelled, Hub-ready dataset folders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..data.import_config import ImportConfig
from ..data.names import LAYOUT_NAMES, SOURCES, SPLIT_BY
from ..errors import UserError, one_line
from ..malloc import use_build_allocators
from .command import exclusive, set_command
from .flags import add_boundaries, add_engine, add_output, add_revision, check_boundaries, check_new_output


@dataclass
class BuildArguments:
    output: str
    layout: str | None = None
    input: str | None = None
    boundaries: str | None = None
    cells: list[str] = field(default_factory=lambda: ["semantic", "quadtree"])
    filter: bool = True
    min_channel_variance: float = 100.0
    min_laplacian_variance: float = 15.0
    dedupe: bool = True
    balance: str | None = None
    split_by: str = "location"
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    block_deg: float = 1.0
    buffer_km: float = 0.0
    fix_swapped: bool = False
    max_side: int | None = None
    keep_exif: bool = False
    num_proc: int = 1
    engine: str = "local"
    address: str | None = None
    plan_only: bool = False
    plan: str | None = None
    shard: str | None = None
    seed: int = 0
    repo_id: str | None = None
    overwrite: bool = False
    train: int = 4000
    validation: int = 500
    test: int = 500
    tile_px: int = 64
    block_px: int | None = None
    map_downscale: float = 1.0
    views: int = 1
    view_offset_px: int | None = None


@dataclass
class MergeArguments:
    output: str
    shards: list[str]
    overwrite: bool = False


@dataclass
class PushArguments:
    folder: str
    repo_id: str
    private: bool = False


def _print_skipped(processing: dict) -> None:
    skipped = {k: v for k, v in processing.items() if k.startswith("skipped")}
    if skipped:
        print("skipped: " + ", ".join(f"{k[9:]} {v}" for k, v in skipped.items()) + " (see skipped.csv)")


@exclusive("output", "geohf dataset build")
def build_command(args: BuildArguments) -> int:
    if args.shard:
        from ..data.shards import Shard

        Shard.parse(args.shard)
    if args.plan:
        return _build_part(args)
    if args.shard:
        raise UserError(
            f"--shard {args.shard}: runs part K of a saved plan; make the plan once with --plan-only, then build each "
            f"part with --plan PLAN --shard {args.shard}"
        )
    if not args.layout:
        raise UserError("geohf dataset build: --layout is required (or --plan PLAN --shard K/N: a part of a plan)")
    if args.layout == "bluemarble" and (args.engine != "local" or args.plan_only):
        flag = "--plan-only" if args.plan_only else f"--engine {args.engine}"
        raise UserError(f"{flag}: the bluemarble layout is built in one process (it is small); drop {flag}")
    if args.layout != "bluemarble":
        if not args.input:
            raise UserError(f"geohf dataset build: --layout {args.layout} needs --input FOLDER (the raw images)")
        if not Path(args.input).expanduser().is_dir():
            raise UserError(f"--input {args.input}: no such folder")
    check_boundaries(args.boundaries)
    check_new_output(args.output, args.overwrite)
    if abs(sum(args.fractions) - 1) > 1e-6 or min(args.fractions) < 0:
        raise UserError(f"--fractions {' '.join(map(str, args.fractions))}: need three shares >= 0 summing to 1")
    from ..data.balance import BalanceSpec
    from ..data.build import CellSpec
    from ..data.quality import ImageFilter
    from ..data.stages import BuildConfig, build_dataset
    from ..geo.cells import CELL_FITTERS

    specs = [("--cells", c, CellSpec.parse) for c in args.cells] + [("--balance", args.balance, BalanceSpec.parse)]
    for flag, value, parse in specs:
        try:
            spec = parse(value) if value else None
        except ValueError as err:
            raise UserError(f"{flag} {value}: {one_line(err)}") from err
        if flag == "--cells" and spec.kind not in CELL_FITTERS:
            raise UserError(f"--cells {value}: unknown kind {spec.kind!r}; choose from {sorted(CELL_FITTERS)}")

    cfg = BuildConfig(
        layout=args.layout,
        input=args.input,
        output=args.output,
        boundaries=args.boundaries,
        cells=args.cells,
        filter=args.filter,
        image_filter=ImageFilter(args.min_channel_variance, args.min_laplacian_variance),
        dedupe=args.dedupe,
        balance=args.balance,
        split_by=args.split_by,
        fractions=tuple(args.fractions),
        block_deg=args.block_deg,
        buffer_km=args.buffer_km,
        fix_swapped=args.fix_swapped,
        max_side=args.max_side,
        keep_exif=args.keep_exif,
        seed=args.seed,
        num_proc=args.num_proc,
        engine=args.engine,
        address=args.address,
        plan_only=args.plan_only,
        overwrite=args.overwrite,
        repo_id=args.repo_id,
        tiles={"train": args.train, "validation": args.validation, "test": args.test},
        tile_px=args.tile_px,
        block_px=args.block_px,
        map_downscale=args.map_downscale,
        views=args.views,
        view_offset_px=args.view_offset_px,
    )
    use_build_allocators()  # freed columns go back to the system
    report = build_dataset(cfg)
    if args.plan_only:
        print(f"wrote the plan {args.output}: {report.processing.get('kept', 0)} images to write, cells "
              f"{report.partitions}; build its parts with --plan {args.output} --shard K/N")  # fmt: skip
        return 0
    print(f"wrote {args.output}: {report.splits}, cells {report.partitions}, {report.images_per_second:.0f} images/s")
    _print_skipped(report.processing)
    return 0


def _build_part(args: BuildArguments) -> int:
    """``--plan PLAN --shard K/N``: part K of a saved plan (the plan's settings; the other flags are not used)."""
    if not args.shard:
        raise UserError(f"--plan {args.plan}: give the part to build with --shard K/N (e.g. --shard 1/4)")
    if not Path(args.plan).is_dir():
        raise UserError(f"--plan {args.plan}: no such folder; make it with geohf dataset build ... --plan-only")
    check_new_output(args.output, args.overwrite)
    from ..data.stages import BuildConfig, build_dataset

    cfg = BuildConfig(layout="plan", output=args.output, plan=args.plan, shard=args.shard, num_proc=args.num_proc,
                      engine=args.engine, address=args.address, overwrite=args.overwrite)  # fmt: skip
    use_build_allocators()  # freed columns go back to the system
    report = build_dataset(cfg)
    print(f"wrote part {args.shard} of {args.plan} to {args.output}: {report.splits}")
    _print_skipped(report.processing)
    return 0


@exclusive("output", "geohf dataset merge")
def merge_command(args: MergeArguments) -> int:
    check_new_output(args.output, args.overwrite, flag=None)
    from ..data.shards import merge_shards

    report = merge_shards(args.output, args.shards, overwrite=args.overwrite)
    print(f"wrote {args.output}: {report.splits} from {len(args.shards)} shards, cells {report.partitions}")
    return 0


@exclusive("output", "geohf dataset import")
def import_command(args: ImportConfig) -> int:
    check_boundaries(args.boundaries)
    check_new_output(args.output, args.overwrite)
    if args.source != "osv5m" and not Path(args.input).expanduser().exists():
        raise UserError(f"{args.input}: no such folder or file (the {args.source} images)")
    from ..data.sources import import_source

    cfg = args
    use_build_allocators()  # freed columns go back to the system
    result = import_source(cfg)
    report = result.report
    print(
        f"wrote {args.output}: {report.splits} from {result.rows_in_source} rows and {result.images_found} images "
        f"({result.report.images_per_second:.0f} images/s)"
    )
    print(f"rows without an image: {result.rows_without_image}; images without a row: {result.images_without_row}")
    for shard, what in result.shards.items():
        print(f"shard {shard}: {what}")
    _print_skipped(report.processing)
    return 0


def push_command(args: PushArguments) -> int:
    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder}: no such dataset folder")
    from ..hub.publish import push_folder

    info = push_folder(args.folder, args.repo_id, kind="dataset", private=args.private)
    print(f"pushed {args.folder} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


def _add_build(ds_sub) -> None:
    build = ds_sub.add_parser("build", help="build a labelled Hub-ready dataset folder from raw images")
    build.add_argument("--layout", choices=LAYOUT_NAMES, help="the raw layout (required, except with --plan)")
    build.add_argument("--input", help="raw folder (not for bluemarble)")
    add_output(build, required=True, help="dataset folder to write")
    add_boundaries(build)
    build.add_argument(
        "--cells",
        nargs="+",
        default=["semantic", "quadtree"],
        help="partitions NAME=KIND:k=v,... e.g. semantic:min_samples=50 quadtree:max_samples=100 fishnet:cell_deg=2 "
        "semantic_optics:max_samples=1000 (PIGEON's OPTICS + Voronoi cells)",
    )
    build.add_argument(
        "--filter",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drop dark/blank and blurry images (undecodable ones are always dropped)",
    )
    build.add_argument("--min-channel-variance", dest="min_channel_variance", type=float, default=100.0)
    build.add_argument("--min-laplacian-variance", dest="min_laplacian_variance", type=float, default=15.0)
    build.add_argument(
        "--dedupe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only the first location at each coordinate",
    )
    build.add_argument("--balance", default=None, help="reference:FILE[,min_share=..,slack=..] or cap:N")
    build.add_argument("--split-by", dest="split_by", choices=SPLIT_BY, default="location")
    build.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    build.add_argument("--block-deg", dest="block_deg", type=float, default=1.0, help="block size for --split-by block")
    build.add_argument(
        "--buffer-km",
        dest="buffer_km",
        type=float,
        default=0.0,
        help="drop validation/test images this close to a training image",
    )
    build.add_argument(
        "--fix-swapped",
        dest="fix_swapped",
        action="store_true",
        help="swap latitude/longitude where only the swapped order lands on land (reported)",
    )
    build.add_argument(
        "--max-side",
        dest="max_side",
        type=int,
        default=None,
        help="shrink images longer than N px, re-encoded upright (EXIF orientation applied); their EXIF (camera, "
        "date, GPS) is dropped unless --keep-exif (default: store the files' own bytes)",
    )
    build.add_argument(
        "--keep-exif",
        dest="keep_exif",
        action="store_true",
        help="with --max-side: copy the GPS block of the EXIF into the shrunk images",
    )
    build.add_argument(
        "--num-proc", dest="num_proc", type=int, default=1, help="processes checking (decoding) the images"
    )
    add_engine(build)
    build.add_argument(
        "--plan-only",
        dest="plan_only",
        action="store_true",
        help="write the build's plan (labels, duplicates, split, cells: no image read) to --output, for --plan",
    )
    build.add_argument(
        "--plan",
        default=None,
        help="a plan written by --plan-only: build part --shard K/N of it (its settings; layout flags unused)",
    )
    build.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="with --plan: build part K of N (1-based) only, e.g. on machine K of N; join the N folders with "
        "geohf dataset merge",
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--repo-id", dest="repo_id", default=None, help="repo id shown in the card's examples")
    build.add_argument("--overwrite", action="store_true")
    build.add_argument("--train", type=int, default=4000, help="bluemarble: training tiles")
    build.add_argument("--validation", type=int, default=500, help="bluemarble: validation tiles")
    build.add_argument("--test", type=int, default=500, help="bluemarble: test tiles")
    build.add_argument("--tile-px", dest="tile_px", type=int, default=64, help="bluemarble: tile side")
    build.add_argument("--block-px", dest="block_px", type=int, default=None, help="bluemarble: split block side")
    build.add_argument(
        "--map-downscale",
        dest="map_downscale",
        type=float,
        default=1.0,
        help="bluemarble: cut the same tiles from the mosaic downsampled this many times and upsampled back "
        "(a coarser rendering, for resolution-shift tests)",
    )
    build.add_argument(
        "--views",
        type=int,
        default=1,
        help="bluemarble: tiles per place (V > 1: V tiles around each place, sharing its location_id)",
    )
    build.add_argument(
        "--view-offset-px",
        dest="view_offset_px",
        type=int,
        default=None,
        help="bluemarble --views: distance of each view's centre from the place (default: half a tile)",
    )
    set_command(build, BuildArguments, build_command)


def _add_merge(ds_sub) -> None:
    merge = ds_sub.add_parser(
        "merge", help="join the folders of every part of a saved plan (--plan PLAN --shard K/N) into one dataset folder"
    )
    merge.add_argument("output", help="dataset folder to write")
    merge.add_argument("shards", nargs="+", help="the shard folders, one per K")
    merge.add_argument("--overwrite", action="store_true")
    set_command(merge, MergeArguments, merge_command)


def _add_import(ds_sub) -> None:
    imp = ds_sub.add_parser(
        "import",
        help="import OSV-5M, im2gps3k, YFCC4k, YFCC26k, MP-16 or any table + images as a labelled dataset folder",
    )
    imp.add_argument("source", choices=SOURCES)
    imp.add_argument(
        "input", help="the source's folder (osv5m: also a Hub repo id, e.g. osv5m/osv5m or osv5m/osv5m-wds)"
    )
    add_output(imp, required=True, help="dataset folder to write")
    imp.add_argument(
        "--split", dest="splits", nargs="+", default=None, help="osv5m: splits to import (train test val; default: all)"
    )
    imp.add_argument("--table", default=None, help="the metadata table (default: the source's own file name)")
    imp.add_argument("--images", default=None, help="image folder or shard (default: the input folder)")
    imp.add_argument("--image-column", dest="image_column", default=None, help="table: the image-name column")
    imp.add_argument("--latitude-column", dest="latitude_column", default=None)
    imp.add_argument("--longitude-column", dest="longitude_column", default=None)
    imp.add_argument("--split-column", dest="split_column", default=None, help="table: column naming each row's split")
    imp.add_argument(
        "--country-column",
        dest="country_column",
        default=None,
        help="table: a country name or code; rows with it and no coordinates are kept for country heads",
    )
    imp.add_argument("--default-split", dest="default_split", default=None, help="table: split of every row")
    imp.add_argument("--cells", nargs="*", default=[], help="geocell partitions to fit (as for build; default: none)")
    add_boundaries(imp)
    add_revision(imp)
    imp.add_argument("--repo-id", dest="repo_id", default=None, help="repo id shown in the card's examples")
    imp.add_argument("--overwrite", action="store_true")
    add_engine(imp)
    set_command(imp, ImportConfig, import_command)


def _add_push(ds_sub) -> None:
    push = ds_sub.add_parser("push", help="upload a dataset folder to the Hub in one commit")
    push.add_argument("folder")
    push.add_argument("--repo-id", dest="repo_id", required=True)
    push.add_argument("--private", action="store_true")
    set_command(push, PushArguments, push_command)


def register_subcommand(subparsers) -> None:
    ds = subparsers.add_parser("dataset", help="build datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    for add in (_add_build, _add_merge, _add_import, _add_push):
        add(ds_sub)
