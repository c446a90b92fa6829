"""``geohf convert osv5m``: the OSV-5M baseline as a geohf model folder, against OSV-5M's inference re-derived here.

The oracle follows gastruc/osv5m's code as released (``models/huggingface.py`` ``Geolocalizer``,
``models/networks/backbones.py`` ``CLIP``, ``models/networks/mlp.py`` ``MLPCentroid``,
``models/networks/heads/hybrid.py`` ``HybridHeadCentroid``, ``models/networks/utils.py`` ``UnormGPS``), written
anew: the CLS token of ``last_hidden_state`` → LayerNorm, (Linear, GroupNorm(4), GELU) per hidden width →
``classif`` (C) and ``reg`` (2C) → the best cell's ``1.2 tanh`` offset scaled by the float64 distances from the
cell's mean point to its box (units of 90° and 180°) → clamped to [-1, 1] → radians. The checkpoint is tiny and
random, saved in their key layout (``model.*`` and the ``backbone`` / ``mid`` / ``head`` aliases, the head's
float64 buffers, ``position_ids``) with a hydra ``config.json`` as ``save_as_huggingface`` writes it.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from geohf.errors import UserError
from geohf.modeling import GeoModelForImageGeolocation

VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VISION |= {"patch_size": 16, "image_size": 32, "hidden_act": "gelu"}
HIDDEN = [32, 16]


def quadtree_frame(seed: int = 0) -> pd.DataFrame:
    """A 8 x 6 grid of boxes over the world (cells touching ±180° included), each with a mean point inside."""
    rng = np.random.default_rng(seed)
    rows = []
    for lat0 in range(-90, 90, 30):
        for lon0 in range(-180, 180, 45):
            mean_lat, mean_lon = lat0 + rng.uniform(3, 27), lon0 + rng.uniform(3, 42)
            rows.append((lat0, lon0, lat0 + 30, lon0 + 45, mean_lat, mean_lon))
    frame = pd.DataFrame(rows, columns=["min_lat", "min_lon", "max_lat", "max_lon", "mean_lat", "mean_lon"])
    frame.index.name = "cluster_id"
    return frame


class OsvNetwork(nn.Module):
    """OSV-5M's network for the baseline, as its code builds it (see the module docstring)."""

    def __init__(self, clip_config, cells: pd.DataFrame):
        super().__init__()
        from transformers import CLIPVisionModel

        n = len(cells)
        self.backbone = nn.Module()
        self.backbone.clip = CLIPVisionModel(clip_config)
        self.mid = nn.Module()
        dims = [clip_config.hidden_size, *HIDDEN]
        layers = [nn.LayerNorm(dims[0])]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GroupNorm(4, b), nn.GELU()]
        self.mid.mlp = nn.Sequential(*layers)
        self.mid.classif = nn.Linear(HIDDEN[-1], n)
        self.mid.reg = nn.Linear(HIDDEN[-1], 2 * n)
        with torch.no_grad():  # best cells that vary from image to image, offsets of every size (tanh saturated,
            self.mid.classif.weight.normal_(0, 3.0)  # so that cells at ±180° overshoot)
            self.mid.classif.bias[(cells["min_lon"] == -180) | (cells["max_lon"] == 180)] += 4.0  # often the best
            self.mid.reg.weight.normal_(0, 1.0)
            east, west = np.flatnonzero(cells["max_lon"] == 180), np.flatnonzero(cells["min_lon"] == -180)
            self.mid.reg.bias[2 * east + 1], self.mid.reg.bias[2 * west + 1] = 3.0, -3.0  # outward, past ±180°
        self.head = nn.Module()
        scale = np.array([90.0, 180.0])
        mean = cells[["mean_lat", "mean_lon"]].to_numpy() / scale
        up = cells[["max_lat", "max_lon"]].to_numpy() / scale - mean
        down = mean - cells[["min_lat", "min_lon"]].to_numpy() / scale
        self.head.register_buffer("cell_center", torch.tensor(mean))  # float64, as pandas gives them
        self.head.register_buffer("cell_size_up", torch.tensor(up))
        self.head.register_buffer("cell_size_down", torch.tensor(down))

    def forward(self, pixel_values):
        """(label logits, gps in radians, the same before the clamp), OSV-5M's head in eval mode."""
        x = self.backbone.clip(pixel_values=pixel_values)["last_hidden_state"][:, 0, :]
        x = self.mid.mlp(x)
        out = torch.cat([self.mid.classif(x), self.mid.reg(x)], dim=1)
        n = self.head.cell_center.shape[0]
        logits, reg = out[..., :n], 1.2 * torch.tanh(out[..., n:])
        best = logits.argmax(-1)
        reg = reg.view(reg.shape[0], -1, 2).gather(1, best[:, None, None].expand(-1, 1, 2))[:, 0]
        size = torch.where(reg > 0, self.head.cell_size_up[best], self.head.cell_size_down[best])
        gps = self.head.cell_center[best] + reg * size
        unit = torch.Tensor([np.pi * 0.5, np.pi])[None]
        return logits, torch.clamp(gps, -1, 1) * unit, gps * unit


