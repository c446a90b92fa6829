"""Flags several subcommands share, spelled and defaulted the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engines import ENGINES
from ..errors import UserError
from ..geo.names import BOUNDARIES_HELP, BOUNDARY_NAMES


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


def add_image_column(p) -> None:
    p.add_argument(
        "--image-column", "--image_column", dest="image_column", default="image", help="dataset image column"
    )


def add_top_k(p, help: str) -> None:
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, help=help)


def add_boundaries(p) -> None:
    p.add_argument("--boundaries", default=None, help=BOUNDARIES_HELP)


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


def add_engine(p) -> None:
    p.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="where the batch work runs: this process (local, the default) or a Ray cluster "
        "(ray: pip install 'geohf[ray]')",
    )  # fmt: skip
    p.add_argument(
        "--address", default=None,
        help="--engine ray: the cluster to join (auto, ray://head:10001; default: $RAY_ADDRESS, else a local Ray)",
    )  # fmt: skip


def check_boundaries(source: str | None) -> None:
    """``--boundaries``: a file, or one of the named sources (full-resolution download, low-res countries)."""
    if source and source not in BOUNDARY_NAMES and not Path(source).expanduser().exists():
        raise UserError(f"--boundaries {source}: no such file (or use one of {', '.join(BOUNDARY_NAMES)})")


def check_new_output(output: str, overwrite: bool, flag: str | None = "--output") -> None:
    """An existing ``output`` without ``--overwrite`` is a user error."""
    if Path(output).expanduser().exists() and not overwrite:
        where = f"{flag} {output}" if flag else output
        raise UserError(f"{where}: already exists; pass --overwrite to replace it")
