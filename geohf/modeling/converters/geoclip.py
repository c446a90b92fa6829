"""Published geolocation models as geohf model folders.

:func:`convert_geoclip`: GeoCLIP (Vivanco et al., NeurIPS 2023) as released. Its image side is CLIP
ViT-L/14's image features (``openai/clip-vit-large-patch14``: the post-layernorm CLS token through
``visual_projection``, 768-d, on CLIP's own preprocessing) → its image MLP (Linear 768→768, ReLU,
Linear 768→512) → L2-normalised, matched by ``exp(logit_scale) * cosine`` against its location
encoder's embeddings of a 100K-point GPS gallery; it predicts the best gallery point. In geohf that is
a CLIP tower with its projection plus a ``geoclip`` head holding the released MLP, location encoder,
logit scale and gallery (read from the installed ``geoclip`` wheel), with the ``argmax`` coordinate rule.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ...errors import UserError, one_line
from ...geo.gazetteer import Gazetteer
from ..backbones import is_transformers_name
from ..configuration_geohf import DEFAULT_QUEUE_SIZE, GALLERY_FILE, HeadSpec
from ..factory import make_config
from ..heads import GeoClipHead, gallery_cells
from ..location_encoder import read_gallery, require_geoclip_files
from ..modeling_geohf import GeoModelForImageGeolocation, build_model
from .folder import check_output, write_model_folder

logger = logging.getLogger(__name__)
GEOCLIP_CLIP = "openai/clip-vit-large-patch14"
GEOCLIP_EMBED_DIM = 768  # CLIP ViT-L/14's image features: the width GeoCLIP's image MLP takes


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What :func:`convert_geoclip` wrote."""

    output: Path
    clip: str
    tower_source: str
    gallery: str
    gallery_points: int
    duplicates_dropped: int

    def summary(self) -> str:
        return (
            f"wrote {self.output}: GeoCLIP on {self.tower_source}, gallery {self.gallery} "
            f"({self.gallery_points:,} points, {self.duplicates_dropped:,} repeats dropped); it predicts the best "
            "gallery point (coordinate rule argmax)"
        )


def geoclip_gallery_spec(gallery: str, points: torch.Tensor) -> tuple[HeadSpec, int]:
    """The ``geoclip`` head over ``points`` ((N, 2) degrees); ``gallery`` names where they came from."""
    cells, dropped = gallery_cells(points[:, 0].double().numpy(), points[:, 1].double().numpy(), Gazetteer())
    spec = HeadSpec(
        name="geoclip",
        type="geoclip",
        labels=cells["name"],
        cells=cells,
        gallery=gallery,
        queue_size=DEFAULT_QUEUE_SIZE,
    )
    return spec, dropped


def _gallery_points(gallery: str, files) -> tuple[str, torch.Tensor]:
    if gallery == "geoclip":
        return "geoclip", files.load_gallery(torch.float64)
    path = Path(gallery).expanduser()
    if not path.is_file():
        raise UserError(f"--gallery {gallery}: neither 'geoclip' (GeoCLIP's 100K points) nor a CSV file")
    try:
        points = read_gallery(path, torch.float64)
    except ValueError as err:
        raise UserError(f"--gallery {gallery}: {one_line(err)}") from err
    if not len(points):
        raise UserError(f"--gallery {gallery}: the file has no points")
    bad = ~((points[:, 0].abs() <= 90) & (points[:, 1].abs() <= 180) & torch.isfinite(points).all(1))
    if bad.any():
        row = int(np.flatnonzero(bad.numpy())[0]) + 2  # 1-based, after the header
        raise UserError(f"--gallery {gallery}: row {row} is not a latitude in [-90, 90], longitude in [-180, 180]")
    return GALLERY_FILE, points


