"""``geohf evaluate``: metrics, pictures and a report for a model on a dataset split (or a paper's benchmark)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, check_source, one_line
from ..evaluation.names import BENCHMARKS, CONVENTION_NAMES
from .command import set_command
from .flags import add_batch_size, add_bf16, add_engine, add_output, add_retrieval, add_revision, add_tta


@dataclass
class EvaluateArguments:
    model: str
    dataset: str
    output: str
    revision: str | None = None
    split: str = "test"
    batch_size: int = 32
    human: str | None = None
    benchmark: str | None = None
    convention: str = "geohf"
    bf16: bool | None = None
    retrieval: bool = True
    tta: str | None = None
    engine: str = "local"
    address: str | None = None
    actors: int | None = None


def evaluate_command(args: EvaluateArguments) -> int:
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.convention != "geohf" and not args.benchmark:
        raise UserError(f"--convention {args.convention} applies to --benchmark scoring; add --benchmark")
    if args.engine == "ray":
        return _evaluate_ray(args)
    model = check_source(args.model, "model")
    dataset = check_source(args.dataset, "dataset", args.revision)
    from ..data.folder import load_geo_dataset
    from ..evaluation.report import write_report
    from ..inference.predictor import GeoPredictor

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
    from ..evaluation.evaluation import Evaluation

    table = Evaluation(split=args.split, sizes=metrics["sizes"], rows=metrics["results"]).table()
    print(table)
    print(
        f"wrote {args.output}: metrics.json, report.md, predictions.parquet, " + ", ".join(metrics["pictures"].values())
    )
    return 0


def _evaluate_ray(args: EvaluateArguments) -> int:
    """``--engine ray``: the metrics table (geohf.evaluation.ray) printed and written to ``metrics.json``."""
    if args.actors is not None and args.actors < 1:
        raise UserError("--actors must be at least 1")
    import json

    if args.benchmark or args.human:
        raise UserError("--engine ray scores the metrics table; --benchmark and --human run with --engine local")
    from ..evaluation.ray import evaluate_ray
    from ..files import atomic_write
    from ..inference.ray import RayPredictOptions, ray_source

    model = check_source(args.model, "model")
    dataset = ray_source(args.dataset, args.revision)
    if "://" not in dataset:
        dataset = check_source(dataset, "dataset")
    predictor = {"bf16": args.bf16, "tta": args.tta}
    options = RayPredictOptions(args.batch_size, args.actors, address=args.address, predictor=predictor)
    result = evaluate_ray(model, dataset, args.split, retrieval=args.retrieval, options=options)
    print(result.table())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", json.dumps(result.to_dict(), indent=2, default=float).encode())
    print(f"wrote {args.output}: metrics.json")
    return 0


def _evaluate_benchmark(args: EvaluateArguments, predictor, ds, dataset: str) -> int:
    """``geohf evaluate --benchmark``: the papers' table for the model, beside their published rows."""
    import json

    from ..evaluation.benchmark import evaluate_benchmark

    one_split_folder = dataset if Path(dataset).is_dir() and len(ds) == 1 else None
    result, frame = evaluate_benchmark(
        predictor,
        ds[args.split],
        args.benchmark,
        batch_size=args.batch_size,
        model_name=Path(args.model).name,
        dataset_dir=one_split_folder,
        convention=args.convention,
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


def register_subcommand(subparsers) -> None:
    ev = subparsers.add_parser("evaluate", help="metrics, pictures and a report for a model on a dataset split")
    ev.add_argument("--model", required=True, help="model folder or Hub id")
    ev.add_argument("--dataset", required=True, help="dataset folder or Hub repo id")
    add_revision(ev)
    ev.add_argument("--split", default="test", help="dataset split (default: test)")
    add_output(ev, required=True, help="folder for metrics.json, report.md, pictures")
    add_batch_size(ev)
    ev.add_argument("--human", default=None, help="results file of the app's game: adds a 'human' row")
    ev.add_argument(
        "--benchmark",
        choices=BENCHMARKS,
        default=None,
        help="score by the papers' protocol (km thresholds, GeoScore, OSV-5M's reverse-geocoded country/region/"
        "sub-region/city accuracy and geohf's polygon accuracy) beside their published rows",
    )
    ev.add_argument(
        "--convention", choices=CONVENTION_NAMES, default="geohf",
        help="--benchmark distances as a peer's evaluation code measures them: geohf (haversine, R 6371.0088 km, "
        "d <= t), osv5m (OSV-5M and PLONK: haversine, R 6371 km, d < t), geoclip (WGS84 geodesic, d <= t)",
    )  # fmt: skip
    add_bf16(ev)
    add_retrieval(ev)
    add_tta(ev)
    add_engine(ev)
    ev.add_argument(
        "--actors", type=int, default=None,
        help="--engine ray: model actors (default: one per GPU of the cluster, else 1)",
    )  # fmt: skip
    set_command(ev, EvaluateArguments, evaluate_command)
