"""PLONK (Dufour et al., "Around the World in 80 Timesteps", CVPR 2025) as a geohf model folder.

A PLONK Hub folder (``nicolas-dufour/PLONK_{YFCC,OSV_5M,iNaturalist}``) holds ``config.json``
(``{cond_dim, depth, dim, expansion, input_dim}``, the ``GeoAdaLNMLP`` it builds) and ``model.safetensors``
(its EMA weights). The network is conditioned on a frozen image embedding it does not hold: StreetCLIP's CLS
token (``geolocal/StreetCLIP``, the last hidden state's first token, before the post-layernorm: 1024-d) for
OSV-5M, DINOv2 ViT-L/14 with registers (its layer-normed CLS token, on a centre square resized to 336 px) for
YFCC and iNaturalist. In geohf that is the transformers tower plus a ``flow`` head holding the network
(:class:`~geohf.modeling.heads.flow.FlowHead`), whose samples, likelihoods and answers then run in batches
like every head's. Only the Riemannian checkpoints (flow matching on the sphere, the three without a suffix)
convert: the ``_flow`` and ``_diffusion`` ones sample in R^3 with other samplers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from ...errors import UserError, one_line
from ..backbones import is_transformers_name
from ..configuration_geohf import HeadSpec
from ..factory import make_config
from ..heads import FlowHead, FlowSettings
from ..modeling_geohf import GeoModelForImageGeolocation, build_model
from .folder import check_output, write_model_folder

PLONK_CONFIG_KEYS = ("cond_dim", "depth", "dim", "expansion", "input_dim")
TOWERS = {"osv5m": "geolocal/StreetCLIP", "yfcc": "facebook/dinov2-with-registers-large"}
DINOV2_SIDE = 336  # PLONK's DINOv2 preprocessing: a centre square resized to 336 px, bicubic

# PLONK's GeoAdaLNMLP parameter names → FlowNetwork's (its time frequencies, checked, are ``time_freqs``)
_RENAMES = (
    (r"^time_embedder\.map_time\.", "time_mlp."),
    (r"^cond_mapper\.", "cond_proj."),
    (r"^initial_mapper\.", "input_proj."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.3\.", r"blocks.\1.mlp.2."),
    (r"^blocks\.(\d+)\.ada_map\.1\.", r"blocks.\1.modulation.1."),
    (r"^final_adaln\.1\.", "final_modulation.1."),
    (r"^final_linear\.", "output_proj."),
)
_TIME_FREQS = "time_embedder.encode_time.freqs"


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What :func:`convert_plonk` wrote."""

    output: Path
    plonk: str
    tower_source: str
    settings: FlowSettings

    def summary(self) -> str:
        s = self.settings
        return (
            f"wrote {self.output}: PLONK {self.plonk} (AdaLN MLP dim {s.dim}, depth {s.depth}) on {self.tower_source}; "
            f"it predicts {'the likeliest of' if s.point == 'likeliest' else 'the first of'} {s.samples} samples "
            f"({s.steps} Euler steps, guidance {s.guidance:g})"
        )


def read_plonk_config(folder: Path) -> dict[str, int]:
    """PLONK's ``config.json``: the five sizes of its network, checked."""
    path = folder / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; a PLONK folder holds config.json and model.safetensors") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({one_line(err)})") from None
    missing = [k for k in PLONK_CONFIG_KEYS if not isinstance(values.get(k), int)]
    if not isinstance(values, dict) or missing:
        raise UserError(f"{path}: not a PLONK network config (needs integers {', '.join(PLONK_CONFIG_KEYS)})")
    return {k: values[k] for k in PLONK_CONFIG_KEYS}


