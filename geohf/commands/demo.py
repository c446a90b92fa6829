"""``geohf demo``: build the Blue Marble dataset, train, evaluate and predict, offline."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .command import set_command
from .flags import add_batch_size, add_boundaries, add_output, check_boundaries


@dataclass
class DemoArguments:
    output: str = "runs/demo"
    minutes: float = 10.0
    seed: int = 0
    steps: int | None = None
    boundaries: str | None = None
    augment: bool = True
    train_tiles: int | None = None
    validation_tiles: int | None = None
    test_tiles: int | None = None
    image_size: int | None = None
    batch_size: int | None = None


# DemoConfig fields a flag overrides when given
OVERRIDES = ("train_tiles", "validation_tiles", "test_tiles", "image_size", "batch_size", "steps")


def demo_command(args: DemoArguments) -> int:
    check_boundaries(args.boundaries)
    if args.minutes <= 0:
        raise UserError("--minutes must be more than 0")
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(
        output=args.output, minutes=args.minutes, seed=args.seed, boundaries=args.boundaries, augment=args.augment
    )
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    for name in OVERRIDES:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    run_demo(cfg)
    return 0


def register_subcommand(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="build the Blue Marble dataset, train, evaluate and predict (offline)")
    add_output(demo, default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget in minutes (default: 10)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train exactly N steps (reproducible; default: as many as fit in --minutes)",
    )
    add_boundaries(demo)
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
    set_command(demo, DemoArguments, demo_command)
