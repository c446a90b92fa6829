"""The OSV-5M baseline (Astruc et al., CVPR 2024; Hub ``osv5m/baseline``, MIT) as a geohf model folder.

The release is a hydra ``config.json`` (``{"model": the network's instance config, "transform": the test
transform}``), a ``pytorch_model.bin`` of its ``Geolocalizer`` (the network under ``model.``, its ``backbone``,
``mid`` and ``head`` also under their own names) and, separately, the quadtree ``quadtree_10_1000.csv``
(``cluster_id, min_lat, min_lon, max_lat, max_lon, mean_lat, mean_lon``, written by its
``scripts/preprocessing/preprocess.py``): the cells' centres and boxes are read from that file when the network
is built, and the checkpoint may not hold them.

Its network: a CLIP vision tower (``CLIPVisionModel``, ``laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K``) whose
``last_hidden_state[:, 0]`` (the CLS token before ``post_layernorm``) goes through ``MLPCentroid``
(LayerNorm, then Linear, GroupNorm(4), GELU per hidden width) and two linear layers, ``classif`` (C cell
logits) and ``reg`` (2C offsets, per cell latitude then longitude). ``HybridHeadCentroid`` takes the best cell,
``t = 1.2 tanh(reg)`` of that cell, and moves the cell's mean point by ``t`` times the distance from it to the
box edge on that side (``max - mean`` for ``t > 0``, ``mean - min`` else), in units of 90° / 180°, clamps to
[-1, 1] and returns radians.

In geohf that is a CLIP tower pooled ``cls_prenorm`` and a ``hybrid`` head with ``hidden_dims`` (the same MLP,
its keys one to one), whose linear layer is ``classif`` and ``reg`` stacked, with the ``argmax`` coordinate rule.
The one difference: past the antimeridian geohf wraps the longitude where OSV-5M clamps it to ±180°.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...errors import UserError, one_line
from ...geo.gazetteer import Gazetteer
from ..backbones import is_transformers_name, read_state_dict
from ..configuration_geohf import HeadSpec
from ..factory import make_config
from ..heads import HybridHead
from ..modeling_geohf import GeoModelForImageGeolocation, build_model
from .folder import check_output, write_model_folder

logger = logging.getLogger(__name__)

OSV5M_HUB = "osv5m/baseline"
QUADTREE_FILE = "quadtree_10_1000.csv"
QUADTREE_COLUMNS = ("min_lat", "min_lon", "max_lat", "max_lon", "mean_lat", "mean_lon")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HEAD, _MID, _BACKBONE = "HybridHeadCentroid", "MLPCentroid", "CLIP"


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What :func:`convert_osv5m` wrote."""

    output: Path
    source: str
    clip: str
    quadtree: str
    cells: int
    hidden_dims: list[int]
    checked_buffers: bool

    def summary(self) -> str:
        checked = "; the checkpoint's cell buffers match it" if self.checked_buffers else ""
        return (
            f"wrote {self.output}: the OSV-5M baseline ({self.source}) on a CLIP tower ({self.clip}), MLP "
            f"{self.hidden_dims}, hybrid head over {self.cells:,} quadtree cells from {self.quadtree}{checked}; it "
            "predicts the best cell's point moved by its offset (coordinate rule argmax)"
        )


@dataclasses.dataclass(frozen=True)
class Release:
    """The parts of an OSV-5M release geohf reads."""

    folder: Path
    config: dict
    state: dict[str, torch.Tensor]
    clip: str  # the backbone's ``path``: the CLIP checkpoint whose config builds the tower
    hidden_dims: list[int]
    classes: int
    preprocessing: dict


def _target(node: dict | None) -> str:
    return str((node or {}).get("_target_", "")).rsplit(".", 1)[-1]


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


