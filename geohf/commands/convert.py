"""``geohf convert geoclip``: published geolocation models as geohf model folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .command import set_command


@dataclass
class GeoclipArguments:
    output: str
    clip: str = "openai/clip-vit-large-patch14"
    gallery: str = "geoclip"
    overwrite: bool = False


def geoclip_command(args: GeoclipArguments) -> int:
    if Path(args.output).expanduser().exists() and not args.overwrite:
        raise UserError(f"{args.output}: already exists; pass --overwrite to replace it")
    from ..modeling.converters.geoclip import convert_geoclip

    print(convert_geoclip(args.output, clip=args.clip, gallery=args.gallery, overwrite=args.overwrite).summary())
    return 0


def register_subcommand(subparsers) -> None:
    conv = subparsers.add_parser("convert", help="published geolocation models as geohf model folders")
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
    set_command(cg, GeoclipArguments, geoclip_command)
