"""``geohf predict``: wired into ``geohf`` by :func:`add_predict_parser`."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError, check_source, counted
from ..malloc import BATCH, set_malloc

EPILOG = """examples:
  geohf predict --model runs/demo/model photo.jpg holiday/ "shots/**/*.png" https://example.org/a.jpg
  geohf predict --model M --dataset data/bm --split test --output pred.parquet --map pred.html
  geohf predict --model M views/ --group-pattern '(?P<location>[^/]+)_[NESW]\\.jpg$'
  geohf predict --model M photo.jpg --write-exif estimated/ --map photo.html
"""


def default_workers(n_items: int, batch_size: int) -> int:
    """DataLoader workers: none for a batch or two or on two cores or fewer (decoding processes then
    take the cores the model needs: 2 workers cost 20% on a 2-core machine, benchmarks/predict_throughput.py),
    else up to 4 decoding processes beside the model."""
    cores = os.cpu_count() or 1
    return 0 if n_items <= 2 * batch_size or cores <= 2 else min(4, cores // 2)


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _inputs(args: argparse.Namespace):
    from .inputs import collect_inputs, dataset_inputs, group_by_csv, group_by_pattern

    if args.dataset:
        return dataset_inputs(args.dataset, args.split, args.image_column, args.revision)
    if args.group_csv:
        return group_by_csv(args.group_csv)
    inputs = collect_inputs(args.inputs, recursive=args.recursive)
    return group_by_pattern(inputs, args.group_pattern) if args.group_pattern else inputs


def _check(args: argparse.Namespace) -> str | None:
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


def predict_command(args: argparse.Namespace) -> int:
    """Predict the inputs, stream the records, report every unreadable image; 1 if any failed."""
    set_malloc(BATCH)
    problem = _check(args)
    if problem:
        return _error(problem)
    try:
        model = check_source(args.model, "model")
        if args.dataset:
            args.dataset = check_source(args.dataset, "dataset", args.revision)
    except UserError as err:
        return _error(str(err))
    from .maps import cell_polygons
    from .predictor import GeoPredictor
    from .stream import PredictOptions, output_format, print_error, run_prediction

    if output_format(args.output, args.format) == "parquet" and args.output is None:
        return _error("Parquet cannot go to stdout; pass --output FILE.parquet")
    try:
        inputs = _inputs(args)
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


def add_retrieval(p) -> None:
    p.add_argument(
        "--retrieval", action=argparse.BooleanOptionalAction, default=True,
        help="refine coordinates with the model folder's retrieval index when it has one (geohf index build; "
        "default: yes)",
    )  # fmt: skip


def add_tta(p) -> None:
    p.add_argument(
        "--tta",
        default=None,
        help="test-time augmentation: flip (also the mirrored image), crops (also three crops along the long "
        "side), or flip,crops; the views' class log-probabilities are averaged (each view costs a forward; "
        "docs/benchmarks.md measures it)",
    )


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``predict`` to a ``geohf`` subparsers object."""
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
    src.add_argument(
        "--image-column", "--image_column", dest="image_column", default="image", help="dataset image column"
    )
    src.add_argument(
        "--revision", "--dataset-revision", "--dataset_revision", dest="revision", default=None,
        help="dataset revision on the Hub (branch, tag or commit)",
    )  # fmt: skip
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
    out.add_argument(
        "--format", choices=["jsonl", "csv", "parquet"], default=None, help="default: from --output's suffix"
    )
    out.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, help="classes per record (default: 5)")
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
    run.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32, help="(default: 32)")
    run.add_argument("--workers", type=int, default=None, help="decoding processes (default: 0 for small inputs)")
    run.add_argument(
        "--streams",
        type=int,
        default=None,
        help="batches predicted at once, each in a thread with its share of the cores, without --workers "
        "(default: 2 on a CPU, 1 on a GPU)",
    )
    run.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: where it is fast)"
    )
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
    p.set_defaults(func=predict_command)
    return p