def read_release(source: str | os.PathLike) -> Release:
    """The config and weights of an OSV-5M release: a local folder, or a Hub id (downloaded)."""
    folder = _release_folder(str(source))
    config_path = folder / "config.json"
    _need(config_path.is_file(), f"{folder}: no config.json (OSV-5M's hydra config of the network)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_path}: not JSON ({err})") from err
    network = config.get("model") if isinstance(config.get("model"), dict) else None
    _need(network is not None, f"{config_path}: no 'model' (OSV-5M's network config); is this osv5m/baseline's?")
    head = (network.get("head") or {}).get("instance") or {}
    mid = (network.get("mid") or {}).get("instance") or {}
    backbone = (network.get("backbone") or {}).get("instance") or {}
    where = f"{config_path}: model."
    _need(_target(head) == _HEAD, f"{where}head is {_target(head) or 'missing'}; geohf converts {_HEAD}")
    _need(bool(head.get("use_tanh")), f"{where}head.instance.use_tanh is false; the hybrid head's offsets use tanh")
    scale = float(head.get("scale_tanh", 0))
    _need(scale == HybridHead.SCALE, f"{where}head.instance.scale_tanh is {scale}; geohf's is {HybridHead.SCALE}")
    _need(_target(mid) == _MID, f"{where}mid is {_target(mid) or 'missing'}; geohf converts {_MID}")
    _need(_target(mid.get("norm")) == "GroupNorm", f"{where}mid.instance.norm is not torch.nn.GroupNorm")
    _need(_target(mid.get("activation")) == "GELU", f"{where}mid.instance.activation is not torch.nn.GELU")
    _need(not mid.get("aux_data"), f"{where}mid.instance.aux_data: auxiliary heads are not converted")
    _need(_target(backbone) == _BACKBONE, f"{where}backbone is {_target(backbone) or 'missing'}; geohf converts CLIP")
    classes = int(head.get("final_dim", 0))
    _need(classes > 0, f"{where}head.instance.final_dim (the number of cells) is missing")
    hidden = [int(w) for w in mid.get("hidden_dim") or []]
    _need(bool(hidden), f"{where}mid.instance.hidden_dim is missing")
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    _need(weights is not None, f"{folder}: no {' or '.join(WEIGHT_FILES)} beside config.json")
    try:
        state = read_state_dict(weights)  # torch.load(weights_only=True): tensors, never arbitrary objects
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: one line naming it
        raise UserError(f"{weights}: cannot read the weights ({one_line(err)[:200]})") from err
    return Release(
        folder=folder,
        config=config,
        state=state,
        clip=str(backbone.get("path") or ""),
        hidden_dims=hidden,
        classes=classes,
        preprocessing=transform_preprocessing(config.get("transform"), config_path),
    )


def _release_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_transformers_name(source):
        raise UserError(f"{source}: neither a folder of the OSV-5M release nor a Hub id (default {OSV5M_HUB})")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["config.json", *WEIGHT_FILES, QUADTREE_FILE]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access: one line
        reason = one_line(err)[:200]
        raise UserError(
            f"{source}: cannot download it from the Hugging Face Hub ({reason}); connect, or pass the local folder "
            "holding its config.json and pytorch_model.bin"
        ) from err


def transform_preprocessing(transform: dict | None, where: Path) -> dict:
    """geohf's preprocessing of OSV-5M's torchvision test transform (Resize, CenterCrop, ToTensor, Normalize);
    a config without one keeps the CLIP tower's own (``{}``), which the converter logs."""
    if transform is None:
        logger.warning("%s: no 'transform'; the CLIP checkpoint's own preprocessing is used", where)
        return {}
    steps = transform.get("transforms")
    _need(isinstance(steps, list), f"{where}: 'transform' is not a torchvision Compose of steps")
    out = {"crop_pct": 1.0, "interpolation": "bilinear"}
    resize = crop = None
    for step in steps:
        name = _target(step)
        if name == "Resize":
            resize = step.get("size")
            out["interpolation"] = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(step.get("interpolation", 2)))
            _need(out["interpolation"] is not None, f"{where}: transform Resize interpolation {step['interpolation']}")
        elif name == "CenterCrop":
            crop = step.get("size")
        elif name == "Normalize":
            out["image_mean"], out["image_std"] = [float(v) for v in step["mean"]], [float(v) for v in step["std"]]
        elif name != "ToTensor":
            raise UserError(f"{where}: transform step {step.get('_target_')} has no geohf preprocessing")
    _need(isinstance(resize, int) and "image_mean" in out, f"{where}: transform has no Resize(int) and Normalize")
    crop = crop[0] if isinstance(crop, list) else crop
    out["image_size"] = int(crop or resize)
    out["crop_pct"] = float(out["image_size"] / resize) if crop else 1.0
    return out


