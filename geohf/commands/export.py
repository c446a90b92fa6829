"""``geohf export``: a model as ONNX (torch and onnx are imported only to export); needs geohf[export]."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, check_source
from ..export.names import FORMATS
from .command import set_command


@dataclass
class ExportArguments:
    model: str
    output_pos: str | None = None
    output: str | None = None
    format: str = "onnx"
    opset: int = 18
    mass: float = 0.5
    atol: float = 1e-3


def export_command(args: ExportArguments) -> int:
    """Export and report the difference to PyTorch; 1 if it exceeds ``--atol``."""
    output = args.output or args.output_pos
    if not output:
        raise UserError("geohf export: give the output folder (OUTPUT or --output)")
    if args.output and args.output_pos and args.output != args.output_pos:
        raise UserError("geohf export: give the output folder once (OUTPUT or --output)")
    import onnx  # noqa: F401  (the 'export' extra: missing, it is the first thing to say)
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401

    model = check_source(args.model, "model")
    if Path(output).exists() and any(Path(output).iterdir()):
        raise UserError(f"--output {output}: exists and is not empty; choose a new folder")

    from ..export.onnx import export_onnx

    try:
        result = export_onnx(model, output, opset=args.opset, mass=args.mass)
    except (FileExistsError, ValueError, OSError) as err:
        raise UserError(" ".join(str(err).split())) from err
    print(result.summary())
    worst = max(result.max_abs_diff.get(k, 0.0) for k in ("logits", "coordinates"))
    if worst > args.atol:
        print(f"error: onnxruntime differs from PyTorch by {worst:.2e} > --atol {args.atol}", file=sys.stderr)
        return 1
    return 0


def register_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX (primary head logits, coordinates, confidence radius); needs geohf[export]",
        description="Export a model to OUTPUT/model.onnx with config.json and preprocessor_config.json beside it. "
        'Needs the export extra: pip install "geohf[export]".',
    )
    p.add_argument("output_pos", nargs="?", metavar="OUTPUT", help="output folder (new or empty)")
    p.add_argument("-o", "--output", default=None, help="output folder (same as OUTPUT)")
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--mass", type=float, default=0.5, help="probability mass of radius_km (default: 0.5)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted |onnx - torch| on logits and coordinates")
    set_command(p, ExportArguments, export_command)
