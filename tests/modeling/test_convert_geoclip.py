"""``geohf convert geoclip``: published GeoCLIP as a geohf model folder, against geoclip's own ``GeoCLIP`` module.

The CLIP tower is a tiny random ``CLIPModel`` saved to a local folder (``--clip FOLDER``; projection_dim 768, so
GeoCLIP's released image MLP loads), the gallery the first 300 points of GeoCLIP's 100K (``--gallery CSV``:
embedding all 94K on CPU takes minutes). The oracle is geoclip's ``GeoCLIP(clip_path=FOLDER)``: the same tiny
CLIP under geoclip's own image encoder, image MLP, location encoder and logit scale (its released weights).
"""

import csv
import importlib
import importlib.machinery
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
from geohf.modeling import GeoImageProcessor, GeoModelForImageGeolocation
from geohf.modeling.location_encoder import geoclip_files

VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VISION |= {"patch_size": 16, "image_size": 32}
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
TEXT |= {"vocab_size": 99, "bos_token_id": 0, "eos_token_id": 2}
GALLERY_POINTS = 300


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPModel with 768-d image features and CLIP's processor (shorter side 36, centre crop 32)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    root = tmp_path_factory.mktemp("geoclip-clip") / "clip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=768)).save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def gallery_csv(tmp_path_factory):
    """The first GALLERY_POINTS distinct points of GeoCLIP's gallery, as its CSV holds them."""
    path = tmp_path_factory.mktemp("geoclip-gallery") / "gallery.csv"
    with open(geoclip_files().gallery, newline="") as f:
        rows, seen = [], set()
        for row in csv.DictReader(f):
            if (row["LAT"], row["LON"]) not in seen:
                seen.add((row["LAT"], row["LON"]))
                rows.append(row)
            if len(rows) == GALLERY_POINTS:
                break
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["LAT", "LON"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def converted(clip_dir, gallery_csv, tmp_path_factory):
    from geohf.cli import main

    out = tmp_path_factory.mktemp("geoclip-model") / "geoclip"
    assert main(["convert", "geoclip", str(out), "--clip", str(clip_dir), "--gallery", str(gallery_csv)]) == 0
    return out


@pytest.fixture(scope="module")
def oracle(clip_dir):
    """geoclip's own ``GeoCLIP`` on the tiny CLIP (its released MLP, location encoder and logit scale), imported
    from its files: the package ``__init__`` imports its training code (geopy), so ``geoclip`` and
    ``geoclip.model`` are stand-in packages here."""
    spec = importlib.machinery.PathFinder.find_spec("geoclip")
    root = Path(next(iter(spec.submodule_search_locations)))
    saved = {k: v for k, v in sys.modules.items() if k == "geoclip" or k.startswith("geoclip.")}
    for name, path in (("geoclip", root), ("geoclip.model", root / "model")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    try:
        with warnings.catch_warnings():  # its Fourier features are torch.jit.script functions (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            module = importlib.import_module("geoclip.model.GeoCLIP")
            misc = importlib.import_module("geoclip.model.misc")
        yield module.GeoCLIP(from_pretrained=True, clip_path=str(clip_dir)).eval(), misc.load_gps_data
    finally:
        for k in [k for k in sys.modules if k == "geoclip" or k.startswith("geoclip.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_gallery_logits_are_geoclips_own(converted, gallery_csv, oracle):
    geoclip, load_gps_data = oracle
    model = GeoModelForImageGeolocation.from_pretrained(converted).eval()
    head = model.heads["geoclip"]
    gallery = load_gps_data(str(gallery_csv))  # the points as GeoCLIP reads them (float32)
    assert torch.equal(head.centroids, gallery)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
        expected = geoclip(x, gallery)  # CLIP image features → MLP → normalised, × exp(scale) · location features
    diff = (out.logits - expected).abs().max().item()
    print(f"max |geohf - geoclip| gallery logit: {diff:.2e} (logits up to {expected.abs().max().item():.1f})")
    assert diff < 1e-4
    # GeoCLIP's prediction: the best gallery point
    assert torch.allclose(out.coordinates, gallery[expected.argmax(-1)], atol=1e-4)


def test_config_and_preprocessing_are_geoclips(converted, clip_dir):
    config = json.loads((converted / "config.json").read_text())
    assert config["coordinate_method"] == "argmax" and config["answer"] == "cell"
    assert config["backbone_kwargs"]["projection"] is True
    assert config["backbone_kwargs"]["hf_config"]["model_type"] == "clip_vision_model"
    (head,) = config["heads"]
    assert head["type"] == "geoclip" and head["gallery"] == "file" and len(head["labels"]) == GALLERY_POINTS
    assert "GeoCLIP" in config["pretrained_source"] and str(clip_dir) in config["pretrained_source"]
    # CLIP's processor: shorter side 36 → crop 32, bicubic, CLIP's mean / std
    prep = json.loads((converted / "preprocessor_config.json").read_text())
    assert prep["image_size"] == 32 and prep["crop_pct"] == pytest.approx(32 / 36, abs=1e-6)
    assert prep["interpolation"] == "bicubic"
    assert GeoImageProcessor.from_pretrained(converted).scale_size == 36  # resized as CLIP's processor resizes
    assert prep["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert prep["image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    released = geoclip_files()
    model = GeoModelForImageGeolocation.from_pretrained(converted)
    mlp = released.load_image_mlp()
    assert all(torch.equal(model.heads["geoclip"].image_mlp.state_dict()[k], v) for k, v in mlp.items())
    assert model.heads["geoclip"].logit_scale.item() == released.load_logit_scale().item()


def test_pipeline_predicts_batched_with_country_region_radius(converted, gallery_csv, oracle, tmp_path):
    from transformers import pipeline

    geoclip, load_gps_data = oracle
    gallery = load_gps_data(str(gallery_csv))
    geoclip.gps_gallery = gallery  # as GeoCLIP.from_pretrained sets a release's gallery
    rng = np.random.default_rng(0)
    paths = []
    # square, portrait, landscape; resized to 36 on the shorter side, each margin even: where it is odd, geohf's
    # centre crop (timm's, rounding) sits one pixel past CLIP's (flooring)
    for i, (h, w) in enumerate([(48, 48), (56, 48), (48, 64)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    geo = pipeline("image-geolocation", model=str(converted))
    records = geo([str(p) for p in paths], batch_size=2, bf16=False)
    assert len(records) == 3
    points = {(round(a, 5), round(b, 5)) for a, b in gallery.tolist()}
    for path, record in zip(paths, records):
        assert {"pred_country_code", "pred_country", "pred_region", "radius_km", "top_k"} <= set(record)
        assert record["radius_km"] > 0 and len(record["top_k"]) >= 1
        assert (round(record["pred_latitude"], 5), round(record["pred_longitude"], 5)) in points
        # GeoCLIP's own predict (its CLIP processor) picks the same gallery point
        best, _ = geoclip.predict(str(path), top_k=1)
        assert record["pred_latitude"] == pytest.approx(best[0, 0].item(), abs=1e-4)
        assert record["pred_longitude"] == pytest.approx(best[0, 1].item(), abs=1e-4)
    assert any(r["pred_country_code"] for r in records)


def test_bad_input_is_one_line(cli, converted, clip_dir, gallery_csv, tmp_path, monkeypatch):
    exists = cli("convert", "geoclip", converted, "--clip", clip_dir, "--gallery", gallery_csv)
    assert exists.code == 2 and "already exists; pass --overwrite" in exists.err
    # the Hub is off (tests run with HF_HUB_OFFLINE=1): the tower needs it, or a local folder
    offline = cli("convert", "geoclip", tmp_path / "a", "--clip", "geohf-test/no-such-clip", "--gallery", gallery_csv)
    assert offline.code == 2 and "Hugging Face Hub" in offline.err and "--clip LOCAL_FOLDER" in offline.err
    assert len(offline.err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("LAT,LON\n10,20\n95,20\n")
    wrong = cli("convert", "geoclip", tmp_path / "b", "--clip", clip_dir, "--gallery", bad)
    assert wrong.code == 2 and "row 3" in wrong.err
    monkeypatch.setattr("geohf.modeling.location_encoder.geoclip_files", lambda: None)
    missing = cli("convert", "geoclip", tmp_path / "c", "--clip", clip_dir, "--gallery", gallery_csv)
    assert missing.code == 2 and "pip install --no-deps geoclip" in missing.err
    assert not any(tmp_path.glob(".*partial*")) and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_overwrite_replaces_the_folder_whole(clip_dir, gallery_csv, tmp_path):
    from geohf.modeling.converters.geoclip import convert_geoclip

    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    result = convert_geoclip(out, clip=str(clip_dir), gallery=str(gallery_csv), overwrite=True)
    assert result.output == out and result.gallery_points == GALLERY_POINTS
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left
