"""The ``geohf`` command: one entry point over the same functions the tests call.

Importing this module (and building the parser) imports no torch, transformers or datasets: every
subcommand imports what it needs inside its function, so ``geohf ... --help`` is quick.

:func:`main` is the one error handler: a :class:`~geohf.errors.UserError` (raised by the commands
and by argument parsing), a missing file or a missing optional extra is one ``error: ...`` line on
stderr and exit code 2; Ctrl-C is exit 130. ``--debug`` (or ``GEOHF_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from pathlib import Path

from . import __version__
from .errors import UserError, check_source, extra_message, missing_extra

COMMANDS_WITH_SUBCOMMANDS = ("dataset", "collect", "index", "convert")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are :class:`UserError` (one line, exit 2 from :func:`main`)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_output(p: argparse.ArgumentParser, **kwargs) -> None:
    p.add_argument("-o", "--output", **kwargs)


def add_revision(p) -> None:
    p.add_argument(
        "--revision", "--dataset-revision", "--dataset_revision", dest="revision", default=None,
        help="dataset revision on the Hub (branch, tag or commit)",
    )  # fmt: skip


def add_batch_size(p, default: int | None = 32) -> None:
    shown = f" (default: {default})" if default is not None else ""
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=default, help="batch" + shown)


def add_bf16(p) -> None:
    p.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: where it is fast)"
    )


BOUNDARIES_HELP = (
    "boundary file, or 'natural-earth-10m' (full-resolution download) or 'lowres' (countries only); "
    "default: $GEOHF_BOUNDARIES, else the Natural Earth admin-1 shipped with geohf"
)


def _check_boundaries(source: str | None) -> None:
    """``--boundaries``: a file, or one of the named sources (full-resolution download, low-res countries)."""
    named = ("natural-earth-10m", "lowres")  # geohf.geo.boundaries.FULL_NAME, LOWRES_NAME (not imported: geopandas)
    if source and source not in named and not Path(source).expanduser().exists():
        raise UserError(f"--boundaries {source}: no such file (or use one of {', '.join(named)})")


def _demo(args: argparse.Namespace) -> int:
    _check_boundaries(args.boundaries)
    if args.minutes <= 0:
        raise UserError("--minutes must be more than 0")
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(
        output=args.output, minutes=args.minutes, seed=args.seed, boundaries=args.boundaries, augment=args.augment
    )
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    for name in ("train_tiles", "validation_tiles", "test_tiles", "image_size", "batch_size", "steps"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    run_demo(cfg)
    return 0


def _dataset_build(args: argparse.Namespace) -> int:
    if args.layout != "bluemarble":
        if not args.input:
            raise UserError(f"geohf dataset build: --layout {args.layout} needs --input FOLDER (the raw images)")
        if not Path(args.input).expanduser().is_dir():
            raise UserError(f"--input {args.input}: no such folder")
    _check_boundaries(args.boundaries)
    if Path(args.output).exists() and not args.overwrite:
        raise UserError(f"--output {args.output}: already exists; pass --overwrite to replace it")
    if abs(sum(args.fractions) - 1) > 1e-6 or min(args.fractions) < 0:
        raise UserError(f"--fractions {' '.join(map(str, args.fractions))}: need three shares >= 0 summing to 1")
    if args.shard:
        from .data.shards import Shard

        Shard.parse(args.shard)
        if args.layout == "bluemarble":
            raise UserError("--shard: the bluemarble layout is built on one machine (it is small); drop --shard")
        if args.balance or args.buffer_km:
            flag = "--balance" if args.balance else "--buffer-km"
            raise UserError(f"--shard {args.shard}: {flag} needs every image's check result at once; drop --shard")
    from .data.balance import BalanceSpec
    from .data.build import CellSpec
    from .data.filters import ImageFilter
    from .data.pipeline import BuildConfig, build_dataset
    from .geo.cells import CELL_FITTERS

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
        shard=args.shard,
        overwrite=args.overwrite,
        repo_id=args.repo_id,
        tiles={"train": args.train, "validation": args.validation, "test": args.test},
        tile_px=args.tile_px,
        block_px=args.block_px,
        map_downscale=args.map_downscale,
        views=args.views,
        view_offset_px=args.view_offset_px,
    )
    report = build_dataset(cfg)
    print(f"wrote {args.output}: {report.splits}, cells {report.partitions}, {report.images_per_second:.0f} images/s")
    skipped = {k: v for k, v in report.processing.items() if k.startswith("skipped")}
    if skipped:
        print("skipped: " + ", ".join(f"{k[9:]} {v}" for k, v in skipped.items()) + " (see skipped.csv)")
    return 0


def _dataset_merge(args: argparse.Namespace) -> int:
    if Path(args.output).exists() and not args.overwrite:
        raise UserError(f"{args.output}: already exists; pass --overwrite to replace it")
    from .data.shards import merge_shards

    report = merge_shards(args.output, args.shards, overwrite=args.overwrite)
    print(f"wrote {args.output}: {report.splits} from {len(args.shards)} shards, cells {report.partitions}")
    return 0


def _dataset_import(args: argparse.Namespace) -> int:
    _check_boundaries(args.boundaries)
    if Path(args.output).exists() and not args.overwrite:
        raise UserError(f"--output {args.output}: already exists; pass --overwrite to replace it")
    if args.source != "osv5m" and not Path(args.input).expanduser().exists():
        raise UserError(f"{args.input}: no such folder or file (the {args.source} images)")
    from .data.sources import ImportConfig, import_source

    cfg = ImportConfig(
        source=args.source,
        input=args.input,
        output=args.output,
        splits=args.split,
        table=args.table,
        images=args.images,
        image_column=args.image_column,
        latitude_column=args.latitude_column,
        longitude_column=args.longitude_column,
        split_column=args.split_column,
        country_column=args.country_column,
        default_split=args.default_split,
        cells=args.cells,
        boundaries=args.boundaries,
        revision=args.revision,
        overwrite=args.overwrite,
        repo_id=args.repo_id,
    )
    result = import_source(cfg)
    report = result.report
    print(
        f"wrote {args.output}: {report.splits} from {result.rows_in_source} rows and {result.images_found} images "
        f"({result.report.images_per_second:.0f} images/s)"
    )
    print(f"rows without an image: {result.rows_without_image}; images without a row: {result.images_without_row}")
    for shard, what in result.shards.items():
        print(f"shard {shard}: {what}")
    skipped = {k: v for k, v in report.processing.items() if k.startswith("skipped")}
    if skipped:
        print("skipped: " + ", ".join(f"{k[9:]} {v}" for k, v in skipped.items()) + " (see skipped.csv)")
    return 0


def _dataset_push(args: argparse.Namespace) -> int:
    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder}: no such dataset folder")
    from .hub.publish import push_folder

    info = push_folder(args.folder, args.repo_id, kind="dataset", private=args.private)
    print(f"pushed {args.folder} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model = check_source(args.model, "model")
    dataset = check_source(args.dataset, "dataset", args.revision)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    from .data.folder import load_geo_dataset
    from .evaluation.report import write_report
    from .inference.predictor import GeoPredictor

    ds = load_geo_dataset(dataset, args.revision)
    if args.split not in ds:
        raise UserError(f"--dataset {args.dataset} has no {args.split!r} split; it has {list(ds)} (use --split)")
    try:
        predictor = GeoPredictor(model, bf16=args.bf16, retrieval=args.retrieval, tta=args.tta)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the model ({one_line(err)})") from err
    if args.benchmark:
        return _evaluate_benchmark(args, predictor, ds, dataset)
    metrics = write_report(
        predictor,
        ds,
        args.output,
        split=args.split,
        batch_size=args.batch_size,
        human_results=args.human,
        title=Path(args.model).name,
    )
    from .evaluation.evaluation import Evaluation

    table = Evaluation(split=args.split, sizes=metrics["sizes"], rows=metrics["results"]).table()
    print(table)
    print(
        f"wrote {args.output}: metrics.json, report.md, predictions.parquet, " + ", ".join(metrics["pictures"].values())
    )
    return 0


def _evaluate_benchmark(args: argparse.Namespace, predictor, ds, dataset: str) -> int:
    """``geohf evaluate --benchmark``: the papers' table for the model, beside their published rows."""
    import json

    from .evaluation.benchmark import evaluate_benchmark

    one_split_folder = dataset if Path(dataset).is_dir() and len(ds) == 1 else None
    result, frame = evaluate_benchmark(
        predictor,
        ds[args.split],
        args.benchmark,
        batch_size=args.batch_size,
        model_name=Path(args.model).name,
        dataset_dir=one_split_folder,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    table = result.table()
    print(table)
    for name, write in (
        ("benchmark.json", lambda p: p.write_text(json.dumps(result.to_dict(), indent=2))),
        ("benchmark.txt", lambda p: p.write_text(table + "\n", encoding="utf-8")),
        ("benchmark_predictions.parquet", lambda p: frame.to_parquet(p)),
    ):
        tmp = out / f".{name}.partial"
        write(tmp)
        os.replace(tmp, out / name)
    print(f"wrote {args.output}: benchmark.json, benchmark.txt, benchmark_predictions.parquet")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    if not Path(args.model).expanduser().is_dir():
        raise UserError(
            f"--model {args.model}: not a local model folder; the index is written into the folder "
            "(download the model, build the index, push the folder)"
        )
    model = check_source(str(Path(args.model).expanduser()), "model")
    dataset = check_source(args.dataset, "dataset", args.revision)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    from .inference.retrieval import SEARCHES

    if args.search not in SEARCHES:
        raise UserError(f"--search {args.search}: unknown; choose from {', '.join(SEARCHES)}")
    from .data.folder import load_geo_dataset
    from .inference.predictor import GeoPredictor
    from .inference.retrieval import build_index

    try:
        ds = load_geo_dataset(dataset, args.revision)
    except ValueError as err:  # datasets refuses a split without rows while loading the others
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(err))
        if empty:
            raise UserError(
                f"--dataset {args.dataset}: the {empty.group(1)!r} split is empty: nothing to index"
            ) from None
        raise UserError(f"--dataset {args.dataset}: cannot load it ({one_line(err)})") from None
    for flag, split in (("--split", args.split), ("--tune-split", args.tune_split)):
        if split != "none" and split not in ds and (flag == "--split" or args.tune_split != "validation"):
            raise UserError(f"--dataset {args.dataset} has no {split!r} split; it has {list(ds)} (use {flag})")
    if args.max_shift_km < 0:
        raise UserError("--max-shift-km must be at least 0")
    if args.tune_split == "test":
        raise UserError("--tune-split test: tuning on the test split would leak it into its scores; use validation")
    if args.tune_split == args.split:
        raise UserError(f"--tune-split {args.tune_split}: tune on another split than the gallery's (validation)")
    try:
        predictor = GeoPredictor(model, bf16=args.bf16, retrieval=False)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the model ({one_line(err)})") from err
    index = build_index(
        predictor, ds[args.split], args.search, args.batch_size, dataset_name=args.dataset, split=args.split
    )
    index.params.max_shift_km = args.max_shift_km
    params = "default parameters"
    if args.tune_split in ds:
        from .evaluation.evaluation import tune_retrieval

        tuned = tune_retrieval(predictor, ds[args.tune_split], index)
        p = tuned["params"]
        params = (
            f"tuned on {args.tune_split!r}: top_k={p.top_k}, temperature={p.temperature}, neighbours={p.neighbours}, "
            f"median {tuned['median_km'][(p.top_k, p.temperature, p.neighbours)]:,.0f} km "
            f"(unrefined {tuned['unrefined_median_km']:,.0f} km)"
        )
    elif args.tune_split != "none":
        params = f"default parameters (the dataset has no {args.tune_split!r} split to tune them on)"
    folder = index.save(model)
    info = index.info
    what = f"{info.size:,} {info.embed_dim}-d embeddings of {args.split!r}, search {info.search}"
    print(f"wrote {folder}: {what}; {params}")
    return 0


