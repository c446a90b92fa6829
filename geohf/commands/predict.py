"""``geohf predict``: where images were taken, as JSON lines, CSV or Parquet; maps; EXIF copies."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from ..errors import UserError, check_source, counted
from ..inference.names import FORMATS
from ..malloc import BATCH, set_malloc
from .command import exclusive, set_command
from .flags import (
    add_batch_size,
    add_bf16,
    add_engine,
    add_image_column,
    add_retrieval,
    add_revision,
    add_top_k,
    add_tta,
)

EPILOG = """examples:
  geohf predict --model runs/demo/model photo.jpg holiday/ "shots/**/*.png" https://example.org/a.jpg
  geohf predict --model M --dataset data/bm --split test --output pred.parquet --map pred.html
  geohf predict --model M views/ --group-pattern '(?P<location>[^/]+)_[NESW]\\.jpg$'
  geohf predict --model M photo.jpg --write-exif estimated/ --map photo.html
"""


@dataclass
class PredictArguments:
    model: str
    inputs: list[str] = field(default_factory=list)
    dataset: str | None = None
    split: str = "test"
    image_column: str = "image"
    revision: str | None = None
    group_pattern: str | None = None
    group_csv: str | None = None
    output: str | None = None
    format: str | None = None
    top_k: int = 5
    mass: float = 0.5
    map: str | None = None
    map_offline: bool = False
    write_exif: str | None = None
    batch_size: int = 32
    workers: int | None = None
    streams: int | None = None
    bf16: bool | None = None
    channels_last: bool = True
    device: str | None = None
    retrieval: bool = True
    recursive: bool = True
    quiet: bool = False
    tta: str | None = None
    engine: str = "local"
    address: str | None = None
    actors: int | None = None


def default_workers(n_items: int, batch_size: int) -> int:
    """DataLoader workers: none for a batch or two or on two cores or fewer (decoding processes then
    take the cores the model needs: 2 workers cost 20% on a 2-core machine, benchmarks/predict_throughput.py),
    else up to 4 decoding processes beside the model."""
    cores = os.cpu_count() or 1
    return 0 if n_items <= 2 * batch_size or cores <= 2 else min(4, cores // 2)


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _inputs(args: PredictArguments, dataset: str | None):
    from ..inference.inputs import collect_inputs, dataset_inputs, group_by_csv, group_by_pattern

    if dataset:
        return dataset_inputs(dataset, args.split, args.image_column, args.revision)
    if args.group_csv:
        return group_by_csv(args.group_csv)
    inputs = collect_inputs(args.inputs, recursive=args.recursive)
    return group_by_pattern(inputs, args.group_pattern) if args.group_pattern else inputs


def _check(args: PredictArguments) -> str | None:
    """A usage error, or ``None``."""
    sources = sum(map(bool, (args.inputs, args.dataset, args.group_csv)))
    if sources == 0:
        return "nothing to predict: give image files, folders, globs or URLs, --dataset, or --group-csv"
    if sources > 1:
        return "give images, --dataset or --group-csv, not several (--group-csv lists its own files)"
    if args.group_pattern and not args.inputs:
        return "--group-pattern groups the image inputs; give some"
    if args.batch_size < 1 or args.top_k < 1:
        return "--batch-size and --top-k must be at least 1"
    return None


@exclusive("output", "geohf predict")
def predict_command(args: PredictArguments) -> int:
    """Predict the inputs, stream the records, report every unreadable image; 1 if any failed."""
    set_malloc(BATCH)
    problem = _check(args)
    if problem:
        return _error(problem)
    if args.engine == "ray":
        return _predict_ray(args)
    try:
        model = check_source(args.model, "model")
        dataset = check_source(args.dataset, "dataset", args.revision) if args.dataset else None
    except UserError as err:
        return _error(str(err))
    from ..inference.maps import cell_polygons
    from ..inference.predictor import GeoPredictor
    from ..inference.stream import PredictOptions, print_error, run_prediction
    from ..inference.writers import output_format

    if output_format(args.output, args.format) == "parquet" and args.output is None:
        return _error("Parquet cannot go to stdout; pass --output FILE.parquet")
    try:
        inputs = _inputs(args, dataset)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    from ..modeling.image_processing_geohf import parse_tta

    try:
        tta = parse_tta(args.tta)
    except UserError as err:
        return _error(str(err))
    try:
        predictor = GeoPredictor(
            model,
            tta=tta,
            top_k=args.top_k,
            bf16=args.bf16,
            channels_last=args.channels_last,
            device=args.device,
            mass=args.mass,
            retrieval=args.retrieval,
        )
    except (OSError, ValueError) as err:
        return _error(f"--model {args.model}: cannot load the model ({' '.join(str(err).split())})")
    polygons = cell_polygons(predictor) if args.map and len(inputs.items) == 1 else None
    workers = default_workers(len(inputs.items), args.batch_size) if args.workers is None else args.workers
    options = PredictOptions(
        batch_size=args.batch_size,
        num_workers=workers,
        streams=args.streams,
        output=args.output or "-",
        format=args.format,
        write_exif=args.write_exif,
        map=args.map,
        map_polygons=polygons,
        map_offline=args.map_offline,
        progress=not args.quiet,
    )
    run = run_prediction(predictor, inputs, options, on_error=print_error)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output is not None:
        print(f"wrote {counted(run.predicted, 'prediction')} to {args.output}", file=sys.stderr)
    if args.write_exif:
        copies = counted(run.exif_copies, "copy", "copies")
        print(f"wrote {copies} with the estimated location to {args.write_exif}", file=sys.stderr)
    if run.map:
        print(f"wrote the map to {run.map}", file=sys.stderr)
    if run.errors:
        print(f"{len(run.errors)} of {counted(run.images, 'image')} could not be read", file=sys.stderr)
        return 1
    return 0


def _predict_ray(args: PredictArguments) -> int:
    """``--engine ray``: the dataset split's records into the Parquet folder ``--output`` (geohf.inference.ray)."""
    if args.actors is not None and args.actors < 1:
        raise UserError("--actors must be at least 1")
    local_only = {
        "image files": args.inputs,
        "--group-csv": args.group_csv,
        "--map": args.map,
        "--write-exif": args.write_exif,
    }
    used = [name for name, value in local_only.items() if value]
    if not args.dataset or used:
        what = ", ".join(used) or "no --dataset"
        return _error(
            f"--engine ray predicts a dataset split (--dataset) into a Parquet folder; {what}: use --engine local"
        )
    if args.output is None or args.format not in (None, "parquet"):
        return _error("--engine ray writes Parquet: pass --output FOLDER (records as Parquet files)")
    from ..inference.ray import RayPredictOptions, predict_split_ray, ray_source

    dataset = ray_source(args.dataset, args.revision)
    if "://" not in dataset:
        dataset = check_source(dataset, "dataset")
    model = check_source(args.model, "model")
    predictor = {"top_k": args.top_k, "bf16": args.bf16, "device": args.device, "mass": args.mass}
    predictor |= {"retrieval": args.retrieval, "tta": args.tta}
    options = RayPredictOptions(args.batch_size, args.actors, address=args.address, predictor=predictor)
    run = predict_split_ray(model, dataset, args.output, args.split, args.image_column, options)
    for name, reason in run.errors:
        print(f"error: {name}: {reason}", file=sys.stderr)
    print(f"wrote {counted(run.predicted, 'prediction')} to {args.output}", file=sys.stderr)
    if run.errors:
        print(f"{len(run.errors)} of {counted(run.images, 'image')} could not be read", file=sys.stderr)
        return 1
    return 0


