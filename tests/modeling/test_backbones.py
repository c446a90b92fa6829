"""Every backbone family through the same paths: three heads, save/reload, pipelines, remote code, bf16."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_modeling import CELLS
from transformers import AutoModelForImageClassification, pipeline

import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
from geohf.geo.countries import is_country_code
from geohf.modeling import GeoImageProcessor, build_model
from geohf.modeling.factory import make_config

HIDE_GEOHF = """
import importlib.abc, sys
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "geohf" or name.startswith("geohf."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Hide())
"""

TIMM = {
    "resnet18": None,
    "mobilenetv3_large_100": None,
    "efficientnet_b1": None,
    "tf_efficientnet_lite0": None,
    "convnext_nano": None,
    "vit_small_patch16_224": '{"img_size": 32}',
}


def heads():
    return [
        {
            "name": "cells",
            "type": "haversine",
            "label_column": "cell",
            "labels": CELLS["name"],
            "cells": CELLS,
            "tau_km": 75.0,
        },
        {"name": "coordinates", "type": "regression", "label_column": None},
        {
            "name": "country",
            "type": "classification",
            "label_column": "country_code",
            "labels": ["AU", "DE", "ES", "FR"],
        },
    ]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """A transformers ViT saved locally (random init: no weights ship offline), named by its folder."""
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("vit") / "tiny-vit"
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_vit):
    """Each backbone built with three heads, saved with its processor; returns name -> (folder, x, logits)."""
    root = tmp_path_factory.mktemp("backbones")
    out = {}
    for name, kwargs in {**TIMM, "transformers-vit": None}.items():
        backbone = tiny_vit if name == "transformers-vit" else name
        torch.manual_seed(0)
        config = make_config(backbone, heads(), backbone_kwargs=kwargs, image_size=32)
        model = build_model(config, "hub" if name == "transformers-vit" else None).eval()
        folder = root / name
        model.save_pretrained(folder)
        GeoImageProcessor.from_config(config).save_pretrained(folder)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        np.save(folder / "x.npy", x.numpy())
        np.save(folder / "logits.npy", logits.numpy())
        out[name] = (folder, model, x, logits)
    return out


@pytest.mark.parametrize("name", [*TIMM, "transformers-vit"])
def test_backbone_paths(name, saved):
    folder, model, x, logits = saved[name]
    # forward + backward with every head
    model.train()
    out = model(
        pixel_values=x,
        labels=torch.tensor([0, 3]),
        coordinates=torch.tensor([[48.0, 2.0], [-30.0, 150.0]]),
        labels_country=torch.tensor([3, 0]),
    )
    out.loss.backward()
    grads = [p.grad for p in model.geo.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    model.eval()
    # reload through the Auto classes: the same logits up to the last float bits (CI saw 4e-10 on a
    # depthwise-conv net: oneDNN may pick another kernel for the new weight buffers)
    reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, logits, rtol=1e-5, atol=1e-9)
    # bf16 autocast forward, channels_last
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = reloaded.to(memory_format=torch.channels_last)(
            pixel_values=x.contiguous(memory_format=torch.channels_last)
        )
    assert torch.isfinite(out.logits.float()).all() and out.coordinates.shape == (2, 2)
    # the geolocation pipeline
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    result = pipeline("image-geolocation", model=str(folder))(image, top_k=2)
    # the country its coordinates lie in (a weighted point between the cells may be in none of theirs)
    assert is_country_code(result["pred_country_code"]) and len(result["top_k"]) == 2
    assert 0.0 <= result["country_score"] <= 1.0
    assert result["radius_km"] >= 0


def test_transformers_vit_weights_come_from_its_folder(saved, tiny_vit):
    from transformers import ViTModel

    _, model, _, _ = saved["transformers-vit"]
    ref = ViTModel.from_pretrained(tiny_vit, add_pooling_layer=False)
    w = model.geo.backbone.model.embeddings.patch_embeddings.projection.weight
    assert torch.equal(w, ref.embeddings.patch_embeddings.projection.weight)
    config = json.loads((saved["transformers-vit"][0] / "config.json").read_text())
    assert config["backbone_kwargs"]["hf_config"]["hidden_size"] == 48  # reload needs no original folder


def test_remote_code_without_geohf(saved, tmp_path):
    """Every saved folder loads with trust_remote_code in a process where geohf cannot be imported."""
    folders = {name: str(v[0]) for name, v in saved.items()}
    script = (
        HIDE_GEOHF
        + f"""
import json, numpy as np, torch
from transformers import AutoModelForImageClassification, pipeline
from PIL import Image
folders = {folders!r}
try:
    import geohf
    raise SystemExit("geohf should be hidden")
except ModuleNotFoundError:
    pass
out = {{}}
for name, folder in folders.items():
    m = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = m(pixel_values=torch.tensor(np.load(folder + "/x.npy"))).logits.numpy()
    clf = pipeline("image-classification", model=folder, trust_remote_code=True)
    top = clf(Image.new("RGB", (40, 40), (30, 120, 60)), top_k=1)[0]
    out[name] = [float(np.abs(logits - np.load(folder + "/logits.npy")).max()), top["label"], type(m).__module__]
print(json.dumps(out))
"""
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (diff, label, module) in result.items():
        assert diff < 1e-6, name  # another process may pick other kernels: last-bit differences only
        assert label in CELLS["name"] and module.startswith("transformers_modules"), name
    assert set(result) == set(saved)
    assert Path(folders["resnet18"], "sphere.py").is_file()
