"""``geohf export --format onnx``: the model as one ONNX graph, checked against PyTorch.

The graph takes ``pixel_values`` (batch, 3, S, S), preprocessed exactly as the model's
``preprocessor_config.json`` says (saved beside it), and returns:

* ``logits`` (batch, n_cells): the primary head's logits (softmax gives cell probabilities);
* ``coordinates`` (batch, 2): latitude, longitude in degrees by the model's coordinate rule
  (``config.coordinate_method`` / ``coordinate_top_k`` / ``coordinate_radius_km``);
* ``radius_km`` (batch,): the radius around the coordinates holding ``mass`` of the probability.

It is exported with the dynamo exporter (``torch.export`` + onnxscript; the TorchScript
exporter has no ``deg2rad``), batch size dynamic, fp32.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUTPUT_NAMES = ["logits", "coordinates", "radius_km"]


class OnnxGeolocation(nn.Module):
    """What the ONNX graph computes: pixel values → primary logits, coordinates, confidence radius."""

    def __init__(self, model, mass: float = 0.5):
        super().__init__()
        self.model, self.mass = model, mass
        self.head = model.heads[model.config.primary_head]
        if model.coordinate_head() is not self.head or not hasattr(self.head, "confidence_radius"):
            raise ValueError("ONNX export needs a primary cell head that gives the coordinates (a cell-head model)")

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.coordinates, self.head.confidence_radius(out.logits, out.coordinates, self.mass)


@dataclass
class OnnxExport:
    """Where the graph went and how far onnxruntime is from PyTorch on the check batch."""

    path: str
    outputs: list[str]
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        return f"wrote {self.path} (opset {self.opset}; outputs {', '.join(self.outputs)}); max |onnx - torch|: {diffs}"


def compare_with_torch(module: nn.Module, path: str | os.PathLike, pixel_values: torch.Tensor) -> dict[str, float]:
    """Max absolute difference per output between onnxruntime and PyTorch (fp32) on ``pixel_values``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(OUTPUT_NAMES, {"pixel_values": pixel_values.numpy()})
    with torch.inference_mode():
        torch_out = module(pixel_values)
    return {name: float(np.abs(a - b.numpy()).max()) for name, a, b in zip(OUTPUT_NAMES, onnx_out, torch_out)}


def export_onnx(
    model: str | os.PathLike,
    output: str | os.PathLike,
    opset: int = 18,
    mass: float = 0.5,
    check_batch: int = 4,
    seed: int = 0,
) -> OnnxExport:
    """Export ``model`` (folder or Hub id) to ``output``/model.onnx with its config and preprocessor config.

    The folder is written beside ``output`` and renamed into place, so a failed export
    leaves nothing behind; the graph is then checked with onnxruntime on a random batch
    of ``check_batch`` images (a batch size other than the traced one).
    """
    from ..modeling import GeoImageProcessor, GeoModelForImageGeolocation

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty; choose a new folder")
    net = GeoModelForImageGeolocation.from_pretrained(str(model)).float().eval()
    module = OnnxGeolocation(net, mass).eval()
    height, width = net.config.input_hw
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing chatter (TracerWarning, deprecations) is not the user's business
            program = torch.onnx.export(
                module,
                (example,),
                None,
                input_names=["pixel_values"],
                output_names=OUTPUT_NAMES,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        program.save(str(tmp / "model.onnx"))
        net.config.to_json_file(str(tmp / "config.json"))
        GeoImageProcessor.from_config(net.config).to_json_file(str(tmp / "preprocessor_config.json"))
        check = torch.randn(check_batch, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
        diffs = compare_with_torch(module, tmp / "model.onnx", check)
        result = OnnxExport(str(output / "model.onnx"), OUTPUT_NAMES, opset, diffs)
        (tmp / "export.json").write_text(json.dumps(asdict(result), indent=2))
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
