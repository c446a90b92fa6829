"""The ``geohf`` command: one entry point over the same functions the tests call."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(output=args.output, minutes=args.minutes, seed=args.seed, boundaries=args.boundaries)
    for name in ("train_tiles", "validation_tiles", "test_tiles", "image_size", "batch_size"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    run_demo(cfg)
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from .inference.predict import predict_files, print_error
    from .inference.predictor import GeoPredictor

    predictor = GeoPredictor(args.model, top_k=args.top_k)
    run = predict_files(predictor, args.images, batch_size=args.batch_size, output=args.output, on_error=print_error)
    if args.output is None:
        for record in run.records:
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(f"wrote {len(run.records)} predictions to {args.output}", file=sys.stderr)
    if run.errors:
        print(f"{len(run.errors)} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0


def _dataset_build(args: argparse.Namespace) -> int:
    from .data.bluemarble import TileSpec, build_bluemarble

    if args.layout != "bluemarble":
        raise SystemExit(f"layout {args.layout!r} is not supported yet; supported: bluemarble")
    report = build_bluemarble(
        args.output,
        {"train": args.train, "validation": args.validation, "test": args.test},
        TileSpec(tile_px=args.tile_px, block_px=args.block_px or 2 * args.tile_px, seed=args.seed),
        cells=args.cells,
        boundaries=args.boundaries,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output}: {report.splits}, cells {report.partitions}, {report.images_per_second:.0f} images/s")
    return 0


def _train(argv: list[str]) -> int:
    from .training.cli import main as train_main

    train_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geohf", description="Image geolocation on the Hugging Face stack.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the Blue Marble dataset, train, evaluate and predict (offline)")
    demo.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget in minutes (default: 10)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--boundaries", default=None, help="boundary file (default: Natural Earth admin-1 if found)")
    demo.add_argument("--train-tiles", dest="train_tiles", type=int)
    demo.add_argument("--validation-tiles", dest="validation_tiles", type=int)
    demo.add_argument("--test-tiles", dest="test_tiles", type=int)
    demo.add_argument("--image-size", dest="image_size", type=int)
    demo.add_argument("--batch-size", dest="batch_size", type=int)
    demo.set_defaults(func=_demo)

    pred = sub.add_parser("predict", help="predict where images were taken (JSON lines)")
    pred.add_argument("images", nargs="+", help="image files")
    pred.add_argument("--model", required=True, help="model folder or Hub id")
    pred.add_argument("--top-k", dest="top_k", type=int, default=5)
    pred.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    pred.add_argument("--output", default=None, help="write JSON lines here instead of stdout")
    pred.set_defaults(func=_predict)

    ds = sub.add_parser("dataset", help="build datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    build = ds_sub.add_parser("build", help="build a labelled Hub-ready dataset folder")
    build.add_argument("--layout", required=True, choices=["bluemarble"])
    build.add_argument("--output", required=True)
    build.add_argument("--boundaries", default=None)
    build.add_argument("--cells", nargs="+", default=["quadtree"], help="e.g. quadtree:max_samples=60,min_samples=15")
    build.add_argument("--train", type=int, default=4000)
    build.add_argument("--validation", type=int, default=500)
    build.add_argument("--test", type=int, default=500)
    build.add_argument("--tile-px", dest="tile_px", type=int, default=64)
    build.add_argument("--block-px", dest="block_px", type=int, default=None)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--overwrite", action="store_true")
    build.set_defaults(func=_dataset_build)

    sub.add_parser("train", help="fine-tune a model (same flags as scripts/train.py; --help for all)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
