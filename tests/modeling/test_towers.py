"""CLIP, SigLIP, SigLIP2 and DINOv2 towers from transformers (tiny random checkpoints in local folders), and the
real towers by name: timm's CLIP ViTs built from their architecture, Hub checkpoints when the Hub is reachable."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_backbones import HIDE_GEOHF, heads
from transformers import AutoModelForImageClassification, pipeline

import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))
from geohf.errors import UserError
from geohf.geo.countries import is_country_code
from geohf.modeling import build_model
from geohf.modeling.factory import make_config

VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8}
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 99}

# name -> (checkpoint folder, backbone_kwargs)
CASES = {
    "clip": ("clip", None),
    "clip-projection": ("clip", {"projection": True}),
    "clip-vision": ("clip-vision", None),
    "siglip": ("siglip", None),
    "siglip2": ("siglip2", None),
    "dinov2": ("dinov2", None),
    "dinov2-cls-mean": ("dinov2", {"pooling": "cls+mean"}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random checkpoints of each family, saved as their own libraries save them (full CLIP with a processor)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        Siglip2Config,
        Siglip2Model,
        SiglipConfig,
        SiglipModel,
    )

    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    vision = dict(VISION, image_size=32)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=TEXT, projection_dim=16)).save_pretrained(root / "clip")
    # CLIP's own preprocessing: shorter side to 36, centre crop 32, bicubic, CLIP mean/std
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(root / "clip-vision")
    SiglipModel(SiglipConfig(vision_config=vision, text_config=TEXT)).save_pretrained(root / "siglip")
    Siglip2Model(Siglip2Config(vision_config=dict(VISION, num_patches=16), text_config=TEXT)).save_pretrained(
        root / "siglip2"
    )
    Dinov2Model(Dinov2Config(**vision)).save_pretrained(root / "dinov2")
    return root


@pytest.fixture(scope="module")
def saved(checkpoints, tmp_path_factory):
    """Each case built from its checkpoint's weights with three heads and saved; name -> (folder, model, x, logits)."""
    root = tmp_path_factory.mktemp("tower-models")
    out = {}
    for name, (folder, kwargs) in CASES.items():
        torch.manual_seed(0)
        config = make_config(str(checkpoints / folder), heads(), backbone_kwargs=kwargs)
        model = build_model(config, "hub").eval()
        target = root / name
        model.save_pretrained(target)
        from geohf.modeling import GeoImageProcessor

        GeoImageProcessor.from_config(config).save_pretrained(target)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        np.save(target / "x.npy", x.numpy())
        np.save(target / "logits.npy", logits.numpy())
        out[name] = (target, model, x, logits)
    return out


def test_only_the_vision_tower_is_stored(saved):
    for name, (folder, model, _, _) in saved.items():
        hf = json.loads((folder / "config.json").read_text())["backbone_kwargs"]["hf_config"]
        assert hf["model_type"] in ("clip_vision_model", "siglip_vision_model", "siglip2_vision_model", "dinov2"), name
        assert "text_config" not in hf and "vision_config" not in hf, name
        assert not any("text" in k for k in model.state_dict()), name


def test_clip_embeddings_are_clips_own(checkpoints, saved):
    """The pooled embedding is CLIP's: post-layernorm CLS, or with projection=True CLIP's image features."""
    from transformers import CLIPModel

    full = CLIPModel.from_pretrained(checkpoints / "clip").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        projected = saved["clip-projection"][1].geo(x).embeddings
        pooled = saved["clip"][1].geo(x).embeddings
        assert torch.allclose(projected, full.get_image_features(pixel_values=x).pooler_output, atol=1e-6)
        assert torch.allclose(pooled, full.vision_model(pixel_values=x).pooler_output, atol=1e-6)
    assert saved["clip-projection"][1].config.embed_dim == 16 and saved["clip"][1].config.embed_dim == 32
    assert saved["dinov2-cls-mean"][1].config.embed_dim == 64 and saved["dinov2"][1].config.embed_dim == 32


def test_siglip2_patches_as_its_processor_makes_them(checkpoints, saved):
    """SigLIP2 (NaFlex) takes patch sequences: geohf's patchify of a square image gives the processor's patches,
    and the tower's embedding is Siglip2Model's image features of them."""
    from transformers import Siglip2Model
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    x = torch.randn(2, 3, 32, 32)
    patches = torch.stack([convert_image_to_patches(image, 8) for image in x])
    full = Siglip2Model.from_pretrained(checkpoints / "siglip2").eval()
    mask, shapes = torch.ones(2, 16, dtype=torch.int32), torch.tensor([[4, 4], [4, 4]])
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        got = saved["siglip2"][1].geo(x).embeddings
    assert torch.allclose(got, expected.pooler_output, atol=1e-6)


def test_preprocessing_comes_from_the_checkpoint(saved):
    clip = saved["clip"][1].config
    assert (clip.image_size, clip.interpolation) == (32, "bicubic")
    assert clip.crop_pct == pytest.approx(32 / 36)
    assert clip.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    siglip = saved["siglip"][1].config  # no processor saved: the family's own
    assert siglip.image_mean == [0.5] * 3 and siglip.image_size == 32
    assert saved["siglip2"][1].config.image_size == 32  # sqrt(num_patches) x patch size
    dino = saved["dinov2"][1].config
    assert dino.image_mean == pytest.approx([0.485, 0.456, 0.406]) and dino.crop_pct == 0.875