def read_quadtree(path: str | os.PathLike) -> pd.DataFrame:
    """OSV-5M's quadtree CSV, one row per cell in class order, checked."""
    path = Path(path).expanduser()
    _need(path.is_file(), f"--quadtree {path}: no such file (OSV-5M's {QUADTREE_FILE})")
    cells = pd.read_csv(path)
    missing = [c for c in QUADTREE_COLUMNS if c not in cells]
    _need(not missing, f"{path}: no column(s) {missing}; OSV-5M's quadtree has {', '.join(QUADTREE_COLUMNS)}")
    lat0, lon0, lat1, lon1, lat, lon = cells[list(QUADTREE_COLUMNS)].to_numpy(np.float64).T
    bad = ~np.isfinite(np.stack([lat0, lon0, lat1, lon1, lat, lon])).all(0)
    bad |= (lat0 > lat) | (lat > lat1) | (lon0 > lon) | (lon > lon1)
    bad |= (np.abs(lat0) > 90) | (np.abs(lat1) > 90) | (np.abs(lon0) > 180) | (np.abs(lon1) > 180)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 2  # 1-based, after the header
        raise UserError(f"{path}: row {row} is not a box min <= mean <= max within [-90, 90] x [-180, 180]")
    if "cluster_id" in cells:
        ids = cells["cluster_id"].to_numpy()
        _need(np.array_equal(ids, np.arange(len(cells))), f"{path}: cluster_id is not 0, 1, 2... in row order")
    return cells


def _find_quadtree(quadtree: str | None, release: Release) -> Path:
    if quadtree:
        return Path(quadtree).expanduser()
    beside = release.folder / QUADTREE_FILE
    if beside.is_file():
        return beside
    configured = Path(str(release.config["model"]["head"]["instance"].get("quadtree_path") or ""))
    if configured.name and configured.is_file():
        return configured
    raise UserError(
        f"{release.folder}: no {QUADTREE_FILE} beside the weights; pass --quadtree PATH (the cells of OSV-5M's "
        "quadtree, written by its scripts/preprocessing/preprocess.py: their points and boxes are not in the weights)"
    )


def hybrid_spec(cells: pd.DataFrame, hidden_dims: list[int]) -> HeadSpec:
    """The ``hybrid`` head over OSV-5M's quadtree: each cell's mean point (its ``centroid``), box, and names."""
    lat, lon = cells["mean_lat"].to_numpy(np.float64), cells["mean_lon"].to_numpy(np.float64)
    names = [f"quadtree_10_1000/{i}" for i in range(len(cells))]
    spec_cells = {
        "name": names,
        "latitude": lat.tolist(),
        "longitude": lon.tolist(),
        "lat_min": cells["min_lat"].astype(float).tolist(),
        "lat_max": cells["max_lat"].astype(float).tolist(),
        "lon_min": cells["min_lon"].astype(float).tolist(),
        "lon_max": cells["max_lon"].astype(float).tolist(),
        **Gazetteer().label(lat, lon),
    }
    return HeadSpec(
        name="hybrid", type="hybrid", labels=names, partition=None, cells=spec_cells, hidden_dims=hidden_dims
    )


