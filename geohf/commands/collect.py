"""``geohf collect plan | run``: sample locations in regions, collect their street-level images.

The collectors (pandas, geopandas, requests) are imported inside the commands: ``geohf --help`` stays quick.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..collect.names import PROVIDER_NAMES, SAMPLER_NAMES, SPEC_HELP, STREETVIEW_SOURCES
from .command import set_command
from .flags import add_boundaries


@dataclass
class PlanArguments:
    regions: list[str]
    per_region: int
    output: str
    sampler: str = "uniform"
    seed: int = 0
    boundaries: str | None = None
    weight_column: str = "population"


@dataclass
class RunArguments:
    plan: str
    provider: str
    output: str
    headings: int = 3
    fov: float = 120.0
    size: str = "640x640"
    pitch: float = 0.0
    radius: float = 50.0
    source: str = "outdoor"
    seed: int = 0
    max_requests: int | None = None
    dry_run: bool = False
    price_per_image: float | None = None
    rate: float = 10.0
    workers: int = 4
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 10.0
    deadline: float = 60.0
    max_consecutive_failures: int = 20
    base_url: str | None = None
    key: str | None = None
    no_progress: bool = False


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def plan_command(args: PlanArguments) -> int:
    """Sample the plan and write it to Parquet."""
    from ..collect.plan import make_plan, save_plan
    from ..collect.regions import parse_regions

    try:
        regions = parse_regions(args.regions, args.boundaries, args.weight_column)
        plan = make_plan(regions, args.per_region, args.sampler, args.seed)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    info = {"regions": args.regions, "per_region": args.per_region, "sampler": args.sampler, "seed": args.seed}
    save_plan(plan, args.output, info)
    print(f"wrote {len(plan)} locations in {len(regions)} regions ({args.sampler} sampler) to {args.output}")
    return 0


def config_from_args(args: RunArguments):
    """The run configuration (:class:`~geohf.collect.run.CollectConfig`) of ``collect run`` arguments."""
    from ..collect.http import HttpConfig
    from ..collect.providers import ViewOptions
    from ..collect.run import CollectConfig

    view = ViewOptions(args.headings, args.fov, args.size, args.pitch, args.radius, args.source)
    http = HttpConfig(
        args.rate,
        args.retries,
        args.backoff,
        timeout=args.timeout,
        deadline=args.deadline,
        max_requests=args.max_requests,
    )
    return CollectConfig(
        provider=args.provider,
        view=view,
        http=http,
        seed=args.seed,
        price_per_image=args.price_per_image,
        workers=args.workers,
        max_consecutive_failures=args.max_consecutive_failures,
        base_url=args.base_url,
        progress=not args.no_progress,
    )


def run_command(args: RunArguments) -> int:
    """Collect a plan (or, with ``--dry-run``, print what it would request and cost)."""
    from ..collect.plan import load_plan
    from ..collect.providers import MissingKeyError, resolve_key
    from ..collect.run import collect, estimate

    try:
        plan = load_plan(args.plan)
        config = config_from_args(args)
        if args.dry_run:
            print(estimate(plan, args.output, config).summary())
            return 0
        key = resolve_key(args.provider, args.key)
        report = collect(plan, args.output, config, key)
    except (MissingKeyError, ValueError, FileNotFoundError) as err:
        return _error(str(err))
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    print(report.summary())
    return report.exit_code


def register_subcommand(subparsers) -> None:
    collect_parser = subparsers.add_parser("collect", help="collect street-level images (Street View, Mapillary)")
    sub = collect_parser.add_subparsers(dest="collect_command", required=True)

    p = sub.add_parser("plan", help="sample points inside regions and write a plan (Parquet)")
    p.add_argument("--regions", nargs="+", required=True, metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--per-region", dest="per_region", type=int, required=True, help="points per region")
    p.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="uniform",
        help="uniform (default); fishnet: one point per equal-area fishnet cell (even coverage); population: "
        "share per-region x regions points by a weight column of a cities CSV / GeoJSON",
    )
    p.add_argument("-o", "--output", required=True, help="plan file (.parquet)")
    p.add_argument("--seed", type=int, default=0)
    add_boundaries(p)
    p.add_argument("--weight-column", dest="weight_column", default="population", help="for --sampler population")
    set_command(p, PlanArguments, plan_command)

    r = sub.add_parser("run", help="collect the images of a plan into an imagefolder (resumable)")
    r.add_argument("plan", help="plan file from `geohf collect plan`")
    r.add_argument("--provider", choices=PROVIDER_NAMES, required=True)
    r.add_argument("-o", "--output", required=True, help="output folder (imagefolder layout); re-run to resume")
    r.add_argument("--headings", type=int, default=3, help="Street View images per panorama (default 3 x 120°)")
    r.add_argument("--fov", type=float, default=120.0, help="Street View field of view in degrees (max 120)")
    r.add_argument("--size", default="640x640", help="Street View image size WxH (default 640x640)")
    r.add_argument("--pitch", type=float, default=0.0)
    r.add_argument("--radius", type=float, default=50.0, help="search radius around each point, metres (default 50)")
    r.add_argument("--source", choices=STREETVIEW_SOURCES, default="outdoor", help="Street View imagery source")
    r.add_argument("--seed", type=int, default=0, help="seeds the random start heading of each location")
    r.add_argument("--max-requests", dest="max_requests", type=int, default=None, help="send at most N requests")
    r.add_argument("--dry-run", dest="dry_run", action="store_true", help="print requests and cost, send nothing")
    r.add_argument("--price-per-image", dest="price_per_image", type=float, default=None, help="USD (SV: 0.007)")
    r.add_argument("--rate", type=float, default=10.0, help="requests per second over all workers (0: no limit)")
    r.add_argument("--workers", type=int, default=4, help="parallel requests (default 4)")
    r.add_argument("--retries", type=int, default=5, help="retries after 429 / 5xx / time-outs (default 5)")
    r.add_argument("--backoff", type=float, default=1.0, help="first retry wait in s, doubled each time")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per connection / read (default 10)")
    r.add_argument("--deadline", type=float, default=60.0, help="seconds for a whole answer (default 60)")
    r.add_argument("--max-consecutive-failures", dest="max_consecutive_failures", type=int, default=20)
    r.add_argument("--base-url", dest="base_url", default=None, help="API root (tests, proxies)")
    r.add_argument(
        "--key",
        default=None,
        help="API key; prefer GOOGLE_MAPS_API_KEY / MAPILLARY_ACCESS_TOKEN (not in shell history)",
    )
    r.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    set_command(r, RunArguments, run_command)