def _clip_config(clip: str, spec: HeadSpec):
    """The geohf config of GeoCLIP on ``clip``: its projected image features and preprocessing; the answer is
    GeoCLIP's, the best gallery point (``argmax``) named by that point's own country and region (``cell``: a
    coastal point the boundaries place at sea is kept where it is, with no country, not moved to land)."""
    config = make_config(clip, [spec], backbone_kwargs={"projection": True}, coordinate_method="argmax", answer="cell")
    hf = config.backbone_kwargs["hf_config"]
    if hf.get("model_type") != "clip_vision_model":
        raise UserError(f"--clip {clip}: a {hf.get('model_type')} checkpoint; GeoCLIP's image side is a CLIP model")
    if hf.get("projection_dim") != GEOCLIP_EMBED_DIM:
        raise UserError(
            f"--clip {clip}: its image features are {hf.get('projection_dim')}-d; GeoCLIP's image MLP takes CLIP "
            f"ViT-L/14's {GEOCLIP_EMBED_DIM}-d ones (a full CLIPModel checkpoint such as {GEOCLIP_CLIP})"
        )
    return config


def _hub_unreachable(clip: str, err: OSError) -> UserError:
    reason = one_line(err)[:200]
    return UserError(
        f"--clip {clip}: the CLIP tower's config and weights come from the Hugging Face Hub, which is unreachable "
        f"({reason}); connect to the Hub, or pass --clip LOCAL_FOLDER (a saved CLIPModel, e.g. {GEOCLIP_CLIP})"
    )


def build_geoclip(clip: str = GEOCLIP_CLIP, gallery: str = "geoclip") -> tuple[GeoModelForImageGeolocation, Conversion]:
    """GeoCLIP as a geohf model, in memory: the CLIP tower's weights from ``clip`` (a Hub id or a local
    folder of a full ``CLIPModel``), the rest from the ``geoclip`` wheel; ``gallery``: ``geoclip`` (its
    100K points) or a CSV of ``LAT, LON`` points (a subset, or another gallery)."""
    files = require_geoclip_files("GeoCLIP's released weights and GPS gallery")
    kind, points = _gallery_points(gallery, files)
    spec, dropped = geoclip_gallery_spec(kind, points)
    local = Path(clip).expanduser().is_dir()
    if not local and not is_transformers_name(clip):
        raise UserError(f"--clip {clip}: neither a local folder of a CLIPModel nor a Hub id (org/name)")
    try:
        config = _clip_config(str(Path(clip).expanduser()) if local else clip, spec)
        model = build_model(config, "hub")
    except OSError as err:
        if local:
            raise UserError(f"--clip {clip}: cannot read the CLIP checkpoint ({one_line(err)})") from err
        raise _hub_unreachable(clip, err) from err
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"--clip {clip}: {one_line(err)} (GeoCLIP needs a full CLIPModel)") from err
    head: GeoClipHead = model.heads["geoclip"]
    loaded = head.load_geoclip(files)
    if "image_mlp" not in loaded:  # _clip_config checked the width: the release itself does not fit
        raise UserError(f"the installed geoclip wheel's image MLP does not fit {GEOCLIP_EMBED_DIM}-d CLIP features")
    try:
        version = importlib.metadata.version("geoclip")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    tower = model.config.pretrained_source or clip
    model.config.pretrained_source = (
        f"{tower}; GeoCLIP (Vivanco et al., NeurIPS 2023) image MLP, location encoder and logit scale from geoclip "
        f"{version}"
    )
    model.eval()
    conversion = Conversion(
        output=Path(),
        clip=clip,
        tower_source=tower,
        gallery=gallery if kind == GALLERY_FILE else "geoclip",
        gallery_points=len(spec.labels),
        duplicates_dropped=dropped,
    )
    return model, conversion


def convert_geoclip(
    output: str | os.PathLike, clip: str = GEOCLIP_CLIP, gallery: str = "geoclip", overwrite: bool = False
) -> Conversion:
    """Write GeoCLIP (:func:`build_geoclip`) to the model folder ``output``: weights (the gallery's embeddings
    included), config and the CLIP preprocessing, so ``pipeline("image-geolocation", model=output)`` runs it.

    The folder is written beside ``output`` under a hidden name and renamed into place once complete; with
    ``overwrite`` an existing ``output`` is replaced only then."""
    output = check_output(output, overwrite)
    model, conversion = build_geoclip(clip, gallery)
    write_model_folder(model, output)
    return dataclasses.replace(conversion, output=output)