def _convert_geoclip(args: argparse.Namespace) -> int:
    if Path(args.output).expanduser().exists() and not args.overwrite:
        raise UserError(f"{args.output}: already exists; pass --overwrite to replace it")
    from .modeling.convert import convert_geoclip

    print(convert_geoclip(args.output, clip=args.clip, gallery=args.gallery, overwrite=args.overwrite).summary())
    return 0


def _train(argv: list[str]) -> int:
    from .training.cli import main as train_main

    train_main(argv)
    return 0


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def _command(argv: list[str]) -> str:
    """``geohf predict``, ``geohf dataset build``...: the command ``argv`` names, for messages."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if words and words[0] not in COMMANDS_WITH_SUBCOMMANDS:
        words = words[:1]
    return " ".join(["geohf", *words])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="geohf", description="Image geolocation on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"geohf {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of errors (or GEOHF_DEBUG=1; for train: geohf --debug train ...)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the Blue Marble dataset, train, evaluate and predict (offline)")
    add_output(demo, default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget in minutes (default: 10)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train exactly N steps (reproducible; default: as many as fit in --minutes)",
    )
    demo.add_argument("--boundaries", default=None, help=BOUNDARIES_HELP)
    demo.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="train without the camera augmentations (random downscale, JPEG, blur, white balance)",
    )
    demo.add_argument("--train-tiles", dest="train_tiles", type=int)
    demo.add_argument("--validation-tiles", dest="validation_tiles", type=int)
    demo.add_argument("--test-tiles", dest="test_tiles", type=int)
    demo.add_argument("--image-size", dest="image_size", type=int)
    add_batch_size(demo, None)
    demo.set_defaults(func=_demo)

    from .inference.cli import add_predict_parser

    add_predict_parser(sub)

    ds = sub.add_parser("dataset", help="build datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    build = ds_sub.add_parser("build", help="build a labelled Hub-ready dataset folder from raw images")
    build.add_argument(
        "--layout", required=True, choices=["lost-and-found", "grid-folders", "imagefolder", "bluemarble"]
    )
    build.add_argument("--input", help="raw folder (not for bluemarble)")
    add_output(build, required=True, help="dataset folder to write")
    build.add_argument("--boundaries", default=None, help=BOUNDARIES_HELP)
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
    build.add_argument("--split-by", dest="split_by", choices=["location", "block"], default="location")
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
    build.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="build shard K of N (1-based) only, e.g. on machine K of N; join the N folders with geohf dataset merge",
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
    build.set_defaults(func=_dataset_build)

    merge = ds_sub.add_parser(
        "merge", help="join the folders of every shard of a sharded build (--shard K/N) into one dataset folder"
    )
    merge.add_argument("output", help="dataset folder to write")
    merge.add_argument("shards", nargs="+", help="the shard folders, one per K")
    merge.add_argument("--overwrite", action="store_true")
    merge.set_defaults(func=_dataset_merge)

    imp = ds_sub.add_parser(
        "import",
        help="import OSV-5M, im2gps3k, YFCC4k, YFCC26k, MP-16 or any table + images as a labelled dataset folder",
    )
    imp.add_argument("source", choices=["osv5m", "im2gps3k", "yfcc4k", "yfcc26k", "mp16", "table"])
    imp.add_argument(
        "input", help="the source's folder (osv5m: also a Hub repo id, e.g. osv5m/osv5m or osv5m/osv5m-wds)"
    )
    add_output(imp, required=True, help="dataset folder to write")
    imp.add_argument("--split", nargs="+", default=None, help="osv5m: splits to import (train test val; default: all)")
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
    imp.add_argument("--boundaries", default=None, help=BOUNDARIES_HELP)
    add_revision(imp)
    imp.add_argument("--repo-id", dest="repo_id", default=None, help="repo id shown in the card's examples")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=_dataset_import)

    push = ds_sub.add_parser("push", help="upload a dataset folder to the Hub in one commit")
    push.add_argument("folder")
    push.add_argument("--repo-id", dest="repo_id", required=True)
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_dataset_push)

    ev = sub.add_parser("evaluate", help="metrics, pictures and a report for a model on a dataset split")
    ev.add_argument("--model", required=True, help="model folder or Hub id")
    ev.add_argument("--dataset", required=True, help="dataset folder or Hub repo id")
    add_revision(ev)
    ev.add_argument("--split", default="test", help="dataset split (default: test)")
    add_output(ev, required=True, help="folder for metrics.json, report.md, pictures")
    add_batch_size(ev)
    ev.add_argument("--human", default=None, help="results file of the app's game: adds a 'human' row")
    ev.add_argument(
        "--benchmark",
        choices=["im2gps3k", "yfcc4k", "osv5m"],
        default=None,
        help="score by the papers' protocol (km thresholds, GeoScore, OSV-5M's reverse-geocoded country/region/"
        "sub-region/city accuracy and geohf's polygon accuracy) beside their published rows",
    )
    add_bf16(ev)
    from .inference.cli import add_retrieval, add_tta

    add_retrieval(ev)
    add_tta(ev)
    ev.set_defaults(func=_evaluate)

    idx = sub.add_parser("index", help="retrieval indexes (PIGEON-style refinement of the coordinates)")
    idx_sub = idx.add_subparsers(dest="index_command", required=True)
    ib = idx_sub.add_parser(
        "build",
        help="embed a dataset split into the model folder's retrieval index (index/); predictions then refine with it",
    )
    ib.add_argument("--model", required=True, help="local model folder (the index is written into it)")
    ib.add_argument("--dataset", required=True, help="dataset folder or Hub repo id")
    add_revision(ib)
    ib.add_argument("--split", default="train", help="the split to index (default: train)")
    ib.add_argument(
        "--tune-split", dest="tune_split", default="validation",
        help="tune top_k / temperature / neighbours on this split (default: validation, when there is one; "
        "'none': keep the defaults); never the test split",
    )  # fmt: skip
    ib.add_argument(
        "--max-shift-km", dest="max_shift_km", type=float, default=1000.0,
        help="never move a guess further than this from the head's (default: 1000, as PIGEON)",
    )  # fmt: skip
    add_batch_size(ib, 64)
    ib.add_argument(
        "--search", default="auto",
        help="exact (matmul), faiss (IVF), usearch (HNSW) or auto: exact below 50,000 entries, else usearch "
        "(default: auto; benchmarks/retrieval.py)",
    )  # fmt: skip
    add_bf16(ib)
    ib.set_defaults(func=_index_build)

    conv = sub.add_parser("convert", help="published geolocation models as geohf model folders")
    conv_sub = conv.add_subparsers(dest="convert_command", required=True)
    cg = conv_sub.add_parser(
        "geoclip",
        help="GeoCLIP (Vivanco et al., NeurIPS 2023) as released: CLIP ViT-L/14 + its image MLP, location encoder, "
        "logit scale and 100K GPS gallery (from the geoclip wheel)",
        description="Write GeoCLIP as a geohf model folder: pipeline('image-geolocation', model=OUTPUT) then "
        "predicts its best gallery point, with country, region and radius. Needs pip install --no-deps "
        "geoclip==1.3.0, and the Hub for the CLIP tower (or --clip LOCAL_FOLDER).",
    )
    cg.add_argument("output", metavar="OUTPUT", help="model folder to write")
    cg.add_argument(
        "--clip", default="openai/clip-vit-large-patch14",
        help="the CLIP checkpoint (Hub id or local folder of a full CLIPModel; default: openai/clip-vit-large-patch14, "
        "GeoCLIP's)",
    )  # fmt: skip
    cg.add_argument(
        "--gallery", default="geoclip",
        help="'geoclip' (GeoCLIP's 100K GPS points; default) or a CSV with LAT, LON columns (a subset or another "
        "gallery)",
    )  # fmt: skip
    cg.add_argument("--overwrite", action="store_true", help="replace OUTPUT (only once the new folder is complete)")
    cg.set_defaults(func=_convert_geoclip)

    from .app.cli import add_app_parser
    from .collect.cli import add_collect_parser
    from .export.cli import add_export_parser

    add_collect_parser(sub)
    add_app_parser(sub)
    add_export_parser(sub)

    sub.add_parser("train", help="fine-tune a model (same flags as scripts/train.py; --help for all)", add_help=False)
    return parser


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without geohf's ``--debug`` (only leading ones for ``train``: its ``--debug`` is transformers')."""
    debug = os.environ.get("GEOHF_DEBUG", "").lower() not in ("", "0", "false", "no")
    rest = list(argv)
    while rest[:1] == ["--debug"]:
        rest.pop(0)
        debug = True
    end = rest.index("--") if "--" in rest else len(rest)
    if rest[:1] != ["train"] and "--debug" in rest[:end]:
        rest = [a for a in rest[:end] if a != "--debug"] + rest[end:]
        debug = True
    return rest, debug


def _run(argv: list[str]) -> int:
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# how writers that are not Python's (Arrow, safetensors) report the same errnos
DISK_FULL_TEXT = re.compile(r"(os error|errno) ?(28|27|122)\b|No space left on device|File too large", re.I)


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a write refused for want of space: ENOSPC, EFBIG, EDQUOT."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        if DISK_FULL_TEXT.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    """Run ``geohf ARGV``; user errors are one ``error:`` line and exit code 2 (``--debug``: traceback)."""
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, ImportError) as err:
        extra = missing_extra(err)
        if debug or (isinstance(err, ImportError) and extra is None):
            raise  # a broken install or a bug: the traceback is the useful report
        if extra is not None:
            message = extra_message(_command(argv), *extra)
        elif isinstance(err, FileNotFoundError) and err.filename is not None:
            message = f"{err.filename}: {err.strerror or 'no such file or directory'}"
        else:
            message = one_line(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug or not disk_full(err):
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        what = getattr(err, "strerror", None) or one_line(err)
        print(f"\nerror: {where}{what}: the disk is full (or a file size limit was hit); nothing half-written "
              "is kept: free space and run the same command again", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
