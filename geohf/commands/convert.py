"""``geohf convert geoclip | plonk``: published geolocation models as geohf model folders."""

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


@dataclass
class PlonkArguments:
    output: str
    plonk: str
    tower: str = "geolocal/StreetCLIP"
    samples: int = 16
    steps: int = 250
    guidance: float = 2.0
    point: str = "sample"
    overwrite: bool = False


def plonk_command(args: PlonkArguments) -> int:
    if Path(args.output).expanduser().exists() and not args.overwrite:
        raise UserError(f"{args.output}: already exists; pass --overwrite to replace it")
    from ..modeling.converters.plonk import convert_plonk

    settings = {"samples": args.samples, "steps": args.steps, "guidance": args.guidance, "point": args.point}
    try:
        conversion = convert_plonk(args.output, args.plonk, args.tower, settings, overwrite=args.overwrite)
    except ValueError as err:  # a sampler setting out of range
        if isinstance(err, UserError):
            raise
        raise UserError(" ".join(str(err).split())) from None
    print(conversion.summary())
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
    cp = conv_sub.add_parser(
        "plonk",
        help="PLONK (Dufour et al., CVPR 2025): its flow-matching network on the sphere + the image tower it was "
        "trained on",
        description="Write a PLONK Hub folder (config.json + model.safetensors, e.g. nicolas-dufour/PLONK_OSV_5M "
        "downloaded) with its image tower as a geohf model folder: pipeline('image-geolocation', model=OUTPUT), "
        "geohf predict and geohf evaluate then sample it in batches.",
    )
    cp.add_argument("output", metavar="OUTPUT", help="model folder to write")
    cp.add_argument("plonk", metavar="PLONK", help="the PLONK folder (config.json, model.safetensors)")
    cp.add_argument(
        "--tower", default="geolocal/StreetCLIP",
        help="the image tower it was trained on (Hub id or local folder): geolocal/StreetCLIP for PLONK_OSV_5M "
        "(default), facebook/dinov2-with-registers-large for PLONK_YFCC and PLONK_iNaturalist",
    )  # fmt: skip
    cp.add_argument("--samples", type=int, default=16, help="samples per image (default 16): the radius is theirs")
    cp.add_argument("--steps", type=int, default=250, help="Euler steps (default 250, PLONK's)")
    cp.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance (default 2, PLONK's eval)")
    cp.add_argument(
        "--point", choices=("sample", "likeliest"), default="sample",
        help="the answer: the first sample (default) or the likeliest one (its NLL by ODE: slower)",
    )  # fmt: skip
    cp.add_argument("--overwrite", action="store_true", help="replace OUTPUT (only once the new folder is complete)")
    set_command(cp, PlonkArguments, plonk_command)
