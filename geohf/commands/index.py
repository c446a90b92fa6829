"""``geohf index build``: a model folder's retrieval index (PIGEON-style refinement of the coordinates)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, check_source, one_line
from ..inference.names import SEARCHES
from .command import exclusive, set_command
from .flags import add_batch_size, add_bf16, add_engine, add_revision


@dataclass
class IndexBuildArguments:
    model: str
    dataset: str
    revision: str | None = None
    split: str = "train"
    tune_split: str = "validation"
    max_shift_km: float = 1000.0
    batch_size: int = 64
    search: str = "auto"
    bf16: bool | None = None
    engine: str = "local"
    address: str | None = None


def _index_folder(model: str) -> Path | None:
    """The index folder a build writes (its lock), or None when ``model`` is not a local folder (checked after)."""
    folder = Path(model).expanduser()
    return folder / "index" if folder.is_dir() else None


def _load_dataset(args: IndexBuildArguments, dataset: str):
    from ..data.folder import load_geo_dataset

    try:
        return load_geo_dataset(dataset, args.revision)
    except ValueError as err:  # datasets refuses a split without rows while loading the others
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(err))
        if empty:
            raise UserError(
                f"--dataset {args.dataset}: the {empty.group(1)!r} split is empty: nothing to index"
            ) from None
        raise UserError(f"--dataset {args.dataset}: cannot load it ({one_line(err)})") from None


@exclusive(lambda args: _index_folder(args.model), "geohf index build")
def index_build_command(args: IndexBuildArguments) -> int:
    if not Path(args.model).expanduser().is_dir():
        raise UserError(
            f"--model {args.model}: not a local model folder; the index is written into the folder "
            "(download the model, build the index, push the folder)"
        )
    model = check_source(str(Path(args.model).expanduser()), "model")
    dataset = check_source(args.dataset, "dataset", args.revision)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.search not in SEARCHES:
        raise UserError(f"--search {args.search}: unknown; choose from {', '.join(SEARCHES)}")
    ds = _load_dataset(args, dataset)
    for flag, split in (("--split", args.split), ("--tune-split", args.tune_split)):
        if split != "none" and split not in ds and (flag == "--split" or args.tune_split != "validation"):
            raise UserError(f"--dataset {args.dataset} has no {split!r} split; it has {list(ds)} (use {flag})")
    if args.max_shift_km < 0:
        raise UserError("--max-shift-km must be at least 0")
    if args.tune_split == "test":
        raise UserError("--tune-split test: tuning on the test split would leak it into its scores; use validation")
    if args.tune_split == args.split:
        raise UserError(f"--tune-split {args.tune_split}: tune on another split than the gallery's (validation)")
    from ..inference.predictor import GeoPredictor
    from ..inference.retrieval import build_index

    try:
        predictor = GeoPredictor(model, bf16=args.bf16, retrieval=False)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the model ({one_line(err)})") from err

    if args.engine == "ray":  # the embeddings computed on Ray, streamed into the same writer
        from ..inference.ray import RayPredictOptions, iter_ray_gallery
        from ..inference.retrieval import index_info, write_index

        options = RayPredictOptions(
            args.batch_size, address=args.address, predictor={"bf16": args.bf16, "retrieval": False}
        )
        batches = iter_ray_gallery(model, dataset, args.split, options=options)
        info = index_info(predictor.model, args.search, args.dataset, args.split)
        index = write_index(batches, info, folder=model)
    else:
        index = build_index(
            predictor, ds[args.split], args.search, args.batch_size, dataset_name=args.dataset, split=args.split,
            folder=model,
        )  # fmt: skip
    index.params.max_shift_km = args.max_shift_km
    params = "default parameters"
    if args.tune_split in ds:
        from ..evaluation.evaluation import tune_retrieval

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


def register_subcommand(subparsers) -> None:
    idx = subparsers.add_parser("index", help="retrieval indexes (PIGEON-style refinement of the coordinates)")
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
        help="exact (matmul), faiss (IVF, memory-mapped), usearch (HNSW, in memory) or auto: exact below 50,000 "
        "entries, else faiss (default: auto; docs/scaling.md)",
    )  # fmt: skip
    add_bf16(ib)
    add_engine(ib)
    set_command(ib, IndexBuildArguments, index_build_command)