class Geolocalizer(nn.Module):
    """The Hub wrapper's key layout: the network under ``model``, its parts again under their own names."""

    def __init__(self, network: OsvNetwork):
        super().__init__()
        self.model = network
        self.head, self.mid, self.backbone = network.head, network.mid, network.backbone


def hydra_config(clip_path: str, classes: int) -> dict:
    partial = {"_partial_": True}
    return {
        "model": {
            "_target_": "models.networks.network.ContrastiveHybridUnFrozenBackbone",
            "backbone": {
                "instance": {"_target_": "models.networks.backbones.CLIP", "path": clip_path},
                "output_dim": 32,
            },
            "mid": {
                "activation": {"_target_": "torch.nn.GELU", **partial},
                "norm": {"_target_": "torch.nn.GroupNorm", **partial},
                "instance": {
                    "_target_": "models.networks.mlp.MLPCentroid",
                    "initial_dim": 32,
                    "hidden_dim": HIDDEN,
                    "final_dim": 3 * classes,
                    "norm": {"_target_": "torch.nn.GroupNorm", **partial},
                    "activation": {"_target_": "torch.nn.GELU", **partial},
                },
            },
            "head": {
                "target_key": "label",
                "final_dim": 3 * classes,
                "instance": {
                    "_target_": "models.networks.heads.hybrid.HybridHeadCentroid",
                    "final_dim": classes,
                    "use_tanh": True,
                    "scale_tanh": 1.2,
                    "quadtree_path": "/nonexistent/quadtree_10_1000.csv",
                },
            },
            "mode": "eval",
        },
        "transform": {
            "_target_": "torchvision.transforms.Compose",
            "transforms": [
                {"_target_": "torchvision.transforms.Resize", "size": 32, "interpolation": 3, "antialias": True},
                {"_target_": "torchvision.transforms.CenterCrop", "size": 32},
                {"_target_": "torchvision.transforms.ToTensor"},
                {
                    "_target_": "torchvision.transforms.Normalize",
                    "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711],
                },
            ],
        },
    }


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny OSV-5M release folder (config.json, pytorch_model.bin, quadtree_10_1000.csv) and its network."""
    from transformers import CLIPVisionConfig

    root = tmp_path_factory.mktemp("osv5m")
    clip_dir = root / "clip"
    clip_config = CLIPVisionConfig(**VISION)
    clip_config.save_pretrained(clip_dir)
    cells = quadtree_frame()
    torch.manual_seed(0)
    network = OsvNetwork(clip_config, cells).eval()
    folder = root / "baseline"
    folder.mkdir()
    state = Geolocalizer(network).state_dict()
    state["model.backbone.clip.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(hydra_config(str(clip_dir), len(cells))))
    cells.to_csv(folder / "quadtree_10_1000.csv")
    return folder, network, cells


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    from geohf.cli import main

    out = tmp_path_factory.mktemp("osv5m-model") / "osv5m"
    assert main(["convert", "osv5m", str(out), "--source", str(release[0])]) == 0
    return out


def test_predictions_are_osv5m_s_own(converted, release):
    _, network, cells = release
    model = GeoModelForImageGeolocation.from_pretrained(converted).eval()
    torch.manual_seed(1)
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
        logits, gps, unclamped = network(x)
    logit_diff = (out.logits - logits).abs().max().item()
    ours = out.coordinates.double()
    theirs = torch.rad2deg(gps)
    clamped = (unclamped[:, 1].abs() > np.pi).numpy()  # OSV-5M pins these to ±180°, geohf wraps them
    lat_diff = (ours[:, 0] - theirs[:, 0]).abs().max().item()
    lon_diff = (ours[~clamped, 1] - theirs[~clamped, 1]).abs().max().item()
    wrapped = torch.remainder(torch.rad2deg(unclamped[clamped, 1]) + 180, 360) - 180
    wrap_diff = (ours[clamped, 1] - wrapped).abs().max().item() if clamped.any() else 0.0
    print(
        f"max |geohf - OSV-5M|: class logit {logit_diff:.2e}, latitude {lat_diff:.2e} deg, longitude "
        f"{lon_diff:.2e} deg ({(~clamped).sum()} images); past ±180 deg ({clamped.sum()} images) geohf's wrapped "
        f"longitude equals OSV-5M's unclamped one wrapped to {wrap_diff:.2e} deg"
    )
    assert logit_diff < 1e-5
    assert torch.equal(out.logits.argmax(-1), logits.argmax(-1))
    assert lat_diff < 1e-4 and lon_diff < 1e-4 and wrap_diff < 1e-4
    assert clamped.any() and (~clamped).sum() > 8  # both cases exercised
    moved = (ours - torch.tensor(cells[["mean_lat", "mean_lon"]].to_numpy())[logits.argmax(-1)]).abs().max()
    assert moved > 1.0  # the offsets moved the points off the cells' mean points


def test_config_holds_the_quadtree_and_osv5m_s_preprocessing(converted, release):
    cells = release[2]
    config = json.loads((converted / "config.json").read_text())
    assert config["coordinate_method"] == "argmax" and config["answer"] == "cell"
    assert config["backbone_kwargs"]["pooling"] == "cls_prenorm"
    (head,) = config["heads"]
    assert head["type"] == "hybrid" and head["hidden_dims"] == HIDDEN and len(head["labels"]) == len(cells)
    assert head["cells"]["lat_max"] == cells["max_lat"].astype(float).tolist()
    assert head["cells"]["longitude"] == cells["mean_lon"].tolist()
    assert config["image_size"] == 32 and config["crop_pct"] == 1.0 and config["interpolation"] == "bicubic"
    assert config["image_mean"] == [0.48145466, 0.4578275, 0.40821073]


def _copy_release(release, tmp_path):
    import shutil

    folder = tmp_path / "release"
    shutil.copytree(release[0], folder)
    return folder


def test_bad_releases_get_one_clear_line(release, tmp_path):
    from geohf.modeling.converters.osv5m import convert_osv5m

    folder = _copy_release(release, tmp_path)
    (folder / "quadtree_10_1000.csv").unlink()
    with pytest.raises(UserError, match="pass --quadtree"):
        convert_osv5m(tmp_path / "a", str(folder))
    cells = release[2].copy()
    cells.iloc[:-1].to_csv(tmp_path / "short.csv")
    with pytest.raises(UserError, match="47 cells, the checkpoint's head has 48"):
        convert_osv5m(tmp_path / "b", str(folder), quadtree=str(tmp_path / "short.csv"))
    cells.loc[3, "mean_lat"] += 1.0
    cells.to_csv(tmp_path / "moved.csv")
    with pytest.raises(UserError, match="cell_center .* disagrees with the checkpoint"):
        convert_osv5m(tmp_path / "c", str(folder), quadtree=str(tmp_path / "moved.csv"))
    cells.loc[5, "mean_lat"] = cells.loc[5, "max_lat"] + 1
    cells.to_csv(tmp_path / "outside.csv")
    with pytest.raises(UserError, match="row 7 is not a box"):
        convert_osv5m(tmp_path / "d", str(folder), quadtree=str(tmp_path / "outside.csv"))
    config = json.loads((folder / "config.json").read_text())
    config["model"]["head"]["instance"]["scale_tanh"] = 2.0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="scale_tanh is 2.0"):
        convert_osv5m(tmp_path / "e", str(folder), quadtree=str(tmp_path / "short.csv"))
    assert not any((tmp_path / n).exists() for n in "abcde")  # nothing half-written


def test_the_checkpoint_without_head_buffers_still_converts(release, tmp_path):
    from geohf.modeling.converters.osv5m import convert_osv5m

    folder = _copy_release(release, tmp_path)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state = {k: v for k, v in state.items() if "cell_" not in k and not k.startswith("model.")}  # aliases only
    torch.save(state, folder / "pytorch_model.bin")
    config = json.loads((folder / "config.json").read_text())
    del config["transform"]  # no test transform: the CLIP tower's own preprocessing
    (folder / "config.json").write_text(json.dumps(config))
    result = convert_osv5m(tmp_path / "out", str(folder))
    assert not result.checked_buffers and result.cells == 48
    assert "48 quadtree cells" in result.summary()
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["image_size"] == 32 and saved["image_mean"] == [0.48145466, 0.4578275, 0.40821073]


def test_the_converted_baseline_runs_the_osv5m_benchmark(converted):
    """The converted folder through ``evaluate_benchmark`` (what ``geohf evaluate --benchmark`` runs), by OSV-5M's
    convention: its predictions scored beside the published OSV-5M row, with the denominators."""
    import datasets
    from PIL import Image

    from geohf.evaluation.benchmark import evaluate_benchmark
    from geohf.geo.sphere import haversine_km
    from geohf.inference.predictor import GeoPredictor

    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(6)]
    split = datasets.Dataset.from_dict(
        {"image": images, "latitude": [48.85, 35.68, -33.87, 40.71, 55.75, -22.91],
         "longitude": [2.35, 139.69, 151.21, -74.01, 37.62, -43.17]},
        features=datasets.Features({"image": datasets.Image(), "latitude": datasets.Value("float64"),
                                    "longitude": datasets.Value("float64")}),
    )  # fmt: skip
    predictor = GeoPredictor(str(converted))
    result, frame = evaluate_benchmark(predictor, split, "osv5m", batch_size=4, convention="osv5m")
    assert result.evaluated == 6 and result.metrics["n_distances"] == 6
    km = haversine_km(frame["latitude"], frame["longitude"], frame["pred_latitude"], frame["pred_longitude"])
    assert np.allclose(frame["error_km"], km * 6371.0 / 6371.0088)
    text = result.table()
    assert "OSV-5M baseline" in text and "<25 km %" in text and "convention osv5m" in text
    assert "denominators: distances and GeoScore over 6; country (OSV-5M) over 6" in text