@pytest.mark.parametrize("name", list(CASES))
def test_tower_paths(name, saved):
    folder, model, x, logits = saved[name]
    model.train()
    out = model(pixel_values=x, labels=torch.tensor([0, 3]), coordinates=torch.tensor([[48.0, 2.0], [-30.0, 150.0]]))
    out.loss.backward()
    grads = [p.grad for p in model.geo.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    model.eval()
    reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, logits, rtol=1e-5, atol=1e-7)  # up to the last bits
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    result = pipeline("image-geolocation", model=str(folder))(image, top_k=2)
    # the country its coordinates lie in (a weighted point between the cells may be in none of theirs)
    assert is_country_code(result["pred_country_code"]) and len(result["top_k"]) == 2


def test_towers_load_as_remote_code_without_geohf(saved, tmp_path):
    folders = {name: str(v[0]) for name, v in saved.items()}
    script = (
        HIDE_GEOHF
        + f"""
import json, numpy as np, torch
from transformers import AutoModelForImageClassification
folders = {folders!r}
out = {{}}
for name, folder in folders.items():
    m = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = m(pixel_values=torch.tensor(np.load(folder + "/x.npy"))).logits.numpy()
    out[name] = [float(np.abs(logits - np.load(folder + "/logits.npy")).max()), type(m).__module__]
print(json.dumps(out))
"""
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(CASES)
    for name, (diff, module) in result.items():
        assert diff == 0.0 and module.startswith("transformers_modules"), name


def test_a_non_vision_checkpoint_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(UserError, match=r"BertConfig is not a vision model.*CLIP, SigLIP, SigLIP2, DINOv2") as err:
        make_config(str(tmp_path / "bert"), heads())
    assert "\n" not in str(err.value)


def test_tower_options_are_checked(checkpoints):
    with pytest.raises(UserError, match="projection applies to CLIP"):
        build_model(make_config(str(checkpoints / "dinov2"), heads(), backbone_kwargs={"projection": True}), None)
    with pytest.raises(UserError, match="pooling"):
        build_model(make_config(str(checkpoints / "clip"), heads(), backbone_kwargs={"pooling": "mean"}), None)
    options = r"\['normalize', 'pooling', 'projection'\]"
    with pytest.raises(UserError, match=r"backbone_kwargs \['img_size'\] do not apply.*" + options):
        build_model(make_config(str(checkpoints / "clip"), heads(), backbone_kwargs={"img_size": 64}), None)
    for kwargs, message in (
        ({"pooling": "cls_prenorm"}, "pooling='cls_prenorm'"),  # a DINOv2 tower: CLIP's pooling
        ({"normalize": True}, "normalize applies to a CLIP tower with projection"),
    ):
        with pytest.raises(UserError, match=message):
            build_model(make_config(str(checkpoints / "dinov2"), heads(), backbone_kwargs=kwargs), None)
    clip_kwargs = {"pooling": "cls_prenorm", "projection": True}
    with pytest.raises(UserError, match="cls_prenorm reads the tower's hidden state"):
        build_model(make_config(str(checkpoints / "clip"), heads(), backbone_kwargs=clip_kwargs), None)
    model = build_model(
        make_config(str(checkpoints / "clip"), heads(), backbone_kwargs={"pooling": "cls_prenorm"}), None
    )
    x = torch.randn(2, 3, *model.config.input_hw)
    with torch.no_grad():
        hidden = model.backbone.model(pixel_values=x).last_hidden_state[:, 0]
        assert torch.equal(model.geo(x).embeddings, hidden)  # before post_layernorm (OSV-5M's features)
    unit = build_model(
        make_config(str(checkpoints / "clip"), heads(), backbone_kwargs={"projection": True, "normalize": True}), None
    )
    with torch.no_grad():
        assert torch.allclose(unit.geo(x).embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "size", "width", "projected"),
    [("vit_large_patch14_clip_336.openai", 336, 1024, 768), ("vit_large_patch14_clip_224.datacompxl", 224, 1024, 768)],
)
def test_timm_clip_towers_at_their_real_size(arch, size, width, projected):
    """timm's CLIP ViT-L/14 (PIGEON's and OSV-5M's tower): CLIP preprocessing and widths, built on the meta device."""
    for kwargs, embed in ((None, width), ({"projection": True}, projected)):
        config = make_config(arch, heads(), backbone_kwargs=kwargs)
        assert (config.image_size, config.interpolation, config.crop_pct) == (size, "bicubic", 1.0)
        assert config.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
        with torch.device("meta"):
            model = build_model(config, None)
        assert config.embed_dim == embed
        assert sum(p.numel() for p in model.backbone.parameters()) > 300e6


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


HUB = pytest.mark.skipif(
    not _hub_reachable(), reason="needs the Hugging Face Hub (pretrained tower weights), which is unreachable"
)


@HUB
@pytest.mark.parametrize(
    ("name", "kwargs", "embed", "size"),
    [
        ("geolocal/StreetCLIP", {"projection": True}, 768, 336),
        ("openai/clip-vit-large-patch14-336", None, 1024, 336),
        ("google/siglip-base-patch16-224", None, 768, 224),
        ("google/siglip2-base-patch16-naflex", None, 768, 256),
        ("facebook/dinov2-small", {"pooling": "cls+mean"}, 768, 224),
    ],
)
def test_hub_towers(name, kwargs, embed, size):
    config = make_config(name, heads(), backbone_kwargs=kwargs)
    model = build_model(config, "hub").eval()
    assert config.embed_dim == embed and config.image_size == size
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, size, size))
    assert torch.isfinite(out.logits).all()


@HUB
def test_hub_timm_clip_weights():
    config = make_config("vit_large_patch14_clip_224.datacompxl", heads(), backbone_kwargs={"projection": True})
    model = build_model(config, "hub")
    assert "Hugging Face Hub" in config.pretrained_source and config.embed_dim == 768
    assert model.backbone.head.weight.abs().sum() > 0