def _part(state: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The tensors of ``part`` (backbone, mid, head): under ``model.<part>.``, else ``<part>.`` (the aliases)."""
    for prefix in (f"model.{part}.", f"{part}."):
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    return {}


def check_buffers(head: dict[str, torch.Tensor], cells: pd.DataFrame, where: str) -> bool:
    """Whether the checkpoint holds the head's cell buffers; a :class:`UserError` when they contradict the CSV."""
    if "cell_center" not in head:
        return False
    scale = np.array([90.0, 180.0])
    mean = cells[["mean_lat", "mean_lon"]].to_numpy(np.float64)
    expected = {
        "cell_center": mean / scale,
        "cell_size_up": (cells[["max_lat", "max_lon"]].to_numpy(np.float64) - mean) / scale,
        "cell_size_down": (mean - cells[["min_lat", "min_lon"]].to_numpy(np.float64)) / scale,
    }
    for name, value in expected.items():
        if name not in head:
            continue
        got = head[name].double().numpy()
        if got.shape != value.shape or not np.allclose(got, value, atol=1e-6, rtol=0):
            raise UserError(f"{where}: its {name} ({got.shape[0]} cells) disagrees with the checkpoint's head buffer")
    return True


def build_osv5m(
    source: str = OSV5M_HUB, quadtree: str | None = None, clip: str | None = None
) -> tuple[GeoModelForImageGeolocation, Conversion]:
    """The OSV-5M baseline as a geohf model, in memory: weights and config from ``source`` (a release folder or
    Hub id), cells from ``quadtree`` (default: its ``quadtree_10_1000.csv`` beside the weights), the CLIP tower's
    architecture from ``clip`` (default: the backbone its config names, a Hub id or local folder)."""
    release = read_release(source)
    qt_path = _find_quadtree(quadtree, release)
    cells = read_quadtree(qt_path)
    _need(
        len(cells) == release.classes,
        f"{qt_path}: {len(cells):,} cells, the checkpoint's head has {release.classes:,}; pass the quadtree it was "
        "trained with",
    )
    backbone, mid, head = (_part(release.state, p) for p in ("backbone", "mid", "head"))
    _need(bool(backbone) and bool(mid), f"{release.folder}: the weights have no model.backbone.* / model.mid.* keys")
    checked = check_buffers(head, cells, str(qt_path))
    clip = clip or release.clip
    _need(bool(clip), f"{release.folder}/config.json names no backbone path; pass --clip (the CLIP checkpoint)")
    spec = hybrid_spec(cells, release.hidden_dims)
    local = Path(clip).expanduser().is_dir()
    try:
        config = make_config(
            str(Path(clip).expanduser()) if local else clip,
            [spec],
            backbone_kwargs={"pooling": "cls_prenorm"},
            coordinate_method="argmax",
            answer="cell",
        )
    except OSError as err:
        reason = one_line(err)[:200]
        where = "cannot read the CLIP config" if local else "the Hugging Face Hub is unreachable"
        raise UserError(
            f"--clip {clip}: {where} ({reason}); the tower's architecture comes from its config.json: connect, or "
            "pass --clip LOCAL_FOLDER"
        ) from err
    hf = config.backbone_kwargs["hf_config"]
    _need(hf.get("model_type") == "clip_vision_model", f"--clip {clip}: a {hf.get('model_type')} checkpoint, not CLIP")
    for key, value in release.preprocessing.items():  # OSV-5M's own test transform, not the tower's processor
        setattr(config, key, value)
    model = build_model(config, None)
    load_weights(model, backbone, mid, release.folder)
    model.config.pretrained_source = (
        f"OSV-5M baseline (Astruc et al., CVPR 2024) from {source}: CLIP tower, MLP and hybrid head; "
        f"cells from {qt_path.name}"
    )
    model.eval()
    conversion = Conversion(
        output=Path(),
        source=str(source),
        clip=clip,
        quadtree=str(qt_path),
        cells=len(cells),
        hidden_dims=release.hidden_dims,
        checked_buffers=checked,
    )
    return model, conversion


def load_weights(model: GeoModelForImageGeolocation, backbone: dict, mid: dict, where: Path) -> None:
    """OSV-5M's tensors into the geohf model: ``clip.*`` → the tower, ``mlp.*`` → the head's MLP (same keys),
    ``classif`` and ``reg`` stacked → the head's linear layer (class logits first, then the offsets)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        if key.startswith("clip.") and not key.endswith("position_ids"):
            state[f"geo.backbone.model.{key[len('clip.') :]}"] = value
    for key, value in mid.items():
        if key.startswith("mlp."):
            state[f"heads.hybrid.{key}"] = value
    try:
        state["heads.hybrid.fc.weight"] = torch.cat([mid["classif.weight"], mid["reg.weight"]])
        state["heads.hybrid.fc.bias"] = torch.cat([mid["classif.bias"], mid["reg.bias"]])
    except KeyError as err:
        raise UserError(f"{where}: the weights have no model.mid.{err.args[0]} (MLPCentroid's layers)") from err
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unused = [k for k in state if k not in target]
    _need(not missing, f"{where}: the weights do not fill {missing[:3]} ({len(missing)} tensors)")
    _need(not unused, f"{where}: the weights hold {unused[:3]}, which this architecture has no place for")
    for key in target:
        if state[key].shape != target[key].shape:
            raise UserError(
                f"{where}: tensor {key} is {list(state[key].shape)}, the CLIP config gives {list(target[key].shape)}: "
                "pass --clip the tower it was trained on"
            )
    model.load_state_dict(state, strict=True)


def convert_osv5m(
    output: str | os.PathLike,
    source: str = OSV5M_HUB,
    quadtree: str | None = None,
    clip: str | None = None,
    overwrite: bool = False,
) -> Conversion:
    """Write the OSV-5M baseline (:func:`build_osv5m`) to the model folder ``output``, whole or not at all."""
    output = check_output(output, overwrite)
    model, conversion = build_osv5m(source, quadtree, clip)
    write_model_folder(model, output)
    return dataclasses.replace(conversion, output=output)
