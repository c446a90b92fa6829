"""``geohf convert geoclip | osv5m | streetclip | plonk``: published geolocation models as geohf model folders."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError, one_line
from .command import set_command
from .flags import check_new_output


def _converter(conv_sub, name: str, help: str, description: str):
    """The parser of ``geohf convert NAME``, with the OUTPUT folder and ``--overwrite`` every converter takes."""
    parser = conv_sub.add_parser(name, help=help, description=description)
    parser.add_argument("output", metavar="OUTPUT", help="model folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT (only once the new folder is complete)"
    )
    return parser


@dataclass
class GeoclipArguments:
    output: str
    clip: str = "openai/clip-vit-large-patch14"
    gallery: str = "geoclip"
    overwrite: bool = False


def geoclip_command(args: GeoclipArguments) -> int:
    check_new_output(args.output, args.overwrite, flag=None)  # before the converter's imports
    from ..modeling.converters.geoclip import convert_geoclip

    print(convert_geoclip(args.output, clip=args.clip, gallery=args.gallery, overwrite=args.overwrite).summary())
    return 0


@dataclass
class Osv5mArguments:
    output: str
    source: str = "osv5m/baseline"
    quadtree: str | None = None
    clip: str | None = None
    overwrite: bool = False


def osv5m_command(args: Osv5mArguments) -> int:
    check_new_output(args.output, args.overwrite, flag=None)  # before the converter's imports
    from ..modeling.converters.osv5m import convert_osv5m

    result = convert_osv5m(args.output, args.source, args.quadtree, args.clip, overwrite=args.overwrite)
    print(result.summary())
    return 0


def register_osv5m(conv_sub) -> None:
    co = _converter(
        conv_sub,
        "osv5m",
        help="the OSV-5M baseline (Astruc et al., CVPR 2024; osv5m/baseline): CLIP ViT-L/14 DataComp + MLP + "
        "hybrid head over 11,399 quadtree cells",
        description="Write the OSV-5M baseline as a geohf model folder: its config.json and pytorch_model.bin "
        "(read with weights_only=True) and its quadtree CSV (the cells' points and boxes, not in the weights).",
    )
    co.add_argument("--source", default="osv5m/baseline", help="the release: Hub id (default) or local folder")
    co.add_argument(
        "--quadtree", default=None,
        help="OSV-5M's quadtree_10_1000.csv (default: the one beside the weights)",
    )  # fmt: skip
    co.add_argument(
        "--clip", default=None,
        help="the CLIP checkpoint whose config builds the tower (default: the backbone path of its config, "
        "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K)",
    )  # fmt: skip
    set_command(co, Osv5mArguments, osv5m_command)


@dataclass
class StreetclipArguments:
    output: str
    clip: str = "geolocal/StreetCLIP"
    template: list[str] | None = None
    regions: bool = False
    overwrite: bool = False


def streetclip_command(args: StreetclipArguments) -> int:
    check_new_output(args.output, args.overwrite, flag=None)  # before the converter's imports
    from ..modeling.converters.streetclip import TEMPLATES, convert_streetclip

    templates = args.template or TEMPLATES
    print(convert_streetclip(args.output, args.clip, templates, args.regions, overwrite=args.overwrite).summary())
    return 0


def register_streetclip(conv_sub) -> None:
    cs = _converter(
        conv_sub,
        "streetclip",
        help="StreetCLIP (geolocal/StreetCLIP) as a zero-shot country (and region) classifier: its prompts embedded "
        "once into a classification head",
        description="Write StreetCLIP's zero-shot classifier as a geohf model folder: each country's (and with "
        "--regions each admin-1 region's) prompt embeddings become the weights of a classification head on the "
        "unit CLIP image embedding. Needs the Hub (or --clip LOCAL_FOLDER with the tokenizer).",
    )
    cs.add_argument("--clip", default="geolocal/StreetCLIP", help="CLIPModel with its tokenizer: Hub id or folder")
    cs.add_argument(
        "--template", action="append", default=None,
        help="a prompt template with {} for the place (repeat for an ensemble; default: 'A Street View photo in {}.')",
    )  # fmt: skip
    cs.add_argument("--regions", action="store_true", help="also a region head (admin-1, '{region}, {country}')")
    set_command(cs, StreetclipArguments, streetclip_command)


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
    check_new_output(args.output, args.overwrite, flag=None)  # before the converter's imports
    from ..modeling.converters.plonk import convert_plonk

    settings = {"samples": args.samples, "steps": args.steps, "guidance": args.guidance, "point": args.point}
    try:
        conversion = convert_plonk(args.output, args.plonk, args.tower, settings, overwrite=args.overwrite)
    except ValueError as err:  # a sampler setting out of range
        if isinstance(err, UserError):
            raise
        raise UserError(one_line(err)) from None
    print(conversion.summary())
    return 0


def register_plonk(conv_sub) -> None:
    cp = _converter(
        conv_sub,
        "plonk",
        help="PLONK (Dufour et al., CVPR 2025): its flow-matching network on the sphere + the image tower it was "
        "trained on",
        description="Write a PLONK Hub folder (config.json + model.safetensors, e.g. nicolas-dufour/PLONK_OSV_5M "
        "downloaded) with its image tower as a geohf model folder: pipeline('image-geolocation', model=OUTPUT), "
        "geohf predict and geohf evaluate then sample it in batches.",
    )
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
    set_command(cp, PlonkArguments, plonk_command)


def register_subcommand(subparsers) -> None:
    conv = subparsers.add_parser("convert", help="published geolocation models as geohf model folders")
    conv_sub = conv.add_subparsers(dest="convert_command", required=True)
    cg = _converter(
        conv_sub,
        "geoclip",
        help="GeoCLIP (Vivanco et al., NeurIPS 2023) as released: CLIP ViT-L/14 + its image MLP, location encoder, "
        "logit scale and 100K GPS gallery (from the geoclip wheel)",
        description="Write GeoCLIP as a geohf model folder: pipeline('image-geolocation', model=OUTPUT) then "
        "predicts its best gallery point, with country, region and radius. Needs pip install --no-deps "
        "geoclip==1.3.0, and the Hub for the CLIP tower (or --clip LOCAL_FOLDER).",
    )
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
    set_command(cg, GeoclipArguments, geoclip_command)
    register_plonk(conv_sub)
    register_osv5m(conv_sub)
    register_streetclip(conv_sub)