def flow_state_dict(state: dict[str, torch.Tensor], network: torch.nn.Module, where: str) -> dict[str, torch.Tensor]:
    """PLONK's ``GeoAdaLNMLP`` state dict as :class:`~geohf.modeling.heads.flow.FlowNetwork`'s; its stored time
    frequencies must equal the positional ones geohf builds."""
    out = {}
    for key, value in state.items():
        if key == _TIME_FREQS:
            if not torch.allclose(value.float().cpu(), network.time_freqs.float().cpu(), rtol=1e-6, atol=0.0):
                raise UserError(f"{where}: its time embedding's frequencies are not PLONK's positional ones")
            out["time_freqs"] = value
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        if new == key and not key.startswith("blocks."):
            raise UserError(f"{where}: tensor {key!r} is not part of PLONK's GeoAdaLNMLP (a von Mises-Fisher model?)")
        out[new] = value
    expected = set(network.state_dict())
    if set(out) != expected:
        missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
        raise UserError(
            f"{where}: not a GeoAdaLNMLP of its config.json (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    return out


def _tower_config(tower: str, spec: HeadSpec):
    """The geohf config of the tower PLONK's network was trained on: a CLIP tower's CLS token before its
    post-layernorm (``cls_prenorm``, as OSV-5M reads it), a DINOv2 tower's layer-normed CLS token on a 336 px
    centre square."""
    name = str(Path(tower).expanduser()) if Path(tower).expanduser().is_dir() else tower
    probe = make_config(name, [spec])
    family = probe.backbone_kwargs["hf_config"].get("model_type", "")
    if family.startswith("clip"):
        return make_config(name, [spec], backbone_kwargs={"pooling": "cls_prenorm"}, answer="point")
    if family.startswith("dinov2"):
        return make_config(name, [spec], image_size=DINOV2_SIDE, crop_pct=1.0, answer="point")
    raise UserError(f"--tower {tower}: a {family} model; PLONK's towers are StreetCLIP (CLIP) and DINOv2")


def build_plonk(
    plonk: str | os.PathLike, tower: str, settings: dict | None = None
) -> tuple[GeoModelForImageGeolocation, Conversion]:
    """PLONK as a geohf model, in memory: the network from the PLONK folder ``plonk``, the tower's weights
    from ``tower`` (a Hub id or a local folder of a transformers model); ``settings``: the sampler's
    :class:`~geohf.modeling.heads.flow.FlowSettings` fields (``samples``, ``steps``, ``guidance``, ``point``...)."""
    from safetensors.torch import load_file

    folder = Path(plonk).expanduser()
    if not folder.is_dir():
        raise UserError(f"{plonk}: not a folder; download a PLONK repo (config.json, model.safetensors) first")
    sizes = read_plonk_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: missing; a PLONK folder holds config.json and model.safetensors")
    try:
        state = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - SafetensorError for a truncated or foreign file
        raise UserError(f"{weights}: unreadable ({one_line(err)}); download it again") from None
    flow = FlowSettings.from_dict({**(settings or {}), **sizes})
    spec = HeadSpec(name="flow", type="flow", flow=flow.to_dict())
    local = Path(tower).expanduser().is_dir()
    if not local and not is_transformers_name(tower):
        raise UserError(f"--tower {tower}: neither a local folder of a transformers model nor a Hub id (org/name)")
    try:
        config = _tower_config(tower, spec)
        model = build_model(config, "hub")
    except OSError as err:
        reason = one_line(err)[:200]
        if local:
            raise UserError(f"--tower {tower}: cannot read the checkpoint ({reason})") from err
        raise UserError(
            f"--tower {tower}: the tower comes from the Hugging Face Hub, which is unreachable ({reason}); connect "
            "to the Hub or pass --tower LOCAL_FOLDER"
        ) from err
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"--tower {tower}: {one_line(err)}") from err
    head: FlowHead = model.heads["flow"]
    head.network.load_state_dict(flow_state_dict(state, head.network, str(weights)), strict=True)
    tower_source = model.config.pretrained_source or tower
    model.config.pretrained_source = f"{tower_source}; PLONK (Dufour et al., CVPR 2025) network from {folder.name}"
    model.eval()
    return model, Conversion(output=Path(), plonk=str(plonk), tower_source=tower_source, settings=flow)


def convert_plonk(
    output: str | os.PathLike,
    plonk: str | os.PathLike,
    tower: str = TOWERS["osv5m"],
    settings: dict | None = None,
    overwrite: bool = False,
) -> Conversion:
    """Write PLONK (:func:`build_plonk`) to the model folder ``output`` (weights, config, the tower's
    preprocessing), so ``pipeline("image-geolocation", model=output)`` runs it. Written beside ``output`` under a
    hidden name and renamed into place once complete; with ``overwrite`` an existing ``output`` is replaced then."""
    output = check_output(output, overwrite)
    model, conversion = build_plonk(plonk, tower, settings)
    write_model_folder(model, output)
    return dataclasses.replace(conversion, output=output)