def register_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict where images were taken (JSON lines, CSV or Parquet; maps; EXIF copies)",
        description="Predict where images were taken. One record per image (or per place with grouped views).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="image files, folders (searched recursively), glob patterns, URLs")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    src = p.add_argument_group("dataset input")
    src.add_argument("--dataset", help="a datasets folder or Hub repo id instead of files")
    src.add_argument("--split", default="test", help="dataset split (default: test)")
    add_image_column(src)
    add_revision(src)
    views = p.add_argument_group("multi-view (several images of one place → one prediction)")
    group = views.add_mutually_exclusive_group()
    group.add_argument(
        "--group-pattern",
        dest="group_pattern",
        help="regex on the file path giving the location id (named group 'location', else the first group)",
    )
    group.add_argument(
        "--group-csv", dest="group_csv", help="CSV with columns file,location_id[,latitude,longitude] (no other inputs)"
    )
    out = p.add_argument_group("outputs")
    out.add_argument("-o", "--output", default=None, help="write records here (default: JSON lines on stdout)")
    out.add_argument("--format", choices=FORMATS, default=None, help="default: from --output's suffix")
    add_top_k(out, "classes per record (default: 5)")
    out.add_argument("--mass", type=float, default=0.5, help="probability mass of radius_km (default: 0.5)")
    out.add_argument(
        "--map",
        default=None,
        metavar="HTML",
        help="write a folium map of the predictions; opening it loads Leaflet from CDNs and OpenStreetMap tiles "
        "(needs the internet) unless --map-offline",
    )
    out.add_argument(
        "--map-offline",
        dest="map_offline",
        action="store_true",
        help="with --map: Leaflet inlined and country outlines (geohf's boundaries) instead of tiles: the HTML "
        "opens with no network (larger file, ~2 MB)",
    )
    out.add_argument(
        "--write-exif",
        dest="write_exif",
        default=None,
        metavar="DIR",
        help="write copies of the images into DIR with the predicted location in EXIF, marked as an estimate",
    )
    run = p.add_argument_group("running")
    add_batch_size(run)
    run.add_argument("--workers", type=int, default=None, help="decoding processes (default: 0 for small inputs)")
    run.add_argument(
        "--streams",
        type=int,
        default=None,
        help="batches predicted at once, each in a thread with its share of the cores, without --workers "
        "(default: 2 on a CPU, 1 on a GPU)",
    )
    add_bf16(run)
    run.add_argument(
        "--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=True, help="NHWC layout"
    )
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    add_retrieval(run)
    run.add_argument(
        "--recursive", action=argparse.BooleanOptionalAction, default=True, help="search subfolders (default: yes)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tta(run)
    add_engine(run)
    run.add_argument(
        "--actors", type=int, default=None,
        help="--engine ray: model actors (default: one per GPU of the cluster, else 1)",
    )  # fmt: skip
    set_command(p, PredictArguments, predict_command)
    return p
